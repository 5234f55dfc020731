/**
 * tus 1.0 endpoint (@tus/server 2 + @tus/file-store): core, creation, creation-with-upload, creation-defer-length,
 * termination, expiration, and concatenation (ours: concat.ts; partial uploads are ordinary uploads marked in their
 * info, a final upload is an info naming its partials, whose bytes are read in order at ingest). @tus/server 2 implements no checksum extension (no Upload-Checksum support in any of
 * its stores), so integrity is end to end instead: the SHA-256 per instance in a transfer manifest.
 *
 * A finished upload's bytes are ingested, then its data file is deleted (disk space back at once) while its small
 * .json info file stays until expiration, so a client whose final PATCH response was lost still learns, by HEAD,
 * that the upload is complete, and reads the result at GET {tusPath}/{id}.
 *
 * Two stores behind one interface (RelayUploadStore): local files (storage.kind=fs, RelayFileStore here) and S3
 * (storage.kind=s3, RelayS3Store in s3UploadStore.ts), where every node over the bucket can continue an upload.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import type http from "node:http";
import stream from "node:stream";
import { FileStore } from "@tus/file-store";
import { CoalesceChunks } from "./coalesce.ts";
import { DataStore, ERRORS, Server, Upload, type Locker } from "@tus/server";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import { CLIENT_UPLOAD_ID, CLIENT_UPLOAD_ID_HEADER } from "./uploadIds.ts";
import { isIndexUnavailable } from "../catalog/index.ts";
import { ownedBy, type Sender } from "../access/sender.ts";
import { CONCAT_KEY, FINAL_KEY, OWNER_KEY, RESERVED_METADATA_KEYS, concatenated, isFinal, isPartial, partsOf } from "./concat.ts";

type TusError = { status_code: number; body: string };

/** Metadata key holding who created an upload (set by the relay at creation; a client may not send it: 400). */
export const UPLOAD_OWNER_KEY = OWNER_KEY;
/**
 * Request headers by which the route hands the authenticated sender to the tus hooks (which see a fetch Request,
 * not express's res.locals). The route removes any client-sent value first (routes.ts).
 */
export const OWNER_HEADER = "x-dicom-relay-owner";
export const ADMIN_HEADER = "x-dicom-relay-admin";

/** Who created an upload, as recorded at its creation (null: before owners were kept). */
export function uploadOwner(upload: Pick<Upload, "metadata">): string | null {
  return upload.metadata?.[UPLOAD_OWNER_KEY] ?? null;
}

/**
 * May this sender touch this upload (HEAD, PATCH, DELETE, its result, merging it into a final upload)? Its creator
 * and admins may; for anyone else it does not exist (404).
 */
export function uploadOwnedBy(access: Sender, upload: Pick<Upload, "metadata">): boolean {
  return ownedBy(access, uploadOwner(upload));
}
export const tusError = (status_code: number, sentence: string): TusError => ({ status_code, body: sentence.endsWith("\n") ? sentence : sentence + "\n" });

export interface TusHooks {
  /** Refuse a new upload (throw tusError) or accept it; sender: who creates it. */
  validateCreate(metadata: Record<string, string | null>, sender: Sender): Promise<void>;
  /**
   * The upload's bytes are all here: ingest them. Resolves with a JSON body for the response, or null (still
   * processing); a client that takes gzip gets it compressed (routes.ts).
   */
  onFinish(upload: Upload, client: { acceptsGzip: boolean }): Promise<{ body: string | null; resultUrl: string }>;
  /** Has this upload been ingested (its data file removed)? */
  isProcessed(id: string): Promise<boolean>;
  /** Is this upload's ingest running now (do not expire it under its feet)? */
  isProcessing(id: string): boolean;
  /** The store found an upload complete outside a PATCH (S3: its completion had failed): ingest it in the background. */
  completedLate?(upload: Upload): void;
}

/** What the transfer service needs of the upload store beyond tus: recovery, expiry, reading and dropping bytes. */
export interface RelayUploadStore extends DataStore {
  /** Uploads whose bytes are complete (offset == size) and still there: not ingested yet. */
  listComplete(): Promise<Upload[]>;
  /**
   * Uploads whose bytes are still arriving (not complete; partials not joined into a final yet), with their
   * metadata: retention removes those of a deleted study's transfers.
   */
  listUnfinished(): Promise<Upload[]>;
  deleteExpired(): Promise<number>;
  /** A finished upload's bytes: a local file path (fs) or a stream (S3). */
  openUpload(upload: Upload): Promise<string | stream.Readable>;
  /** After ingest: remove the bytes (a final's: its partials' bytes), keep what HEAD needs to answer "complete". */
  removeData(id: string): Promise<void>;
  /** Concatenation: keep a final upload's info (no bytes of its own; complete from the start). */
  createFinal(upload: Upload): Promise<void>;
  /** Concatenation: replace an upload's metadata (a partial records the final that joined it). */
  updateMetadata(id: string, metadata: Record<string, string | null>): Promise<void>;
}


/** The id a POST creates: the client's proposal when it is one (and free), else drawn at random. */
export async function uploadIdFor(proposed: string | null, store: Pick<DataStore, "getUpload">): Promise<string> {
  if (proposed === null) return crypto.randomBytes(16).toString("hex");
  if (!CLIENT_UPLOAD_ID.test(proposed)) throw tusError(400, `${CLIENT_UPLOAD_ID_HEADER} must be 32 lowercase hexadecimal digits (a random 128-bit id), not "${proposed.slice(0, 80)}"`);
  const exists = await store.getUpload(proposed).then(
    () => true,
    (err: unknown) => {
      if (err === ERRORS.FILE_NOT_FOUND || err === ERRORS.FILE_NO_LONGER_EXISTS) return false;
      throw err;
    },
  );
  if (exists) throw tusError(409, `an upload with id ${proposed} exists already; resume it (HEAD gives its offset) or propose another id`);
  return proposed;
}

/** DELETE of a partial whose final is not ingested yet: its bytes are the final's. */
export const joinedPartialKept = (id: string, final: string) =>
  tusError(409, `partial upload ${id} is joined into final upload ${final}, which is not ingested yet; it cannot be removed now`);

/** PATCH against a final upload (tus: 403): its bytes are its partials'. */
export const finalPatchRefused = () => tusError(403, "this is a final upload (tus concatenation): its bytes are those of its partial uploads; nothing can be appended to it");

/** bytes of an upload written to its file at a time (at least; the last write of a request may be shorter) */
const WRITE_CHUNK = 64 * 1024;

/** FileStore that keeps answering for uploads whose data file went away after ingest, and expires them itself. */
export class RelayFileStore extends FileStore implements RelayUploadStore {
  constructor(
    directory: string,
    expirationMs: number,
    private readonly hooks: Pick<TusHooks, "isProcessed" | "isProcessing">,
    private readonly log: Logger,
  ) {
    super({ directory, expirationPeriodInMilliseconds: expirationMs });
    this.extensions.push("concatenation");
  }

  private info(id: string): Promise<Upload | undefined> {
    return this.configstore.get(id) as Promise<Upload | undefined>;
  }

  /** Ingested: the upload itself, or (a partial) the final that joined it. */
  private async consumed(id: string, info: Upload | undefined): Promise<boolean> {
    if (await this.hooks.isProcessed(id)) return true;
    const final = info && isPartial(info) ? info.metadata?.[FINAL_KEY] : null;
    return Boolean(final && (await this.hooks.isProcessed(final)));
  }

  override async getUpload(id: string): Promise<Upload> {
    const info = await this.info(id);
    // a final upload has no data file: complete from the moment it exists
    if (info && isFinal(info)) return new Upload({ id, size: info.size, offset: info.size ?? 0, metadata: info.metadata, creation_date: info.creation_date });
    try {
      return await super.getUpload(id);
    } catch (err) {
      if (err !== ERRORS.FILE_NO_LONGER_EXISTS || !info || !(await this.consumed(id, info))) throw err;
      return new Upload({ id, size: info.size, offset: info.size ?? 0, metadata: info.metadata, creation_date: info.creation_date });
    }
  }

  override async write(readable: http.IncomingMessage | stream.Readable, id: string, offset: number): Promise<number> {
    if (!fs.existsSync(path.join(this.directory, id))) {
      const info = await this.info(id);
      if (info && isFinal(info)) throw finalPatchRefused();
      // a repeated final PATCH (empty body at offset == size) for an upload already ingested: nothing to write
      if (await this.consumed(id, info)) {
        readable.resume();
        return offset;
      }
    }
    // a slow flow delivers a packet or two per read: write to the file in chunks of 64 kB (coalesce.ts)
    const coalesced = new CoalesceChunks(WRITE_CHUNK);
    stream.pipeline(readable, coalesced, () => {
      // an error reaches super.write through the coalescer (destroyed with it); nothing else to do here
    });
    return super.write(coalesced, id, offset);
  }

  /** Termination: a final has only its info; a partial joined into a final not ingested yet stays (409). */
  override async remove(id: string): Promise<void> {
    const info = await this.info(id);
    if (info && isFinal(info)) return fsp.rm(path.join(this.directory, `${id}.json`), { force: true });
    const final = info && isPartial(info) ? info.metadata?.[FINAL_KEY] : null;
    if (final && !(await this.hooks.isProcessed(final))) throw joinedPartialKept(id, final);
    return super.remove(id);
  }

  /** Written whole or not at all (temp + rename): a crash never leaves a half info file. */
  private async writeInfo(upload: Upload): Promise<void> {
    const file = path.join(this.directory, `${upload.id}.json`);
    const tmp = `${file}.${process.pid}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(upload));
    await fsp.rename(tmp, file);
  }

  async createFinal(upload: Upload): Promise<void> {
    await this.writeInfo(upload);
  }

  async updateMetadata(id: string, metadata: Record<string, string | null>): Promise<void> {
    const info = await this.info(id);
    if (!info) throw ERRORS.FILE_NOT_FOUND;
    await this.writeInfo(Object.assign(new Upload({ id, size: info.size, offset: info.offset, creation_date: info.creation_date }), info, { metadata }));
  }

  /** Every partial of a final still has its bytes (so the final can still be ingested). */
  private async partsThere(final: Upload): Promise<boolean> {
    for (const p of partsOf(final)) if (!(await fsp.stat(path.join(this.directory, p)).catch(() => null))) return false;
    return true;
  }

  /** A complete upload that ingest recovery owns (not expiry): a final whose partials are there, a partial joined into one. */
  private async awaitingIngest(id: string, info: Upload, dataSize: number | null): Promise<boolean> {
    if (await this.hooks.isProcessed(id)) return false;
    if (isFinal(info)) return this.partsThere(info);
    if (isPartial(info)) {
      const final = info.metadata?.[FINAL_KEY];
      if (!final) return false; // never joined: expires like any unfinished upload
      if (this.hooks.isProcessing(final)) return true;
      const f = await this.info(final);
      return Boolean(f && !(await this.hooks.isProcessed(final)) && (await this.partsThere(f)));
    }
    return dataSize !== null && info.size !== undefined && dataSize === info.size;
  }

  /** Removes what is older than the expiration: unfinished uploads (their bytes) and ingested uploads' info files. */
  override async deleteExpired(): Promise<number> {
    const now = Date.now();
    const expiration = this.getExpiration();
    if (expiration <= 0) return 0;
    let removed = 0;
    const names = await fsp.readdir(this.directory).catch(() => [] as string[]);
    const infos = new Set(names.filter((n) => n.endsWith(".json")));
    for (const name of names) {
      // a data file whose info file went (deleted by hand, or by an old relay's DELETE of "<id>.json"): an orphan
      if (name.endsWith(".json") || infos.has(`${name}.json`)) continue;
      const st = await fsp.stat(path.join(this.directory, name)).catch(() => null);
      if (!st?.isFile() || st.mtimeMs + expiration >= now || this.hooks.isProcessing(name)) continue;
      await fsp.rm(path.join(this.directory, name), { force: true });
      removed++;
      this.log.info({ file: name, bytes: st.size }, "orphan tus data file (no info file) removed");
    }
    for (const name of names) {
      if (!name.endsWith(".json")) continue;
      const id = name.slice(0, -".json".length);
      const info = (await this.configstore.get(id)) as Upload | undefined;
      if (!info?.creation_date || new Date(info.creation_date).getTime() + expiration >= now) continue;
      if (this.hooks.isProcessing(id)) continue;
      const dataPath = path.join(this.directory, id);
      const st = await fsp.stat(dataPath).catch(() => null);
      // complete but never ingested (the relay stopped at the wrong moment): ingest recovery owns it, not expiry
      if (await this.awaitingIngest(id, info, st?.size ?? null)) continue;
      await fsp.rm(dataPath, { force: true });
      await fsp.rm(path.join(this.directory, name), { force: true });
      removed++;
      this.log.info({ uploadId: id, bytes: st?.size ?? 0 }, "expired tus upload removed");
    }
    return removed;
  }

  async openUpload(upload: Upload): Promise<string | stream.Readable> {
    if (isFinal(upload)) {
      const dir = this.directory;
      return concatenated(partsOf(upload).map((id) => async () => fs.createReadStream(path.join(dir, id), { highWaterMark: 1024 * 1024 })));
    }
    return upload.storage?.path ?? path.join(this.directory, upload.id);
  }

  async removeData(id: string): Promise<void> {
    const info = await this.info(id);
    for (const p of info && isFinal(info) ? partsOf(info) : []) await fsp.rm(path.join(this.directory, p), { force: true });
    await fsp.rm(path.join(this.directory, id), { force: true });
  }

  /** Ids of the uploads in the folder (those with an info file). */
  private async uploadIds(): Promise<string[]> {
    const names = await fsp.readdir(this.directory).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith(".json")).map((n) => n.slice(0, -".json".length));
  }

  /** Uploads still receiving bytes, and partials not joined into a final yet (a study's deletion removes them). */
  async listUnfinished(): Promise<Upload[]> {
    const out: Upload[] = [];
    for (const id of await this.uploadIds()) {
      try {
        const info = await this.info(id);
        if (!info || isFinal(info) || (isPartial(info) && info.metadata?.[FINAL_KEY])) continue;
        const u = await super.getUpload(id);
        if (isPartial(info) || u.size === undefined || u.offset < u.size) out.push(u);
      } catch {
        // info without data (already ingested) or unreadable: not an upload under way
      }
    }
    return out;
  }

  /** Uploads whose bytes are complete (offset == size) and whose data is still there; never a partial alone. */
  async listComplete(): Promise<Upload[]> {
    const out: Upload[] = [];
    for (const id of await this.uploadIds()) {
      try {
        const info = await this.info(id);
        if (!info || isPartial(info)) continue;
        if (isFinal(info)) {
          if (await this.partsThere(info)) out.push(await this.getUpload(id));
          continue;
        }
        const u = await super.getUpload(id);
        if (u.size !== undefined && u.offset === u.size) out.push(u);
      } catch {
        // info without data (already ingested) or unreadable: nothing to recover
      }
    }
    return out;
  }
}

/** Set on the request by the route for a POST with Upload-Concat: partial (the header itself is taken off). */
export const PARTIAL_UPLOAD = Symbol("dicom-relay.partialUpload");
export type PartialUploadMark = true;

/** The Node request behind @tus/server's web Request (srvx keeps it). */
const nodeRequestOf = (req: unknown): (http.IncomingMessage & { [PARTIAL_UPLOAD]?: PartialUploadMark }) | undefined =>
  (req as { runtime?: { node?: { req?: http.IncomingMessage } } }).runtime?.node?.req;

export interface TusServerOptions {
  config: RelayConfig;
  log: Logger;
  hooks: TusHooks;
  /** who may write an upload at a time (default: @tus/server's MemoryLocker, one process) */
  locker?: Locker;
}

/**
 * The upload store storage.kind asks for: local files (fs) or the storage bucket (s3). The S3 one is loaded only then:
 * @tus/s3-store brings the AWS SDK, ~20 MB of a relay's RSS and ~0.2 s of its start that a relay on disk never uses.
 */
async function createUploadStore(config: RelayConfig, hooks: Pick<TusHooks, "isProcessed" | "isProcessing" | "completedLate">, log: Logger): Promise<RelayUploadStore> {
  const t = config.transfers;
  if (config.storage.kind === "s3") {
    const { RelayS3Store } = await import("./s3UploadStore.ts");
    return new RelayS3Store({ s3: config.storage.s3, prefix: t.s3.prefix, partSize: t.s3.partSize, expirationMs: t.expirationSeconds * 1000, hooks, log });
  }
  return new RelayFileStore(t.uploadDir, t.expirationSeconds * 1000, hooks, log);
}

export async function createTusServer({ config, log, hooks, locker }: TusServerOptions): Promise<{ server: Server; store: RelayUploadStore }> {
  const t = config.transfers;
  const store = await createUploadStore(config, hooks, log);
  const publicUrl = config.server.publicUrl.replace(/\/$/, "");
  const server = new Server({
    path: t.tusPath,
    datastore: store,
    ...(locker ? { locker } : {}),
    maxSize: t.maxUploadBytes,
    ...(publicUrl ? { generateUrl: (_req, { path: p, id }) => `${publicUrl}${p}/${id}` } : {}),
    exposedHeaders: ["Upload-Result"],
    namingFunction: (req) => uploadIdFor(req.headers.get(CLIENT_UPLOAD_ID_HEADER), store),
    async onUploadCreate(req, upload) {
      const sender: Sender = { owner: req.headers.get(OWNER_HEADER) ?? "anonymous", admin: req.headers.get(ADMIN_HEADER) === "true" };
      const metadata = upload.metadata ?? {};
      // the owner is recorded by the relay, never taken from the client's Upload-Metadata
      const reserved = Object.keys(metadata).filter((k) => RESERVED_METADATA_KEYS.includes(k));
      if (reserved.length) throw tusError(400, `Upload-Metadata key ${reserved.join(", ")} is reserved for the relay; leave it out`);
      await hooks.validateCreate(metadata, sender);
      const owned = { ...metadata, [OWNER_KEY]: sender.owner };
      // a partial upload (tus concatenation): resumable like any upload, never ingested alone, joined by its owner
      if (nodeRequestOf(req)?.[PARTIAL_UPLOAD]) return { metadata: { ...owned, [CONCAT_KEY]: "partial" } };
      return { metadata: owned };
    },
    async onUploadFinish(req, upload) {
      if (isPartial(upload)) return {};
      const { body, resultUrl } = await hooks.onFinish(upload, { acceptsGzip: acceptsGzip(req.headers.get("accept-encoding")) });
      const headers: Record<string, string> = { "Upload-Result": resultUrl };
      if (body === null) return { headers };
      headers["Content-Type"] = "application/json";
      // PATCH answers 204 (no body allowed) by default; POST (creation-with-upload) must stay 201 for its Location
      return req.method === "PATCH" ? { status_code: 200, headers, body } : { headers, body };
    },
    onResponseError(_req, err) {
      const e = err as Partial<TusError> & Error;
      if (e.status_code === 413) {
        return tusError(413, `the upload is larger than the relay accepts (${t.maxUploadBytes} bytes, transfers.maxUploadBytes); split the study into several bundles or ask the administrator to raise the limit`);
      }
      if ((err as unknown) === ERRORS.ERR_LOCK_TIMEOUT) {
        // tus clients retry 423; the holder was asked to let go and will have done so by then
        return tusError(423, `another request is still writing this upload and did not let go within ${t.locker.acquireTimeoutSeconds} s; retry in a moment`);
      }
      if (e.status_code === 503) {
        log.warn({ reason: e.message }, "tus request refused: storage unavailable");
        return undefined;
      }
      if (!e.status_code && isIndexUnavailable(err)) {
        // PostgreSQL down while a hook reads it (validateCreate's transfer, the ingest): 503, the route adds Retry-After
        log.warn({ reason: e.message }, "tus request refused: index database unavailable");
        return tusError(503, "the relay's index database is unavailable right now; please retry later");
      }
      if (!e.status_code || e.status_code >= 500) {
        log.error({ err }, "tus request failed");
        // never a stack or an internal message to the sender
        return tusError(500, "the relay hit an unexpected error with this upload; it was logged. Retry later (HEAD gives the offset to resume from)");
      }
      return undefined;
    },
  });
  return { server, store };
}

/**
 * Does an Accept-Encoding header take gzip (not refused with q=0)? gzip named decides; else `*` does (RFC 9110
 * 12.5.3: "gzip;q=0, *" refuses gzip).
 */
export function acceptsGzip(header: string | null | undefined): boolean {
  if (!header) return false;
  const q: Record<string, number> = {};
  for (const part of header.split(",")) {
    const [coding, ...params] = part.trim().toLowerCase().split(";");
    if (coding !== "gzip" && coding !== "*") continue;
    const weight = params.map((p) => p.trim()).find((p) => p.startsWith("q="));
    q[coding] = weight ? Number(weight.slice(2)) : 1;
  }
  return (q.gzip ?? q["*"] ?? 0) > 0;
}
