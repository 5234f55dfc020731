/**
 * TransferStore in PostgreSQL, used when index.kind is postgres, so that every relay node sees the same
 * transfers: a manifest created on one node, instances uploaded to any, completion decided once.
 *
 * The tables come with the index's migrations (catalog/migrations.ts, version 2) and the store borrows
 * the index's pool: one database, one migration runner, one set of connections per node.
 * Each method is one statement or one transaction; the state rules are in the WHERE clauses, so two nodes
 * updating the same transfer cannot undo each other (same rules as sqliteTransferStore.ts).
 */
import fsp from "node:fs/promises";
import type pg from "pg";
import { inTransaction } from "../catalog/pgTransaction.ts";
import { ADVISORY_LOCK } from "../catalog/postgres.ts";
import { ReceiptSigner, type SignedReceipt } from "./receipts.ts";
import { itemFromRow, transferFromRow, transferStateCounts, type ItemState, type TransferItem, type TransferItemRow, type TransferListQuery, type TransferRecord, type TransferRow, type TransferStore, type UploadEntryResult, type UploadResult, assembleUploadResult, resultSummaryJson } from "./transferStore.ts";

/** Manifest items inserted per statement (unnest of arrays: one round trip per batch). */
const BATCH = 1000;


const ITEM_COLUMNS = "sop_instance_uid, sha256, size, study_instance_uid, series_instance_uid, state, reason, failure_code, updated_at";


/**
 * Upload results' entries, one row each (appended as ingested; the summary in upload_results no longer carries
 * them), and the index retention uses to find a study's transfers. Created here rather than by an index migration, under the lock the migrations take (nodes starting
 * together would race on CREATE ... IF NOT EXISTS).
 */
export async function ensureUploadEntriesTable(pool: pg.Pool): Promise<void> {
  await inTransaction(pool, async (client) => {
    await client.query("SELECT pg_advisory_xact_lock($1, 0)", [ADVISORY_LOCK.MIGRATIONS]);
    await client.query(`CREATE TABLE IF NOT EXISTS upload_result_entries (
      upload_id TEXT COLLATE "C" NOT NULL,
      seq INTEGER NOT NULL,
      entry TEXT NOT NULL,
      PRIMARY KEY (upload_id, seq)
    )`);
    // retention finds the transfers of a study it deletes
    await client.query("CREATE INDEX IF NOT EXISTS transfer_items_study ON transfer_items (study_instance_uid)");
  });
}

export class PostgresTransferStore implements TransferStore {
  /** pool: the PostgreSQL index's (PostgresIndex.sharedPool), already migrated; not closed here. */
  constructor(private readonly pool: pg.Pool) {}

  async init(): Promise<void> {
    // the index migrated the schema; say so plainly if it did not
    const found = await this.pool.query("SELECT to_regclass('transfer_items') IS NOT NULL AS ok");
    if (!found.rows[0]?.ok) throw new Error("the PostgreSQL database has no transfer tables: the index's migrations (version 2) have not run");
    await ensureUploadEntriesTable(this.pool);
  }

  async close(): Promise<void> {
    // the pool belongs to the index, which closes it
  }

  async createTransfer(t: { id: string; label: string | null; createdAt: string; createdBy: string | null }, items: TransferItem[]): Promise<void> {
    await inTransaction(this.pool, async (client) => {
      await client.query("INSERT INTO transfers (id, label, created_at, created_by, state) VALUES ($1, $2, $3, $4, 'open')", [t.id, t.label, t.createdAt, t.createdBy ?? null]);
      for (let start = 0; start < items.length; start += BATCH) {
        const batch = items.slice(start, start + BATCH);
        await client.query(
          `INSERT INTO transfer_items (transfer_id, seq, ${ITEM_COLUMNS})
           SELECT $1, * FROM unnest($2::int[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], $11::text[])`,
          [
            t.id,
            batch.map((_, i) => start + i),
            batch.map((i) => i.sopInstanceUID),
            batch.map((i) => i.sha256),
            batch.map((i) => i.size),
            batch.map((i) => i.studyInstanceUID),
            batch.map((i) => i.seriesInstanceUID),
            batch.map((i) => i.state),
            batch.map((i) => i.reason),
            batch.map((i) => i.failureCode),
            batch.map((i) => i.updatedAt),
          ],
        );
      }
    });
  }

  async getTransfer(id: string): Promise<TransferRecord | null> {
    const r = (await this.pool.query<TransferRow>("SELECT * FROM transfers WHERE id = $1", [id])).rows[0];
    return r ? transferFromRow(r) : null;
  }

  async listTransfers(q: TransferListQuery): Promise<TransferRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.createdBy !== undefined) {
      args.push(q.createdBy);
      where.push(`created_by = $${args.length}`);
    }
    if (q.state === "cancelled") where.push("cancelled_at IS NOT NULL");
    else if (q.state) {
      args.push(q.state);
      where.push(`state = $${args.length} AND cancelled_at IS NULL`);
    }
    args.push(q.limit);
    const sql = `SELECT * FROM transfers ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY created_at DESC, id DESC LIMIT $${args.length}`;
    return (await this.pool.query<TransferRow>(sql, args)).rows.map(transferFromRow);
  }

  async markCancelled(transferId: string, at: string): Promise<boolean> {
    return (await this.pool.query("UPDATE transfers SET cancelled_at = $1 WHERE id = $2 AND state IN ('open','released') AND cancelled_at IS NULL", [at, transferId])).rowCount === 1;
  }

  async listItems(transferId: string): Promise<TransferItem[]> {
    const rows = (await this.pool.query<TransferItemRow>(`SELECT ${ITEM_COLUMNS} FROM transfer_items WHERE transfer_id = $1 ORDER BY seq`, [transferId])).rows;
    return rows.map(itemFromRow);
  }

  async getItem(transferId: string, sopInstanceUID: string): Promise<TransferItem | null> {
    const r = (await this.pool.query<TransferItemRow>(`SELECT ${ITEM_COLUMNS} FROM transfer_items WHERE transfer_id = $1 AND sop_instance_uid = $2`, [transferId, sopInstanceUID])).rows[0];
    return r ? itemFromRow(r) : null;
  }

  async findItemsBySha256(transferId: string, sha256: string): Promise<TransferItem[]> {
    const rows = (await this.pool.query<TransferItemRow>(
      `SELECT ${ITEM_COLUMNS} FROM transfer_items WHERE transfer_id = $1 AND sha256 = $2 ORDER BY seq`, [transferId, sha256.toLowerCase()],
    )).rows;
    return rows.map(itemFromRow);
  }

  async updateItem(transferId: string, sopInstanceUID: string, u: { state: ItemState; reason?: string | null; failureCode?: number | null }): Promise<void> {
    const good = u.state === "present" || u.state === "received";
    // good bytes once stored are never un-received by a later bad copy (whichever node saw which copy)
    await this.pool.query(
      `UPDATE transfer_items SET state = $1, reason = $2, failure_code = $3, updated_at = $4
       WHERE transfer_id = $5 AND sop_instance_uid = $6 ${good ? "" : "AND state NOT IN ('present','received')"}`,
      [u.state, good ? null : (u.reason ?? null), good ? null : (u.failureCode ?? null), new Date().toISOString(), transferId, sopInstanceUID],
    );
  }

  async studiesOf(transferId: string, limit: number): Promise<string[]> {
    const rows = (await this.pool.query<{ s: string }>("SELECT DISTINCT study_instance_uid AS s FROM transfer_items WHERE transfer_id = $1 AND study_instance_uid IS NOT NULL LIMIT $2", [transferId, limit])).rows;
    return rows.map((r) => r.s);
  }

  async transfersNaming(studyInstanceUID: string, limit: number): Promise<string[]> {
    const rows = (await this.pool.query<{ t: string }>("SELECT DISTINCT transfer_id AS t FROM transfer_items WHERE study_instance_uid = $1 LIMIT $2", [studyInstanceUID, limit])).rows;
    return rows.map((r) => r.t);
  }

  async countItems(transferId: string): Promise<Record<ItemState, number>> {
    const rows = (await this.pool.query<{ state: ItemState; n: number | string }>(
      "SELECT state, COUNT(*) AS n FROM transfer_items WHERE transfer_id = $1 GROUP BY state", [transferId],
    )).rows;
    const out: Record<ItemState, number> = { present: 0, received: 0, missing: 0, failed: 0 };
    for (const r of rows) out[r.state] = Number(r.n);
    return out;
  }

  async markComplete(transferId: string, at: string): Promise<boolean> {
    // one UPDATE: of two nodes completing the same transfer at once, the second finds the state already changed
    return (await this.pool.query("UPDATE transfers SET state = 'complete', completed_at = $1 WHERE id = $2 AND state IN ('open','released') AND cancelled_at IS NULL", [at, transferId])).rowCount === 1;
  }

  async markReleased(transferId: string, at: string): Promise<boolean> {
    return (await this.pool.query("UPDATE transfers SET state = 'released', released_at = $1 WHERE id = $2 AND state = 'open' AND cancelled_at IS NULL", [at, transferId])).rowCount === 1;
  }

  async setReceipt(transferId: string, receipt: SignedReceipt): Promise<void> {
    await this.pool.query("UPDATE transfers SET receipt = $1 WHERE id = $2", [JSON.stringify(receipt), transferId]);
  }

  async listCompleteWithoutReceipt(): Promise<string[]> {
    return (await this.pool.query<{ id: string }>("SELECT id FROM transfers WHERE state = 'complete' AND receipt IS NULL")).rows.map((r) => r.id);
  }

  async countTransfersByState(): Promise<Record<TransferRecord["state"], number>> {
    return transferStateCounts((await this.pool.query<{ state: TransferRecord["state"]; n: string }>("SELECT CASE WHEN cancelled_at IS NOT NULL THEN 'cancelled' ELSE state END AS state, COUNT(*) AS n FROM transfers GROUP BY 1")).rows);
  }

  async getUploadResult(uploadId: string, opts: { entries?: boolean } = {}): Promise<UploadResult | null> {
    const r = (await this.pool.query<{ result: string }>("SELECT result FROM upload_results WHERE upload_id = $1", [uploadId])).rows[0];
    return r ? assembleUploadResult(r.result, opts.entries === false ? null : (count) => this.listUploadEntries(uploadId, 0, count)) : null;
  }

  async saveUploadResult(result: UploadResult): Promise<void> {
    await this.pool.query(
      `INSERT INTO upload_results (upload_id, transfer_id, state, finished_at, result) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (upload_id) DO UPDATE SET transfer_id = excluded.transfer_id, state = excluded.state, finished_at = excluded.finished_at, result = excluded.result`,
      [result.uploadId, result.transferId, result.state, result.finishedAt, resultSummaryJson(result)],
    );
  }

  async putUploadEntries(uploadId: string, first: number, entries: readonly UploadEntryResult[]): Promise<void> {
    for (let start = 0; start < entries.length; start += BATCH) {
      const batch = entries.slice(start, start + BATCH);
      await this.pool.query(
        `INSERT INTO upload_result_entries (upload_id, seq, entry) SELECT $1, * FROM unnest($2::int[], $3::text[])
         ON CONFLICT (upload_id, seq) DO UPDATE SET entry = excluded.entry`,
        [uploadId, batch.map((_, i) => first + start + i), batch.map((e) => JSON.stringify(e))],
      );
    }
  }

  async listUploadEntries(uploadId: string, first: number, limit: number): Promise<UploadEntryResult[]> {
    const rows = (await this.pool.query<{ entry: string }>(
      "SELECT entry FROM upload_result_entries WHERE upload_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3", [uploadId, first, limit],
    )).rows;
    return rows.map((r) => JSON.parse(r.entry) as UploadEntryResult);
  }

  async deleteUploadResultsBefore(iso: string): Promise<number> {
    return inTransaction(this.pool, async (c) => {
      await c.query("DELETE FROM upload_result_entries WHERE upload_id IN (SELECT upload_id FROM upload_results WHERE state = 'done' AND finished_at < $1)", [iso]);
      return (await c.query("DELETE FROM upload_results WHERE state = 'done' AND finished_at < $1", [iso])).rowCount ?? 0;
    });
  }
}

export const RECEIPT_KEY_NAME = "receipt-ed25519";

/**
 * The receipt signing key every node shares, kept in the database (table relay_keys): the first node
 * to start stores one, the others read it (INSERT ... ON CONFLICT DO NOTHING, then read: race-free).
 * The first one stored is the relay's existing key file when there is one (a single node moved to
 * PostgreSQL keeps its key, so receipts it issued stay verifiable), else a new key.
 */
export async function loadSharedReceiptSigner(pool: pg.Pool, localKeyPath: string): Promise<{ signer: ReceiptSigner; source: "database" | "key file" | "new" }> {
  const read = async () => (await pool.query<{ pem: string }>("SELECT pem FROM relay_keys WHERE name = $1", [RECEIPT_KEY_NAME])).rows[0]?.pem;
  let pem = await read();
  let source: "database" | "key file" | "new" = "database";
  if (!pem) {
    let candidate: string;
    try {
      candidate = await fsp.readFile(localKeyPath, "utf8");
      source = "key file";
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      candidate = ReceiptSigner.generatePem();
      source = "new";
    }
    ReceiptSigner.fromPem(candidate, localKeyPath); // refuse a wrong key before sharing it
    const inserted = await pool.query("INSERT INTO relay_keys (name, pem, created_at) VALUES ($1, $2, now()) ON CONFLICT (name) DO NOTHING", [RECEIPT_KEY_NAME, candidate]);
    if (inserted.rowCount === 0) source = "database"; // another node stored its key first: that one is used
    pem = await read();
    if (!pem) throw new Error("the shared receipt key was stored and then not found");
  }
  return { signer: ReceiptSigner.fromPem(pem, "stored in PostgreSQL (relay_keys)"), source };
}
