/** Wires access control from the configuration: access database, tokens, audit log, client-certificate checks, guards. */
import type { Router } from "express";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import { accessDbPath, openAccessDb, type AccessDb } from "./db.ts";
import { AuditLog, type AuditTrail } from "./audit.ts";
import { TokenStore, SCOPES, type TokenInfo, type TokenRegistry } from "./tokens.ts";
import type { Index } from "../catalog/index.ts";
import { PostgresIndex } from "../catalog/postgres.ts";
import { PostgresAuditLog, PostgresTokenStore } from "./postgresAccess.ts";
import { RevocationList } from "./tls.ts";
import { accessGuards, type AccessGuards } from "./middleware.ts";
import { adminRouter } from "./adminRoutes.ts";
import { PeerGrants } from "./peerGrants.ts";

/**
 * Access control of one relay. T, A: the token store and audit log (the SQLite ones are synchronous; the
 * PostgreSQL ones, shared by every node, are not).
 */
export interface AccessControl<T extends TokenRegistry = TokenRegistry, A extends AuditTrail = AuditTrail> {
  /** the local access database (null when tokens and audit are in PostgreSQL) */
  db: AccessDb | null;
  tokens: T;
  audit: A;
  /**
   * studies granted to DICOM peers (by AE title). Kept in this node's dataDir/access.sqlite even when tokens
   * and audit are in PostgreSQL: the DICOM node is addressed per host, so grants belong to the node that runs it.
   */
  peerGrants: PeerGrants;
  guards: AccessGuards;
  adminRouter(): Router;
  /** the admin token created at this start (first run only); shown once by the caller, stored nowhere in clear */
  initialAdminToken: string | null;
  /**
   * First run (no token ever made, auth enabled): make the admin token now. Called by startRelay once the listener
   * is up, so a start that fails (port taken) leaves no token nobody saw.
   */
  createInitialAdminToken(): Promise<string | null>;
  close(): void | Promise<void>;
}

/**
 * Access control for a relay with this index: with the PostgreSQL index, tokens, share links and the audit
 * log are in the shared database (every node accepts the same tokens and writes one audit log); otherwise in
 * dataDir/access.sqlite.
 */
export async function openAccess(deps: { config: RelayConfig; log: Logger; index: Index }): Promise<AccessControl> {
  if (!(deps.index instanceof PostgresIndex)) return startAccess(deps);
  const { config, log } = deps;
  const pool = deps.index.sharedPool;
  const tokens = new PostgresTokenStore(pool);
  const audit = new PostgresAuditLog(pool, auditErrorLogger(log));
  // nodes starting together on an empty database: exactly one makes (and prints) the initial token
  const created = null;
  const makeInitial = async () => (config.auth.enabled ? await tokens.createInitial(INITIAL_TOKEN) : null);
  const localDb = openAccessDb(accessDbPath(config.dataDir));
  return assemble({ config, log, db: null, tokens, audit, peerGrants: new PeerGrants(localDb), created, makeInitial }, async () => {
    // the pool belongs to the index; pending audit rows are written first
    await audit.flush();
    localDb.close();
  });
}

export function startAccess(deps: { config: RelayConfig; log: Logger }): AccessControl<TokenStore, AuditLog> {
  const { config, log } = deps;
  const db = openAccessDb(accessDbPath(config.dataDir));
  const tokens = new TokenStore(db);
  const audit = new AuditLog(db, auditErrorLogger(log));
  const created = null;
  const makeInitial = async () => (config.auth.enabled && tokens.count() === 0 ? tokens.create(INITIAL_TOKEN) : null);
  return assemble({ config, log, db, tokens, audit, peerGrants: new PeerGrants(db), created, makeInitial }, async () => {
    await audit.flush();
    db.close();
  });
}

const INITIAL_TOKEN = { scopes: [...SCOPES], label: "initial admin token (first start)", createdBy: "system" };

const auditErrorLogger = (log: Logger) => (err: unknown, entry: { action: string; actor: string }) => {
  log.error({ err, action: entry.action, actor: entry.actor }, "could not write an audit entry");
};

/** The parts both kinds of store share: the warning, the initial token's audit row, guards, admin routes. */
function assemble<T extends TokenRegistry, A extends AuditTrail>(
  parts: { config: RelayConfig; log: Logger; db: AccessDb | null; tokens: T; audit: A; peerGrants: PeerGrants; created: { token: string; info: TokenInfo } | null; makeInitial: () => Promise<{ token: string; info: TokenInfo } | null> },
  close: () => void | Promise<void>,
): AccessControl<T, A> {
  const { config, log, db, tokens, audit, peerGrants, makeInitial } = parts;
  if (!config.auth.enabled) {
    log.warn("authentication is DISABLED (auth.enabled=false): anyone who can reach this relay can read, store and delete studies");
  }

  const revoked = config.tls.requireClientCertForUpload ? new RevocationList(config.tls.revokedFile) : null;
  const guards = accessGuards({ config, log, tokens, audit, revoked });
  const control: AccessControl<T, A> = {
    db,
    tokens,
    peerGrants,
    audit,
    guards,
    adminRouter: () => adminRouter({ config, tokens, audit, peerGrants }),
    initialAdminToken: null,
    async createInitialAdminToken() {
      const created = await makeInitial();
      if (!created) return null;
      audit.record({ actor: "system", action: "token.create", outcome: "success", detail: `created initial admin token ${created.info.id} scopes ${created.info.scopes.join(",")}` });
      log.info({ tokenId: created.info.id }, "first start: created the initial admin token (printed once on standard output)");
      control.initialAdminToken = created.token;
      return created.token;
    },
    close,
  };
  return control;
}

/**
 * The token store and audit log for a command-line tool (token, audit), wherever this configuration keeps
 * them: access.sqlite in dataDir, or the PostgreSQL database of index.kind=postgres. close() writes pending
 * audit rows and closes what was opened.
 */
export async function openAccessStores(config: RelayConfig, onAuditError: (err: unknown) => void = () => {}): Promise<{ tokens: TokenRegistry; audit: AuditTrail; close(): Promise<void> }> {
  if (config.index.kind === "postgres") {
    const { createIndex } = await import("../catalog/factory.ts");
    const index = createIndex(config) as PostgresIndex;
    await index.init();
    const audit = new PostgresAuditLog(index.sharedPool, onAuditError);
    return {
      tokens: new PostgresTokenStore(index.sharedPool),
      audit,
      async close() {
        await audit.flush();
        await index.close();
      },
    };
  }
  const db = openAccessDb(accessDbPath(config.dataDir));
  const audit = new AuditLog(db, onAuditError);
  return {
    tokens: new TokenStore(db),
    audit,
    async close() {
      await audit.flush();
      db.close();
    },
  };
}
