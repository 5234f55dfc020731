/** Wires access control from the configuration: access database, tokens, audit log, client-certificate checks, guards. */
import type { Router } from "express";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import { accessDbPath, openAccessDb, type AccessDb } from "./db.ts";
import { AuditLog, type AuditTrail } from "./audit.ts";
import { TokenStore, SCOPES, type TokenRegistry } from "./tokens.ts";
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
  const audit = new PostgresAuditLog(pool, (err, entry) => {
    log.error({ err, action: entry.action, actor: entry.actor }, "could not write an audit entry");
  });
  if (!config.auth.enabled) {
    log.warn("authentication is DISABLED (auth.enabled=false): anyone who can reach this relay can read, store and delete studies");
  }
  let initialAdminToken: string | null = null;
  if (config.auth.enabled) {
    // nodes starting together on an empty database: exactly one makes (and prints) the initial token
    const created = await tokens.createInitial({ scopes: [...SCOPES], label: "initial admin token (first start)", createdBy: "system" });
    if (created) {
      initialAdminToken = created.token;
      audit.record({ actor: "system", action: "token.create", outcome: "success", detail: `created initial admin token ${created.info.id} scopes ${created.info.scopes.join(",")}` });
      log.info({ tokenId: created.info.id }, "first start: created the initial admin token (printed once on standard output)");
    }
  }
  const revoked = config.tls.requireClientCertForUpload ? new RevocationList(config.tls.revokedFile) : null;
  const guards = accessGuards({ config, log, tokens, audit, revoked });
  const localDb = openAccessDb(accessDbPath(config.dataDir));
  const peerGrants = new PeerGrants(localDb);
  return {
    db: null,
    tokens,
    peerGrants,
    audit,
    guards,
    adminRouter: () => adminRouter({ config, tokens, audit, peerGrants }),
    initialAdminToken,
    // the pool belongs to the index; pending audit rows are written first
    close: async () => {
      await audit.flush();
      localDb.close();
    },
  };
}

export function startAccess(deps: { config: RelayConfig; log: Logger }): AccessControl<TokenStore, AuditLog> {
  const { config, log } = deps;
  const db = openAccessDb(accessDbPath(config.dataDir));
  const tokens = new TokenStore(db);
  const peerGrants = new PeerGrants(db);
  const audit = new AuditLog(db, (err, entry) => {
    log.error({ err, action: entry.action, actor: entry.actor }, "could not write an audit entry");
  });
  if (!config.auth.enabled) {
    log.warn("authentication is DISABLED (auth.enabled=false): anyone who can reach this relay can read, store and delete studies");
  }
  let initialAdminToken: string | null = null;
  if (config.auth.enabled && tokens.count() === 0) {
    const created = tokens.create({ scopes: [...SCOPES], label: "initial admin token (first start)", createdBy: "system" });
    initialAdminToken = created.token;
    audit.record({ actor: "system", action: "token.create", outcome: "success", detail: `created initial admin token ${created.info.id} scopes ${created.info.scopes.join(",")}` });
    log.info({ tokenId: created.info.id }, "first start: created the initial admin token (printed once on standard output)");
  }
  const revoked = config.tls.requireClientCertForUpload ? new RevocationList(config.tls.revokedFile) : null;
  const guards = accessGuards({ config, log, tokens, audit, revoked });
  return {
    db,
    tokens,
    peerGrants,
    audit,
    guards,
    adminRouter: () => adminRouter({ config, tokens, audit, peerGrants }),
    initialAdminToken,
    close: () => {
      db.close();
    },
  };
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
  return {
    tokens: new TokenStore(db),
    audit: new AuditLog(db, onAuditError),
    async close() {
      db.close();
    },
  };
}
