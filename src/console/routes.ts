/**
 * The web console: static pages (no data in them, open without a token) and two small JSON routes the pages need:
 *   GET  /api/session        who the presented token is (validates a sign-in; any valid token)
 *   POST /api/viewer-links   a short-lived share link that opens one study in the viewer (read scope)
 * Everything the console shows comes from the relay's own protected routes (DICOMweb, transfers, admin, documents).
 */
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import express, { Router, type RequestHandler, type Response } from "express";
import type { RelayConfig } from "../config.ts";
import type { AccessControl } from "../access/index.ts";
import type { Index } from "../catalog/index.ts";
import { actorOf, noteAudit, type Principal } from "../access/middleware.ts";
import { checkShareQuota, expiryFrom, ShareQuotaError } from "../access/tokens.ts";
import { isValidUid } from "../dicom/uids.ts";
import { HttpError } from "../http/errors.ts";

const PUBLIC_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), "public");

/** tus-js-client's browser build, served from the installed package (same client the CLI and tests use). */
function tusBrowserBuild(): string {
  const require = createRequire(import.meta.url);
  return path.join(path.dirname(require.resolve("tus-js-client/package.json")), "dist", "tus.min.js");
}

// the console needs nothing from elsewhere: scripts, styles and requests stay on this origin
const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

/**
 * GET /favicon.ico, open: browsers ask for it on every page that names no icon (the viewer's share pages, error
 * pages); without it each visit would leave a 401 in the log and the audit trail.
 */
export function faviconRouter(): Router {
  const r = Router();
  r.get("/favicon.ico", (_req, res) => {
    res.set("Cache-Control", "public, max-age=86400").type("image/svg+xml").sendFile(path.join(PUBLIC_DIR, "favicon.svg"));
  });
  return r;
}

/** Static console pages under console.path. */
export function consoleRouter(config: RelayConfig): Router {
  const r = Router();
  const tusFile = tusBrowserBuild();
  r.use((req, res, next) => {
    res.set({ "Content-Security-Policy": CONSOLE_CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache" });
    // /console -> /console/ so the pages' relative links resolve
    if (req.path === "/" && !req.originalUrl.split("?")[0]!.endsWith("/")) return res.redirect(301, config.console.path + "/");
    next();
  });
  r.get("/vendor/tus.min.js", (_req, res, next) => {
    if (!fs.existsSync(tusFile)) return next(new HttpError(503, "tus-js-client is not installed next to the relay (npm ci)"));
    res.type("application/javascript").sendFile(tusFile);
  });
  // what the page needs before sign-in; nothing secret
  r.get("/settings.json", (_req, res) => {
    res.json({ authEnabled: config.auth.enabled });
  });
  r.use(express.static(PUBLIC_DIR, { index: "index.html", dotfiles: "ignore" }));
  return r;
}

const principalOf = (res: Response): Principal | undefined => res.locals.principal as Principal | undefined;

/** Read (or admin) scope, for routes outside the DICOMweb root. */
function readGuard(): RequestHandler {
  return (_req, res, next) => {
    const p = principalOf(res);
    if (!p) return next(new HttpError(500, "access control is not wired in front of this route"));
    if (p.kind === "share" || !(p.scopes.has("read") || p.scopes.has("admin"))) {
      return next(new HttpError(403, "this token lacks the read scope needed to open studies in the viewer", { "WWW-Authenticate": 'Bearer error="insufficient_scope", scope="read"' }));
    }
    next();
  };
}

/** /api/session and /api/viewer-links, mounted after authentication. */
export function consoleApiRouter(deps: { config: RelayConfig; access: AccessControl; index: Index }): Router {
  const { config, access, index } = deps;
  const r = Router();
  r.use("/api/session", (_req, res, next) => {
    res.set("Cache-Control", "no-store");
    next();
  });
  r.get("/api/session", async (_req, res) => {
    const p = principalOf(res);
    if (!p) throw new HttpError(500, "access control is not wired in front of this route");
    noteAudit(res, { action: "session" });
    const info = p.tokenId ? await access.tokens.get(p.tokenId) : null;
    res.json({
      kind: p.kind,
      tokenId: p.tokenId,
      scopes: [...p.scopes].sort(),
      label: info?.label ?? null,
      expiresAt: info?.expiresAt ?? null,
      authEnabled: config.auth.enabled,
      dicomwebRoot: config.dicomweb.root,
      tusPath: config.transfers.tusPath,
    });
  });
  r.post("/api/viewer-links", readGuard(), express.json({ limit: "16kb" }), async (req, res) => {
    res.set("Cache-Control", "no-store");
    noteAudit(res, { action: "viewer.link" });
    if (!req.is("application/json")) throw new HttpError(415, 'send application/json, e.g. {"studyInstanceUID": "1.2.3"}');
    const study = (req.body as { studyInstanceUID?: unknown } | undefined)?.studyInstanceUID;
    if (typeof study !== "string" || !isValidUid(study)) throw new HttpError(400, "studyInstanceUID must be a DICOM UID (digits and dots)");
    noteAudit(res, { studyInstanceUID: study });
    if (!(await studyExists(index, study))) throw new HttpError(404, `no study ${study} on this relay`);
    try {
      await checkShareQuota(access.tokens, actorOf(res), config.auth.maxShareLinksPerToken);
    } catch (err) {
      if (err instanceof ShareQuotaError) throw new HttpError(429, err.message);
      throw err;
    }
    const created = await access.tokens.createShare({
      studies: [study],
      label: `viewer link (console) for ${actorOf(res)}`,
      expiresAt: expiryFrom(config.viewer.linkExpiry),
      createdBy: actorOf(res),
    });
    noteAudit(res, { detail: `created viewer share link ${created.info.id} expires ${created.info.expiresAt}` });
    res.status(201).json({
      shareId: created.info.id,
      expiresAt: created.info.expiresAt,
      url: `/share/${created.token}/viewer?StudyInstanceUIDs=${encodeURIComponent(study)}`,
    });
  });
  return r;
}

async function studyExists(index: Index, study: string): Promise<boolean> {
  return (await index.listInstances({ studyInstanceUID: study })).length > 0;
}
