/** DICOM JSON (PS3.18 F.2): one attribute. */
export interface DicomJsonAttribute {
  vr: string;
  Value?: unknown[];
  InlineBinary?: string;
  BulkDataURI?: string;
}
/** DICOM JSON data set: keys are 8 upper-case hex digits ("0020000D"). */
export type DicomJsonDataset = Record<string, DicomJsonAttribute>;

/** A run of bytes in a stored Part-10 file. */
export interface ByteRange {
  offset: number;
  length: number;
}

/** Where the pixel data sits in the stored file, so WADO-RS frames are ranged reads. */
export interface PixelDataLocation {
  /** offset of the first value byte of (7FE0,0010) (for encapsulated: the first item tag) */
  offset: number;
  /** value length in bytes (for encapsulated: up to and including the sequence delimiter) */
  length: number;
  encapsulated: boolean;
  /** per frame (1-based frame n is frames[n-1]), the byte runs that make it up, in order */
  frames: ByteRange[][];
  /**
   * Deflated Explicit VR Little Endian: the stored byte at which the deflated data set starts. Then every offset
   * here is a position in the inflated data set, and the bytes are read by inflating from this byte on.
   */
  inflatedFrom?: number;
}

/** A bulk data element left out of the metadata and served by its BulkDataURI. */
export interface BulkDataLocation extends ByteRange {
  /**
   * tag as 8 hex digits, e.g. "7FE00010", "00420011"; inside sequence items the path of sequence tags, item
   * indexes (0-based) and the tag, e.g. "54000100/0/54001010" (waveform data)
   */
  tag: string;
  vr: string;
  /** as PixelDataLocation.inflatedFrom: the offset is a position in the inflated data set */
  inflatedFrom?: number;
}

/** What the Part-10 reader learns from one file without holding its bulk data in memory. */
export interface ParsedInstance {
  transferSyntaxUID: string;
  sopClassUID: string;
  sopInstanceUID: string;
  studyInstanceUID: string;
  seriesInstanceUID: string;
  /** the data set (without file meta) as DICOM JSON; bulk elements carry BulkDataURI placeholders */
  dataset: DicomJsonDataset;
  /** file meta group (0002) as DICOM JSON */
  fileMeta: DicomJsonDataset;
  pixelData: PixelDataLocation | null;
  bulkData: BulkDataLocation[];
  /** stored anyway, but the sender should know (a file meta UID that contradicts the data set); sentences */
  warnings: string[];
}

/**
 * BulkDataURI values are stored relative to a placeholder and completed per request, because the
 * same instance is served under several roots (/dicom-web, a share link's root, ...).
 */
export const BULK_ROOT_PLACEHOLDER = "@@DICOMWEB_ROOT@@";
