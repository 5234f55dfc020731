/**
 * HTTP edge of transfers: the tus endpoint, the transfer JSON API (docs/openapi.yaml) and the receipt key.
 * Access control plugs in as one middleware per audience (sender / admin) once it exists; today routes are open
 * like the DICOMweb ones.
 */
import express, { Router, type RequestHandler, type Response } from "express";
import compression from "compression";
import { Metadata, type Server } from "@tus/server";
import type { RelayConfig } from "../config.ts";
import { HttpError, RETRY_AFTER_SECONDS } from "../http/errors.ts";
import { ManifestError } from "./manifest.ts";
import { TransferNotFoundError, TransferStateError, type TransferService } from "./transferService.ts";
import type { ItemState, TransferState } from "./transferStore.ts";
import { ownedBy, senderOf, type Sender } from "../access/sender.ts";
import { ADMIN_HEADER, OWNER_HEADER, PARTIAL_UPLOAD, acceptsGzip, uploadOwnedBy, type PartialUploadMark } from "./tusServer.ts";
import { ConcatError, RESERVED_METADATA_KEYS, parseUploadConcat, publicMetadata, uploadConcatHeader } from "./concat.ts";

/** tus upload ids are what the stores generate: letters, digits, '-' and '_' (never a dot or a slash) */
const UPLOAD_ID = /^[A-Za-z0-9_-]{1,128}$/;

/** POST /api/transfers with this header set to 1: only the token's right to create transfers is checked (204) */
export const PROBE_HEADER = "X-Dicom-Relay-Probe";

import { RECEIPT_KEY_PATH } from "./receipts.ts";
export { RECEIPT_KEY_PATH };

export interface TransferRoutesOptions {
  /** runs before every sender route (tus, transfers, receipts) */
  access?: RequestHandler;
  /** runs before admin routes (release) */
  admin?: RequestHandler;
  /** names the audit row of a request (transfer.list, transfer.cancel) */
  audit?: (res: Response, action: string) => void;
}

const pass: RequestHandler = (_req, _res, next) => next();
const INSTANCE_FILTERS = new Set(["all", "none", "present", "received", "missing", "failed"]);
const TRANSFER_STATES = new Set<TransferState>(["open", "complete", "released", "cancelled"]);

/** The service's refusals as HTTP answers. */
function stateErrors(err: unknown): never {
  if (err instanceof TransferNotFoundError) throw new HttpError(404, err.message);
  if (err instanceof TransferStateError) throw new HttpError(409, err.message);
  throw err;
}

/** Replace a request header (any client-sent value goes): @tus/server reads rawHeaders, express headers. */
function setInternalHeader(req: express.Request, name: string, value: string): void {
  const raw: string[] = [];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]!.toLowerCase() !== name) raw.push(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
  }
  raw.push(name, value);
  req.rawHeaders.length = 0;
  req.rawHeaders.push(...raw);
  req.headers[name] = value;
}

export function transfersRouter(
  deps: { config: RelayConfig; service: TransferService; tus: Server },
  opts: TransferRoutesOptions = {},
): Router {
  const { config, service, tus } = deps;
  const access = opts.access ?? pass;
  const admin = opts.admin ?? pass;
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
  // the transfer views and receipts list every instance (a 6,000-instance transfer: 2.4 MB of JSON, seconds on one
  // flow of a lossy link); gzip makes them about a tenth when the client accepts it. The tus answers too: the one that
  // completes a transfer carries its receipt (~470 bytes per instance). Not DICOMweb (multipart bodies are already
  // the images' bytes)
  api.use(["/api/transfers", tusPath], compression({ threshold: 8 * 1024 }));
  // a manifest line is ~250 bytes of JSON; leave room for whitespace
  const limitMb = Math.max(1, Math.ceil((config.transfers.maxManifestInstances * 400) / (1024 * 1024)));
  api.post("/api/transfers", express.json({ limit: `${limitMb}mb`, type: ["application/json", "application/*+json"] }), async (req, res) => {
    // the uploader's check before it reads a folder: may this token create transfers? The access check above has
    // answered 401/403 already; nothing is created, nothing logged as a failure (it was an empty manifest's 400)
    if (req.get(PROBE_HEADER) === "1") {
      res.status(204).end();
      return;
    }
    if (!req.is("application/json") && !req.is("application/*+json")) {
      throw new HttpError(415, "send the manifest as application/json");
    }
    try {
      const view = await service.createTransfer(req.body, senderOf(res).owner);
      res.status(201).location(`/api/transfers/${view.id}`).json(view);
    } catch (err) {
      if (err instanceof ManifestError) throw new HttpError(400, err.message);
      throw err;
    }
  });
  /** The transfer if this sender may see it; another sender's is answered like one that does not exist. */
  const ownTransfer = async (sender: Sender, id: string) => {
    const t = await service.transferRecord(id);
    if (!t || !ownedBy(sender, t.createdBy)) throw new HttpError(404, `no transfer with id ${id}`);
    return t;
  };
  // admin: every transfer (or ?mine=true); uploaders: the ones their token created
  api.get("/api/transfers", async (req, res) => {
    const who = senderOf(res);
    const state = typeof req.query.state === "string" && req.query.state ? req.query.state : undefined;
    if (state && !TRANSFER_STATES.has(state as TransferState)) throw new HttpError(400, `state must be one of ${[...TRANSFER_STATES].join(", ")}`);
    const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new HttpError(400, "limit must be a whole number from 1 to 1000");
    const mine = !who.admin || req.query.mine === "true";
    audit(res, "transfer.list");
    const transfers = await service.list({ createdBy: mine ? who.owner : undefined, state: state as TransferState | undefined, limit });
    res.json({ transfers, scope: mine ? "mine" : "all" });
  });
  api.post("/api/transfers/:id/cancel", async (req, res) => {
    // another sender's transfer is answered like one that does not exist
    const t = await ownTransfer(senderOf(res), String(req.params.id));
    audit(res, "transfer.cancel");
    res.json(await service.cancel(t.id).catch(stateErrors));
  });
  api.get("/api/transfers/:id", async (req, res) => {
    const filter = typeof req.query.instances === "string" ? req.query.instances : "all";
    if (!INSTANCE_FILTERS.has(filter)) {
      throw new HttpError(400, `instances must be one of ${[...INSTANCE_FILTERS].join(", ")}`);
    }
    await ownTransfer(senderOf(res), String(req.params.id));
    const view = await service.view(req.params.id!, { instances: filter as ItemState | "all" | "none" });
    if (!view) throw new HttpError(404, `no transfer with id ${req.params.id}`);
    res.json(view);
  });
  api.get("/api/transfers/:id/receipt", async (req, res) => {
    await ownTransfer(senderOf(res), String(req.params.id));
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
    const result = UPLOAD_ID.test(id) ? await service.uploadResult(id) : null;
    // the result is its upload's: another sender's answers like one that does not exist
    if (!result || !uploadOwnedBy(senderOf(res), { metadata: { relayOwner: result.owner ?? null } })) throw new HttpError(404, `no finished upload with id ${id} (unfinished uploads have no result yet; results are kept ${config.transfers.expirationSeconds} s)`);
    res.json(await service.answerFor(result, { acceptsGzip: acceptsGzip(req.get("accept-encoding")) }));
  });
  // every tus request naming an upload: a valid id, and an upload of this sender (HEAD, PATCH, DELETE)
  api.all(`${tusPath}/:id`, async (req, res, next) => {
    const id = String(req.params.id);
    if (!UPLOAD_ID.test(id)) throw new HttpError(404, `no upload with id ${id.slice(0, 100)}`);
    const upload = await tus.datastore.getUpload(id).catch(() => null);
    // unknown ids go on to tus, which answers 404 (or 410) itself
    if (upload && !uploadOwnedBy(senderOf(res), upload)) throw new HttpError(404, `no upload with id ${id}`);
    next();
  });
  // tus concatenation (concat.ts): the final upload is made here, partial uploads by @tus/server marked as such
  api.post(tusPath, async (req, res, next) => {
    const header = req.get("upload-concat");
    if (header === undefined) return next();
    const sender = senderOf(res);
    let concat;
    try {
      concat = parseUploadConcat(header, tusPath, config.transfers.maxPartialUploads);
    } catch (err) {
      if (err instanceof ConcatError) throw new HttpError(err.status, err.message, { "Tus-Resumable": "1.0.0" });
      throw err;
    }
    if (concat.kind === "partial") {
      // @tus/server 2 refuses the header; it creates the upload, onUploadCreate marks it partial for this owner
      delete req.headers["upload-concat"];
      for (let i = req.rawHeaders.length - 2; i >= 0; i -= 2) if (req.rawHeaders[i]!.toLowerCase() === "upload-concat") req.rawHeaders.splice(i, 2);
      (req as unknown as Record<symbol, PartialUploadMark>)[PARTIAL_UPLOAD] = true;
      res.setHeader("Upload-Concat", "partial");
      return next();
    }
    if (req.get("upload-length") !== undefined || req.get("upload-defer-length") !== undefined) {
      throw new HttpError(400, "a final upload (Upload-Concat: final;...) takes its length from its partial uploads: send no Upload-Length", { "Tus-Resumable": "1.0.0" });
    }
    let metadata: Record<string, string | null> = {};
    try {
      const raw = req.get("upload-metadata");
      if (raw) metadata = Metadata.parse(raw) as Record<string, string | null>;
    } catch {
      throw new HttpError(400, "Upload-Metadata is not valid tus metadata (key base64value pairs separated by commas)", { "Tus-Resumable": "1.0.0" });
    }
    const reserved = Object.keys(metadata).filter((k) => RESERVED_METADATA_KEYS.includes(k));
    if (reserved.length) throw new HttpError(400, `Upload-Metadata key ${reserved.join(", ")} is reserved for the relay; leave it out`, { "Tus-Resumable": "1.0.0" });
    let made;
    try {
      made = await service.createFinalUpload({ partIds: concat.ids, metadata, sender, acceptsGzip: acceptsGzip(req.get("accept-encoding")) });
    } catch (err) {
      const tusErr = err as { status_code?: number; body?: string };
      if (err instanceof ConcatError) throw new HttpError(err.status, err.message, { "Tus-Resumable": "1.0.0" });
      if (typeof tusErr.status_code === "number" && typeof tusErr.body === "string") throw new HttpError(tusErr.status_code, tusErr.body.trim(), { "Tus-Resumable": "1.0.0" });
      throw err;
    }
    const base = config.server.publicUrl ? config.server.publicUrl.replace(/\/$/, "") : `${req.protocol}://${req.get("host")}`;
    res.status(201).set({
      "Tus-Resumable": "1.0.0",
      Location: `${base}${tusPath}/${made.id}`,
      "Upload-Concat": header.trim(),
      "Upload-Result": `${tusPath}/${made.id}`,
    });
    if (made.result) res.json(made.result);
    else res.end();
  });
  api.all([tusPath, `${tusPath}/:id`], (req, res, next) => {
    // who creates an upload is recorded in its metadata by the tus hooks (tusServer.ts); never a client's value
    const sender = senderOf(res);
    setInternalHeader(req, OWNER_HEADER, sender.owner);
    setInternalHeader(req, ADMIN_HEADER, String(sender.admin));
    // @tus/server answers storage outages 503 (s3UploadStore.ts) but sets no Retry-After: tell clients when to retry
    const writeHead = res.writeHead;
    const isHead = req.method === "HEAD";
    res.writeHead = function (this: typeof res, status: number, ...rest: unknown[]) {
      // @tus/server answers storage outages 503 (s3UploadStore.ts) but sets no Retry-After: tell clients when to retry
      if (status === 503 && !this.hasHeader("retry-after")) this.setHeader("Retry-After", RETRY_AFTER_SECONDS);
      if (isHead) rest = hideConcatMetadata(rest, tusPath);
      return (writeHead as (...a: unknown[]) => typeof res).call(this, status, ...rest);
    } as typeof res.writeHead;
    tus.handle(req, res).catch(next);
  });

  r.use(api);
  return r;
}

/**
 * HEAD: the relay's own metadata keys (concat.ts) become the Upload-Concat header (partial, or final with its
 * partials' URLs) and leave Upload-Metadata. srvx hands writeHead a flat [name, value, ...] list.
 */
function hideConcatMetadata(args: unknown[], tusPath: string): unknown[] {
  const at = args.findIndex((a) => Array.isArray(a));
  if (at < 0) return args;
  const raw = [...(args[at] as string[])];
  for (let i = 0; i < raw.length; i += 2) {
    if (String(raw[i]).toLowerCase() !== "upload-metadata") continue;
    let metadata: Record<string, string | null> | undefined;
    try {
      metadata = Metadata.parse(String(raw[i + 1])) as Record<string, string | null>;
    } catch {
      return args;
    }
    const concat = uploadConcatHeader(metadata, tusPath);
    const shown = publicMetadata(metadata) ?? {};
    if (Object.keys(shown).length) raw[i + 1] = Metadata.stringify(shown);
    else raw.splice(i, 2);
    if (concat) raw.push("Upload-Concat", concat);
    break;
  }
  const out = [...args];
  out[at] = raw;
  return out;
}
