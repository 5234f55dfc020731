/**
 * A bundle's bytes as gzip members, one per instance and one for the tar's end. A gzip file is a series of members
 * (RFC 1952, 2.2) and every gunzip (the relay's, Node's, GNU gzip) reads them as one stream: the relay sees the same
 * tar as before. What it buys: each instance is compressed on its own, so the push compresses instances ahead,
 * while the relay check and the manifest cross the link, before a bundle is planned (a bundle's name and size wait
 * for the manifest's answer). On a 300 ms path those two round trips are half a second in which the CPU had nothing
 * to do, and building bundles was what held the first pieces back (docs/push.md).
 *
 * Deterministic: an entry has a fixed mtime and Node's gzip header no time, so a bundle rebuilt after a crash has
 * the same bytes whether its members came from the ahead cache or were compressed while it was written, and its tus
 * upload resumes at the old offset.
 */
import { once } from "node:events";
import fs from "node:fs";
import fsp from "node:fs/promises";
import { Readable, Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGzip } from "node:zlib";
import tar from "tar-stream";

const FIXED_MTIME = new Date(Date.UTC(2000, 0, 1));
/** a tar archive ends with two zero blocks */
const END_OF_TAR = 1024;
/** gzip output per call: each is a hop from libuv's threads to the JavaScript thread */
const GZIP_CHUNK = 128 * 1024;

/** An instance file as one bundle entry: its name inside the bundle, where it is, its size when it was read. */
export interface EntrySource {
  name: string;
  path: string;
  size: number;
}

function fileChanged(e: EntrySource, size: number): Error {
  return new Error(`${e.path} changed since it was read (${e.size} -> ${size} bytes); run the command again`);
}

/** Holds back the last `n` bytes of a stream (the end-of-archive blocks of a one-entry tar). */
function dropTail(n: number): Transform {
  let held: Buffer[] = [];
  let heldBytes = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      held.push(chunk);
      heldBytes += chunk.length;
      // pass on what is certainly not in the tail
      let excess = heldBytes - n;
      while (excess > 0 && held.length) {
        const first = held[0]!;
        if (first.length <= excess) {
          this.push(first);
          held.shift();
          heldBytes -= first.length;
          excess -= first.length;
        } else {
          this.push(first.subarray(0, excess));
          held[0] = first.subarray(excess);
          heldBytes -= excess;
          excess = 0;
        }
      }
      cb();
    },
    flush(cb: TransformCallback) {
      if (heldBytes !== n) return cb(new Error(`a tar entry ended ${n - heldBytes} bytes short`));
      held = [];
      cb();
    },
  });
}

/**
 * One instance as a gzip member of tar bytes (its header, its data, the padding to 512): a stream. The file's size
 * must still be the one the manifest declared.
 */
function entryMember(e: EntrySource, level: number): Readable {
  const pack = tar.pack();
  const gz = createGzip({ chunkSize: GZIP_CHUNK, level });
  void (async () => {
    const st = await fsp.stat(e.path);
    // the manifest declared this size: a file changed since it was read would fail at the relay anyway
    if (st.size !== e.size) throw fileChanged(e, st.size);
    await new Promise<void>((resolve, reject) => {
      const w = pack.entry({ name: e.name, size: e.size, type: "file", mode: 0o644, mtime: FIXED_MTIME }, (err) => (err ? reject(err) : resolve()));
      w.on("error", reject);
      void (async () => {
        try {
          for await (const chunk of fs.createReadStream(e.path, { highWaterMark: 1024 * 1024 })) {
            if (!w.write(chunk as Buffer)) await new Promise<void>((r) => w.once("drain", () => r()));
          }
          // a streamx stream: its end() takes no callback (the pack.entry callback reports completion)
          (w as unknown as { end(): void }).end();
        } catch (err) {
          reject(err);
        }
      })();
    });
    pack.finalize();
  })().catch((err: Error) => {
    pack.destroy(err);
    if (!gz.destroyed) gz.destroy(err);
  });
  pipeline(pack as unknown as Readable, dropTail(END_OF_TAR), gz).catch((err: Error) => {
    if (!gz.destroyed) gz.destroy(err);
  });
  return gz;
}

/** The last member of every bundle: the tar's end-of-archive blocks, at the bundle's level. */
function endMember(level: number): Readable {
  const gz = createGzip({ chunkSize: GZIP_CHUNK, level });
  gz.end(Buffer.alloc(END_OF_TAR));
  return gz;
}

/** Reads a stream into its chunks (no join: they are written as they are). */
async function chunksOf(r: Readable): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const c of r) out.push(c as Buffer);
  return out;
}

/**
 * How fast gzip runs on this machine: raw bytes in over the time during which at least one compression ran (ahead
 * or while a bundle is written). Several at once count once: per job, the speed would read half of it on two cores
 * and the push would stop compressing for a link it could fill.
 */
export class CompressionMeter {
  rawBytes = 0;
  busyMs = 0;
  private running = 0;
  private since = 0;

  /** a compression begins; the function returned ends it with the raw bytes it took in */
  begin(): (raw: number) => void {
    if (this.running++ === 0) this.since = performance.now();
    let ended = false;
    return (raw) => {
      if (ended) return;
      ended = true;
      this.rawBytes += raw;
      if (--this.running === 0) this.busyMs += performance.now() - this.since;
    };
  }

  /** raw bytes compressed per second (0 while nothing is measured) */
  rawPerSec(): number {
    return this.busyMs > 0 ? (this.rawBytes * 1000) / this.busyMs : 0;
  }
}

/** An entry compressed ahead (or being compressed): its gzip member's chunks. */
type Ahead = { member: Promise<Buffer[]>; bytes: number; done: boolean };

/**
 * Compresses instances ahead of the bundles that will carry them, in the order they will be packed, within a budget
 * of memory, a few at a time (gzip runs on libuv's threads). A bundle being written takes its members from here
 * when they are ready or on their way, and compresses the others itself; an instance is never compressed twice.
 * Only instances up to `maxInstanceBytes` are held (a large one is compressed while its bundle is written, streamed).
 */
export class AheadCompressor {
  readonly level: number;
  readonly meter: CompressionMeter;
  private readonly budget: number;
  private readonly concurrency: number;
  private readonly maxInstanceBytes: number;
  private order: Array<{ key: string; source: EntrySource }> = [];
  private next = 0;
  private readonly entries = new Map<string, Ahead>();
  /** keys a bundle took (or will compress itself): never compressed here */
  private readonly taken = new Set<string>();
  private held = 0;
  private running = 0;
  private paused = false;
  private closed = false;

  constructor(o: { level: number; budgetBytes: number; concurrency?: number; maxInstanceBytes?: number; meter?: CompressionMeter }) {
    this.level = o.level;
    this.budget = o.budgetBytes;
    this.concurrency = o.concurrency ?? 2;
    this.maxInstanceBytes = o.maxInstanceBytes ?? 16 * 1024 * 1024;
    this.meter = o.meter ?? new CompressionMeter();
  }

  /**
   * The instances in the order bundles will take them (replacing an earlier guess): entries held that are not in it
   * are dropped, and compression goes on from the first one not compressed yet.
   */
  plan(list: ReadonlyArray<{ key: string; source: EntrySource }>): void {
    const keys = new Set(list.map((x) => x.key));
    for (const [key, a] of this.entries) {
      if (!keys.has(key)) this.drop(key, a);
    }
    this.order = list.filter((x) => !this.taken.has(x.key));
    this.next = 0;
    this.pump();
  }

  /** Stop compressing ahead (bundles are sent uncompressed: the link takes bytes faster than gzip makes them). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.pump();
  }

  /** bytes held (compressed entries, and the raw size of those being compressed) */
  get heldBytes(): number {
    return this.held;
  }

  /**
   * The compressed member of this entry, if it is ready or on its way (it leaves the cache); undefined: compress it
   * yourself (it will not be compressed here).
   */
  take(key: string): Promise<Buffer[]> | undefined {
    this.taken.add(key);
    const a = this.entries.get(key);
    if (!a) return undefined;
    this.entries.delete(key);
    // one still being compressed leaves the budget when it ends
    if (a.done) {
      this.held -= a.bytes;
      this.pump();
    }
    return a.member;
  }

  close(): void {
    this.closed = true;
    for (const [key, a] of this.entries) this.drop(key, a);
  }

  private drop(key: string, a: Ahead): void {
    this.entries.delete(key);
    if (a.done) this.held -= a.bytes;
  }

  private pump(): void {
    while (!this.closed && !this.paused && this.running < this.concurrency && this.held < this.budget && this.next < this.order.length) {
      const { key, source } = this.order[this.next++]!;
      if (this.taken.has(key) || this.entries.has(key) || source.size > this.maxInstanceBytes) continue;
      this.start(key, source);
    }
  }

  private start(key: string, source: EntrySource): void {
    this.running++;
    // counted at its raw size while it runs (more than its member will hold), at its compressed size once done
    this.held += source.size;
    const end = this.meter.begin();
    const a: Ahead = { member: Promise.resolve([]), bytes: source.size, done: false };
    a.member = chunksOf(entryMember(source, this.level)).then(
      (chunks) => {
        end(source.size);
        return chunks;
      },
      (err: Error) => {
        end(0);
        throw err;
      },
    );
    // an error surfaces where a bundle takes the entry, not as an unhandled rejection here
    a.member.catch(() => undefined);
    this.entries.set(key, a);
    void a.member
      .then(
        (chunks) => chunks.reduce((n, c) => n + c.length, 0),
        () => 0,
      )
      .then((wire) => {
        this.running--;
        this.held -= source.size;
        if (this.entries.get(key) === a) {
          a.done = true;
          a.bytes = wire;
          this.held += wire;
        }
        this.pump();
      });
  }
}

/** Writes chunks to a stream with backpressure; `failed` rejects once the stream has failed. */
async function writeChunks(ws: fs.WriteStream, chunks: readonly Buffer[], onChunk: (c: Buffer) => void, failed: Promise<never>): Promise<void> {
  for (const c of chunks) {
    onChunk(c);
    if (!ws.write(c)) await Promise.race([once(ws, "drain"), failed]);
  }
}

/**
 * Writes a bundle of these entries to `file` (through `file.part`, renamed when complete): each member from `ahead`
 * when it holds it at this level, else compressed now. Returns the bytes written, their SHA-256 computed by `hash`.
 */
export async function writeMembers(file: string, entries: ReadonlyArray<{ key: string; source: EntrySource }>, level: number, o: { ahead?: AheadCompressor; meter?: CompressionMeter; onChunk: (c: Buffer) => void }): Promise<void> {
  const part = `${file}.part`;
  const ws = fs.createWriteStream(part);
  const failed = new Promise<never>((_, reject) => ws.once("error", reject));
  failed.catch(() => undefined);
  try {
    for (const { key, source } of entries) {
      // taken either way: an entry compressed at another level is dropped, never held for nothing
      const taken = o.ahead?.take(key);
      const cached = o.ahead?.level === level ? taken : undefined;
      if (cached) {
        await writeChunks(ws, await cached, o.onChunk, failed);
        continue;
      }
      const end = level > 0 ? o.meter?.begin() : undefined;
      let raw = 0;
      try {
        for await (const c of entryMember(source, level)) await writeChunks(ws, [c as Buffer], o.onChunk, failed);
        raw = source.size;
      } finally {
        end?.(raw);
      }
    }
    await writeChunks(ws, await chunksOf(endMember(level)), o.onChunk, failed);
    await new Promise<void>((resolve, reject) => ws.end((err?: Error | null) => (err ? reject(err) : resolve())));
  } catch (err) {
    // closed first: a file still being opened would be created after the removal
    if (!ws.closed) await new Promise<void>((resolve) => {
      ws.once("close", () => resolve());
      ws.destroy();
    });
    await fsp.rm(part, { force: true });
    throw err;
  }
  await fsp.rename(part, file);
}
