/**
 * Small data sets the relay writes itself (C-FIND responses, the file meta of an instance received by
 * C-STORE) and the one thing it reads from a stored file before sending it (where its data set starts).
 * Pure: no I/O. Strings are written as UTF-8 under SpecificCharacterSet ISO_IR 192.
 */
import type { DicomJsonAttribute, DicomJsonDataset } from "../dicom/types.ts";
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, TransferSyntaxUID } from "../dicom/uids.ts";

const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const TEXT_VRS = new Set(["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"]);
const BINARY: Record<string, { size: number; write: (b: Buffer, v: number, at: number) => void }> = {
  US: { size: 2, write: (b, v, at) => b.writeUInt16LE(v, at) },
  SS: { size: 2, write: (b, v, at) => b.writeInt16LE(v, at) },
  UL: { size: 4, write: (b, v, at) => b.writeUInt32LE(v, at) },
  SL: { size: 4, write: (b, v, at) => b.writeInt32LE(v, at) },
  FL: { size: 4, write: (b, v, at) => b.writeFloatLE(v, at) },
  FD: { size: 8, write: (b, v, at) => b.writeDoubleLE(v, at) },
};

function tagNumber(hex: string): number {
  return parseInt(hex, 16) >>> 0;
}

function header(tag: number, vr: string, length: number, explicit: boolean): Buffer {
  if (!explicit) {
    const h = Buffer.alloc(8);
    h.writeUInt16LE(tag >>> 16, 0);
    h.writeUInt16LE(tag & 0xffff, 2);
    h.writeUInt32LE(length >>> 0, 4);
    return h;
  }
  if (LONG_VRS.has(vr)) {
    const h = Buffer.alloc(12);
    h.writeUInt16LE(tag >>> 16, 0);
    h.writeUInt16LE(tag & 0xffff, 2);
    h.write(vr, 4, "latin1");
    h.writeUInt32LE(length >>> 0, 8);
    return h;
  }
  const h = Buffer.alloc(8);
  h.writeUInt16LE(tag >>> 16, 0);
  h.writeUInt16LE(tag & 0xffff, 2);
  h.write(vr, 4, "latin1");
  h.writeUInt16LE(length, 6);
  return h;
}

function pnString(v: unknown): string {
  if (typeof v === "string") return v;
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return [o.Alphabetic, o.Ideographic, o.Phonetic].map((g) => (typeof g === "string" ? g : "")).join("=").replace(/=+$/, "");
  }
  return "";
}

function valueBytes(attr: DicomJsonAttribute, explicit: boolean): Buffer | null {
  const vr = attr.vr;
  const values = (attr.Value ?? []) as unknown[];
  if (vr === "SQ") {
    const items = values.map((item) => {
      const body = encodeDataset((item ?? {}) as DicomJsonDataset, { explicit });
      const h = Buffer.alloc(8);
      h.writeUInt32LE(0xe000fffe, 0);
      h.writeUInt32LE(body.length, 4);
      return Buffer.concat([h, body]);
    });
    return Buffer.concat(items);
  }
  if (BINARY[vr]) {
    const { size, write } = BINARY[vr]!;
    const b = Buffer.alloc(size * values.length);
    values.forEach((v, i) => write(b, Number(v), i * size));
    return b;
  }
  if (TEXT_VRS.has(vr) || vr === "UI") {
    const strings = values.map((v) => (v === null || v === undefined ? "" : vr === "PN" ? pnString(v) : String(v)));
    const b = Buffer.from(strings.join("\\"), "utf8");
    if (b.length % 2 === 0) return b;
    return Buffer.concat([b, Buffer.from(vr === "UI" ? "\0" : " ", "latin1")]);
  }
  if (attr.InlineBinary) {
    const b = Buffer.from(attr.InlineBinary, "base64");
    return b.length % 2 ? Buffer.concat([b, Buffer.alloc(1)]) : b;
  }
  // bulk data references and VRs the relay does not write in identifiers: left out
  return null;
}

/**
 * A data set from DICOM JSON in Explicit or Implicit VR Little Endian, elements in tag order; attributes
 * given as BulkDataURI are left out (identifiers never carry bulk data).
 */
export function encodeDataset(ds: DicomJsonDataset, opts: { explicit: boolean }): Buffer {
  const parts: Buffer[] = [];
  for (const key of Object.keys(ds).sort()) {
    const attr = ds[key]!;
    const value = valueBytes(attr, opts.explicit);
    if (value === null) continue;
    const vr = attr.vr === "SQ" || LONG_VRS.has(attr.vr) || value.length <= 0xffff ? attr.vr : "UN";
    parts.push(header(tagNumber(key), vr, value.length, opts.explicit), value);
  }
  return Buffer.concat(parts);
}

export function isExplicit(transferSyntaxUID: string): boolean {
  return transferSyntaxUID !== TransferSyntaxUID.ImplicitVRLittleEndian;
}

/** Preamble, "DICM" and the file meta group for an instance received over the network. */
export function encodeFileMeta(m: { sopClassUID: string; sopInstanceUID: string; transferSyntaxUID: string; sourceAE?: string }): Buffer {
  const el = (tag: number, vr: string, v: Buffer) => Buffer.concat([header(tag, vr, v.length, true), v]);
  const ui = (s: string) => (s.length % 2 ? Buffer.from(s + "\0", "latin1") : Buffer.from(s, "latin1"));
  const sh = (s: string) => (s.length % 2 ? Buffer.from(s + " ", "latin1") : Buffer.from(s, "latin1"));
  const body = Buffer.concat([
    el(0x00020001, "OB", Buffer.from([0, 1])),
    el(0x00020002, "UI", ui(m.sopClassUID)),
    el(0x00020003, "UI", ui(m.sopInstanceUID)),
    el(0x00020010, "UI", ui(m.transferSyntaxUID)),
    el(0x00020012, "UI", ui(IMPLEMENTATION_CLASS_UID)),
    el(0x00020013, "SH", sh(IMPLEMENTATION_VERSION_NAME)),
    ...(m.sourceAE ? [el(0x00020016, "AE", sh(m.sourceAE.slice(0, 16)))] : []),
  ]);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(body.length, 0);
  return Buffer.concat([Buffer.alloc(128), Buffer.from("DICM", "latin1"), el(0x00020000, "UL", len), body]);
}

/**
 * Where the data set of a Part-10 file starts, from its first bytes: the file meta group is walked
 * element by element (its group length is not trusted). null when `head` is too short to tell.
 */
export function datasetOffset(head: Buffer): number | null {
  if (head.length < 132) return null;
  if (head.subarray(128, 132).toString("latin1") !== "DICM") throw new Error("the stored object is not a DICOM Part-10 file");
  let p = 132;
  for (;;) {
    if (p + 2 > head.length) return null;
    if (head.readUInt16LE(p) !== 0x0002) return p;
    if (p + 8 > head.length) return null;
    const vr = head.toString("latin1", p + 4, p + 6);
    let len: number;
    let hl: number;
    if (LONG_VRS.has(vr)) {
      if (p + 12 > head.length) return null;
      len = head.readUInt32LE(p + 8);
      hl = 12;
    } else {
      len = head.readUInt16LE(p + 6);
      hl = 8;
    }
    p += hl + len;
  }
}
