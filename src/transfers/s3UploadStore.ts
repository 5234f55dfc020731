/**
 * tus uploads kept in S3 (storage.kind=s3): @tus/s3-store under a key prefix of the storage bucket, so that
 * any relay node over the same bucket can answer HEAD and continue PATCH after a restart or on another node.
 *
 * Objects of one upload, under `storage.s3.prefix` + `transfers.s3.prefix` (default `uploads/`):
 *   <id>.info         JSON of the upload (size, metadata, creation date) + the S3 multipart upload id
 *   <id>              the upload's bytes: parts of an S3 multipart upload, an object once complete
 *   <id>.part         the tail shorter than S3's 5 MiB part minimum, kept until the next PATCH prepends it
 *   <id>.result.json  the ingest result's summary (GET {tusPath}/{id}), readable by every node
 *   <id>.result.<n>.entries.json  its entries n*1000 .. n*1000+999 (pages: appending rewrites the last page only)
 *
 * What the relay adds to @tus/s3-store (as RelayFileStore does to the file store):
 * - keys under a prefix (the store itself has none): a middleware on its S3 client rewrites Key / Prefix;
 * - after ingest the bytes object is removed but <id>.info stays, so HEAD still answers complete (the
 *   multipart upload is gone: offset = size) and a repeated final PATCH is answered without writing;
 * - an unreachable or failing S3 is a 503 with a sentence (the route adds Retry-After), never a 404 or a 500:
 *   @tus/s3-store reports every getUpload failure as "not found", which would make a client start over;
 * - its expiration only aborts unfinished multipart uploads; finished, ingested uploads' info objects are
 *   swept here too, and a complete upload never ingested is left to recovery;
 * - no cross-node stale cache: upload metadata is cached only once its length is known (then it never changes),
 *   and dropped when the relay rewrites it (a partial joined into a final);
 * - concatenation (concat.ts): a final upload is only its <id>.info (no multipart upload, no bytes); its bytes are
 *   its partials' objects read in order.
 */
import { PassThrough, type Readable } from "node:stream";
import type { S3 } from "@aws-sdk/client-s3";
import { S3Store, type MetadataValue } from "@tus/s3-store";
import { ERRORS, Upload, type KvStore } from "@tus/server";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import { ConfigError } from "../config.ts";
import { StorageUnavailableError } from "../storage/blobStore.ts";
import { finalPatchRefused, joinedPartialKept, type TusHooks } from "./tusServer.ts";
import { FINAL_KEY, concatenated, isFinal, isPartial, partsOf } from "./concat.ts";
import { assembleUploadResult, resultSummaryJson, type UploadEntryResult, type UploadResult, type UploadResultStore } from "./transferStore.ts";

/** A tus error @tus/server answers as is: 503 + a sentence (the route adds Retry-After). */
export class UploadStorageUnavailableError extends StorageUnavailableError {
  readonly status_code = 503;
  readonly body: string;
  constructor(detail: string, options?: { cause?: unknown }) {
    super(`the upload storage (S3) is unavailable: ${detail}`, options);
    this.body = "the relay's upload storage is unavailable right now; the upload is kept, retry in a moment\n";
  }
}

const NETWORK_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN",
  "ENOTFOUND", "EAI_AGAIN", "ECONNABORTED", "ERR_STREAM_PREMATURE_CLOSE", "ERR_SOCKET_CONNECTION_TIMEOUT",
]);
const UNAVAILABLE_NAMES = new Set([
  "TimeoutError", "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "SlowDown",
  "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum", "XMinioStorageFull", "XMinioBackendDown",
  "XMinioOperationTimedOut", "NoSuchBucket",
]);
const NOT_FOUND = new Set(["NotFound", "NoSuchKey"]);

function codesOf(err: unknown): string[] {
  const out: string[] = [];
  const visit = (e: unknown, depth: number) => {
    if (!e || typeof e !== "object" || depth > 3) return;
    const o = e as { code?: unknown; name?: unknown; Code?: unknown; cause?: unknown; errors?: unknown };
    for (const v of [o.code, o.name, o.Code]) if (typeof v === "string") out.push(v);
    visit(o.cause, depth + 1);
    if (Array.isArray(o.errors)) for (const x of o.errors) visit(x, depth + 1);
  };
  visit(err, 0);
  return out;
}

/** Network failures, timeouts and 5xx answers: S3 cannot serve now (as opposed to "no such key"). */
export function isS3Unavailable(err: unknown): boolean {
  if (err instanceof StorageUnavailableError) return true;
  const status = (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
  if (typeof status === "number" && status >= 500) return true;
  return codesOf(err).some((c) => NETWORK_CODES.has(c) || UNAVAILABLE_NAMES.has(c));
}

const isNotFound = (err: unknown) => codesOf(err).some((c) => NOT_FOUND.has(c));
const isNoSuchUpload = (err: unknown) => codesOf(err).some((c) => c === "NoSuchUpload" || c === "NoSuchKey");

/** tus ids the relay hands out are 32 hex digits; anything with a dot could name another object of an upload. */
const SAFE_ID = /^[A-Za-z0-9_-]{1,128}$/;
/** Entries of an upload result per object. */
const ENTRY_PAGE = 1000;
const entryPageKey = (id: string, page: number) => `${id}.result.${page}.entries.json`;

/** Metadata cache that keeps nothing whose length may still change on another node (deferred length). */
class KnownLengthCache implements KvStore<MetadataValue> {
  private readonly map = new Map<string, MetadataValue>();
  constructor(private readonly max = 10_000) {}
  async get(key: string) {
    return this.map.get(key);
  }
  async set(key: string, value: MetadataValue) {
    if (value.file.size === undefined) return;
    if (this.map.size >= this.max) this.map.delete(this.map.keys().next().value!);
    this.map.set(key, value);
  }
  async delete(key: string) {
    this.map.delete(key);
  }
}

export interface S3UploadStoreOptions {
  s3: RelayConfig["storage"]["s3"];
  /** transfers.s3.prefix, under storage.s3.prefix */
  prefix: string;
  partSize: number;
  expirationMs: number;
  hooks: Pick<TusHooks, "isProcessed" | "isProcessing" | "completedLate">;
  log: Logger;
  /** TCP connect deadline per S3 request (ms) */
  connectTimeoutMs?: number;
  /** a request whose socket sees no traffic this long fails (ms); not applied to reading a finished upload */
  idleTimeoutMs?: number;
}

/** The full key prefix of uploads: "site-a/uploads/". */
export function uploadsKeyPrefix(s3Prefix: string, uploadsPrefix: string): string {
  const parts = [s3Prefix, uploadsPrefix].map((p) => p.replace(/^\/+|\/+$/g, "")).filter(Boolean);
  return parts.length ? parts.join("/") + "/" : "";
}

type AnyInput = Record<string, unknown>;
type AnyOutput = Record<string, unknown>;

export class RelayS3Store extends S3Store implements UploadResultStore {
  readonly keyPrefix: string;
  private readonly hooks: S3UploadStoreOptions["hooks"];
  private readonly log: Logger;
  /** reads a finished upload at the pace of ingest (which may pause between bundle entries): no idle deadline */
  private readonly reader: S3;

  constructor(opts: S3UploadStoreOptions) {
    const { s3 } = opts;
    if (!s3.endpoint || !s3.accessKey || !s3.secretKey) {
      throw new ConfigError("tus uploads on S3 need storage.s3.endpoint, accessKey and secretKey");
    }
    const base = {
      bucket: s3.bucket,
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: s3.pathStyle,
      credentials: { accessKeyId: s3.accessKey, secretAccessKey: s3.secretKey },
      // no hidden retries: a failure becomes a 503 and the tus client retries
      maxAttempts: 1,
      // the SDK prints to the console without a logger; failures are logged where they are mapped
      logger: { trace() {}, debug() {}, info() {}, warn() {}, error() {} },
    };
    super({
      partSize: opts.partSize,
      expirationPeriodInMilliseconds: opts.expirationMs,
      // expiry by our own sweep, not bucket lifecycle tags
      useTags: false,
      cache: new KnownLengthCache(),
      s3ClientConfig: {
        ...base,
        requestHandler: { connectionTimeout: opts.connectTimeoutMs ?? 5_000, socketTimeout: opts.idleTimeoutMs ?? 30_000 },
      },
    });
    this.extensions.push("concatenation");
    this.keyPrefix = uploadsKeyPrefix(s3.prefix, opts.prefix);
    this.hooks = opts.hooks;
    this.log = opts.log;
    // the same S3 client class @tus/s3-store uses (its dependency), a second instance with other timeouts
    const S3Client = this.client.constructor as typeof S3;
    const { bucket: _bucket, ...readerConfig } = base;
    this.reader = new S3Client({ ...readerConfig, requestHandler: { connectionTimeout: opts.connectTimeoutMs ?? 5_000 } });
    for (const client of [this.client, this.reader]) this.addPrefixMiddleware(client);
  }

  /** Every Key / Prefix the store sends gets the uploads prefix; keys it reads back lose it. */
  private addPrefixMiddleware(client: S3): void {
    const prefix = this.keyPrefix;
    if (!prefix) return;
    const strip = (k: unknown) => (typeof k === "string" && k.startsWith(prefix) ? k.slice(prefix.length) : k);
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const input = { ...(args.input as AnyInput) };
        if (typeof input.Key === "string") input.Key = prefix + input.Key;
        if (context.commandName === "ListObjectsV2Command" || context.commandName === "ListMultipartUploadsCommand") {
          input.Prefix = prefix + ((input.Prefix as string | undefined) ?? "");
        }
        const del = input.Delete as { Objects?: { Key?: string }[] } | undefined;
        if (del?.Objects) input.Delete = { ...del, Objects: del.Objects.map((o) => ({ ...o, Key: prefix + o.Key })) };
        const result = await next({ ...args, input });
        const out = result.output as unknown as AnyOutput;
        if (Array.isArray(out.Uploads)) out.Uploads = (out.Uploads as AnyOutput[]).map((u) => ({ ...u, Key: strip(u.Key) }));
        if (Array.isArray(out.Contents)) out.Contents = (out.Contents as AnyOutput[]).map((c) => ({ ...c, Key: strip(c.Key) }));
        if (typeof out.Key === "string") out.Key = strip(out.Key);
        return result;
      },
      { step: "initialize", name: "dicomRelayUploadsPrefix" },
    );
  }

  private unavailable(err: unknown): unknown {
    if (err instanceof UploadStorageUnavailableError) return err;
    if (isS3Unavailable(err)) {
      this.log.warn({ err: (err as Error)?.message ?? String(err) }, "S3 unavailable for a tus request");
      return new UploadStorageUnavailableError((err as Error)?.message || codesOf(err).join(" ") || "no answer", { cause: err });
    }
    return err;
  }

  private checkId(id: string): void {
    if (!SAFE_ID.test(id)) throw ERRORS.FILE_NOT_FOUND;
  }

  async init(): Promise<void> {
    // the blob store has made sure the bucket exists; nothing of its own to set up
  }

  override async create(upload: Upload): Promise<Upload> {
    try {
      return await super.create(upload);
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  override async getUpload(id: string): Promise<Upload> {
    this.checkId(id);
    let meta: MetadataValue;
    try {
      meta = await this.getMetadata(id);
    } catch (err) {
      if (isNotFound(err)) throw ERRORS.FILE_NOT_FOUND;
      throw this.unavailable(err);
    }
    // a final upload has no bytes of its own: complete from the moment it exists
    if (isFinal(meta.file)) return new Upload({ ...meta.file, offset: meta.file.size ?? 0 });
    let upload: Upload;
    try {
      upload = await super.getUpload(id);
      if (upload.size !== undefined && upload.offset === upload.size) await this.completeIfAllPartsThere(upload);
    } catch (err) {
      throw this.unavailable(err);
    }
    return upload;
  }

  /**
   * Every byte is in parts but the multipart upload was never completed: S3 failed between the last part and
   * CompleteMultipartUpload. HEAD would tell the client "complete" and it would never PATCH again, so complete it
   * now and have it ingested.
   */
  private async completeIfAllPartsThere(upload: Upload): Promise<void> {
    let parts;
    try {
      parts = await this.retrieveParts(upload.id);
    } catch (err) {
      if (isNoSuchUpload(err)) return; // completed already: the normal case
      throw err;
    }
    if (parts.reduce((a, p) => a + (p.Size ?? 0), 0) !== upload.size) return;
    await this.finishMultipartUpload(await this.getMetadata(upload.id), parts);
    await this.clearCache(upload.id);
    this.log.warn({ uploadId: upload.id }, "completed an S3 multipart upload whose last step had failed; ingesting it");
    this.hooks.completedLate?.(upload);
  }

  override async write(readable: Readable, id: string, offset: number): Promise<number> {
    this.checkId(id);
    const meta = await this.getMetadata(id).catch(() => null);
    if (meta && isFinal(meta.file)) throw finalPatchRefused();
    try {
      return await super.write(readable, id, offset);
    } catch (err) {
      if (isNoSuchUpload(err)) {
        // the multipart upload is complete (or aborted): a repeated final PATCH, nothing to write
        const meta = await this.getMetadata(id).catch((e: unknown) => Promise.reject(this.unavailable(e)));
        if (meta.file.size === offset) {
          readable.resume();
          return offset;
        }
      }
      throw this.unavailable(err);
    }
  }

  override async declareUploadLength(id: string, length: number): Promise<void> {
    try {
      await super.declareUploadLength(id, length);
      await this.clearCache(id);
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  /** Termination: abort the multipart upload if still open, remove every object of the upload. */
  override async remove(id: string): Promise<void> {
    this.checkId(id);
    try {
      let meta: MetadataValue;
      try {
        meta = await this.getMetadata(id);
      } catch (err) {
        if (isNotFound(err)) throw ERRORS.FILE_NOT_FOUND;
        throw err;
      }
      const final = isPartial(meta.file) ? meta.file.metadata?.[FINAL_KEY] : null;
      if (final && !(await this.hooks.isProcessed(final))) throw joinedPartialKept(id, final);
      await this.client.abortMultipartUpload({ Bucket: this.bucket, Key: id, UploadId: meta["upload-id"] }).catch((err: unknown) => {
        if (!isNoSuchUpload(err) && !isNotFound(err)) throw err;
      });
      await this.deleteKeys([id, `${id}.part`, `${id}.info`, `${id}.result.json`]);
      await this.deleteEntryPages(new Set([id]));
      await this.clearCache(id);
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  private async deleteKeys(keys: string[]): Promise<void> {
    await this.client.deleteObjects({ Bucket: this.bucket, Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true } });
  }

  private async exists(key: string): Promise<boolean> {
    try {
      await this.client.headObject({ Bucket: this.bucket, Key: key });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** Every object under the uploads prefix (paged; names only). */
  private async *listKeys(prefix = ""): AsyncIterable<{ key: string; lastModified: Date | undefined }> {
    let token: string | undefined;
    do {
      const page = await this.client.listObjectsV2({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token });
      for (const c of page.Contents ?? []) if (c.Key) yield { key: c.Key, lastModified: c.LastModified };
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  /** Concatenation: a final upload's info only (no multipart upload: nothing will be appended). */
  async createFinal(upload: Upload): Promise<void> {
    try {
      await this.saveMetadata(upload, "none");
      await this.clearCache(upload.id);
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  async updateMetadata(id: string, metadata: Record<string, string | null>): Promise<void> {
    this.checkId(id);
    try {
      await this.clearCache(id);
      const meta = await this.getMetadata(id);
      await this.saveMetadata(new Upload({ ...meta.file, metadata }), meta["upload-id"] ?? "none");
      await this.clearCache(id);
    } catch (err) {
      if (isNotFound(err)) throw ERRORS.FILE_NOT_FOUND;
      throw this.unavailable(err);
    }
  }

  /** Every partial of a final still has its bytes object. */
  private async partsThere(final: Upload): Promise<boolean> {
    for (const p of partsOf(final)) if (!(await this.exists(p))) return false;
    return true;
  }

  /** The finished upload's bytes as a stream (ingest reads it once, front to back); a final's: its partials' in order. */
  async openUpload(upload: Upload): Promise<Readable> {
    if (isFinal(upload)) return concatenated(partsOf(upload).map((id) => () => this.openUpload(new Upload({ id, offset: 0 }))));
    let body: Readable;
    try {
      body = (await this.reader.getObject({ Bucket: this.bucket, Key: upload.id })).Body as Readable;
    } catch (err) {
      throw this.unavailable(err);
    }
    // a read cut midway is an outage, not a damaged upload: the ingest stops and is tried again later
    const out = new PassThrough({ highWaterMark: 1024 * 1024 });
    body.once("error", (err) => {
      const mapped = this.unavailable(err);
      out.destroy(mapped instanceof UploadStorageUnavailableError ? mapped : new UploadStorageUnavailableError(`reading upload ${upload.id} failed: ${(err as Error).message}`, { cause: err }));
    });
    out.once("close", () => body.destroy());
    return body.pipe(out);
  }

  /** After ingest: the bytes go, the .info object stays for HEAD until expiration. */
  async removeData(id: string): Promise<void> {
    try {
      const meta = await this.getMetadata(id).catch((err: unknown) => (isNotFound(err) ? null : Promise.reject(err)));
      const parts = meta && isFinal(meta.file) ? partsOf(meta.file) : [];
      await this.deleteKeys([id, `${id}.part`, ...parts.flatMap((p) => [p, `${p}.part`])]);
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  /** Ids of the uploads in the bucket (those with an info object). */
  private async uploadIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const { key } of this.listKeys()) if (key.endsWith(".info")) ids.push(key.slice(0, -".info".length));
    return ids;
  }

  /** Uploads still receiving bytes, and partials not joined into a final yet (a study's deletion removes them). */
  async listUnfinished(): Promise<Upload[]> {
    const out: Upload[] = [];
    for (const id of await this.uploadIds()) {
      try {
        const meta = await this.getMetadata(id);
        if (isFinal(meta.file) || (isPartial(meta.file) && meta.file.metadata?.[FINAL_KEY])) continue;
        const u = await this.getUpload(id); // an ingested upload answers complete (offset = size)
        if (isPartial(meta.file) || u.size === undefined || u.offset < u.size) out.push(u);
      } catch (err) {
        if (!isNotFound(err)) this.log.warn({ err, uploadId: id }, "could not inspect a tus upload in S3");
      }
    }
    return out;
  }

  /** Uploads whose bytes are complete and still there (not ingested yet): ingest recovery. */
  async listComplete(): Promise<Upload[]> {
    const out: Upload[] = [];
    for (const id of await this.uploadIds()) {
      try {
        const meta = await this.getMetadata(id);
        // a partial alone is never ingested; a final is, while its partials' bytes are there
        if (isPartial(meta.file)) continue;
        if (isFinal(meta.file)) {
          if (await this.partsThere(meta.file)) out.push(await this.getUpload(id));
          continue;
        }
        const u = await super.getUpload(id);
        if (u.size === undefined || u.offset !== u.size) continue;
        if (!(await this.exists(id))) {
          // every part is there but the multipart upload was never completed (S3 failed at that moment)
          const parts = await this.retrieveParts(id).catch(() => null);
          if (!parts || parts.reduce((a, p) => a + (p.Size ?? 0), 0) !== u.size) continue;
          await this.finishMultipartUpload(await this.getMetadata(id), parts);
        }
        out.push(u);
      } catch (err) {
        this.log.warn({ err, uploadId: id }, "could not inspect a tus upload in S3 for recovery");
      }
    }
    return out;
  }

  /**
   * Removes what is older than the expiration: unfinished uploads (their multipart upload, tail, info) and ingested
   * uploads' info objects. A complete upload never ingested stays (ingest recovery owns it).
   */
  override async deleteExpired(): Promise<number> {
    const expiration = this.getExpiration();
    if (expiration <= 0) return 0;
    const now = Date.now();
    const infos: string[] = [];
    for await (const { key } of this.listKeys()) if (key.endsWith(".info")) infos.push(key.slice(0, -".info".length));
    let removed = 0;
    for (const id of infos) {
      let meta: MetadataValue;
      try {
        meta = await this.getMetadata(id);
      } catch (err) {
        if (isNotFound(err)) continue;
        throw this.unavailable(err);
      }
      const created = meta.file.creation_date ? new Date(meta.file.creation_date).getTime() : now;
      if (created + expiration >= now || this.hooks.isProcessing(id)) continue;
      // concatenation: a final not ingested yet, or a partial joined into one, belongs to ingest recovery
      if (isFinal(meta.file) && !(await this.hooks.isProcessed(id)) && (await this.partsThere(meta.file))) continue;
      const joinedInto = isPartial(meta.file) ? meta.file.metadata?.[FINAL_KEY] : null;
      if (joinedInto && (this.hooks.isProcessing(joinedInto) || !(await this.hooks.isProcessed(joinedInto)))) {
        const final = await this.getMetadata(joinedInto).catch(() => null);
        if (final && (await this.partsThere(final.file))) continue;
      }
      const dataThere = await this.exists(id);
      // complete, never ingested: recovery's (a partial never joined expires like an unfinished upload)
      if (dataThere && !isPartial(meta.file) && !(await this.hooks.isProcessed(id))) {
        const complete = await this.client
          .listParts({ Bucket: this.bucket, Key: id, UploadId: meta["upload-id"] })
          .then(() => false, (err: unknown) => (isNoSuchUpload(err) ? true : Promise.reject(err)));
        if (complete) continue;
      }
      await this.client.abortMultipartUpload({ Bucket: this.bucket, Key: id, UploadId: meta["upload-id"] }).catch(() => undefined);
      await this.deleteKeys([id, `${id}.part`, `${id}.info`]);
      await this.clearCache(id);
      removed++;
      this.log.info({ uploadId: id }, "expired tus upload removed from S3");
    }
    return removed;
  }

  // ---------------------------------------------------------------- results, beside the upload

  async getUploadResult(uploadId: string, opts: { entries?: boolean } = {}): Promise<UploadResult | null> {
    if (!SAFE_ID.test(uploadId)) return null;
    let summary: string;
    try {
      const res = await this.client.getObject({ Bucket: this.bucket, Key: `${uploadId}.result.json` });
      summary = (await res.Body!.transformToString()) as string;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw this.unavailable(err);
    }
    return assembleUploadResult(summary, opts.entries === false ? null : (count) => this.listUploadEntries(uploadId, 0, count));
  }

  async saveUploadResult(result: UploadResult): Promise<void> {
    try {
      await this.client.putObject({
        Bucket: this.bucket,
        Key: `${result.uploadId}.result.json`,
        Body: resultSummaryJson(result),
        ContentType: "application/json",
      });
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  private async readEntryPage(uploadId: string, page: number): Promise<UploadEntryResult[]> {
    try {
      const res = await this.client.getObject({ Bucket: this.bucket, Key: entryPageKey(uploadId, page) });
      return JSON.parse((await res.Body!.transformToString()) as string) as UploadEntryResult[];
    } catch (err) {
      if (isNotFound(err)) return [];
      throw this.unavailable(err);
    }
  }

  async putUploadEntries(uploadId: string, first: number, entries: readonly UploadEntryResult[]): Promise<void> {
    let i = 0;
    while (i < entries.length) {
      const seq = first + i;
      const page = Math.floor(seq / ENTRY_PAGE);
      const offset = seq - page * ENTRY_PAGE;
      const n = Math.min(ENTRY_PAGE - offset, entries.length - i);
      // a page only partly covered is read and rewritten (at most ENTRY_PAGE entries: appending stays O(new))
      const merged = offset === 0 && n === ENTRY_PAGE ? [] : await this.readEntryPage(uploadId, page);
      for (let k = 0; k < n; k++) merged[offset + k] = entries[i + k]!;
      try {
        await this.client.putObject({ Bucket: this.bucket, Key: entryPageKey(uploadId, page), Body: JSON.stringify(merged), ContentType: "application/json" });
      } catch (err) {
        throw this.unavailable(err);
      }
      i += n;
    }
  }

  async listUploadEntries(uploadId: string, first: number, limit: number): Promise<UploadEntryResult[]> {
    if (!SAFE_ID.test(uploadId)) return [];
    const out: UploadEntryResult[] = [];
    for (let page = Math.floor(first / ENTRY_PAGE); out.length < limit; page++) {
      const entries = await this.readEntryPage(uploadId, page);
      if (!entries.length) break;
      const from = Math.max(0, first - page * ENTRY_PAGE);
      out.push(...entries.slice(from, from + limit - out.length));
      if (entries.length < ENTRY_PAGE) break;
    }
    return out;
  }

  /** The entry pages of these uploads' results (listed: how many there are is in the summary, which may be gone). */
  private async deleteEntryPages(ids: ReadonlySet<string>): Promise<void> {
    const keys: string[] = [];
    for (const id of ids) for await (const { key } of this.listKeys(`${id}.result.`)) if (key.endsWith(".entries.json")) keys.push(key);
    for (let i = 0; i < keys.length; i += 1000) await this.deleteKeys(keys.slice(i, i + 1000));
  }

  async resultAgeMs(uploadId: string): Promise<number | null> {
    if (!SAFE_ID.test(uploadId)) return null;
    try {
      const head = await this.client.headObject({ Bucket: this.bucket, Key: `${uploadId}.result.json` });
      return head.LastModified ? Math.max(0, Date.now() - head.LastModified.getTime()) : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw this.unavailable(err);
    }
  }

  async deleteUploadResultsBefore(iso: string): Promise<number> {
    const before = new Date(iso).getTime();
    const old: string[] = [];
    for await (const { key, lastModified } of this.listKeys()) {
      if (key.endsWith(".result.json") && lastModified && lastModified.getTime() < before) old.push(key);
    }
    for (let i = 0; i < old.length; i += 1000) {
      await this.client.deleteObjects({ Bucket: this.bucket, Delete: { Objects: old.slice(i, i + 1000).map((Key) => ({ Key })), Quiet: true } });
    }
    await this.deleteEntryPages(new Set(old.map((k) => k.slice(0, -".result.json".length))));
    return old.length;
  }

  async close(): Promise<void> {
    this.client.destroy();
    this.reader.destroy();
  }
}
