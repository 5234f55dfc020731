/**
 * The audit log: who (token id, certificate subject), what (action, route, UIDs), when, from where, outcome.
 * Append-only: SQLite triggers refuse UPDATE and DELETE, and each row carries a SHA-256 chained over the row
 * before it, so a row changed or removed with other tools shows in `dicom-relay audit --verify`.
 *
 * Requests carry their audit context in AsyncLocalStorage, so work they start (a STOW-RS part, the ingest of a
 * finished tus upload) is recorded under the same actor without threading it through the services.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import crypto from "node:crypto";
import type { AccessDb } from "./db.ts";
import type { IngestOptions, IngestResult, Ingestor } from "../ingest/types.ts";
import { observingIngestor } from "../ingest/observe.ts";

export type AuditOutcome = "success" | "failure";

export interface AuditEntry {
  /** token id, "cert:<subject>", "cli:<user>", "anonymous", "system" */
  actor: string;
  certSubject?: string | null;
  /** e.g. dicomweb.wado, dicomweb.stow, instance.store, token.create, share.create, cert.issue, auth */
  action: string;
  method?: string | null;
  route?: string | null;
  studyInstanceUID?: string | null;
  seriesInstanceUID?: string | null;
  sopInstanceUID?: string | null;
  remoteAddr?: string | null;
  outcome: AuditOutcome;
  status?: number | null;
  detail?: string | null;
}

export interface AuditRecord extends Required<AuditEntry> {
  seq: number;
  at: string;
  hash: string;
}

export interface AuditQuery {
  study?: string;
  actor?: string;
  action?: string;
  outcome?: AuditOutcome;
  /** ISO times, inclusive / exclusive */
  since?: string;
  until?: string;
  /** only rows after this sequence number (paging) */
  afterSeq?: number;
  limit?: number;
}

export const MAX_QUERY_ROWS = 10_000;
export const GENESIS = "0".repeat(64);

export interface AuditRow {
  seq: number;
  at: string;
  actor: string;
  cert_subject: string | null;
  action: string;
  method: string | null;
  route: string | null;
  study_instance_uid: string | null;
  series_instance_uid: string | null;
  sop_instance_uid: string | null;
  remote_addr: string | null;
  outcome: AuditOutcome;
  status: number | null;
  detail: string | null;
  hash: string;
}

export const FIELDS = [
  "at", "actor", "cert_subject", "action", "method", "route", "study_instance_uid", "series_instance_uid",
  "sop_instance_uid", "remote_addr", "outcome", "status", "detail",
] as const;

export function rowHash(prev: string, row: Record<(typeof FIELDS)[number], unknown>): string {
  return crypto.createHash("sha256").update(prev).update(JSON.stringify(FIELDS.map((f) => row[f] ?? null))).digest("hex");
}

const cut = (v: string | null | undefined, n: number): string | null => (v === undefined || v === null ? null : String(v).slice(0, n));

/** Where the audit log is kept: AuditLog (access.sqlite, one node) or PostgresAuditLog (every node). */
export interface AuditTrail {
  /** Append one entry; never throws (failures go to the log's error callback). */
  record(e: AuditEntry): void;
  query(q?: AuditQuery): AuditRecord[] | Promise<AuditRecord[]>;
  verifyChain(): ChainCheck | Promise<ChainCheck>;
  /** Resolves once every entry recorded so far is written (a no-op where writing is synchronous). */
  flush(): Promise<void>;
}

export interface ChainCheck {
  ok: boolean;
  checked: number;
  firstBadSeq: number | null;
  newestHash: string | null;
}

/** The row an entry becomes (before its hash), cut to the column limits. */
export function auditRowOf(e: AuditEntry, at = new Date()): Record<(typeof FIELDS)[number], string | number | null> {
  return {
    at: at.toISOString(),
    actor: cut(e.actor, 200) ?? "unknown",
    cert_subject: cut(e.certSubject, 500),
    action: cut(e.action, 100),
    method: cut(e.method, 16),
    route: cut(e.route, 1000),
    study_instance_uid: cut(e.studyInstanceUID, 64),
    series_instance_uid: cut(e.seriesInstanceUID, 64),
    sop_instance_uid: cut(e.sopInstanceUID, 64),
    remote_addr: cut(e.remoteAddr, 100),
    outcome: e.outcome,
    status: e.status ?? null,
    detail: cut(e.detail, 2000),
  };
}

export class AuditLog implements AuditTrail {
  private readonly insertRows;
  private readonly last;
  /** entries recorded in this turn of the event loop: written together, in order, in one transaction */
  private pending: { row: ReturnType<typeof auditRowOf>; entry: AuditEntry }[] = [];
  private scheduled: NodeJS.Immediate | null = null;

  constructor(private readonly db: AccessDb, private readonly onError: (err: unknown, entry: AuditEntry) => void = () => {}) {
    this.last = db.prepare("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1");
    const ins = db.prepare(
      `INSERT INTO audit (${FIELDS.join(", ")}, hash) VALUES (${FIELDS.map(() => "?").join(", ")}, ?)`,
    );
    // read the previous hash and append in one write transaction: other processes (the CLI) append too
    this.insertRows = db.transaction((rows: Record<(typeof FIELDS)[number], unknown>[]) => {
      let prev = (this.last.get() as { hash: string } | undefined)?.hash ?? GENESIS;
      for (const row of rows) {
        const hash = rowHash(prev, row);
        ins.run(...FIELDS.map((f) => row[f] ?? null), hash);
        prev = hash;
      }
    });
  }

  /**
   * Append one entry. Never throws: a failing audit write is reported to onError (logged as an error).
   * The entries of one turn of the event loop (a STOW of many instances records one per instance) share one
   * transaction, written right after the turn; query, verifyChain and flush write what is pending first.
   */
  record(e: AuditEntry): void {
    this.pending.push({ row: auditRowOf(e), entry: e });
    if (this.pending.length >= 256) this.writePending();
    else this.scheduled ??= setImmediate(() => this.writePending());
  }

  private writePending(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = null;
    if (!this.pending.length) return;
    const batch = this.pending;
    this.pending = [];
    try {
      this.insertRows.immediate(batch.map((b) => b.row));
    } catch (err) {
      for (const b of batch) this.onError(err, b.entry);
    }
  }

  query(q: AuditQuery = {}): AuditRecord[] {
    this.writePending();
    const { sql, args } = auditSelect(q, () => "?");
    return (this.db.prepare(sql).all(...args) as AuditRow[]).map(toRecord);
  }

  /** Recompute the hash chain; the first row that does not match shows where the file was edited. */
  async flush(): Promise<void> {
    this.writePending();
  }

  verifyChain(): ChainCheck {
    this.writePending();
    let prev = GENESIS;
    let checked = 0;
    // iterate() streams rows: the log can be millions of rows
    for (const row of this.db.prepare("SELECT * FROM audit ORDER BY seq").iterate() as IterableIterator<AuditRow>) {
      checked++;
      if (rowHash(prev, row as unknown as Record<(typeof FIELDS)[number], unknown>) !== row.hash) {
        return { ok: false, checked, firstBadSeq: row.seq, newestHash: null };
      }
      prev = row.hash;
    }
    return { ok: true, checked, firstBadSeq: null, newestHash: checked ? prev : null };
  }
}

export function toRecord(r: AuditRow): AuditRecord {
  return {
    seq: r.seq,
    at: r.at,
    actor: r.actor,
    certSubject: r.cert_subject,
    action: r.action,
    method: r.method,
    route: r.route,
    studyInstanceUID: r.study_instance_uid,
    seriesInstanceUID: r.series_instance_uid,
    sopInstanceUID: r.sop_instance_uid,
    remoteAddr: r.remote_addr,
    outcome: r.outcome,
    status: r.status,
    detail: r.detail,
    hash: r.hash,
  };
}

/** Who is behind the request being handled (set by the access middleware). */
export interface AuditContext {
  actor: string;
  certSubject: string | null;
  remoteAddr: string | null;
  method: string;
  route: string;
}

export const auditContext = new AsyncLocalStorage<AuditContext>();

/**
 * Ingestor that records one audit row per instance it stores (or fails to store), under the actor of the
 * request that started the work; work started by the relay itself (recovery at start) is "system".
 */
export function auditingIngestor(inner: Ingestor, audit: Pick<AuditTrail, "record">): Ingestor {
  return observingIngestor(inner, (result: IngestResult, opts?: IngestOptions) => {
    // a bundle's refused or already-held entries: one audit row per ingested upload carries their counts
    if (opts?.bundleEntry && result.status !== "stored" && result.status !== "replaced") return;
    const ctx = auditContext.getStore();
    audit.record({
      actor: ctx?.actor ?? "system",
      certSubject: ctx?.certSubject ?? null,
      action: "instance.store",
      method: ctx?.method ?? null,
      route: ctx?.route ?? null,
      studyInstanceUID: result.studyInstanceUID ?? null,
      seriesInstanceUID: result.seriesInstanceUID ?? null,
      sopInstanceUID: result.sopInstanceUID ?? null,
      remoteAddr: ctx?.remoteAddr ?? null,
      outcome: result.status === "failed" ? "failure" : "success",
      detail: [result.status, opts?.source, opts?.transferId ? `transfer ${opts.transferId}` : null, result.status === "failed" ? result.message : null]
        .filter(Boolean)
        .join("; "),
    });
  });
}

/** A point in time for audit queries: "24h", "7d", "90m" ago, or an ISO date / date-time. */
export function auditTime(spec: string, now = new Date()): string {
  const s = spec.trim();
  const m = /^([1-9][0-9]{0,6})([smhd])$/.exec(s);
  if (m) {
    const unit = { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "s" | "m" | "h" | "d"];
    return new Date(now.getTime() - Number(m[1]) * unit * 1000).toISOString();
  }
  if (/^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(s)) {
    const t = new Date(s);
    if (!Number.isNaN(t.getTime())) return t.toISOString();
  }
  throw new Error(`"${spec}" is not a time: use e.g. 24h, 7d (that long ago) or an ISO date (2025-01-31 or 2025-01-31T08:00:00Z)`);
}

/** The SELECT of an audit query; placeholder(n) writes the n-th parameter (1-based) in the database's syntax. */
export function auditSelect(q: AuditQuery, placeholder: (n: number) => string): { sql: string; args: unknown[] } {
  const where: string[] = [];
  const args: unknown[] = [];
  const add = (column: string, op: string, v: unknown) => {
    args.push(v);
    where.push(`${column} ${op} ${placeholder(args.length)}`);
  };
  if (q.study) add("study_instance_uid", "=", q.study);
  if (q.actor) add("actor", "=", q.actor);
  if (q.action) add("action", "=", q.action);
  if (q.outcome) add("outcome", "=", q.outcome);
  if (q.since) add("at", ">=", q.since);
  if (q.until) add("at", "<", q.until);
  if (q.afterSeq !== undefined) add("seq", ">", q.afterSeq);
  const limit = Math.min(Math.max(1, Math.floor(q.limit ?? 1000)), MAX_QUERY_ROWS);
  return { sql: `SELECT * FROM audit ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY seq LIMIT ${limit}`, args };
}
