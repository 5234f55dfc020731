/**
 * Bundles: one tus upload holding many instances, as tar, tar.gz or zip (or a single file, possibly gzipped).
 * Entries stream out one at a time; names are labels only, never paths; directories, links and devices are skipped.
 * Decompression bombs are refused while streaming: bytes per entry, bytes in total, entries, and the ratio of
 * expanded to compressed bytes are all counted as they flow.
 *
 * tar and tar.gz are read as streams by a small tar reader here (one pull loop, constant memory, exact limits).
 * zip needs random access (its central directory is at the end and is the authority on entries), so it is read
 * with yauzl from a file: the upload's own file when a path is given (tus uploads are on disk), else the stream is
 * first spooled to a temporary file, capped at the total limit, and removed afterwards.
 */
import { createReadStream, createWriteStream, promises as fsp } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import tar from "tar-stream";
import yauzl from "yauzl";
import { PulledPart } from "../dicom/multipart.ts";

/** The bundle as a whole is refused (bomb, corrupt or cut-short archive); message is a sentence for the sender. */
export class BundleError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "BundleError";
  }
}

export type BundleKind = "tar" | "tgz" | "zip" | "single" | "gzip";

export interface BundleEntry {
  /** the name inside the archive, as a label only ("" for a single file without opts.name) */
  name: string;
  /** expanded size when the archive says it */
  size?: number;
  body: Readable;
}

export interface BundleOptions {
  /** "auto" (default) looks at the magic bytes: gzip 1f8b, zip PK\x03\x04, "ustar" at 257, else a single file */
  kind?: "auto" | "tar" | "tgz" | "zip" | "single";
  /** largest entry, expanded */
  maxEntryBytes: number;
  /** most bytes all entries (for tar: the whole expanded archive) may expand to */
  maxTotalUncompressedBytes?: number;
  /** the same limit under the config's name (transfers.bundle.maxTotalBytes); the smaller wins if both are given */
  maxTotalBytes?: number;
  /** most entries (every archive member counts, skipped ones too) */
  maxEntries: number;
  /** largest expanded/compressed ratio for gzip and zip, checked once more than RATIO_FLOOR_BYTES have expanded */
  maxCompressionRatio: number;
  /** the bundle's file on disk when source is a stream of it: lets a zip be read in place */
  filePath?: string;
  /** label for a single (non-archive) file */
  name?: string;
}

/** The entries, plus the kind detected (set once the first bytes are read). */
export type BundleEntries = AsyncGenerator<BundleEntry, void, undefined> & { readonly kind: BundleKind | null };

/** Ratios are not judged below this many expanded bytes: tiny archives of zero-padded headers compress very well. */
export const RATIO_FLOOR_BYTES = 1024 * 1024;

const BLOCK = 512;
const MAX_PAX_BYTES = 1024 * 1024;
const MAX_LONG_NAME_BYTES = 64 * 1024;
const STEP_BYTES = 64 * 1024;

/**
 * Read the entries of a bundle from a stream or a file path. Each entry's body must be read (or left: asking for the
 * next entry discards the rest) before the next entry comes. Limits exceeded or a damaged archive throw BundleError;
 * an error of the source itself (a disk read) is thrown as it is. The source is consumed and destroyed.
 */
export function readBundleEntries(source: Readable | string, opts: BundleOptions): BundleEntries {
  const state: { kind: BundleKind | null } = { kind: null };
  const gen = entries(source, opts, state);
  Object.defineProperty(gen, "kind", { get: () => state.kind, enumerable: true });
  return gen as BundleEntries;
}

// ---------------------------------------------------------------- limits

class Limits {
  readonly maxTotal: number;
  expanded = 0;
  compressed = 0;
  entries = 0;
  constructor(readonly o: BundleOptions) {
    const totals = [o.maxTotalUncompressedBytes, o.maxTotalBytes].filter((x): x is number => typeof x === "number");
    if (!totals.length) throw new TypeError("readBundleEntries needs maxTotalUncompressedBytes (or maxTotalBytes)");
    this.maxTotal = Math.min(...totals);
    for (const [k, v] of Object.entries({ maxEntryBytes: o.maxEntryBytes, maxEntries: o.maxEntries, maxCompressionRatio: o.maxCompressionRatio, maxTotal: this.maxTotal })) {
      if (!(typeof v === "number" && v > 0)) throw new TypeError(`readBundleEntries: ${k} must be a positive number`);
    }
  }

  addExpanded(n: number): void {
    this.expanded += n;
    if (this.expanded > this.maxTotal) throw tooBig(this.maxTotal);
  }

  checkRatio(expanded: number, compressed: number): void {
    if (expanded > RATIO_FLOOR_BYTES && expanded > this.o.maxCompressionRatio * Math.max(compressed, 1)) {
      throw new BundleError(
        `the bundle expands more than ${this.o.maxCompressionRatio} times its compressed size; it was refused as a possible decompression bomb`,
      );
    }
  }

  addEntry(): void {
    this.entries++;
    if (this.entries > this.o.maxEntries) {
      throw new BundleError(`the bundle holds more than ${this.o.maxEntries} entries, more than the relay takes in one upload; split it into several bundles`);
    }
  }

  checkEntrySize(name: string, size: number): void {
    if (size > this.o.maxEntryBytes) {
      throw new BundleError(`the entry "${label(name)}" expands to ${size} bytes, more than the ${this.o.maxEntryBytes} bytes the relay takes for one file`);
    }
  }
}

function tooBig(n: number): BundleError {
  return new BundleError(`the bundle expands to more than ${n} bytes; it was refused as a possible decompression bomb`);
}

/** An entry name fit for a message: short, no control characters. */
function label(name: string): string {
  // eslint-disable-next-line no-control-regex
  const s = name.replace(/[\x00-\x1f\x7f]/g, "?");
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

// ---------------------------------------------------------------- bytes pulled from a stream

/** Buffered pulls from a chunk source: exact reads for headers, bounded chunks for bodies. */
class Bytes {
  buf: Buffer = Buffer.alloc(0);
  private eof = false;
  constructor(private readonly nextChunk: () => Promise<Buffer | null>) {}

  async ensure(n: number): Promise<boolean> {
    // each turn adds a chunk or ends: bounded by the source
    while (this.buf.length < n) {
      if (this.eof) return false;
      const c = await this.nextChunk();
      if (c === null) this.eof = true;
      else if (c.length) this.buf = this.buf.length ? Buffer.concat([this.buf, c]) : c;
    }
    return true;
  }

  take(n: number): Buffer {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Up to max bytes (at least one), or null at the end. */
  async chunk(max: number): Promise<Buffer | null> {
    if (!this.buf.length && !(await this.ensure(1))) return null;
    return this.take(Math.min(max, this.buf.length));
  }

  /** Everything left: the buffered bytes first, then the rest of the source. */
  async *rest(): AsyncGenerator<Buffer> {
    if (this.buf.length) yield this.take(this.buf.length);
    // each turn consumes one chunk of a finite source
    while (!this.eof) {
      const c = await this.nextChunk();
      if (c === null) this.eof = true;
      else if (c.length) yield c;
    }
  }
}

/** Chunks of a Readable (its async iterator: stopping destroys it, which is what an owned source wants). */
function chunksOf(s: Readable): { next: () => Promise<Buffer | null>; close: () => void } {
  const it = s[Symbol.asyncIterator]();
  return {
    next: async () => {
      const r = await it.next();
      return r.done ? null : typeof r.value === "string" ? Buffer.from(r.value) : (r.value as Buffer);
    },
    close: () => {
      if (!s.destroyed) s.destroy();
    },
  };
}

// ---------------------------------------------------------------- the generator

async function* entries(source: Readable | string, opts: BundleOptions, state: { kind: BundleKind | null }): AsyncGenerator<BundleEntry> {
  const limits = new Limits(opts);
  const filePath = typeof source === "string" ? source : opts.filePath;
  const stream = typeof source === "string" ? createReadStream(source) : source;
  const raw = chunksOf(stream);
  const cleanups: (() => unknown)[] = [raw.close];
  try {
    const head = new Bytes(async () => {
      const c = await raw.next();
      if (c) limits.compressed += c.length;
      return c;
    });
    await head.ensure(262);
    let kind: BundleKind = opts.kind && opts.kind !== "auto" ? opts.kind : detect(head.buf);
    if (kind === "tgz" && !(head.buf[0] === 0x1f && head.buf[1] === 0x8b)) {
      throw new BundleError("the bundle was sent as tar.gz but is not gzip-compressed");
    }
    if (kind === "zip") {
      state.kind = "zip";
      let zipPath = filePath;
      if (!zipPath) {
        const spooled = await spool(head, limits.maxTotal);
        cleanups.push(() => fsp.rm(spooled.dir, { recursive: true, force: true }));
        zipPath = spooled.path;
      }
      raw.close();
      yield* zipEntries(zipPath, limits);
      return;
    }
    if (kind === "tar" || kind === "single") {
      // uncompressed: the archive's bytes are the expanded bytes
      const src = new Bytes(async () => {
        const c = await head.chunk(STEP_BYTES);
        if (c) limits.addExpanded(c.length);
        return c;
      });
      state.kind = kind;
      if (kind === "tar") yield* tarEntries(src, limits);
      else yield* singleEntry(src, limits, opts.name ?? "", filePath ? await fileSize(filePath) : undefined);
      return;
    }
    // gzip: what is inside decides between tar.gz and a single gzipped file
    // 128 kB out per inflate call, not zlib's 16 kB: each call is a hop to libuv's threads and back, and every chunk
    // a step of the tar reader and the ingest (a 500 MB push made 32,000 of them)
    const gunzip = createGunzip({ chunkSize: 128 * 1024 });
    cleanups.push(() => gunzip.destroy());
    let sourceError: unknown = null;
    const feed = Readable.from(
      (async function* () {
        try {
          yield* head.rest();
        } catch (err) {
          sourceError = err;
          throw err;
        }
      })(),
    );
    cleanups.push(() => feed.destroy());
    pipeline(feed, gunzip).catch(() => undefined); // errors surface on gunzip's reads below
    const inflated = chunksOf(gunzip);
    const src = new Bytes(async () => {
      let c: Buffer | null;
      try {
        c = await inflated.next();
      } catch (err) {
        if (err === sourceError || err instanceof BundleError) throw err;
        throw new BundleError(`the gzip data is damaged or cut short (${(err as Error).message}); the bundle was refused`, { cause: err });
      }
      if (c) {
        limits.addExpanded(c.length);
        limits.checkRatio(limits.expanded, limits.compressed);
      }
      return c;
    });
    await src.ensure(262);
    kind = opts.kind === "tgz" || isTar(src.buf) ? "tgz" : "gzip";
    state.kind = kind;
    if (kind === "tgz") yield* tarEntries(src, limits);
    else yield* singleEntry(src, limits, opts.name ?? "", undefined);
  } finally {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {
        // cleanup is best effort: the entries are already read or refused
      }
    }
  }
}

function isTar(b: Buffer): boolean {
  return b.length >= 262 && b.subarray(257, 262).toString("latin1") === "ustar";
}

function detect(b: Buffer): BundleKind {
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return "tgz"; // refined after inflating the first bytes
  if (b.length >= 4 && b[0] === 0x50 && b[1] === 0x4b && ((b[2] === 3 && b[3] === 4) || (b[2] === 5 && b[3] === 6))) return "zip";
  if (isTar(b)) return "tar";
  return "single";
}

async function fileSize(path: string): Promise<number | undefined> {
  try {
    return (await fsp.stat(path)).size;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- single file

async function* singleEntry(src: Bytes, limits: Limits, name: string, size: number | undefined): AsyncGenerator<BundleEntry> {
  limits.addEntry();
  if (size !== undefined) limits.checkEntrySize(name, size);
  let seen = 0;
  const part = new PulledPart(async () => {
    const c = await src.chunk(STEP_BYTES);
    if (c) {
      seen += c.length;
      if (seen > limits.o.maxEntryBytes) limits.checkEntrySize(name, seen);
    }
    return c;
  });
  try {
    yield { name, size, body: part.body };
    await part.finish();
  } finally {
    if (!part.body.destroyed && !part.body.readableEnded) part.body.destroy();
  }
}

// ---------------------------------------------------------------- tar

interface TarHeader {
  name: string;
  size: number;
  type: string;
}

/** Regular files: '0', NUL (old tars) and '7' (contiguous). */
const REGULAR = new Set(["0", "\0", "7"]);
/** Types that carry no data whatever their size field says (POSIX): links, devices, directories, FIFOs. */
const DATALESS = new Set(["1", "2", "3", "4", "5", "6"]);

function damaged(what: string): BundleError {
  return new BundleError(`the tar archive is damaged (${what}); the bundle was refused`);
}

function cstr(b: Buffer, off: number, len: number): string {
  const s = b.subarray(off, off + len);
  const z = s.indexOf(0);
  return (z < 0 ? s : s.subarray(0, z)).toString("utf8");
}

/** A numeric field: octal text, or base-256 when the high bit of the first byte is set (GNU, sizes over 8 GB). */
function tarNumber(b: Buffer, off: number, len: number, what: string): number {
  const f = b.subarray(off, off + len);
  if (f[0]! & 0x80) {
    if (f[0] === 0xff) throw damaged(`negative ${what}`);
    let n = f[0]! & 0x7f;
    for (let i = 1; i < f.length; i++) {
      n = n * 256 + f[i]!;
      if (n > Number.MAX_SAFE_INTEGER) throw damaged(`${what} too large`);
    }
    return n;
  }
  const text = f.toString("latin1").replace(/[\0 ]+$/g, "").replace(/^[ ]+/, "");
  if (!text) return 0;
  if (!/^[0-7]+$/.test(text)) throw damaged(`${what} is not a number`);
  return parseInt(text, 8);
}

function checksumOk(h: Buffer): boolean {
  const stored = tarNumber(h, 148, 8, "checksum");
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const v = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += v;
    signed += v > 127 ? v - 256 : v;
  }
  // some old writers summed signed bytes
  return stored === unsigned || stored === signed;
}

/** pax records: "%d %s=%s\n", the length counting the whole record. */
function parsePax(b: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let off = 0;
  // each record moves off forward by its length (at least 1), so the loop ends
  while (off < b.length) {
    const sp = b.indexOf(0x20, off);
    if (sp < 0) break;
    const len = parseInt(b.subarray(off, sp).toString("latin1"), 10);
    if (!(len > 0) || off + len > b.length) throw damaged("bad pax record");
    const rec = b.subarray(sp + 1, off + len - 1).toString("utf8");
    const eq = rec.indexOf("=");
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    off += len;
  }
  return out;
}

async function readExact(src: Bytes, n: number, what: string): Promise<Buffer> {
  if (!(await src.ensure(n))) throw new BundleError(`the tar archive ends inside ${what}; it looks cut short and was refused`);
  return Buffer.from(src.take(n));
}

async function skipBytes(src: Bytes, n: number, what: string): Promise<void> {
  let left = n;
  // each turn takes at least one byte or throws
  while (left > 0) {
    const c = await src.chunk(Math.min(left, STEP_BYTES));
    if (c === null) throw new BundleError(`the tar archive ends inside ${what}; it looks cut short and was refused`);
    left -= c.length;
  }
}

function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

async function* tarEntries(src: Bytes, limits: Limits): AsyncGenerator<BundleEntry> {
  let longName: string | null = null;
  let pax: Record<string, string> | null = null;
  let globalPax: Record<string, string> = {};
  // every turn consumes at least one 512-byte block of a source whose expanded size is capped by limits
  for (;;) {
    if (!(await src.ensure(BLOCK))) {
      throw new BundleError("the tar archive ends without its end-of-archive blocks; it looks cut short and was refused");
    }
    const h = Buffer.from(src.take(BLOCK));
    if (h.every((x) => x === 0)) return; // end of archive; what follows (a second zero block, padding) is ignored
    if (!checksumOk(h)) throw damaged("a header checksum does not match");
    const type = String.fromCharCode(h[156]!);
    let size = tarNumber(h, 124, 12, "size");
    const magic = h.subarray(257, 263).toString("latin1");
    let name = cstr(h, 0, 100);
    if (magic === "ustar\0") {
      const prefix = cstr(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }

    // meta headers describe the next member
    if (type === "x" || type === "g") {
      if (size > MAX_PAX_BYTES) throw damaged("a pax header is larger than 1 MiB");
      const rec = parsePax(await readExact(src, size, "a pax header"));
      await skipBytes(src, padding(size), "a pax header");
      if (type === "g") globalPax = { ...globalPax, ...rec };
      else pax = rec;
      continue;
    }
    if (type === "L" || type === "K") {
      if (size > MAX_LONG_NAME_BYTES) throw damaged("a long name is larger than 64 KiB");
      const data = await readExact(src, size, "a long name");
      await skipBytes(src, padding(size), "a long name");
      if (type === "L") longName = cstr(data, 0, data.length);
      continue;
    }

    const meta = { ...globalPax, ...(pax ?? {}) };
    if (longName !== null) name = longName;
    if (meta.path) name = meta.path;
    if (meta.size !== undefined) {
      if (!/^\d+$/.test(meta.size)) throw damaged("a pax size is not a number");
      size = Number(meta.size);
    }
    longName = null;
    pax = null;
    limits.addEntry();
    if (type === "S" || Object.keys(meta).some((k) => k.startsWith("GNU.sparse."))) {
      // skipping it would lose an instance without a word; its data is not the file's bytes as they stand
      throw new BundleError(`the entry "${label(name)}" is stored as a sparse file, which the relay does not read; make the archive without --sparse`);
    }
    const header: TarHeader = { name, size, type };

    if (!REGULAR.has(header.type)) {
      // directories, links, devices, FIFOs and unknown types: skipped, their name never touches a file system
      const data = DATALESS.has(header.type) ? 0 : header.size;
      await skipBytes(src, data + padding(data), `the member "${label(name)}"`);
      continue;
    }
    limits.checkEntrySize(name, header.size);
    let left = header.size;
    const part = new PulledPart(async () => {
      if (left === 0) return null;
      const c = await src.chunk(Math.min(left, STEP_BYTES));
      if (c === null) throw new BundleError(`the tar archive ends inside "${label(name)}"; it looks cut short and was refused`);
      left -= c.length;
      return c;
    });
    try {
      yield { name, size: header.size, body: part.body };
      await part.finish();
    } finally {
      if (!part.body.destroyed && !part.body.readableEnded && left > 0) part.body.destroy();
    }
    await skipBytes(src, padding(header.size), `the member "${label(name)}"`);
  }
}

// ---------------------------------------------------------------- zip

/** Copy the stream to a temporary file (zip needs random access), refusing more than max bytes. */
async function spool(head: Bytes, max: number): Promise<{ dir: string; path: string }> {
  const dir = await fsp.mkdtemp(join(tmpdir(), "dicom-relay-zip-"));
  const path = join(dir, "bundle.zip");
  let n = 0;
  try {
    await pipeline(
      Readable.from(
        (async function* () {
          for await (const c of head.rest()) {
            n += c.length;
            if (n > max) throw tooBig(max);
            yield c;
          }
        })(),
      ),
      createWriteStream(path),
    );
  } catch (err) {
    await fsp.rm(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, path };
}

function openZip(path: string): Promise<yauzl.ZipFile> {
  return new Promise((resolve, reject) => {
    // decodeStrings off: yauzl would refuse the whole archive for a name like "../x", which here is only a label
    yauzl.open(path, { lazyEntries: true, autoClose: true, decodeStrings: false, validateEntrySizes: true }, (err, zip) => {
      if (err || !zip) reject(new BundleError(`the zip archive cannot be read (${err?.message ?? "no archive"}); it may be damaged or cut short`, { cause: err }));
      else resolve(zip);
    });
  });
}

function nextZipEntry(zip: yauzl.ZipFile): Promise<yauzl.Entry | null> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      zip.off("entry", onEntry);
      zip.off("end", onEnd);
      zip.off("error", onError);
    };
    const onEntry = (e: yauzl.Entry) => {
      cleanup();
      resolve(e);
    };
    const onEnd = () => {
      cleanup();
      resolve(null);
    };
    const onError = (err: Error) => {
      cleanup();
      reject(zipDamaged(err));
    };
    zip.on("entry", onEntry);
    zip.on("end", onEnd);
    zip.on("error", onError);
    zip.readEntry();
  });
}

function zipDamaged(err: unknown): BundleError {
  if (err instanceof BundleError) return err;
  return new BundleError(`the zip archive is damaged (${(err as Error).message}); the bundle was refused`, { cause: err });
}

function openZipStream(zip: yauzl.ZipFile, entry: yauzl.Entry): Promise<Readable> {
  return new Promise((resolve, reject) => {
    zip.openReadStream(entry, (err, rs) => (err || !rs ? reject(zipDamaged(err ?? new Error("no stream"))) : resolve(rs)));
  });
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

async function* zipEntries(path: string, limits: Limits): AsyncGenerator<BundleEntry> {
  const fileSize = (await fsp.stat(path)).size;
  const zip = await openZip(path);
  // an error between our reads (autoClose, a stream) must not go unheard; the next read reports it
  zip.on("error", () => undefined);
  if (zip.entryCount > limits.o.maxEntries) {
    zip.close();
    throw new BundleError(`the bundle holds ${zip.entryCount} entries, more than the ${limits.o.maxEntries} the relay takes in one upload; split it into several bundles`);
  }
  let declaredTotal = 0;
  try {
    // bounded by entryCount, checked above
    for (;;) {
      const entry = await nextZipEntry(zip);
      if (!entry) return;
      limits.addEntry();
      const name = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, false);
      if (name.endsWith("/") || name.endsWith("\\")) continue; // directory
      const madeOnUnix = entry.versionMadeBy >> 8 === 3;
      const mode = (entry.externalFileAttributes >>> 16) & S_IFMT;
      if (madeOnUnix && mode !== 0 && mode !== S_IFREG) continue; // symlink, device, FIFO
      if (entry.isEncrypted()) throw new BundleError(`the entry "${label(name)}" is encrypted; the relay cannot read encrypted zip entries`);
      if (!entry.canDecodeFileData()) {
        throw new BundleError(`the entry "${label(name)}" uses zip compression method ${entry.compressionMethod}; the relay reads stored and deflated entries only`);
      }
      // the central directory's sizes are enforced by yauzl while reading, so they can be judged before reading
      limits.checkEntrySize(name, entry.uncompressedSize);
      declaredTotal += entry.uncompressedSize;
      if (declaredTotal > limits.maxTotal) throw tooBig(limits.maxTotal);
      limits.checkRatio(entry.uncompressedSize, entry.compressedSize);
      // entries sharing compressed data (overlapping-entry bombs) show up against the file's size
      limits.checkRatio(declaredTotal, fileSize);

      const rs = await openZipStream(zip, entry);
      const it = rs[Symbol.asyncIterator]();
      let seen = 0;
      const part = new PulledPart(async () => {
        let r: IteratorResult<unknown>;
        try {
          r = await it.next();
        } catch (err) {
          throw zipDamaged(err);
        }
        if (r.done) return null;
        const c = r.value as Buffer;
        seen += c.length;
        limits.addExpanded(c.length);
        if (seen > entry.uncompressedSize) throw zipDamaged(new Error(`"${label(name)}" is larger than its recorded size`));
        return c;
      });
      try {
        yield { name, size: entry.uncompressedSize, body: part.body };
        await part.finish();
      } finally {
        if (!rs.destroyed) rs.destroy();
        if (!part.body.destroyed && !part.body.readableEnded) part.body.destroy();
      }
    }
  } finally {
    if (zip.isOpen) zip.close();
  }
}

// ---------------------------------------------------------------- writing (tests, scripts/bench-transfers.ts)

/**
 * A tar.gz of the entries, streamed: each body is read once, in order, with backpressure. An entry's size must be
 * known (tar puts it before the data); a body longer or shorter than its size fails the bundle stream. The uploader
 * writes its bundles with src/cli/push/entries.ts instead (one gzip member per instance, compressed ahead).
 */
export function createTarGzBundle(entries: AsyncIterable<{ name: string; size: number; body: Readable }>, opts: { mtime?: Date; level?: number } = {}): Readable {
  const pack = tar.pack();
  // a fixed mtime (and gzip's header, which has none) makes the same entries give the same bytes
  // output in 128 kB chunks, not 16 kB: each is a hop from libuv's threads to the JavaScript thread and a file write
  const gz = createGzip({ chunkSize: 128 * 1024, ...(opts.level !== undefined ? { level: opts.level } : {}) });
  const fail = (err: unknown) => {
    pack.destroy(err as Error);
    if (!gz.destroyed) gz.destroy(err as Error);
  };
  pack.on("error", fail);
  pack.pipe(gz);
  void (async () => {
    for await (const e of entries) {
      await new Promise<void>((resolve, reject) => {
        const w = pack.entry({ name: e.name, size: e.size, type: "file", mode: 0o644, mtime: opts.mtime ?? new Date() }, (err) => (err ? reject(err) : resolve()));
        w.on("error", reject);
        void (async () => {
          try {
            for await (const chunk of e.body) {
              if (!w.write(chunk as Buffer)) await new Promise<void>((r) => w.once("drain", () => r()));
            }
            // a streamx stream: its end() takes no callback (the pack.entry callback reports completion)
            (w as unknown as { end(): void }).end();
          } catch (err) {
            reject(err);
          }
        })();
      });
    }
    pack.finalize();
  })().catch(fail);
  return gz;
}
