/** Builds the express app from already-constructed services (plain constructor wiring). */
import express, { type Express } from "express";
import type { Logger } from "pino";
import type { RelayConfig } from "./config.ts";
import type { Index } from "./catalog/index.ts";
import type { BlobStore } from "./storage/blobStore.ts";
import type { Ingestor } from "./ingest/types.ts";
import { dicomwebRouter } from "./dicomweb/router.ts";
import type { Transfers } from "./transfers/index.ts";
import { errorHandler, HttpError } from "./http/errors.ts";

export interface RelayServices {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  ingest: Ingestor;
  /** tus uploads, manifests, receipts (absent in tools that only need storage and index) */
  transfers?: Transfers;
}

export function createApp(svc: RelayServices): Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("trust proxy", false);
  app.set("query parser", "simple");

  app.use((req, res, next) => {
    const started = process.hrtime.bigint();
    res.on("finish", () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      svc.log.debug({ method: req.method, url: req.originalUrl, status: res.statusCode, ms: Math.round(ms * 10) / 10 }, "request");
    });
    next();
  });

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

  app.use(svc.config.dicomweb.root, dicomwebRouter(svc));
  if (svc.transfers) app.use(svc.transfers.router());

  app.use((req, _res, next) => next(new HttpError(404, `no route for ${req.method} ${req.path}`)));
  app.use(errorHandler(svc.log));
  return app;
}
