/**
 * Admin API (admin scope): tokens, share links, the audit log. Mounted at /api/admin behind the admin guard.
 *   GET    /api/admin/tokens[?includeRevoked=true]     list (never the secrets)
 *   POST   /api/admin/tokens   {scopes, label?, expires?}          -> 201 {token, ...} (the token is shown once)
 *   DELETE /api/admin/tokens/{id}                                   revoke (tokens and share links)
 *   GET    /api/admin/shares[?includeRevoked=true]
 *   POST   /api/admin/shares   {studies, label?, expires?}         -> 201 {token, url, ...}
 *   DELETE /api/admin/shares/{id}
 *   GET    /api/admin/peers/{ae}/studies                      studies granted to a DICOM peer
 *   POST   /api/admin/peers/{ae}/studies {studies, expires?}  grant studies to a DICOM peer (C-FIND/C-MOVE/C-GET)
 *   DELETE /api/admin/peers/{ae}/studies/{study}              withdraw one
 *   GET    /api/admin/audit?study=&since=&until=&actor=&action=&outcome=&afterSeq=&limit=
 */
import express, { Router, type Request } from "express";
import type { RelayConfig } from "../config.ts";
import { HttpError } from "../http/errors.ts";
import { auditTime, type AuditTrail, type AuditQuery } from "./audit.ts";
import { actorOf, noteAudit } from "./middleware.ts";
import { checkShareQuota, expiryFrom, ShareQuotaError, TokenError, type TokenInfo, type TokenRegistry } from "./tokens.ts";
import type { PeerGrants } from "./peerGrants.ts";

/** The DICOMweb root URL a share link opens. */
export function shareUrl(base: string, token: string, config: RelayConfig): string {
  return `${base.replace(/\/$/, "")}/share/${token}${config.dicomweb.root}`;
}

export function adminRouter(deps: { config: RelayConfig; tokens: TokenRegistry; audit: AuditTrail; peerGrants?: PeerGrants }): Router {
  const { config, tokens, audit, peerGrants } = deps;
  const r = Router();
  r.use((_req, res, next) => {
    res.set("Cache-Control", "no-store");
    next();
  });
  r.use(express.json({ limit: "256kb", type: ["application/json", "application/*+json"] }));

  const body = (req: Request): Record<string, unknown> => {
    if (!req.is("application/json") && !req.is("application/*+json")) throw new HttpError(415, "send application/json");
    const b = req.body as unknown;
    if (!b || typeof b !== "object" || Array.isArray(b)) throw new HttpError(400, "the body must be a JSON object");
    return b as Record<string, unknown>;
  };
  const str = (v: unknown, name: string): string | undefined => {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") throw new HttpError(400, `${name} must be a string`);
    return v;
  };
  /** 429 beyond auth.maxShareLinksPerToken live links of this maker */
  const quota = async (maker: string) => {
    try {
      await checkShareQuota(tokens, maker, config.auth.maxShareLinksPerToken);
    } catch (err) {
      if (err instanceof ShareQuotaError) throw new HttpError(429, err.message);
      throw err;
    }
  };
  const tokenErrors = async <T>(f: () => T | Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (err) {
      if (err instanceof TokenError) throw new HttpError(400, err.message);
      throw err;
    }
  };
  const base = (req: Request) => config.server.publicUrl || `${req.protocol}://${req.get("host")}`;

  const list = (kind: TokenInfo["kind"]) => async (req: Request, res: express.Response) => {
    noteAudit(res, { action: `${kind}.list` });
    res.json(await tokens.list({ kind, includeRevoked: req.query.includeRevoked === "true" }));
  };
  const revoke = (kind: TokenInfo["kind"]) => async (req: Request, res: express.Response) => {
    const id = String(req.params.id);
    const existing = await tokens.get(id);
    noteAudit(res, { action: `${kind}.revoke`, detail: `revoke ${id.slice(0, 40)}` });
    if (!existing || existing.kind !== kind) throw new HttpError(404, `no ${kind === "share" ? "share link" : "token"} with id ${id.slice(0, 40)}`);
    res.json(await tokens.revoke(id, actorOf(res)));
  };

  r.get("/tokens", list("token"));
  r.post("/tokens", async (req, res) => {
    const b = body(req);
    noteAudit(res, { action: "token.create" });
    const scopes = Array.isArray(b.scopes) || typeof b.scopes === "string" ? (b.scopes as string[] | string) : undefined;
    if (!scopes) throw new HttpError(400, 'give scopes, e.g. {"scopes": ["read", "upload"]}');
    const created = await tokenErrors(() =>
      tokens.create({
        scopes: typeof scopes === "string" ? scopes : scopes.map(String),
        label: str(b.label, "label"),
        expiresAt: expiryFrom(str(b.expires, "expires")),
        createdBy: actorOf(res),
      }),
    );
    noteAudit(res, { detail: `created token ${created.info.id} scopes ${created.info.scopes.join(",")} expires ${created.info.expiresAt ?? "never"}` });
    res.status(201).json({ ...created.info, token: created.token });
  });
  r.delete("/tokens/:id", revoke("token"));

  r.get("/shares", list("share"));
  r.post("/shares", async (req, res) => {
    const b = body(req);
    noteAudit(res, { action: "share.create" });
    const studies = Array.isArray(b.studies) ? b.studies.map(String) : typeof b.studies === "string" ? b.studies.split(",") : undefined;
    if (!studies) throw new HttpError(400, 'give the studies to share, e.g. {"studies": ["1.2.840..."], "expires": "7d"}');
    const expires = str(b.expires, "expires") ?? config.auth.shareDefaultExpiry;
    await quota(actorOf(res));
    const created = await tokenErrors(() =>
      tokens.createShare({ studies, label: str(b.label, "label"), expiresAt: expiryFrom(expires), createdBy: actorOf(res) }),
    );
    noteAudit(res, {
      detail: `created share link ${created.info.id} for ${created.info.studies.length} study(ies) expires ${created.info.expiresAt ?? "never"}`,
      studyInstanceUID: created.info.studies.length === 1 ? created.info.studies[0] : null,
    });
    res.status(201).json({ ...created.info, token: created.token, url: shareUrl(base(req), created.token, config) });
  });
  r.delete("/shares/:id", revoke("share"));

  if (peerGrants) {
    r.get("/peers/:ae/studies", (req, res) => {
      noteAudit(res, { action: "peer.grant.list", detail: `peer ${String(req.params.ae).slice(0, 16)}` });
      res.json(peerGrants.list(String(req.params.ae)));
    });
    r.post("/peers/:ae/studies", async (req, res) => {
      const b = body(req);
      const ae = String(req.params.ae);
      noteAudit(res, { action: "peer.grant" });
      const studies = Array.isArray(b.studies) ? b.studies.map(String) : typeof b.studies === "string" ? b.studies.split(",") : undefined;
      if (!studies) throw new HttpError(400, 'give the studies to grant, e.g. {"studies": ["1.2.840..."], "expires": "30d"}');
      const expires = str(b.expires, "expires");
      const granted = await tokenErrors(() => peerGrants.grant({ aeTitle: ae, studies, expiresAt: expiryFrom(expires ?? "never"), grantedBy: actorOf(res) }));
      noteAudit(res, {
        detail: `granted ${granted.length} study(ies) to peer ${ae.slice(0, 16)}: ${studies.join(",").slice(0, 1500)}`,
        studyInstanceUID: granted.length === 1 ? granted[0]!.studyInstanceUID : null,
      });
      res.status(201).json(granted);
    });
    r.delete("/peers/:ae/studies/:study", (req, res) => {
      const ae = String(req.params.ae);
      const study = String(req.params.study);
      noteAudit(res, { action: "peer.revoke", detail: `peer ${ae.slice(0, 16)}`, studyInstanceUID: study.slice(0, 64) });
      if (!peerGrants.revoke(ae, study)) throw new HttpError(404, `study ${study.slice(0, 64)} is not granted to peer ${ae.slice(0, 16)}`);
      res.status(204).end();
    });
  }

  r.get("/audit", async (req, res) => {
    const q = req.query as Record<string, unknown>;
    const one = (name: string) => (typeof q[name] === "string" && q[name] !== "" ? (q[name] as string) : undefined);
    const query: AuditQuery = {};
    try {
      query.study = one("study");
      query.actor = one("actor");
      query.action = one("action");
      const outcome = one("outcome");
      if (outcome && outcome !== "success" && outcome !== "failure") throw new Error("outcome must be success or failure");
      query.outcome = outcome as AuditQuery["outcome"];
      if (one("since")) query.since = auditTime(one("since")!);
      if (one("until")) query.until = auditTime(one("until")!);
      if (one("afterSeq")) query.afterSeq = Number(one("afterSeq"));
      if (one("limit")) query.limit = Number(one("limit"));
      for (const n of [query.afterSeq, query.limit]) {
        if (n !== undefined && (!Number.isInteger(n) || n < 0)) throw new Error("afterSeq and limit must be non-negative integers");
      }
    } catch (err) {
      throw new HttpError(400, (err as Error).message);
    }
    noteAudit(res, { action: "audit.query", detail: JSON.stringify(query).slice(0, 500), studyInstanceUID: query.study ?? null });
    const entries = await audit.query(query);
    const limit = query.limit ?? 1000;
    res.json({ entries, next: entries.length >= limit && entries.length ? { afterSeq: entries[entries.length - 1]!.seq } : null });
  });
  return r;
}
