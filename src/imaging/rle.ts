/**
 * RLE Lossless (PS3.5 Annex G): decode and encode one frame. Pure.
 *
 * A frame is a 64-byte header (number of segments, then 15 segment offsets) and one PackBits segment per byte
 * plane: for each sample, its most significant byte first. Decoded output is native little endian, interleaved
 * (Planar Configuration 0), as Explicit VR Little Endian expects.
 */
export interface RleFrameShape {
  rows: number;
  columns: number;
  samplesPerPixel: number;
  bitsAllocated: number;
}

export class RleError extends Error {}

function unpackBits(src: Buffer, start: number, end: number, out: Buffer, pixels: number): void {
  let p = start;
  let o = 0;
  // each turn reads at least one header byte, so the loop ends with the segment
  while (p < end && o < pixels) {
    let n = src[p++]!;
    if (n > 127) n -= 256;
    if (n >= 0) {
      const count = n + 1;
      if (p + count > end) throw new RleError("an RLE literal run goes past the end of its segment");
      // runs are short: a loop beats a native copy call per run
      const stop = Math.min(count, pixels - o);
      for (let k = 0; k < stop; k++) out[o + k] = src[p + k]!;
      p += count;
      o += count;
    } else if (n !== -128) {
      const count = -n + 1;
      if (p >= end) throw new RleError("an RLE replicate run has no byte to repeat");
      const v = src[p]!;
      const stop = Math.min(pixels, o + count);
      for (let k = o; k < stop; k++) out[k] = v;
      p += 1;
      o += count;
    }
  }
  if (o < pixels) throw new RleError(`an RLE segment decodes to ${o} bytes, the frame needs ${pixels}`);
}

export function decodeRle(frame: Buffer, shape: RleFrameShape): Buffer {
  if (frame.length < 64) throw new RleError("the RLE frame is shorter than its 64-byte header");
  const bytesPerSample = shape.bitsAllocated / 8;
  if (!Number.isInteger(bytesPerSample)) throw new RleError(`RLE with BitsAllocated ${shape.bitsAllocated} is not supported`);
  const segments = frame.readUInt32LE(0);
  const expected = bytesPerSample * shape.samplesPerPixel;
  if (segments !== expected) throw new RleError(`the RLE frame has ${segments} segments, ${expected} expected`);
  const pixels = shape.rows * shape.columns;
  const out = Buffer.alloc(pixels * expected);
  const plane = Buffer.allocUnsafe(pixels);
  for (let s = 0; s < segments; s++) {
    const start = frame.readUInt32LE(4 + 4 * s);
    const end = s + 1 < segments ? frame.readUInt32LE(8 + 4 * s) : frame.length;
    if (start < 64 || end > frame.length || end < start) throw new RleError(`RLE segment ${s + 1} has an invalid offset`);
    unpackBits(frame, start, end, plane, pixels);
    const sample = Math.floor(s / bytesPerSample);
    // segment 0 of a sample is its most significant byte; little endian puts it last
    const byte = bytesPerSample - 1 - (s % bytesPerSample);
    for (let i = 0, o = sample * bytesPerSample + byte; i < pixels; i++, o += expected) out[o] = plane[i]!;
  }
  return out;
}

function packBits(plane: Buffer, parts: Buffer[]): void {
  const out: number[] = [];
  let i = 0;
  const n = plane.length;
  while (i < n) {
    let run = 1;
    while (i + run < n && run < 128 && plane[i + run] === plane[i]) run++;
    if (run >= 2) {
      out.push(257 - run, plane[i]!);
      i += run;
      continue;
    }
    let lit = 1;
    while (i + lit < n && lit < 128 && !(i + lit + 1 < n && plane[i + lit] === plane[i + lit + 1])) lit++;
    out.push(lit - 1);
    for (let k = 0; k < lit; k++) out.push(plane[i + k]!);
    i += lit;
  }
  if (out.length % 2) out.push(0x80); // segments are even length; -128 is a no-op
  parts.push(Buffer.from(out));
}

export function encodeRle(native: Buffer, shape: RleFrameShape): Buffer {
  const bytesPerSample = shape.bitsAllocated / 8;
  const samples = shape.samplesPerPixel;
  const pixels = shape.rows * shape.columns;
  const stride = bytesPerSample * samples;
  const segments: Buffer[] = [];
  for (let s = 0; s < stride; s++) {
    const sample = Math.floor(s / bytesPerSample);
    const byte = bytesPerSample - 1 - (s % bytesPerSample);
    const plane = Buffer.allocUnsafe(pixels);
    for (let i = 0, o = sample * bytesPerSample + byte; i < pixels; i++, o += stride) plane[i] = native[o]!;
    packBits(plane, segments);
  }
  const header = Buffer.alloc(64);
  header.writeUInt32LE(segments.length, 0);
  let offset = 64;
  segments.forEach((seg, k) => {
    header.writeUInt32LE(offset, 4 + 4 * k);
    offset += seg.length;
  });
  return Buffer.concat([header, ...segments]);
}
