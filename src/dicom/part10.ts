/**
 * The Part-10 reader: learns what ingest, QIDO and WADO need from one file without holding its bulk
 * data in memory.
 *
 * 1. Check the preamble and "DICM", read the file meta group (explicit VR little endian).
 * 2. Walk the top-level elements of the data set by positional reads (64 KiB windows), in the transfer
 *    syntax's encoding. Pixel data and binary elements at least `bulkDataThreshold` long are only
 *    located (offset, length; encapsulated pixel data fragment by fragment), never read.
 * 3. Re-encode the remaining elements (the "header") as explicit VR little endian, with every sequence
 *    and item of undefined length, and decode the values and character sets: fastDecode.ts when the text is
 *    Latin-1, UTF-8, GB18030 or GBK (no ISO 2022 escapes) and it knows every element, else dcmjs (the same result for several times the CPU). Binary values
 *    inside sequence items at least `bulkDataThreshold` long (waveform data) are located here, from the
 *    kept sequence's position, and handed to the decoder empty.
 * 4. Convert to DICOM JSON, add BulkDataURIs, check the UIDs.
 *
 * Choices: a file without the 128-byte preamble and "DICM" is refused, even when it is a bare data set
 * that would parse, because WADO-RS serves stored bytes as application/dicom, which must be Part 10.
 * A deflated data set is inflated as a stream while it is walked (src/dicom/deflate.ts); its pixel data and bulk
 * data are located in the inflated data set (inflatedFrom), so they are served by inflating, the stored bytes stay
 * as received.
 */
import type { FileHandle } from "node:fs/promises";
import { inflate, InflatedSource, sourceStream } from "./deflate.ts";
import { createRequire } from "node:module";
import { FailureReason, InstanceRejectedError } from "./failureReasons.ts";
import { BULK_ROOT_PLACEHOLDER, type BulkDataLocation, type ByteRange, type DicomJsonDataset, type ParsedInstance, type PixelDataLocation } from "./types.ts";
import { transferSyntaxInfo, type TransferSyntaxInfo } from "./transferSyntax.ts";
import { dictionaryVR } from "./dictionary.ts";
import { chooseCharset, needsJisX0201, sortDicomJson, textAttribute, toDicomJson, type CharsetChoice, type DcmjsDict } from "./dicomJson.ts";
import { fastDecodeHeader, FastDecodeFallback } from "./fastDecode.ts";
import { isValidUid, TransferSyntaxUID } from "./uids.ts";

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

export interface RandomAccessSource {
  size: number;
  /** up to `length` bytes from `position` (fewer only at the end of the source) */
  read(position: number, length: number): Promise<Buffer>;
}

export function fileSource(fd: FileHandle, size: number): RandomAccessSource {
  return {
    size,
    async read(position, length) {
      const n = Math.max(0, Math.min(length, size - position));
      const buf = Buffer.allocUnsafe(n);
      let filled = 0;
      // a short read is legal; stop at EOF (bytesRead 0) so the loop is bounded
      while (filled < n) {
        const { bytesRead } = await fd.read(buf, filled, n - filled, position + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      return filled === n ? buf : buf.subarray(0, filled);
    },
  };
}

export function bufferSource(buf: Buffer): RandomAccessSource {
  return {
    size: buf.length,
    async read(position, length) {
      return buf.subarray(position, Math.min(buf.length, position + length));
    },
  };
}

/** A source over bytes held as a list of buffers (as they arrived), without joining them first. */
export function chunksSource(chunks: readonly Buffer[]): RandomAccessSource {
  const starts: number[] = [];
  let size = 0;
  for (const c of chunks) {
    starts.push(size);
    size += c.length;
  }
  return {
    size,
    async read(position, length) {
      const end = Math.min(size, position + length);
      if (end <= position) return Buffer.alloc(0);
      // the chunk holding `position`: binary search over the start offsets
      let lo = 0;
      let hi = chunks.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (starts[mid]! <= position) lo = mid;
        else hi = mid - 1;
      }
      const first = chunks[lo]!;
      const from = position - starts[lo]!;
      if (end - starts[lo]! <= first.length) return first.subarray(from, end - starts[lo]!);
      const out = Buffer.allocUnsafe(end - position);
      let filled = 0;
      for (let i = lo; filled < out.length; i++) {
        const c = chunks[i]!;
        const off = i === lo ? from : 0;
        filled += c.copy(out, filled, off, Math.min(c.length, off + out.length - filled));
      }
      return out;
    },
  };
}

export interface ReadPart10Options {
  /** largest header (everything but bulk data) parsed into memory, bytes */
  maxHeaderBytes: number;
  /** binary top-level values at least this long are bulk data */
  bulkDataThreshold: number;
  /** largest inflated data set of a Deflated Explicit VR Little Endian file, bytes (default 4 GiB) */
  maxInflatedBytes?: number;
}

const DEFAULT_MAX_INFLATED = 4 * 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Media Storage Directory Storage: the SOP class of a DICOMDIR */
const MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10";
const cannotUnderstand = (msg: string) => new InstanceRejectedError(FailureReason.CannotUnderstand, msg);
const doesNotMatch = (msg: string) => new InstanceRejectedError(FailureReason.DataSetDoesNotMatchSOPClass, msg);
const tagName = (tag: number) => `(${(tag >>> 16).toString(16).toUpperCase().padStart(4, "0")},${(tag & 0xffff).toString(16).toUpperCase().padStart(4, "0")})`;
const hex8 = (tag: number) => (tag >>> 0).toString(16).toUpperCase().padStart(8, "0");

class Truncated extends InstanceRejectedError {
  constructor(what: string, at: number, needed: number, size: number) {
    super(FailureReason.CannotUnderstand,
      `the file is truncated: ${what} at byte ${at} needs ${needed} bytes but the file ends at byte ${size}; send the complete file`);
  }
}

/** Raised by the in-memory scanners when they need bytes past the buffer they were given. */
class NeedMore extends Error {}

// ---------------------------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------------------------

interface Encoding { explicit: boolean; le: boolean }
const EXPLICIT_LE: Encoding = { explicit: true, le: true };
const IMPLICIT_LE: Encoding = { explicit: false, le: true };

const UNDEFINED = 0xffffffff;
const ITEM = 0xfffee000;
const ITEM_END = 0xfffee00d;
const SEQ_END = 0xfffee0dd;
const PIXEL_DATA = 0x7fe00010;
const FLOAT_PIXEL_DATA = 0x7fe00008;
const DOUBLE_PIXEL_DATA = 0x7fe00009;
const EXTENDED_OFFSET_TABLE = 0x7fe00001;
const EXTENDED_OFFSET_TABLE_LENGTHS = 0x7fe00002;
const TRAILING_PADDING = 0xfffcfffc;
const SPECIFIC_CHARACTER_SET = 0x00080005;
const PIXEL_REPRESENTATION = 0x00280103;

const KNOWN_VRS = new Set(["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"]);
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const BINARY_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "UN"]);
/** VRs dcmjs does not know; handed to it as UN and converted here (top level) */
const FOREIGN_VRS = new Set(["SV", "OL", "OV"]);
/** text VRs whose values follow SpecificCharacterSet */
const CHARSET_TEXT_VRS = new Set(["PN", "LO", "SH", "LT", "ST", "UT", "UC"]);
/** byte size of one value, for swapping big endian values */
const SWAP_UNIT: Record<string, number> = { US: 2, SS: 2, OW: 2, AT: 2, UL: 4, SL: 4, FL: 4, OF: 4, OL: 4, FD: 8, OD: 8, SV: 8, UV: 8, OV: 8 };

const isPixelTag = (tag: number) => tag === PIXEL_DATA || tag === FLOAT_PIXEL_DATA || tag === DOUBLE_PIXEL_DATA;

/** The VR of an element in an implicit VR data set, from the dictionary. */
function implicitVR(tag: number, pixelRepresentation: number): string {
  const group = tag >>> 16;
  const element = tag & 0xffff;
  if (element === 0) return "UL";
  if (group & 1) return element >= 0x10 && element <= 0xff ? "LO" : "UN";
  const vr = dictionaryVR(tag);
  if (!vr) return "UN";
  if (vr === "xs") return pixelRepresentation === 1 ? "SS" : "US";
  if (vr === "ox" || vr === "lt") return "OW";
  return KNOWN_VRS.has(vr) ? vr : vr.length > 2 ? vr.slice(0, 2) : "UN";
}

interface ElementHeader {
  tag: number;
  /** VR as written (explicit) or "" (implicit) */
  vr: string;
  length: number;
  headerLength: number;
}

/** Reads an element header from `b` at `p`; throws NeedMore if `b` ends first. */
function parseHeader(b: Buffer, p: number, enc: Encoding, at: number): ElementHeader {
  if (p + 8 > b.length) throw new NeedMore();
  const group = enc.le ? b.readUInt16LE(p) : b.readUInt16BE(p);
  const element = enc.le ? b.readUInt16LE(p + 2) : b.readUInt16BE(p + 2);
  const tag = ((group << 16) | element) >>> 0;
  if (group === 0xfffe || !enc.explicit) {
    return { tag, vr: "", length: enc.le ? b.readUInt32LE(p + 4) : b.readUInt32BE(p + 4), headerLength: 8 };
  }
  const vr = String.fromCharCode(b[p + 4]!, b[p + 5]!);
  if (!KNOWN_VRS.has(vr)) {
    throw cannotUnderstand(`element ${tagName(tag)} at byte ${at} has no valid value representation ("${vr.replace(/[^\x20-\x7e]/g, "?")}"); the data set is damaged or not in the transfer syntax its file meta names`);
  }
  if (LONG_VRS.has(vr)) {
    if (p + 12 > b.length) throw new NeedMore();
    return { tag, vr, length: enc.le ? b.readUInt32LE(p + 8) : b.readUInt32BE(p + 8), headerLength: 12 };
  }
  return { tag, vr, length: enc.le ? b.readUInt16LE(p + 6) : b.readUInt16BE(p + 6), headerLength: 8 };
}

const MAX_DEPTH = 64;

/**
 * End (exclusive, after the sequence delimiter) of an undefined-length sequence whose first item starts
 * at `p` in `b`. `base` is b's position in the file, for messages; `complete` says b reaches the end of
 * the file (so running out is truncation, not NeedMore).
 */
function sequenceEnd(b: Buffer, p: number, enc: Encoding, depth: number, base: number, complete: boolean, size: number): number {
  if (depth > MAX_DEPTH) throw cannotUnderstand(`sequences are nested more than ${MAX_DEPTH} deep at byte ${base + p}; the data set is damaged`);
  const short = (what: string, needed: number) => (complete ? new Truncated(what, base + p, needed, size) : new NeedMore());
  // every iteration moves p forward by at least 8 bytes, so the loop ends with the buffer
  for (;;) {
    if (p + 8 > b.length) throw short("a sequence item", 8);
    const h = parseHeader(b, p, enc, base + p);
    if (h.tag === SEQ_END) return p + 8;
    if (h.tag !== ITEM) throw cannotUnderstand(`expected a sequence item at byte ${base + p} but found ${tagName(h.tag)}; the data set is damaged`);
    if (h.length === UNDEFINED) {
      p = itemEnd(b, p + 8, enc, depth, base, complete, size);
    } else {
      if (p + 8 + h.length > b.length) throw short("a sequence item", 8 + h.length);
      p += 8 + h.length;
    }
  }
}

/** End (after the item delimiter) of an undefined-length item whose first element starts at `p`. */
function itemEnd(b: Buffer, p: number, enc: Encoding, depth: number, base: number, complete: boolean, size: number): number {
  const short = (what: string, needed: number) => (complete ? new Truncated(what, base + p, needed, size) : new NeedMore());
  for (;;) {
    if (p + 8 > b.length) throw short("an element in a sequence item", 8);
    let h: ElementHeader;
    try {
      h = parseHeader(b, p, enc, base + p);
    } catch (err) {
      if (err instanceof NeedMore) throw short("an element header", 12);
      throw err;
    }
    if (h.tag === ITEM_END) return p + 8;
    if (h.tag >>> 16 === 0xfffe) throw cannotUnderstand(`unexpected ${tagName(h.tag)} inside a sequence item at byte ${base + p}; the data set is damaged`);
    const valueAt = p + h.headerLength;
    if (h.length === UNDEFINED) {
      // a nested sequence, UN holding an implicit VR sequence, or encapsulated pixel data (items too)
      p = sequenceEnd(b, valueAt, nestedEncoding(enc, h), depth + 1, base, complete, size);
    } else {
      if (valueAt + h.length > b.length) throw short(`element ${tagName(h.tag)}`, h.headerLength + h.length);
      p = valueAt + h.length;
    }
  }
}

/** Content of an undefined-length UN is implicit VR little endian (PS3.5 6.2.2). */
function nestedEncoding(enc: Encoding, h: ElementHeader): Encoding {
  return enc.explicit && h.vr === "UN" ? IMPLICIT_LE : enc;
}

// ---------------------------------------------------------------------------------------------
// Windowed reads
// ---------------------------------------------------------------------------------------------

const CHUNK = 64 * 1024;

class Window {
  private buf: Buffer = Buffer.alloc(0);
  private start = 0;
  constructor(private readonly src: RandomAccessSource, readonly end: number) {}

  /**
   * `n` bytes at `pos` (a view into the current window when it holds them). A miss reads `readAhead`
   * bytes at least; item headers between large fragments use a small one so the fragments are not read.
   */
  async bytes(pos: number, n: number, what: string, readAhead = CHUNK): Promise<Buffer> {
    if (pos + n > this.end) throw new Truncated(what, pos, n, this.end);
    if (pos < this.start || pos + n > this.start + this.buf.length) {
      const len = Math.min(Math.max(n, readAhead), this.end - pos);
      this.buf = await this.src.read(pos, len);
      this.start = pos;
      if (this.buf.length < n) throw new Truncated(what, pos, n, pos + this.buf.length);
    }
    return this.buf.subarray(pos - this.start, pos - this.start + n);
  }

  /** Up to `n` bytes at `pos`, fewer at the end of the file. */
  async upTo(pos: number, n: number): Promise<Buffer> {
    return this.bytes(pos, Math.min(n, this.end - pos), "data");
  }
}

// ---------------------------------------------------------------------------------------------
// File meta
// ---------------------------------------------------------------------------------------------

interface FileMeta {
  /** raw elements (explicit VR LE), without group length */
  elements: Array<{ tag: number; raw: Buffer }>;
  transferSyntaxUID: string;
  mediaStorageSOPInstanceUID?: string;
  mediaStorageSOPClassUID?: string;
  /** first byte of the data set */
  end: number;
}

const uidText = (b: Buffer) => b.toString("latin1").replace(/[\0 ]+$/, "").trim();

async function readFileMeta(win: Window, maxHeaderBytes: number): Promise<FileMeta> {
  let pos = 132;
  const elements: FileMeta["elements"] = [];
  const meta: Partial<FileMeta> = {};
  // group 0002 ends where another group starts; the group length is not trusted (writers get it wrong)
  while (pos < win.end) {
    if (pos - 132 > maxHeaderBytes) {
      throw new InstanceRejectedError(FailureReason.OutOfResources, `the file meta information is larger than ${maxHeaderBytes} bytes`);
    }
    const peek = await win.upTo(pos, 12);
    if (peek.length < 2 || peek.readUInt16LE(0) !== 0x0002) break;
    let h: ElementHeader;
    try {
      h = parseHeader(peek, 0, EXPLICIT_LE, pos);
    } catch (err) {
      if (err instanceof NeedMore) throw new Truncated("a file meta element", pos, 12, win.end);
      throw err;
    }
    if (h.length === UNDEFINED) throw cannotUnderstand(`file meta element ${tagName(h.tag)} has an undefined length; the file meta information is damaged`);
    const raw = await win.bytes(pos, h.headerLength + h.length, `file meta element ${tagName(h.tag)}`);
    const value = raw.subarray(h.headerLength);
    if (h.tag === 0x00020010) meta.transferSyntaxUID = uidText(value);
    else if (h.tag === 0x00020003) meta.mediaStorageSOPInstanceUID = uidText(value);
    else if (h.tag === 0x00020002) meta.mediaStorageSOPClassUID = uidText(value);
    if (h.tag !== 0x00020000 && h.tag !== 0x00020010) elements.push({ tag: h.tag, raw: Buffer.from(raw) });
    pos += h.headerLength + h.length;
  }
  if (!meta.transferSyntaxUID) {
    throw cannotUnderstand("the file meta information has no TransferSyntaxUID (0002,0010), so the data set cannot be decoded");
  }
  return { elements, transferSyntaxUID: meta.transferSyntaxUID, mediaStorageSOPInstanceUID: meta.mediaStorageSOPInstanceUID, mediaStorageSOPClassUID: meta.mediaStorageSOPClassUID, end: pos };
}

// ---------------------------------------------------------------------------------------------
// Not DICOM at all
// ---------------------------------------------------------------------------------------------

const MAGIC: Array<{ test: (b: Buffer) => boolean; what: string; advice: string }> = [
  { test: (b) => b.subarray(0, 5).toString("latin1") === "%PDF-", what: "a PDF document", advice: "ask for the DICOM export of the study (a PDF report can be sent as a document to wrap)" },
  { test: (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff, what: "a JPEG image", advice: "ask for the DICOM export of the study (a photo can be sent as a document to wrap)" },
  { test: (b) => b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), what: "a PNG image", advice: "ask for the DICOM export of the study" },
  { test: (b) => b.subarray(0, 4).toString("latin1") === "GIF8", what: "a GIF image", advice: "ask for the DICOM export of the study" },
  { test: (b) => ["II*\0", "MM\0*"].includes(b.subarray(0, 4).toString("latin1")), what: "a TIFF image", advice: "ask for the DICOM export of the study" },
  { test: (b) => b[0] === 0x50 && b[1] === 0x4b && (b[2] === 3 || b[2] === 5) && (b[3] === 4 || b[3] === 6), what: "a ZIP archive", advice: "unpack it and send the DICOM files inside, or upload it as a bundle through the transfer API" },
  { test: (b) => b[0] === 0x1f && b[1] === 0x8b, what: "a gzip archive", advice: "unpack it and send the DICOM files inside, or upload it as a bundle through the transfer API" },
  { test: (b) => b.length >= 262 && b.subarray(257, 262).toString("latin1") === "ustar", what: "a tar archive", advice: "unpack it and send the DICOM files inside, or upload it as a bundle through the transfer API" },
  { test: (b) => /^\s*(<!doctype html|<html)/i.test(b.subarray(0, 64).toString("latin1")), what: "an HTML page", advice: "check the download link; it returned a web page instead of the DICOM file" },
];

/** A bare data set (no preamble) starts with a low group tag in little endian, e.g. (0008,0005). */
function looksLikeBareDataset(b: Buffer): boolean {
  if (b.length < 8) return false;
  const group = b.readUInt16LE(0);
  return (group === 0x0002 || group === 0x0008) && b.readUInt16LE(2) < 0x0100;
}

function refuseNonDicom(head: Buffer, size: number): never {
  for (const m of MAGIC) {
    if (m.test(head)) throw cannotUnderstand(`this is ${m.what}, not a DICOM file; ${m.advice}`);
  }
  if (looksLikeBareDataset(head)) {
    throw cannotUnderstand("this is a bare DICOM data set without the Part-10 header (128-byte preamble, \"DICM\", file meta information); export it again as a DICOM Part-10 file");
  }
  if (size < 132) throw cannotUnderstand(`the file is ${size} bytes, too short to be a DICOM Part-10 file (128-byte preamble, "DICM", file meta information)`);
  throw cannotUnderstand("this is not a DICOM file: there is no \"DICM\" marker after the 128-byte preamble and it is no known file type; send DICOM Part-10 files");
}

// ---------------------------------------------------------------------------------------------
// Top-level walk
// ---------------------------------------------------------------------------------------------

interface KeptElement {
  tag: number;
  vr: string;
  /** value bytes in the source encoding (for undefined-length sequences: items, without the final delimiter) */
  value: Buffer;
  undefinedLength: boolean;
  /** encoding of nested items */
  nested: Encoding;
  /** position of the value in the (inflated) data set's file coordinates */
  offset: number;
}

interface RawPixelData {
  tag: number;
  vr: string;
  offset: number;
  length: number;
  encapsulated: boolean;
  /** encapsulated: Basic Offset Table entries, fragments (value ranges) and the first fragment's item position */
  bot?: number[];
  fragments?: Array<ByteRange & { item: number }>;
  firstFragmentItem?: number;
}

interface Walk {
  kept: KeptElement[];
  bulk: BulkDataLocation[];
  pixel: RawPixelData | null;
  eot?: { offsets: Buffer; lengths?: Buffer };
  /** raw values of the few top-level elements the reader needs before dcmjs */
  specificCharacterSet?: Buffer;
}

async function walkDataset(win: Window, start: number, enc: Encoding, opts: ReadPart10Options): Promise<Walk> {
  const out: Walk = { kept: [], bulk: [], pixel: null };
  let headerBytes = 0;
  let pixelRepresentation = 0;
  const tooLarge = () => new InstanceRejectedError(FailureReason.OutOfResources,
    `the header (everything but bulk data) is larger than the relay parses in memory (${opts.maxHeaderBytes} bytes); ask the administrator to raise ingest.maxHeaderBytes`);
  let pos = start;
  // each iteration moves pos forward by at least 8 bytes
  while (pos < win.end) {
    const peek = await win.upTo(pos, 12);
    if (peek.length < 8) {
      if (peek.every((x) => x === 0)) break; // a few zero bytes of padding after the last element
      throw new Truncated("an element header", pos, 8, win.end);
    }
    let h: ElementHeader;
    try {
      h = parseHeader(peek, 0, enc, pos);
    } catch (err) {
      if (err instanceof NeedMore) throw new Truncated("an element header", pos, 12, win.end);
      throw err;
    }
    const valueAt = pos + h.headerLength;
    if (h.tag >>> 16 === 0xfffe) throw cannotUnderstand(`unexpected ${tagName(h.tag)} at the top level of the data set at byte ${pos}; the data set is damaged`);
    const vr = enc.explicit ? h.vr : implicitVR(h.tag, pixelRepresentation);

    if (h.length === UNDEFINED) {
      if (h.tag === PIXEL_DATA && enc.explicit) {
        out.pixel = await scanEncapsulated(win, h, valueAt, opts);
        out.bulk.push({ tag: hex8(h.tag), vr: "OB", offset: valueAt, length: out.pixel.length });
        pos = valueAt + out.pixel.length;
        continue;
      }
      if (vr !== "SQ" && vr !== "UN" && enc.explicit) {
        throw cannotUnderstand(`element ${tagName(h.tag)} (${vr}) at byte ${pos} has an undefined length, which only sequences and pixel data may have`);
      }
      const nested = nestedEncoding(enc, h);
      const budget = opts.maxHeaderBytes - headerBytes;
      let want = CHUNK;
      let end = -1;
      // grow the buffer until the sequence's end is inside it (bounded by the header budget)
      for (let attempt = 0; end < 0 && attempt < 64; attempt++) {
        const avail = Math.min(win.end - valueAt, want, budget + 8);
        const b = await win.upTo(valueAt, avail);
        try {
          end = sequenceEnd(b, 0, nested, 1, valueAt, valueAt + avail >= win.end, win.end);
        } catch (err) {
          if (!(err instanceof NeedMore)) throw err;
          if (avail > budget) throw tooLarge();
          want *= 4;
        }
      }
      if (end < 0) throw tooLarge();
      headerBytes += h.headerLength + end;
      if (headerBytes > opts.maxHeaderBytes) throw tooLarge();
      const value = Buffer.from(await win.bytes(valueAt, end - 8, `element ${tagName(h.tag)}`));
      out.kept.push({ tag: h.tag, vr: "SQ", value, undefinedLength: true, nested, offset: valueAt });
      pos = valueAt + end;
      continue;
    }

    const valueEnd = valueAt + h.length;
    if (valueEnd > win.end) throw new Truncated(`element ${tagName(h.tag)} (${h.length} bytes)`, pos, h.headerLength + h.length, win.end);
    if (h.tag === TRAILING_PADDING) {
      pos = valueEnd;
      continue;
    }
    if (isPixelTag(h.tag)) {
      const pvr = enc.explicit ? vr : h.tag === PIXEL_DATA ? "OW" : h.tag === FLOAT_PIXEL_DATA ? "OF" : "OD";
      if (!out.pixel || h.tag === PIXEL_DATA) out.pixel = { tag: h.tag, vr: pvr, offset: valueAt, length: h.length, encapsulated: false };
      if (h.length > 0) out.bulk.push({ tag: hex8(h.tag), vr: pvr, offset: valueAt, length: h.length });
      pos = valueEnd;
      continue;
    }
    const isEot = h.tag === EXTENDED_OFFSET_TABLE || h.tag === EXTENDED_OFFSET_TABLE_LENGTHS;
    const bulk = BINARY_VRS.has(vr) && h.length > 0 && h.length >= opts.bulkDataThreshold;
    if (isEot) {
      // needed to map frames even when it is bulk data; 8 bytes per frame
      if (h.length > opts.maxHeaderBytes) throw tooLarge();
      const v = Buffer.from(await win.bytes(valueAt, h.length, `element ${tagName(h.tag)}`));
      out.eot ??= { offsets: Buffer.alloc(0) };
      if (h.tag === EXTENDED_OFFSET_TABLE) out.eot.offsets = v;
      else out.eot.lengths = v;
    }
    if (bulk) {
      out.bulk.push({ tag: hex8(h.tag), vr, offset: valueAt, length: h.length });
      pos = valueEnd;
      continue;
    }
    headerBytes += h.headerLength + h.length;
    if (headerBytes > opts.maxHeaderBytes) throw tooLarge();
    // group 0002 inside the data set belongs to no one; the file meta is authoritative
    if (h.tag >>> 16 !== 0x0002) {
      const value = Buffer.from(await win.bytes(valueAt, h.length, `element ${tagName(h.tag)}`));
      if (h.tag === PIXEL_REPRESENTATION && value.length >= 2) pixelRepresentation = enc.le ? value.readUInt16LE(0) : value.readUInt16BE(0);
      if (h.tag === SPECIFIC_CHARACTER_SET) out.specificCharacterSet = value;
      out.kept.push({ tag: h.tag, vr, value, undefinedLength: false, nested: enc, offset: valueAt });
    }
    pos = valueEnd;
  }
  return out;
}

/** Locates the fragments of encapsulated pixel data by reading item headers only. */
async function scanEncapsulated(win: Window, h: ElementHeader, valueAt: number, opts: ReadPart10Options): Promise<RawPixelData> {
  const first = await win.bytes(valueAt, 8, "the Basic Offset Table item");
  if (first.readUInt32LE(0) !== 0xe000fffe) throw cannotUnderstand(`encapsulated pixel data at byte ${valueAt} does not start with the Basic Offset Table item; the pixel data is damaged`);
  const botLength = first.readUInt32LE(4);
  if (botLength === UNDEFINED || botLength % 4) throw cannotUnderstand(`the Basic Offset Table at byte ${valueAt} has an invalid length (${botLength})`);
  if (botLength > opts.maxHeaderBytes) throw new InstanceRejectedError(FailureReason.OutOfResources, `the Basic Offset Table is larger than ${opts.maxHeaderBytes} bytes`);
  const botBytes = await win.bytes(valueAt + 8, botLength, "the Basic Offset Table");
  const bot: number[] = [];
  for (let i = 0; i < botLength; i += 4) bot.push(botBytes.readUInt32LE(i));
  const fragments: Array<ByteRange & { item: number }> = [];
  let pos = valueAt + 8 + botLength;
  const firstFragmentItem = pos;
  let readAhead = CHUNK;
  // each iteration moves pos forward by at least 8 bytes
  for (;;) {
    const item = await win.bytes(pos, 8, "a pixel data fragment item", readAhead);
    const tag = item.readUInt32LE(0);
    const len = item.readUInt32LE(4);
    if (tag === 0xe0ddfffe) {
      pos += 8;
      break;
    }
    if (tag !== 0xe000fffe || len === UNDEFINED) throw cannotUnderstand(`expected a pixel data fragment item at byte ${pos}; the encapsulated pixel data is damaged`);
    if (pos + 8 + len > win.end) throw new Truncated("a pixel data fragment", pos, 8 + len, win.end);
    fragments.push({ item: pos, offset: pos + 8, length: len });
    pos += 8 + len;
    // after a large fragment the next item header is far away: read just the header, not 64 KiB of pixels
    readAhead = len > CHUNK / 2 ? 8 : CHUNK;
  }
  return { tag: h.tag, vr: "OB", offset: valueAt, length: pos - valueAt, encapsulated: true, bot, fragments, firstFragmentItem };
}

// ---------------------------------------------------------------------------------------------
// Re-encoding the header as explicit VR little endian (what dcmjs is given)
// ---------------------------------------------------------------------------------------------

class Sink {
  private parts: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }
  header(tag: number, vr: string, length: number): void {
    const long = LONG_VRS.has(vr);
    const b = Buffer.allocUnsafe(long ? 12 : 8);
    b.writeUInt16LE(tag >>> 16, 0);
    b.writeUInt16LE(tag & 0xffff, 2);
    b.write(vr, 4, "latin1");
    if (long) {
      b.writeUInt16LE(0, 6);
      b.writeUInt32LE(length >>> 0, 8);
    } else {
      b.writeUInt16LE(length, 6);
    }
    this.push(b);
  }
  /** item / delimiter header: tag and a 32-bit length, no VR */
  delimiter(tag: number, length = 0): void {
    const b = Buffer.allocUnsafe(8);
    b.writeUInt16LE(tag >>> 16, 0);
    b.writeUInt16LE(tag & 0xffff, 2);
    b.writeUInt32LE(length >>> 0, 4);
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}

/** (FFFE,E000) Item as its first 4 bytes read little endian */
const ITEM_LE = 0xe000fffe;
const EMPTY_ITEM_MARKER = Buffer.from([0, 0, 0, 0, 0x55, 0x4c, 4, 0, 0, 0, 0, 0]); // (0000,0000) UL 0

/** A binary value inside a sequence item, left out of the metadata and served by its BulkDataURI. */
interface NestedBulk {
  /** sequence tag, item index (0-based), ..., element tag: e.g. ["54000100", 0, "54001010"] */
  path: Array<string | number>;
  vr: string;
  offset: number;
  length: number;
}

/** A text value inside a sequence item, decoded after dcmjs in the character set in effect there. */
interface NestedText {
  path: Array<string | number>;
  vr: string;
  value: Buffer;
  charset: CharsetChoice;
}

interface TranscodeContext {
  pixelRepresentation: number;
  /** where the element being transcoded sits: sequence tag, item index (0-based), ... (a DICOM JSON path) */
  path: Array<string | number>;
  /** the character set in effect in the current item: its own SpecificCharacterSet, else the enclosing one's (PS3.5 7.5.3) */
  charset?: CharsetChoice;
  /** nested text dcmjs decodes wrongly (it reads every item as Latin-1): decoded again from these bytes */
  nestedText: NestedText[];
  /** SpecificCharacterSet of items as written (dcmjs is given ISO_IR 100 there) */
  nestedCharsets: Array<{ path: Array<string | number>; terms: string[] }>;
  /** nested binary values at least `threshold` long are recorded here instead of being decoded */
  nestedBulk?: {
    threshold: number;
    /** the top-level value being transcoded and its position in the file: offsets of values inside it */
    root: Buffer;
    rootOffset: number;
    found: NestedBulk[];
  };
}

/** Binary VRs whose nested values may be bulk data (UN is left out: a defined-length UN may be a sequence). */
const NESTED_BULK_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW"]);

function swapped(value: Buffer, vr: string): Buffer {
  const unit = SWAP_UNIT[vr];
  if (!unit || value.length % unit) return value;
  const b = Buffer.from(value);
  if (unit === 2) b.swap16();
  else if (unit === 4) b.swap32();
  else b.swap64();
  return b;
}

/** Writes one element (value in encoding `enc`) as explicit VR LE. */
function transcodeElement(out: Sink, tag: number, vr: string, value: Buffer, undefinedLength: boolean, enc: Encoding, nested: Encoding, ctx: TranscodeContext, depth: number): void {
  if (depth > MAX_DEPTH) throw cannotUnderstand(`sequences are nested more than ${MAX_DEPTH} deep`);
  if (vr === "UN" && !undefinedLength && dictionaryVR(tag) === "SQ" && value.length >= 8 && value.readUInt32LE(0) === ITEM_LE) {
    // a sequence written as UN with a defined length (some converters): its items are implicit VR LE (PS3.5 6.2.2);
    // handed to dcmjs as UN, it read them as explicit VR and failed ("Cannot create a string longer than ...")
    transcodeElement(out, tag, "SQ", value, false, enc, IMPLICIT_LE, ctx, depth);
    return;
  }
  if (vr === "SQ" || (undefinedLength && vr !== "OB")) {
    out.header(tag, "SQ", UNDEFINED);
    const items = itemsOf(value, nested, undefinedLength, depth);
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      out.delimiter(ITEM, UNDEFINED);
      // dcmjs drops empty items, which would renumber the rest: a command-group element keeps the place
      // (group 0000 never belongs in a data set, and toDicomJson leaves it out)
      if (item.length === 0) out.push(EMPTY_ITEM_MARKER);
      ctx.path.push(hex8(tag), i);
      const enclosing = ctx.charset;
      transcodeItem(out, item, nested, ctx, depth + 1);
      ctx.charset = enclosing;
      ctx.path.splice(-2);
      out.delimiter(ITEM_END);
    }
    out.delimiter(SEQ_END);
    return;
  }
  if (undefinedLength) {
    // encapsulated pixel data inside an item (an icon): items of raw bytes, copied as they are
    out.header(tag, "OB", UNDEFINED);
    out.push(value);
    out.delimiter(SEQ_END);
    return;
  }
  let v = enc.le ? value : swapped(value, vr);
  let outVr = FOREIGN_VRS.has(vr) ? "UN" : vr;
  if (!LONG_VRS.has(outVr) && v.length > 0xffff) outVr = "UN"; // implicit VR values can outgrow a 16-bit length
  if (v.length % 2) v = Buffer.concat([v, Buffer.from([outVr === "UI" || BINARY_VRS.has(outVr) ? 0 : 0x20])]);
  out.header(tag, outVr, v.length);
  out.push(v);
}

/** The content of each item of a sequence value. */
function itemsOf(value: Buffer, enc: Encoding, undefinedLength: boolean, depth: number): Buffer[] {
  const items: Buffer[] = [];
  let p = 0;
  while (p + 8 <= value.length) {
    const tag = enc.le ? ((value.readUInt16LE(p) << 16) | value.readUInt16LE(p + 2)) >>> 0 : ((value.readUInt16BE(p) << 16) | value.readUInt16BE(p + 2)) >>> 0;
    const len = enc.le ? value.readUInt32LE(p + 4) : value.readUInt32BE(p + 4);
    if (tag === SEQ_END) break;
    if (tag !== ITEM) throw cannotUnderstand(`expected a sequence item but found ${tagName(tag)}; the data set is damaged`);
    if (len === UNDEFINED) {
      const end = itemEnd(value, p + 8, enc, depth + 1, 0, true, value.length);
      items.push(value.subarray(p + 8, end - 8));
      p = end;
    } else {
      if (p + 8 + len > value.length) throw cannotUnderstand("a sequence item runs past the end of its sequence; the data set is damaged");
      items.push(value.subarray(p + 8, p + 8 + len));
      p += 8 + len;
    }
  }
  if (!undefinedLength && p !== value.length) throw cannotUnderstand("a sequence's items do not add up to its length; the data set is damaged");
  return items;
}

function transcodeItem(out: Sink, item: Buffer, enc: Encoding, ctx: TranscodeContext, depth: number): void {
  let p = 0;
  while (p < item.length) {
    const h = parseHeader(item, p, enc, p);
    const valueAt = p + h.headerLength;
    if (h.tag >>> 16 === 0xfffe) throw cannotUnderstand(`unexpected ${tagName(h.tag)} inside a sequence item; the data set is damaged`);
    const vr = enc.explicit ? h.vr : h.length === UNDEFINED && !dictionaryVR(h.tag) ? "SQ" : implicitVR(h.tag, ctx.pixelRepresentation);
    if (h.length === UNDEFINED) {
      const nested = nestedEncoding(enc, h);
      const end = sequenceEnd(item, valueAt, nested, depth + 1, 0, true, item.length);
      const isFragments = vr === "OB" || (vr === "OW" && isPixelTag(h.tag));
      // fragments: items + raw bytes; the delimiter is re-added by transcodeElement
      transcodeElement(out, h.tag, isFragments ? "OB" : vr === "UN" ? "SQ" : vr, item.subarray(valueAt, end - 8), true, enc, nested, ctx, depth);
      p = end;
    } else {
      if (valueAt + h.length > item.length) throw cannotUnderstand(`element ${tagName(h.tag)} runs past the end of its sequence item; the data set is damaged`);
      const nb = ctx.nestedBulk;
      if (nb && NESTED_BULK_VRS.has(vr) && h.length > 0 && h.length >= nb.threshold) {
        // waveform data and the like: located (the item is a view of the kept value), handed to dcmjs empty
        const at = nb.rootOffset + (item.byteOffset - nb.root.byteOffset) + valueAt;
        nb.found.push({ path: [...ctx.path, hex8(h.tag)], vr, offset: at, length: h.length });
        out.header(h.tag, vr, 0);
        p = valueAt + h.length;
        continue;
      }
      const value = item.subarray(valueAt, valueAt + h.length);
      p = valueAt + h.length;
      if (h.tag === SPECIFIC_CHARACTER_SET) {
        // the item's own character set (PS3.5 7.5.3) applies to this item and the items nested in it; dcmjs is
        // told Latin-1, which it uses in items anyway, so an unknown or multi-valued set cannot stop it
        ctx.charset = chooseCharset(value.toString("latin1").replace(/[\0 ]+$/, "").split("\\"));
        ctx.nestedCharsets.push({ path: [...ctx.path, hex8(h.tag)], terms: ctx.charset.terms });
        out.push(encodeCharsetElement("ISO_IR 100"));
        continue;
      }
      const cs = ctx.charset;
      // text in plain ASCII reads the same in every set: only 8-bit bytes and escapes need the second decoding
      if (cs && (cs.decoder !== "windows-1252" || cs.iso2022) && CHARSET_TEXT_VRS.has(vr) && value.some((b) => b >= 0x80 || b === 0x1b)) {
        ctx.nestedText.push({ path: [...ctx.path, hex8(h.tag)], vr, value, charset: cs });
      }
      transcodeElement(out, h.tag, vr, value, false, enc, enc, ctx, depth);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dcmjs
// ---------------------------------------------------------------------------------------------

interface Dcmjs {
  data: { DicomMessage: { readFile(buffer: ArrayBuffer, options?: Record<string, unknown>): { meta: DcmjsDict; dict: DcmjsDict } } };
}
let dcmjs: Dcmjs | undefined;
const loadDcmjs = () => (dcmjs ??= createRequire(import.meta.url)("dcmjs") as Dcmjs);

function parseWithDcmjs(meta: Buffer, dataset: Buffer): { meta: DcmjsDict; dict: DcmjsDict } {
  const file = Buffer.concat([Buffer.alloc(128), Buffer.from("DICM", "latin1"), meta, dataset]);
  const ab = file.buffer.slice(file.byteOffset, file.byteOffset + file.length) as ArrayBuffer;
  try {
    return loadDcmjs().data.DicomMessage.readFile(ab, { ignoreErrors: false, noCopy: true, forceStoreRaw: false });
  } catch (err) {
    // (every SpecificCharacterSet dcmjs sees is one it knows: the data set's is replaced by dcmjsTerm, items' by ISO_IR 100)
    throw cannotUnderstand(`the data set could not be decoded: ${(err as Error)?.message ?? String(err)}`);
  }
}

function encodeMeta(elements: FileMeta["elements"]): Buffer {
  const sink = new Sink();
  for (const e of elements) sink.push(e.raw);
  const ts = Buffer.from(TransferSyntaxUID.ExplicitVRLittleEndian + "\0", "latin1");
  sink.header(0x00020010, "UI", ts.length);
  sink.push(ts);
  const body = sink.concat();
  const len = Buffer.alloc(12);
  len.writeUInt32LE(0x00000002, 0);
  len.write("UL", 4, "latin1");
  len.writeUInt16LE(4, 6);
  len.writeUInt32LE(body.length, 8);
  return Buffer.concat([len, body]);
}

function encodeCharsetElement(term: string): Buffer {
  let v = Buffer.from(term, "latin1");
  if (v.length % 2) v = Buffer.concat([v, Buffer.from(" ")]);
  const s = new Sink();
  s.header(SPECIFIC_CHARACTER_SET, "CS", v.length);
  s.push(v);
  return s.concat();
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

function numberAt(ds: DicomJsonDataset, tag: string): number | undefined {
  const v = ds[tag]?.Value?.[0];
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function nativeFrames(px: RawPixelData, ds: DicomJsonDataset): ByteRange[][] {
  const rows = numberAt(ds, "00280010");
  const columns = numberAt(ds, "00280011");
  const samples = numberAt(ds, "00280002") ?? 1;
  const bits = px.tag === FLOAT_PIXEL_DATA ? 32 : px.tag === DOUBLE_PIXEL_DATA ? 64 : numberAt(ds, "00280100");
  const frames = Math.max(1, Math.floor(numberAt(ds, "00280008") ?? 1));
  if (!rows || !columns || !bits || px.length === 0) return px.length ? [[{ offset: px.offset, length: px.length }]] : [];
  // YBR_FULL_422 native: two luminance values and one Cb, Cr pair per two pixels (PS3.3 C.7.6.3.1.2), 2 values a pixel
  const ybr422 = samples === 3 && String(ds["00280004"]?.Value?.[0] ?? "").trim() === "YBR_FULL_422";
  const perPixel = ybr422 ? 2 : samples;
  const frameBits = rows * columns * perPixel * bits;
  if (Math.ceil((frameBits * frames) / 8) > px.length) {
    throw doesNotMatch(`PixelData is ${px.length} bytes but Rows ${rows} x Columns ${columns} x ${ybr422 ? "2 values a pixel (YBR_FULL_422)" : `SamplesPerPixel ${samples}`} x BitsAllocated ${bits} x NumberOfFrames ${frames} needs ${Math.ceil((frameBits * frames) / 8)}`);
  }
  const out: ByteRange[][] = [];
  for (let i = 0; i < frames; i++) {
    // 1-bit frames need not start on a byte: each frame gets the bytes that hold its bits
    const start = Math.floor((i * frameBits) / 8);
    const end = Math.ceil(((i + 1) * frameBits) / 8);
    out.push([{ offset: px.offset + start, length: end - start }]);
  }
  return out;
}

function encapsulatedFrames(px: RawPixelData, ds: DicomJsonDataset, eot: Walk["eot"], ts: TransferSyntaxInfo): ByteRange[][] {
  const fragments = px.fragments ?? [];
  const frameCount = Math.max(1, Math.floor(numberAt(ds, "00280008") ?? 1));
  const strip = (f: ByteRange & { item: number }): ByteRange => ({ offset: f.offset, length: f.length });
  if (fragments.length === 0) return [];
  // frame starts as offsets from the first fragment's item: Extended Offset Table, then Basic Offset Table
  const byStarts = (starts: number[]): ByteRange[][] | null => {
    const index = new Map(fragments.map((f, i) => [f.item - px.firstFragmentItem!, i]));
    const firsts = starts.map((s) => index.get(s));
    if (firsts.some((i) => i === undefined)) return null;
    const out: ByteRange[][] = [];
    for (let k = 0; k < firsts.length; k++) {
      const from = firsts[k]!;
      const to = k + 1 < firsts.length ? firsts[k + 1]! : fragments.length;
      if (to <= from) return null;
      out.push(fragments.slice(from, to).map(strip));
    }
    return out;
  };
  if (eot && eot.offsets.length >= 8) {
    const starts: number[] = [];
    for (let i = 0; i + 8 <= eot.offsets.length; i += 8) starts.push(Number(eot.offsets.readBigUInt64LE(i)));
    const r = byStarts(starts);
    if (r) return r;
  }
  if (px.bot && px.bot.length) {
    const r = byStarts(px.bot);
    if (r) return r;
  }
  if (ts.mediaType.startsWith("video/")) return [fragments.map(strip)]; // one stream for all frames
  if (fragments.length === frameCount) return fragments.map((f) => [strip(f)]);
  if (frameCount === 1) return [fragments.map(strip)];
  // several frames, no offset table and not one fragment each: the frames cannot be told apart without
  // decoding; the instance is still stored and retrievable whole
  return [];
}

// ---------------------------------------------------------------------------------------------
// readPart10
// ---------------------------------------------------------------------------------------------

const UID_ATTRIBUTES: Array<[number, string]> = [
  [0x00080016, "SOPClassUID (0008,0016)"],
  [0x00080018, "SOPInstanceUID (0008,0018)"],
  [0x0020000d, "StudyInstanceUID (0020,000D)"],
  [0x0020000e, "SeriesInstanceUID (0020,000E)"],
];

function checkUid(kept: Map<number, KeptElement>, tag: number, name: string): string {
  const el = kept.get(tag);
  const uid = el ? uidText(el.value) : "";
  if (!uid) throw doesNotMatch(`the data set has no ${name}; every instance needs one`);
  if (!isValidUid(uid)) {
    throw doesNotMatch(`${name} "${uid.slice(0, 80).replace(/[^\x20-\x7e]/g, "?")}" is not a valid UID (digits in dot-separated components, no leading zeros, at most 64 characters)`);
  }
  return uid;
}

/**
 * A refusal carries the SOP class and instance UIDs as far as they could be read (the data set's when valid, else
 * the file meta's), so a sender can match each failure to its file.
 */
export async function readPart10(src: RandomAccessSource, opts: ReadPart10Options): Promise<ParsedInstance> {
  const known: { sopClassUID?: string; sopInstanceUID?: string } = {};
  try {
    return await readPart10Checked(src, opts, known);
  } catch (err) {
    if (err instanceof InstanceRejectedError && !err.ids && (known.sopClassUID || known.sopInstanceUID)) err.ids = { ...known };
    throw err;
  }
}

async function readPart10Checked(src: RandomAccessSource, opts: ReadPart10Options, known: { sopClassUID?: string; sopInstanceUID?: string }): Promise<ParsedInstance> {
  const win = new Window(src, src.size);
  const head = await win.upTo(0, Math.min(CHUNK, src.size));
  if (src.size < 132 || head.subarray(128, 132).toString("latin1") !== "DICM") refuseNonDicom(Buffer.from(head.subarray(0, 512)), src.size);

  const meta = await readFileMeta(win, opts.maxHeaderBytes);
  if (meta.mediaStorageSOPClassUID && isValidUid(meta.mediaStorageSOPClassUID)) known.sopClassUID = meta.mediaStorageSOPClassUID;
  if (meta.mediaStorageSOPInstanceUID && isValidUid(meta.mediaStorageSOPInstanceUID)) known.sopInstanceUID = meta.mediaStorageSOPInstanceUID;
  if (meta.mediaStorageSOPClassUID === MEDIA_STORAGE_DIRECTORY) {
    // a DICOMDIR lists the files of a CD or folder; it is no instance and has no study of its own
    throw doesNotMatch("this is a DICOMDIR (the index of a CD or folder), not an image or document; send the DICOM files it lists, or the whole folder");
  }
  const tsUid = meta.transferSyntaxUID;
  const ts = transferSyntaxInfo(tsUid);
  if (!ts) {
    throw new InstanceRejectedError(FailureReason.TransferSyntaxNotSupported,
      `the transfer syntax "${tsUid.slice(0, 64)}" is not a standard DICOM transfer syntax, so the data set cannot be decoded; export it in Explicit VR Little Endian (1.2.840.10008.1.2.1)`);
  }

  let enc: Encoding = { explicit: ts.explicitVR, le: ts.littleEndian };
  let walk: Walk;
  let inflatedFrom: number | undefined;
  if (ts.deflated) {
    walk = await walkDeflated(src, meta.end, opts);
    inflatedFrom = meta.end;
  } else {
    // some writers label implicit VR data sets as explicit: trust the bytes when they say so
    if (enc.explicit && enc.le && meta.end + 8 <= src.size) {
      const first = await win.upTo(meta.end, 8);
      const vr = first.length >= 6 ? String.fromCharCode(first[4]!, first[5]!) : "";
      if (!KNOWN_VRS.has(vr) && first.length === 8 && first.readUInt16LE(0) === 0x0008) enc = IMPLICIT_LE;
    }
    walk = await walkDataset(win, meta.end, enc, opts);
  }

  const kept = new Map(walk.kept.map((k) => [k.tag, k]));
  const sopClassUID = checkUid(kept, UID_ATTRIBUTES[0]![0], UID_ATTRIBUTES[0]![1]);
  known.sopClassUID = sopClassUID;
  const sopInstanceUID = checkUid(kept, UID_ATTRIBUTES[1]![0], UID_ATTRIBUTES[1]![1]);
  known.sopInstanceUID = sopInstanceUID;
  const studyInstanceUID = checkUid(kept, UID_ATTRIBUTES[2]![0], UID_ATTRIBUTES[2]![1]);
  const seriesInstanceUID = checkUid(kept, UID_ATTRIBUTES[3]![0], UID_ATTRIBUTES[3]![1]);
  if (meta.mediaStorageSOPClassUID && meta.mediaStorageSOPClassUID !== sopClassUID) {
    throw doesNotMatch(`the file meta MediaStorageSOPClassUID (0002,0002) "${meta.mediaStorageSOPClassUID.slice(0, 64)}" differs from the data set's SOPClassUID "${sopClassUID}"; the data set does not match the SOP class it was sent as`);
  }
  const warnings: string[] = [];
  // RT dose/plan exports and anonymisers often leave the old UID in the file meta; Orthanc, dcmtk and pydicom
  // read such files, and C-STORE (whose meta is built from the command) never sees the difference: the data set
  // is the instance, the bytes stay unchanged, the sender is told (issue 16)
  if (meta.mediaStorageSOPInstanceUID && meta.mediaStorageSOPInstanceUID !== sopInstanceUID) {
    // the first words fit an Error Comment (LO, 64 characters): the rest is for the log and the Warning header
    warnings.push(`file meta SOPInstanceUID differs; stored as the data set's UID: MediaStorageSOPInstanceUID (0002,0003) "${meta.mediaStorageSOPInstanceUID.slice(0, 64).replace(/[^\x20-\x7e]/g, "?")}", data set SOPInstanceUID ${sopInstanceUID}; the bytes are stored unchanged`);
  }

  const { dataset, fileMeta, nestedBulk } = decodeWalk(walk, ts.deflated ? EXPLICIT_LE : enc, meta.elements, opts.bulkDataThreshold);
  fileMeta["00020010"] = { vr: "UI", Value: [tsUid] };

  // bulk data: placeholders in the metadata, locations for WADO
  const base = `${BULK_ROOT_PLACEHOLDER}/studies/${studyInstanceUID}/series/${seriesInstanceUID}/instances/${sopInstanceUID}/bulkdata`;
  for (const b of walk.bulk) dataset[b.tag] = { vr: b.vr, BulkDataURI: `${base}/${b.tag}` };
  const inflated = inflatedFrom === undefined ? {} : { inflatedFrom };
  // bulk data inside sequence items (waveform data): the URI names the path, e.g. .../bulkdata/54000100/0/54001010
  const nestedLocations: BulkDataLocation[] = [];
  for (const b of nestedBulk) {
    const at = attributeAt(dataset, b.path);
    if (!at) continue;
    const path = b.path.join("/");
    at.parent[at.key] = { vr: b.vr, BulkDataURI: `${base}/${path}` };
    nestedLocations.push({ tag: path, vr: b.vr, offset: b.offset, length: b.length, ...inflated });
  }

  let pixelData: PixelDataLocation | null = null;
  if (walk.pixel && walk.pixel.length > 0) {
    const px = walk.pixel;
    pixelData = {
      offset: px.offset,
      length: px.length,
      encapsulated: px.encapsulated,
      frames: px.encapsulated ? encapsulatedFrames(px, dataset, walk.eot, ts) : nativeFrames(px, dataset),
      ...inflated,
    };
  }

  return {
    transferSyntaxUID: tsUid,
    sopClassUID,
    sopInstanceUID,
    studyInstanceUID,
    seriesInstanceUID,
    dataset: sortDicomJson(dataset),
    fileMeta: sortDicomJson(fileMeta),
    pixelData,
    bulkData: [...walk.bulk.map((b) => ({ ...b, ...inflated })), ...nestedLocations],
    warnings,
  };
}

/**
 * Tests and measurements: `dcmjsOnly` makes every header go through dcmjs; `fast` and `dcmjs` count the headers each
 * path decoded, `lastFallback` says why the last one left the fast path.
 */
export const headerDecoding = { dcmjsOnly: false, fast: 0, dcmjs: 0, lastFallback: "" };

/**
 * Text in these sets reads the same through the fast decoder and dcmjs (Latin-1 as windows-1252, UTF-8, and GB18030
 * and GBK: single code tables, decoded whole by their own TextDecoder). Sets with code extensions (ISO 2022 IR 58 too,
 * though chooseCharset gives it the GBK decoder) stay on dcmjs: escape sequences are stripped on that path only.
 */
const FAST_CHARSET_TERMS = new Set(["", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "GB18030", "GBK"]);
const fastCharset = (terms: string[]) => terms.every((t) => FAST_CHARSET_TERMS.has(t.trim().toUpperCase().replace(/^ISO-IR/, "ISO_IR")));

/**
 * The re-encoded header as DICOM JSON (data set and file meta): the fast decoder (fastDecode.ts) when every character
 * set is one of FAST_CHARSET_TERMS and it knows every element, else dcmjs; both give the same result.
 */
function decodeHeader(meta: Buffer, dataset: Buffer, charset: CharsetChoice | undefined, nestedCharsets: TranscodeContext["nestedCharsets"]): { dataset: DicomJsonDataset; fileMeta: DicomJsonDataset } {
  let why = "";
  const item = nestedCharsets.find((c) => !fastCharset(c.terms));
  if (headerDecoding.dcmjsOnly) why = "dcmjs forced";
  else if (charset && !fastCharset(charset.terms)) why = `SpecificCharacterSet ${charset.terms.join("\\")}`;
  else if (item) why = `SpecificCharacterSet ${item.terms.join("\\")} in an item`;
  else {
    try {
      const decoded = fastDecodeHeader(meta, dataset);
      headerDecoding.fast++;
      return decoded;
    } catch (err) {
      if (!(err instanceof FastDecodeFallback)) throw err;
      why = err.message;
    }
  }
  headerDecoding.dcmjs++;
  headerDecoding.lastFallback = why;
  const parsed = parseWithDcmjs(meta, dataset);
  const jsonOpts = { stripIso2022Escapes: charset?.iso2022 ?? false };
  return { dataset: toDicomJson(parsed.dict, jsonOpts), fileMeta: toDicomJson(parsed.meta) };
}

/** Decode the kept (non-bulk) elements of a walk: character set, then the header decoder, then DICOM JSON. */
function decodeWalk(walk: Walk, sourceEnc: Encoding, metaElements: FileMeta["elements"], nestedBulkThreshold = Infinity): { dataset: DicomJsonDataset; fileMeta: DicomJsonDataset; nestedBulk: NestedBulk[] } {
  // character set: one decoder dcmjs knows, the original values restored afterwards
  let charset: CharsetChoice | undefined;
  if (walk.specificCharacterSet) {
    const terms = walk.specificCharacterSet.toString("latin1").replace(/[\0 ]+$/, "").split("\\");
    charset = chooseCharset(terms);
  }

  const sink = new Sink();
  const ctx: TranscodeContext = { pixelRepresentation: 0, path: [], charset, nestedText: [], nestedCharsets: [] };
  const nestedBulk: NestedBulk[] = [];
  const direct: DicomJsonDataset = {};
  for (const k of walk.kept) {
    if (k.tag === PIXEL_REPRESENTATION && k.value.length >= 2) ctx.pixelRepresentation = sourceEnc.le ? k.value.readUInt16LE(0) : k.value.readUInt16BE(0);
    if (k.tag === SPECIFIC_CHARACTER_SET && charset) {
      sink.push(encodeCharsetElement(charset.dcmjsTerm));
      continue;
    }
    if (FOREIGN_VRS.has(k.vr) || k.vr === "UV") {
      direct[hex8(k.tag)] = foreignToJson(k.vr, sourceEnc.le ? k.value : swapped(k.value, k.vr));
      continue;
    }
    if (sourceEnc.explicit && sourceEnc.le && !k.undefinedLength && k.vr !== "SQ" && k.vr !== "UN") {
      // already explicit VR little endian: header + value as they are
      sink.header(k.tag, k.vr, k.value.length);
      sink.push(k.value);
    } else {
      ctx.nestedBulk = Number.isFinite(nestedBulkThreshold) ? { threshold: nestedBulkThreshold, root: k.value, rootOffset: k.offset, found: nestedBulk } : undefined;
      transcodeElement(sink, k.tag, k.vr, k.value, k.undefinedLength, sourceEnc, k.nested, ctx, 0);
      ctx.nestedBulk = undefined;
    }
  }
  const header = decodeHeader(encodeMeta(metaElements), sink.concat(), charset, ctx.nestedCharsets);
  const dataset: DicomJsonDataset = { ...header.dataset, ...direct };
  if (charset && needsJisX0201(charset)) {
    // half-width katakana (GR bytes) of ISO 2022 IR 13: decoded here, dcmjs's single decoder cannot (top level)
    for (const k of walk.kept) {
      const vr = sourceEnc.explicit ? k.vr : implicitVR(k.tag, 0);
      if (!CHARSET_TEXT_VRS.has(vr) || !k.value.some((b) => b >= 0xa1 && b <= 0xdf)) continue;
      dataset[hex8(k.tag)] = textAttribute(vr, k.value, charset);
    }
  }
  // text in sequence items: dcmjs read it as Latin-1; decoded here in the set in effect in its item
  for (const t of ctx.nestedText) {
    const at = attributeAt(dataset, t.path);
    if (at) at.parent[at.key] = textAttribute(t.vr, t.value, t.charset);
  }
  for (const c of ctx.nestedCharsets) {
    const at = attributeAt(dataset, c.path);
    if (at) at.parent[at.key] = { vr: "CS", Value: c.terms.map((t) => (t === "" ? null : t)) };
  }
  if (charset) {
    dataset["00080005"] = { vr: "CS", Value: charset.terms.map((t) => (t === "" ? null : t)) };
  }
  return { dataset, fileMeta: header.fileMeta, nestedBulk };
}

/** The attribute at `path` (sequence tag, item index, ..., tag) of a DICOM JSON data set, if it is there. */
function attributeAt(ds: DicomJsonDataset, path: Array<string | number>): { parent: DicomJsonDataset; key: string } | null {
  let cur: DicomJsonDataset = ds;
  for (let i = 0; i + 1 < path.length; i += 2) {
    const item = cur[path[i] as string]?.Value?.[path[i + 1] as number];
    if (!item || typeof item !== "object") return null;
    cur = item as DicomJsonDataset;
  }
  const key = path[path.length - 1] as string;
  return key in cur ? { parent: cur, key } : null;
}

/**
 * A bare data set (no preamble, no file meta) in a known transfer syntax, as DICOM JSON: a C-FIND
 * identifier. Bounded by opts.maxHeaderBytes like any header; binary values become bulk data placeholders.
 */
export async function readBareDataset(bytes: Buffer, transferSyntaxUID: string, opts: ReadPart10Options): Promise<DicomJsonDataset> {
  const ts = transferSyntaxInfo(transferSyntaxUID);
  if (!ts || ts.deflated) throw cannotUnderstand(`the transfer syntax "${transferSyntaxUID.slice(0, 64)}" cannot be used for an identifier`);
  const enc: Encoding = { explicit: ts.explicitVR, le: ts.littleEndian };
  const win = new Window(bufferSource(bytes), bytes.length);
  const walk = await walkDataset(win, 0, enc, opts);
  return decodeWalk(walk, enc, []).dataset;
}

/** SV, UV (numbers) and OL, OV (binary) at the top level, which dcmjs does not decode. */
function foreignToJson(vr: string, le: Buffer): DicomJsonDataset[string] {
  if (vr === "OL" || vr === "OV") return le.length ? { vr, InlineBinary: le.toString("base64") } : { vr };
  const values: Array<number | string> = [];
  for (let i = 0; i + 8 <= le.length; i += 8) {
    const v = vr === "SV" ? le.readBigInt64LE(i) : le.readBigUInt64LE(i);
    values.push(Number.isSafeInteger(Number(v)) ? Number(v) : v.toString());
  }
  return values.length ? { vr, Value: values } : { vr };
}

/**
 * Deflated data set: inflated as a stream, twice. The first pass only counts the inflated bytes (bounded by
 * maxInflatedBytes, so a deflate bomb costs CPU, never memory), because the walker needs the data set's end; the
 * second walks it forward like a stored one, the header bounded by maxHeaderBytes as ever. Pixel data and bulk
 * data are located in the inflated data set (positions there, not in the stored file: inflatedFrom says so).
 */
async function walkDeflated(src: RandomAccessSource, start: number, opts: ReadPart10Options): Promise<Walk & { inflatedSize: number }> {
  const limit = opts.maxInflatedBytes ?? DEFAULT_MAX_INFLATED;
  const damaged = (err: unknown) => cannotUnderstand(`the deflated data set could not be inflated (${(err as Error).message}); the file is damaged or truncated`);
  const compressed = () => sourceStream((p, n) => src.read(p, n), start, src.size);
  let size = 0;
  try {
    for await (const c of inflate(compressed())) {
      size += c.length;
      if (size > limit) {
        throw new InstanceRejectedError(FailureReason.OutOfResources,
          `the deflated data set inflates to more than the relay accepts (${limit} bytes)`);
      }
    }
  } catch (err) {
    if (err instanceof InstanceRejectedError) throw err;
    throw damaged(err);
  }
  const inflated = new InflatedSource(inflate(compressed()), size);
  try {
    const walk = await walkDataset(new Window(inflated, size), 0, EXPLICIT_LE, { maxHeaderBytes: opts.maxHeaderBytes, bulkDataThreshold: opts.bulkDataThreshold });
    return { ...walk, inflatedSize: size };
  } catch (err) {
    if (err instanceof InstanceRejectedError) throw err;
    throw damaged(err);
  } finally {
    await inflated.close();
  }
}
