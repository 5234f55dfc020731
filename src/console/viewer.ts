/**
 * The OHIF viewer, served by the relay itself:
 *   {viewer.assetsPath}/...            OHIF's static build (no patient data: open without a token)
 *   /share/{link}/viewer[?StudyInstanceUIDs=...]   OHIF's page for one share link (the link is checked and audited)
 *   /share/{link}/app-config.js        OHIF's configuration: the link's study-scoped DICOMweb root
 * Without an installed build every viewer route answers 503 with how to install it.
 */
import fs from "node:fs";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import express, { Router, type Request, type Response } from "express";
import type { RelayConfig } from "../config.ts";
import type { AccessControl } from "../access/index.ts";
import { redactedUrl } from "../access/middleware.ts";
import { verifyToken } from "../access/tokens.ts";
import { ohifAppConfigScript, publicPathPatch, replaceStream, rewriteOhifIndex, OhifBuildError } from "./ohif.ts";

const NOT_INSTALLED = (dir: string) =>
  `The viewer (OHIF) is not installed on this relay: no OHIF build in ${dir}. ` +
  "An operator installs it with scripts/install-ohif.sh, or sets viewer.ohifDir to a folder holding OHIF's dist/ build (see docs/viewer.md).";

export function page(title: string, sentence: string): string {
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">` +
    `<meta name="referrer" content="no-referrer"><link rel="icon" href="/favicon.ico"><title>${esc(title)}</title>` +
    `<style>body{font:18px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1b1b1b}h1{font-size:1.5rem}</style>` +
    `</head><body><main><h1>${esc(title)}</h1><p>${esc(sentence)}</p></main></body></html>`;
}

/** OHIF's build folder, when it looks complete. */
function installed(dir: string): boolean {
  return fs.existsSync(path.join(dir, "index.html")) && fs.existsSync(path.join(dir, "app-config.js"));
}

/** Static OHIF files under viewer.assetsPath; scripts and styles have their root paths rewritten as they stream. */
export function viewerAssetsRouter(config: RelayConfig): Router {
  const dir = config.viewer.ohifDir;
  const r = Router();
  r.use((req, res, next) => {
    if (!installed(dir)) {
      res.status(503).set("Retry-After", "3600").type("html").send(page("Viewer not installed", NOT_INSTALLED(dir)));
      return;
    }
    res.set("X-Content-Type-Options", "nosniff");
    next();
  });
  // OHIF's own index.html is only useful through a share link: say so instead of opening an empty viewer
  r.get(["/", "/index.html"], (_req, res) => {
    res.type("html").send(page("Viewer", "Studies open in the viewer from a share link, or from the console's study list with \u201copen in viewer\u201d."));
  });
  r.get(["/app-config.js", "/sw.js", "/init-service-worker.js"], (_req, res) => {
    res.status(404).type("text/plain").send("not served: the viewer's configuration comes with each share link");
  });
  r.get(/\.(js|css)$/, async (req, res, next) => {
    let rel: string;
    try {
      rel = decodeURIComponent(req.path);
    } catch {
      return next();
    }
    const file = path.resolve(dir, "." + rel);
    if (!file.startsWith(dir + path.sep)) return next();
    let stat: fs.Stats;
    try {
      stat = await fs.promises.stat(file);
    } catch {
      return next();
    }
    if (!stat.isFile()) return next();
    const patch = publicPathPatch(config.viewer.assetsPath, file)!;
    res.type(file.endsWith(".css") ? "text/css" : "application/javascript").set("Cache-Control", "public, max-age=86400");
    if (req.method === "HEAD") return res.end();
    try {
      await pipeline(fs.createReadStream(file), replaceStream(patch.from, patch.to), res);
    } catch (err) {
      if (!res.headersSent) next(err);
      else res.destroy();
    }
  });
  r.use(express.static(dir, { index: false, fallthrough: true, maxAge: "1d", dotfiles: "ignore" }));
  r.use((req, res) => {
    res.status(404).type("text/plain").send(`no viewer file ${req.path}`);
  });
  return r;
}

/** OHIF pages of a share link, mounted at /share/:token before authentication (it checks the link itself). */
export function shareViewerRouter(deps: { config: RelayConfig; access: AccessControl }): Router {
  const { config, access } = deps;
  const dir = config.viewer.ohifDir;
  const r = Router({ mergeParams: true });
  const assetsPath = config.viewer.assetsPath + "/";
  let cachedIndex: { mtimeMs: number; html: string } | null = null;

  const readIndex = async (): Promise<string> => {
    const file = path.join(dir, "index.html");
    const stat = await fs.promises.stat(file);
    if (!cachedIndex || cachedIndex.mtimeMs !== stat.mtimeMs) cachedIndex = { mtimeMs: stat.mtimeMs, html: await fs.promises.readFile(file, "utf8") };
    return cachedIndex.html;
  };

  /** Checks the link and writes the audit row; answers the refusal itself (a page a person reads). */
  const checkLink = async (req: Request, res: Response, action: string): Promise<{ token: string; studies: string[] } | null> => {
    const token = String(req.params.token);
    req.originalUrl = redactedUrl(req.originalUrl);
    const check = await verifyToken(access.tokens, token);
    const ok = check.ok && check.token.kind === "share";
    access.audit.record({
      actor: check.ok ? check.token.id : (check.tokenId ?? "unauthenticated"),
      action,
      method: req.method,
      route: req.originalUrl,
      studyInstanceUID: ok && check.token.studies.length === 1 ? check.token.studies[0] : null,
      remoteAddr: req.socket.remoteAddress ?? null,
      outcome: ok ? "success" : "failure",
      status: ok ? 200 : 401,
      detail: ok ? null : check.ok ? "not a share link" : check.message,
    });
    if (ok) return { token, studies: check.token.studies };
    const why = !check.ok && check.reason === "expired" ? "This share link has expired."
      : !check.ok && check.reason === "revoked" ? "This share link was withdrawn by the relay's administrator."
      : "This link is not a valid share link for this relay.";
    res.status(401).set("Cache-Control", "no-store").type("html").send(page("Share link not usable", `${why} Ask the person who sent it to you for a new link.`));
    return null;
  };

  const ready = (res: Response): boolean => {
    if (installed(dir)) return true;
    res.status(503).set("Retry-After", "3600").type("html").send(page("Viewer not installed", NOT_INSTALLED(dir)));
    return false;
  };

  r.get("/", (req, res) => {
    res.redirect(302, `${req.baseUrl}/viewer`);
  });
  r.get(["/viewer", "/viewer/*rest"], async (req, res, next) => {
    if (!ready(res)) return;
    const link = await checkLink(req, res, "share.viewer");
    if (!link) return;
    if (req.path === "/viewer" && typeof req.query.StudyInstanceUIDs !== "string") {
      return res.redirect(302, `${req.baseUrl}/viewer?StudyInstanceUIDs=${link.studies.map(encodeURIComponent).join(",")}`);
    }
    try {
      const html = rewriteOhifIndex(await readIndex(), { assetsPath, configSrc: `/share/${encodeURIComponent(link.token)}/app-config.js` });
      res.set({ "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff" }).type("html").send(html);
    } catch (err) {
      if (err instanceof OhifBuildError) {
        res.status(503).type("html").send(page("Viewer not usable", err.message));
        return;
      }
      next(err);
    }
  });
  r.get("/app-config.js", async (req, res) => {
    if (!ready(res)) return;
    const link = await checkLink(req, res, "share.viewer-config");
    if (!link) return;
    const base = `/share/${encodeURIComponent(link.token)}`;
    res.set({ "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff" }).type("application/javascript")
      .send(ohifAppConfigScript({ routerBasename: base, dicomwebPath: base + config.dicomweb.root }));
  });
  return r;
}
