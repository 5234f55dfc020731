/** Wires access control from the configuration: access database, tokens, audit log, client-certificate checks, guards. */
import type { Router } from "express";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import { accessDbPath, openAccessDb, type AccessDb } from "./db.ts";
import { AuditLog } from "./audit.ts";
import { TokenStore, SCOPES } from "./tokens.ts";
import { RevocationList } from "./tls.ts";
import { accessGuards, type AccessGuards } from "./middleware.ts";
import { adminRouter } from "./adminRoutes.ts";
import { PeerGrants } from "./peerGrants.ts";

export interface AccessControl {
  db: AccessDb;
  tokens: TokenStore;
  /** studies granted to DICOM peers (by AE title) */
  peerGrants: PeerGrants;
  audit: AuditLog;
  guards: AccessGuards;
  adminRouter(): Router;
  /** the admin token created at this start (first run only); shown once by the caller, stored nowhere in clear */
  initialAdminToken: string | null;
  close(): void;
}

export function startAccess(deps: { config: RelayConfig; log: Logger }): AccessControl {
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
    close: () => db.close(),
  };
}
