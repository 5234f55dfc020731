/**
 * Bearer tokens and study share links.
 *
 * A token is `drt_<id>_<secret>` (a share link `drs_<id>_<secret>`): id is 16 hex digits (public, names the
 * token in lists and the audit log), secret is 256 random bits in base64url. Only SHA-256 of the whole token
 * string is stored. A plain hash is enough here (no bcrypt/scrypt): slow hashes protect low-entropy passwords
 * from guessing, but a 256-bit random secret cannot be guessed, so a stolen database gives nothing usable.
 * The comparison is constant-time.
 */
import crypto from "node:crypto";
import type { AccessDb } from "./db.ts";
import { isValidUid } from "../dicom/uids.ts";

/** metrics: GET /metrics only (operational counters, no patient data), for a Prometheus scraper */
export const SCOPES = ["read", "upload", "admin", "metrics"] as const;
export type Scope = (typeof SCOPES)[number];
export type TokenKind = "token" | "share";

export interface TokenInfo {
  id: string;
  kind: TokenKind;
  /** share links have none: they read their studies only */
  scopes: Scope[];
  /** share links: the studies they open; [] for ordinary tokens */
  studies: string[];
  label: string;
  createdAt: string;
  createdBy: string;
  expiresAt: string | null;
  revokedAt: string | null;
  revokedBy: string | null;
}

export type TokenCheck =
  | { ok: true; token: TokenInfo }
  | { ok: false; reason: "malformed" | "unknown" | "expired" | "revoked"; tokenId?: string; message: string };

const TOKEN_RE = /^dr([ts])_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
const MAX_SHARE_STUDIES = 1000;

export function hashToken(token: string): string {
  return crypto.createHash("sha256").update(token, "utf8").digest("hex");
}

/** The id part of a well-formed token, else null (never throws: input comes from the network). */
export function tokenIdOf(token: string): string | null {
  return TOKEN_RE.exec(token)?.[2] ?? null;
}

/** A token as it may appear in logs and the audit log: prefix and id only, never the secret. */
export function redactToken(token: string): string {
  const m = TOKEN_RE.exec(token);
  return m ? `dr${m[1]}_${m[2]}_…` : "(malformed token)";
}

export class TokenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TokenError";
  }
}

export function parseScopes(list: string | readonly string[]): Scope[] {
  const items = (typeof list === "string" ? list.split(",") : [...list]).map((s) => String(s).trim().toLowerCase()).filter(Boolean);
  if (!items.length) throw new TokenError(`give at least one scope: ${SCOPES.join(", ")}`);
  for (const s of items) {
    if (!(SCOPES as readonly string[]).includes(s)) throw new TokenError(`unknown scope "${s}": use ${SCOPES.join(", ")}`);
  }
  return SCOPES.filter((s) => items.includes(s));
}

/**
 * An expiry spec as an ISO time: "30d", "12h", "90m", "3600s" from now, an ISO date/time, or "never" (null).
 */
export function expiryFrom(spec: string | null | undefined, now = new Date()): string | null {
  if (spec === undefined || spec === null || spec === "" || spec === "never") return null;
  const m = /^([1-9][0-9]{0,6})([smhd])$/.exec(spec.trim());
  if (m) {
    const unit = { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "s" | "m" | "h" | "d"];
    return new Date(now.getTime() + Number(m[1]) * unit * 1000).toISOString();
  }
  if (/^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(spec.trim())) {
    const t = new Date(spec.trim());
    if (!Number.isNaN(t.getTime())) {
      if (t.getTime() <= now.getTime()) throw new TokenError(`the expiry ${spec} is already past`);
      return t.toISOString();
    }
  }
  throw new TokenError(`"${spec}" is not an expiry: use e.g. 30d, 12h, 90m, an ISO date (2030-01-31) or never`);
}

/** Where tokens are kept: TokenStore (access.sqlite, one node) or PostgresTokenStore (every node). */
export interface TokenRegistry {
  count(): number | Promise<number>;
  create(opts: { scopes: readonly string[] | string; label?: string; expiresAt?: string | null; createdBy: string }): { token: string; info: TokenInfo } | Promise<{ token: string; info: TokenInfo }>;
  createShare(opts: { studies: readonly string[]; label?: string; expiresAt?: string | null; createdBy: string }): { token: string; info: TokenInfo } | Promise<{ token: string; info: TokenInfo }>;
  get(id: string): TokenInfo | null | Promise<TokenInfo | null>;
  list(opts?: { includeRevoked?: boolean; kind?: TokenKind }): TokenInfo[] | Promise<TokenInfo[]>;
  revoke(id: string, by: string): TokenInfo | null | Promise<TokenInfo | null>;
  verify(token: string, now?: Date): TokenCheck | Promise<TokenCheck>;
}

/** A token id (16 hex digits): what created_by holds for links minted through the API or the console. */
const TOKEN_ID = /^[0-9a-f]{16}$/;

/**
 * verify, plus: a share link lives only as long as the token that minted it. Revoking (or the expiry of) the
 * minting token ends its links at their next request. Links minted by the CLI or the system have no maker token.
 */
export async function verifyToken(tokens: TokenRegistry, presented: string, now = new Date()): Promise<TokenCheck> {
  const check = await tokens.verify(presented, now);
  if (!check.ok || check.token.kind !== "share" || !TOKEN_ID.test(check.token.createdBy)) return check;
  const maker = await tokens.get(check.token.createdBy);
  const makerGone = !maker ? "no longer exists" : maker.revokedAt ? `was revoked at ${maker.revokedAt}` : maker.expiresAt && maker.expiresAt <= now.toISOString() ? `expired at ${maker.expiresAt}` : null;
  if (!makerGone) return check;
  return { ok: false, reason: "revoked", tokenId: check.token.id, message: `the token was made by token ${check.token.createdBy}, which ${makerGone}; a link ends with the token that made it` };
}

/** Live (unrevoked, unexpired) share links minted by this token. */
export async function liveSharesOf(tokens: TokenRegistry, maker: string, now = new Date()): Promise<number> {
  const all = await tokens.list({ kind: "share" });
  return all.filter((t) => t.createdBy === maker && !t.revokedAt && !(t.expiresAt && t.expiresAt <= now.toISOString())).length;
}

/** Refuse a new link beyond auth.maxShareLinksPerToken live links of its maker (TokenError with a sentence). */
export async function checkShareQuota(tokens: TokenRegistry, maker: string, max: number): Promise<void> {
  if (!TOKEN_ID.test(maker)) return;
  const live = await liveSharesOf(tokens, maker);
  if (live >= max) {
    throw new ShareQuotaError(`this token already has ${live} live share links, the most one token may have (auth.maxShareLinksPerToken = ${max}); revoke some (DELETE /api/admin/shares/{id}) or wait for them to expire`);
  }
}

export class ShareQuotaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ShareQuotaError";
  }
}

/** A new token of this kind: its id and the whole string (shown once; only hashToken(token) is kept). */
export function newToken(kind: TokenKind): { id: string; token: string } {
  const id = crypto.randomBytes(8).toString("hex");
  return { id, token: `dr${kind === "share" ? "s" : "t"}_${id}_${crypto.randomBytes(32).toString("base64url")}` };
}

/** The studies of a share link, checked: de-duplicated, at least one, at most MAX_SHARE_STUDIES, valid UIDs. */
export function shareStudies(list: readonly string[]): string[] {
  const studies = [...new Set(list.map((s) => s.trim()).filter(Boolean))];
  if (!studies.length) throw new TokenError("a share link needs at least one StudyInstanceUID");
  if (studies.length > MAX_SHARE_STUDIES) throw new TokenError(`a share link may open at most ${MAX_SHARE_STUDIES} studies`);
  for (const s of studies) {
    if (!isValidUid(s)) throw new TokenError(`"${s.slice(0, 80)}" is not a valid StudyInstanceUID`);
  }
  return studies;
}

/**
 * The verdict on a presented token given the stored row of its id (tokenIdOf; undefined when unknown): the rules
 * every store shares. The hash comparison runs even for an unknown id, so both paths take the same time.
 */
export function judgeToken(token: string, row: TokenRow | undefined, now: Date): { ok: true; row: TokenRow } | Extract<TokenCheck, { ok: false }> {
  const m = TOKEN_RE.exec(token);
  if (!m) return { ok: false, reason: "malformed", message: "the token is not well formed" };
  const id = m[2]!;
  const presented = Buffer.from(hashToken(token), "hex");
  const stored = Buffer.from(row?.hash ?? "0".repeat(64), "hex");
  const equal = stored.length === presented.length && crypto.timingSafeEqual(stored, presented);
  if (!row || !equal || (row.kind === "share") !== (m[1] === "s")) {
    return { ok: false, reason: "unknown", tokenId: id, message: "the token is not known to this relay" };
  }
  if (row.revoked_at) return { ok: false, reason: "revoked", tokenId: id, message: `the token was revoked at ${row.revoked_at}` };
  if (row.expires_at && row.expires_at <= now.toISOString()) {
    return { ok: false, reason: "expired", tokenId: id, message: `the token expired at ${row.expires_at}` };
  }
  return { ok: true, row };
}

/** A stored token row as TokenInfo. */
export function tokenInfoOf(row: TokenRow, studies: string[]): TokenInfo {
  return {
    id: row.id,
    kind: row.kind,
    scopes: row.scopes ? (row.scopes.split(",") as Scope[]) : [],
    studies,
    label: row.label,
    createdAt: row.created_at,
    createdBy: row.created_by,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    revokedBy: row.revoked_by,
  };
}

export interface TokenRow {
  id: string;
  kind: TokenKind;
  hash: string;
  scopes: string;
  label: string;
  created_at: string;
  created_by: string;
  expires_at: string | null;
  revoked_at: string | null;
  revoked_by: string | null;
}

export class TokenStore implements TokenRegistry {
  constructor(private readonly db: AccessDb) {}

  /** How many tokens were ever created (revoked ones included): 0 means a first run. */
  count(): number {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM tokens").get() as { n: number }).n;
  }

  create(opts: { scopes: readonly string[] | string; label?: string; expiresAt?: string | null; createdBy: string }): { token: string; info: TokenInfo } {
    const scopes = parseScopes(opts.scopes);
    return this.insert("token", scopes, [], opts);
  }

  createShare(opts: { studies: readonly string[]; label?: string; expiresAt?: string | null; createdBy: string }): { token: string; info: TokenInfo } {
    return this.insert("share", [], shareStudies(opts.studies), opts);
  }

  private insert(
    kind: TokenKind,
    scopes: Scope[],
    studies: string[],
    opts: { label?: string; expiresAt?: string | null; createdBy: string },
  ): { token: string; info: TokenInfo } {
    const label = (opts.label ?? "").slice(0, 200);
    const { id, token } = newToken(kind);
    const createdAt = new Date().toISOString();
    this.db.transaction(() => {
      this.db
        .prepare("INSERT INTO tokens (id, kind, hash, scopes, label, created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .run(id, kind, hashToken(token), scopes.join(","), label, createdAt, opts.createdBy, opts.expiresAt ?? null);
      const add = this.db.prepare("INSERT INTO share_studies (token_id, study_instance_uid) VALUES (?, ?)");
      for (const s of studies) add.run(id, s);
    }).immediate();
    return { token, info: this.get(id)! };
  }

  get(id: string): TokenInfo | null {
    const row = this.db.prepare("SELECT * FROM tokens WHERE id = ?").get(id) as TokenRow | undefined;
    return row ? this.toInfo(row) : null;
  }

  list(opts: { includeRevoked?: boolean; kind?: TokenKind } = {}): TokenInfo[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (!opts.includeRevoked) where.push("revoked_at IS NULL");
    if (opts.kind) {
      where.push("kind = ?");
      args.push(opts.kind);
    }
    const rows = this.db
      .prepare(`SELECT * FROM tokens ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY created_at, id`)
      .all(...args) as TokenRow[];
    return rows.map((r) => this.toInfo(r));
  }

  /** Revoke a token or share link; null when no such id. Revoking twice keeps the first revocation. */
  revoke(id: string, by: string): TokenInfo | null {
    this.db.prepare("UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL").run(new Date().toISOString(), by, id);
    return this.get(id);
  }

  /** Check a presented token: well formed, known, hash equal, not revoked, not expired. */
  verify(token: string, now = new Date()): TokenCheck {
    const id = tokenIdOf(token);
    const row = id ? (this.db.prepare("SELECT * FROM tokens WHERE id = ?").get(id) as TokenRow | undefined) : undefined;
    const verdict = judgeToken(token, row, now);
    return verdict.ok ? { ok: true, token: this.toInfo(verdict.row) } : verdict;
  }

  private toInfo(row: TokenRow): TokenInfo {
    const studies =
      row.kind === "share"
        ? (this.db.prepare("SELECT study_instance_uid AS s FROM share_studies WHERE token_id = ? ORDER BY study_instance_uid").all(row.id) as { s: string }[]).map((r) => r.s)
        : [];
    return tokenInfoOf(row, studies);
  }
}
