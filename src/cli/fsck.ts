/** `dicom-relay fsck [--repair] [--no-hashes] [--config FILE]`: index vs storage consistency. */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { createIndex } from "../catalog/factory.ts";
import { createBlobStore } from "../storage/index.ts";
import { createLogger } from "../logger.ts";
import { fsck } from "../maintenance/fsck.ts";

export async function fsckCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: "string" }, repair: { type: "boolean", default: false }, "no-hashes": { type: "boolean", default: false } },
    strict: true,
  });
  const config = loadConfig({ file: values.config });
  const log = createLogger("warn");
  const store = createBlobStore(config, log);
  await store.init();
  const index = createIndex(config);
  await index.init();
  try {
    const report = await fsck(index, store, {
      repair: values.repair ?? false,
      verifyHashes: !values["no-hashes"],
      log: (line) => process.stdout.write(line + "\n"),
    });
    const problems = report.missingBlobs.length + report.hashMismatches.length + report.orphanBlobs.length;
    process.stdout.write(
      `checked ${report.checked} instance(s): ${report.missingBlobs.length} missing blob(s), ` +
        `${report.hashMismatches.length} hash mismatch(es), ${report.orphanBlobs.length} orphan blob(s)` +
        (values.repair ? " — repaired" : problems ? " — run with --repair to fix" : "") + "\n",
    );
    return problems && !values.repair ? 2 : 0;
  } finally {
    await index.close();
    await store.close();
  }
}
