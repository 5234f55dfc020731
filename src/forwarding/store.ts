/**
 * The durable forwarding queue (dataDir/forwarding.sqlite): one job per rule, transfer and study, one row per
 * instance with its own state, so work resumes after a stop or an outage without sending again what the peer
 * already confirmed. Enqueueing is idempotent (a completion hook run twice after a crash adds nothing), and a later
 * transfer naming instances a rule already delivered queues only the others.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";

export type JobState = "pending" | "done" | "failed";
export type ItemState = "pending" | "sent" | "failed";

export interface ForwardJob {
  id: number;
  rule: string;
  transferId: string;
  studyInstanceUID: string;
  state: JobState;
  attempts: number;
  nextAttemptAt: string;
  lastError: string | null;
  createdAt: string;
  updatedAt: string;
  completedAt: string | null;
  counts: Record<ItemState, number>;
}

export interface ForwardItem {
  sopInstanceUID: string;
  state: ItemState;
  /** how many times it was sent (more than 1 only when a send was cut before the peer confirmed it) */
  sends: number;
  /** the peer's last answer: DIMSE status or HTTP status */
  status: number | null;
  error: string | null;
  sentAt: string | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  rule TEXT NOT NULL,
  transfer_id TEXT NOT NULL,
  study_instance_uid TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at TEXT NOT NULL,
  last_error TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  completed_at TEXT,
  UNIQUE (rule, transfer_id, study_instance_uid)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_instance_uid);
CREATE TABLE IF NOT EXISTS items (
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  sop_instance_uid TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
  sends INTEGER NOT NULL DEFAULT 0,
  status INTEGER,
  error TEXT,
  sent_at TEXT,
  PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS items_sop ON items(sop_instance_uid);
`;

interface JobRow {
  id: number;
  rule: string;
  transfer_id: string;
  study_instance_uid: string;
  state: JobState;
  attempts: number;
  next_attempt_at: string;
  last_error: string | null;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
}

export class ForwardingStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    if (file !== ":memory:") fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new Database(file);
    if (file !== ":memory:") this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("busy_timeout = 5000");
    this.db.exec(SCHEMA);
  }

  close(): void {
    this.db.close();
  }

  /** Add the jobs of a completed transfer (per rule and study); existing ones are left as they are. Returns new job ids. */
  enqueue(rules: readonly string[], transferId: string, instances: ReadonlyArray<{ studyInstanceUID: string; sopInstanceUID: string }>): number[] {
    const now = new Date().toISOString();
    const byStudy = new Map<string, string[]>();
    for (const i of instances) {
      const list = byStudy.get(i.studyInstanceUID) ?? [];
      list.push(i.sopInstanceUID);
      byStudy.set(i.studyInstanceUID, list);
    }
    const insJob = this.db.prepare(
      "INSERT OR IGNORE INTO jobs (rule, transfer_id, study_instance_uid, state, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
    );
    const insItem = this.db.prepare("INSERT OR IGNORE INTO items (job_id, sop_instance_uid, state) VALUES (?, ?, 'pending')");
    // an instance this rule's peer already confirmed, or that another job of the rule is still sending, is not sent
    // again when a later transfer names it too (a study sent twice, a page reloaded and the folder dropped again)
    const taken = this.db.prepare(
      `SELECT 1 FROM items i JOIN jobs j ON j.id = i.job_id
       WHERE i.sop_instance_uid = ? AND j.rule = ? AND j.transfer_id <> ? AND (i.state = 'sent' OR (i.state = 'pending' AND j.state = 'pending'))
       LIMIT 1`,
    );
    const created: number[] = [];
    this.db.transaction(() => {
      for (const rule of rules) {
        for (const [study, all] of byStudy) {
          const sops = all.filter((sop) => !taken.get(sop, rule, transferId));
          if (!sops.length) continue;
          const r = insJob.run(rule, transferId, study, now, now, now);
          if (r.changes === 0) continue;
          const id = Number(r.lastInsertRowid);
          created.push(id);
          for (const sop of sops) insItem.run(id, sop);
        }
      }
    }).immediate();
    return created;
  }

  /** The pending job whose next attempt is due soonest (and due now), or null. */
  nextDue(now = new Date()): ForwardJob | null {
    const row = this.db
      .prepare("SELECT * FROM jobs WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT 1")
      .get(now.toISOString()) as JobRow | undefined;
    return row ? this.toJob(row) : null;
  }

  /** When the next pending job is due (ISO), or null when nothing is pending. */
  nextAttemptAt(): string | null {
    const row = this.db.prepare("SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'pending'").get() as { t: string | null };
    return row.t;
  }

  getJob(id: number): ForwardJob | null {
    const row = this.db.prepare("SELECT * FROM jobs WHERE id = ?").get(id) as JobRow | undefined;
    return row ? this.toJob(row) : null;
  }

  /** Jobs and instances by state (metrics: pending instances are the queue depth). */
  stateCounts(): { jobs: Record<string, number>; items: Record<string, number> } {
    const count = (table: "jobs" | "items") =>
      Object.fromEntries((this.db.prepare(`SELECT state, COUNT(*) AS n FROM ${table} GROUP BY state`).all() as { state: string; n: number }[]).map((r) => [r.state, r.n]));
    return { jobs: count("jobs"), items: count("items") };
  }

  listJobs(filter: { study?: string; transfer?: string; state?: JobState; rule?: string; limit?: number } = {}): ForwardJob[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.study) (where.push("study_instance_uid = ?"), args.push(filter.study));
    if (filter.transfer) (where.push("transfer_id = ?"), args.push(filter.transfer));
    if (filter.state) (where.push("state = ?"), args.push(filter.state));
    if (filter.rule) (where.push("rule = ?"), args.push(filter.rule));
    const limit = Math.min(Math.max(1, Math.floor(filter.limit ?? 1000)), 10_000);
    const rows = this.db
      .prepare(`SELECT * FROM jobs ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY id DESC LIMIT ${limit}`)
      .all(...args) as JobRow[];
    return rows.map((r) => this.toJob(r));
  }

  items(jobId: number, state?: ItemState): ForwardItem[] {
    const rows = (state
      ? this.db.prepare("SELECT * FROM items WHERE job_id = ? AND state = ? ORDER BY sop_instance_uid").all(jobId, state)
      : this.db.prepare("SELECT * FROM items WHERE job_id = ? ORDER BY sop_instance_uid").all(jobId)) as Array<{
      sop_instance_uid: string; state: ItemState; sends: number; status: number | null; error: string | null; sent_at: string | null;
    }>;
    return rows.map((r) => ({ sopInstanceUID: r.sop_instance_uid, state: r.state, sends: r.sends, status: r.status, error: r.error, sentAt: r.sent_at }));
  }

  /** Counted before each send, so a send cut before the peer answered shows as 2 sends later. */
  noteSending(jobId: number, sop: string): void {
    this.db.prepare("UPDATE items SET sends = sends + 1 WHERE job_id = ? AND sop_instance_uid = ?").run(jobId, sop);
  }

  markSent(jobId: number, sop: string, status: number): void {
    this.db.prepare("UPDATE items SET state = 'sent', status = ?, error = NULL, sent_at = ? WHERE job_id = ? AND sop_instance_uid = ?").run(status, new Date().toISOString(), jobId, sop);
  }

  markItemFailed(jobId: number, sop: string, status: number | null, error: string): void {
    this.db.prepare("UPDATE items SET state = 'failed', status = ?, error = ? WHERE job_id = ? AND sop_instance_uid = ?").run(status, error.slice(0, 1000), jobId, sop);
  }

  noteItemError(jobId: number, sop: string, status: number | null, error: string): void {
    this.db.prepare("UPDATE items SET status = ?, error = ? WHERE job_id = ? AND sop_instance_uid = ?").run(status, error.slice(0, 1000), jobId, sop);
  }

  /** An attempt ended with work left: try again at `next`. */
  scheduleRetry(jobId: number, next: Date, error: string): void {
    const now = new Date().toISOString();
    this.db.prepare("UPDATE jobs SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, updated_at = ? WHERE id = ?").run(next.toISOString(), error.slice(0, 1000), now, jobId);
  }

  /** Nothing pending is left: done, or failed when the peer refused some instance for good. */
  finish(jobId: number): ForwardJob {
    const now = new Date().toISOString();
    const counts = this.counts(jobId);
    const state: JobState = counts.failed > 0 ? "failed" : "done";
    this.db.prepare("UPDATE jobs SET attempts = attempts + 1, state = ?, completed_at = ?, updated_at = ?, last_error = CASE WHEN ? = 'done' THEN NULL ELSE last_error END WHERE id = ?").run(state, now, now, state, jobId);
    return this.getJob(jobId)!;
  }

  /** Failed items back to pending and the job due now (an administrator's retry). */
  retry(jobId: number): ForwardJob | null {
    const now = new Date().toISOString();
    this.db.transaction(() => {
      this.db.prepare("UPDATE items SET state = 'pending' WHERE job_id = ? AND state = 'failed'").run(jobId);
      this.db.prepare("UPDATE jobs SET state = 'pending', next_attempt_at = ?, completed_at = NULL, updated_at = ? WHERE id = ? AND state != 'done'").run(now, now, jobId);
    }).immediate();
    return this.getJob(jobId);
  }

  private counts(jobId: number): Record<ItemState, number> {
    const out: Record<ItemState, number> = { pending: 0, sent: 0, failed: 0 };
    for (const r of this.db.prepare("SELECT state, COUNT(*) AS n FROM items WHERE job_id = ? GROUP BY state").all(jobId) as Array<{ state: ItemState; n: number }>) out[r.state] = r.n;
    return out;
  }

  private toJob(r: JobRow): ForwardJob {
    return {
      id: r.id,
      rule: r.rule,
      transferId: r.transfer_id,
      studyInstanceUID: r.study_instance_uid,
      state: r.state,
      attempts: r.attempts,
      nextAttemptAt: r.next_attempt_at,
      lastError: r.last_error,
      createdAt: r.created_at,
      updatedAt: r.updated_at,
      completedAt: r.completed_at,
      counts: this.counts(r.id),
    };
  }
}
