/** Builds the express app from already-constructed services (plain constructor wiring). */
import express, { type Express } from "express";
import type { Logger } from "pino";
import { spoolDir, type RelayConfig } from "./config.ts";
import type { Index } from "./catalog/index.ts";
import type { BlobStore } from "./storage/blobStore.ts";
import type { Ingestor } from "./ingest/types.ts";
import { dicomwebRouter } from "./dicomweb/router.ts";
import type { Transfers } from "./transfers/index.ts";
import { errorHandler, HttpError } from "./http/errors.ts";
import type { AccessControl } from "./access/index.ts";
import { noteAudit } from "./access/middleware.ts";
import { VERSION } from "./version.ts";
import { documentsRouter } from "./documents/routes.ts";
import type { ForwardingService } from "./forwarding/service.ts";
import { forwardingRouter } from "./forwarding/routes.ts";
import { consoleApiRouter, consoleRouter, faviconRouter } from "./console/routes.ts";
import { shareViewerRouter, viewerAssetsRouter } from "./console/viewer.ts";
import type { RelayMetrics } from "./metrics/metrics.ts";
import { httpMetrics, metricsHandler } from "./metrics/http.ts";
import type { DeidentifyService } from "./deidentify/service.ts";
import { deidentifyRouter } from "./deidentify/routes.ts";
import type { RetentionService } from "./retention/service.ts";
import { retentionRouter } from "./retention/routes.ts";
import { UPLOADS_PER_TOKEN_HEADER, bodyIdleTimeout, chain, closeUnreadBodies, declaresBody, UploadSlots } from "./http/uploadLimits.ts";
import { CLIENT_UPLOAD_ID_OFFER } from "./transfers/uploadIds.ts";
import { actorOf } from "./access/middleware.ts";
import { shareUrlAudit } from "./access/shareAudit.ts";

export interface RelayServices {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  ingest: Ingestor;
  /** tus uploads, manifests, receipts (absent in tools that only need storage and index) */
  transfers?: Transfers;
  /** tokens, share links, audit, client certificates; required unless auth.enabled is false */
  access?: AccessControl;
  /** auto-forwarding of completed transfers */
  forwarding?: ForwardingService;
  /** Prometheus counters (GET /metrics) */
  metrics?: RelayMetrics;
  /** de-identified copies of studies (second opinions) */
  deidentify?: DeidentifyService;
  /** delivery tracking and deletion after delivery */
  retention?: RetentionService;
}

export function createApp(svc: RelayServices): Express {
  const app = express();
  app.disable("x-powered-by");
  // which relay answers: the uploader compares it with the relay versions it speaks to (docs/push.md)
  app.use((_req, res, next) => {
    res.set("X-Dicom-Relay-Version", VERSION);
    next();
  });
  app.set("trust proxy", false);
  app.set("query parser", "simple");
  app.use(bodyIdleTimeout(svc.config.server.bodyIdleTimeoutSeconds, svc.log));
  app.use(closeUnreadBodies);
  const slots = new UploadSlots({
    total: svc.config.server.maxConcurrentUploads,
    perSender: svc.config.server.maxConcurrentUploadsPerToken,
    retryAfterSeconds: Math.max(1, Math.ceil(svc.config.server.bodyIdleTimeoutSeconds)),
  });
  const senderOf = (res: Parameters<typeof actorOf>[0]) => actorOf(res);
  const stowSlot = slots.guard((req) => req.method === "POST", senderOf);
  const tusPath = svc.config.transfers.tusPath.toLowerCase();
  const uploadSlot = slots.guard(
    (req) => req.baseUrl.toLowerCase() === tusPath && (req.method === "PATCH" || (req.method === "POST" && declaresBody(req))),
    senderOf,
  );
  const documentSlot = slots.guard((req) => req.method === "POST", senderOf);
  // how many uploads one token may run at once: the uploader opens no more connections than that (docs/push.md)
  app.use(svc.config.transfers.tusPath, (_req, res, next) => {
    res.set(UPLOADS_PER_TOKEN_HEADER, String(svc.config.server.maxConcurrentUploadsPerToken));
    res.set(CLIENT_UPLOAD_ID_OFFER, "1");
    next();
  });

  app.use((req, res, next) => {
    const started = process.hrtime.bigint();
    res.on("finish", () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      svc.log.debug({ method: req.method, url: req.originalUrl, status: res.statusCode, ms: Math.round(ms * 10) / 10 }, "request");
    });
    next();
  });
  if (svc.metrics) {
    const c = svc.config;
    app.use(httpMetrics(svc.metrics, { dicomwebRoot: c.dicomweb.root, tusPath: c.transfers.tusPath, consolePath: c.console.path, viewerAssetsPath: c.viewer.assetsPath }));
  }

  app.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });
  app.get("/readyz", async (_req, res) => {
    const checks: Record<string, string> = {};
    let ready = true;
    for (const [name, probe] of [["index", () => svc.index.ping()], ["storage", () => svc.store.ping()]] as const) {
      try {
        await probe();
        checks[name] = "ok";
      } catch (err) {
        ready = false;
        checks[name] = (err as Error).message;
      }
    }
    if (!ready) res.set("Retry-After", "10");
    res.status(ready ? 200 : 503).json({ status: ready ? "ready" : "not ready", checks });
  });

  // the console's pages and OHIF's files hold no data: open without a token; what they show comes from guarded routes
  if (svc.config.console.enabled) {
    app.use(svc.config.console.path, consoleRouter(svc.config));
    app.get("/", (_req, res) => res.redirect(302, svc.config.console.path + "/"));
  }
  app.use(faviconRouter());
  app.use(svc.config.viewer.assetsPath, viewerAssetsRouter(svc.config));
  // a share link's viewer page checks the link itself and answers a person with a page, not JSON
  // a /share URL that cannot be decoded is refused (and audited) before routing would refuse it unrecorded
  if (svc.access) app.use("/share", shareUrlAudit(svc.access.audit));
  if (svc.access) app.use("/share/:token", shareViewerRouter({ config: svc.config, access: svc.access }));

  // access control: everything below needs a valid token (or share link), except the receipt public key
  const access = svc.access;
  if (!access && svc.config.auth.enabled) throw new Error("createApp: access control services are missing while auth.enabled is true");
  if (access) app.use(access.guards.authenticate);
  // operational counters only, no patient data: the metrics (or admin) scope; metrics.port serves them without a token
  if (svc.metrics && svc.config.metrics.enabled) app.get("/metrics", ...(access ? [access.guards.metrics] : []), metricsHandler(svc.metrics));
  const dicomweb = dicomwebRouter(svc);
  app.use(svc.config.dicomweb.root, ...(access ? [access.guards.dicomweb] : []), stowSlot, dicomweb);
  if (access) {
    app.use(`/share/:token${svc.config.dicomweb.root}`, access.guards.share, dicomweb);
    // anything else under /share: a plain 404 whose sentence does not repeat the token
    app.use("/share", (req, _res, next) => next(new HttpError(404, `no route for ${req.method} under this share link`)));
    app.use("/api/admin", access.guards.admin, access.adminRouter());
    app.use(consoleApiRouter({ config: svc.config, access, index: svc.index }));
  }
  if (svc.deidentify && access) app.use(deidentifyRouter({ config: svc.config, service: svc.deidentify, tokens: access.tokens, admin: access.guards.admin }));
  if (svc.retention && access) app.use(retentionRouter({ service: svc.retention, admin: access.guards.admin }));
  if (svc.forwarding) app.use("/api/forwarding", ...(access ? [access.guards.admin] : []), forwardingRouter(svc.forwarding));
  // documents need upload scope (the transfers guard: upload or admin, plus the client certificate when required)
  app.use(documentsRouter({ index: svc.index, ingest: svc.ingest, tmpDir: spoolDir(svc.config), maxDocumentBytes: svc.config.ingest.maxDocumentBytes }, access ? { write: chain(access.guards.transfers, documentSlot), read: access.guards.read } : { write: documentSlot }));
  if (svc.transfers) app.use(svc.transfers.router(access ? { access: chain(access.guards.transfers, uploadSlot), admin: access.guards.admin, audit: (res, action) => noteAudit(res, { action }) } : { access: uploadSlot }));

  app.use((req, _res, next) => next(new HttpError(404, `no route for ${req.method} ${req.path}`)));
  app.use(errorHandler(svc.log, svc.metrics));
  return app;
}
