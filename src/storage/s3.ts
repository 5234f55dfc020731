/**
 * S3 / MinIO BlobStore through the minio client.
 *
 * Uploads run their own multipart loop on the client's part calls (initiate, uploadPart, complete,
 * abort) rather than client.putObject(stream): with minio 8.0.7, putObject never settles when the
 * source stream fails (the error is not forwarded into its part chunker) and leaves the multipart
 * upload behind; it also resumes any unfinished upload of the same key, so two concurrent puts of
 * one key would share parts. Here one part (partSize bytes) is filled while the previous one is sent:
 * memory is two parts per put whatever the object size; an object smaller than one part is a single
 * PUT from one buffer of the object's size (putSingle). Either way S3 makes the object visible only whole
 * (PUT or CompleteMultipartUpload), and a failed put aborts its multipart upload.
 *
 * Connections are kept alive, in two bounded pools: object downloads (held as long as the downstream
 * reader takes) and everything else, so slow readers never starve uploads.
 *
 * Calls fail fast when the backend is gone: connect and idle timeouts on every request (see
 * timedTransport), no client-side retries (the caller answers 503 + Retry-After and the sender
 * retries), and network errors / 5xx mapped to StorageUnavailableError.
 */
import crypto from "node:crypto";
import http from "node:http";
import https from "node:https";
import fsp from "node:fs/promises";
import type { Readable } from "node:stream";
import { ReadCache } from "./readCache.ts";
import { finished } from "node:stream/promises";
import { createRequire } from "node:module";
import type * as Minio from "minio";

// the minio client (~30 MB resident with its dependencies) is loaded when an S3 store is made, not by every relay
let minioModule: typeof Minio | undefined;
const minio = (): typeof Minio => (minioModule ??= createRequire(import.meta.url)("minio") as typeof Minio);
import type { Logger } from "pino";
import {
  assertSafeKey,
  BlobNotFoundError,
  StorageUnavailableError,
  chunksLength,
  firstBytes,
  joinChunks,
  readChunksByRange,
  type BlobStat,
  type BlobStore,
  type ByteRangeRequest,
  type PutOptions,
} from "./blobStore.ts";
import { ConfigError, type RelayConfig } from "../config.ts";

export type S3Settings = RelayConfig["storage"]["s3"];

export interface S3BlobStoreOptions {
  /** TCP connect deadline per request (ms) */
  connectTimeoutMs?: number;
  /** a request whose socket sees no traffic this long fails (ms); object downloads only until their headers */
  idleTimeoutMs?: number;
  log?: Logger;
}

/**
 * Default of storage.s3.maxConnections: kept-alive connections to the backend per pool. A WADO download
 * holds one for as long as the downstream client takes to read (minutes on a slow link), so the bound is
 * high; requests beyond it wait for a free one. Object downloads have a pool of their own, so slow
 * readers never hold the connections that uploads (ingest) need.
 */
export const S3_MAX_SOCKETS = 256;

/** Default of storage.s3.readCacheBytes: small objects read whole, kept in memory (0 turns the cache off). */
export const S3_READ_CACHE_BYTES = 64 * 1024 * 1024;
/** after the backend was found unavailable, the read cache is not used for this long (ms) */
const BACKEND_DOWN_MS = 10_000;
/** objects larger than this are never kept (the WADO read-ahead reads instances up to 1 MiB whole) */
const READ_CACHE_MAX_ENTRY = 1024 * 1024;

/** Error codes of the socket layer that mean "the backend cannot be reached now". */
const NETWORK_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN",
  "ENOTFOUND", "EAI_AGAIN", "ECONNABORTED", "ERR_STREAM_PREMATURE_CLOSE", "ERR_SOCKET_CONNECTION_TIMEOUT",
]);
/** S3 / MinIO error codes of a server that is up but cannot serve now (5xx, throttling, no quorum). */
const UNAVAILABLE_S3_CODES = new Set([
  "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized",
  "XMinioReadQuorum", "XMinioWriteQuorum", "XMinioStorageFull", "XMinioBackendDown", "XMinioOperationTimedOut",
]);

/** Statuses the minio client turns into "Request failed after 0 retries: ... Retryable HTTP status: N". */
const RETRYABLE_STATUS = new Set([408, 429, 499, 500, 502, 503, 504, 520]);
const RETRYABLE_MESSAGE = /Retryable HTTP status: (\d+)/;

class RequestTimeoutError extends Error {
  readonly code = "ETIMEDOUT";
  constructor(what: string, ms: number) {
    super(`S3 request ${what} timed out after ${ms} ms`);
  }
}

/**
 * http(s).request with a connect deadline and an idle deadline. The idle deadline is dropped once an
 * object download (GET without a sub-resource query) has its headers: the body is then read at the
 * pace of the downstream client, which may pause for long (backpressure) without the backend being
 * at fault.
 */
function timedTransport(mod: typeof http | typeof https, connectMs: number, idleMs: number, downloadAgent: http.Agent): Pick<typeof http, "request"> {
  const request = (options: http.RequestOptions, callback?: (res: http.IncomingMessage) => void): http.ClientRequest => {
    const isObjectDownload = (options.method ?? "GET") === "GET" && !String(options.path ?? "").includes("?");
    const req = mod.request(isObjectDownload ? { ...options, agent: downloadAgent } : options, callback);
    const label = `${options.method ?? "GET"} ${String(options.path ?? "/").split("?")[0]}`;
    req.setTimeout(idleMs, () => req.destroy(new RequestTimeoutError(label, idleMs)));
    req.once("socket", (socket) => {
      if (!socket.connecting) return;
      const timer = setTimeout(() => req.destroy(new RequestTimeoutError(`${label} (connect)`, connectMs)), connectMs);
      socket.once("connect", () => clearTimeout(timer));
      req.once("close", () => clearTimeout(timer));
    });
    req.once("response", (res) => {
      // the client throws on these statuses without reading the body: drain it, or the keep-alive
      // socket stays busy for ever
      if (RETRYABLE_STATUS.has(res.statusCode ?? 0)) res.resume();
      else if (isObjectDownload) req.setTimeout(0);
    });
    return req;
  };
  return { request } as unknown as Pick<typeof http, "request">;
}

/** The first size bytes of an open file; fails when the file is shorter (it changed under us). */
async function readExactly(handle: fsp.FileHandle, size: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(size);
  let filled = 0;
  while (filled < size) {
    const { bytesRead } = await handle.read(buf, filled, size - filled, filled);
    if (bytesRead === 0) throw new Error(`file shrank while being read: expected ${size} bytes, got ${filled}`);
    filled += bytesRead;
  }
  return buf;
}

function errorCode(err: unknown): string {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  return String(e?.code ?? e?.cause?.code ?? "");
}

export class S3BlobStore implements BlobStore {
  readonly kind = "s3";
  private readonly client: Minio.Client;
  private readonly agent: http.Agent;
  private readonly downloadAgent: http.Agent;
  private readonly bucket: string;
  /** "" or "some/prefix/" */
  private readonly prefix: string;
  private readonly partSize: number;
  /** small objects read whole (WADO-RS of many small instances), kept in memory: storage.s3.readCacheBytes */
  private readonly cache: ReadCache;
  /** when a request last found the backend unavailable (ms since epoch) */
  private unavailableAt = 0;
  private readonly log?: Logger;
  private readonly where: string;

  constructor(private readonly settings: S3Settings, opts: S3BlobStoreOptions = {}) {
    if (!settings.endpoint) {
      throw new ConfigError(`storage.s3.endpoint (DICOM_RELAY_STORAGE_S3_ENDPOINT) is required when storage.kind is s3, e.g. http://127.0.0.1:9000`);
    }
    let url: URL;
    try {
      url = new URL(settings.endpoint);
    } catch {
      throw new ConfigError(`storage.s3.endpoint "${settings.endpoint}" is not a URL (expected e.g. http://127.0.0.1:9000)`);
    }
    if ((url.protocol !== "http:" && url.protocol !== "https:") || (url.pathname !== "/" && url.pathname !== "") || url.search) {
      throw new ConfigError(`storage.s3.endpoint "${settings.endpoint}" must be http(s)://host[:port] with no path`);
    }
    if (!settings.accessKey || !settings.secretKey) {
      throw new ConfigError("storage.s3.accessKey and storage.s3.secretKey (DICOM_RELAY_STORAGE_S3_ACCESS_KEY / _SECRET_KEY) are required when storage.kind is s3");
    }
    const prefix = settings.prefix.replace(/^\/+|\/+$/g, "");
    if (prefix) {
      try {
        assertSafeKey(prefix);
      } catch {
        throw new ConfigError(`storage.s3.prefix "${settings.prefix}" must be slash-separated letters, digits, ".", "_" or "-"`);
      }
    }
    this.prefix = prefix ? prefix + "/" : "";
    this.bucket = settings.bucket;
    this.partSize = settings.partSize;
    this.cache = new ReadCache(settings.readCacheBytes ?? S3_READ_CACHE_BYTES, READ_CACHE_MAX_ENTRY);
    this.log = opts.log;
    this.where = `s3 bucket ${settings.bucket} at ${url.origin}`;

    const useSSL = url.protocol === "https:";
    const connectMs = opts.connectTimeoutMs ?? 5_000;
    const idleMs = opts.idleTimeoutMs ?? 30_000;
    // keep-alive: a PUT or GET per instance must not pay a TCP (and TLS) handshake each
    const maxSockets = settings.maxConnections ?? S3_MAX_SOCKETS;
    const agentOptions = { keepAlive: true, maxSockets, maxFreeSockets: Math.min(maxSockets, 32) };
    this.agent = useSSL ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
    this.downloadAgent = useSSL ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
    this.client = new (minio().Client)({
      endPoint: url.hostname.replace(/^\[|\]$/g, ""),
      port: url.port ? Number(url.port) : useSSL ? 443 : 80,
      useSSL,
      accessKey: settings.accessKey,
      secretKey: settings.secretKey,
      region: settings.region,
      pathStyle: settings.pathStyle,
      partSize: settings.partSize,
      transport: timedTransport(useSSL ? https : http, connectMs, idleMs, this.downloadAgent),
      transportAgent: this.agent,
      // no hidden retries (they also print to the console): failures surface as 503 to the sender
      retryOptions: { disableRetry: true },
    });
  }

  private name(key: string): string {
    assertSafeKey(key);
    return this.prefix + key;
  }

  /** Backend failures as the BlobStore errors callers understand; anything else unchanged. */
  private mapError(err: unknown, key?: string): unknown {
    const mapped = this.mapErrorOf(err, key);
    if (mapped instanceof StorageUnavailableError) this.unavailableAt = Date.now();
    return mapped;
  }

  private mapErrorOf(err: unknown, key?: string): unknown {
    if (err instanceof BlobNotFoundError || err instanceof StorageUnavailableError) return err;
    const code = errorCode(err);
    if ((code === "NoSuchKey" || code === "NotFound") && key !== undefined) return new BlobNotFoundError(key);
    const message = (err as Error)?.message ?? "";
    if (NETWORK_CODES.has(code) || UNAVAILABLE_S3_CODES.has(code) || RETRYABLE_MESSAGE.test(message) || /socket hang up/i.test(message)) {
      return new StorageUnavailableError(`${this.where} is unavailable: ${(err as Error)?.message || code}`, { cause: err });
    }
    if (code === "NoSuchBucket") {
      return new StorageUnavailableError(`${this.where}: the bucket does not exist`, { cause: err });
    }
    return err;
  }

  async init(): Promise<void> {
    let exists: boolean;
    try {
      exists = await this.client.bucketExists(this.bucket);
      if (!exists && this.settings.createBucket) {
        try {
          await this.client.makeBucket(this.bucket, this.settings.region);
        } catch (err) {
          // another node created it at the same moment
          if (!["BucketAlreadyOwnedByYou", "BucketAlreadyExists"].includes(errorCode(err))) throw err;
        }
        this.log?.info({ bucket: this.bucket }, "created the S3 bucket");
        exists = true;
      }
    } catch (err) {
      throw this.mapError(err);
    }
    if (!exists) {
      throw new Error(
        `the S3 bucket "${this.bucket}" does not exist at ${this.where.replace(/^s3 bucket \S+ at /, "")}: create it, ` +
          `or set storage.s3.createBucket=true (DICOM_RELAY_STORAGE_S3_CREATE_BUCKET=true)`,
      );
    }
  }

  async put(key: string, body: Readable, opts: PutOptions = {}): Promise<BlobStat> {
    this.cache.delete(key);
    let name: string;
    try {
      name = this.name(key);
    } catch (err) {
      body.destroy();
      throw err;
    }
    try {
      return { key, size: await this.upload(name, body, opts.size, opts.sha256) };
    } catch (err) {
      body.destroy();
      throw this.mapError(err, key);
    }
  }

  /** Streams body into the object; returns its size. Nothing is committed when expectedSize differs. */
  private async upload(name: string, body: Readable, expectedSize?: number, sha256?: string): Promise<number> {
    const partSize = this.partSize;
    // an object of known size below one part gets one buffer of its own size (one PUT), not two
    // partSize buffers; part buffers are allocated only when a part is actually filled
    const cap = expectedSize !== undefined && expectedSize < partSize ? expectedSize : partSize;
    const buffers: (Buffer | undefined)[] = [undefined, undefined];
    let current = 0;
    let filled = 0;
    let total = 0;
    let uploadId: string | null = null;
    let parts = 0;
    const etags: { part: number; etag: string }[] = [];
    // the part in flight while the next one fills; its failure is observed when awaited
    let inFlight: Promise<void> | null = null;

    const sendPart = async (): Promise<void> => {
      if (inFlight) await inFlight;
      // S3 allows 10,000 parts: partSize bounds the largest object (16 MiB parts: 156 GiB)
      if (parts >= 10_000) throw new Error(`object ${name} exceeds 10,000 parts of ${partSize} bytes: raise storage.s3.partSize`);
      uploadId ??= await this.client.initiateNewMultipartUpload(this.bucket, name, {});
      const part = ++parts;
      const payload = buffers[current]!.subarray(0, filled);
      const id = uploadId;
      const sending = this.client
        .uploadPart({ bucketName: this.bucket, objectName: name, uploadID: id, partNumber: part, headers: { "Content-Length": payload.length } }, payload)
        .then((res) => {
          etags[part - 1] = { part, etag: res.etag };
        });
      sending.catch(() => undefined); // observed later; never an unhandled rejection
      inFlight = sending;
      current = 1 - current;
      filled = 0;
    };

    try {
      for await (const raw of body) {
        let chunk: Buffer = Buffer.isBuffer(raw) ? raw : Buffer.from(raw as Uint8Array | string);
        while (chunk.length > 0) {
          if (filled === cap && cap < partSize) throw new Error(`put ${name}: expected ${expectedSize} bytes, the stream gave more`);
          const buffer = (buffers[current] ??= Buffer.allocUnsafe(cap));
          const n = Math.min(chunk.length, cap - filled);
          chunk.copy(buffer, filled, 0, n);
          filled += n;
          total += n;
          chunk = chunk.subarray(n);
          if (filled === partSize) await sendPart();
        }
      }
      if (expectedSize !== undefined && total !== expectedSize) {
        // the stream ended early (or ran long): it must not replace the object announced
        throw new Error(`put ${name}: expected ${expectedSize} bytes, the stream gave ${total}`);
      }
      if (uploadId === null && inFlight === null) {
        // smaller than one part: a single PUT
        await this.putSingle(name, (buffers[current] ?? Buffer.alloc(0)).subarray(0, filled), sha256);
        return total;
      }
      if (filled > 0) await sendPart();
      if (inFlight) await inFlight;
      await this.client.completeMultipartUpload(this.bucket, name, uploadId!, etags);
      return total;
    } catch (err) {
      if (inFlight) await (inFlight as Promise<void>).catch(() => undefined);
      if (uploadId) {
        const id: string = uploadId;
        await this.client.abortMultipartUpload(this.bucket, name, id).catch((abortErr: unknown) => {
          // harmless but costs space until a bucket lifecycle rule removes it
          this.log?.warn({ err: abortErr, object: name }, "could not abort an S3 multipart upload");
        });
      }
      throw err;
    }
  }

  /**
   * One PUT of a whole object held in memory (smaller than one part). Over http the request is signed
   * with the payload's SHA-256 and MinIO / S3 refuses a body that does not match it: the hash the caller
   * already has (the instance's, computed while it was spooled) is used as is, else it is computed here,
   * once (putObject would also copy the buffer and compute an MD5 nobody checks over http). Over https
   * the client's putObject (unsigned payload + Content-MD5) is kept.
   */
  private async putSingle(name: string, body: Buffer, sha256?: string): Promise<void> {
    if (!this.client.enableSHA256) {
      await this.client.putObject(this.bucket, name, body, body.length);
      return;
    }
    const payloadHash = sha256 && /^[0-9a-f]{64}$/.test(sha256) ? sha256 : crypto.createHash("sha256").update(body).digest("hex");
    const res = await this.client.makeRequestStreamAsync(
      { method: "PUT", bucketName: this.bucket, objectName: name, headers: { "Content-Length": String(body.length) } },
      body, payloadHash, [200], "",
    );
    res.resume(); // an empty body; reading it frees the keep-alive socket
    await finished(res);
  }

  async putFile(key: string, sourcePath: string, opts: Pick<PutOptions, "sha256"> = {}): Promise<BlobStat> {
    this.cache.delete(key);
    const name = this.name(key);
    let stat: BlobStat;
    const handle = await fsp.open(sourcePath, "r");
    try {
      const size = (await handle.stat()).size;
      if (size < this.partSize) {
        // one read into a buffer of the object's size and one PUT: a read stream would allocate its
        // 1 MiB highWaterMark per read (and copy short reads), which cost more CPU than the PUT itself
        const body = await readExactly(handle, size);
        try {
          await this.putSingle(name, body, opts.sha256);
        } catch (err) {
          throw this.mapError(err, key);
        }
        stat = { key, size };
      } else {
        stat = await this.put(key, handle.createReadStream({ highWaterMark: 1024 * 1024, autoClose: false }), { size });
      }
    } finally {
      await handle.close();
    }
    // same contract as fs (which moves the file): the caller never reuses sourcePath
    await fsp.unlink(sourcePath).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
    });
    return stat;
  }

  async get(key: string, range?: ByteRangeRequest): Promise<Readable> {
    const name = this.name(key);
    try {
      if (range) {
        if (!Number.isInteger(range.start) || !Number.isInteger(range.end) || range.start < 0 || range.end < range.start) {
          throw new RangeError(`invalid byte range ${range.start}-${range.end}`);
        }
        return await this.client.getPartialObject(this.bucket, name, range.start, range.end - range.start + 1);
      }
      return await this.client.getObject(this.bucket, name);
    } catch (err) {
      if (errorCode(err) === "InvalidRange") throw new RangeError(`byte range ${range?.start}-${range?.end} is outside ${key}`);
      throw this.mapError(err, key);
    }
  }

  /**
   * A small object's first `size` bytes as the chunks its response arrived in: from the read cache, else one ranged
   * GET (kept in the cache when it is small enough). Chunks handed out are shared: callers only read them.
   */
  async readChunks(key: string, size: number): Promise<readonly Buffer[]> {
    // while the backend fails, reads fail too (not from the cache): a study half in the cache would begin 200 and
    // break off at the first instance it lacks; a clean 503 with Retry-After lets the client retry the whole retrieve
    const cached = Date.now() - this.unavailableAt > BACKEND_DOWN_MS ? this.cache.get(key) : undefined;
    if (cached && chunksLength(cached) >= size) return firstBytes(cached, size);
    const chunks = await readChunksByRange(this, key, size);
    this.cache.set(key, chunks);
    return chunks;
  }

  /** readChunks in one buffer. */
  async readWhole(key: string, size: number): Promise<Buffer> {
    return joinChunks(await this.readChunks(key, size));
  }

  async stat(key: string): Promise<BlobStat | null> {
    const name = this.name(key);
    try {
      const st = await this.client.statObject(this.bucket, name);
      return { key, size: st.size };
    } catch (err) {
      const mapped = this.mapError(err, key);
      if (mapped instanceof BlobNotFoundError) return null;
      throw mapped;
    }
  }

  async delete(key: string): Promise<boolean> {
    this.cache.delete(key);
    // S3 DELETE succeeds for absent keys too: ask first to tell the caller whether something went
    if (!(await this.stat(key))) return false;
    try {
      await this.client.removeObject(this.bucket, this.name(key));
      return true;
    } catch (err) {
      throw this.mapError(err, key);
    }
  }

  async *list(prefix = ""): AsyncIterable<BlobStat> {
    const stream = this.client.listObjectsV2(this.bucket, this.prefix + prefix, true);
    try {
      for await (const item of stream as AsyncIterable<{ name?: string; size?: number }>) {
        if (item.name === undefined) continue; // common prefixes do not occur in a recursive listing
        yield { key: item.name.slice(this.prefix.length), size: item.size ?? 0 };
      }
    } catch (err) {
      throw this.mapError(err);
    } finally {
      stream.destroy();
    }
  }

  async ping(): Promise<void> {
    let exists: boolean;
    try {
      exists = await this.client.bucketExists(this.bucket);
    } catch (err) {
      const mapped = this.mapError(err);
      throw mapped instanceof StorageUnavailableError ? mapped : new StorageUnavailableError(`${this.where}: ${(err as Error).message}`, { cause: err });
    }
    if (!exists) throw new StorageUnavailableError(`${this.where}: the bucket does not exist`);
  }

  async close(): Promise<void> {
    this.agent.destroy();
    this.downloadAgent.destroy();
  }
}
