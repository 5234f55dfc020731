/** TransferStore in its own SQLite file under dataDir (better-sqlite3: synchronous, so each method is atomic). */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import type { SignedReceipt } from "./receipts.ts";
import { itemFromRow, transferFromRow, transferStateCounts, type ItemState, type TransferItem, type TransferItemRow, type TransferListQuery, type TransferRecord, type TransferRow, type TransferStore, type UploadEntryResult, type UploadResult, assembleUploadResult, resultSummaryJson } from "./transferStore.ts";

const MIGRATIONS = [
  `CREATE TABLE transfers (
     id TEXT PRIMARY KEY,
     label TEXT,
     created_at TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('open','complete','released')),
     completed_at TEXT,
     released_at TEXT,
     receipt TEXT
   );
   CREATE TABLE transfer_items (
     transfer_id TEXT NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
     sop_instance_uid TEXT NOT NULL,
     sha256 TEXT NOT NULL,
     size INTEGER NOT NULL,
     study_instance_uid TEXT,
     series_instance_uid TEXT,
     state TEXT NOT NULL CHECK (state IN ('present','received','missing','failed')),
     reason TEXT,
     failure_code INTEGER,
     updated_at TEXT NOT NULL,
     PRIMARY KEY (transfer_id, sop_instance_uid)
   );
   CREATE INDEX transfer_items_sha ON transfer_items (transfer_id, sha256);
   CREATE TABLE upload_results (
     upload_id TEXT PRIMARY KEY,
     transfer_id TEXT,
     state TEXT NOT NULL,
     finished_at TEXT,
     result TEXT NOT NULL
   );`,
  // who created a transfer (uploaders list their own) and cancellation (a column: the state CHECK stays as it is)
  `ALTER TABLE transfers ADD COLUMN created_by TEXT;
   ALTER TABLE transfers ADD COLUMN cancelled_at TEXT;
   CREATE INDEX transfers_created_by ON transfers (created_by, created_at);
   CREATE INDEX transfers_created_at ON transfers (created_at);`,
  // a result's entries one row each, appended as ingested (the summary in upload_results no longer carries them)
  `CREATE TABLE upload_result_entries (
     upload_id TEXT NOT NULL,
     seq INTEGER NOT NULL,
     entry TEXT NOT NULL,
     PRIMARY KEY (upload_id, seq)
   ) WITHOUT ROWID;`,
  // retention finds the transfers of a study it deletes
  `CREATE INDEX transfer_items_study ON transfer_items (study_instance_uid);`,
];



export class SqliteTransferStore implements TransferStore {
  private db!: Database.Database;
  constructor(private readonly file: string) {}

  async init(): Promise<void> {
    if (this.file !== ":memory:") fs.mkdirSync(path.dirname(this.file), { recursive: true });
    this.db = new Database(this.file);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("foreign_keys = ON");
    this.db.pragma("busy_timeout = 5000");
    const version = this.db.pragma("user_version", { simple: true }) as number;
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  async close(): Promise<void> {
    this.statements.clear();
    if (this.db?.open) this.db.close();
  }

  /**
   * A prepared statement, prepared once: each method runs a handful of fixed statements, and a bundle entry runs
   * four of them (prepared anew: ~50 us each, and garbage). A statement used with pluck() is always used so.
   */
  private readonly statements = new Map<string, Database.Statement>();
  private stmt(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.statements.set(sql, st);
    }
    return st;
  }

  async createTransfer(t: { id: string; label: string | null; createdAt: string; createdBy: string | null }, items: TransferItem[]): Promise<void> {
    const insertT = this.stmt("INSERT INTO transfers (id, label, created_at, created_by, state) VALUES (?, ?, ?, ?, 'open')");
    const insertI = this.stmt(
      `INSERT INTO transfer_items (transfer_id, sop_instance_uid, sha256, size, study_instance_uid, series_instance_uid, state, reason, failure_code, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.db.transaction(() => {
      insertT.run(t.id, t.label, t.createdAt, t.createdBy ?? null);
      for (const i of items) {
        insertI.run(t.id, i.sopInstanceUID, i.sha256, i.size, i.studyInstanceUID, i.seriesInstanceUID, i.state, i.reason, i.failureCode, i.updatedAt);
      }
    })();
  }

  async getTransfer(id: string): Promise<TransferRecord | null> {
    const r = this.stmt("SELECT * FROM transfers WHERE id = ?").get(id) as TransferRow | undefined;
    return r ? transferFromRow(r) : null;
  }

  async listTransfers(q: TransferListQuery): Promise<TransferRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.createdBy !== undefined) {
      where.push("created_by = ?");
      args.push(q.createdBy);
    }
    if (q.state === "cancelled") where.push("cancelled_at IS NOT NULL");
    else if (q.state) {
      where.push("state = ? AND cancelled_at IS NULL");
      args.push(q.state);
    }
    const sql = `SELECT * FROM transfers ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY created_at DESC, rowid DESC LIMIT ?`;
    return (this.stmt(sql).all(...args, q.limit) as TransferRow[]).map(transferFromRow);
  }

  async markCancelled(transferId: string, at: string): Promise<boolean> {
    return this.stmt("UPDATE transfers SET cancelled_at = ? WHERE id = ? AND state IN ('open','released') AND cancelled_at IS NULL").run(at, transferId).changes === 1;
  }

  async listItems(transferId: string): Promise<TransferItem[]> {
    const rows = this.stmt("SELECT * FROM transfer_items WHERE transfer_id = ? ORDER BY rowid").all(transferId) as TransferItemRow[];
    return rows.map(itemFromRow);
  }

  async getItem(transferId: string, sopInstanceUID: string): Promise<TransferItem | null> {
    const r = this.stmt("SELECT * FROM transfer_items WHERE transfer_id = ? AND sop_instance_uid = ?").get(transferId, sopInstanceUID) as TransferItemRow | undefined;
    return r ? itemFromRow(r) : null;
  }

  async findItemsBySha256(transferId: string, sha256: string): Promise<TransferItem[]> {
    const rows = this.stmt("SELECT * FROM transfer_items WHERE transfer_id = ? AND sha256 = ?").all(transferId, sha256.toLowerCase()) as TransferItemRow[];
    return rows.map(itemFromRow);
  }

  async updateItem(transferId: string, sopInstanceUID: string, u: { state: ItemState; reason?: string | null; failureCode?: number | null }): Promise<void> {
    const good = u.state === "present" || u.state === "received";
    // good bytes once stored are never un-received by a later bad copy
    this.db
      .prepare(
        `UPDATE transfer_items SET state = ?, reason = ?, failure_code = ?, updated_at = ?
         WHERE transfer_id = ? AND sop_instance_uid = ? ${good ? "" : "AND state NOT IN ('present','received')"}`,
      )
      .run(u.state, good ? null : (u.reason ?? null), good ? null : (u.failureCode ?? null), new Date().toISOString(), transferId, sopInstanceUID);
  }

  async studiesOf(transferId: string, limit: number): Promise<string[]> {
    return this.stmt("SELECT DISTINCT study_instance_uid FROM transfer_items WHERE transfer_id = ? AND study_instance_uid IS NOT NULL LIMIT ?").pluck().all(transferId, limit) as string[];
  }

  async transfersNaming(studyInstanceUID: string, limit: number): Promise<string[]> {
    return this.stmt("SELECT DISTINCT transfer_id FROM transfer_items WHERE study_instance_uid = ? LIMIT ?").pluck().all(studyInstanceUID, limit) as string[];
  }

  async countItems(transferId: string): Promise<Record<ItemState, number>> {
    const rows = this.stmt("SELECT state, COUNT(*) AS n FROM transfer_items WHERE transfer_id = ? GROUP BY state").all(transferId) as { state: ItemState; n: number }[];
    const out: Record<ItemState, number> = { present: 0, received: 0, missing: 0, failed: 0 };
    for (const r of rows) out[r.state] = r.n;
    return out;
  }

  async markComplete(transferId: string, at: string): Promise<boolean> {
    return this.stmt("UPDATE transfers SET state = 'complete', completed_at = ? WHERE id = ? AND state IN ('open','released') AND cancelled_at IS NULL").run(at, transferId).changes === 1;
  }

  async markReleased(transferId: string, at: string): Promise<boolean> {
    return this.stmt("UPDATE transfers SET state = 'released', released_at = ? WHERE id = ? AND state = 'open' AND cancelled_at IS NULL").run(at, transferId).changes === 1;
  }

  async setReceipt(transferId: string, receipt: SignedReceipt): Promise<void> {
    this.stmt("UPDATE transfers SET receipt = ? WHERE id = ?").run(JSON.stringify(receipt), transferId);
  }

  async listCompleteWithoutReceipt(): Promise<string[]> {
    return (this.stmt("SELECT id FROM transfers WHERE state = 'complete' AND receipt IS NULL").all() as { id: string }[]).map((r) => r.id);
  }

  async countTransfersByState(): Promise<Record<TransferRecord["state"], number>> {
    return transferStateCounts(this.stmt("SELECT CASE WHEN cancelled_at IS NOT NULL THEN 'cancelled' ELSE state END AS state, COUNT(*) AS n FROM transfers GROUP BY 1").all() as { state: TransferRecord["state"]; n: number }[]);
  }

  async getUploadResult(uploadId: string, opts: { entries?: boolean } = {}): Promise<UploadResult | null> {
    const r = this.stmt("SELECT result FROM upload_results WHERE upload_id = ?").get(uploadId) as { result: string } | undefined;
    return r ? assembleUploadResult(r.result, opts.entries === false ? null : (count) => this.listUploadEntries(uploadId, 0, count)) : null;
  }

  async saveUploadResult(result: UploadResult): Promise<void> {
    this
      .stmt(
        `INSERT INTO upload_results (upload_id, transfer_id, state, finished_at, result) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (upload_id) DO UPDATE SET transfer_id = excluded.transfer_id, state = excluded.state, finished_at = excluded.finished_at, result = excluded.result`,
      )
      .run(result.uploadId, result.transferId, result.state, result.finishedAt, resultSummaryJson(result));
  }

  async putUploadEntries(uploadId: string, first: number, entries: readonly UploadEntryResult[]): Promise<void> {
    const put = this.stmt("INSERT OR REPLACE INTO upload_result_entries (upload_id, seq, entry) VALUES (?, ?, ?)");
    this.db.transaction(() => entries.forEach((e, i) => put.run(uploadId, first + i, JSON.stringify(e))))();
  }

  async listUploadEntries(uploadId: string, first: number, limit: number): Promise<UploadEntryResult[]> {
    const rows = this.stmt("SELECT entry FROM upload_result_entries WHERE upload_id = ? AND seq >= ? ORDER BY seq LIMIT ?").pluck().all(uploadId, first, limit) as string[];
    return rows.map((e) => JSON.parse(e) as UploadEntryResult);
  }

  async deleteUploadResultsBefore(iso: string): Promise<number> {
    return this.db.transaction(() => {
      this.stmt("DELETE FROM upload_result_entries WHERE upload_id IN (SELECT upload_id FROM upload_results WHERE state = 'done' AND finished_at < ?)").run(iso);
      return this.stmt("DELETE FROM upload_results WHERE state = 'done' AND finished_at < ?").run(iso).changes;
    })();
  }
}
