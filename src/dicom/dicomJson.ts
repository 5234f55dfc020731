/**
 * dcmjs data sets -> DICOM JSON (PS3.18 Annex F.2), and the character set choice for decoding text.
 *
 * dcmjs keeps its own internals on each element (_rawValue, accessors); none of that leaves here.
 */
import type { DicomJsonAttribute, DicomJsonDataset } from "./types.ts";

/** One element of a dcmjs `dict` (DicomDict.dict / .meta). */
export interface DcmjsElement {
  vr: string;
  Value?: unknown[];
  _rawValue?: unknown;
}
export type DcmjsDict = Record<string, DcmjsElement>;

export interface ToDicomJsonOptions {
  /** remove ISO 2022 escape sequences left in decoded text (SpecificCharacterSet with code extensions) */
  stripIso2022Escapes?: boolean;
}

const BINARY_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "UN"]);
const NUMBER_VRS = new Set(["IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"]);
// ESC, intermediate bytes (0x20-0x2F), final byte (0x30-0x7E)
// eslint-disable-next-line no-control-regex
const ISO2022_ESCAPE = /\x1b[\x20-\x2f]+[\x30-\x7e]/g;

function toNumber(v: unknown): number | string | null {
  if (v === null || v === undefined || v === "") return null;
  if (typeof v === "bigint") return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  const n = typeof v === "number" ? v : Number(String(v).trim());
  return Number.isFinite(n) ? n : null;
}

function binaryBase64(values: unknown[]): string | undefined {
  const parts: Buffer[] = [];
  for (const v of values) {
    if (v instanceof ArrayBuffer) parts.push(Buffer.from(v));
    else if (ArrayBuffer.isView(v)) parts.push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
    else if (Buffer.isBuffer(v)) parts.push(v);
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  return total === 0 ? undefined : Buffer.concat(parts, total).toString("base64");
}

const hexTag = (n: number) => (n >>> 0).toString(16).toUpperCase().padStart(8, "0");

/** Escape sequences removed when asked; trailing NUL padding (some writers pad text with NUL) removed always. */
function cleanText(s: string, o: ToDicomJsonOptions): string {
  const t = o.stripIso2022Escapes ? s.replace(ISO2022_ESCAPE, "") : s;
  return t.replace(/[\0 ]+$/, "");
}

function personName(v: unknown, o: ToDicomJsonOptions): Record<string, string> | null {
  const out: Record<string, string> = {};
  if (typeof v === "string") {
    // dcmjs gives objects; a bare string is one Alphabetic=Ideographic=Phonetic value
    const [a, i, p] = cleanText(v, o).split("=");
    if (a) out.Alphabetic = a;
    if (i) out.Ideographic = i;
    if (p) out.Phonetic = p;
  } else if (v && typeof v === "object") {
    for (const group of ["Alphabetic", "Ideographic", "Phonetic"] as const) {
      const g = (v as Record<string, unknown>)[group];
      const clean = typeof g === "string" ? cleanText(g, o) : "";
      if (clean.trim() !== "") out[group] = clean;
    }
  }
  return Object.keys(out).length ? out : null;
}

/** UI values as written (dcmjs strips characters it thinks invalid, which would hide a malformed UID). */
function uidValues(el: DcmjsElement): unknown[] {
  const raw = el._rawValue;
  const list = Array.isArray(raw) ? raw : typeof raw === "string" ? raw.split("\\") : el.Value ?? [];
  return list.map((u) => (typeof u === "string" ? u.replace(/[\0 ]+$/, "").trim() : u));
}

/** One dcmjs element as a DICOM JSON attribute. */
export function toDicomJsonAttribute(el: DcmjsElement, o: ToDicomJsonOptions = {}): DicomJsonAttribute {
  const vr = el.vr;
  const values = Array.isArray(el.Value) ? el.Value : el.Value === undefined || el.Value === null ? [] : [el.Value];
  if (vr === "SQ") {
    const items = values.map((item) => toDicomJson(item as DcmjsDict, o));
    return items.length ? { vr, Value: items } : { vr };
  }
  if (BINARY_VRS.has(vr)) {
    const b64 = binaryBase64(values);
    return b64 === undefined ? { vr } : { vr, InlineBinary: b64 };
  }
  let out: unknown[];
  if (vr === "PN") out = values.map((v) => personName(v, o));
  else if (vr === "AT") out = values.map((v) => (typeof v === "number" ? hexTag(v) : typeof v === "string" && v ? v.toUpperCase() : null));
  else if (NUMBER_VRS.has(vr)) out = values.map(toNumber);
  else if (vr === "UI") out = uidValues(el).map((v) => (typeof v === "string" && v !== "" ? v : null));
  else out = values.map((v) => (typeof v === "string" ? cleanText(v, o) || null : v === undefined ? null : v));
  return out.some((v) => v !== null) ? { vr, Value: out } : { vr };
}

/** A dcmjs dict (tags as 8 hex digits) as a DICOM JSON data set, keys in ascending tag order. */
export function toDicomJson(dict: DcmjsDict, o: ToDicomJsonOptions = {}): DicomJsonDataset {
  const out: DicomJsonDataset = {};
  for (const tag of Object.keys(dict).sort()) {
    const el = dict[tag];
    // group 0000 (command elements) never belongs in a data set; the reader also uses it to keep empty items
    if (!el || typeof el !== "object" || typeof el.vr !== "string" || tag.startsWith("0000")) continue;
    out[tag.toUpperCase()] = toDicomJsonAttribute(el, o);
  }
  return out;
}

/** Sorts a DICOM JSON data set by tag (after attributes were added out of order). */
export function sortDicomJson(ds: DicomJsonDataset): DicomJsonDataset {
  const out: DicomJsonDataset = {};
  for (const k of Object.keys(ds).sort()) out[k] = ds[k]!;
  return out;
}

/** The first value of an attribute as a string, or undefined. */
export function firstString(ds: DicomJsonDataset, tag: string): string | undefined {
  const v = ds[tag]?.Value?.[0];
  return typeof v === "string" ? v : undefined;
}

/** The first value of a numeric attribute, or undefined. */
export function firstNumber(ds: DicomJsonDataset, tag: string): number | undefined {
  const v = ds[tag]?.Value?.[0];
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

// ---------------------------------------------------------------------------------------------
// Character sets
// ---------------------------------------------------------------------------------------------

/** Defined Terms of SpecificCharacterSet (PS3.3 C.12.1.1.2) -> WHATWG encoding label for TextDecoder. */
const CHARSET_DECODERS: Record<string, string> = {
  "": "windows-1252",
  "ISO_IR 6": "windows-1252",
  "ISO 2022 IR 6": "windows-1252",
  "ISO_IR 100": "windows-1252",
  "ISO 2022 IR 100": "windows-1252",
  "ISO_IR 101": "iso-8859-2",
  "ISO 2022 IR 101": "iso-8859-2",
  "ISO_IR 109": "iso-8859-3",
  "ISO 2022 IR 109": "iso-8859-3",
  "ISO_IR 110": "iso-8859-4",
  "ISO 2022 IR 110": "iso-8859-4",
  "ISO_IR 144": "iso-8859-5",
  "ISO 2022 IR 144": "iso-8859-5",
  "ISO_IR 127": "iso-8859-6",
  "ISO 2022 IR 127": "iso-8859-6",
  "ISO_IR 126": "iso-8859-7",
  "ISO 2022 IR 126": "iso-8859-7",
  "ISO_IR 138": "iso-8859-8",
  "ISO 2022 IR 138": "iso-8859-8",
  "ISO_IR 148": "windows-1254",
  "ISO 2022 IR 148": "windows-1254",
  "ISO_IR 203": "iso-8859-15",
  "ISO 2022 IR 203": "iso-8859-15",
  "ISO_IR 13": "shift_jis",
  "ISO 2022 IR 13": "shift_jis",
  "ISO_IR 166": "windows-874",
  "ISO 2022 IR 166": "windows-874",
  "ISO 2022 IR 87": "iso-2022-jp",
  "ISO 2022 IR 159": "iso-2022-jp",
  // Korean and simplified Chinese code extensions put the G1 set in GR: EUC bytes after the escape
  "ISO 2022 IR 149": "euc-kr",
  "ISO 2022 IR 58": "gbk",
  "ISO_IR 192": "utf-8",
  GB18030: "gb18030",
  GBK: "gbk",
};

/** The single SpecificCharacterSet value dcmjs maps to each decoder (it handles one value only). */
const DCMJS_TERM: Record<string, string> = {
  "windows-1252": "ISO_IR 100",
  "iso-8859-2": "ISO_IR 101",
  "iso-8859-3": "ISO_IR 109",
  "iso-8859-4": "ISO_IR 110",
  "iso-8859-5": "ISO_IR 144",
  "iso-8859-6": "ISO_IR 127",
  "iso-8859-7": "ISO_IR 126",
  "iso-8859-8": "ISO_IR 138",
  "windows-1254": "ISO_IR 148",
  "shift_jis": "ISO_IR 13",
  "windows-874": "ISO_IR 166",
  "iso-2022-jp": "ISO 2022 IR 87",
  "euc-kr": "ISO 2022 IR 149",
  "utf-8": "ISO_IR 192",
  gb18030: "GB18030",
  gbk: "GBK",
};

export interface CharsetChoice {
  /** the SpecificCharacterSet values as written */
  terms: string[];
  /** WHATWG label of the decoder used */
  decoder: string;
  /** a single SpecificCharacterSet value that makes dcmjs use that decoder */
  dcmjsTerm: string;
  /** the values use ISO 2022 code extensions: escape sequences may remain in decoded text */
  iso2022: boolean;
  /** a term was not recognised and the fallback (windows-1252) was used */
  unsupported: string[];
}

/**
 * One decoder for a (possibly multi-valued) SpecificCharacterSet. dcmjs supports one value; for code
 * extensions the most specific recognised value is used (the second and later values name the sets
 * that escape sequences switch to), and unknown values fall back to windows-1252 instead of failing.
 */
export function chooseCharset(terms: string[]): CharsetChoice {
  const clean = terms.map((t) => t.trim().toUpperCase().replace(/^ISO-IR/, "ISO_IR"));
  const unsupported = clean.filter((t) => !(t in CHARSET_DECODERS));
  const known = clean.filter((t) => t in CHARSET_DECODERS);
  const specific = known.filter((t) => CHARSET_DECODERS[t] !== "windows-1252");
  // Japanese: ISO 2022 IR 13 + IR 87 -> iso-2022-jp handles both escape sets better than shift_jis
  const pick = specific.find((t) => CHARSET_DECODERS[t] === "iso-2022-jp") ?? specific[0] ?? known[0] ?? "";
  const decoder = CHARSET_DECODERS[pick] ?? "windows-1252";
  return {
    terms: terms.map((t) => t.trim()),
    decoder,
    dcmjsTerm: DCMJS_TERM[decoder] ?? "ISO_IR 100",
    iso2022: clean.some((t) => t.startsWith("ISO 2022")),
    unsupported,
  };
}

/**
 * True when text in this character set may hold JIS X 0201 half-width katakana in GR (0xA1-0xDF): ISO 2022 IR 13
 * beside IR 87/159 (PS3.5 H.3.1). The iso-2022-jp decoder chosen for such values knows no GR bytes and gives U+FFFD.
 */
export function needsJisX0201(choice: CharsetChoice): boolean {
  return choice.decoder === "iso-2022-jp" && choice.terms.some((t) => /^ISO[ _]2022 IR 13$|^ISO_IR 13$/i.test(t.trim()));
}

const ESC = 0x1b;

/**
 * Text in ISO 2022 IR 13 with code extensions (PS3.5 6.1.2.5.3, H.3.1): single-byte runs (ASCII / JIS X 0201
 * Romaji in G0, JIS X 0201 katakana in GR) decoded as Shift_JIS, which reads both; two-byte runs (after ESC $ B,
 * ESC $ @, ...) decoded by iso-2022-jp with their escape sequence. Escape sequences do not appear in the result.
 */
export function decodeJisX0201WithExtensions(bytes: Buffer): string {
  const single = new TextDecoder("shift_jis");
  const double = new TextDecoder("iso-2022-jp");
  let out = "";
  let escape: Buffer | null = null; // the escape that selected the current two-byte run
  let start = 0;
  const flush = (end: number) => {
    if (end <= start) return;
    const run = bytes.subarray(start, end);
    out += escape ? double.decode(Buffer.concat([escape, run])) : single.decode(run);
  };
  let i = 0;
  while (i < bytes.length) {
    if (bytes[i] !== ESC) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < bytes.length && bytes[j]! >= 0x20 && bytes[j]! <= 0x2f) j++;
    if (j >= bytes.length) break; // a cut escape: decode the rest as it is
    flush(i);
    const seq = bytes.subarray(i, j + 1);
    // ESC $ ... designates a two-byte set; ESC ( J, ESC ( B, ESC ) I single-byte ones
    escape = seq[1] === 0x24 ? Buffer.from(seq) : null;
    i = j + 1;
    start = i;
  }
  flush(bytes.length);
  return out;
}

/** Text VRs whose value is one string (backslash is a character, not a value delimiter: PS3.5 6.2). */
const SINGLE_VALUE_TEXT_VRS = new Set(["LT", "ST", "UT"]);
const decoders = new Map<string, TextDecoder>();

/**
 * The raw value of a text attribute (SH, LO, ST, LT, PN, UC, UT) decoded in a character set, as DICOM JSON. Used where
 * dcmjs cannot decode: JIS X 0201 katakana beside code extensions, and text inside sequence items, which dcmjs
 * always reads as Latin-1 whatever the SpecificCharacterSet.
 */
export function textAttribute(vr: string, bytes: Buffer, choice: CharsetChoice): DicomJsonAttribute {
  let text: string;
  if (needsJisX0201(choice)) text = decodeJisX0201WithExtensions(bytes);
  else {
    let d = decoders.get(choice.decoder);
    if (!d) decoders.set(choice.decoder, (d = new TextDecoder(choice.decoder)));
    text = d.decode(bytes);
  }
  let values = SINGLE_VALUE_TEXT_VRS.has(vr) ? [text] : text.split("\\");
  // leading spaces are not significant in SH and LO (PS3.5 6.2); dcmjs trims them at the top level too
  if (vr === "SH" || vr === "LO") values = values.map((v) => v.trim());
  return toDicomJsonAttribute({ vr, Value: values }, { stripIso2022Escapes: choice.iso2022 });
}
