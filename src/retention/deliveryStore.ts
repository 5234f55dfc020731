/**
 * What retention needs to remember beside the index: when each study arrived, who received which of its instances
 * (a home PACS by WADO-RS, a DIMSE peer by C-MOVE/C-GET, a forwarding rule, a storage commitment), and a per-study
 * policy that overrides the relay's. One interface, a SQLite file (one node) and PostgreSQL (several nodes, the
 * index's pool), and one contract suite (test/contracts/deliveryStore.ts).
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import type pg from "pg";
import { inTransaction } from "../catalog/pgTransaction.ts";
import { ADVISORY_LOCK } from "../catalog/postgres.ts";

/** How an instance left the relay for a recipient. */
export type DeliveryVia = "wado" | "c-move" | "c-get" | "forward" | "commitment";

export interface Delivery {
  studyInstanceUID: string;
  sopInstanceUID: string;
  /** who received it: a token id, ae:<AE title>, rule:<forwarding rule> */
  recipient: string;
  via: DeliveryVia;
  at: string;
}

export interface RetentionPolicy {
  /** delete this many days after every instance was delivered; null: the relay's setting */
  afterDeliveryDays: number | null;
  /** delete this many days after the study's last arrival, delivered or not; null: the relay's setting */
  afterArrivalDays: number | null;
}

export interface StudyArrival {
  studyInstanceUID: string;
  firstArrivedAt: string;
  lastArrivedAt: string;
}

export interface DeliveryStore {
  init(): Promise<void>;
  close(): Promise<void>;
  recordArrival(studyInstanceUID: string, at: string): Promise<void>;
  /** Each (study, instance, recipient, via) once: the first time counts, repeats are ignored. */
  recordDeliveries(rows: readonly Delivery[]): Promise<void>;
  deliveriesOf(studyInstanceUID: string): Promise<Delivery[]>;
  arrivals(): Promise<StudyArrival[]>;
  arrivalOf(studyInstanceUID: string): Promise<StudyArrival | null>;
  setPolicy(studyInstanceUID: string, policy: RetentionPolicy): Promise<void>;
  policyOf(studyInstanceUID: string): Promise<RetentionPolicy | null>;
  /** The study is gone: forget its arrival, deliveries and policy. */
  forget(studyInstanceUID: string): Promise<void>;
}

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS retention_arrivals (study_instance_uid TEXT PRIMARY KEY, first_arrived_at TEXT NOT NULL, last_arrived_at TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS retention_deliveries (study_instance_uid TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, recipient TEXT NOT NULL, via TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (study_instance_uid, sop_instance_uid, recipient, via))`,
  `CREATE TABLE IF NOT EXISTS retention_policies (study_instance_uid TEXT PRIMARY KEY, after_delivery_days INTEGER, after_arrival_days INTEGER)`,
];

interface DeliveryRow {
  study_instance_uid: string;
  sop_instance_uid: string;
  recipient: string;
  via: DeliveryVia;
  at: string;
}
const deliveryOf = (r: DeliveryRow): Delivery => ({ studyInstanceUID: r.study_instance_uid, sopInstanceUID: r.sop_instance_uid, recipient: r.recipient, via: r.via, at: r.at });
const arrivalOf = (r: { study_instance_uid: string; first_arrived_at: string; last_arrived_at: string }): StudyArrival => ({ studyInstanceUID: r.study_instance_uid, firstArrivedAt: r.first_arrived_at, lastArrivedAt: r.last_arrived_at });
const policyOf = (r: { after_delivery_days: number | null; after_arrival_days: number | null }): RetentionPolicy => ({ afterDeliveryDays: r.after_delivery_days, afterArrivalDays: r.after_arrival_days });

/** dataDir/retention.sqlite (0600) for one node. */
export class SqliteDeliveryStore implements DeliveryStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    if (file !== ":memory:") fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new Database(file);
    if (file !== ":memory:") {
      fs.chmodSync(file, 0o600);
      this.db.pragma("journal_mode = WAL");
    }
    this.db.pragma("busy_timeout = 5000");
    for (const s of SCHEMA) this.db.exec(s);
  }

  async init(): Promise<void> {}

  async close(): Promise<void> {
    this.db.close();
  }

  private arrivalStmt: Database.Statement | null = null;

  async recordArrival(study: string, at: string): Promise<void> {
    this.arrivalStmt ??= this.db.prepare(
      `INSERT INTO retention_arrivals (study_instance_uid, first_arrived_at, last_arrived_at) VALUES (?, ?, ?)
       ON CONFLICT (study_instance_uid) DO UPDATE SET last_arrived_at = MAX(last_arrived_at, excluded.last_arrived_at)`,
    );
    this.arrivalStmt.run(study, at, at);
  }

  async recordDeliveries(rows: readonly Delivery[]): Promise<void> {
    const ins = this.db.prepare("INSERT OR IGNORE INTO retention_deliveries (study_instance_uid, sop_instance_uid, recipient, via, at) VALUES (?, ?, ?, ?, ?)");
    this.db.transaction(() => {
      for (const d of rows) ins.run(d.studyInstanceUID, d.sopInstanceUID, d.recipient, d.via, d.at);
    })();
  }

  async deliveriesOf(study: string): Promise<Delivery[]> {
    return (this.db.prepare("SELECT * FROM retention_deliveries WHERE study_instance_uid = ? ORDER BY at, sop_instance_uid").all(study) as DeliveryRow[]).map(deliveryOf);
  }

  async arrivals(): Promise<StudyArrival[]> {
    return (this.db.prepare("SELECT * FROM retention_arrivals ORDER BY first_arrived_at").all() as Parameters<typeof arrivalOf>[0][]).map(arrivalOf);
  }

  async arrivalOf(study: string): Promise<StudyArrival | null> {
    const r = this.db.prepare("SELECT * FROM retention_arrivals WHERE study_instance_uid = ?").get(study) as Parameters<typeof arrivalOf>[0] | undefined;
    return r ? arrivalOf(r) : null;
  }

  async setPolicy(study: string, p: RetentionPolicy): Promise<void> {
    this.db
      .prepare("INSERT INTO retention_policies (study_instance_uid, after_delivery_days, after_arrival_days) VALUES (?, ?, ?) ON CONFLICT (study_instance_uid) DO UPDATE SET after_delivery_days = excluded.after_delivery_days, after_arrival_days = excluded.after_arrival_days")
      .run(study, p.afterDeliveryDays, p.afterArrivalDays);
  }

  async policyOf(study: string): Promise<RetentionPolicy | null> {
    const r = this.db.prepare("SELECT after_delivery_days, after_arrival_days FROM retention_policies WHERE study_instance_uid = ?").get(study) as Parameters<typeof policyOf>[0] | undefined;
    return r ? policyOf(r) : null;
  }

  async forget(study: string): Promise<void> {
    this.db.transaction(() => {
      for (const t of ["retention_arrivals", "retention_deliveries", "retention_policies"]) this.db.prepare(`DELETE FROM ${t} WHERE study_instance_uid = ?`).run(study);
    })();
  }
}

/** The same tables in the shared PostgreSQL database: every node sees every delivery. */
export class PostgresDeliveryStore implements DeliveryStore {
  /** pool: the PostgreSQL index's (PostgresIndex.sharedPool); not closed here. */
  constructor(private readonly pool: pg.Pool) {}

  async init(): Promise<void> {
    // Nodes starting together would race on CREATE ... IF NOT EXISTS (a duplicate pg_type row): one at a time,
    // under the lock the index's migrations take.
    await inTransaction(this.pool, async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1, 0)", [ADVISORY_LOCK.MIGRATIONS]);
      for (const s of SCHEMA) await client.query(s);
    });
  }

  async close(): Promise<void> {
    // the pool belongs to the index
  }

  async recordArrival(study: string, at: string): Promise<void> {
    await this.pool.query(
      `INSERT INTO retention_arrivals (study_instance_uid, first_arrived_at, last_arrived_at) VALUES ($1, $2, $2)
       ON CONFLICT (study_instance_uid) DO UPDATE SET last_arrived_at = GREATEST(retention_arrivals.last_arrived_at, excluded.last_arrived_at)`,
      [study, at],
    );
  }

  async recordDeliveries(rows: readonly Delivery[]): Promise<void> {
    if (!rows.length) return;
    await this.pool.query(
      `INSERT INTO retention_deliveries (study_instance_uid, sop_instance_uid, recipient, via, at)
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING`,
      [rows.map((d) => d.studyInstanceUID), rows.map((d) => d.sopInstanceUID), rows.map((d) => d.recipient), rows.map((d) => d.via), rows.map((d) => d.at)],
    );
  }

  async deliveriesOf(study: string): Promise<Delivery[]> {
    return (await this.pool.query<DeliveryRow>("SELECT * FROM retention_deliveries WHERE study_instance_uid = $1 ORDER BY at, sop_instance_uid", [study])).rows.map(deliveryOf);
  }

  async arrivals(): Promise<StudyArrival[]> {
    return (await this.pool.query<Parameters<typeof arrivalOf>[0]>("SELECT * FROM retention_arrivals ORDER BY first_arrived_at")).rows.map(arrivalOf);
  }

  async arrivalOf(study: string): Promise<StudyArrival | null> {
    const r = (await this.pool.query<Parameters<typeof arrivalOf>[0]>("SELECT * FROM retention_arrivals WHERE study_instance_uid = $1", [study])).rows[0];
    return r ? arrivalOf(r) : null;
  }

  async setPolicy(study: string, p: RetentionPolicy): Promise<void> {
    await this.pool.query(
      "INSERT INTO retention_policies (study_instance_uid, after_delivery_days, after_arrival_days) VALUES ($1, $2, $3) ON CONFLICT (study_instance_uid) DO UPDATE SET after_delivery_days = excluded.after_delivery_days, after_arrival_days = excluded.after_arrival_days",
      [study, p.afterDeliveryDays, p.afterArrivalDays],
    );
  }

  async policyOf(study: string): Promise<RetentionPolicy | null> {
    const r = (await this.pool.query<Parameters<typeof policyOf>[0]>("SELECT after_delivery_days, after_arrival_days FROM retention_policies WHERE study_instance_uid = $1", [study])).rows[0];
    return r ? policyOf(r) : null;
  }

  async forget(study: string): Promise<void> {
    for (const t of ["retention_arrivals", "retention_deliveries", "retention_policies"]) await this.pool.query(`DELETE FROM ${t} WHERE study_instance_uid = $1`, [study]);
  }
}
