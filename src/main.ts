/**
 * dicom-relay command line: serve, push, fsck, token, pki, audit (more commands join as they are built).
 * Exit codes: 0 success, 1 could not run (with a sentence), 2 ran but found/produced failures.
 */
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { ConfigError, loadConfig } from "./config.ts";

const USAGE = `dicom-relay <command> [options]

Commands:
  serve                 start the relay (defaults: 127.0.0.1:8042, data in ./data, local disk + SQLite)
  push <folder | DICOMDIR | file.zip> --to URL [--token T] [--documents] [--document FILE:KIND:LANG]
                        send a CD/USB export to a relay: resumable, only what it lacks, signed receipt;
                        "dicom-relay push --help" for details
  fsck [--repair] [--no-hashes]
                        compare the index with storage: missing blobs, hash mismatches, orphan blobs
  token create|list|revoke|share
                        access tokens (scopes read, upload, admin) and study share links;
                        "dicom-relay token help" for details
  pki init|server|issue|revoke|list
                        relay CA, HTTPS server certificate, client certificates (PKCS#12) for hospitals
  audit [--study UID] [--since 24h|DATE] [--until DATE] [--actor ID] [--json] [--verify]
                        read the audit log (who read, stored or deleted what, when, from where)
  migrate --from sqlite --to postgres [--sqlite-path FILE] [--postgres-url URL]
                        move the embedded index, transfers, receipt key, tokens and audit log into
                        PostgreSQL (blobs untouched), then verify
  help                  this text

Options for every command:
  --config FILE         JSON configuration file (also DICOM_RELAY_CONFIG)
Every configuration key can also be set in the environment, e.g. DICOM_RELAY_SERVER_PORT=8080,
DICOM_RELAY_DATA_DIR=/var/lib/dicom-relay (see docs/configuration.md).
`;

export async function main(argv: string[]): Promise<number> {
  const [command = "help", ...rest] = argv;
  try {
    switch (command) {
      case "serve":
        return await serve(rest);
      case "push": {
        const { pushCommand } = await import("./cli/push/index.ts");
        return await pushCommand(rest);
      }
      case "fsck": {
        const { fsckCommand } = await import("./cli/fsck.ts");
        return await fsckCommand(rest);
      }
      case "token": {
        const { tokenCommand } = await import("./cli/token.ts");
        return await tokenCommand(rest);
      }
      case "pki": {
        const { pkiCommand } = await import("./cli/pki.ts");
        return await pkiCommand(rest);
      }
      case "audit": {
        const { auditCommand } = await import("./cli/audit.ts");
        return await auditCommand(rest);
      }
      case "migrate": {
        const { migrateCommand } = await import("./cli/migrate.ts");
        return await migrateCommand(rest);
      }
      case "help":
      case "--help":
      case "-h":
        process.stdout.write(USAGE);
        return 0;
      default:
        process.stderr.write(`unknown command "${command}"\n\n${USAGE}`);
        return 1;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`dicom-relay: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

async function serve(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: "string" } }, strict: true });
  const config = loadConfig({ file: values.config });
  // loaded here, not at the top: the push and the other commands start without loading the whole server
  const { startRelay } = await import("./relay.ts");
  const relay = await startRelay(config);
  const log = relay.services.log;
  log.info({ url: relay.url, dicomweb: relay.dicomwebUrl, dataDir: config.dataDir, storage: config.storage.kind, index: config.index.kind }, "dicom-relay listening");
  if (relay.initialAdminToken) {
    // standard output only, never the log: the token is stored as a hash and cannot be shown again
    process.stdout.write(
      "First start: an admin token was created. It is shown this once and stored only as a hash; keep it safe.\n" +
        `Admin token: ${relay.initialAdminToken}\n` +
        'Send it as "Authorization: Bearer <token>"; make narrower tokens with "dicom-relay token create".\n',
    );
  }
  process.stdout.write(`dicom-relay is listening. DICOMweb root: ${relay.dicomwebUrl}\n`);
  if (relay.dimse) process.stdout.write(`DICOM node: AE ${config.dimse.aeTitle} on ${config.dimse.host}:${relay.dimsePort}${config.dimse.tls ? " (TLS)" : ""}\n`);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, "shutting down");
      resolve();
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  // running uploads and retrievals get a moment to finish; then connections are cut
  await relay.close(10_000);
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err) => {
      process.stderr.write(`dicom-relay: ${(err as Error).stack ?? err}\n`);
      process.exitCode = 1;
    },
  );
}
