/**
 * The standard transfer syntaxes (PS3.6 Table A-1, PS3.5 Section 10 and Annex A) with what the reader
 * and WADO-RS need to know about each: how the data set is encoded and which media type its frames
 * carry (PS3.18 Table 8.7.3-5).
 */
export interface TransferSyntaxInfo {
  uid: string;
  name: string;
  /** VRs written in the data set (false only for Implicit VR Little Endian) */
  explicitVR: boolean;
  littleEndian: boolean;
  /** pixel data is a sequence of fragments (compressed or encapsulated uncompressed) */
  encapsulated: boolean;
  /** the whole data set after the file meta is deflated (RFC 1951) */
  deflated: boolean;
  /** media type of one frame in WADO-RS frame/bulk data responses */
  mediaType: string;
  retired?: boolean;
}

const NATIVE = "application/octet-stream";

function ts(uid: string, name: string, encapsulated: boolean, mediaType: string, extra: Partial<TransferSyntaxInfo> = {}): TransferSyntaxInfo {
  return { uid, name, explicitVR: true, littleEndian: true, encapsulated, deflated: false, mediaType, ...extra };
}

const enc = (uid: string, name: string, mediaType: string, retired = false) => ts(uid, name, true, mediaType, retired ? { retired } : {});
const jpegRetired = (n: number, name: string) => enc(`1.2.840.10008.1.2.4.${n}`, `${name} (Retired)`, "image/jpeg", true);

const TABLE: TransferSyntaxInfo[] = [
  ts("1.2.840.10008.1.2", "Implicit VR Little Endian", false, NATIVE, { explicitVR: false }),
  ts("1.2.840.10008.1.2.1", "Explicit VR Little Endian", false, NATIVE),
  enc("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR Little Endian", NATIVE),
  ts("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", false, NATIVE, { deflated: true }),
  ts("1.2.840.10008.1.2.2", "Explicit VR Big Endian (Retired)", false, NATIVE, { littleEndian: false, retired: true }),
  enc("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", "image/jpeg"),
  enc("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)", "image/jpeg"),
  jpegRetired(52, "JPEG Extended (Process 3 & 5)"),
  jpegRetired(53, "JPEG Spectral Selection, Non-Hierarchical (Process 6 & 8)"),
  jpegRetired(54, "JPEG Spectral Selection, Non-Hierarchical (Process 7 & 9)"),
  jpegRetired(55, "JPEG Full Progression, Non-Hierarchical (Process 10 & 12)"),
  jpegRetired(56, "JPEG Full Progression, Non-Hierarchical (Process 11 & 13)"),
  enc("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)", "image/jpeg"),
  jpegRetired(58, "JPEG Lossless, Non-Hierarchical (Process 15)"),
  jpegRetired(59, "JPEG Extended, Hierarchical (Process 16 & 18)"),
  jpegRetired(60, "JPEG Extended, Hierarchical (Process 17 & 19)"),
  jpegRetired(61, "JPEG Spectral Selection, Hierarchical (Process 20 & 22)"),
  jpegRetired(62, "JPEG Spectral Selection, Hierarchical (Process 21 & 23)"),
  jpegRetired(63, "JPEG Full Progression, Hierarchical (Process 24 & 26)"),
  jpegRetired(64, "JPEG Full Progression, Hierarchical (Process 25 & 27)"),
  jpegRetired(65, "JPEG Lossless, Hierarchical (Process 28)"),
  jpegRetired(66, "JPEG Lossless, Hierarchical (Process 29)"),
  enc("1.2.840.10008.1.2.4.70", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])", "image/jpeg"),
  enc("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless Image Compression", "image/jls"),
  enc("1.2.840.10008.1.2.4.81", "JPEG-LS Lossy (Near-Lossless) Image Compression", "image/jls"),
  enc("1.2.840.10008.1.2.4.90", "JPEG 2000 Image Compression (Lossless Only)", "image/jp2"),
  enc("1.2.840.10008.1.2.4.91", "JPEG 2000 Image Compression", "image/jp2"),
  enc("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)", "image/jpx"),
  enc("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2 Multi-component Image Compression", "image/jpx"),
  // JPIP: the pixel data is referenced by URL, not in the file
  ts("1.2.840.10008.1.2.4.94", "JPIP Referenced", false, NATIVE),
  ts("1.2.840.10008.1.2.4.95", "JPIP Referenced Deflate", false, NATIVE, { deflated: true }),
  enc("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level", "video/mpeg"),
  enc("1.2.840.10008.1.2.4.100.1", "Fragmentable MPEG2 Main Profile / Main Level", "video/mpeg"),
  enc("1.2.840.10008.1.2.4.101", "MPEG2 Main Profile / High Level", "video/mpeg"),
  enc("1.2.840.10008.1.2.4.101.1", "Fragmentable MPEG2 Main Profile / High Level", "video/mpeg"),
  enc("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1", "video/mp4"),
  enc("1.2.840.10008.1.2.4.102.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1", "video/mp4"),
  enc("1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", "video/mp4"),
  enc("1.2.840.10008.1.2.4.103.1", "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", "video/mp4"),
  enc("1.2.840.10008.1.2.4.104", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", "video/mp4"),
  enc("1.2.840.10008.1.2.4.104.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", "video/mp4"),
  enc("1.2.840.10008.1.2.4.105", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", "video/mp4"),
  enc("1.2.840.10008.1.2.4.105.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", "video/mp4"),
  enc("1.2.840.10008.1.2.4.106", "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", "video/mp4"),
  enc("1.2.840.10008.1.2.4.106.1", "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", "video/mp4"),
  enc("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile / Level 5.1", "video/mp4"),
  enc("1.2.840.10008.1.2.4.108", "HEVC/H.265 Main 10 Profile / Level 5.1", "video/mp4"),
  enc("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", "image/jxl"),
  enc("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", "image/jxl"),
  enc("1.2.840.10008.1.2.4.112", "JPEG XL", "image/jxl"),
  enc("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Image Compression (Lossless Only)", "image/jphc"),
  enc("1.2.840.10008.1.2.4.202", "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)", "image/jphc"),
  enc("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000 Image Compression", "image/jphc"),
  ts("1.2.840.10008.1.2.4.204", "JPIP HTJ2K Referenced", false, NATIVE),
  ts("1.2.840.10008.1.2.4.205", "JPIP HTJ2K Referenced Deflate", false, NATIVE, { deflated: true }),
  // image/dicom-rle since DICOM 2021a; earlier editions called it image/x-dicom-rle
  enc("1.2.840.10008.1.2.5", "RLE Lossless", "image/dicom-rle"),
  // SMPTE ST 2110: the essence travels outside the data set
  ts("1.2.840.10008.1.2.7.1", "SMPTE ST 2110-20 Uncompressed Progressive Active Video", false, NATIVE),
  ts("1.2.840.10008.1.2.7.2", "SMPTE ST 2110-20 Uncompressed Interlaced Active Video", false, NATIVE),
  ts("1.2.840.10008.1.2.7.3", "SMPTE ST 2110-30 PCM Digital Audio", false, NATIVE),
  enc("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression", "application/octet-stream"),
];

const BY_UID = new Map(TABLE.map((t) => [t.uid, t]));

/** What is known about a transfer syntax, or undefined for a UID that is not a standard transfer syntax. */
export function transferSyntaxInfo(uid: string): TransferSyntaxInfo | undefined {
  return BY_UID.get(uid);
}

export const ALL_TRANSFER_SYNTAXES: readonly TransferSyntaxInfo[] = TABLE;

/** Earlier names of frame media types that clients still send (PS3.18 2017 Table 6.1.1.8-3b). */
export const LEGACY_FRAME_MEDIA_TYPES: Readonly<Record<string, string>> = {
  "image/x-dicom-rle": "image/dicom-rle",
  "image/x-jls": "image/jls",
};

/**
 * Can the ingest pipeline store an instance in this transfer syntax? The one answer DIMSE association negotiation
 * derives its accepted storage contexts from, so a context is never accepted whose every C-STORE would fail.
 * Deflated data sets are left out: the Part-10 reader reads them (STOW, tus), but storing a C-STORE data set
 * received in a Deflate context has no test with a real peer yet; when it has, this is where that becomes true.
 */
export function ingestAccepts(uid: string): boolean {
  const t = BY_UID.get(uid);
  return t !== undefined && !t.deflated;
}
