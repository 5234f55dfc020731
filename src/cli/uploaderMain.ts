/**
 * Entry of the installable uploader (scripts/build-uploader.mjs bundles it into one file that needs only Node.js):
 * the commands a hospital coordinator uses, without the relay's server code.
 */
import { pathToFileURL } from "node:url";
import { versionText } from "../version.ts";

const USAGE = `dicom-relay-push: send a CD/DVD/USB export to a dicom-relay, and see what became of it

  push <folder | DICOMDIR | file.zip | file.dcm> --to URL [--token T] [options]
                        resumable, sends only what the relay lacks, saves a signed receipt
                        ("push --help" for the options)
  transfers list|show|cancel --to URL [--token T]
                        what became of the studies sent ("transfers help")
  --version             this uploader's version and the relay versions it speaks to

The token can also be given as DICOM_RELAY_TOKEN.
`;

export async function uploaderMain(argv: string[]): Promise<number> {
  const [command = "help", ...rest] = argv;
  switch (command) {
    case "push": {
      const { pushCommand } = await import("./push/index.ts");
      return pushCommand(rest);
    }
    case "transfers": {
      const { transfersCommand } = await import("./transfers.ts");
      return transfersCommand(rest);
    }
    case "--version":
    case "version":
      process.stdout.write(versionText("dicom-relay-push"));
      return 0;
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return 0;
    default:
      process.stderr.write(`unknown command "${command}"\n\n${USAGE}`);
      return 1;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  uploaderMain(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err) => {
      process.stderr.write(`dicom-relay-push: ${(err as Error).stack ?? err}\n`);
      process.exitCode = 1;
    },
  );
}
