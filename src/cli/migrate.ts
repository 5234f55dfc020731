/**
 * `dicom-relay migrate --from sqlite --to postgres`: moves an embedded installation's index into
 * PostgreSQL. Only index rows move: every row keeps its blob key, so the blobs stay where they are
 * and are neither read nor written.
 *
 * Each instance row of the SQLite file is inserted through PostgresIndex.insertInstance in the
 * source's insertion order, so study / series / patient rows are derived exactly as they were
 * (first instance wins, blanks filled) and pending transfers stay pending. Running it again is safe:
 * rows already in the target with the same SHA-256 count as "already there", rows with other bytes
 * are reported as conflicts and left alone. Afterwards both indexes are read back through the Index
 * API and compared: instance counts, each instance's UIDs, SHA-256, blob key and size (an
 * order-independent digest, with a row-by-row listing when it differs), and the visible instances
 * per study.
 *
 * Then the rest of the relay's local state moves too (migrateLocalState.ts): transfers, the receipt key,
 * tokens, share links and the audit log, so that several nodes can continue from it.
 *
 * Stop the relay first: instances stored into SQLite during the copy would be missed (a second run
 * picks them up).
 */
import crypto from "node:crypto";
import fs from "node:fs";
import { parseArgs } from "node:util";
import Database from "better-sqlite3";
import { ConfigError, loadConfig } from "../config.ts";
import type { Index, InstanceLocation, InstanceRecord } from "../catalog/index.ts";
import { SqliteIndex } from "../catalog/sqlite.ts";
import { PostgresIndex } from "../catalog/postgres.ts";
import { toLocation, type LocationRow } from "../catalog/rows.ts";
import path from "node:path";
import { accessDbPath } from "../access/db.ts";
import { migrateLocalState } from "./migrateLocalState.ts";

export interface MigrateReport {
  /** instance rows in the source */
  source: number;
  inserted: number;
  /** already in the target with the same bytes (an earlier run, or a shared target) */
  alreadyThere: number;
  /** in the target with other bytes: left alone, listed */
  conflicts: { sopInstanceUID: string; sourceSha256: string; targetSha256: string }[];
  verification: { ok: boolean; targetInstances: number; problems: string[] };
}

/** Rows read from SQLite per page. */
const PAGE = 500;
/** Differences listed at most (the counts say how many there are). */
const MAX_LISTED = 20;

/** An instance row of the SQLite index, as the copy reads it. */
type SourceRow = Omit<LocationRow, "series_pk" | "study_pk"> & { metadata: string; pending_transfer_id: string | null };

function toRecord(r: SourceRow): InstanceRecord {
  return { ...toLocation(r), metadata: JSON.parse(r.metadata), pendingTransferId: r.pending_transfer_id };
}

/** What must agree between the two indexes for one instance. */
function identity(l: InstanceLocation): string {
  return [l.studyInstanceUID, l.seriesInstanceUID, l.sopInstanceUID, l.sha256, l.blobKey, String(l.size)].join("|");
}

/** Count and order-independent digest (sum of SHA-256 mod 2^256) of every instance of an index. */
async function digest(index: Index): Promise<{ count: number; sum: bigint; studies: Set<string> }> {
  const mod = 1n << 256n;
  let sum = 0n;
  let count = 0;
  const studies = new Set<string>();
  for await (const l of index.iterateInstances()) {
    sum = (sum + BigInt("0x" + crypto.createHash("sha256").update(identity(l)).digest("hex"))) % mod;
    count++;
    studies.add(l.studyInstanceUID);
  }
  return { count, sum, studies };
}

async function verify(source: Index, target: Index): Promise<MigrateReport["verification"]> {
  const problems: string[] = [];
  const [a, b] = [await digest(source), await digest(target)];
  if (a.count !== b.count) problems.push(`the source has ${a.count} instance(s), the target ${b.count}`);
  if (a.sum !== b.sum) {
    // row by row, to say which ones differ
    const want = new Map<string, string>();
    for await (const l of source.iterateInstances()) want.set(l.sopInstanceUID, identity(l));
    let listed = 0;
    for await (const l of target.iterateInstances()) {
      const expected = want.get(l.sopInstanceUID);
      want.delete(l.sopInstanceUID);
      if (expected === identity(l)) continue;
      if (listed++ < MAX_LISTED) {
        problems.push(expected === undefined ? `${l.sopInstanceUID} is in the target only` : `${l.sopInstanceUID} differs: source ${expected}, target ${identity(l)}`);
      }
    }
    for (const sop of want.keys()) if (listed++ < MAX_LISTED) problems.push(`${sop} is missing from the target`);
    if (listed > MAX_LISTED) problems.push(`... ${listed - MAX_LISTED} more difference(s)`);
  }
  // what readers see: the visible (released) instances of every study
  let studyProblems = 0;
  for (const study of a.studies) {
    const [s, t] = [await source.listInstances({ studyInstanceUID: study }), await target.listInstances({ studyInstanceUID: study })];
    const same = s.length === t.length && s.every((l, i) => l.sopInstanceUID === t[i]!.sopInstanceUID);
    if (!same && studyProblems++ < MAX_LISTED) problems.push(`study ${study}: ${s.length} visible instance(s) in the source, ${t.length} in the target, or in another order`);
  }
  return { ok: problems.length === 0, targetInstances: b.count, problems };
}

/**
 * Copy every instance row of the SQLite index file at `sqlitePath` into `target` (initialised by the
 * caller), then verify. `progress` is told every few thousand rows.
 */
export async function migrateSqliteIndex(sqlitePath: string, target: Index, progress: (line: string) => void = () => {}): Promise<MigrateReport> {
  if (!fs.existsSync(sqlitePath)) throw new ConfigError(`there is no SQLite index at ${sqlitePath} (index.sqlite.path); nothing to migrate`);
  // bring the file to this build's schema (what the relay does on start), then read it directly:
  // the Index API has no call that returns whole records with their pending transfer
  const source = new SqliteIndex({ path: sqlitePath });
  await source.init();
  const db = new Database(sqlitePath, { readonly: true, fileMustExist: true });
  const report: MigrateReport = { source: 0, inserted: 0, alreadyThere: 0, conflicts: [], verification: { ok: false, targetInstances: 0, problems: [] } };
  try {
    const last = (db.prepare("SELECT COALESCE(MAX(pk), 0) FROM instances").pluck().get() as number) ?? 0;
    report.source = db.prepare("SELECT COUNT(*) FROM instances").pluck().get() as number;
    const page = db.prepare(
      "SELECT i.pk, st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.size, i.sha256," +
        " i.blob_key, i.metadata, i.pixel_data, i.bulk_data, i.pending_transfer_id" +
        " FROM instances i JOIN series se ON se.pk = i.series_pk JOIN studies st ON st.pk = i.study_pk" +
        ` WHERE i.pk > ? AND i.pk <= ? ORDER BY i.pk LIMIT ${PAGE}`,
    );
    let after = 0;
    let done = 0;
    // bounded by the rows present at the start: rows written meanwhile are for the next run
    while (after < last) {
      const rows = page.all(after, last) as SourceRow[];
      if (!rows.length) break;
      for (const row of rows) {
        const outcome = await target.insertInstance(toRecord(row));
        if (outcome.outcome === "inserted") report.inserted++;
        else if (outcome.outcome === "duplicate") report.alreadyThere++;
        else report.conflicts.push({ sopInstanceUID: row.sop_instance_uid, sourceSha256: row.sha256, targetSha256: outcome.existing.sha256 });
        if (++done % 5000 === 0) progress(`copied ${done} of ${report.source} instance(s)`);
      }
      after = rows[rows.length - 1]!.pk;
    }
    report.verification = await verify(source, target);
    return report;
  } finally {
    db.close();
    await source.close();
  }
}

export async function migrateCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string" },
      from: { type: "string" },
      to: { type: "string" },
      "sqlite-path": { type: "string" },
      "postgres-url": { type: "string" },
    },
    strict: true,
  });
  if (values.from !== "sqlite" || values.to !== "postgres") {
    process.stderr.write("dicom-relay migrate: only --from sqlite --to postgres is supported (moves the embedded index into PostgreSQL)\n");
    return 1;
  }
  const config = loadConfig({ file: values.config });
  const sqlitePath = values["sqlite-path"] ?? config.index.sqlite.path;
  const url = values["postgres-url"] ?? config.index.postgres.url;
  if (!url) {
    throw new ConfigError("no PostgreSQL to migrate to: give --postgres-url or set index.postgres.url (DICOM_RELAY_INDEX_POSTGRES_URL)");
  }
  const target = new PostgresIndex({ url, poolSize: config.index.postgres.poolSize });
  try {
    await target.init();
    const out = (line: string) => process.stdout.write(line + "\n");
    const r = await migrateSqliteIndex(sqlitePath, target, out);
    out(`copied ${r.inserted} instance(s) from ${sqlitePath}; ${r.alreadyThere} already in PostgreSQL; ${r.conflicts.length} conflict(s); blobs untouched`);
    for (const c of r.conflicts.slice(0, MAX_LISTED)) {
      out(`conflict: ${c.sopInstanceUID} has SHA-256 ${c.sourceSha256} in SQLite but ${c.targetSha256} in PostgreSQL (left as it is in PostgreSQL)`);
    }
    const local = await migrateLocalState({
      transfersPath: path.join(config.dataDir, "transfers.sqlite"),
      accessPath: accessDbPath(config.dataDir),
      receiptKeyPath: config.transfers.receiptKeyPath,
      pool: target.sharedPool,
    });
    out(`copied ${local.transfers} transfer(s) with ${local.transferItems} instance(s) and ${local.uploadResults} upload result(s); ` +
      `${local.tokens} token(s) and share link(s); audit log: ${typeof local.audit === "number" ? `${local.audit} entries` : local.audit}; ` +
      `receipt key: ${local.receiptKey === "different" ? "the database already holds ANOTHER key, kept (receipts signed with the file's key no longer verify against the published key)" : local.receiptKey}`);
    if (r.verification.ok) {
      out(`verified: ${r.verification.targetInstances} instance(s) with the same UIDs, SHA-256, blob keys and sizes, and the same visible instances per study`);
    } else {
      for (const p of r.verification.problems) out(`verification: ${p}`);
    }
    if (r.verification.ok && !r.conflicts.length) {
      out('to use it, set index.kind to "postgres" (DICOM_RELAY_INDEX_KIND=postgres) with index.postgres.url; the SQLite file is left in place');
      return 0;
    }
    return 2;
  } finally {
    await target.close();
  }
}
