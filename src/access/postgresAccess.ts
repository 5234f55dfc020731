/**
 * Tokens, share links and the audit log in PostgreSQL, used when index.kind is postgres, so that every relay node
 * accepts the same tokens, sees a revocation at once, and writes one audit log. Same tables and rules as the
 * access.sqlite stores (tokens.ts, audit.ts); the tables come with the index's migrations (version 3) and these
 * stores borrow the index's pool.
 *
 * The audit log stays one hash chain across nodes: each append takes a transaction-scoped advisory lock, reads
 * the newest hash and inserts the next row, so two nodes never chain onto the same row. record() does not make
 * the request wait: entries are written in order by one queue per process; flush() waits for the queue.
 */
import type pg from "pg";
import { inTransaction } from "../catalog/pgTransaction.ts";
import {
  hashToken, judgeToken, newToken, parseScopes, shareStudies, tokenIdOf, tokenInfoOf,
  type Scope, type TokenCheck, type TokenInfo, type TokenKind, type TokenRegistry, type TokenRow,
} from "./tokens.ts";
import {
  auditRowOf, auditSelect, FIELDS, GENESIS, rowHash, toRecord,
  type AuditEntry, type AuditQuery, type AuditRecord, type AuditRow, type AuditTrail, type ChainCheck,
} from "./audit.ts";

/** Advisory locks (class, object) of access control ("DR" + 4, see ADVISORY_LOCK in catalog/postgres.ts). */
export const AUDIT_LOCK = [0x44520004, 0] as const;
/** held while a starting node checks whether the initial admin token must be made */
export const INITIAL_TOKEN_LOCK = [0x44520004, 1] as const;

export class PostgresTokenStore implements TokenRegistry {
  constructor(private readonly pool: pg.Pool) {}

  async count(): Promise<number> {
    return Number((await this.pool.query<{ n: string }>("SELECT COUNT(*) AS n FROM tokens")).rows[0]!.n);
  }

  async create(opts: { scopes: readonly string[] | string; label?: string; expiresAt?: string | null; createdBy: string }): Promise<{ token: string; info: TokenInfo }> {
    return this.insert("token", parseScopes(opts.scopes), [], opts);
  }

  async createShare(opts: { studies: readonly string[]; label?: string; expiresAt?: string | null; createdBy: string }): Promise<{ token: string; info: TokenInfo }> {
    return this.insert("share", [], shareStudies(opts.studies), opts);
  }

  /**
   * The initial admin token of a fresh database, made by exactly one of several nodes starting at once:
   * under an advisory lock, only when no token exists yet. null when one existed (or another node made it).
   */
  async createInitial(opts: { scopes: readonly Scope[]; label: string; createdBy: string }): Promise<{ token: string; info: TokenInfo } | null> {
    const made = await inTransaction(this.pool, async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1, $2)", [...INITIAL_TOKEN_LOCK]);
      const n = Number((await client.query<{ n: string }>("SELECT COUNT(*) AS n FROM tokens")).rows[0]!.n);
      if (n !== 0) return null;
      const { id, token } = newToken("token");
      await client.query(
        "INSERT INTO tokens (id, kind, hash, scopes, label, created_at, created_by) VALUES ($1, 'token', $2, $3, $4, $5, $6)",
        [id, hashToken(token), opts.scopes.join(","), opts.label.slice(0, 200), new Date().toISOString(), opts.createdBy],
      );
      return { token, id };
    });
    return made ? { token: made.token, info: (await this.get(made.id))! } : null;
  }

  private async insert(kind: TokenKind, scopes: Scope[], studies: string[], opts: { label?: string; expiresAt?: string | null; createdBy: string }): Promise<{ token: string; info: TokenInfo }> {
    const { id, token } = newToken(kind);
    await inTransaction(this.pool, async (client) => {
      await client.query(
        "INSERT INTO tokens (id, kind, hash, scopes, label, created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [id, kind, hashToken(token), scopes.join(","), (opts.label ?? "").slice(0, 200), new Date().toISOString(), opts.createdBy, opts.expiresAt ?? null],
      );
      if (studies.length) {
        await client.query("INSERT INTO share_studies (token_id, study_instance_uid) SELECT $1, unnest($2::text[])", [id, studies]);
      }
    });
    return { token, info: (await this.get(id))! };
  }

  async get(id: string): Promise<TokenInfo | null> {
    const row = (await this.pool.query<TokenRow>("SELECT * FROM tokens WHERE id = $1", [id])).rows[0];
    return row ? this.toInfo(row) : null;
  }

  async list(opts: { includeRevoked?: boolean; kind?: TokenKind } = {}): Promise<TokenInfo[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (!opts.includeRevoked) where.push("revoked_at IS NULL");
    if (opts.kind) {
      args.push(opts.kind);
      where.push(`kind = $${args.length}`);
    }
    const rows = (await this.pool.query<TokenRow>(`SELECT * FROM tokens ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY created_at, id`, args)).rows;
    return Promise.all(rows.map((r) => this.toInfo(r)));
  }

  async revoke(id: string, by: string): Promise<TokenInfo | null> {
    await this.pool.query("UPDATE tokens SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL", [new Date().toISOString(), by, id]);
    return this.get(id);
  }

  async verify(token: string, now = new Date()): Promise<TokenCheck> {
    const id = tokenIdOf(token);
    const row = id ? (await this.pool.query<TokenRow>("SELECT * FROM tokens WHERE id = $1", [id])).rows[0] : undefined;
    const verdict = judgeToken(token, row, now);
    return verdict.ok ? { ok: true, token: await this.toInfo(verdict.row) } : verdict;
  }

  private async toInfo(row: TokenRow): Promise<TokenInfo> {
    const studies = row.kind === "share"
      ? (await this.pool.query<{ s: string }>("SELECT study_instance_uid AS s FROM share_studies WHERE token_id = $1 ORDER BY study_instance_uid", [row.id])).rows.map((r) => r.s)
      : [];
    return tokenInfoOf(row, studies);
  }
}

export class PostgresAuditLog implements AuditTrail {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly pool: pg.Pool, private readonly onError: (err: unknown, entry: AuditEntry) => void = () => {}) {}

  record(e: AuditEntry): void {
    const row = auditRowOf(e);
    this.queue = this.queue.then(() => this.append(row)).catch((err) => this.onError(err, e));
  }

  flush(): Promise<void> {
    return this.queue;
  }

  private async append(row: Record<(typeof FIELDS)[number], string | number | null>): Promise<void> {
    await inTransaction(this.pool, async (client) => {
      // one chain for every node: appends are serialised cluster-wide (short: one read, one insert)
      await client.query("SELECT pg_advisory_xact_lock($1, $2)", [...AUDIT_LOCK]);
      const prev = (await client.query<{ hash: string }>("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1")).rows[0]?.hash ?? GENESIS;
      await client.query(
        `INSERT INTO audit (${FIELDS.join(", ")}, hash) VALUES (${FIELDS.map((_, i) => `$${i + 1}`).join(", ")}, $${FIELDS.length + 1})`,
        [...FIELDS.map((f) => row[f] ?? null), rowHash(prev, row)],
      );
    });
  }

  async query(q: AuditQuery = {}): Promise<AuditRecord[]> {
    const { sql, args } = auditSelect(q, (n) => `$${n}`);
    const rows = (await this.pool.query<AuditRow>(sql, args)).rows;
    return rows.map((r) => toRecord({ ...r, seq: Number(r.seq) }));
  }

  /** Recompute the chain in pages (the log can be millions of rows). */
  async verifyChain(): Promise<ChainCheck> {
    let prev = GENESIS;
    let checked = 0;
    let after = 0;
    for (;;) {
      const rows = (await this.pool.query<AuditRow>("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT 1000", [after])).rows;
      if (!rows.length) break;
      for (const row of rows) {
        checked++;
        if (rowHash(prev, row as unknown as Record<(typeof FIELDS)[number], unknown>) !== row.hash) {
          return { ok: false, checked, firstBadSeq: Number(row.seq), newestHash: null };
        }
        prev = row.hash;
        after = Number(row.seq);
      }
    }
    return { ok: true, checked, firstBadSeq: null, newestHash: checked ? prev : null };
  }
}
