/**
 * Deflated Explicit VR Little Endian (PS3.5 A.5): everything after the file meta is one raw deflate stream (RFC 1951).
 * The stored file stays as received; what needs the data set inflates it as a stream, never whole: the Part-10 reader
 * walks it forward (InflatedSource), WADO-RS frames and bulk data inflate up to their bytes (inflatedRanges).
 */
import { pipeline, Readable } from "node:stream";
import zlib from "node:zlib";
import type { ByteRange } from "./types.ts";

const CHUNK = 64 * 1024;

/** The inflated bytes of a raw deflate stream, as chunks; a damaged or truncated stream rejects. */
export function inflate(compressed: Readable): AsyncIterable<Buffer> {
  const z = zlib.createInflateRaw({ chunkSize: CHUNK });
  // pipeline: an error on either side destroys both, and iterating z rejects with it
  pipeline(compressed, z, () => undefined);
  return z;
}

/** A stored byte range of a random-access source as a stream. */
export function sourceStream(read: (position: number, length: number) => Promise<Buffer>, start: number, end: number): Readable {
  return Readable.from((async function* () {
    for (let p = start; p < end; p += CHUNK) yield await read(p, Math.min(CHUNK, end - p));
  })(), { objectMode: false });
}

/**
 * The inflated data set as a source for the Part-10 walker. Forward only: a read may not start before an earlier
 * read's start (the walker moves forward), so bytes before it are dropped and memory holds at most one read.
 */
export class InflatedSource {
  private readonly it: AsyncIterator<Buffer>;
  private chunks: Buffer[] = [];
  /** inflated position of chunks[0] */
  private start = 0;
  private produced = 0;

  constructor(chunks: AsyncIterable<Buffer>, readonly size: number) {
    this.it = chunks[Symbol.asyncIterator]();
  }

  async read(position: number, length: number): Promise<Buffer> {
    if (position < this.start) throw new Error(`the inflated data set was read backwards (${position} after ${this.start})`);
    const want = Math.min(position + length, this.size);
    this.drop(position);
    while (this.produced < want) {
      const r = await this.it.next();
      if (r.done) break;
      this.chunks.push(r.value);
      this.produced += r.value.length;
      this.drop(position);
    }
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    const all = this.chunks[0] ?? Buffer.alloc(0);
    return all.subarray(Math.max(0, position - this.start), Math.max(0, want - this.start));
  }

  /** Ends the inflation early (the walker stopped). */
  async close(): Promise<void> {
    await this.it.return?.();
  }

  private drop(position: number): void {
    while (this.chunks.length && this.start + this.chunks[0]!.length <= position) {
      this.start += this.chunks[0]!.length;
      this.chunks.shift();
    }
  }
}

/**
 * The bytes of `ranges` (ascending, positions in the inflated stream) from a compressed stream, yielded as they are
 * inflated; inflation stops after the last range. Memory: one inflated chunk.
 */
export async function* inflatedRanges(compressed: Readable, ranges: ByteRange[]): AsyncGenerator<Buffer> {
  const todo = ranges.filter((r) => r.length > 0);
  if (!todo.length) {
    compressed.destroy();
    return;
  }
  let pos = 0;
  let k = 0;
  const chunks = inflate(compressed);
  try {
    for await (const c of chunks) {
      const end = pos + c.length;
      while (k < todo.length) {
        const r = todo[k]!;
        const from = Math.max(r.offset, pos);
        const to = Math.min(r.offset + r.length, end);
        if (from < to) yield c.subarray(from - pos, to - pos);
        if (r.offset + r.length <= end) k++;
        else break;
      }
      pos = end;
      if (k === todo.length) return;
    }
  } finally {
    compressed.destroy();
  }
  throw new Error(`the deflated data set ends at inflated byte ${pos}, before the bytes asked for`);
}
