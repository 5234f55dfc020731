// The little DICOM the browser needs: the file meta group of a Part-10 file (always Explicit VR Little Endian,
// PS3.10 7.1) gives MediaStorageSOPInstanceUID, which the transfer manifest needs, without parsing the data set.

const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
export const DICOMDIR_CLASS = "1.2.840.10008.1.3.10";

const text = (bytes) => new TextDecoder("latin1").decode(bytes).replace(/[\0 ]+$/, "");

/** {sopInstanceUID, sopClassUID, transferSyntaxUID} from the file meta group, or null when the file is not Part-10. */
export async function readFileMeta(file) {
  if (file.size < 132 + 12) return null;
  let buf = new Uint8Array(await file.slice(0, 16384).arrayBuffer());
  if (text(buf.subarray(128, 132)) !== "DICM") return null;
  let view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  // (0002,0000) FileMetaInformationGroupLength says how far the group goes: read that much
  if (view.getUint16(132, true) === 2 && view.getUint16(134, true) === 0) {
    const groupEnd = 132 + 12 + view.getUint32(140, true);
    if (groupEnd > buf.length && groupEnd < 1024 * 1024) {
      buf = new Uint8Array(await file.slice(0, groupEnd).arrayBuffer());
      view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    }
  }
  const out = {};
  let pos = 132;
  while (pos + 8 <= buf.length) {
    const group = view.getUint16(pos, true);
    if (group !== 2) break;
    const element = view.getUint16(pos + 2, true);
    const vr = String.fromCharCode(buf[pos + 4], buf[pos + 5]);
    let length;
    let valueAt;
    if (LONG_VRS.has(vr)) {
      if (pos + 12 > buf.length) break;
      length = view.getUint32(pos + 8, true);
      valueAt = pos + 12;
    } else {
      length = view.getUint16(pos + 6, true);
      valueAt = pos + 8;
    }
    if (length === 0xffffffff || valueAt + length > buf.length) break;
    const value = buf.subarray(valueAt, valueAt + length);
    if (element === 0x0002) out.sopClassUID = text(value);
    else if (element === 0x0003) out.sopInstanceUID = text(value);
    else if (element === 0x0010) out.transferSyntaxUID = text(value);
    pos = valueAt + length;
  }
  return out.sopInstanceUID ? out : null;
}

/** SHA-256 of the whole file as hex (crypto.subtle has no streaming digest: the file is read at once). */
export async function sha256Hex(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A DICOM JSON person name for people: "Wang, XiaoDong · 王小东". */
export function personName(value) {
  const pn = value?.Value?.[0];
  if (!pn) return "";
  if (typeof pn === "string") return formatGroup(pn);
  const parts = [];
  if (pn.Alphabetic) parts.push(formatGroup(pn.Alphabetic));
  if (pn.Ideographic) parts.push(formatGroup(pn.Ideographic, true));
  if (pn.Phonetic && !parts.length) parts.push(formatGroup(pn.Phonetic));
  return parts.join(" · ");
}

function formatGroup(group, ideographic = false) {
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = group.split("^");
  if (ideographic) return [prefix, family + given + middle, suffix].filter(Boolean).join(" ");
  const rest = [given, middle].filter(Boolean).join(" ");
  return [prefix, [family, rest].filter(Boolean).join(", "), suffix].filter(Boolean).join(" ");
}

/** First value of a DICOM JSON attribute as text. */
export function first(ds, tag) {
  const v = ds?.[tag]?.Value;
  return v && v.length ? v : null;
}

export function da(value) {
  return /^\d{8}$/.test(value || "") ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}` : value || "";
}

const IMPLICIT_LE = "1.2.840.10008.1.2";
const CHARSETS = { "ISO_IR 192": "utf-8", GB18030: "gb18030", GBK: "gbk", "ISO_IR 100": "windows-1252", "ISO_IR 13": "shift_jis", "ISO 2022 IR 87": "iso-2022-jp", "ISO 2022 IR 149": "euc-kr", "ISO_IR 144": "iso-8859-5", "ISO_IR 127": "iso-8859-6", "ISO_IR 126": "iso-8859-7", "ISO_IR 138": "iso-8859-8" };
const WANTED = { "0008,0005": "charset", "0008,0020": "studyDate", "0008,0060": "modality", "0008,1030": "studyDescription", "0010,0010": "patientName", "0010,0020": "patientID", "0020,000D": "studyInstanceUID", "0020,000E": "seriesInstanceUID" };

/**
 * What the per-study summary needs from the data set (study, series, patient, date, description, modality): a walk of
 * the top-level elements up to (0020,000E), skipping sequences, in the first 256 kB. Explicit or implicit VR little
 * endian; other encodings (deflate, big endian) give null, and the file is grouped under "study not known".
 */
export async function readStudyHeader(file, transferSyntaxUID) {
  if (transferSyntaxUID === "1.2.840.10008.1.2.1.99" || transferSyntaxUID === "1.2.840.10008.1.2.2") return null;
  const buf = new Uint8Array(await file.slice(0, 262144).arrayBuffer());
  if (buf.length < 144 || text(buf.subarray(128, 132)) !== "DICM") return null;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const explicitData = transferSyntaxUID !== IMPLICIT_LE;
  const raw = {};
  // one element at pos: [group, element, valueAt, length, vr]; null past the buffer
  const element = (pos, explicit) => {
    if (pos + 8 > buf.length) return null;
    const group = view.getUint16(pos, true);
    const elem = view.getUint16(pos + 2, true);
    if (group === 0xfffe) return { group, elem, valueAt: pos + 8, length: view.getUint32(pos + 4, true), vr: "" };
    if (!explicit) return { group, elem, valueAt: pos + 8, length: view.getUint32(pos + 4, true), vr: "" };
    const vr = String.fromCharCode(buf[pos + 4], buf[pos + 5]);
    if (LONG_VRS.has(vr)) return pos + 12 > buf.length ? null : { group, elem, valueAt: pos + 12, length: view.getUint32(pos + 8, true), vr };
    return { group, elem, valueAt: pos + 8, length: view.getUint16(pos + 6, true), vr };
  };
  // the end of an undefined-length sequence or item: walk nested elements to the matching delimiter
  const skipUndefined = (pos, explicit, depth) => {
    if (depth > 8) return -1;
    while (pos >= 0 && pos < buf.length) {
      const e = element(pos, explicit);
      if (!e) return -1;
      if (e.group === 0xfffe && (e.elem === 0xe0dd || e.elem === 0xe00d)) return e.valueAt;
      if (e.length === 0xffffffff) pos = skipUndefined(e.valueAt, explicit, depth + 1);
      else pos = e.valueAt + e.length;
    }
    return -1;
  };
  let pos = 132;
  for (;;) {
    const explicit = pos < buf.length - 2 && view.getUint16(pos, true) === 2 ? true : explicitData;
    const e = element(pos, explicit);
    if (!e) break;
    if (e.group > 0x0020 || (e.group === 0x0020 && e.elem > 0x000e)) break;
    if (e.length === 0xffffffff) {
      pos = skipUndefined(e.valueAt, explicit, 0);
      if (pos < 0) break;
      continue;
    }
    if (e.valueAt + e.length > buf.length) break;
    const key = `${e.group.toString(16).padStart(4, "0")},${e.elem.toString(16).padStart(4, "0")}`.toUpperCase();
    if (WANTED[key]) raw[WANTED[key]] = buf.subarray(e.valueAt, e.valueAt + e.length);
    pos = e.valueAt + e.length;
  }
  if (!raw.studyInstanceUID) return null;
  const charsets = raw.charset ? text(raw.charset).split("\\").map((s) => s.trim()) : [];
  const label = charsets.map((c) => CHARSETS[c]).find(Boolean) || "windows-1252";
  let decoder;
  try {
    decoder = new TextDecoder(label);
  } catch {
    decoder = new TextDecoder("windows-1252");
  }
  const str = (b) => (b ? decoder.decode(b).replace(/[\0 ]+$/, "").trim() : "");
  return {
    studyInstanceUID: text(raw.studyInstanceUID),
    seriesInstanceUID: raw.seriesInstanceUID ? text(raw.seriesInstanceUID) : "",
    patientName: str(raw.patientName),
    patientID: str(raw.patientID),
    studyDate: text(raw.studyDate || new Uint8Array()),
    studyDescription: str(raw.studyDescription),
    modality: text(raw.modality || new Uint8Array()),
  };
}

/** A DICOM person name as stored ("Wang^XiaoDong=王^小东") for a summary line: "Wang XiaoDong = 王小东". */
export function plainName(pn) {
  return (pn || "").split("=").map((g, i) => (i === 0 ? g.split("^").filter(Boolean).join(" ") : g.split("^").join(""))).filter(Boolean).join(" = ");
}
