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
