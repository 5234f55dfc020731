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
  transfers list|show|release|cancel --to URL [--token T]
                        what became of the studies sent to a relay: received, missing, failed with reasons;
                        release (admin) or cancel one; "dicom-relay transfers help" for details
  fsck [--repair] [--no-hashes]
                        compare the index with storage: missing blobs, hash mismatches, orphan blobs
  token create|list|revoke|share
                        access tokens (scopes read, upload, admin) and study share links;
                        "dicom-relay token help" for details
  pki init|server|issue|revoke|list
                        relay CA, HTTPS server certificate, client certificates (PKCS#12) for hospitals
  audit [--study UID] [--since 24h|DATE] [--until DATE] [--actor ID] [--json] [--verify]
                        read the audit log (who read, stored or deleted what, when, from where)
  deidentify <study> --to URL [--token T] [--pseudonym NAME] [--share 7d]
                        a de-identified copy of a study for a second opinion (Basic Profile, new UIDs),
                        with its share link; "dicom-relay deidentify --help" for the options
  migrate --from sqlite --to postgres [--sqlite-path FILE] [--postgres-url URL]
                        move the embedded index, transfers, receipt key, tokens and audit log into
                        PostgreSQL (blobs untouched), then verify
  --version             this build's version and the relay versions its uploader speaks to
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
      case "transfers": {
        const { transfersCommand } = await import("./cli/transfers.ts");
        return await transfersCommand(rest);
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
      case "deidentify": {
        const { deidentifyCommand } = await import("./cli/deidentify.ts");
        return await deidentifyCommand(rest);
      }
      case "migrate": {
        const { migrateCommand } = await import("./cli/migrate.ts");
        return await migrateCommand(rest);
      }
      case "--version":
      case "version": {
        const { versionText } = await import("./version.ts");
        process.stdout.write(versionText("dicom-relay"));
        return 0;
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
  // before the server allocates anything of note: V8 reads these at each garbage collection
  const { applyMemoryProfile } = await import("./memoryProfile.ts");
  const v8Flags = applyMemoryProfile(config.server.memoryProfile);
  // files the relay writes (blobs, uploads, spool, databases) are its user's only
  process.umask(0o077);
  // loaded here, not at the top: the push and the other commands start without loading the whole server
  const [{ startRelay }, { recordRunning }, { default: pino }, { createLogger, terminalLogStream }] = await Promise.all([
    import("./relay.ts"),
    import("./runningRelay.ts"),
    import("pino"),
    import("./logger.ts"),
  ]);
  // human lines on standard output, log lines on standard error: JSON for collectors, readable on a terminal
  const log = createLogger(config.log.level, process.stderr.isTTY ? terminalLogStream(process.stderr) : pino.destination({ fd: 2, sync: true }));
  let relay;
  try {
    relay = await startRelay(config, { log });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // files under the data directory that cannot be opened (a sub-folder owned by another user, a full disk)
    if (!(err instanceof ConfigError) && e?.code && e.path) {
      throw new ConfigError(`could not start: ${e.path} cannot be opened (${e.code}); check the permissions and free space of the data directory (dataDir, DICOM_RELAY_DATA_DIR)`);
    }
    if (!(err instanceof ConfigError) && /SQLITE_CANTOPEN|unable to open database file/i.test(`${e?.code} ${e?.message}`)) {
      throw new ConfigError(`could not start: the index database ${config.index.sqlite.path} cannot be opened; check that its folder exists and this user may write it (index.sqlite.path, DICOM_RELAY_INDEX_SQLITE_PATH)`);
    }
    throw err;
  }
  log.info({ url: relay.url, dicomweb: relay.dicomwebUrl, dataDir: config.dataDir, storage: config.storage.kind, index: config.index.kind, memoryProfile: config.server.memoryProfile, v8Flags }, "dicom-relay listening");
  if (relay.initialAdminToken) {
    // standard output only, never the log: the token is stored as a hash and cannot be shown again
    process.stdout.write(
      "First start: an admin token was created. It is shown this once and stored only as a hash; keep it safe.\n" +
        `Admin token: ${relay.initialAdminToken}\n` +
        'Send it as "Authorization: Bearer <token>"; make narrower tokens with "dicom-relay token create".\n',
    );
  }
  const access = relay.services.access;
  if (config.auth.enabled && access && !relay.initialAdminToken) {
    const now = new Date().toISOString();
    const admins = (await access.tokens.list({ kind: "token" })).filter((t) => t.scopes.includes("admin") && !(t.expiresAt && t.expiresAt <= now));
    if (!admins.length) {
      process.stdout.write(
        "No admin token is active on this relay. Make one offline, against the same data directory and configuration:\n" +
          `  dicom-relay token create --scope admin${values.config ? ` --config ${values.config}` : ""}   (data dir ${config.dataDir})\n`,
      );
    }
  }
  process.stdout.write(`dicom-relay is listening. DICOMweb root: ${relay.dicomwebUrl}\n`);
  if (config.console.enabled) process.stdout.write(`Web console: ${relay.url}${config.console.path}/\n`);
  // where commands run beside it (token share) find the address that works
  const forget = recordRunning(config.dataDir, relay.url);
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
  forget();
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
