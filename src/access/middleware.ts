/**
 * Access control at the HTTP edge: one app-wide authentication step, then one authorization step per mount
 * (DICOMweb root, share root, transfers/tus, admin API). Authorization sits on the same mount as the router it
 * guards, so whatever path express matches to a router (any case, trailing slash) passes that router's guard.
 *
 * Credentials: `Authorization: Bearer <token>`, or `Basic base64(user:token)` (the token as the password, any user
 * name) for PACS DICOMweb clients that can only do Basic; both give the same principal, scopes and audit row. On
 * /share/{token}/ URLs the path's share link is the credential and any Authorization header is ignored.
 *
 * Refusals: no credentials 401 + `WWW-Authenticate: Bearer realm=...` (on the DICOMweb root also a second challenge
 * `Basic realm=...`, so Basic-only clients know to send it); a bad, expired or revoked token
 * 401 + error="invalid_token"; a valid token without the scope 403 + error="insufficient_scope"; a share link
 * asked to store or delete 403; a missing or revoked client certificate on an upload route 403.
 * Every request that gets past the open routes leaves one audit row (failures included).
 */
import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import { FULL_ACCESS, type AccessScope } from "../dicomweb/context.ts";
import { HttpError } from "../http/errors.ts";
import { RECEIPT_KEY_PATH } from "../transfers/routes.ts";
import { auditContext, type AuditTrail } from "./audit.ts";
import { parseAuthorization, type AuthScheme } from "./credentials.ts";
import { redactToken, verifyToken, type Scope, type TokenRegistry } from "./tokens.ts";
import { checkClientCertificate, clientCertificate, type RevocationList } from "./tls.ts";
import type { Sender } from "./sender.ts";

export interface Principal {
  kind: "token" | "share" | "anonymous";
  tokenId: string | null;
  scopes: ReadonlySet<Scope>;
  /** share links: the studies they open; null = every study */
  studies: readonly string[] | null;
  /** the credential came from a /share/{token}/ path */
  viaSharePath: boolean;
}

/** What the audit row of this request will say (filled in by the guards). */
interface AuditNote {
  actor: string;
  certSubject: string | null;
  action: string;
  studyInstanceUID?: string | null;
  seriesInstanceUID?: string | null;
  sopInstanceUID?: string | null;
  detail?: string | null;
}

export interface AccessGuards {
  authenticate: RequestHandler;
  /** mount with the DICOMweb router: GET/HEAD read, POST upload, DELETE admin */
  dicomweb: RequestHandler;
  /** mount with the DICOMweb router under /share/:token{root}: read only, share links only */
  share: RequestHandler;
  /** tus and /api/transfers: upload (or admin) scope, plus the client certificate when required */
  transfers: RequestHandler;
  admin: RequestHandler;
  /** GET /metrics: metrics or admin scope */
  metrics: RequestHandler;
  /** reading routes outside DICOMweb (a study's documents): read scope */
  read: RequestHandler;
}

export interface GuardDeps {
  config: RelayConfig;
  log: Logger;
  tokens: TokenRegistry;
  audit: AuditTrail;
  revoked: RevocationList | null;
}

const SHARE_PATH = /^\/share\/([^/]*)(?:\/|$)/i;
const ANONYMOUS: Principal = { kind: "anonymous", tokenId: null, scopes: new Set(["read", "upload", "admin", "metrics"]), studies: null, viaSharePath: false };

const principalOf = (res: Response): Principal | undefined => res.locals.principal as Principal | undefined;
const noteOf = (res: Response): AuditNote => res.locals.auditNote as AuditNote;

/** query parameters that carry credentials, whatever their value looks like */
const CREDENTIAL_PARAM = /^(access_token|token|auth|authorization|key|api_key|apikey|secret|password|sig|signature)$/i;

/**
 * The request line as it may be logged or audited: share tokens in the path reduced to their id, credentials in
 * the query string (access_token and any token-like parameter or value) replaced.
 */
export function redactedUrl(url: string): string {
  const q = url.indexOf("?");
  const pathPart = (q < 0 ? url : url.slice(0, q)).replace(/^\/share\/([^/?]*)/i, (_all, t: string) => `/share/${redactToken(safeDecode(t))}`);
  if (q < 0) return pathPart;
  const query = url
    .slice(q + 1)
    .split("&")
    .map((pair) => {
      const eq = pair.indexOf("=");
      const name = safeDecode(eq < 0 ? pair : pair.slice(0, eq));
      const value = eq < 0 ? "" : safeDecode(pair.slice(eq + 1));
      if (CREDENTIAL_PARAM.test(name) || /dr[ts]_[0-9a-f]{16}_/i.test(value)) return `${pair.slice(0, eq < 0 ? pair.length : eq)}=[redacted]`;
      return pair;
    })
    .join("&");
  return `${pathPart}?${query}`;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Study/series/instance UIDs named by a DICOMweb path (relative to the root), for the audit row. */
function uidsOf(relPath: string): Pick<AuditNote, "studyInstanceUID" | "seriesInstanceUID" | "sopInstanceUID"> {
  const m = /^\/studies\/([^/]+)(?:\/series\/([^/]+)(?:\/instances\/([^/]+))?)?/i.exec(relPath);
  const clean = (v: string | undefined) => (v === undefined ? null : safeDecode(v).slice(0, 64));
  return { studyInstanceUID: clean(m?.[1]), seriesInstanceUID: clean(m?.[2]), sopInstanceUID: clean(m?.[3]) };
}

function dicomwebAction(method: string, relPath: string): string {
  if (method === "POST") return "dicomweb.stow";
  if (method === "DELETE") return "dicomweb.delete";
  return /\/(studies|series|instances)\/?$/i.test(relPath) ? "dicomweb.qido" : "dicomweb.wado";
}

export function accessGuards(deps: GuardDeps): AccessGuards {
  const { config, tokens, audit } = deps;
  const realm = config.auth.realm;

  const challenge = (error?: "invalid_token" | "insufficient_scope", description?: string, scope?: string, basic = false): Record<string, string | string[]> => {
    let v = `Bearer realm="${realm}"`;
    if (error) v += `, error="${error}"`;
    if (description) v += `, error_description="${description.replace(/["\\]/g, "'")}"`;
    if (scope) v += `, scope="${scope}"`;
    return { "WWW-Authenticate": basic ? [v, `Basic realm="${realm}", charset="UTF-8"`] : v };
  };

  const dicomwebRoot = config.dicomweb.root.toLowerCase();
  /**
   * Offer Basic on a 401 from the DICOMweb root, unless the caller sent a Bearer token (it knows the scheme) or is a
   * script in a browser page (Sec-Fetch-Dest: empty: the console and the viewer handle 401 themselves, and a Basic
   * challenge would make the browser pop up its own password dialog over them).
   */
  const offerBasic = (req: Request, presented: AuthScheme | null): boolean => {
    const p = req.path.toLowerCase();
    if (p !== dicomwebRoot && !p.startsWith(dicomwebRoot + "/")) return false;
    if (presented === "bearer") return false;
    return req.get("sec-fetch-dest")?.toLowerCase() !== "empty";
  };

  /** Refuse: the finish hook writes the audit row with this sentence. */
  const deny = (res: Response, next: NextFunction, status: number, message: string, headers: Record<string, string | string[]> = {}, action?: string) => {
    const note = noteOf(res);
    if (note) {
      if (action) note.action = action;
      note.detail = message;
    }
    next(new HttpError(status, message, headers));
  };

  const authenticate: RequestHandler = async (req, res, next) => {
    if ((req.method === "GET" || req.method === "HEAD") && req.path === RECEIPT_KEY_PATH) return next();
    const share = SHARE_PATH.exec(req.path);
    // share tokens ride in the URL, some clients put tokens in the query: keep them out of every log line and audit row
    req.originalUrl = redactedUrl(req.originalUrl);
    const cert = clientCertificate(req);
    const note: AuditNote = { actor: "unauthenticated", certSubject: cert?.subject ?? null, action: "request" };
    res.locals.auditNote = note;
    let written = false;
    const writeAudit = () => {
      if (written) return;
      written = true;
      const complete = res.writableFinished;
      audit.record({
        actor: note.actor,
        certSubject: note.certSubject,
        action: note.action,
        method: req.method,
        route: req.originalUrl,
        studyInstanceUID: note.studyInstanceUID ?? null,
        seriesInstanceUID: note.seriesInstanceUID ?? null,
        sopInstanceUID: note.sopInstanceUID ?? null,
        remoteAddr: req.socket.remoteAddress ?? null,
        outcome: complete && res.statusCode < 400 ? "success" : "failure",
        status: res.statusCode,
        detail: note.detail ?? (complete ? null : "the connection closed before the response was complete"),
      });
    };
    res.once("finish", writeAudit);
    res.once("close", writeAudit);

    let presented: string | null = null;
    let scheme: AuthScheme | null = null;
    if (share) {
      presented = safeDecode(share[1]!);
    } else if (!config.auth.enabled) {
      res.locals.principal = ANONYMOUS;
      note.actor = cert ? `cert:${cert.subject}` : "anonymous";
    } else {
      const credential = parseAuthorization(req.get("authorization"));
      if (!credential.ok) return deny(res, next, 401, credential.message, challenge(undefined, undefined, undefined, offerBasic(req, credential.scheme)), "auth");
      presented = credential.token;
      scheme = credential.scheme;
      if (scheme === "basic") note.detail = "Basic authentication";
    }
    if (presented !== null) {
      const check = await verifyToken(tokens, presented);
      if (!check.ok) {
        note.actor = check.tokenId ?? "unauthenticated";
        const what = share ? "share link" : "token";
        return deny(res, next, 401, `the ${what} was refused: ${check.message.replace(/^the token/, `the ${what}`)}`, challenge("invalid_token", check.message, undefined, !share && offerBasic(req, scheme)), "auth");
      }
      const t = check.token;
      note.actor = t.id;
      if (share && t.kind !== "share") {
        return deny(res, next, 401, "only share links can be used in /share/ URLs; send other tokens in the Authorization header (Bearer, or Basic with the token as the password)", challenge("invalid_token", "not a share link"), "auth");
      }
      res.locals.principal = {
        kind: t.kind,
        tokenId: t.id,
        scopes: new Set(t.scopes),
        studies: t.kind === "share" ? t.studies : null,
        viaSharePath: Boolean(share),
      } satisfies Principal;
    }
    const ctx = { actor: note.actor, certSubject: note.certSubject, remoteAddr: req.socket.remoteAddress ?? null, method: req.method, route: req.originalUrl };
    auditContext.run(ctx, () => next());
  };

  /** One scope (any of several), the client certificate for uploads, then the access scope for the routes. */
  const authorize = (req: Request, res: Response, next: NextFunction, needed: readonly Scope[], action: string) => {
    const p = principalOf(res);
    const note = noteOf(res);
    if (!note || !p) return next(new HttpError(500, "access control is not wired in front of this route"));
    note.action = action;
    if (p.kind === "share") {
      if (!needed.includes("read")) {
        return deny(res, next, 403, "a share link can only read its studies; it can never store or delete", challenge("insufficient_scope", "share links are read only", needed.join(" ")));
      }
    } else if (!needed.some((s) => p.scopes.has(s))) {
      return deny(res, next, 403, `this token lacks the ${needed.join(" or ")} scope needed for ${req.method} here`, challenge("insufficient_scope", `${needed.join(" or ")} scope needed`, needed.join(" ")));
    }
    if (needed.includes("upload") && deps.revoked) {
      const check = checkClientCertificate(req, deps.revoked);
      if (!check.ok) return deny(res, next, 403, check.message);
      note.certSubject = check.cert.subject;
      if (p.kind === "anonymous") note.actor = `cert:${check.cert.subject}`;
    }
    const access: AccessScope =
      p.kind === "anonymous"
        ? FULL_ACCESS
        : { allowedStudies: p.studies, canStore: p.kind === "token" && p.scopes.has("upload"), canDelete: p.kind === "token" && p.scopes.has("admin") };
    res.locals.access = access;
    const cert = note.certSubject ? `cert:${note.certSubject}` : null;
    res.locals.sender = (
      p.kind === "anonymous"
        ? { owner: cert ?? "anonymous", admin: cert === null }
        : { owner: p.tokenId ?? cert ?? "anonymous", admin: p.kind === "token" && p.scopes.has("admin") }
    ) satisfies Sender;
    next();
  };

  const dicomwebScope = (method: string): Scope => (method === "POST" ? "upload" : method === "DELETE" ? "admin" : "read");

  return {
    authenticate,
    dicomweb: (req, res, next) => {
      const p = principalOf(res);
      if (p?.viaSharePath) return deny(res, next, 404, `no route for ${req.method} ${req.path}`);
      Object.assign(noteOf(res) ?? {}, uidsOf(req.path));
      authorize(req, res, next, [dicomwebScope(req.method)], dicomwebAction(req.method, req.path));
    },
    share: (req, res, next) => {
      const p = principalOf(res);
      Object.assign(noteOf(res) ?? {}, uidsOf(req.path));
      if (!p?.viaSharePath || p.kind !== "share") return next(new HttpError(500, "share route reached without a share link"));
      const action = "share." + dicomwebAction(req.method, req.path).slice("dicomweb.".length);
      if (req.method !== "GET" && req.method !== "HEAD") {
        return deny(res, next, 403, "a share link can only read its studies; it can never store or delete", {}, action);
      }
      authorize(req, res, next, ["read"], action);
    },
    transfers: (req, res, next) => {
      const tus = req.baseUrl.toLowerCase() === config.transfers.tusPath.toLowerCase();
      const id = /^\/([^/]+)/.exec(req.path)?.[1];
      const note = noteOf(res);
      if (id && note) note.detail = `${tus ? "upload" : "transfer"} ${safeDecode(id).slice(0, 100)}`;
      authorize(req, res, next, ["upload", "admin"], tus ? "tus.upload" : "transfer");
    },
    read: (req, res, next) => {
      const study = /^\/api\/studies\/([^/]+)/i.exec(req.path)?.[1];
      const note = noteOf(res);
      if (note && study) note.studyInstanceUID = safeDecode(study).slice(0, 64);
      authorize(req, res, next, ["read"], "documents.read");
    },
    admin: (req, res, next) => {
      const current = noteOf(res)?.action;
      // transfers' admin routes (release) keep their transfer action
      authorize(req, res, next, ["admin"], current === "transfer" ? "transfer.admin" : "admin");
    },
    metrics: (req, res, next) => authorize(req, res, next, ["metrics", "admin"], "metrics"),
  };
}

/** Let a route say what its audit row should record (e.g. token.create and the new token's id). */
export function noteAudit(res: Response, what: { action?: string; detail?: string; addDetail?: string; studyInstanceUID?: string | null }): void {
  const note = res.locals.auditNote as AuditNote | undefined;
  if (!note) return;
  if (what.action) note.action = what.action;
  if (what.detail !== undefined) note.detail = what.detail;
  // added to what the row already says (e.g. "Basic authentication"), not instead of it
  if (what.addDetail) note.detail = note.detail ? `${note.detail}; ${what.addDetail}` : what.addDetail;
  if (what.studyInstanceUID !== undefined) note.studyInstanceUID = what.studyInstanceUID;
}

/** The authenticated caller, for routes that record who did something. */
export function actorOf(res: Response): string {
  return (res.locals.auditNote as AuditNote | undefined)?.actor ?? "unknown";
}

/** Who is calling and whether they may act on everyone's things (admin scope, or a relay without authentication). */
export function callerOf(res: Response): { actor: string; admin: boolean } {
  const p = principalOf(res);
  return { actor: actorOf(res), admin: !!p && p.kind !== "share" && p.scopes.has("admin") };
}
