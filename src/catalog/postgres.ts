/**
 * The index at scale: PostgreSQL through `pg` with a pool, shared by any number of relay processes.
 * Same schema, semantics and query compiler as SqliteIndex (see sqlite.ts for the row model: study,
 * series and patient rows derived from their instances, first instance wins, blanks filled, counts
 * kept, rows removed with their last instance; a study's patient attributes from its own instances).
 *
 * Concurrency, because several nodes write at once (SQLite had one writer at a time):
 * - De-duplication is decided by the UNIQUE constraint on sop_instance_uid inside the write
 *   transaction (INSERT ... ON CONFLICT DO NOTHING RETURNING): a second writer of the same
 *   SOPInstanceUID waits for the first to commit or roll back, then reads the row that won.
 * - Every write transaction first takes a transaction-scoped advisory lock per study it touches
 *   (several in one fixed order), so the read-merge-write of study and series rows and their
 *   counts never interleave, and writers of one study cannot deadlock each other. Writers of one
 *   study were serialised by the count updates anyway; other studies go on in parallel.
 * - Patients are shared between studies: a new study takes its patient row FOR KEY SHARE (it cannot
 *   be deleted under it), and blanks are filled under a row lock.
 * - A deadlock or a foreign-key race with a concurrent delete is retried (bounded) from the start
 *   of the transaction, which is safe because nothing of the failed attempt was committed.
 * - Migrations run in one transaction holding an advisory lock: nodes starting together apply
 *   each migration once, the others wait and then find nothing to do.
 * - A search runs in one REPEATABLE READ snapshot, so its match list and the rows loaded for the
 *   response agree even while other nodes write.
 */
import crypto from "node:crypto";
import type pg from "pg";
import type { Index, InsertOutcome, InstanceBlob, InstanceLocation, InstanceRecord, InstanceScope, QidoResult } from "./index.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import type { QidoQuery } from "../dicom/qidoQuery.ts";
import { assembleQidoMatch, qidoReturnPlan, type QidoMatchValues, type QidoSeriesValues, type QidoStudyValues } from "../dicom/qido.ts";
import { MIGRATIONS, SCHEMA_MIGRATIONS_TABLE, STUDY_PATIENT_MIGRATION, pendingMigrations, type Migration } from "./migrations.ts";
import { SCOPE_ORDER, compileInstanceScope, compileQidoSearch, matchColumnValues, postgresDialect } from "./queryCompiler.ts";
import { INSTANCE_COLUMNS, PATIENT_COLUMNS, SERIES_COLUMNS, STUDY_COLUMNS, fillBlanks, patientKey, pick, studyPatientAttrs, studyValues, toBlob, toLocation, BLOB_COLUMNS, type BlobRow, type LocationRow } from "./rows.ts";

export interface PostgresIndexOptions {
  /** postgres://user:password@host:port/database */
  url: string;
  /** most connections this process opens (default 10) */
  poolSize?: number;
  /** how long to wait for a connection before a call fails (ms, default 10,000) */
  connectTimeoutMs?: number;
  /** the migrations to apply (default: this build's; tests pass a longer list to play an upgrade) */
  migrations?: readonly Migration[];
}

/** Advisory lock keys (two int4 form: class, object). Class values spell "DR" + a number. */
export const ADVISORY_LOCK = {
  /** (MIGRATIONS, 0): held while a node applies migrations */
  MIGRATIONS: 0x44520001,
  /** (STUDY, hash of StudyInstanceUID): held by every write transaction touching the study */
  STUDY: 0x44520002,
  /** (BLOB, hash of the blob key): held by a node while it puts a blob and indexes it, or deletes it if unreferenced */
  BLOB: 0x44520003,
} as const;

/** Rows per page of iterateInstances. */
const PAGE = 500;
/** Attempts of one write transaction when it loses a deadlock or a foreign-key race. */
const MAX_ATTEMPTS = 5;
/** deadlock_detected, serialization_failure, foreign_key_violation (a concurrent delete) */
const RETRYABLE = new Set(["40P01", "40001", "23503"]);

const LOCATION_COLUMNS =
  "i.pk, i.series_pk, i.study_pk, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.size, i.sha256, i.blob_key," +
  " i.pixel_data, i.bulk_data, se.series_instance_uid, st.study_instance_uid";
const INSTANCE_JOINS = "instances i JOIN series se ON se.pk = i.series_pk JOIN studies st ON st.pk = i.study_pk";

/** Thrown inside the insert transaction to roll it back when the unique constraint said "already there". */
class AlreadyIndexed extends Error {}
/** Thrown inside a transaction when what it locked no longer matches what it read: start again. */
class StartAgain extends Error {}


/** `INSERT INTO table (cols) VALUES ($1..$n) <tail>` with the values taken from `row` by column name. */
function insertStatement(table: string, row: Record<string, unknown>, tail: string): { text: string; values: unknown[] } {
  const cols = Object.keys(row);
  return { text: `INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(", ")}) ${tail}`, values: Object.values(row) };
}

/** `UPDATE table SET col = $1, ... WHERE pk = $n`. */
function updateStatement(table: string, row: Record<string, unknown>, pk: number): { text: string; values: unknown[] } {
  const cols = Object.keys(row);
  return { text: `UPDATE ${table} SET ${cols.map((c, i) => `${c} = $${i + 1}`).join(", ")} WHERE pk = $${cols.length + 1}`, values: [...Object.values(row), pk] };
}

/** The advisory lock object of a study: 32 bits of SHA-256 (a collision only serialises two studies). */
function studyLockKey(studyInstanceUID: string): number {
  return lockKey(studyInstanceUID);
}

/** 32 bits of SHA-256 of a name, as an advisory lock object (a collision only serialises two names). */
function lockKey(name: string): number {
  return crypto.createHash("sha256").update(name).digest().readInt32BE(0);
}

/** int8 (BIGINT, COUNT(*)) as a JS number: keys, sizes and counts stay far below 2^53. */
const INT8_OID = 20;
// pg (~16 MB resident) is loaded when a PostgreSQL index is opened, not by every relay that imports this file
let pgModule: typeof pg | undefined;
export async function loadPg(): Promise<typeof pg> {
  return (pgModule ??= (await import("pg")).default);
}
const types = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === INT8_OID && format !== "binary" ? (v: string) => Number(v) : pgModule!.types.getTypeParser(oid, format)) as pg.CustomTypesConfig["getTypeParser"],
};

type Client = pg.PoolClient;

export class PostgresIndex implements Index {
  readonly kind = "postgres";
  private pool: pg.Pool | null = null;
  /**
   * Connections that hold session advisory locks on blob keys while a blob is put and indexed. Apart from
   * the query pool, so a holder never waits for a query connection that other holders took.
   */
  private lockPool: pg.Pool | null = null;
  private readonly migrations: readonly Migration[];

  constructor(private readonly options: PostgresIndexOptions) {
    if (!options.url) throw new Error("the PostgreSQL index needs a connection URL (index.postgres.url)");
    this.migrations = options.migrations ?? MIGRATIONS;
  }

  private get db(): pg.Pool {
    if (!this.pool) throw new Error("the PostgreSQL index is not open: call init() first");
    return this.pool;
  }

  async init(): Promise<void> {
    if (!this.pool) {
      const pg = await loadPg();
      const pool = new pg.Pool({
        connectionString: this.options.url,
        max: Math.max(1, Math.floor(this.options.poolSize ?? 10)),
        connectionTimeoutMillis: this.options.connectTimeoutMs ?? 10_000,
        application_name: "dicom-relay",
        types,
      });
      // an idle connection dropped by the server (restart, failover) is not a crash: the pool
      // discards it and the next call opens a new one or fails with its own error
      pool.on("error", () => {});
      // nor is one dropped while checked out (a transaction, a held blob lock): the awaiting call gets the error
      pool.on("connect", (client) => client.on("error", () => {}));
      this.pool = pool;
      const lockPool = new pg.Pool({
        connectionString: this.options.url,
        max: Math.max(1, Math.floor(this.options.poolSize ?? 10)),
        connectionTimeoutMillis: this.options.connectTimeoutMs ?? 10_000,
        application_name: "dicom-relay-locks",
        types,
      });
      lockPool.on("error", () => {});
      lockPool.on("connect", (client) => client.on("error", () => {}));
      this.lockPool = lockPool;
    }
    const client = await this.db.connect();
    try {
      await client.query("BEGIN");
      // held until COMMIT / ROLLBACK (or the connection's end): one node migrates, the others wait
      await client.query("SELECT pg_advisory_xact_lock($1, 0)", [ADVISORY_LOCK.MIGRATIONS]);
      await client.query(SCHEMA_MIGRATIONS_TABLE.postgres);
      const applied = (await client.query<{ version: number }>("SELECT version FROM schema_migrations")).rows.map((r) => r.version);
      for (const m of pendingMigrations(applied, "postgres", this.migrations)) {
        await client.query(m.sql.postgres!);
        if (m.version === STUDY_PATIENT_MIGRATION) await this.rebuildStudyPatients(client);
        await client.query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, now())", [m.version, m.name]);
      }
      await client.query("COMMIT");
      client.release();
    } catch (err) {
      await this.rollbackAndRelease(client, err);
      throw err;
    }
  }

  /** Migration 4's data: each study's patient attributes from its own instances (one study at a time). */
  private async rebuildStudyPatients(c: Client): Promise<void> {
    const studies = (await c.query<{ pk: number }>("SELECT pk FROM studies ORDER BY pk")).rows.map((r) => r.pk);
    for (const pk of studies) {
      const rows = (await c.query<{ metadata: string }>("SELECT metadata FROM instances WHERE study_pk = $1 ORDER BY pk", [pk])).rows;
      const attrs = studyPatientAttrs(rows.map((r) => JSON.parse(r.metadata) as DicomJsonDataset));
      const up = updateStatement("studies", { ...pickColumns(matchColumnValues("patient", attrs), PATIENT_COLUMNS), patient_attrs: JSON.stringify(attrs) }, pk);
      await c.query(up.text, up.values);
    }
  }

  /**
   * The connection pool, for other state kept in the same database (transfers, the receipt key): their
   * tables come with the index's migrations (migrations.ts), so they exist once init() returned.
   */
  get sharedPool(): pg.Pool {
    return this.db;
  }

  /**
   * fn runs while this session holds the advisory lock (BLOB, hash of blobKey): every node sharing this
   * database waits for it. A session lock on a dedicated connection, because fn (a blob upload) outlives
   * any one query; released when fn ends, or by the server when the connection or the node dies.
   */
  async withBlobLock<T>(blobKey: string, fn: () => Promise<T>): Promise<T> {
    if (!this.lockPool) throw new Error("the PostgreSQL index is not open: call init() first");
    const client = await this.lockPool.connect();
    const key = lockKey(blobKey);
    try {
      await client.query("SELECT pg_advisory_lock($1, $2)", [ADVISORY_LOCK.BLOB, key]);
    } catch (err) {
      client.release(err as Error);
      throw err;
    }
    try {
      return await fn();
    } finally {
      try {
        await client.query("SELECT pg_advisory_unlock($1, $2)", [ADVISORY_LOCK.BLOB, key]);
        client.release();
      } catch (err) {
        // the connection broke: dropping it ends the session, and the server releases its locks
        client.release(err as Error);
      }
    }
  }

  /** Applied schema versions (for diagnostics and tests). */
  async schemaVersions(): Promise<number[]> {
    return (await this.db.query<{ version: number }>("SELECT version FROM schema_migrations ORDER BY version")).rows.map((r) => r.version);
  }

  /** The newest schema version this build knows. */
  static readonly latestSchemaVersion = MIGRATIONS[MIGRATIONS.length - 1]!.version;

  private async rollbackAndRelease(client: Client, cause: unknown): Promise<void> {
    try {
      await client.query("ROLLBACK");
      client.release();
    } catch {
      // the connection is broken: drop it from the pool rather than hand it out again
      client.release(cause instanceof Error ? cause : new Error(String(cause)));
    }
  }

  /** One write transaction; started again (bounded) when it loses a deadlock or a race. */
  private async transaction<T>(work: (c: Client) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.db.connect();
      try {
        await client.query("BEGIN");
        const result = await work(client);
        await client.query("COMMIT");
        client.release();
        return result;
      } catch (err) {
        await this.rollbackAndRelease(client, err);
        const code = (err as { code?: unknown }).code;
        const retryable = err instanceof StartAgain || (typeof code === "string" && RETRYABLE.has(code));
        if (!retryable || attempt >= MAX_ATTEMPTS) throw err;
        await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 20 * attempt)));
      }
    }
  }

  /** Advisory locks of these studies, in one fixed order (two transactions never wait on each other in a circle). */
  private async lockStudies(c: Client, studyInstanceUIDs: Iterable<string>): Promise<void> {
    const keys = [...new Set([...studyInstanceUIDs].map(studyLockKey))].sort((a, b) => a - b);
    for (const k of keys) await c.query("SELECT pg_advisory_xact_lock($1, $2)", [ADVISORY_LOCK.STUDY, k]);
  }

  // ---- writing ----

  async insertInstance(record: InstanceRecord): Promise<InsertOutcome> {
    // fast path for the common re-send: nothing to write
    const before = await this.findBySop(this.db, record.sopInstanceUID);
    if (before) return this.compare(record, before);
    try {
      await this.transaction(async (c) => {
        await this.lockStudies(c, [record.studyInstanceUID]);
        await this.insertRow(c, record);
      });
      return { outcome: "inserted" };
    } catch (err) {
      if (!(err instanceof AlreadyIndexed)) throw err;
      const existing = await this.findBySop(this.db, record.sopInstanceUID);
      if (!existing) throw new Error(`instance ${record.sopInstanceUID} was reported present and then absent`);
      return this.compare(record, existing);
    }
  }

  private compare(record: InstanceRecord, existing: LocationRow): InsertOutcome {
    const loc = toLocation(existing);
    return existing.sha256 === record.sha256 ? { outcome: "duplicate", existing: loc } : { outcome: "conflict", existing: loc };
  }

  async replaceInstance(record: InstanceRecord): Promise<InstanceLocation | null> {
    return this.transaction(async (c) => {
      const seen = await this.findBySop(c, record.sopInstanceUID);
      const studies = [record.studyInstanceUID, ...(seen ? [seen.study_instance_uid] : [])];
      await this.lockStudies(c, studies);
      // read again under the locks: another node may have moved or removed it meanwhile
      const old = await this.findBySop(c, record.sopInstanceUID);
      if (old && !studies.includes(old.study_instance_uid)) throw new StartAgain();
      if (old) await this.deleteRows(c, [old]);
      await this.insertRow(c, record);
      return old ? toLocation(old) : null;
    });
  }

  /** Inside a transaction holding the study's lock: patient / study / series rows, the instance row, the counts. */
  private async insertRow(c: Client, record: InstanceRecord): Promise<void> {
    const now = new Date().toISOString();
    const ds = record.metadata;
    const studyPk = await this.ensureStudy(c, record.studyInstanceUID, ds, now);
    const seriesPk = await this.ensureSeries(c, studyPk, record.seriesInstanceUID, ds, now);
    const pending = record.pendingTransferId ?? null;
    const row = {
      sop_instance_uid: record.sopInstanceUID,
      series_pk: seriesPk,
      study_pk: studyPk,
      sop_class_uid: record.sopClassUID,
      ...pickColumns(matchColumnValues("instance", ds), INSTANCE_COLUMNS),
      transfer_syntax_uid: record.transferSyntaxUID,
      size: record.size,
      sha256: record.sha256,
      blob_key: record.blobKey,
      metadata: JSON.stringify(ds),
      qido_attrs: JSON.stringify(pick(ds, "instance")),
      pixel_data: record.pixelData ? JSON.stringify(record.pixelData) : null,
      bulk_data: JSON.stringify(record.bulkData ?? []),
      stored_at: now,
      pending_transfer_id: pending,
    };
    const ins = insertStatement("instances", row, "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING pk");
    if ((await c.query(ins.text, ins.values)).rowCount === 0) throw new AlreadyIndexed();
    const visible = pending === null ? 1 : 0;
    await c.query("UPDATE series SET instance_count = instance_count + 1, visible_count = visible_count + $1 WHERE pk = $2", [visible, seriesPk]);
    await c.query("UPDATE studies SET instance_count = instance_count + 1, visible_count = visible_count + $1 WHERE pk = $2", [visible, studyPk]);
  }

  private async ensurePatient(c: Client, ds: DicomJsonDataset): Promise<number> {
    const key = patientKey(ds);
    const attrs = pick(ds, "patient");
    const ins = insertStatement(
      "patients",
      { ...key, ...pickColumns(matchColumnValues("patient", attrs), PATIENT_COLUMNS), attrs: JSON.stringify(attrs) },
      "ON CONFLICT (patient_key_id, patient_key_issuer, patient_key_name) DO NOTHING",
    );
    // bounded: a row deleted by another node between the insert and the read is inserted again
    for (let attempt = 0; attempt < 3; attempt++) {
      await c.query(ins.text, ins.values);
      // KEY SHARE: the row cannot be deleted before the study that points to it is committed
      const found = await c.query<{ pk: number; attrs: string }>(
        "SELECT pk, attrs FROM patients WHERE patient_key_id = $1 AND patient_key_issuer = $2 AND patient_key_name = $3 FOR KEY SHARE",
        [key.patient_key_id, key.patient_key_issuer, key.patient_key_name],
      );
      const row = found.rows[0];
      if (row) {
        await this.fillPatient(c, row.pk, row.attrs, ds);
        return row.pk;
      }
    }
    throw new StartAgain();
  }

  private async fillPatient(c: Client, pk: number, storedJson: string, ds: DicomJsonDataset): Promise<void> {
    if (!fillBlanks(JSON.parse(storedJson), ds, "patient")) return;
    // patients are shared between studies (whose writers do not exclude each other): merge under the row lock
    const fresh = await c.query<{ attrs: string }>("SELECT attrs FROM patients WHERE pk = $1 FOR NO KEY UPDATE", [pk]);
    const merged = fresh.rows[0] && fillBlanks(JSON.parse(fresh.rows[0].attrs), ds, "patient");
    if (merged) {
      const up = updateStatement("patients", { ...pickColumns(matchColumnValues("patient", merged), PATIENT_COLUMNS), attrs: JSON.stringify(merged) }, pk);
      await c.query(up.text, up.values);
    }
  }

  private async ensureStudy(c: Client, uid: string, ds: DicomJsonDataset, now: string): Promise<number> {
    const existing = (await c.query<{ pk: number; patient_pk: number; attrs: string; patient_attrs: string }>(
      "SELECT pk, patient_pk, attrs, patient_attrs FROM studies WHERE study_instance_uid = $1", [uid],
    )).rows[0];
    if (existing) {
      const merged = fillBlanks(JSON.parse(existing.attrs), ds, "study");
      if (merged) {
        const up = updateStatement("studies", { ...pickColumns(matchColumnValues("study", merged), STUDY_COLUMNS), attrs: JSON.stringify(merged) }, existing.pk);
        await c.query(up.text, up.values);
      }
      const mergedPatient = fillBlanks(JSON.parse(existing.patient_attrs), ds, "patient");
      if (mergedPatient) {
        const up = updateStatement("studies", {
          ...pickColumns(matchColumnValues("patient", mergedPatient), PATIENT_COLUMNS), patient_attrs: JSON.stringify(mergedPatient),
        }, existing.pk);
        await c.query(up.text, up.values);
      }
      // the study keeps the patient its first instance named; only that same patient's blanks are filled
      const patient = (await c.query<{ patient_key_id: string; patient_key_issuer: string; patient_key_name: string; attrs: string }>(
        "SELECT patient_key_id, patient_key_issuer, patient_key_name, attrs FROM patients WHERE pk = $1", [existing.patient_pk],
      )).rows[0]!;
      const key = patientKey(ds);
      if (patient.patient_key_id === key.patient_key_id && patient.patient_key_issuer === key.patient_key_issuer && patient.patient_key_name === key.patient_key_name) {
        await this.fillPatient(c, existing.patient_pk, patient.attrs, ds);
      }
      return existing.pk;
    }
    const attrs = pick(ds, "study");
    const patientAttrs = pick(ds, "patient");
    const ins = insertStatement("studies", {
      study_instance_uid: uid,
      patient_pk: await this.ensurePatient(c, ds),
      ...pickColumns(matchColumnValues("study", attrs), STUDY_COLUMNS),
      ...pickColumns(matchColumnValues("patient", patientAttrs), PATIENT_COLUMNS),
      attrs: JSON.stringify(attrs),
      patient_attrs: JSON.stringify(patientAttrs),
      created_at: now,
    }, "ON CONFLICT (study_instance_uid) DO NOTHING");
    await c.query(ins.text, ins.values);
    return (await c.query<{ pk: number }>("SELECT pk FROM studies WHERE study_instance_uid = $1", [uid])).rows[0]!.pk;
  }

  private async ensureSeries(c: Client, studyPk: number, uid: string, ds: DicomJsonDataset, now: string): Promise<number> {
    const existing = (await c.query<{ pk: number; attrs: string }>(
      "SELECT pk, attrs FROM series WHERE study_pk = $1 AND series_instance_uid = $2", [studyPk, uid],
    )).rows[0];
    if (existing) {
      const merged = fillBlanks(JSON.parse(existing.attrs), ds, "series");
      if (merged) {
        const up = updateStatement("series", { ...pickColumns(matchColumnValues("series", merged), SERIES_COLUMNS), attrs: JSON.stringify(merged) }, existing.pk);
        await c.query(up.text, up.values);
      }
      return existing.pk;
    }
    const attrs = pick(ds, "series");
    const ins = insertStatement("series", {
      series_instance_uid: uid,
      study_pk: studyPk,
      ...pickColumns(matchColumnValues("series", attrs), SERIES_COLUMNS),
      attrs: JSON.stringify(attrs),
      created_at: now,
    }, "ON CONFLICT (study_pk, series_instance_uid) DO NOTHING");
    await c.query(ins.text, ins.values);
    return (await c.query<{ pk: number }>("SELECT pk FROM series WHERE study_pk = $1 AND series_instance_uid = $2", [studyPk, uid])).rows[0]!.pk;
  }

  /** Inside a transaction holding the studies' locks: remove instance rows, recount, drop emptied rows. */
  private async deleteRows(c: Client, rows: readonly LocationRow[]): Promise<void> {
    if (!rows.length) return;
    await c.query("DELETE FROM instances WHERE pk = ANY($1::bigint[])", [rows.map((r) => r.pk)]);
    await this.recount(c, new Set(rows.map((r) => r.series_pk)), new Set(rows.map((r) => r.study_pk)));
  }

  private async recount(c: Client, seriesPks: ReadonlySet<number>, studyPks: ReadonlySet<number>): Promise<void> {
    for (const pk of seriesPks) {
      await c.query(
        "UPDATE series SET instance_count = (SELECT COUNT(*) FROM instances WHERE series_pk = $1)," +
          " visible_count = (SELECT COUNT(*) FROM instances WHERE series_pk = $1 AND pending_transfer_id IS NULL) WHERE pk = $1",
        [pk],
      );
      await c.query("DELETE FROM series WHERE pk = $1 AND instance_count = 0", [pk]);
    }
    for (const pk of studyPks) {
      await c.query(
        "UPDATE studies SET instance_count = (SELECT COALESCE(SUM(instance_count), 0) FROM series WHERE study_pk = $1)," +
          " visible_count = (SELECT COALESCE(SUM(visible_count), 0) FROM series WHERE study_pk = $1) WHERE pk = $1",
        [pk],
      );
      const study = (await c.query<{ patient_pk: number; instance_count: number }>("SELECT patient_pk, instance_count FROM studies WHERE pk = $1", [pk])).rows[0];
      if (study && study.instance_count === 0) {
        await c.query("DELETE FROM studies WHERE pk = $1", [pk]);
        // a study of this patient committed meanwhile by another node makes this a foreign-key
        // violation: the transaction is retried and then keeps the patient
        await c.query("DELETE FROM patients WHERE pk = $1 AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_pk = $1)", [study.patient_pk]);
      }
    }
  }

  async deleteInstances(scope: InstanceScope): Promise<InstanceLocation[]> {
    const where = compileInstanceScope(scope, postgresDialect);
    return this.transaction(async (c) => {
      await this.lockStudies(c, [scope.studyInstanceUID]);
      const rows = (await c.query<LocationRow>(`SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`, where.params)).rows;
      await this.deleteRows(c, rows);
      return rows.map(toLocation);
    });
  }

  async releaseTransfer(transferId: string): Promise<number> {
    return this.transaction(async (c) => {
      let released = 0;
      // bounded rounds: instances added to the transfer in another study while we lock are taken in the next round
      for (let round = 0; round < 10; round++) {
        const studies = (await c.query<{ pk: number; study_instance_uid: string }>(
          "SELECT st.pk, st.study_instance_uid FROM studies st WHERE st.pk IN (SELECT study_pk FROM instances WHERE pending_transfer_id = $1)",
          [transferId],
        )).rows;
        if (!studies.length) return released;
        await this.lockStudies(c, studies.map((s) => s.study_instance_uid));
        const changed = (await c.query<{ series_pk: number; study_pk: number }>(
          "UPDATE instances SET pending_transfer_id = NULL WHERE pending_transfer_id = $1 AND study_pk = ANY($2::bigint[]) RETURNING series_pk, study_pk",
          [transferId, studies.map((s) => s.pk)],
        )).rows;
        released += changed.length;
        await this.recount(c, new Set(changed.map((r) => r.series_pk)), new Set(changed.map((r) => r.study_pk)));
      }
      throw new Error(`transfer ${transferId} kept gaining instances while being released; try again`);
    });
  }

  // ---- reading ----

  private async findBySop(q: pg.Pool | Client, sopInstanceUID: string, includePending = true): Promise<LocationRow | undefined> {
    const res = await q.query<LocationRow>(
      `SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE i.sop_instance_uid = $1${includePending ? "" : " AND i.pending_transfer_id IS NULL"}`,
      [sopInstanceUID],
    );
    return res.rows[0];
  }

  async getInstance(sopInstanceUID: string, opts: { includePending?: boolean; pendingOf?: string } = {}): Promise<InstanceLocation | null> {
    if (opts.pendingOf !== undefined) {
      const own = await this.db.query<LocationRow>(`SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE i.sop_instance_uid = $1 AND i.pending_transfer_id = $2`, [sopInstanceUID, opts.pendingOf]);
      return own.rows[0] ? toLocation(own.rows[0]) : null;
    }
    const row = await this.findBySop(this.db, sopInstanceUID, opts.includePending ?? false);
    return row ? toLocation(row) : null;
  }

  async listInstances(scope: InstanceScope): Promise<InstanceLocation[]> {
    const where = compileInstanceScope(scope, postgresDialect);
    const res = await this.db.query<LocationRow>(`SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`, where.params);
    return res.rows.map(toLocation);
  }

  async listInstanceBlobs(scope: InstanceScope): Promise<InstanceBlob[]> {
    const where = compileInstanceScope(scope, postgresDialect);
    const res = await this.db.query<BlobRow>(`SELECT ${BLOB_COLUMNS} FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`, where.params);
    return res.rows.map(toBlob);
  }

  async listMetadata(scope: InstanceScope): Promise<string[]> {
    const where = compileInstanceScope(scope, postgresDialect);
    // TEXT comes back as the stored string: no parse / re-serialise per instance
    const res = await this.db.query<{ metadata: string }>(`SELECT i.metadata FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`, where.params);
    return res.rows.map((r) => r.metadata);
  }

  async isBlobReferenced(blobKey: string): Promise<boolean> {
    return (await this.db.query("SELECT 1 FROM instances WHERE blob_key = $1 LIMIT 1", [blobKey])).rowCount !== 0;
  }

  async *iterateInstances(): AsyncIterable<InstanceLocation> {
    // bounded by the rows present when the walk starts: rows added meanwhile are not chased
    const last = (await this.db.query<{ m: number }>("SELECT COALESCE(MAX(pk), 0) AS m FROM instances")).rows[0]!.m;
    let after = 0;
    while (after < last) {
      const rows = (await this.db.query<LocationRow>(
        `SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE i.pk > $1 AND i.pk <= $2 ORDER BY i.pk LIMIT ${PAGE}`, [after, last],
      )).rows;
      if (!rows.length) break;
      for (const r of rows) yield toLocation(r);
      after = rows[rows.length - 1]!.pk;
    }
  }

  async search(query: QidoQuery, opts: { allowedStudies?: readonly string[] | null } = {}): Promise<QidoResult> {
    const compiled = compileQidoSearch(query, opts, postgresDialect);
    const client = await this.db.connect();
    try {
      // one snapshot: the matched rows and the rows loaded for them agree while other nodes write
      await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      const result = await this.searchIn(client, query, compiled);
      await client.query("COMMIT");
      client.release();
      return result;
    } catch (err) {
      await this.rollbackAndRelease(client, err);
      throw err;
    }
  }

  private async searchIn(c: Client, query: QidoQuery, compiled: { sql: string; params: unknown[] }): Promise<QidoResult> {
    const rows = (await c.query<{ study_pk: number; series_pk?: number; instance_pk?: number }>(compiled.sql, compiled.params)).rows;
    if (!rows.length) return { matches: [] };
    const plan = qidoReturnPlan(query);
    const studies = await this.loadStudies(c, rows.map((r) => r.study_pk));
    const series = query.level === "study" ? new Map<number, QidoSeriesValues>() : await this.loadSeries(c, rows.map((r) => r.series_pk!));
    const instances = query.level === "instance" ? await this.loadInstances(c, rows.map((r) => r.instance_pk!), plan.needsMetadata) : null;
    const representatives = !instances && plan.needsMetadata
      ? await this.representatives(c, query.level === "study" ? "study_pk" : "series_pk", rows.map((r) => (query.level === "study" ? r.study_pk : r.series_pk!)))
      : null;
    const matches = rows.map((r) => {
      const values: QidoMatchValues = { study: studies.get(r.study_pk)! };
      if (r.series_pk !== undefined) values.series = series.get(r.series_pk);
      if (instances) {
        const inst = instances.get(r.instance_pk!)!;
        values.instance = { sopInstanceUID: inst.sopInstanceUID, attrs: inst.attrs };
        values.metadata = inst.metadata;
      } else if (representatives) {
        values.metadata = representatives.get(query.level === "study" ? r.study_pk : r.series_pk!) ?? null;
      }
      return assembleQidoMatch(query.level, plan, values);
    });
    return { matches };
  }

  private async loadStudies(c: Client, pks: number[]): Promise<Map<number, QidoStudyValues>> {
    const list = [...new Set(pks)];
    const rows = (await c.query<{ pk: number; study_instance_uid: string; attrs: string; patient_attrs: string; visible_count: number }>(
      "SELECT st.pk, st.study_instance_uid, st.attrs, st.patient_attrs, st.visible_count FROM studies st WHERE st.pk = ANY($1::bigint[])",
      [list],
    )).rows;
    const perSeries = (await c.query<{ study_pk: number; modality: string | null; n: number }>(
      "SELECT study_pk, modality, COUNT(*) AS n FROM series WHERE study_pk = ANY($1::bigint[]) AND visible_count > 0 GROUP BY study_pk, modality",
      [list],
    )).rows;
    return studyValues(rows, perSeries);
  }

  private async loadSeries(c: Client, pks: number[]): Promise<Map<number, QidoSeriesValues>> {
    const rows = (await c.query<{ pk: number; series_instance_uid: string; attrs: string; visible_count: number }>(
      "SELECT pk, series_instance_uid, attrs, visible_count FROM series WHERE pk = ANY($1::bigint[])", [[...new Set(pks)]],
    )).rows;
    return new Map(rows.map((r) => [r.pk, { seriesInstanceUID: r.series_instance_uid, attrs: JSON.parse(r.attrs), numberOfInstances: r.visible_count }]));
  }

  private async loadInstances(c: Client, pks: number[], full: boolean) {
    const rows = (await c.query<{ pk: number; sop_instance_uid: string; qido_attrs: string; metadata?: string }>(
      `SELECT pk, sop_instance_uid, qido_attrs${full ? ", metadata" : ""} FROM instances WHERE pk = ANY($1::bigint[])`, [pks],
    )).rows;
    return new Map(rows.map((r) => [r.pk, {
      sopInstanceUID: r.sop_instance_uid,
      attrs: JSON.parse(r.qido_attrs) as DicomJsonDataset,
      metadata: r.metadata !== undefined ? (JSON.parse(r.metadata) as DicomJsonDataset) : null,
    }]));
  }

  /**
   * The first visible instance of each study or series: the source of attributes the index keeps
   * no column for. One query for the page (a lateral probe per key), not one per match.
   */
  private async representatives(c: Client, column: "study_pk" | "series_pk", pks: number[]): Promise<Map<number, DicomJsonDataset>> {
    const rows = (await c.query<{ k: number; metadata: string | null }>(
      `SELECT k, (SELECT metadata FROM instances WHERE ${column} = k AND pending_transfer_id IS NULL ORDER BY pk LIMIT 1) AS metadata` +
        " FROM unnest($1::bigint[]) AS k",
      [[...new Set(pks)]],
    )).rows;
    const out = new Map<number, DicomJsonDataset>();
    for (const r of rows) if (r.metadata !== null) out.set(r.k, JSON.parse(r.metadata) as DicomJsonDataset);
    return out;
  }

  async ping(): Promise<void> {
    await this.db.query("SELECT 1");
  }

  async close(): Promise<void> {
    const pool = this.pool;
    const lockPool = this.lockPool;
    this.pool = null;
    this.lockPool = null;
    await pool?.end();
    await lockPool?.end();
  }
}

/** The named columns of a matchColumnValues result (all of them, null when absent). */
function pickColumns(values: Record<string, string | number | null>, columns: readonly string[]): Record<string, string | number | null> {
  const out: Record<string, string | number | null> = {};
  for (const c of columns) out[c] = values[c] ?? null;
  return out;
}
