/**
 * `dicom-relay pki ...`: the relay CA, its HTTPS server certificate, and client certificates for sending
 * hospitals (PKCS#12 files), with revocation. Certificate actions are written to the audit log.
 */
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { accessDbPath, openAccessDb } from "../access/db.ts";
import { AuditLog, type AuditEntry } from "../access/audit.ts";
import {
  generatePassword,
  initPki,
  issueClientCert,
  issueServerCert,
  listIssued,
  PkiError,
  pkiPaths,
  revokeClientCert,
} from "../access/pki.ts";
import { cliActor } from "./token.ts";

const USAGE = `dicom-relay pki <subcommand> [options]

  init [--host NAME[,NAME...]] [--ca-name TEXT] [--force]
                  create the relay CA and an HTTPS server certificate for the given host names / IPs
                  (default localhost, 127.0.0.1, ::1); --force replaces an existing CA
  server --host NAME[,NAME...]
                  re-issue the server certificate from the existing CA
  issue --name "Hospital PACS gateway" [--org TEXT] [--days 825] [--out FILE.p12]
        [--password-file FILE]
                  a client certificate as a password-protected PKCS#12 file; without --password-file
                  (or DICOM_RELAY_PKI_PASSWORD) a strong password is generated and printed once
  revoke SERIAL|NAME [--reason TEXT]
                  revoke a client certificate: uploads with it are refused from the next request
  list            issued client certificates and their state

Options: --config FILE, --dir DIR (the PKI directory; default tls.pkiDir = dataDir/pki), --json.
Turn HTTPS on with tls.enabled=true and client certificates for uploads with tls.requireClientCertForUpload=true.
`;

export async function pkiCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "help" || sub === "--help") {
    process.stdout.write(USAGE);
    return sub ? 0 : 1;
  }
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: "string" },
      dir: { type: "string" },
      host: { type: "string", multiple: true },
      "ca-name": { type: "string" },
      force: { type: "boolean", default: false },
      name: { type: "string" },
      org: { type: "string" },
      days: { type: "string" },
      out: { type: "string" },
      "password-file": { type: "string" },
      reason: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const config = loadConfig({ file: values.config });
  // with --dir the whole PKI is there; otherwise the configured files (revoked list may be set apart)
  const paths = values.dir ? pkiPaths(values.dir) : pkiPaths(config.tls.pkiDir, { revoked: config.tls.revokedFile });
  const actor = cliActor();
  const record = (e: Omit<AuditEntry, "actor">) => {
    const db = openAccessDb(accessDbPath(config.dataDir));
    try {
      const log = new AuditLog(db, (err) => process.stderr.write(`dicom-relay: could not write the audit entry: ${(err as Error).message}\n`));
      log.record({ actor, ...e });
      // written now (flush writes synchronously for the SQLite log), before the database is closed
      void log.flush();
    } finally {
      db.close();
    }
  };
  const out = (text: string, json: unknown) => process.stdout.write(values.json ? JSON.stringify(json, null, 2) + "\n" : text);
  const hosts = (values.host ?? []).flatMap((h) => h.split(",")).map((h) => h.trim()).filter(Boolean);
  try {
    switch (sub) {
      case "init": {
        const r = initPki(paths, { hosts, caName: values["ca-name"], force: values.force });
        record({ action: "cert.ca.init", outcome: "success", detail: `CA ${r.caSubject}; server ${r.serverSubject} for ${r.hosts.join(",")} in ${paths.dir}` });
        out(
          `Created the relay CA (${r.caSubject}) and a server certificate for ${r.hosts.join(", ")} in ${paths.dir}.\n` +
            `Keep ${paths.caKey} secret (it can issue client certificates); the relay itself needs only\n` +
            `${path.basename(paths.caCert)}, ${path.basename(paths.serverCert)}, ${path.basename(paths.serverKey)} and ${path.basename(paths.revoked)}.\n`,
          { ...r, dir: paths.dir },
        );
        return 0;
      }
      case "server": {
        if (!hosts.length) throw new PkiError("give --host with the names and addresses clients use to reach the relay");
        const r = issueServerCert(paths, { hosts });
        record({ action: "cert.server.issue", outcome: "success", detail: `server ${r.subject} serial ${r.serial} for ${r.hosts.join(",")}` });
        out(`Issued a server certificate for ${r.hosts.join(", ")} (serial ${r.serial}); restart the relay to use it.\n`, r);
        return 0;
      }
      case "issue": {
        if (!values.name) throw new PkiError('give --name, e.g. --name "Ruijin Hospital PACS gateway"');
        let password = process.env.DICOM_RELAY_PKI_PASSWORD ?? "";
        if (values["password-file"]) password = fs.readFileSync(values["password-file"], "utf8").replace(/\r?\n$/, "");
        const generated = !password;
        if (generated) password = generatePassword();
        const days = values.days !== undefined ? Number(values.days) : undefined;
        if (days !== undefined && (!Number.isInteger(days) || days < 1 || days > 3650)) throw new PkiError("--days must be a whole number from 1 to 3650");
        const { p12, cert } = issueClientCert(paths, { name: values.name, organization: values.org, days, password });
        const file = path.resolve(values.out ?? `${values.name.replace(/[^A-Za-z0-9._-]+/g, "_")}-${cert.serial.slice(0, 8)}.p12`);
        fs.writeFileSync(file, p12, { mode: 0o600, flag: values.force ? "w" : "wx" });
        record({ action: "cert.client.issue", outcome: "success", certSubject: cert.subject, detail: `issued ${cert.subject} serial ${cert.serial} until ${cert.notAfter}` });
        out(
          `Issued client certificate ${cert.subject} (serial ${cert.serial}, valid until ${cert.notAfter}).\n` +
            `PKCS#12 file: ${file}\n` +
            (generated ? `Password (shown once; send it by another channel than the file): ${password}\n` : ""),
          { ...cert, file, ...(generated ? { password } : {}) },
        );
        return 0;
      }
      case "revoke": {
        const which = positionals[0];
        if (!which || positionals.length > 1) throw new PkiError("give the serial (or exact name) of one client certificate (see pki list)");
        const cert = revokeClientCert(paths, which, values.reason);
        record({ action: "cert.client.revoke", outcome: "success", certSubject: cert.subject, detail: `revoked serial ${cert.serial}${values.reason ? `: ${values.reason}` : ""}` });
        out(`Revoked ${cert.subject} (serial ${cert.serial}); uploads with it are refused from the next request.\n`, cert);
        return 0;
      }
      case "list": {
        const list = listIssued(paths);
        out(
          list.length
            ? list.map((c) => `${c.serial}  ${c.revokedAt ? `revoked ${c.revokedAt}` : `valid until ${c.notAfter}`}  ${c.subject}`).join("\n") + "\n"
            : `no client certificates issued from ${paths.dir}\n`,
          list,
        );
        return 0;
      }
      default:
        process.stderr.write(`unknown pki subcommand "${sub}"\n\n${USAGE}`);
        return 1;
    }
  } catch (err) {
    if (err instanceof PkiError || (err as NodeJS.ErrnoException).code === "EEXIST" || (err as NodeJS.ErrnoException).code === "ENOENT") {
      process.stderr.write(`dicom-relay pki ${sub}: ${(err as Error).message}\n`);
      return 1;
    }
    throw err;
  }
}
