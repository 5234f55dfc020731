/**
 * The header as DICOM JSON without dcmjs: reads the explicit VR little endian file meta and data set that part10.ts
 * builds for dcmjs, and gives what `DicomMessage.readFile` followed by toDicomJson (dicomJson.ts) gives, dcmjs's quirks
 * included, for a fraction of the CPU (dcmjs was most of the reader's main-thread time per instance, paid by every
 * STOW-RS and bundle instance).
 *
 * The quirks kept on purpose, because the result must be the one the dcmjs path gives (part10's post-processing and
 * stored metadata rely on it):
 * - text is decoded by the decoder dcmjs would use: TextDecoder("latin1") (windows-1252) until a SpecificCharacterSet
 *   element switches it, and in every sequence item (dcmjs starts each item afresh); Latin-1 byte reads for the
 *   "ASCII" VRs (AE, AS, CS, DA, DS, DT, IS, TM, UI, UR);
 * - a value is decoded whole and split on "\" and "=" afterwards, so a GBK / GB18030 trail byte 0x5C stays in its
 *   character; GBK text goes through TextDecoder("gbk") as in dcmjs: in Node (ICU) it is not the GB18030 decoder
 *   WHATWG specifies for that label (four-byte sequences left undecoded, 0xFF dropped), so the labels never mix;
 * - trimming per VR: AE, LO and SH trimmed as a whole before the split on "\", CS each value, ST, TM, UC, UT and LT
 *   trailing white space, PN one trailing space; ST, UT and UC are split on "\" like multi-valued text (LT is not);
 * - DS and IS keep digits, ".", "+", "-" and "e" only before Number(); empty US/SS/UL/SL/FL/FD/UV values read as [0];
 * - PN: empty values dropped, "=" groups kept when they have text;
 * - UI values from the raw text, one trailing NUL dropped, then padding and white space trimmed;
 * - SpecificCharacterSet reads back as "ISO_IR 192" (part10.ts restores the values as written);
 * - undefined-length items delimited by dcmjs's 16-bit word scan, and an item the scan finds empty dropped.
 *
 * Anything this reader is not sure of (a character set other than Latin-1, UTF-8, GB18030 or GBK, a VR dcmjs would
 * read as another, a numeric value whose length is not a multiple of its size, encapsulated fragments in an item, a
 * structure dcmjs would misread) throws FastDecodeFallback: the caller then lets dcmjs decode, so the answer is never
 * a different one.
 */
import type { DicomJsonAttribute, DicomJsonDataset } from "./types.ts";
import { dictionaryVR } from "./dictionary.ts";

export class FastDecodeFallback extends Error {}

const fallback = (why: string): never => {
  throw new FastDecodeFallback(why);
};

const UNDEFINED = 0xffffffff;
const ITEM = 0xfffee000;
const SEQ_END = 0xfffee0dd;
const SPECIFIC_CHARACTER_SET = 0x00080005;
const MAX_DEPTH = 64;

/** the VRs dcmjs knows (any other it reads as UN) */
const DCMJS_VRS = new Set(["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"]);
/** VRs dcmjs reads with a 32-bit length (its own list: the same as PS3.5 for the VRs it knows) */
const LENGTH32_VRS = new Set(["OB", "OW", "OF", "SQ", "UC", "UR", "UT", "UN", "OD", "UV"]);
/** byte size of one value of the binary numeric VRs */
const NUMBER_SIZE: Record<string, number> = { US: 2, SS: 2, UL: 4, SL: 4, FL: 4, FD: 8, UV: 8, AT: 4 };
/** The text decoders this reader knows: dcmjs's TextDecoder labels (windows-1252 behind "latin1" and "iso-8859-1") */
export type TextCoding = "latin1" | "utf-8" | "gb18030" | "gbk";
/** SpecificCharacterSet values dcmjs maps to the decoders this reader knows (its encodingMapping) */
const DCMJS_ENCODING: Record<string, TextCoding> = {
  "": "latin1",
  "iso-ir-6": "latin1",
  "iso-ir-100": "latin1",
  "iso-2022-ir-6": "latin1",
  "iso-2022-ir-100": "latin1",
  "iso-ir-192": "utf-8",
  // single code table, no escapes; dcmjs's "iso-2022-gbk" and "iso-2022-58" are left to it (part10 never writes them)
  gb18030: "gb18030",
  gbk: "gbk",
};
const PN_GROUPS = ["Alphabetic", "Ideographic", "Phonetic"] as const;

const decoders = new Map<TextCoding, TextDecoder>();
function decoder(coding: TextCoding): TextDecoder {
  let d = decoders.get(coding);
  if (!d) {
    // a Node without full ICU has no GB decoders; dcmjs would fail there too, with its own message
    try {
      d = new TextDecoder(coding);
    } catch {
      return fallback(`no TextDecoder("${coding}")`);
    }
    decoders.set(coding, d);
  }
  return d;
}

const tagKeys = new Map<number, string>();
function tagKey(tag: number): string {
  let k = tagKeys.get(tag);
  if (k === undefined) {
    k = tag.toString(16).toUpperCase().padStart(8, "0");
    if (tagKeys.size < 8192) tagKeys.set(tag, k);
  }
  return k;
}

/** dcmjs's readAsciiString: one character per byte */
const ascii = (b: Buffer, s: number, e: number) => b.toString("latin1", s, e);

/**
 * dcmjs's readEncodedString: its TextDecoder over the whole value (one decode() call, nothing carried over). Plain
 * ASCII reads the same in each of these decoders (GBK / GB18030 lead bytes are 0x81 and up), without their cost.
 */
function encoded(b: Buffer, s: number, e: number, coding: TextCoding): string {
  for (let i = s; i < e; i++) {
    if (b[i]! >= 0x80) return decoder(coding).decode(b.subarray(s, e));
  }
  return b.toString("latin1", s, e);
}

/** dcmjs's rtrim */
const rtrim = (s: string) => s.replace(/\s*$/g, "");

/** toDicomJson's cleanText (no ISO 2022 escapes here): trailing NUL and space padding */
function clean(s: string): string {
  const last = s.charCodeAt(s.length - 1);
  return last === 0x20 || last === 0 ? s.replace(/[\0 ]+$/, "") : s;
}

function strings(vr: string, values: string[]): DicomJsonAttribute {
  let any = false;
  const out: Array<string | null> = new Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = clean(values[i]!);
    out[i] = v === "" ? null : v;
    if (v !== "") any = true;
  }
  return any ? { vr, Value: out } : { vr };
}

function withValues(vr: string, out: unknown[]): DicomJsonAttribute {
  for (const v of out) if (v !== null) return { vr, Value: out };
  return { vr };
}

/** DecimalString / IntegerString applyFormatting, then toDicomJson's toNumber */
function numberString(s: string): number | null {
  const kept = s.trim().replace(/[^0-9.\\\-+e]/gi, "");
  if (kept === "") return null;
  const n = Number(kept);
  return Number.isFinite(n) ? n : null;
}

function personNames(s: string): DicomJsonAttribute {
  const out: Array<Record<string, string> | null> = [];
  for (const v of s.split("\\")) {
    if (!v) continue; // dcmjs's pnStringToObject drops empty values
    const groups = v.split("=");
    const pn: Record<string, string> = {};
    let any = false;
    for (let g = 0; g < 3; g++) {
      const text = groups[g];
      if (!text) continue;
      const c = clean(text);
      if (c.trim() !== "") {
        pn[PN_GROUPS[g]!] = c;
        any = true;
      }
    }
    out.push(any ? pn : null);
  }
  return withValues("PN", out);
}

function binaryNumbers(vr: string, b: Buffer, s: number, e: number): DicomJsonAttribute {
  const size = NUMBER_SIZE[vr]!;
  const length = e - s;
  // dcmjs reads ceil(length / size) values of `size` bytes, past the element's end: its next element is misread
  if (length % size) fallback(`a ${vr} value of ${length} bytes`);
  if (vr === "AT") {
    if (length === 0) return { vr }; // dcmjs: [undefined]
    const out: string[] = [];
    for (let p = s; p < e; p += 4) out.push(tagKey(((b.readUInt16LE(p) << 16) | b.readUInt16LE(p + 2)) >>> 0));
    return { vr, Value: out };
  }
  // an empty fixed-length value reads as the VR's default, 0
  if (length === 0) return { vr, Value: [0] };
  const out: Array<number | string | null> = [];
  for (let p = s; p < e; p += size) {
    switch (vr) {
      case "US": out.push(b.readUInt16LE(p)); break;
      case "SS": out.push(b.readInt16LE(p)); break;
      case "UL": out.push(b.readUInt32LE(p)); break;
      case "SL": out.push(b.readInt32LE(p)); break;
      case "FL": {
        const v = b.readFloatLE(p);
        out.push(Number.isFinite(v) ? v : null);
        break;
      }
      case "FD": {
        const v = b.readDoubleLE(p);
        out.push(Number.isFinite(v) ? v : null);
        break;
      }
      default: {
        const v = b.readBigUInt64LE(p);
        out.push(Number.isSafeInteger(Number(v)) ? Number(v) : v.toString());
      }
    }
  }
  return withValues(vr, out);
}

/** One defined-length value (bytes s..e of b) as dcmjs + toDicomJson give it. */
export function decodeValue(vr: string, b: Buffer, s: number, e: number, coding: TextCoding): DicomJsonAttribute {
  switch (vr) {
    case "AE":
      return strings(vr, ascii(b, s, e).trim().split("\\"));
    case "AS":
    case "DA":
    case "DT":
    case "UR":
      return strings(vr, ascii(b, s, e).split("\\"));
    case "CS":
      return strings(vr, ascii(b, s, e).split("\\").map((v) => v.trim()));
    case "TM":
      return strings(vr, rtrim(ascii(b, s, e)).split("\\"));
    case "DS":
    case "IS":
      return withValues(vr, ascii(b, s, e).split("\\").map(numberString));
    case "LO":
    case "SH":
      return strings(vr, encoded(b, s, e, coding).trim().split("\\"));
    case "ST":
    case "UT":
    case "UC":
      return strings(vr, rtrim(encoded(b, s, e, coding)).split("\\"));
    case "LT":
      return strings(vr, [rtrim(encoded(b, s, e, coding))]);
    case "PN": {
      if (e === s) return { vr };
      const text = encoded(b, s, e, coding);
      // readPaddedEncodedString: one trailing space is padding
      return personNames(text.length && text[text.length - 1] !== " " ? text : text.slice(0, -1));
    }
    case "UI": {
      // readPaddedAsciiString drops one trailing NUL; toDicomJson reads the raw values
      const text = ascii(b, s, e > s && b[e - 1] === 0 ? e - 1 : e);
      return withValues(vr, text.split("\\").map((u) => u.replace(/[\0 ]+$/, "").trim() || null));
    }
    case "AT":
    case "US":
    case "SS":
    case "UL":
    case "SL":
    case "FL":
    case "FD":
    case "UV":
      return binaryNumbers(vr, b, s, e);
    case "OB":
    case "OW":
    case "OF":
    case "OD":
    case "UN":
      return e > s ? { vr, InlineBinary: b.toString("base64", s, e) } : { vr };
    default:
      return fallback(`VR ${vr}`);
  }
}

/**
 * dcmjs's SequenceOfItems.readBytes finds the end of an undefined-length item by reading 16-bit words from `p` and
 * counting item starts and ends; data that looks like a delimiter fools it. Its count, done the same way, so the
 * item is the one dcmjs reads (the caller checks it is the real one).
 */
function dcmjsItemScan(b: Buffer, p: number, end: number): { toRead: number; after: number } {
  let stack = 0;
  let toRead = 0;
  // each iteration moves p forward by 2 bytes at least, so the loop ends with the buffer
  for (;;) {
    if (p + 2 > end) fallback("an item without its delimiter");
    const g = b.readUInt16LE(p);
    p += 2;
    if (g !== 0xfffe) {
      toRead += 2;
      continue;
    }
    if (p + 6 > end) fallback("an item without its delimiter");
    const ge = b.readUInt16LE(p);
    const length = b.readUInt32LE(p + 2);
    p += 2;
    if (ge === 0xe00d) {
      if (length === 0) {
        if (--stack < 0) return { toRead, after: p + 4 };
        toRead += 4;
      } else {
        toRead += 2;
      }
    } else if (ge === 0xe000) {
      toRead += 4;
      if (length === UNDEFINED) stack++;
    } else {
      toRead += 2;
      p -= 2;
    }
  }
}

function readSequence(b: Buffer, p: number, end: number, depth: number): { attr: DicomJsonAttribute; end: number } {
  const items: DicomJsonDataset[] = [];
  for (;;) {
    if (p + 8 > end) fallback("a sequence without its delimiter");
    const tag = ((b.readUInt16LE(p) << 16) | b.readUInt16LE(p + 2)) >>> 0;
    const length = b.readUInt32LE(p + 4);
    p += 8;
    if (tag === SEQ_END) break;
    // part10.ts writes every item with an undefined length; anything else is not what this reader expects
    if (tag !== ITEM || length !== UNDEFINED) fallback("a sequence item part10.ts does not write");
    const scan = dcmjsItemScan(b, p, end);
    // a delimiter-like word with a non-zero length makes dcmjs take the wrong bytes for the item
    if (scan.after - scan.toRead - 8 !== p) fallback("an item dcmjs would misread");
    if (scan.toRead) items.push(readDataset(b, p, p + scan.toRead, depth + 1));
    p = scan.after;
  }
  return { attr: items.length ? { vr: "SQ", Value: items } : { vr: "SQ" }, end: p };
}

/** Elements from s to e (one dcmjs stream: the data set, an item, or the file meta after its group length). */
function readDataset(b: Buffer, s: number, e: number, depth: number): DicomJsonDataset {
  if (depth > MAX_DEPTH) fallback("sequences nested too deep");
  const out: DicomJsonDataset = {};
  let coding: TextCoding = "latin1"; // every dcmjs stream starts with TextDecoder("latin1")
  let ascending = true;
  let last = -1;
  let p = s;
  while (p < e) {
    if (p + 8 > e) fallback("an element header past the end of its data set");
    const tag = ((b.readUInt16LE(p) << 16) | b.readUInt16LE(p + 2)) >>> 0;
    const vr = String.fromCharCode(b[p + 4]!, b[p + 5]!);
    if (!DCMJS_VRS.has(vr)) fallback(`VR ${vr.replace(/[^\x20-\x7e]/g, "?")}`);
    let length: number;
    let valueAt: number;
    if (LENGTH32_VRS.has(vr)) {
      if (p + 12 > e) fallback("an element header past the end of its data set");
      length = b.readUInt32LE(p + 8);
      valueAt = p + 12;
    } else {
      length = b.readUInt16LE(p + 6);
      valueAt = p + 8;
    }
    let attr: DicomJsonAttribute;
    if (vr === "SQ") {
      if (length !== UNDEFINED) fallback("a defined-length sequence");
      const r = readSequence(b, valueAt, e, depth);
      attr = r.attr;
      p = r.end;
    } else {
      if (length === UNDEFINED) fallback(`an undefined-length ${vr} (encapsulated fragments)`);
      if (valueAt + length > e) fallback("a value past the end of its data set");
      // dcmjs reads UN as the dictionary's VR when the tag is in its dictionary
      if (vr === "UN" && dictionaryVR(tag)) fallback("UN with a dictionary VR");
      attr = decodeValue(vr, b, valueAt, valueAt + length, coding);
      p = valueAt + length;
    }
    if (tag === SPECIFIC_CHARACTER_SET) {
      // dcmjs switches the stream's decoder to the first value's, refuses several, and reports "ISO_IR 192"
      if (vr !== "CS") fallback(`SpecificCharacterSet as ${vr}`);
      const terms = ascii(b, valueAt, valueAt + length).split("\\");
      if (terms.length > 1) fallback("several SpecificCharacterSet values");
      const next = DCMJS_ENCODING[terms[0]!.trim().replace(/[_ ]/g, "-").toLowerCase()];
      if (!next) return fallback(`SpecificCharacterSet "${terms[0]!.trim()}"`);
      coding = next;
      attr = { vr: "CS", Value: ["ISO_IR 192"] };
    }
    // group 0000 (command elements, part10's empty-item marker) never belongs in a data set: toDicomJson drops it
    if (tag >>> 16 === 0) continue;
    if (tag <= last) ascending = false;
    last = tag;
    out[tagKey(tag)] = attr;
  }
  if (ascending) return out;
  // toDicomJson's key order: ascending tags (a duplicate keeps the last value, as in dcmjs's dict)
  const sorted: DicomJsonDataset = {};
  for (const k of Object.keys(out).sort()) sorted[k] = out[k]!;
  return sorted;
}

/**
 * The file meta (as encodeMeta in part10.ts writes it: group length first) and the data set, as DICOM JSON; throws
 * FastDecodeFallback when dcmjs must decode them.
 */
export function fastDecodeHeader(meta: Buffer, dataset: Buffer): { dataset: DicomJsonDataset; fileMeta: DicomJsonDataset } {
  if (meta.length < 12 || meta.readUInt32LE(0) !== 0x00000002 || meta.toString("latin1", 4, 6) !== "UL" || meta.readUInt16LE(6) !== 4) {
    fallback("a file meta without its group length");
  }
  const metaEnd = 12 + meta.readUInt32LE(8);
  if (metaEnd > meta.length) fallback("a file meta group length past its end");
  return { fileMeta: readDataset(meta, 12, metaEnd, 0), dataset: readDataset(dataset, 0, dataset.length, 0) };
}
