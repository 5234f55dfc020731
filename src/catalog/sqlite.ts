/**
 * The embedded index: SQLite through better-sqlite3 (synchronous calls behind the async Index API).
 *
 * - WAL, so readers (QIDO, WADO) never wait for a writer. A STOW-RS or a finished upload answered
 *   "stored" lets the sender drop its copy, so each write must survive a power cut before its caller
 *   learns it is done: every write method fsyncs the WAL (fdatasync on the thread pool) before it
 *   resolves. That is synchronous=FULL's guarantee without FULL's fsync on the event loop thread
 *   (the pragma is NORMAL, so SQLite itself syncs only at checkpoints). Inserts are group-committed:
 *   those that arrive while the previous group's fsync runs share the next transaction and fsync.
 *   A row is visible to this process's readers a moment before it is durable; nobody is told
 *   "stored" before it is.
 * - Study / series / patient rows are derived from their instances: created by the first instance
 *   (whose attributes win), blanks filled by later ones, counts kept on every change, rows removed
 *   with their last instance. The patient attributes a study shows and is matched on are kept on the
 *   study, from its own instances only: a patient row is an identity, and studies without any identity
 *   (no ID, issuer or name) share that row without sharing attributes.
 * - De-duplication is decided by the UNIQUE constraint on sop_instance_uid inside the write
 *   transaction (INSERT ... ON CONFLICT DO NOTHING), never by a read before the write alone.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import Database from "better-sqlite3";
import type { Index, InsertOutcome, InstanceBlob, InstanceLocation, InstanceRecord, InstanceScope, QidoResult } from "./index.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import type { QidoQuery } from "../dicom/qidoQuery.ts";
import { assembleQidoMatch, qidoReturnPlan, type QidoMatchValues, type QidoSeriesValues, type QidoStudyValues } from "../dicom/qido.ts";
import { MIGRATIONS, SCHEMA_MIGRATIONS_TABLE, STUDY_PATIENT_MIGRATION, pendingMigrations } from "./migrations.ts";
import { SCOPE_ORDER, compileInstanceScope, compileQidoSearch, matchColumnValues, sqliteDialect } from "./queryCompiler.ts";
import { INSTANCE_COLUMNS, PATIENT_COLUMNS, SERIES_COLUMNS, STUDY_COLUMNS, fillBlanks, patientKey, pick, studyPatientAttrs, studyValues, toBlob, toLocation, BLOB_COLUMNS, type BlobRow, type LocationRow } from "./rows.ts";

export interface SqliteIndexOptions {
  /** database file, or ":memory:" (tests) */
  path: string;
  /** how long a writer waits for another process's write lock (ms) */
  busyTimeoutMs?: number;
}

/** Rows per page of iterateInstances. */
const PAGE = 500;

const LOCATION_COLUMNS =
  "i.pk, i.series_pk, i.study_pk, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.size, i.sha256, i.blob_key," +
  " i.pixel_data, i.bulk_data, se.series_instance_uid, st.study_instance_uid";
const INSTANCE_JOINS = "instances i JOIN series se ON se.pk = i.series_pk JOIN studies st ON st.pk = i.study_pk";

/** Thrown inside the insert transaction to roll it back when the unique constraint said "already there". */
class AlreadyIndexed extends Error {}

const assignments = (cols: string[]) => cols.map((c) => `${c} = @${c}`).join(", ");

/** One group's transaction: rows read once, counts added once (SqliteIndex.insertRow). */
interface GroupMemo {
  studies: Map<string, { pk: number; patientPk: number; attrs: DicomJsonDataset; patientAttrs: DicomJsonDataset }>;
  /** by study pk + "/" + SeriesInstanceUID */
  series: Map<string, { pk: number; attrs: DicomJsonDataset }>;
  patients: Map<number, { key: ReturnType<typeof patientKey>; attrs: DicomJsonDataset }>;
  patientByKey: Map<string, number>;
  seriesCounts: Map<number, { added: number; visible: number }>;
  studyCounts: Map<number, { added: number; visible: number }>;
}

const newGroupMemo = (): GroupMemo => ({ studies: new Map(), series: new Map(), patients: new Map(), patientByKey: new Map(), seriesCounts: new Map(), studyCounts: new Map() });

export class SqliteIndex implements Index {
  readonly kind = "sqlite";
  private db: Database.Database | null = null;
  private readonly statements = new Map<string, Database.Statement>();

  constructor(private readonly options: SqliteIndexOptions) {}

  private get conn(): Database.Database {
    if (!this.db) throw new Error("the SQLite index is not open: call init() first");
    return this.db;
  }

  /** Prepared statements are cached by their SQL text (search SQL varies with the query's keys). */
  private prep(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      if (this.statements.size >= 500) this.statements.clear();
      s = this.conn.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  async init(): Promise<void> {
    if (!this.db) {
      const file = this.options.path;
      if (file !== ":memory:") fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      const db = new Database(file);
      try {
        db.pragma("journal_mode = WAL");
        db.pragma("synchronous = NORMAL"); // and syncWal() after every write: see the top of the file
        db.pragma("foreign_keys = ON");
        // the statement journals of the group commit's savepoints in memory, not in temporary files (6 writes an instance)
        db.pragma("temp_store = MEMORY");
        db.pragma(`busy_timeout = ${Math.max(0, Math.floor(this.options.busyTimeoutMs ?? 5000))}`);
      } catch (err) {
        db.close();
        throw err;
      }
      this.db = db;
    }
    const db = this.conn;
    db.exec(SCHEMA_MIGRATIONS_TABLE.sqlite);
    // IMMEDIATE: two processes starting together apply each migration once
    db.transaction(() => {
      const applied = db.prepare("SELECT version FROM schema_migrations").pluck().all() as number[];
      for (const m of pendingMigrations(applied, "sqlite")) {
        db.exec(m.sql.sqlite);
        if (m.version === STUDY_PATIENT_MIGRATION) this.rebuildStudyPatients();
        db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)").run(m.version, m.name, new Date().toISOString());
      }
    }).immediate();
  }

  /** Migration 4's data: each study's patient attributes from its own instances (one study at a time). */
  private rebuildStudyPatients(): void {
    const db = this.conn;
    const studies = db.prepare("SELECT pk FROM studies ORDER BY pk").pluck().all() as number[];
    const metadata = db.prepare("SELECT metadata FROM instances WHERE study_pk = ? ORDER BY pk").pluck();
    const update = db.prepare(`UPDATE studies SET ${assignments(PATIENT_COLUMNS)}, patient_attrs = @patient_attrs WHERE pk = @pk`);
    for (const pk of studies) {
      const attrs = studyPatientAttrs((function* () {
        for (const json of metadata.iterate(pk) as Iterable<string>) yield JSON.parse(json) as DicomJsonDataset;
      })());
      update.run({ ...matchColumnValues("patient", attrs), patient_attrs: JSON.stringify(attrs), pk });
    }
  }

  /** Applied schema versions (for diagnostics and tests). */
  schemaVersions(): number[] {
    return this.conn.prepare("SELECT version FROM schema_migrations ORDER BY version").pluck().all() as number[];
  }

  /** The newest schema version this build knows. */
  static readonly latestSchemaVersion = MIGRATIONS[MIGRATIONS.length - 1]!.version;

  // ---- writing ----

  async insertInstance(record: InstanceRecord): Promise<InsertOutcome> {
    // fast path for the common re-send: nothing to write
    const before = this.findBySop(record.sopInstanceUID);
    if (before) return this.compare(record, before);
    return new Promise<InsertOutcome>((resolve, reject) => {
      this.queued.push({ record, resolve, reject });
      if (!this.committing) {
        this.committing = new Promise<void>((done) => setImmediate(() => void this.commitGroups().finally(done)));
      }
    });
  }

  private queued: { record: InstanceRecord; resolve: (o: InsertOutcome) => void; reject: (e: unknown) => void }[] = [];
  /** set while groups are being committed (close() waits for it) */
  private committing: Promise<void> | null = null;

  /** Group commit: while one group's WAL fsync runs, the next group gathers. */
  private async commitGroups(): Promise<void> {
    while (this.queued.length) {
      const group = this.queued.splice(0);
      let outcomes: ({ ok: InsertOutcome } | { err: unknown })[];
      try {
        outcomes = this.insertGroup(group.map((g) => g.record));
        await this.syncWal();
      } catch (err) {
        for (const g of group) g.reject(err);
        continue;
      }
      group.forEach((g, i) => {
        const o = outcomes[i]!;
        if ("ok" in o) g.resolve(o.ok);
        else g.reject(o.err);
      });
    }
    this.committing = null;
  }

  /**
   * One IMMEDIATE transaction for the whole group; when a record fails, again with each insert in its own savepoint
   * (one bad record rolls back alone). A crash before the commit leaves none of the group's rows: never half-visible.
   */
  private insertGroup(records: InstanceRecord[]): ({ ok: InsertOutcome } | { err: unknown })[] {
    const db = this.conn;
    // the usual group: every insert succeeds (the pipeline looked for the SOP Instance UID first), so first without a
    // savepoint per record (two statements each); if one fails, everything rolled back and it goes again below
    try {
      db.transaction(() => {
        const memo = newGroupMemo();
        for (const record of records) this.insertRow(record, memo);
        this.addGroupCounts(memo);
      }).immediate();
      return records.map(() => ({ ok: { outcome: "inserted" } }));
    } catch {
      // a duplicate (an earlier commit, or another record of this group) or a bad record: one savepoint each
    }
    const outcomes: ({ ok: InsertOutcome } | { err: unknown })[] = [];
    db.transaction(() => {
      for (const record of records) {
        try {
          db.transaction(() => this.insertRow(record))();
          outcomes.push({ ok: { outcome: "inserted" } });
        } catch (err) {
          if (!(err instanceof AlreadyIndexed)) {
            outcomes.push({ err });
            continue;
          }
          // the unique constraint decided: an earlier commit, or an earlier record of this group
          const existing = this.findBySop(record.sopInstanceUID);
          outcomes.push(existing
            ? { ok: this.compare(record, existing) }
            : { err: new Error(`instance ${record.sopInstanceUID} was reported present and then absent`) });
        }
      }
    }).immediate();
    return outcomes;
  }

  private walSyncing: Promise<void> | null = null;
  private walSyncNext: Promise<void> | null = null;

  /**
   * Make every commit so far durable: fdatasync of the WAL file. A sync already running may have
   * started before the caller's commit, so callers arriving meanwhile share one more sync after it.
   */
  private syncWal(): Promise<void> {
    if (this.options.path === ":memory:") return Promise.resolve();
    if (!this.walSyncing) {
      const run = (async () => {
        let handle: fsp.FileHandle;
        try {
          handle = await fsp.open(`${this.options.path}-wal`, "r+");
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOENT") return; // nothing written since the last checkpoint
          throw err;
        }
        try {
          await handle.datasync();
        } finally {
          await handle.close();
        }
      })();
      this.walSyncing = run.finally(() => {
        this.walSyncing = null;
      });
      return this.walSyncing;
    }
    this.walSyncNext ??= this.walSyncing.catch(() => undefined).then(() => {
      this.walSyncNext = null;
      return this.syncWal();
    });
    return this.walSyncNext;
  }

  private compare(record: InstanceRecord, existing: LocationRow): InsertOutcome {
    const loc = toLocation(existing);
    return existing.sha256 === record.sha256 ? { outcome: "duplicate", existing: loc } : { outcome: "conflict", existing: loc };
  }

  async replaceInstance(record: InstanceRecord): Promise<InstanceLocation | null> {
    const old = this.conn.transaction(() => {
      const old = this.findBySop(record.sopInstanceUID);
      if (old) this.deleteRows([old]);
      this.insertRow(record);
      return old ? toLocation(old) : null;
    }).immediate();
    await this.syncWal();
    return old;
  }

  /**
   * Inside a transaction: patient / study / series upserts, the instance row, the counts. With a memo (one group's
   * transaction), each study, series and patient row is read and parsed once for the group and the counts are added
   * once at its end (a STOW-RS group is mostly one study: per instance that was four SELECTs, four JSON.parse and two
   * UPDATEs of the same rows).
   */
  private insertRow(record: InstanceRecord, memo?: GroupMemo): void {
    const now = new Date().toISOString();
    const ds = record.metadata;
    const studyPk = this.ensureStudy(record.studyInstanceUID, ds, now, memo);
    const seriesPk = this.ensureSeries(studyPk, record.seriesInstanceUID, ds, now, memo);
    const cols = ["sop_instance_uid", "series_pk", "study_pk", "sop_class_uid", ...INSTANCE_COLUMNS, "transfer_syntax_uid", "size", "sha256",
      "blob_key", "metadata", "qido_attrs", "pixel_data", "bulk_data", "stored_at", "pending_transfer_id"];
    const pending = record.pendingTransferId ?? null;
    const info = this.prep(
      `INSERT INTO instances (${cols.join(", ")}) VALUES (${cols.map((c) => "@" + c).join(", ")}) ON CONFLICT (sop_instance_uid) DO NOTHING`,
    ).run({
      ...matchColumnValues("instance", ds),
      sop_instance_uid: record.sopInstanceUID,
      series_pk: seriesPk,
      study_pk: studyPk,
      sop_class_uid: record.sopClassUID,
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
    });
    if (info.changes === 0) throw new AlreadyIndexed();
    const visible = pending === null ? 1 : 0;
    if (memo) {
      for (const [counts, pk] of [[memo.seriesCounts, seriesPk], [memo.studyCounts, studyPk]] as const) {
        const c = counts.get(pk) ?? { added: 0, visible: 0 };
        c.added++;
        c.visible += visible;
        counts.set(pk, c);
      }
      return;
    }
    this.prep("UPDATE series SET instance_count = instance_count + 1, visible_count = visible_count + ? WHERE pk = ?").run(visible, seriesPk);
    this.prep("UPDATE studies SET instance_count = instance_count + 1, visible_count = visible_count + ? WHERE pk = ?").run(visible, studyPk);
  }

  /** The counts a group's instances added, at the end of its transaction. */
  private addGroupCounts(memo: GroupMemo): void {
    for (const [pk, c] of memo.seriesCounts) this.prep("UPDATE series SET instance_count = instance_count + ?, visible_count = visible_count + ? WHERE pk = ?").run(c.added, c.visible, pk);
    for (const [pk, c] of memo.studyCounts) this.prep("UPDATE studies SET instance_count = instance_count + ?, visible_count = visible_count + ? WHERE pk = ?").run(c.added, c.visible, pk);
  }

  private ensurePatient(ds: DicomJsonDataset, memo?: GroupMemo): number {
    const key = patientKey(ds);
    const memoKey = `${key.patient_key_id}\0${key.patient_key_issuer}\0${key.patient_key_name}`;
    const known = memo?.patientByKey.get(memoKey);
    if (known !== undefined) {
      this.fillPatient(known, memo!.patients.get(known)!.attrs, ds);
      return known;
    }
    const attrs = pick(ds, "patient");
    const cols = ["patient_key_id", "patient_key_issuer", "patient_key_name", ...PATIENT_COLUMNS, "attrs"];
    this.prep(
      `INSERT INTO patients (${cols.join(", ")}) VALUES (${cols.map((c) => "@" + c).join(", ")})` +
        " ON CONFLICT (patient_key_id, patient_key_issuer, patient_key_name) DO NOTHING",
    ).run({ ...key, ...matchColumnValues("patient", attrs), attrs: JSON.stringify(attrs) });
    const row = this.prep(
      "SELECT pk, attrs FROM patients WHERE patient_key_id = @patient_key_id AND patient_key_issuer = @patient_key_issuer AND patient_key_name = @patient_key_name",
    ).get(key) as { pk: number; attrs: string };
    const stored = JSON.parse(row.attrs) as DicomJsonDataset;
    if (memo) {
      memo.patientByKey.set(memoKey, row.pk);
      memo.patients.set(row.pk, { key, attrs: stored });
    }
    this.fillPatient(row.pk, stored, ds);
    return row.pk;
  }

  /** Fills the patient row's blanks from ds (stored: its attributes, parsed; updated in place). */
  private fillPatient(pk: number, stored: DicomJsonDataset, ds: DicomJsonDataset): void {
    const merged = fillBlanks(stored, ds, "patient");
    if (merged) {
      this.prep(`UPDATE patients SET ${assignments(PATIENT_COLUMNS)}, attrs = @attrs WHERE pk = @pk`)
        .run({ ...matchColumnValues("patient", merged), attrs: JSON.stringify(merged), pk });
    }
  }

  private ensureStudy(uid: string, ds: DicomJsonDataset, now: string, memo?: GroupMemo): number {
    let existing = memo?.studies.get(uid);
    if (!existing) {
      const row = this.prep("SELECT pk, patient_pk, attrs, patient_attrs FROM studies WHERE study_instance_uid = ?").get(uid) as
        | { pk: number; patient_pk: number; attrs: string; patient_attrs: string }
        | undefined;
      if (row) {
        existing = { pk: row.pk, patientPk: row.patient_pk, attrs: JSON.parse(row.attrs), patientAttrs: JSON.parse(row.patient_attrs) };
        memo?.studies.set(uid, existing);
      }
    }
    if (existing) {
      const merged = fillBlanks(existing.attrs, ds, "study");
      if (merged) {
        this.prep(`UPDATE studies SET ${assignments(STUDY_COLUMNS)}, attrs = @attrs WHERE pk = @pk`)
          .run({ ...matchColumnValues("study", merged), attrs: JSON.stringify(merged), pk: existing.pk });
      }
      const mergedPatient = fillBlanks(existing.patientAttrs, ds, "patient");
      if (mergedPatient) {
        this.prep(`UPDATE studies SET ${assignments(PATIENT_COLUMNS)}, patient_attrs = @patient_attrs WHERE pk = @pk`)
          .run({ ...matchColumnValues("patient", mergedPatient), patient_attrs: JSON.stringify(mergedPatient), pk: existing.pk });
      }
      // the study keeps the patient its first instance named; only that same patient's blanks are filled
      let patient = memo?.patients.get(existing.patientPk);
      if (!patient) {
        const row = this.prep("SELECT patient_key_id, patient_key_issuer, patient_key_name, attrs FROM patients WHERE pk = ?").get(existing.patientPk) as
          { patient_key_id: string; patient_key_issuer: string; patient_key_name: string; attrs: string };
        patient = { key: { patient_key_id: row.patient_key_id, patient_key_issuer: row.patient_key_issuer, patient_key_name: row.patient_key_name }, attrs: JSON.parse(row.attrs) };
        memo?.patients.set(existing.patientPk, patient);
      }
      const key = patientKey(ds);
      if (patient.key.patient_key_id === key.patient_key_id && patient.key.patient_key_issuer === key.patient_key_issuer && patient.key.patient_key_name === key.patient_key_name) {
        this.fillPatient(existing.patientPk, patient.attrs, ds);
      }
      return existing.pk;
    }
    const attrs = pick(ds, "study");
    const patientAttrs = pick(ds, "patient");
    const cols = ["study_instance_uid", "patient_pk", ...STUDY_COLUMNS, ...PATIENT_COLUMNS, "attrs", "patient_attrs", "created_at"];
    const patientPk = this.ensurePatient(ds, memo);
    this.prep(`INSERT INTO studies (${cols.join(", ")}) VALUES (${cols.map((c) => "@" + c).join(", ")}) ON CONFLICT (study_instance_uid) DO NOTHING`)
      .run({
        ...matchColumnValues("study", attrs), ...matchColumnValues("patient", patientAttrs), study_instance_uid: uid, patient_pk: patientPk,
        attrs: JSON.stringify(attrs), patient_attrs: JSON.stringify(patientAttrs), created_at: now,
      });
    const pk = (this.prep("SELECT pk FROM studies WHERE study_instance_uid = ?").get(uid) as { pk: number }).pk;
    // (ON CONFLICT cannot happen within this transaction: the SELECT above found none; the memo keeps what was written)
    memo?.studies.set(uid, { pk, patientPk, attrs, patientAttrs });
    return pk;
  }

  private ensureSeries(studyPk: number, uid: string, ds: DicomJsonDataset, now: string, memo?: GroupMemo): number {
    const memoKey = `${studyPk}/${uid}`;
    let existing = memo?.series.get(memoKey);
    if (!existing) {
      const row = this.prep("SELECT pk, attrs FROM series WHERE study_pk = ? AND series_instance_uid = ?").get(studyPk, uid) as
        | { pk: number; attrs: string }
        | undefined;
      if (row) {
        existing = { pk: row.pk, attrs: JSON.parse(row.attrs) };
        memo?.series.set(memoKey, existing);
      }
    }
    if (existing) {
      const merged = fillBlanks(existing.attrs, ds, "series");
      if (merged) {
        this.prep(`UPDATE series SET ${assignments(SERIES_COLUMNS)}, attrs = @attrs WHERE pk = @pk`)
          .run({ ...matchColumnValues("series", merged), attrs: JSON.stringify(merged), pk: existing.pk });
      }
      return existing.pk;
    }
    const attrs = pick(ds, "series");
    const cols = ["series_instance_uid", "study_pk", ...SERIES_COLUMNS, "attrs", "created_at"];
    this.prep(`INSERT INTO series (${cols.join(", ")}) VALUES (${cols.map((c) => "@" + c).join(", ")}) ON CONFLICT (study_pk, series_instance_uid) DO NOTHING`)
      .run({ ...matchColumnValues("series", attrs), series_instance_uid: uid, study_pk: studyPk, attrs: JSON.stringify(attrs), created_at: now });
    const pk = (this.prep("SELECT pk FROM series WHERE study_pk = ? AND series_instance_uid = ?").get(studyPk, uid) as { pk: number }).pk;
    memo?.series.set(memoKey, { pk, attrs });
    return pk;
  }

  /** Inside a transaction: remove instance rows, recount, drop emptied series / studies / patients. */
  private deleteRows(rows: readonly LocationRow[]): void {
    if (!rows.length) return;
    this.prep("DELETE FROM instances WHERE pk IN (SELECT value FROM json_each(?))").run(JSON.stringify(rows.map((r) => r.pk)));
    this.recount(new Set(rows.map((r) => r.series_pk)), new Set(rows.map((r) => r.study_pk)));
  }

  private recount(seriesPks: ReadonlySet<number>, studyPks: ReadonlySet<number>): void {
    for (const pk of seriesPks) {
      this.prep(
        "UPDATE series SET instance_count = (SELECT COUNT(*) FROM instances WHERE series_pk = @pk)," +
          " visible_count = (SELECT COUNT(*) FROM instances WHERE series_pk = @pk AND pending_transfer_id IS NULL) WHERE pk = @pk",
      ).run({ pk });
      this.prep("DELETE FROM series WHERE pk = ? AND instance_count = 0").run(pk);
    }
    for (const pk of studyPks) {
      this.prep(
        "UPDATE studies SET instance_count = (SELECT COALESCE(SUM(instance_count), 0) FROM series WHERE study_pk = @pk)," +
          " visible_count = (SELECT COALESCE(SUM(visible_count), 0) FROM series WHERE study_pk = @pk) WHERE pk = @pk",
      ).run({ pk });
      const study = this.prep("SELECT patient_pk, instance_count FROM studies WHERE pk = ?").get(pk) as { patient_pk: number; instance_count: number } | undefined;
      if (study && study.instance_count === 0) {
        this.prep("DELETE FROM studies WHERE pk = ?").run(pk);
        this.prep("DELETE FROM patients WHERE pk = @pk AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_pk = @pk)").run({ pk: study.patient_pk });
      }
    }
  }

  async deleteInstances(scope: InstanceScope): Promise<InstanceLocation[]> {
    const where = compileInstanceScope(scope, sqliteDialect);
    const deleted = this.conn.transaction(() => {
      const rows = this.prep(`SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`).all(...where.params) as LocationRow[];
      this.deleteRows(rows);
      return rows.map(toLocation);
    }).immediate();
    await this.syncWal();
    return deleted;
  }

  async releaseTransfer(transferId: string): Promise<number> {
    const n = this.conn.transaction(() => {
      const affected = this.prep("SELECT DISTINCT series_pk, study_pk FROM instances WHERE pending_transfer_id = ?").all(transferId) as
        { series_pk: number; study_pk: number }[];
      const n = this.prep("UPDATE instances SET pending_transfer_id = NULL WHERE pending_transfer_id = ?").run(transferId).changes;
      this.recount(new Set(affected.map((r) => r.series_pk)), new Set(affected.map((r) => r.study_pk)));
      return n;
    }).immediate();
    await this.syncWal();
    return n;
  }

  // ---- reading ----

  private findBySop(sopInstanceUID: string, includePending = true): LocationRow | undefined {
    return this.prep(
      `SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE i.sop_instance_uid = ?${includePending ? "" : " AND i.pending_transfer_id IS NULL"}`,
    ).get(sopInstanceUID) as LocationRow | undefined;
  }

  async getInstance(sopInstanceUID: string, opts: { includePending?: boolean; pendingOf?: string } = {}): Promise<InstanceLocation | null> {
    if (opts.pendingOf !== undefined) {
      const own = this.prep(`SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE i.sop_instance_uid = ? AND i.pending_transfer_id = ?`).get(sopInstanceUID, opts.pendingOf) as LocationRow | undefined;
      return own ? toLocation(own) : null;
    }
    const row = this.findBySop(sopInstanceUID, opts.includePending ?? false);
    return row ? toLocation(row) : null;
  }

  async listInstances(scope: InstanceScope): Promise<InstanceLocation[]> {
    const where = compileInstanceScope(scope, sqliteDialect);
    const rows = this.prep(`SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`).all(...where.params) as LocationRow[];
    return rows.map(toLocation);
  }

  async listInstanceBlobs(scope: InstanceScope): Promise<InstanceBlob[]> {
    const where = compileInstanceScope(scope, sqliteDialect);
    return (this.prep(`SELECT ${BLOB_COLUMNS} FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`).all(...where.params) as BlobRow[]).map(toBlob);
  }

  async listMetadata(scope: InstanceScope): Promise<string[]> {
    const where = compileInstanceScope(scope, sqliteDialect);
    // the stored text as is: no parse / re-serialise per instance
    return this.prep(`SELECT i.metadata FROM ${INSTANCE_JOINS} WHERE ${where.sql} ORDER BY ${SCOPE_ORDER}`).pluck().all(...where.params) as string[];
  }

  async isBlobReferenced(blobKey: string): Promise<boolean> {
    return this.prep("SELECT 1 FROM instances WHERE blob_key = ? LIMIT 1").get(blobKey) !== undefined;
  }

  async *iterateInstances(): AsyncIterable<InstanceLocation> {
    // bounded by the rows present when the walk starts: rows added meanwhile are not chased
    const last = (this.prep("SELECT COALESCE(MAX(pk), 0) FROM instances").pluck().get() as number) ?? 0;
    let after = 0;
    while (after < last) {
      const rows = this.prep(`SELECT ${LOCATION_COLUMNS} FROM ${INSTANCE_JOINS} WHERE i.pk > ? AND i.pk <= ? ORDER BY i.pk LIMIT ${PAGE}`)
        .all(after, last) as LocationRow[];
      if (!rows.length) break;
      for (const r of rows) yield toLocation(r);
      after = rows[rows.length - 1]!.pk;
    }
  }

  async search(query: QidoQuery, opts: { allowedStudies?: readonly string[] | null } = {}): Promise<QidoResult> {
    const compiled = compileQidoSearch(query, opts, sqliteDialect);
    const rows = this.prep(compiled.sql).all(...compiled.params) as { study_pk: number; series_pk?: number; instance_pk?: number }[];
    if (!rows.length) return { matches: [] };
    const plan = qidoReturnPlan(query);
    const studies = this.loadStudies(rows.map((r) => r.study_pk));
    const series = query.level === "study" ? new Map<number, QidoSeriesValues>() : this.loadSeries(rows.map((r) => r.series_pk!));
    const instances = query.level === "instance" ? this.loadInstances(rows.map((r) => r.instance_pk!), plan.needsMetadata) : null;
    const matches = rows.map((r) => {
      const values: QidoMatchValues = { study: studies.get(r.study_pk)! };
      if (r.series_pk !== undefined) values.series = series.get(r.series_pk);
      if (instances) {
        const inst = instances.get(r.instance_pk!)!;
        values.instance = { sopInstanceUID: inst.sopInstanceUID, attrs: inst.attrs };
        values.metadata = inst.metadata;
      } else if (plan.needsMetadata) {
        values.metadata = this.representative(query.level === "study" ? "study_pk" : "series_pk", query.level === "study" ? r.study_pk : r.series_pk!);
      }
      return assembleQidoMatch(query.level, plan, values);
    });
    return { matches };
  }

  private loadStudies(pks: number[]): Map<number, QidoStudyValues> {
    const list = JSON.stringify([...new Set(pks)]);
    const rows = this.prep(
      "SELECT st.pk, st.study_instance_uid, st.attrs, st.patient_attrs, st.visible_count FROM studies st WHERE st.pk IN (SELECT value FROM json_each(?))",
    ).all(list) as { pk: number; study_instance_uid: string; attrs: string; patient_attrs: string; visible_count: number }[];
    const perSeries = this.prep(
      "SELECT study_pk, modality, COUNT(*) AS n FROM series WHERE study_pk IN (SELECT value FROM json_each(?)) AND visible_count > 0 GROUP BY study_pk, modality",
    ).all(list) as { study_pk: number; modality: string | null; n: number }[];
    return studyValues(rows, perSeries);
  }

  private loadSeries(pks: number[]): Map<number, QidoSeriesValues> {
    const rows = this.prep("SELECT pk, series_instance_uid, attrs, visible_count FROM series WHERE pk IN (SELECT value FROM json_each(?))")
      .all(JSON.stringify([...new Set(pks)])) as { pk: number; series_instance_uid: string; attrs: string; visible_count: number }[];
    return new Map(rows.map((r) => [r.pk, { seriesInstanceUID: r.series_instance_uid, attrs: JSON.parse(r.attrs), numberOfInstances: r.visible_count }]));
  }

  private loadInstances(pks: number[], full: boolean) {
    const rows = this.prep(
      `SELECT pk, sop_instance_uid, qido_attrs${full ? ", metadata" : ""} FROM instances WHERE pk IN (SELECT value FROM json_each(?))`,
    ).all(JSON.stringify(pks)) as { pk: number; sop_instance_uid: string; qido_attrs: string; metadata?: string }[];
    return new Map(rows.map((r) => [r.pk, {
      sopInstanceUID: r.sop_instance_uid,
      attrs: JSON.parse(r.qido_attrs) as DicomJsonDataset,
      metadata: r.metadata !== undefined ? (JSON.parse(r.metadata) as DicomJsonDataset) : null,
    }]));
  }

  /** The first visible instance of a study or series: the source of attributes the index keeps no column for. */
  private representative(column: "study_pk" | "series_pk", pk: number): DicomJsonDataset | null {
    const json = this.prep(`SELECT metadata FROM instances WHERE ${column} = ? AND pending_transfer_id IS NULL ORDER BY pk LIMIT 1`).pluck().get(pk) as
      | string
      | undefined;
    return json === undefined ? null : (JSON.parse(json) as DicomJsonDataset);
  }

  async ping(): Promise<void> {
    this.conn.prepare("SELECT 1").get();
  }

  async close(): Promise<void> {
    // inserts already asked for finish (or fail) before the connection goes
    await this.committing;
    await this.walSyncing?.catch(() => undefined);
    const db = this.db;
    this.db = null;
    this.statements.clear();
    db?.close();
  }
}
