import type { Readable } from "node:stream";

/** What storage knows of one object: its opaque key and its size in bytes. */
export interface BlobStat {
  key: string;
  size: number;
}

/** Inclusive byte range, as HTTP Range and S3 GetObject use it. */
export interface ByteRangeRequest {
  start: number;
  /** inclusive */
  end: number;
}

export interface PutOptions {
  /** the body's length in bytes, when known: a body of another length stores nothing */
  size?: number;
  /**
   * hex SHA-256 of the body, when the caller already computed it. A store may use it instead of hashing
   * again (S3 over http: the signed payload hash) and then refuses a body that does not match it,
   * storing nothing; a store may also ignore it (fs).
   */
  sha256?: string;
}

/**
 * One extension point for where instance bytes live (local disk by default, S3/MinIO at scale).
 * Keys are opaque, chosen by the ingest pipeline (never a raw UID or a client-supplied name);
 * every implementation still checks them with assertSafeKey.
 * Contract: test/contracts/blobStore.ts runs against every implementation.
 */
export interface BlobStore {
  readonly kind: string;
  /** Prepare the store (create directories / bucket). Idempotent. */
  init(): Promise<void>;
  /**
   * Store a stream under key. Atomic: readers see either no object or the whole object, never a
   * partial one, even if the process dies mid-write. Overwrites an existing object.
   */
  put(key: string, body: Readable, opts?: PutOptions): Promise<BlobStat>;
  /**
   * Store a local file under key. Same guarantees as put(); an implementation may move the file
   * (fs: rename) instead of copying. Once it resolves, sourcePath no longer exists (moved or removed).
   */
  putFile(key: string, sourcePath: string, opts?: Pick<PutOptions, "sha256">): Promise<BlobStat>;
  /**
   * Optional: store bytes already in memory (a small instance's chunks as they arrived), same guarantees as put().
   * A stream per small instance costs more than its bytes (fs: one vectored write instead of a write stream, about
   * half the time). Stores without it are given Readable.from(chunks) through put().
   */
  putBuffers?(key: string, chunks: readonly Buffer[], opts?: PutOptions): Promise<BlobStat>;
  /** Stream the object (or an inclusive byte range of it). Rejects with BlobNotFoundError. */
  get(key: string, range?: ByteRangeRequest): Promise<Readable>;
  /**
   * Optional: the first `size` bytes of a small object in one buffer, without a stream (a WADO-RS retrieve of many
   * small instances pays per stream). Rejects with BlobNotFoundError, or an Error when the object is shorter.
   * Stores without it are read through get().
   */
  readWhole?(key: string, size: number): Promise<Buffer>;
  /**
   * Optional, as readWhole, but the bytes as the chunks they arrived in (a remote store's response), not joined into
   * one buffer: joining copies every byte once more and doubles the memory the garbage collector has to chase
   * (WADO-RS writes the chunks to the socket as they are). Preferred to readWhole where a store has both.
   */
  readChunks?(key: string, size: number): Promise<readonly Buffer[]>;
  /**
   * Optional: the caller is done with a buffer readWhole() returned, and nothing refers to it any more (its bytes are
   * on the socket, or it was dropped unsent); the store may read into its memory again. Never called before that.
   */
  releaseBuffer?(bytes: Buffer): void;
  /** Size of the object, or null when it does not exist. */
  stat(key: string): Promise<BlobStat | null>;
  /** Remove the object; true when something was removed. */
  delete(key: string): Promise<boolean>;
  /** Every object under a key prefix (for fsck). */
  list(prefix?: string): AsyncIterable<BlobStat>;
  /** Cheap liveness probe for /readyz; throws StorageUnavailableError when the backend is down. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export class BlobNotFoundError extends Error {
  constructor(readonly key: string) {
    super(`no stored object under key ${key}`);
    this.name = "BlobNotFoundError";
  }
}

/** The backend cannot be reached right now: HTTP layers answer 503 with Retry-After. */
export class StorageUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StorageUnavailableError";
  }
}

const SAFE_KEY = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;

/** Bytes held as the chunks they were read in. */
export function chunksLength(chunks: readonly Buffer[]): number {
  let n = 0;
  for (const c of chunks) n += c.length;
  return n;
}

/** The first `size` bytes of chunks (views into them, nothing copied); all of them when they hold no more. */
export function firstBytes(chunks: readonly Buffer[], size: number): readonly Buffer[] {
  const out: Buffer[] = [];
  let left = size;
  for (const c of chunks) {
    if (left <= 0) break;
    out.push(c.length <= left ? c : c.subarray(0, left));
    left -= c.length;
  }
  return out;
}

/** Chunks as one buffer (the buffer itself when there is one chunk; an empty one for none). */
export function joinChunks(chunks: readonly Buffer[]): Buffer {
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks as Buffer[]);
}

/**
 * An object's first `size` bytes as the chunks one ranged get() gave: what a store without its own readWhole gives
 * (and S3 on a cache miss). An object shorter than `size` is an error, never short bytes.
 */
export async function readChunksByRange(store: Pick<BlobStore, "get">, key: string, size: number): Promise<readonly Buffer[]> {
  if (size === 0) return [];
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of await store.get(key, { start: 0, end: size - 1 })) {
    chunks.push(c as Buffer);
    n += (c as Buffer).length;
  }
  if (n < size) throw new Error(`the stored object ${key} has ${n} bytes, fewer than the ${size} expected`);
  return n === size ? chunks : firstBytes(chunks, size);
}

/** Keys are relative, slash-separated, with no empty, "." or ".." segments and no odd characters. */
export function assertSafeKey(key: string): void {
  if (typeof key !== "string" || key.length === 0 || key.length > 512 || !SAFE_KEY.test(key) ||
      key.split("/").some((seg) => seg === "." || seg === "..")) {
    throw new Error(`unsafe storage key: ${JSON.stringify(key)}`);
  }
}

/** Content-addressed key for instance bytes: identical bytes are one object. */
export function instanceBlobKey(sha256Hex: string): string {
  if (!/^[0-9a-f]{64}$/.test(sha256Hex)) throw new Error(`not a SHA-256 hex digest: ${sha256Hex}`);
  return `instances/${sha256Hex.slice(0, 2)}/${sha256Hex.slice(2, 4)}/${sha256Hex}.dcm`;
}
