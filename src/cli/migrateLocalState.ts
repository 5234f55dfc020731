/**
 * The rest of a single relay's state, moved with `dicom-relay migrate --from sqlite --to postgres` next to the
 * index, so that nodes sharing the database continue where the single relay stopped:
 * - transfers.sqlite: transfers, their per-instance progress and receipts, upload results;
 * - the receipt signing key file (receipts issued before stay verifiable with the published key);
 * - access.sqlite: tokens, share links (same hashes: tokens handed out before keep working) and the audit log
 *   (rows copied in order with their hashes, so the chain still verifies; only into an empty audit table).
 * Running it again copies nothing twice (ON CONFLICT DO NOTHING; an audit log already there is left alone).
 */
import fs from "node:fs";
import Database from "better-sqlite3";
import type pg from "pg";
import { ReceiptSigner } from "../transfers/receipts.ts";
import { ensureUploadEntriesTable, RECEIPT_KEY_NAME } from "../transfers/postgresTransferStore.ts";
import { AUDIT_LOCK } from "../access/postgresAccess.ts";
import { FIELDS } from "../access/audit.ts";
import { inTransaction } from "../catalog/pgTransaction.ts";

export interface LocalStateReport {
  transfers: number;
  transferItems: number;
  uploadResults: number;
  /** copied: the database had no key; same: it already had this key; different: it has another key (kept) */
  receiptKey: "copied" | "same" | "different" | "no key file";
  tokens: number;
  shareStudies: number;
  /** rows copied, or why none were */
  audit: number | string;
}

const BATCH = 500;


/** Insert rows (objects with the named columns) in batches; returns how many were new. */
async function copyRows(c: pg.PoolClient, table: string, columns: readonly string[], rows: Record<string, unknown>[], conflict: string): Promise<number> {
  let added = 0;
  for (let i = 0; i < rows.length; i += BATCH) {
    const batch = rows.slice(i, i + BATCH);
    const values: unknown[] = [];
    const tuples = batch.map((r) => `(${columns.map((col) => (values.push(r[col] ?? null), `$${values.length}`)).join(", ")})`);
    const res = await c.query(`INSERT INTO ${table} (${columns.join(", ")}) VALUES ${tuples.join(", ")} ${conflict}`, values);
    added += res.rowCount ?? 0;
  }
  return added;
}

export async function migrateLocalState(opts: { transfersPath: string; accessPath: string; receiptKeyPath: string; pool: pg.Pool }): Promise<LocalStateReport> {
  const { pool } = opts;
  const report: LocalStateReport = { transfers: 0, transferItems: 0, uploadResults: 0, receiptKey: "no key file", tokens: 0, shareStudies: 0, audit: "no access.sqlite" };

  if (fs.existsSync(opts.transfersPath)) {
    const db = new Database(opts.transfersPath, { readonly: true, fileMustExist: true });
    try {
      const transfers = db.prepare("SELECT * FROM transfers ORDER BY created_at, id").all() as Record<string, unknown>[];
      const items = db.prepare("SELECT rowid - 1 AS seq, * FROM transfer_items ORDER BY rowid").all() as Record<string, unknown>[];
      const results = db.prepare("SELECT * FROM upload_results").all() as Record<string, unknown>[];
      const hasEntries = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'upload_result_entries'").get() !== undefined;
      const resultEntries = hasEntries ? (db.prepare("SELECT * FROM upload_result_entries").all() as Record<string, unknown>[]) : [];
      if (resultEntries.length) await ensureUploadEntriesTable(pool);
      await inTransaction(pool, async (c) => {
        report.transfers = await copyRows(c, "transfers", ["id", "label", "created_at", "state", "completed_at", "released_at", "receipt", "created_by", "cancelled_at"], transfers, "ON CONFLICT (id) DO NOTHING");
        report.transferItems = await copyRows(c, "transfer_items",
          ["transfer_id", "seq", "sop_instance_uid", "sha256", "size", "study_instance_uid", "series_instance_uid", "state", "reason", "failure_code", "updated_at"],
          items, "ON CONFLICT (transfer_id, sop_instance_uid) DO NOTHING");
        report.uploadResults = await copyRows(c, "upload_results", ["upload_id", "transfer_id", "state", "finished_at", "result"], results, "ON CONFLICT (upload_id) DO NOTHING");
        await copyRows(c, "upload_result_entries", ["upload_id", "seq", "entry"], resultEntries, "ON CONFLICT (upload_id, seq) DO NOTHING");
      });
    } finally {
      db.close();
    }
  }

  if (fs.existsSync(opts.receiptKeyPath)) {
    const pem = fs.readFileSync(opts.receiptKeyPath, "utf8");
    ReceiptSigner.fromPem(pem, opts.receiptKeyPath); // a wrong key is refused, not shared
    const added = await pool.query("INSERT INTO relay_keys (name, pem, created_at) VALUES ($1, $2, now()) ON CONFLICT (name) DO NOTHING", [RECEIPT_KEY_NAME, pem]);
    if (added.rowCount === 1) report.receiptKey = "copied";
    else {
      const stored = (await pool.query<{ pem: string }>("SELECT pem FROM relay_keys WHERE name = $1", [RECEIPT_KEY_NAME])).rows[0]!.pem;
      report.receiptKey = ReceiptSigner.fromPem(stored).keyId === ReceiptSigner.fromPem(pem).keyId ? "same" : "different";
    }
  }

  if (fs.existsSync(opts.accessPath)) {
    const db = new Database(opts.accessPath, { readonly: true, fileMustExist: true });
    try {
      const tokens = db.prepare("SELECT * FROM tokens ORDER BY created_at, id").all() as Record<string, unknown>[];
      const shares = db.prepare("SELECT * FROM share_studies").all() as Record<string, unknown>[];
      await inTransaction(pool, async (c) => {
        report.tokens = await copyRows(c, "tokens", ["id", "kind", "hash", "scopes", "label", "created_at", "created_by", "expires_at", "revoked_at", "revoked_by"], tokens, "ON CONFLICT (id) DO NOTHING");
        report.shareStudies = await copyRows(c, "share_studies", ["token_id", "study_instance_uid"], shares, "ON CONFLICT DO NOTHING");
      });
      report.audit = await inTransaction(pool, async (c) => {
        // the chain continues from the copied rows, so no node may append while they are copied
        await c.query("SELECT pg_advisory_xact_lock($1, $2)", [...AUDIT_LOCK]);
        const n = Number((await c.query<{ n: string }>("SELECT COUNT(*) AS n FROM audit")).rows[0]!.n);
        if (n > 0) return `not copied: the database already has an audit log (${n} entries); the old one stays readable in ${opts.accessPath}`;
        let copied = 0;
        let batch: Record<string, unknown>[] = [];
        for (const row of db.prepare("SELECT * FROM audit ORDER BY seq").iterate() as IterableIterator<Record<string, unknown>>) {
          batch.push(row);
          if (batch.length >= BATCH) {
            copied += await copyRows(c, "audit", [...FIELDS, "hash"], batch, "");
            batch = [];
          }
        }
        if (batch.length) copied += await copyRows(c, "audit", [...FIELDS, "hash"], batch, "");
        return copied;
      });
    } finally {
      db.close();
    }
  }
  return report;
}
