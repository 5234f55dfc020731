/**
 * HTTP edge of transfers: the tus endpoint, the transfer JSON API (docs/openapi.yaml) and the receipt key.
 * Access control plugs in as one middleware per audience (sender / admin) once it exists; today routes are open
 * like the DICOMweb ones.
 */
import express, { Router, type RequestHandler, type Response } from "express";
import type { Server } from "@tus/server";
import type { RelayConfig } from "../config.ts";
import { HttpError, RETRY_AFTER_SECONDS } from "../http/errors.ts";
import { ManifestError } from "./manifest.ts";
import { TransferNotFoundError, TransferStateError, type TransferService } from "./transferService.ts";
import type { ItemState, TransferState } from "./transferStore.ts";

export const RECEIPT_KEY_PATH = "/.well-known/dicom-relay/receipt-key";

export interface TransferRoutesOptions {
  /** runs before every sender route (tus, transfers, receipts) */
  access?: RequestHandler;
  /** runs before admin routes (release) */
  admin?: RequestHandler;
  /** the caller (token id) and whether it sees every transfer; without access control: anonymous admin */
  caller?: (res: Response) => { actor: string; admin: boolean };
  /** names the audit row of a request (transfer.list, transfer.cancel) */
  audit?: (res: Response, action: string) => void;
}

const pass: RequestHandler = (_req, _res, next) => next();
const INSTANCE_FILTERS = new Set(["all", "none", "present", "received", "missing", "failed"]);
const TRANSFER_STATES = new Set<TransferState>(["open", "complete", "released", "cancelled"]);
const anonymousAdmin = () => ({ actor: "anonymous", admin: true });

/** The service's refusals as HTTP answers. */
function stateErrors(err: unknown): never {
  if (err instanceof TransferNotFoundError) throw new HttpError(404, err.message);
  if (err instanceof TransferStateError) throw new HttpError(409, err.message);
  throw err;
}

export function transfersRouter(
  deps: { config: RelayConfig; service: TransferService; tus: Server },
  opts: TransferRoutesOptions = {},
): Router {
  const { config, service, tus } = deps;
  const access = opts.access ?? pass;
  const admin = opts.admin ?? pass;
  const caller = opts.caller ?? anonymousAdmin;
  const audit = opts.audit ?? (() => {});
  const tusPath = config.transfers.tusPath;
  const r = Router();

  // public on purpose: anyone holding a receipt must be able to check it
  r.get(RECEIPT_KEY_PATH, (_req, res) => {
    res.set("Cache-Control", "public, max-age=3600").json(service.signer.publishedKey());
  });

  const api = Router();
  api.use(["/api/transfers", tusPath], access, (_req, res, next) => {
    res.set("Cache-Control", "no-store");
    next();
  });
  // a manifest line is ~250 bytes of JSON; leave room for whitespace
  const limitMb = Math.max(1, Math.ceil((config.transfers.maxManifestInstances * 400) / (1024 * 1024)));
  api.post("/api/transfers", express.json({ limit: `${limitMb}mb`, type: ["application/json", "application/*+json"] }), async (req, res) => {
    if (!req.is("application/json") && !req.is("application/*+json")) {
      throw new HttpError(415, "send the manifest as application/json");
    }
    try {
      const view = await service.createTransfer(req.body, caller(res).actor);
      res.status(201).location(`/api/transfers/${view.id}`).json(view);
    } catch (err) {
      if (err instanceof ManifestError) throw new HttpError(400, err.message);
      throw err;
    }
  });
  // admin: every transfer (or ?mine=true); uploaders: the ones their token created
  api.get("/api/transfers", async (req, res) => {
    const who = caller(res);
    const state = typeof req.query.state === "string" && req.query.state ? req.query.state : undefined;
    if (state && !TRANSFER_STATES.has(state as TransferState)) throw new HttpError(400, `state must be one of ${[...TRANSFER_STATES].join(", ")}`);
    const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new HttpError(400, "limit must be a whole number from 1 to 1000");
    const mine = !who.admin || req.query.mine === "true";
    audit(res, "transfer.list");
    const transfers = await service.list({ createdBy: mine ? who.actor : undefined, state: state as TransferState | undefined, limit });
    res.json({ transfers, scope: mine ? "mine" : "all" });
  });
  api.post("/api/transfers/:id/cancel", async (req, res) => {
    const who = caller(res);
    const t = await service.view(String(req.params.id), { instances: "none" });
    if (!t) throw new HttpError(404, `no transfer with id ${req.params.id}`);
    audit(res, "transfer.cancel");
    if (!who.admin && t.createdBy !== who.actor) throw new HttpError(403, "only the token that created this transfer, or an admin, may cancel it");
    res.json(await service.cancel(t.id).catch(stateErrors));
  });
  api.get("/api/transfers/:id", async (req, res) => {
    const filter = typeof req.query.instances === "string" ? req.query.instances : "all";
    if (!INSTANCE_FILTERS.has(filter)) {
      throw new HttpError(400, `instances must be one of ${[...INSTANCE_FILTERS].join(", ")}`);
    }
    const view = await service.view(req.params.id!, { instances: filter as ItemState | "all" | "none" });
    if (!view) throw new HttpError(404, `no transfer with id ${req.params.id}`);
    res.json(view);
  });
  api.get("/api/transfers/:id/receipt", async (req, res) => {
    const found = await service.receipt(String(req.params.id));
    if (!found) throw new HttpError(404, `no transfer with id ${req.params.id}`);
    const { transfer, receipt } = found;
    if (!receipt) {
      throw new HttpError(409, `transfer ${transfer.id} is not complete (${transfer.missing} missing, ${transfer.failed} failed); the receipt is issued when every instance is there`);
    }
    res.json({ ...receipt, keyUrl: RECEIPT_KEY_PATH });
  });
  api.post("/api/transfers/:id/release", admin, async (req, res) => {
    res.json(await service.release(String(req.params.id)).catch(stateErrors));
  });
  // the upload URL doubles as the place to read its result (tus itself needs no GET)
  api.get(`${tusPath}/:id`, async (req, res, next) => {
    // express answers HEAD with GET routes; HEAD here is the tus offset request
    if (req.method === "HEAD") return next();
    const id = String(req.params.id);
    const result = await service.uploadResult(id);
    if (!result) throw new HttpError(404, `no finished upload with id ${id} (unfinished uploads have no result yet; results are kept ${config.transfers.expirationSeconds} s)`);
    res.json(result);
  });
  api.all([tusPath, `${tusPath}/:id`], (req, res, next) => {
    // @tus/server answers storage outages 503 (s3UploadStore.ts) but sets no Retry-After: tell clients when to retry
    const writeHead = res.writeHead;
    res.writeHead = function (this: typeof res, status: number, ...rest: unknown[]) {
      if (status === 503 && !this.hasHeader("retry-after")) this.setHeader("Retry-After", RETRY_AFTER_SECONDS);
      return (writeHead as (...a: unknown[]) => typeof res).call(this, status, ...rest);
    } as typeof res.writeHead;
    tus.handle(req, res).catch(next);
  });

  r.use(api);
  return r;
}
