/**
 * The access database (dataDir/access.sqlite): tokens, share links and the audit log. Kept apart from the
 * index so that it stays local SQLite whatever index backend is used, and so that the CLI (token, audit,
 * pki) can write to it while the relay runs (WAL: one writer at a time, readers never wait).
 *
 * synchronous=NORMAL: a committed row survives a crash of the process (it is in the WAL, in the OS cache);
 * only a power loss can lose the last few commits. That keeps one audit insert per request cheap.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";

const MIGRATIONS: { version: number; sql: string }[] = [
  {
    version: 1,
    sql: `
CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('token', 'share')),
  -- SHA-256 (hex) of the whole token string; the token itself is never stored
  hash TEXT NOT NULL,
  -- comma list of read, upload, admin ('' for share links: they only read their studies)
  scopes TEXT NOT NULL,
  label TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL,
  created_by TEXT NOT NULL,
  expires_at TEXT,
  revoked_at TEXT,
  revoked_by TEXT
);
CREATE TABLE share_studies (
  token_id TEXT NOT NULL REFERENCES tokens(id),
  study_instance_uid TEXT NOT NULL,
  PRIMARY KEY (token_id, study_instance_uid)
);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL,
  actor TEXT NOT NULL,
  cert_subject TEXT,
  action TEXT NOT NULL,
  method TEXT,
  route TEXT,
  study_instance_uid TEXT,
  series_instance_uid TEXT,
  sop_instance_uid TEXT,
  remote_addr TEXT,
  outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
  status INTEGER,
  detail TEXT,
  -- SHA-256 over the previous row's hash and this row: editing the file outside the relay shows
  hash TEXT NOT NULL
);
CREATE INDEX audit_study_at ON audit(study_instance_uid, at);
CREATE INDEX audit_at ON audit(at);
CREATE INDEX audit_actor_at ON audit(actor, at);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be changed'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be deleted'); END;
`,
  },
  {
    version: 2,
    sql: `
-- studies a DICOM peer (a home PACS, by AE title) may find and retrieve over DIMSE
CREATE TABLE peer_studies (
  ae_title TEXT NOT NULL,
  study_instance_uid TEXT NOT NULL,
  granted_at TEXT NOT NULL,
  granted_by TEXT NOT NULL,
  expires_at TEXT,
  PRIMARY KEY (ae_title, study_instance_uid)
);
`,
  },
];

export type AccessDb = Database.Database;

export function accessDbPath(dataDir: string): string {
  return path.join(dataDir, "access.sqlite");
}

/** Opens (creating when needed) the access database and applies pending migrations. */
export function openAccessDb(file: string): AccessDb {
  if (file !== ":memory:") fs.mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file);
  try {
    if (file !== ":memory:") db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    db.pragma("foreign_keys = ON");
    db.pragma("busy_timeout = 5000");
    const current = db.pragma("user_version", { simple: true }) as number;
    for (const m of MIGRATIONS) {
      if (m.version <= current) continue;
      db.transaction(() => {
        db.exec(m.sql);
        db.pragma(`user_version = ${m.version}`);
      }).immediate();
    }
  } catch (err) {
    db.close();
    throw err;
  }
  if (file !== ":memory:") {
    // tokens' hashes and the audit trail: readable by the relay's user only
    for (const f of [file, `${file}-wal`, `${file}-shm`]) {
      try {
        fs.chmodSync(f, 0o600);
      } catch {
        // -wal/-shm may not exist yet
      }
    }
  }
  return db;
}
