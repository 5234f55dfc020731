/**
 * Encryption at rest for any BlobStore: AES-256-GCM in fixed 64 KiB chunks, so a ranged read (a frame, a bulk
 * data element) fetches and decrypts only the chunks it touches.
 *
 * Object layout (format 1):
 *   header, 48 bytes: "DRLE" | version 1 | 3 zero bytes | key id (8) | salt (32)
 *   chunks: AES-256-GCM(plaintext 64 KiB) | tag (16) ... last chunk: 0 to 64 KiB - 1 bytes | tag (16)
 * - Each object gets its own key: HKDF-SHA256(master key, salt, "dicom-relay blob v1"), with a fresh random
 *   salt per write; the nonce of chunk i is i (96-bit big-endian), unique under that key, never reused.
 * - Additional authenticated data of chunk i: header | i | last-chunk flag | storage key. Chunks cannot be
 *   reordered, dropped from the end, or moved to another object without failing authentication.
 * - The last chunk is always shorter than 64 KiB (empty when the size is a multiple): a full-size chunk is never
 *   last, so a stream cut at a chunk boundary is detected, and the plaintext size follows from the stored size
 *   alone (stat needs no read).
 * - Key id = first 8 bytes of SHA-256("dicom-relay key id" | key): an object written under a key that is not
 *   configured is refused with a sentence (never decrypted into garbage); old keys stay readable after a
 *   rotation through encryption.previousKeyFiles.
 * Plaintext is only released after its chunk's tag has been checked.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import { pipeline, Readable, Transform, type TransformCallback } from "node:stream";
import { ConfigError, type RelayConfig } from "../config.ts";
import { assertSafeKey, type BlobStat, type BlobStore, type ByteRangeRequest } from "./blobStore.ts";

export const CHUNK_SIZE = 64 * 1024;
const TAG = 16;
const RECORD = CHUNK_SIZE + TAG;
const MAGIC = Buffer.from("DRLE");
const VERSION = 1;
export const HEADER_SIZE = 4 + 1 + 3 + 8 + 32;
const HKDF_INFO = Buffer.from("dicom-relay blob v1");
const HEADER_CACHE_MAX = 4096;

/** The object cannot be decrypted: wrong or missing key, tampered or truncated bytes, or not encrypted at all. */
export class EncryptedBlobError extends Error {
  constructor(readonly key: string, message: string, readonly reason: "unknown-key" | "corrupt" | "not-encrypted") {
    super(message);
    this.name = "EncryptedBlobError";
  }
}

export interface EncryptionKey {
  id: string;
  key: Buffer;
}

export function keyIdOf(key: Buffer): string {
  return crypto.createHash("sha256").update("dicom-relay key id").update(key).digest().subarray(0, 8).toString("hex");
}

/** A 256-bit key from text (64 hex digits, or base64 / base64url of 32 bytes) or 32 raw bytes. */
export function parseKey(material: Buffer | string, where: string): EncryptionKey {
  let key: Buffer | null = null;
  if (Buffer.isBuffer(material) && material.length === 32 && !/^[\x20-\x7e\s]*$/.test(material.toString("latin1"))) {
    key = Buffer.from(material);
  } else {
    const text = material.toString().trim();
    if (/^[0-9a-fA-F]{64}$/.test(text)) key = Buffer.from(text, "hex");
    else if (/^[A-Za-z0-9+/_-]{43}=?$/.test(text)) key = Buffer.from(text.replace(/-/g, "+").replace(/_/g, "/"), "base64");
  }
  if (!key || key.length !== 32) {
    throw new ConfigError(`${where} must hold a 256-bit key: 64 hex digits or 32 bytes in base64 (e.g. openssl rand -base64 32)`);
  }
  return { id: keyIdOf(key), key };
}

export interface Keyring {
  /** new objects are written with this key */
  current: EncryptionKey;
  /** every key that may be read, current included, by id */
  byId: Map<string, EncryptionKey>;
}

export function keyring(current: EncryptionKey, previous: EncryptionKey[] = []): Keyring {
  const byId = new Map<string, EncryptionKey>();
  for (const k of [current, ...previous]) byId.set(k.id, k);
  return { current, byId };
}

/** The keyring named by config.encryption (key file preferred over an inline key). */
export function loadKeyring(enc: RelayConfig["encryption"], warn?: (msg: string) => void): Keyring {
  const fromFile = (file: string, name: string): EncryptionKey => {
    let data: Buffer;
    try {
      data = fs.readFileSync(file);
    } catch (err) {
      throw new ConfigError(`cannot read the encryption key file ${file} (${name}): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    try {
      if ((fs.statSync(file).mode & 0o077) !== 0) warn?.(`the encryption key file ${file} can be read by other users; chmod 600 it`);
    } catch {
      // the read above worked; the mode check is advice only
    }
    return parseKey(data, `the encryption key file ${file} (${name})`);
  };
  const current = enc.keyFile ? fromFile(enc.keyFile, "encryption.keyFile") : parseKey(enc.key, "encryption.key (DICOM_RELAY_ENCRYPTION_KEY)");
  const previous = enc.previousKeyFiles
    .split(",")
    .map((f) => f.trim())
    .filter(Boolean)
    .map((f) => fromFile(f, "encryption.previousKeyFiles"));
  return keyring(current, previous);
}

/** Stored size of an object holding `plain` bytes. */
export function encryptedSize(plain: number): number {
  return HEADER_SIZE + Math.floor(plain / CHUNK_SIZE) * RECORD + (plain % CHUNK_SIZE) + TAG;
}

/** Plaintext size of an object stored in `stored` bytes, or null when no object of format 1 has that size. */
export function plaintextSize(stored: number): number | null {
  const body = stored - HEADER_SIZE;
  if (body < TAG) return null;
  const full = Math.floor(body / RECORD);
  const rest = body - full * RECORD;
  if (rest < TAG) return null;
  return full * CHUNK_SIZE + rest - TAG;
}

function nonce(index: number): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(BigInt(index), 4);
  return n;
}

function aad(header: Buffer, index: number, last: boolean, objectKey: string): Buffer {
  const tail = Buffer.alloc(9);
  tail.writeBigUInt64BE(BigInt(index), 0);
  tail[8] = last ? 1 : 0;
  return Buffer.concat([header, tail, Buffer.from(objectKey, "utf8")]);
}

function objectKeyFor(master: Buffer, salt: Buffer): Buffer {
  return Buffer.from(crypto.hkdfSync("sha256", master, salt, HKDF_INFO, 32));
}

interface ObjectCipher {
  header: Buffer;
  key: Buffer;
}

/** Collects incoming buffers and hands out exact-size pieces without copying more than needed. */
class ByteQueue {
  private parts: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    if (b.length) {
      this.parts.push(b);
      this.length += b.length;
    }
  }
  take(n: number): Buffer {
    if (n > this.length) throw new RangeError("ByteQueue underflow");
    const first = this.parts[0];
    if (first && first.length >= n) {
      this.length -= n;
      if (first.length === n) this.parts.shift();
      else this.parts[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const p = this.parts[0]!;
      const k = Math.min(p.length, n - filled);
      p.copy(out, filled, 0, k);
      filled += k;
      if (k === p.length) this.parts.shift();
      else this.parts[0] = p.subarray(k);
    }
    this.length -= n;
    return out;
  }
}

class EncryptStream extends Transform {
  private readonly queue = new ByteQueue();
  private index = 0;
  private headerSent = false;

  constructor(private readonly cipher: ObjectCipher, private readonly objectKey: string) {
    super();
  }

  private seal(plain: Buffer, last: boolean): Buffer {
    const c = crypto.createCipheriv("aes-256-gcm", this.cipher.key, nonce(this.index));
    c.setAAD(aad(this.cipher.header, this.index, last, this.objectKey));
    const out = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
    this.index++;
    return out;
  }

  private sendHeader(): void {
    if (!this.headerSent) {
      this.headerSent = true;
      this.push(this.cipher.header);
    }
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.sendHeader();
    this.queue.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
    while (this.queue.length >= CHUNK_SIZE) this.push(this.seal(this.queue.take(CHUNK_SIZE), false));
    cb();
  }

  override _flush(cb: TransformCallback): void {
    this.sendHeader();
    this.push(this.seal(this.queue.take(this.queue.length), true));
    cb();
  }
}

/**
 * Decrypts records starting at chunk `firstIndex` and releases only the plaintext bytes in [from, to]
 * (offsets in the whole object). `expectChunks`: how many chunks the caller asked for (null = to the end).
 * Given a function instead of a cipher, it first takes the header off the front of the stream.
 */
class DecryptStream extends Transform {
  private readonly queue = new ByteQueue();
  private index: number;
  private seenLast = false;
  private cipher: ObjectCipher | null;

  constructor(
    cipher: ObjectCipher | ((header: Buffer) => ObjectCipher),
    private readonly objectKey: string,
    private readonly firstIndex: number,
    private readonly from: number,
    private readonly to: number,
    private readonly expectChunks: number | null,
    private readonly onAuthFailure: () => void,
  ) {
    super();
    this.index = firstIndex;
    this.cipher = typeof cipher === "function" ? null : cipher;
    if (typeof cipher === "function") this.cipherFor = cipher;
  }

  private cipherFor: ((header: Buffer) => ObjectCipher) | null = null;

  private open(record: Buffer, last: boolean): Buffer {
    const cipher = this.cipher!;
    const d = crypto.createDecipheriv("aes-256-gcm", cipher.key, nonce(this.index));
    d.setAAD(aad(cipher.header, this.index, last, this.objectKey));
    d.setAuthTag(record.subarray(record.length - TAG));
    const body = record.subarray(0, record.length - TAG);
    try {
      return Buffer.concat([d.update(body), d.final()]);
    } catch {
      this.onAuthFailure();
      throw new EncryptedBlobError(this.objectKey, `stored object ${this.objectKey} fails authentication at chunk ${this.index} (altered, truncated or swapped bytes); nothing of that chunk was returned`, "corrupt");
    }
  }

  private release(plain: Buffer): void {
    const start = this.index * CHUNK_SIZE;
    const a = Math.max(this.from, start) - start;
    const b = Math.min(this.to + 1, start + plain.length) - start;
    if (b > a) this.push(a === 0 && b === plain.length ? plain : plain.subarray(a, b));
    this.index++;
  }

  /** Take the header off the front when the cipher comes from it; false while it is still incomplete. */
  private ready(): boolean {
    if (this.cipher) return true;
    if (this.queue.length < HEADER_SIZE) return false;
    this.cipher = this.cipherFor!(this.queue.take(HEADER_SIZE));
    return true;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      if (this.seenLast) throw new EncryptedBlobError(this.objectKey, `stored object ${this.objectKey} has bytes after its last chunk`, "corrupt");
      this.queue.push(chunk);
      if (!this.ready()) return cb();
      // a full record is never the last one (the last chunk is always shorter than CHUNK_SIZE)
      while (this.queue.length >= RECORD) this.release(this.open(this.queue.take(RECORD), false));
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      if (!this.ready()) {
        throw this.queue.length === 0
          ? new EncryptedBlobError(this.objectKey, `stored object ${this.objectKey} is empty: not an encrypted object`, "not-encrypted")
          : new EncryptedBlobError(this.objectKey, `stored object ${this.objectKey} is shorter than an encryption header`, "corrupt");
      }
      const rest = this.queue.length;
      if (rest > 0) {
        if (rest < TAG) throw new EncryptedBlobError(this.objectKey, `stored object ${this.objectKey} is truncated inside a chunk`, "corrupt");
        this.release(this.open(this.queue.take(rest), true));
        this.seenLast = true;
      } else if (this.expectChunks === null || this.index < this.firstIndex + this.expectChunks) {
        // ended on a record boundary: fine only for a range that stopped before the end of the object
        throw new EncryptedBlobError(this.objectKey, `stored object ${this.objectKey} is truncated (its last chunk is missing)`, "corrupt");
      }
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }
}

async function readAll(r: Readable, max: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of r) {
    parts.push(c as Buffer);
    n += (c as Buffer).length;
    if (n >= max) break;
  }
  r.destroy();
  return Buffer.concat(parts).subarray(0, max);
}

export class EncryptedBlobStore implements BlobStore {
  readonly kind: string;
  /** header + object key per storage key: ranged reads (frames) then need one backend read, not two */
  private readonly headers = new Map<string, ObjectCipher>();

  constructor(private readonly inner: BlobStore, private readonly keys: Keyring) {
    this.kind = `encrypted-${inner.kind}`;
  }

  init(): Promise<void> {
    return this.inner.init();
  }

  private newCipher(): ObjectCipher {
    const salt = crypto.randomBytes(32);
    const header = Buffer.alloc(HEADER_SIZE);
    MAGIC.copy(header, 0);
    header[4] = VERSION;
    Buffer.from(this.keys.current.id, "hex").copy(header, 8);
    salt.copy(header, 16);
    return { header, key: objectKeyFor(this.keys.current.key, salt) };
  }

  private cipherFromHeader(objectKey: string, header: Buffer): ObjectCipher {
    if (header.length < HEADER_SIZE || !header.subarray(0, 4).equals(MAGIC)) {
      throw new EncryptedBlobError(objectKey, `stored object ${objectKey} is not encrypted by dicom-relay (written before encryption was enabled, or damaged)`, "not-encrypted");
    }
    if (header[4] !== VERSION) {
      throw new EncryptedBlobError(objectKey, `stored object ${objectKey} uses encryption format ${header[4]}, which this relay does not know`, "corrupt");
    }
    const id = header.subarray(8, 16).toString("hex");
    const k = this.keys.byId.get(id);
    if (!k) {
      throw new EncryptedBlobError(
        objectKey,
        `stored object ${objectKey} was encrypted with key ${id}, which is not configured (configured: ${[...this.keys.byId.keys()].join(", ")}); add it to encryption.previousKeyFiles`,
        "unknown-key",
      );
    }
    return { header: Buffer.from(header.subarray(0, HEADER_SIZE)), key: objectKeyFor(k.key, header.subarray(16, 48)) };
  }

  private remember(key: string, c: ObjectCipher): void {
    if (this.headers.size >= HEADER_CACHE_MAX) this.headers.delete(this.headers.keys().next().value!);
    this.headers.set(key, c);
  }

  private encrypting(key: string, body: Readable): Readable {
    this.headers.delete(key);
    const enc = new EncryptStream(this.newCipher(), key);
    // errors of the source (a client that went away) reach the store through enc
    pipeline(body, enc, () => {});
    return enc;
  }

  async put(key: string, body: Readable, opts?: { size?: number }): Promise<BlobStat> {
    assertSafeKey(key);
    const st = await this.inner.put(key, this.encrypting(key, body), opts?.size !== undefined ? { size: encryptedSize(opts.size) } : undefined);
    return { key, size: this.sizeOf(key, st.size) };
  }

  /** Encrypts the file into the store, then removes the plaintext file (it must not stay on disk). */
  async putFile(key: string, sourcePath: string): Promise<BlobStat> {
    assertSafeKey(key);
    const { size } = await fsp.stat(sourcePath);
    const st = await this.inner.put(key, this.encrypting(key, fs.createReadStream(sourcePath, { highWaterMark: 1 << 20 })), { size: encryptedSize(size) });
    await fsp.rm(sourcePath, { force: true });
    return { key, size: this.sizeOf(key, st.size) };
  }

  private sizeOf(key: string, stored: number): number {
    const n = plaintextSize(stored);
    if (n === null) throw new EncryptedBlobError(key, `stored object ${key} has a size (${stored} bytes) no encrypted object can have: truncated or not encrypted`, "corrupt");
    return n;
  }

  private async cipherOf(key: string): Promise<ObjectCipher> {
    const cached = this.headers.get(key);
    if (cached) return cached;
    const header = await readAll(await this.inner.get(key, { start: 0, end: HEADER_SIZE - 1 }), HEADER_SIZE);
    const c = this.cipherFromHeader(key, header);
    this.remember(key, c);
    return c;
  }

  async get(key: string, range?: ByteRangeRequest): Promise<Readable> {
    assertSafeKey(key);
    if (range && (range.start < 0 || range.end < range.start)) throw new RangeError(`invalid byte range ${range.start}-${range.end}`);
    const forget = () => this.headers.delete(key);
    if (!range) {
      // one read: header then records
      const src = await this.inner.get(key);
      const dec = new DecryptStream((h) => this.cipherFromHeader(key, h), key, 0, 0, Number.MAX_SAFE_INTEGER, null, forget);
      return pipeline(src, dec, () => {});
    }
    const cipher = await this.cipherOf(key);
    const first = Math.floor(range.start / CHUNK_SIZE);
    const last = Math.floor(range.end / CHUNK_SIZE);
    const src = await this.inner.get(key, { start: HEADER_SIZE + first * RECORD, end: HEADER_SIZE + (last + 1) * RECORD - 1 });
    const dec = new DecryptStream(cipher, key, first, range.start, range.end, last - first + 1, forget);
    return pipeline(src, dec, () => {});
  }

  async stat(key: string): Promise<BlobStat | null> {
    const st = await this.inner.stat(key);
    return st ? { key, size: this.sizeOf(key, st.size) } : null;
  }

  async delete(key: string): Promise<boolean> {
    this.headers.delete(key);
    return this.inner.delete(key);
  }

  async *list(prefix?: string): AsyncIterable<BlobStat> {
    for await (const b of this.inner.list(prefix)) {
      // an impossible size is reported as -1 so that fsck flags the object instead of stopping
      yield { key: b.key, size: plaintextSize(b.size) ?? -1 };
    }
  }

  ping(): Promise<void> {
    return this.inner.ping();
  }

  close(): Promise<void> {
    this.headers.clear();
    return this.inner.close();
  }
}
