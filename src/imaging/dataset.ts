/**
 * Re-encoding the non-pixel part of a data set for transcoding: top-level elements (and, recursively, sequence
 * items) from Explicit or Implicit VR Little Endian into either, with the Image Pixel attributes that change when
 * pixels are decoded (PhotometricInterpretation, PlanarConfiguration) replaced. Pure, in memory: it is given the
 * header bytes only (everything before the pixel data), never the pixels.
 */
import { dictionaryVR } from "../dicom/dictionary.ts";

export interface Enc { explicit: boolean }

const UNDEFINED = 0xffffffff;
const ITEM = 0xfffee000;
const ITEM_END = 0xfffee00d;
const SEQ_END = 0xfffee0dd;
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const KNOWN_VRS = new Set(["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"]);

export class DatasetError extends Error {}

export interface RawElement {
  tag: number;
  /** VR as written, or from the dictionary for implicit data */
  vr: string;
  /** value bytes (for undefined-length sequences: the items, without the sequence delimiter) */
  value: Buffer;
  undefinedLength: boolean;
}

function implicitVR(tag: number): string {
  const g = tag >>> 16;
  const e = tag & 0xffff;
  if (e === 0) return "UL";
  if (g & 1) return e >= 0x10 && e <= 0xff ? "LO" : "UN";
  const vr = dictionaryVR(tag);
  if (!vr) return "UN";
  if (vr === "xs") return "US";
  if (vr === "ox" || vr === "lt") return "OW";
  return KNOWN_VRS.has(vr) ? vr : vr.length > 2 ? vr.slice(0, 2) : "UN";
}

/** End of an undefined-length sequence value starting at p (position after the sequence delimiter). */
function undefinedSequenceEnd(b: Buffer, p: number, enc: Enc, depth: number): number {
  if (depth > 64) throw new DatasetError("sequences nested more than 64 deep");
  for (;;) {
    if (p + 8 > b.length) throw new DatasetError("a sequence runs past the end of the header");
    const tag = ((b.readUInt16LE(p) << 16) | b.readUInt16LE(p + 2)) >>> 0;
    const len = b.readUInt32LE(p + 4);
    if (tag === SEQ_END) return p + 8;
    if (tag !== ITEM) throw new DatasetError(`expected a sequence item, found ${tag.toString(16)}`);
    if (len !== UNDEFINED) {
      p += 8 + len;
      continue;
    }
    p += 8;
    // an item of undefined length: elements up to the item delimiter
    for (;;) {
      const el = readElement(b, p, enc, depth + 1);
      if (el === "item-end") {
        p += 8;
        break;
      }
      p = el.next;
    }
  }
}

function readElement(b: Buffer, p: number, enc: Enc, depth: number): { el: RawElement; next: number; nested: Enc } | "item-end" {
  if (p + 8 > b.length) throw new DatasetError("an element runs past the end of the header");
  const tag = ((b.readUInt16LE(p) << 16) | b.readUInt16LE(p + 2)) >>> 0;
  if (tag === ITEM_END) return "item-end";
  let vr: string;
  let len: number;
  let at: number;
  if (enc.explicit) {
    vr = String.fromCharCode(b[p + 4]!, b[p + 5]!);
    if (!KNOWN_VRS.has(vr)) throw new DatasetError(`element ${tag.toString(16)} has no valid VR`);
    if (LONG_VRS.has(vr)) {
      len = b.readUInt32LE(p + 8);
      at = p + 12;
    } else {
      len = b.readUInt16LE(p + 6);
      at = p + 8;
    }
  } else {
    vr = implicitVR(tag);
    len = b.readUInt32LE(p + 4);
    at = p + 8;
  }
  // UN of undefined length holds implicit VR data (PS3.5 6.2.2)
  const nested: Enc = vr === "UN" ? { explicit: false } : enc;
  if (len === UNDEFINED) {
    const end = undefinedSequenceEnd(b, at, nested, depth + 1);
    return { el: { tag, vr: vr === "UN" || vr === "SQ" ? "SQ" : vr, value: b.subarray(at, end - 8), undefinedLength: true }, next: end, nested };
  }
  if (at + len > b.length) throw new DatasetError(`element ${tag.toString(16)} runs past the end of the header`);
  return { el: { tag, vr, value: b.subarray(at, at + len), undefinedLength: false }, next: at + len, nested };
}

/** Top-level elements of a data set (or an item's content). */
export function readElements(b: Buffer, enc: Enc, start = 0, until?: (tag: number) => boolean): Array<RawElement & { nested: Enc; end: number }> {
  const out: Array<RawElement & { nested: Enc; end: number }> = [];
  let p = start;
  while (p + 8 <= b.length) {
    if (until && until(((b.readUInt16LE(p) << 16) | b.readUInt16LE(p + 2)) >>> 0)) break;
    const r = readElement(b, p, enc, 0);
    if (r === "item-end") throw new DatasetError("an item delimiter at the top level");
    out.push({ ...r.el, nested: r.nested, end: r.next });
    p = r.next;
  }
  return out;
}

function header(tag: number, vr: string, length: number, to: Enc): Buffer {
  if (!to.explicit) {
    const h = Buffer.allocUnsafe(8);
    h.writeUInt16LE(tag >>> 16, 0);
    h.writeUInt16LE(tag & 0xffff, 2);
    h.writeUInt32LE(length >>> 0, 4);
    return h;
  }
  const long = LONG_VRS.has(vr);
  const h = Buffer.alloc(long ? 12 : 8);
  h.writeUInt16LE(tag >>> 16, 0);
  h.writeUInt16LE(tag & 0xffff, 2);
  h.write(vr, 4, "latin1");
  if (long) h.writeUInt32LE(length >>> 0, 8);
  else h.writeUInt16LE(length, 6);
  return h;
}

function item(tag: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(8);
  h.writeUInt16LE(tag >>> 16, 0);
  h.writeUInt16LE(tag & 0xffff, 2);
  h.writeUInt32LE(length >>> 0, 4);
  return h;
}

/** Items of a sequence value (in `from`), re-encoded in `to` with undefined lengths. */
function encodeSequence(value: Buffer, from: Enc, to: Enc, out: Buffer[]): void {
  let p = 0;
  while (p + 8 <= value.length) {
    const tag = ((value.readUInt16LE(p) << 16) | value.readUInt16LE(p + 2)) >>> 0;
    const len = value.readUInt32LE(p + 4);
    if (tag === SEQ_END) break;
    if (tag !== ITEM) throw new DatasetError("expected a sequence item");
    let content: Buffer;
    if (len === UNDEFINED) {
      // find the item delimiter by reading its elements
      let q = p + 8;
      for (;;) {
        const r = readElement(value, q, from, 1);
        if (r === "item-end") break;
        q = r.next;
      }
      content = value.subarray(p + 8, q);
      p = q + 8;
    } else {
      content = value.subarray(p + 8, p + 8 + len);
      p += 8 + len;
    }
    out.push(item(ITEM, UNDEFINED));
    for (const el of readElements(content, from)) encodeElement(el, el.nested, to, out);
    out.push(item(ITEM_END, 0));
  }
}

export function encodeElement(el: RawElement, nested: Enc, to: Enc, out: Buffer[]): void {
  const sequence = el.vr === "SQ" || (el.undefinedLength && el.vr === "UN");
  if (sequence) {
    out.push(header(el.tag, "SQ", UNDEFINED, to));
    encodeSequence(el.value, nested, to, out);
    out.push(item(SEQ_END, 0));
    return;
  }
  let vr = el.vr;
  // a short VR cannot carry more than 65535 bytes in explicit VR: send it as UN (its bytes are the same)
  if (to.explicit && !LONG_VRS.has(vr) && el.value.length > 0xffff) vr = "UN";
  out.push(header(el.tag, vr, el.value.length, to), el.value);
}

/** An element with a new value (even length, padded as its VR wants). */
export function replacement(tag: number, vr: string, value: string | number): RawElement {
  let v: Buffer;
  if (typeof value === "number") {
    v = Buffer.alloc(2);
    v.writeUInt16LE(value, 0);
  } else {
    v = Buffer.from(value, "latin1");
    if (v.length % 2) v = Buffer.concat([v, Buffer.from(vr === "UI" ? "\0" : " ")]);
  }
  return { tag, vr, value: v, undefinedLength: false };
}

/** Pixel data element header: native (defined length) or encapsulated (undefined length). */
export function pixelDataHeader(to: Enc, vr: "OB" | "OW", length: number | null): Buffer {
  return header(0x7fe00010, vr, length ?? UNDEFINED, to);
}

export const ITEM_TAG = ITEM;
export const SEQUENCE_DELIMITER = item(SEQ_END, 0);
export function fragmentItem(length: number): Buffer {
  return item(ITEM, length);
}

/** File meta group (explicit VR LE) with a new transfer syntax; group length recomputed. */
export function fileMeta(elements: RawElement[], transferSyntaxUID: string): Buffer {
  const parts: Buffer[] = [];
  const ts = replacement(0x00020010, "UI", transferSyntaxUID);
  const all = [...elements.filter((e) => e.tag !== 0x00020000 && e.tag !== 0x00020010), ts].sort((a, b) => a.tag - b.tag);
  for (const e of all) encodeElement(e, { explicit: true }, { explicit: true }, parts);
  const body = Buffer.concat(parts);
  const gl = Buffer.alloc(12);
  gl.writeUInt16LE(0x0002, 0);
  gl.writeUInt16LE(0x0000, 2);
  gl.write("UL", 4, "latin1");
  gl.writeUInt16LE(4, 6);
  gl.writeUInt32LE(body.length, 8);
  const preamble = Buffer.alloc(132);
  preamble.write("DICM", 128, "latin1");
  return Buffer.concat([preamble, gl, body]);
}
