/**
 * Synthetic DICOM Part-10 instances and studies for tests and benchmarks.
 *
 * Files are written by a small writer of our own (explicit/implicit VR, little/big endian) rather than
 * dcmjs, because dcmjs always writes text as UTF-8 and these files must carry names encoded for real
 * in GB18030, GBK, ISO_IR 100 or UTF-8, as Chinese hospitals send them.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import zlib from "node:zlib";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createRequire } from "node:module";
import iconv from "iconv-lite";
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, newUid, SOPClass, TransferSyntaxUID } from "../../src/dicom/uids.ts";

export { newUid };

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/** One data element to write. Tags are numbers: (group << 16 | element) >>> 0. */
export interface WriterElement {
  tag: number;
  vr: string;
  /** strings/numbers (multi-valued as arrays), a Buffer for binary VRs, items for SQ */
  value: string | number | bigint | Buffer | Array<string | number | bigint> | WriterElement[][] | null;
  /**
   * write the length as undefined (0xFFFFFFFF): for SQ the items get undefined lengths too; for any
   * other VR the Buffer value is written as-is after the header (pre-built items + delimiter, e.g.
   * encapsulated pixel data)
   */
  undefinedLength?: boolean;
}

export interface EncodeOptions {
  explicitVR: boolean;
  littleEndian: boolean;
  /** SpecificCharacterSet (first value) used for SH, LO, ST, LT, PN, UC, UT */
  charset?: string;
  /** write every SQ and item with undefined length */
  undefinedLengthSequences?: boolean;
}

const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const CHARSET_VRS = new Set(["SH", "LO", "ST", "LT", "PN", "UC", "UT"]);
const BINARY_VRS_W = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "UN"]);
const UNDEFINED = 0xffffffff;

export const tagOf = (group: number, element: number): number => ((group << 16) | element) >>> 0;

/** Text in a SpecificCharacterSet, encoded for real. */
export function encodeText(text: string, charset = ""): Buffer {
  switch (charset) {
    case "":
    case "ISO_IR 6":
    case "ISO_IR 100":
      for (let i = 0; i < text.length; i++) {
        if (text.charCodeAt(i) > 0xff) throw new Error(`"${text}" cannot be written in ${charset || "the default repertoire"}`);
      }
      return Buffer.from(text, "latin1");
    case "ISO_IR 192":
      return Buffer.from(text, "utf8");
    case "GB18030":
      return iconv.encode(text, "gb18030");
    case "GBK":
      return iconv.encode(text, "gbk");
    case "ISO_IR 101":
      return iconv.encode(text, "iso-8859-2");
    case "ISO_IR 144":
      return iconv.encode(text, "iso-8859-5");
    default:
      throw new Error(`the synthetic writer does not encode SpecificCharacterSet "${charset}"`);
  }
}

class ByteSink {
  private chunks: Buffer[] = [];
  length = 0;
  constructor(readonly le: boolean) {}
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u16(v: number): void {
    const b = Buffer.allocUnsafe(2);
    this.le ? b.writeUInt16LE(v) : b.writeUInt16BE(v);
    this.push(b);
  }
  u32(v: number): void {
    const b = Buffer.allocUnsafe(4);
    this.le ? b.writeUInt32LE(v >>> 0) : b.writeUInt32BE(v >>> 0);
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

function asArray<T>(v: T | T[]): T[] {
  return Array.isArray(v) ? v : [v];
}

function formatDS(n: number | string | bigint): string {
  if (typeof n !== "number") return String(n);
  if (Number.isInteger(n)) return String(n);
  let s = String(Number(n.toPrecision(10)));
  if (s.length > 16) s = n.toPrecision(8);
  return s;
}

function numeric(vr: string, values: Array<string | number | bigint>, le: boolean): Buffer {
  const size = ({ US: 2, SS: 2, UL: 4, SL: 4, FL: 4, FD: 8, AT: 4, SV: 8, UV: 8 } as Record<string, number>)[vr]!;
  const b = Buffer.alloc(size * values.length);
  values.forEach((raw, i) => {
    const o = i * size;
    switch (vr) {
      case "US": le ? b.writeUInt16LE(Number(raw), o) : b.writeUInt16BE(Number(raw), o); break;
      case "SS": le ? b.writeInt16LE(Number(raw), o) : b.writeInt16BE(Number(raw), o); break;
      case "UL": le ? b.writeUInt32LE(Number(raw), o) : b.writeUInt32BE(Number(raw), o); break;
      case "SL": le ? b.writeInt32LE(Number(raw), o) : b.writeInt32BE(Number(raw), o); break;
      case "FL": le ? b.writeFloatLE(Number(raw), o) : b.writeFloatBE(Number(raw), o); break;
      case "FD": le ? b.writeDoubleLE(Number(raw), o) : b.writeDoubleBE(Number(raw), o); break;
      case "SV": le ? b.writeBigInt64LE(BigInt(raw), o) : b.writeBigInt64BE(BigInt(raw), o); break;
      case "UV": le ? b.writeBigUInt64LE(BigInt(raw), o) : b.writeBigUInt64BE(BigInt(raw), o); break;
      case "AT": {
        const t = typeof raw === "string" ? parseInt(raw, 16) : Number(raw);
        le ? b.writeUInt16LE(t >>> 16, o) : b.writeUInt16BE(t >>> 16, o);
        le ? b.writeUInt16LE(t & 0xffff, o + 2) : b.writeUInt16BE(t & 0xffff, o + 2);
        break;
      }
    }
  });
  return b;
}

/** The value bytes of a non-SQ element, padded to even length. */
function valueBytes(el: WriterElement, opts: EncodeOptions): Buffer {
  const { vr, value } = el;
  if (value === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(value)) {
    let b = value;
    if (!opts.littleEndian && (vr === "OW" || vr === "OF" || vr === "OL" || vr === "OD" || vr === "OV")) {
      b = Buffer.from(value);
      const unit = vr === "OW" ? 2 : vr === "OD" || vr === "OV" ? 8 : 4;
      if (unit === 2) b.swap16(); else if (unit === 4) b.swap32(); else b.swap64();
    }
    const padByte = vr === "UI" || BINARY_VRS_W.has(vr) ? 0 : 0x20;
    return b.length % 2 ? Buffer.concat([b, Buffer.from([padByte])]) : b;
  }
  const values = asArray(value as string | number | bigint | Array<string | number | bigint>);
  if (["US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV"].includes(vr)) return numeric(vr, values, opts.littleEndian);
  const text = vr === "DS" ? values.map(formatDS).join("\\") : values.map(String).join("\\");
  let b = CHARSET_VRS.has(vr) ? encodeText(text, opts.charset) : Buffer.from(text, "latin1");
  if (b.length % 2) b = Buffer.concat([b, Buffer.from([vr === "UI" ? 0 : 0x20])]);
  return b;
}

function writeHeader(sink: ByteSink, tag: number, vr: string, length: number, opts: EncodeOptions): void {
  sink.u16(tag >>> 16);
  sink.u16(tag & 0xffff);
  if (!opts.explicitVR) return sink.u32(length);
  sink.push(Buffer.from(vr, "latin1"));
  if (LONG_VRS.has(vr)) {
    sink.u16(0);
    sink.u32(length);
  } else {
    if (length > 0xffff) throw new Error(`value of (${hex(tag)}) ${vr} is ${length} bytes, more than a 16-bit length holds`);
    sink.u16(length);
  }
}

function writeDelimiter(sink: ByteSink, element: number): void {
  sink.u16(0xfffe);
  sink.u16(element);
  sink.u32(0);
}

function writeElements(sink: ByteSink, elements: WriterElement[], opts: EncodeOptions): void {
  const sorted = [...elements].sort((a, b) => a.tag - b.tag);
  for (const el of sorted) {
    if (el.vr === "SQ") {
      const items = (el.value ?? []) as WriterElement[][];
      const undefinedLength = el.undefinedLength ?? opts.undefinedLengthSequences ?? false;
      const body = new ByteSink(opts.littleEndian);
      for (const item of items) {
        const itemBody = new ByteSink(opts.littleEndian);
        writeElements(itemBody, item, opts);
        body.u16(0xfffe);
        body.u16(0xe000);
        body.u32(undefinedLength ? UNDEFINED : itemBody.length);
        body.push(itemBody.concat());
        if (undefinedLength) writeDelimiter(body, 0xe00d);
      }
      if (undefinedLength) writeDelimiter(body, 0xe0dd);
      writeHeader(sink, el.tag, "SQ", undefinedLength ? UNDEFINED : body.length, opts);
      sink.push(body.concat());
      continue;
    }
    if (el.undefinedLength) {
      writeHeader(sink, el.tag, el.vr, UNDEFINED, opts);
      sink.push(el.value as Buffer);
      continue;
    }
    const v = valueBytes(el, opts);
    writeHeader(sink, el.tag, el.vr, v.length, opts);
    sink.push(v);
  }
}

/** A data set (no preamble, no file meta) in the given encoding. */
export function encodeDataset(elements: WriterElement[], opts: EncodeOptions): Buffer {
  const sink = new ByteSink(opts.littleEndian);
  writeElements(sink, elements, opts);
  return sink.concat();
}

export interface FileMetaOptions {
  sopClassUID: string;
  sopInstanceUID: string;
  transferSyntaxUID: string;
}

/** 128-byte preamble, "DICM" and the file meta group (always explicit VR little endian). */
export function encodeFileMeta(m: FileMetaOptions): Buffer {
  const opts = { explicitVR: true, littleEndian: true };
  const group = encodeDataset(
    [
      { tag: 0x00020001, vr: "OB", value: Buffer.from([0, 1]) },
      { tag: 0x00020002, vr: "UI", value: m.sopClassUID },
      { tag: 0x00020003, vr: "UI", value: m.sopInstanceUID },
      { tag: 0x00020010, vr: "UI", value: m.transferSyntaxUID },
      { tag: 0x00020012, vr: "UI", value: IMPLEMENTATION_CLASS_UID },
      { tag: 0x00020013, vr: "SH", value: IMPLEMENTATION_VERSION_NAME },
    ],
    opts,
  );
  const length = encodeDataset([{ tag: 0x00020000, vr: "UL", value: group.length }], opts);
  return Buffer.concat([Buffer.alloc(128), Buffer.from("DICM", "latin1"), length, group]);
}

const hex = (tag: number) => tag.toString(16).toUpperCase().padStart(8, "0");

// ---------------------------------------------------------------------------------------------
// Attributes by keyword (for `extra`), through the dcmjs data dictionary
// ---------------------------------------------------------------------------------------------

interface DictEntry { tag: string; vr: string }
let nameMap: Record<string, DictEntry> | undefined;
function dictionaryEntry(keyword: string): { tag: number; vr: string } {
  nameMap ??= (createRequire(import.meta.url)("dcmjs") as { data: { DicomMetaDictionary: { nameMap: Record<string, DictEntry> } } })
    .data.DicomMetaDictionary.nameMap;
  const e = nameMap[keyword];
  if (!e) throw new Error(`unknown attribute keyword "${keyword}"`);
  const m = /^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$/.exec(e.tag);
  if (!m) throw new Error(`attribute "${keyword}" has no single tag (${e.tag})`);
  const vr = e.vr.includes("or") || e.vr.includes("|") ? e.vr.slice(0, 2) : e.vr;
  return { tag: tagOf(parseInt(m[1]!, 16), parseInt(m[2]!, 16)), vr: vr === "xs" ? "US" : vr === "ox" ? "OB" : vr };
}

/**
 * `extra` attributes: `{ Keyword: value }` (naturalized, SQ as an array of objects) or
 * `{ "ggggeeee": { vr, Value } }` for private or unknown tags; a null value removes the attribute.
 */
function extraElements(extra: Record<string, unknown>): Array<{ tag: number; el: WriterElement | null }> {
  const out: Array<{ tag: number; el: WriterElement | null }> = [];
  for (const [key, raw] of Object.entries(extra)) {
    let tag: number;
    let vr: string;
    let value: unknown = raw;
    if (/^[0-9A-Fa-f]{8}$/.test(key)) {
      tag = parseInt(key, 16) >>> 0;
      const j = raw as { vr: string; Value?: unknown; InlineBinary?: string } | null;
      if (j === null) { out.push({ tag, el: null }); continue; }
      vr = j.vr;
      value = j.InlineBinary !== undefined ? Buffer.from(j.InlineBinary, "base64") : j.Value ?? null;
    } else {
      ({ tag, vr } = dictionaryEntry(key));
    }
    if (value === null || value === undefined) { out.push({ tag, el: null }); continue; }
    if (vr === "SQ") {
      const items = (value as Array<Record<string, unknown>>).map((item) =>
        extraElements(item).filter((x) => x.el !== null).map((x) => x.el!));
      out.push({ tag, el: { tag, vr, value: items } });
    } else if (vr === "PN" && typeof value === "object" && !Array.isArray(value) && !Buffer.isBuffer(value)) {
      const pn = value as { Alphabetic?: string; Ideographic?: string; Phonetic?: string };
      out.push({ tag, el: { tag, vr, value: [pn.Alphabetic ?? "", pn.Ideographic ?? "", pn.Phonetic ?? ""].join("=").replace(/=+$/, "") } });
    } else {
      out.push({ tag, el: { tag, vr, value: value as WriterElement["value"] } });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pixel data
// ---------------------------------------------------------------------------------------------

/** mulberry32: small, fast, deterministic. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface PixelShape { rows: number; columns: number; bitsAllocated: 8 | 16; samplesPerPixel: 1 | 3 }

const phantomCache = new Map<string, Buffer>();

/** One frame of a body-like phantom (an ellipse of soft tissue with noise and two bright disks), cached. */
function phantom(shape: PixelShape, seed: number): Buffer {
  const key = `${shape.rows}x${shape.columns}x${shape.bitsAllocated}x${shape.samplesPerPixel}:${seed}`;
  const hit = phantomCache.get(key);
  if (hit) return hit;
  const { rows, columns, bitsAllocated, samplesPerPixel } = shape;
  const rand = rng(seed ^ 0x9e3779b9);
  const n = rows * columns;
  const cy = rows / 2, cx = columns / 2, ry = rows * 0.42, rx = columns * 0.45;
  const max = bitsAllocated === 16 ? 4095 : 255;
  const out = Buffer.allocUnsafe(n * samplesPerPixel * (bitsAllocated / 8));
  const u16 = bitsAllocated === 16 ? new Uint16Array(out.buffer, out.byteOffset, n) : null;
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < columns; x++) {
      const dy = (y - cy) / ry, dx = (x - cx) / rx;
      const r2 = dx * dx + dy * dy;
      let v = 0;
      if (r2 < 1) {
        v = 0.26 + rand() * 0.01; // soft tissue (1064 of 4095: HU 40 with intercept -1024)
        const bx = (x - cx * 0.7) / (columns * 0.06), by = (y - cy) / (rows * 0.06);
        if (bx * bx + by * by < 1) v = 0.55; // bone-ish disk
        const lx = (x - cx * 1.3) / (columns * 0.1), ly = (y - cy * 0.9) / (rows * 0.14);
        if (lx * lx + ly * ly < 1) v = 0.05 + rand() * 0.01; // lung-ish
      }
      const i = y * columns + x;
      if (u16) u16[i] = Math.round(v * max);
      else if (samplesPerPixel === 1) out[i] = Math.round(v * max);
      else {
        out[i * 3] = Math.round(v * max);
        out[i * 3 + 1] = Math.round(v * max * 0.8);
        out[i * 3 + 2] = Math.round(v * max * 0.6);
      }
    }
  }
  if (phantomCache.size > 16) phantomCache.clear();
  phantomCache.set(key, out);
  return out;
}

/**
 * A frame: the cached phantom plus a bright band whose position depends on (instance, frame). With realistic, 16-bit
 * frames also get their own quantum noise (about 12 HU in the body, 6 outside, roughly Gaussian): the bare phantom
 * repeats the same noise in every slice, which a compressor with a window of several MB (brotli) turns into almost
 * nothing, and gzip packs to about a quarter, far from real CT/MR (about half).
 */
function frame(shape: PixelShape, seed: number, variant: number, realistic = false): Buffer {
  const base = phantom(shape, seed);
  const out = Buffer.allocUnsafe(base.length);
  base.copy(out);
  if (realistic && shape.bitsAllocated === 16 && shape.samplesPerPixel === 1) {
    const rand = rng((seed * 31 + variant * 7919) ^ 0x5bd1e995);
    const u16 = new Uint16Array(out.buffer, out.byteOffset, shape.rows * shape.columns);
    for (let i = 0; i < u16.length; i++) {
      // sum of three uniforms: close enough to a Gaussian of sigma 0.5
      const g = rand() + rand() + rand() - 1.5;
      const v = u16[i]! + Math.round(g * (u16[i]! > 200 ? 24 : 12)) + 24;
      u16[i] = v < 0 ? 0 : v > 4095 ? 4095 : v;
    }
  }
  const rowBytes = shape.columns * shape.samplesPerPixel * (shape.bitsAllocated / 8);
  const band = Math.max(1, Math.floor(shape.rows / 64));
  const start = (variant * 7) % Math.max(1, shape.rows - band);
  out.fill(shape.bitsAllocated === 16 ? 0x0c : 0xc8, start * rowBytes, (start + band) * rowBytes);
  return out;
}

/** PackBits as DICOM RLE defines it (PS3.5 G.3.1). */
function packBits(src: Buffer): Buffer {
  const out = Buffer.allocUnsafe(src.length + Math.ceil(src.length / 128) + 2);
  let o = 0;
  let i = 0;
  const n = src.length;
  while (i < n) {
    let run = 1;
    while (i + run < n && run < 128 && src[i + run] === src[i]) run++;
    if (run >= 3) {
      out[o++] = 257 - run; // -(run-1) as a byte
      out[o++] = src[i]!;
      i += run;
      continue;
    }
    // literal: up to 128 bytes, stopping before a run of 3
    const start = i;
    let len = 0;
    while (i < n && len < 128) {
      if (i + 2 < n && src[i] === src[i + 1] && src[i] === src[i + 2]) break;
      i++;
      len++;
    }
    out[o++] = len - 1;
    src.copy(out, o, start, start + len);
    o += len;
  }
  if (o % 2) out[o++] = 0;
  return out.subarray(0, o);
}

/** One frame RLE Lossless encoded: 64-byte header, then one segment per byte plane (most significant first). */
export function rleEncodeFrame(pixels: Buffer, shape: PixelShape): Buffer {
  const n = shape.rows * shape.columns;
  const bytesPerSample = shape.bitsAllocated / 8;
  const segments: Buffer[] = [];
  for (let s = 0; s < shape.samplesPerPixel; s++) {
    for (let b = bytesPerSample - 1; b >= 0; b--) {
      const plane = Buffer.allocUnsafe(n);
      const stride = shape.samplesPerPixel * bytesPerSample;
      for (let p = 0, q = s * bytesPerSample + b; p < n; p++, q += stride) plane[p] = pixels[q]!;
      segments.push(packBits(plane));
    }
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

export interface EncapsulationOptions {
  /** write a Basic Offset Table (default true; false when an Extended Offset Table is written) */
  basicOffsetTable?: boolean;
  /** split every frame into this many fragments (default 1) */
  fragmentsPerFrame?: number;
}

/** Items of encapsulated pixel data (after the element header): BOT, fragments, sequence delimiter. */
export function encapsulate(frames: Buffer[], o: EncapsulationOptions = {}): { value: Buffer; frameOffsets: number[]; frameLengths: number[] } {
  const item = (len: number) => {
    const b = Buffer.allocUnsafe(8);
    b.writeUInt16LE(0xfffe, 0);
    b.writeUInt16LE(0xe000, 2);
    b.writeUInt32LE(len, 4);
    return b;
  };
  const parts: Buffer[] = [];
  const frameOffsets: number[] = [];
  const frameLengths: number[] = [];
  let pos = 0;
  for (const f of frames) {
    frameOffsets.push(pos);
    const start = pos;
    const pieces = Math.max(1, o.fragmentsPerFrame ?? 1);
    const size = Math.ceil(f.length / pieces / 2) * 2;
    for (let k = 0; k < pieces; k++) {
      let frag = f.subarray(k * size, Math.min(f.length, (k + 1) * size));
      if (frag.length === 0) continue;
      if (frag.length % 2) frag = Buffer.concat([frag, Buffer.alloc(1)]);
      parts.push(item(frag.length), frag);
      pos += 8 + frag.length;
    }
    frameLengths.push(pos - start);
  }
  const bot = o.basicOffsetTable === false ? Buffer.alloc(0) : Buffer.alloc(4 * frames.length);
  if (bot.length) frameOffsets.forEach((v, i) => bot.writeUInt32LE(v, 4 * i));
  const end = Buffer.from([0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
  return { value: Buffer.concat([item(bot.length), bot, ...parts, end]), frameOffsets, frameLengths };
}

// ---------------------------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------------------------

export type SyntheticCharset = "ISO_IR 100" | "ISO_IR 192" | "GB18030" | "GBK";

export interface SyntheticInstanceOptions {
  patientName?: string;
  patientID?: string;
  charset?: SyntheticCharset;
  studyInstanceUID?: string;
  seriesInstanceUID?: string;
  sopInstanceUID?: string;
  modality?: string;
  studyDate?: string;
  studyTime?: string;
  accessionNumber?: string;
  studyDescription?: string;
  seriesDescription?: string;
  seriesNumber?: number;
  instanceNumber?: number;
  rows?: number;
  columns?: number;
  frames?: number;
  bitsAllocated?: 8 | 16;
  samplesPerPixel?: 1 | 3;
  /**
   * Explicit VR Little Endian (default), Implicit VR Little Endian, Explicit VR Big Endian, Deflated
   * Explicit VR Little Endian, RLE Lossless (really encoded), Encapsulated Uncompressed; any other UID is
   * written in the meta while the data set stays explicit VR little endian (to test refusals)
   */
  transferSyntaxUID?: string;
  sopClassUID?: string;
  referringPhysicianName?: string;
  birthDate?: string;
  sex?: string;
  /** naturalized extra attributes (see extraElements); null removes an attribute */
  extra?: Record<string, unknown>;
  /** seeds the pixel pattern and the made-up demographics (deterministic when given) */
  seed?: number;
  /** per-frame quantum noise in 16-bit frames, so pixel data compresses like real CT/MR (for transfer benchmarks) */
  realisticNoise?: boolean;
  /** write sequences and items with undefined length */
  undefinedLengthSequences?: boolean;
  /** encapsulated only */
  basicOffsetTable?: boolean;
  fragmentsPerFrame?: number;
  extendedOffsetTable?: boolean;
  /** the file meta's MediaStorageSOPInstanceUID, if it should differ from SOPInstanceUID */
  mediaStorageSOPInstanceUID?: string;
  /** leave out preamble and file meta: a bare data set */
  noFileMeta?: boolean;
  /** leave out the pixel data (and image pixel attributes stay) */
  noPixelData?: boolean;
}

interface Patient { name: string; id: string; birthDate: string; sex: string; charset: SyntheticCharset }
const PATIENTS: Patient[] = [
  { name: "Zhang^San=张^三", id: "CN-0001", birthDate: "19650312", sex: "M", charset: "GB18030" },
  { name: "Wang^XiaoDong=王^小东", id: "CN-0002", birthDate: "19781101", sex: "M", charset: "GB18030" },
  { name: "Li^Na=李^娜", id: "CN-0003", birthDate: "19820607", sex: "F", charset: "GBK" },
  { name: "Chen^Jing=陈^静", id: "CN-0004", birthDate: "19910223", sex: "F", charset: "ISO_IR 192" },
  { name: "Müller^Jürgen", id: "DE-4711", birthDate: "19541230", sex: "M", charset: "ISO_IR 100" },
  { name: "Smith^John^^Dr", id: "UK-42", birthDate: "19700101", sex: "M", charset: "ISO_IR 100" },
  { name: "Dupont^Amélie", id: "FR-0099", birthDate: "19880815", sex: "F", charset: "ISO_IR 100" },
  { name: "Garcia^Lucia", id: "ES-1234", birthDate: "20010419", sex: "F", charset: "ISO_IR 100" },
];
const MODALITIES = ["CT", "MR", "PT", "CR", "US", "SC"];

interface ModalityDefaults { sopClass: string; rows: number; columns: number; bits: 8 | 16; description: string; chineseDescription: string }
const MODALITY: Record<string, ModalityDefaults> = {
  CT: { sopClass: SOPClass.CTImageStorage, rows: 512, columns: 512, bits: 16, description: "CT CHEST W/O CONTRAST", chineseDescription: "胸部CT平扫" },
  MR: { sopClass: SOPClass.MRImageStorage, rows: 256, columns: 256, bits: 16, description: "MR BRAIN", chineseDescription: "头颅磁共振" },
  PT: { sopClass: SOPClass.PETImageStorage, rows: 128, columns: 128, bits: 16, description: "PET/CT WHOLE BODY", chineseDescription: "全身PET/CT" },
  CR: { sopClass: SOPClass.ComputedRadiographyImageStorage, rows: 640, columns: 512, bits: 16, description: "CHEST PA", chineseDescription: "胸部正位片" },
  US: { sopClass: SOPClass.UltrasoundImageStorage, rows: 480, columns: 640, bits: 8, description: "US ABDOMEN", chineseDescription: "腹部超声" },
  SC: { sopClass: SOPClass.SecondaryCaptureImageStorage, rows: 256, columns: 256, bits: 8, description: "SECONDARY CAPTURE", chineseDescription: "二次采集" },
};

const isChinese = (c: string | undefined) => c === "GB18030" || c === "GBK";

function pickCharset(name: string): SyntheticCharset {
  for (let i = 0; i < name.length; i++) if (name.charCodeAt(i) > 0xff) return "ISO_IR 192";
  return "ISO_IR 100";
}

const pad = (n: number, w: number) => String(n).padStart(w, "0");

interface Plan {
  elements: WriterElement[];
  encode: EncodeOptions;
  meta: FileMetaOptions;
  shape: PixelShape;
  frames: number;
  seed: number;
  instanceNumber: number;
  studyInstanceUID: string;
  seriesInstanceUID: string;
  sopInstanceUID: string;
  transferSyntaxUID: string;
}

/** Everything about an instance except its pixel data. */
function plan(o: SyntheticInstanceOptions): Plan {
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 31);
  const rand = rng(seed);
  const modality = o.modality ?? MODALITIES[Math.floor(rand() * MODALITIES.length)]!;
  const md = MODALITY[modality] ?? MODALITY.SC!;
  const patient = PATIENTS[Math.floor(rand() * PATIENTS.length)]!;
  const patientName = o.patientName ?? patient.name;
  const charset: SyntheticCharset = o.charset ?? (o.patientName !== undefined ? pickCharset(o.patientName) : patient.charset);
  const chinese = isChinese(charset) || charset === "ISO_IR 192";
  const frames = Math.max(1, o.frames ?? 1);
  const samplesPerPixel = o.samplesPerPixel ?? 1;
  const bits = o.bitsAllocated ?? (samplesPerPixel === 3 ? 8 : md.bits);
  const shape: PixelShape = { rows: o.rows ?? md.rows, columns: o.columns ?? md.columns, bitsAllocated: bits, samplesPerPixel };
  const instanceNumber = o.instanceNumber ?? 1;
  const seriesNumber = o.seriesNumber ?? 1;
  const studyInstanceUID = o.studyInstanceUID ?? newUid();
  const seriesInstanceUID = o.seriesInstanceUID ?? newUid();
  const sopInstanceUID = o.sopInstanceUID ?? newUid();
  const transferSyntaxUID = o.transferSyntaxUID ?? TransferSyntaxUID.ExplicitVRLittleEndian;
  let sopClassUID = o.sopClassUID ?? md.sopClass;
  if (!o.sopClassUID && frames > 1) {
    sopClassUID = modality === "US" ? SOPClass.UltrasoundMultiFrameImageStorage
      : samplesPerPixel === 3 ? SOPClass.MultiFrameTrueColorSecondaryCaptureImageStorage
      : bits === 16 ? SOPClass.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
      : SOPClass.MultiFrameGrayscaleByteSecondaryCaptureImageStorage;
  }
  const studyDate = o.studyDate ?? `${2019 + Math.floor(rand() * 6)}${pad(1 + Math.floor(rand() * 12), 2)}${pad(1 + Math.floor(rand() * 28), 2)}`;
  const studyTime = o.studyTime ?? `${pad(7 + Math.floor(rand() * 12), 2)}${pad(Math.floor(rand() * 60), 2)}${pad(Math.floor(rand() * 60), 2)}`;
  const z = -instanceNumber * 1.25;

  const E = (group: number, element: number, vr: string, value: WriterElement["value"]): WriterElement => ({ tag: tagOf(group, element), vr, value });
  const els: WriterElement[] = [
    E(0x0008, 0x0005, "CS", charset),
    E(0x0008, 0x0008, "CS", ["ORIGINAL", "PRIMARY", modality === "CT" ? "AXIAL" : "OTHER"]),
    E(0x0008, 0x0012, "DA", studyDate),
    E(0x0008, 0x0016, "UI", sopClassUID),
    E(0x0008, 0x0018, "UI", sopInstanceUID),
    E(0x0008, 0x0020, "DA", studyDate),
    E(0x0008, 0x0021, "DA", studyDate),
    E(0x0008, 0x0023, "DA", studyDate),
    E(0x0008, 0x0030, "TM", studyTime),
    E(0x0008, 0x0031, "TM", studyTime),
    E(0x0008, 0x0033, "TM", studyTime),
    E(0x0008, 0x0050, "SH", o.accessionNumber ?? `ACC${pad(Math.floor(rand() * 1e6), 6)}`),
    E(0x0008, 0x0060, "CS", modality),
    E(0x0008, 0x0070, "LO", "Relay Synthetic"),
    E(0x0008, 0x0080, "LO", isChinese(charset) ? "北京协和医院" : "Relay Test Hospital"),
    E(0x0008, 0x0090, "PN", o.referringPhysicianName ?? (chinese ? "Li^Wei=李^伟" : "Jones^Alice")),
    E(0x0008, 0x1030, "LO", o.studyDescription ?? (chinese ? `${md.chineseDescription} ${md.description}` : md.description)),
    E(0x0008, 0x103e, "LO", o.seriesDescription ?? `${modality} series ${seriesNumber}`),
    E(0x0008, 0x1032, "SQ", [[
      E(0x0008, 0x0100, "SH", "RPID16"),
      E(0x0008, 0x0102, "SH", "RADLEX"),
      E(0x0008, 0x0104, "LO", md.description),
    ]]),
    E(0x0010, 0x0010, "PN", patientName),
    E(0x0010, 0x0020, "LO", o.patientID ?? patient.id),
    E(0x0010, 0x0030, "DA", o.birthDate ?? patient.birthDate),
    E(0x0010, 0x0040, "CS", o.sex ?? patient.sex),
    E(0x0018, 0x0050, "DS", 1.25),
    E(0x0020, 0x000d, "UI", studyInstanceUID),
    E(0x0020, 0x000e, "UI", seriesInstanceUID),
    E(0x0020, 0x0010, "SH", "1"),
    E(0x0020, 0x0011, "IS", seriesNumber),
    E(0x0020, 0x0013, "IS", instanceNumber),
    E(0x0020, 0x0032, "DS", [-180, -180, z]),
    E(0x0020, 0x0037, "DS", [1, 0, 0, 0, 1, 0]),
    E(0x0020, 0x0052, "UI", seriesInstanceUID.length < 60 ? `${seriesInstanceUID}.1` : seriesInstanceUID),
    E(0x0020, 0x1041, "DS", z),
    E(0x0028, 0x0002, "US", samplesPerPixel),
    E(0x0028, 0x0004, "CS", samplesPerPixel === 3 ? "RGB" : "MONOCHROME2"),
    E(0x0028, 0x0010, "US", shape.rows),
    E(0x0028, 0x0011, "US", shape.columns),
    E(0x0028, 0x0030, "DS", [0.703125, 0.703125]),
    E(0x0028, 0x0100, "US", bits),
    E(0x0028, 0x0101, "US", bits === 16 ? 12 : 8),
    E(0x0028, 0x0102, "US", bits === 16 ? 11 : 7),
    E(0x0028, 0x0103, "US", 0),
    // a private block with a small binary value, so readers meet private tags and InlineBinary
    E(0x0009, 0x0010, "LO", "DICOMRELAY SYNTHETIC"),
    E(0x0009, 0x1001, "OB", Buffer.from("synthetic:" + pad(seed % 1e6, 6))),
  ];
  if (samplesPerPixel === 3) els.push(E(0x0028, 0x0006, "US", 0));
  if (frames > 1) els.push(E(0x0028, 0x0008, "IS", frames));
  if (modality === "CT") {
    els.push(E(0x0018, 0x0060, "DS", 120), E(0x0028, 0x1050, "DS", 40), E(0x0028, 0x1051, "DS", 400),
      E(0x0028, 0x1052, "DS", -1024), E(0x0028, 0x1053, "DS", 1), E(0x0028, 0x1054, "LO", "HU"));
  } else if (modality === "MR") {
    els.push(E(0x0018, 0x0080, "DS", 500), E(0x0018, 0x0081, "DS", 15), E(0x0018, 0x0087, "DS", 1.5),
      E(0x0028, 0x1050, "DS", 600), E(0x0028, 0x1051, "DS", 1200));
  } else if (modality === "PT") {
    els.push(E(0x0054, 0x1001, "CS", "BQML"), E(0x0028, 0x1052, "DS", 0), E(0x0028, 0x1053, "DS", 0.5),
      E(0x0028, 0x1050, "DS", 1000), E(0x0028, 0x1051, "DS", 2000));
  } else if (modality === "US" && frames > 1) {
    els.push(E(0x0018, 0x1063, "DS", 33.3), E(0x0028, 0x0009, "AT", 0x00181063));
  }

  if (o.extra) {
    for (const { tag, el } of extraElements(o.extra)) {
      const at = els.findIndex((e) => e.tag === tag);
      if (at >= 0) els.splice(at, 1);
      if (el) els.push(el);
    }
  }
  const sopClassEl = els.find((e) => e.tag === 0x00080016);
  const effectiveCharset = (els.find((e) => e.tag === 0x00080005)?.value as string | undefined) ?? "";
  const ts = transferSyntaxUID;
  return {
    elements: els,
    encode: {
      explicitVR: ts !== TransferSyntaxUID.ImplicitVRLittleEndian,
      littleEndian: ts !== TransferSyntaxUID.ExplicitVRBigEndian,
      charset: Array.isArray(effectiveCharset) ? String(effectiveCharset[0] ?? "") : effectiveCharset,
      undefinedLengthSequences: o.undefinedLengthSequences,
    },
    meta: {
      sopClassUID: typeof sopClassEl?.value === "string" ? sopClassEl.value : sopClassUID,
      sopInstanceUID: o.mediaStorageSOPInstanceUID ?? sopInstanceUID,
      transferSyntaxUID: ts,
    },
    shape,
    frames,
    seed,
    instanceNumber,
    studyInstanceUID,
    seriesInstanceUID,
    sopInstanceUID,
    transferSyntaxUID: ts,
  };
}

/** Pixel data element(s) for a plan, ready to encode. */
function pixelElements(p: Plan, o: SyntheticInstanceOptions): WriterElement[] {
  const frames: Buffer[] = [];
  for (let f = 0; f < p.frames; f++) frames.push(frame(p.shape, p.seed, p.instanceNumber * 13 + f, o.realisticNoise));
  const ts = p.transferSyntaxUID;
  const encapsulated = ts === TransferSyntaxUID.RLELossless || ts === TransferSyntaxUID.EncapsulatedUncompressedExplicitVRLittleEndian;
  if (!encapsulated) {
    const vr = p.shape.bitsAllocated === 16 || !p.encode.explicitVR ? "OW" : "OB";
    return [{ tag: 0x7fe00010, vr, value: frames.length === 1 ? frames[0]! : Buffer.concat(frames) }];
  }
  const encoded = ts === TransferSyntaxUID.RLELossless ? frames.map((f) => rleEncodeFrame(f, p.shape)) : frames;
  const eot = o.extendedOffsetTable ?? false;
  const enc = encapsulate(encoded, { basicOffsetTable: o.basicOffsetTable ?? !eot, fragmentsPerFrame: o.fragmentsPerFrame });
  const out: WriterElement[] = [{ tag: 0x7fe00010, vr: "OB", value: enc.value, undefinedLength: true }];
  if (eot) {
    const offsets = Buffer.alloc(8 * enc.frameOffsets.length);
    const lengths = Buffer.alloc(8 * enc.frameLengths.length);
    enc.frameOffsets.forEach((v, i) => offsets.writeBigUInt64LE(BigInt(v), 8 * i));
    // lengths are of the frame's data, without item headers, for a single fragment per frame
    encoded.forEach((f, i) => lengths.writeBigUInt64LE(BigInt(f.length + (f.length % 2)), 8 * i));
    out.push({ tag: 0x7fe00001, vr: "OV", value: offsets }, { tag: 0x7fe00002, vr: "OV", value: lengths });
  }
  return out;
}

/** A complete Part-10 file in memory. */
export function makeInstance(o: SyntheticInstanceOptions = {}): Buffer {
  const p = plan(o);
  const elements = o.noPixelData ? p.elements : [...p.elements, ...pixelElements(p, o)];
  const ts = p.transferSyntaxUID;
  let dataset: Buffer;
  if (ts === TransferSyntaxUID.DeflatedExplicitVRLittleEndian) {
    dataset = zlib.deflateRawSync(encodeDataset(elements, p.encode));
  } else {
    dataset = encodeDataset(elements, p.encode);
  }
  if (o.noFileMeta) return dataset;
  return Buffer.concat([encodeFileMeta(p.meta), dataset]);
}

// ---------------------------------------------------------------------------------------------
// Studies
// ---------------------------------------------------------------------------------------------

export interface SyntheticStudyOptions extends Omit<SyntheticInstanceOptions, "seriesInstanceUID" | "sopInstanceUID" | "instanceNumber" | "seriesNumber" | "seriesDescription"> {
  instances: number;
  seriesCount?: number;
}

export interface SyntheticInstance {
  studyInstanceUID: string;
  seriesInstanceUID: string;
  sopInstanceUID: string;
  seriesNumber: number;
  instanceNumber: number;
  bytes: Buffer;
}

/**
 * A study, one instance at a time (so 5,000 instances never sit in memory together). Study-level
 * attributes (patient, dates, accession, charset) are fixed once; instances are spread over the series
 * in contiguous blocks with instance numbers 1..n per series.
 */
export function* generateStudy(opts: SyntheticStudyOptions): Generator<SyntheticInstance> {
  const instances = Math.max(0, Math.floor(opts.instances));
  const seriesCount = Math.max(1, Math.min(opts.seriesCount ?? 1, Math.max(1, instances)));
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
  const rand = rng(seed + 1);
  const patient = PATIENTS[Math.floor(rand() * PATIENTS.length)]!;
  const patientName = opts.patientName ?? patient.name;
  const base: SyntheticInstanceOptions = {
    ...opts,
    seed,
    modality: opts.modality ?? MODALITIES[Math.floor(rand() * MODALITIES.length)]!,
    patientName,
    patientID: opts.patientID ?? patient.id,
    birthDate: opts.birthDate ?? patient.birthDate,
    sex: opts.sex ?? patient.sex,
    charset: opts.charset ?? (opts.patientName !== undefined ? pickCharset(patientName) : patient.charset),
    studyInstanceUID: opts.studyInstanceUID ?? newUid(),
    studyDate: opts.studyDate ?? `${2019 + Math.floor(rand() * 6)}${pad(1 + Math.floor(rand() * 12), 2)}${pad(1 + Math.floor(rand() * 28), 2)}`,
    studyTime: opts.studyTime ?? `${pad(7 + Math.floor(rand() * 12), 2)}${pad(Math.floor(rand() * 60), 2)}00`,
    accessionNumber: opts.accessionNumber ?? `ACC${pad(Math.floor(rand() * 1e6), 6)}`,
  };
  const series = Array.from({ length: seriesCount }, () => newUid());
  const perSeries = Math.ceil(instances / seriesCount);
  for (let i = 0; i < instances; i++) {
    const s = Math.min(seriesCount - 1, Math.floor(i / perSeries));
    const instanceNumber = i - s * perSeries + 1;
    const sopInstanceUID = newUid();
    const bytes = makeInstance({
      ...base,
      seriesInstanceUID: series[s]!,
      seriesNumber: s + 1,
      seriesDescription: `${base.modality} series ${s + 1}`,
      sopInstanceUID,
      instanceNumber,
    });
    yield { studyInstanceUID: base.studyInstanceUID!, seriesInstanceUID: series[s]!, sopInstanceUID, seriesNumber: s + 1, instanceNumber, bytes };
  }
}

/** Writes a study as DIR/<series>/<instance>.dcm. */
export async function writeStudy(dir: string, opts: SyntheticStudyOptions): Promise<{ files: string[]; studyInstanceUID: string; totalBytes: number }> {
  const files: string[] = [];
  let totalBytes = 0;
  let studyInstanceUID = opts.studyInstanceUID ?? "";
  for (const inst of generateStudy(opts)) {
    studyInstanceUID = inst.studyInstanceUID;
    const d = path.join(dir, `S${pad(inst.seriesNumber, 3)}`);
    await fsp.mkdir(d, { recursive: true });
    const file = path.join(d, `I${pad(inst.instanceNumber, 5)}.dcm`);
    await fsp.writeFile(file, inst.bytes);
    files.push(file);
    totalBytes += inst.bytes.length;
  }
  return { files, studyInstanceUID, totalBytes };
}

export interface LargeInstanceInfo {
  path: string;
  bytes: number;
  frames: number;
  studyInstanceUID: string;
  seriesInstanceUID: string;
  sopInstanceUID: string;
}

/**
 * One multi-frame instance of about targetBytes (native explicit VR LE, 16-bit frames), streamed to
 * disk frame by frame so it never sits in memory.
 */
export async function writeLargeInstance(file: string, targetBytes: number, opts: SyntheticInstanceOptions = {}): Promise<LargeInstanceInfo> {
  const shape0 = { rows: opts.rows ?? 512, columns: opts.columns ?? 512 };
  const frameBytes = shape0.rows * shape0.columns * 2;
  const frames = Math.max(1, Math.round((targetBytes - 4096) / frameBytes));
  if (frames * frameBytes >= 0xfffffffe) throw new Error("pixel data larger than a 32-bit length; ask for fewer bytes");
  const p = plan({ modality: "MR", ...opts, ...shape0, bitsAllocated: 16, samplesPerPixel: 1, frames, transferSyntaxUID: TransferSyntaxUID.ExplicitVRLittleEndian });
  const header = Buffer.concat([encodeFileMeta(p.meta), encodeDataset(p.elements, p.encode)]);
  const pixelHeader = Buffer.alloc(12);
  pixelHeader.writeUInt32LE(0x00107fe0, 0); // (7FE0,0010) little endian: group then element
  pixelHeader.write("OW", 4, "latin1");
  pixelHeader.writeUInt32LE(frames * frameBytes, 8);
  await fsp.mkdir(path.dirname(file), { recursive: true });
  // a generator through pipeline: backpressure and errors handled, one frame in memory at a time
  await pipeline(Readable.from((function* () {
    yield header;
    yield pixelHeader;
    for (let f = 0; f < frames; f++) yield frame(p.shape, p.seed, f, opts.realisticNoise);
  })()), fs.createWriteStream(file));
  return {
    path: file,
    bytes: header.length + pixelHeader.length + frames * frameBytes,
    frames,
    studyInstanceUID: p.studyInstanceUID,
    seriesInstanceUID: p.seriesInstanceUID,
    sopInstanceUID: p.sopInstanceUID,
  };
}
