/**
 * A small streaming PNG decoder for photos of paper reports: 8-bit gray, RGB or RGBA, non-interlaced; anything else is
 * refused. The image data is inflated and unfiltered a row at a time into a file: memory stays a few rows wide.
 */
import { once } from "node:events";
import fs from "node:fs";
import fsp from "node:fs/promises";
import { Readable } from "node:stream";
import zlib from "node:zlib";
import { DocumentRefused } from "./errors.ts";

export interface DecodedPng {
  rows: number;
  columns: number;
  samplesPerPixel: 1 | 3;
  /** bytes of native pixel data written (rows x columns x samplesPerPixel) */
  length: number;
}

/** A photo of a page needs far fewer pixels than this; the cap also bounds what inflate may produce. */
const MAX_PIXELS = 100_000_000;
const MAX_CHUNKS = 1_000_000;
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * Undoes PNG row filters (PNG spec 9.2) on scanlines as they arrive, in pieces of any size. Each finished row comes
 * out as native pixels: gray as is, RGB as is, RGBA without its alpha (a photo of paper is opaque).
 */
export class PngUnfilter {
  readonly stride: number;
  private prev: Buffer;
  private cur: Buffer;
  private line: Buffer;
  private filled = 0;
  rowsDone = 0;

  constructor(readonly width: number, readonly height: number, readonly channels: 1 | 3 | 4) {
    this.stride = width * channels;
    this.prev = Buffer.alloc(this.stride);
    this.cur = Buffer.alloc(this.stride);
    this.line = Buffer.alloc(this.stride + 1);
  }

  get done(): boolean {
    return this.rowsDone >= this.height;
  }

  /** Feeds inflated bytes; returns the rows finished by them (bytes past the last row are ignored). */
  push(data: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let i = 0;
    while (i < data.length && !this.done) {
      const n = Math.min(data.length - i, this.line.length - this.filled);
      data.copy(this.line, this.filled, i, i + n);
      this.filled += n;
      i += n;
      if (this.filled === this.line.length) {
        out.push(this.unfilterRow());
        this.filled = 0;
      }
    }
    return out;
  }

  private unfilterRow(): Buffer {
    const { stride, channels, prev, cur, line } = this;
    const filter = line[0]!;
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? cur[x - channels]! : 0, b = prev[x]!, c = x >= channels ? prev[x - channels]! : 0;
      let p: number;
      switch (filter) {
        case 0: p = 0; break;
        case 1: p = a; break;
        case 2: p = b; break;
        case 3: p = (a + b) >> 1; break;
        case 4: { const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c); p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c; break; }
        default: throw new DocumentRefused("the PNG is broken: unknown row filter");
      }
      cur[x] = (line[x + 1]! + p) & 0xff;
    }
    let row: Buffer;
    if (channels === 4) {
      row = Buffer.alloc(this.width * 3);
      for (let x = 0; x < this.width; x++) cur.copy(row, x * 3, x * 4, x * 4 + 3);
    } else row = Buffer.from(cur);
    this.prev = cur;
    this.cur = prev;
    this.rowsDone++;
    return row;
  }
}

interface PngLayout { width: number; height: number; channels: 1 | 3 | 4; idat: { offset: number; length: number }[] }

/** Walks the chunks (reading only their 8-byte headers and IHDR): size, colour type and where the image data is. */
async function readLayout(fh: fsp.FileHandle, size: number): Promise<PngLayout> {
  const sig = Buffer.alloc(8);
  await fh.read(sig, 0, 8, 0);
  if (!sig.equals(PNG_SIGNATURE)) throw new DocumentRefused("the PNG is broken: its signature is wrong");
  let pos = 8, width = 0, height = 0, channels: 1 | 3 | 4 | 0 = 0;
  const idat: PngLayout["idat"] = [];
  const header = Buffer.alloc(8);
  for (let n = 0; n < MAX_CHUNKS && pos + 12 <= size; n++) {
    await fh.read(header, 0, 8, pos);
    const len = header.readUInt32BE(0);
    const type = header.toString("latin1", 4, 8);
    if (pos + 12 + len > size) throw new DocumentRefused("the PNG is broken: a chunk runs past the end of the file");
    if (type === "IHDR") {
      const ihdr = Buffer.alloc(13);
      await fh.read(ihdr, 0, 13, pos + 8);
      width = ihdr.readUInt32BE(0);
      height = ihdr.readUInt32BE(4);
      const depth = ihdr[8], colorType = ihdr[9]!, interlace = ihdr[12];
      if (depth !== 8 || ![0, 2, 6].includes(colorType) || interlace !== 0) {
        throw new DocumentRefused("the PNG is not an 8-bit gray, RGB or RGBA non-interlaced image: save it as JPEG and attach that");
      }
      channels = colorType === 0 ? 1 : colorType === 2 ? 3 : 4;
    } else if (type === "IDAT") idat.push({ offset: pos + 8, length: len });
    else if (type === "IEND") break;
    pos += 12 + len;
  }
  if (!width || !height || !channels || !idat.length) throw new DocumentRefused("the PNG is broken: no header or no image data");
  if (width * height > MAX_PIXELS) throw new DocumentRefused(`the PNG has more than ${MAX_PIXELS} pixels; scale the photo down and attach it again`);
  return { width, height, channels, idat };
}

async function* idatBytes(fh: fsp.FileHandle, parts: PngLayout["idat"]): AsyncGenerator<Buffer> {
  for (const { offset, length } of parts) {
    for (let done = 0; done < length;) {
      const n = Math.min(1 << 20, length - done);
      const buf = Buffer.alloc(n);
      const { bytesRead } = await fh.read(buf, 0, n, offset + done);
      if (!bytesRead) return;
      done += bytesRead;
      yield buf.subarray(0, bytesRead);
    }
  }
}

/** Decodes the PNG at src into native pixels written to dest; refuses a broken or unsupported image with a sentence. */
export async function decodePngFile(src: string, dest: string): Promise<DecodedPng> {
  const fh = await fsp.open(src, "r");
  const feeder = new AbortController();
  try {
    const { width, height, channels, idat } = await readLayout(fh, (await fh.stat()).size);
    const unfilter = new PngUnfilter(width, height, channels);
    const inflate = zlib.createInflate();
    Readable.from(idatBytes(fh, idat), { signal: feeder.signal }).on("error", () => {}).pipe(inflate);
    const out = fs.createWriteStream(dest, { flags: "wx" });
    let length = 0;
    try {
      for await (const chunk of inflate as AsyncIterable<Buffer>) {
        for (const row of unfilter.push(chunk)) {
          length += row.length;
          if (!out.write(row)) await once(out, "drain");
        }
        // a deflate bomb stops here: nothing past the last row is inflated
        if (unfilter.done) break;
      }
    } catch (err) {
      out.destroy();
      // zlib's errors (Z_DATA_ERROR ...) are the file's fault; a disk error is the relay's and goes on as it is
      if (String((err as { code?: unknown }).code ?? "").startsWith("Z_")) throw new DocumentRefused("the PNG is broken: its image data does not decompress");
      throw err;
    }
    out.end();
    await once(out, "close");
    if (!unfilter.done) throw new DocumentRefused("the PNG is broken: its image data is short");
    return { rows: height, columns: width, samplesPerPixel: channels === 1 ? 1 : 3, length };
  } finally {
    feeder.abort();
    await fh.close();
  }
}
