/**
 * Wraps a PDF or a JPEG/PNG photo of a paper report as a DICOM instance of an existing study, so it travels
 * with the images: PDF -> Encapsulated PDF Storage, JPEG -> Secondary Capture (encapsulated JPEG Baseline),
 * PNG -> Secondary Capture (native pixels). The document's bytes are never held in memory: dcmjs writes the data set
 * around a placeholder, and the document (or the decoded pixels) is streamed from its spool file in its place.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import { createRequire } from "node:module";
import { DocumentRefused } from "./errors.ts";
import { decodePngFile } from "./png.ts";
import type { SpooledDocument } from "./spool.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, SOPClass, TransferSyntaxUID, uidFromName } from "../dicom/uids.ts";

/** Document kinds and the LOINC code naming each (ConceptNameCodeSequence). */
export const DOCUMENT_KINDS = {
  "radiology-report": { code: "18748-4", meaning: "Diagnostic imaging report", seriesNumber: 9001 },
  "pathology-report": { code: "11526-1", meaning: "Pathology study", seriesNumber: 9002 },
  "discharge-summary": { code: "18842-5", meaning: "Discharge summary", seriesNumber: 9003 },
  "surgical-note": { code: "11504-8", meaning: "Surgical operation note", seriesNumber: 9004 },
  "lab-results": { code: "11502-2", meaning: "Laboratory report", seriesNumber: 9005 },
  other: { code: "51899-3", meaning: "Details Document", seriesNumber: 9006 },
} as const;
export type DocumentKind = keyof typeof DOCUMENT_KINDS;
export const isDocumentKind = (k: string): k is DocumentKind => Object.hasOwn(DOCUMENT_KINDS, k);

/** The part of dcmjs used here: naturalize the copied study attributes, write Part-10 bytes. */
interface DcmjsWriter {
  data: {
    DicomMetaDictionary: { naturalizeDataset(ds: unknown): unknown; denaturalizeDataset(ds: unknown): unknown };
    DicomDict: new (meta: unknown) => { dict: unknown; write(opts?: unknown): ArrayBuffer };
  };
}
let dcmjsModule: DcmjsWriter | undefined;
const dcmjs = (): DcmjsWriter => (dcmjsModule ??= createRequire(import.meta.url)("dcmjs") as DcmjsWriter);

export { DocumentRefused };

export type ContentType = "application/pdf" | "image/jpeg" | "image/png";

/** Content by magic bytes, never by file name. */
export function detectContent(head: Buffer): ContentType | null {
  if (head.subarray(0, 5).toString("latin1") === "%PDF-") return "application/pdf";
  if (head.length > 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return "image/jpeg";
  if (head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return "image/png";
  return null;
}

/** Refuses broken (no %%EOF in the last KiB) and encrypted (/Encrypt in a trailer) PDFs. */
export function checkPdf(doc: { tail: Buffer; mentionsEncrypt: boolean }): void {
  if (!doc.tail.toString("latin1").includes("%%EOF")) throw new DocumentRefused("the PDF is broken: it has no %%EOF end marker (was the download cut short?)");
  // the trailer dictionary (or an xref stream dictionary) names /Encrypt when the file is encrypted
  if (doc.mentionsEncrypt) {
    throw new DocumentRefused("the PDF is encrypted: a receiving PACS could not open it; save an unprotected copy and attach that");
  }
}

/** Reads length bytes at position (fewer at the end of the data). */
export type ByteReader = (position: number, length: number) => Promise<Buffer>;
export const bufferReader = (b: Buffer): ByteReader => async (position, length) => b.subarray(position, position + length);
function fileReader(fh: fsp.FileHandle): ByteReader {
  return async (position, length) => {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, position);
    return buf.subarray(0, bytesRead);
  };
}

export interface JpegHeader {
  rows: number;
  columns: number;
  components: number;
  /** what PS3.5 8.2.1 asks for: YBR_FULL_422 when the colour is subsampled, YBR_FULL when not, RGB for an untransformed Adobe JPEG */
  photometricInterpretation: "MONOCHROME2" | "YBR_FULL_422" | "YBR_FULL" | "RGB";
}

/** Size and colour of a baseline 8-bit JPEG from its SOF0 header; refuses any other JPEG process. Reads markers only. */
export async function readJpegHeader(read: ByteReader): Promise<JpegHeader> {
  let i = 2;
  let adobeTransform: number | undefined;
  for (let guard = 0; guard < 10_000; guard++) {
    const m = await read(i, 4);
    if (m.length < 4) break;
    if (m[0] !== 0xff) throw new DocumentRefused("the JPEG is broken: a marker was expected");
    const marker = m[1]!;
    if (marker === 0xff) { i++; continue; }
    const len = m.readUInt16BE(2);
    if (marker === 0xee && len >= 12) {
      // APP14 "Adobe": its transform flag says whether the three components are YCbCr (1) or RGB (0)
      const app = await read(i + 4, len - 2);
      if (app.subarray(0, 5).toString("latin1") === "Adobe") adobeTransform = app[10];
    }
    if (marker === 0xc0) {
      const sof = await read(i + 4, len - 2);
      if (sof[0] !== 8) throw new DocumentRefused("the JPEG is not 8-bit baseline: save it as an ordinary JPEG and attach that");
      const rows = sof.readUInt16BE(1), columns = sof.readUInt16BE(3), components = sof[5]!;
      if (!rows || !columns || (components !== 1 && components !== 3) || sof.length < 6 + 3 * components) throw new DocumentRefused("the JPEG header gives no usable size or colour components");
      let photometricInterpretation: JpegHeader["photometricInterpretation"] = "MONOCHROME2";
      if (components === 3) {
        // sampling factors of the first component (H << 4 | V): above 1x1 the chroma is subsampled
        const sampling = sof[7]!;
        if (adobeTransform === 0) photometricInterpretation = "RGB";
        else photometricInterpretation = (sampling >> 4) * (sampling & 15) > 1 ? "YBR_FULL_422" : "YBR_FULL";
      }
      return { rows, columns, components, photometricInterpretation };
    }
    if (marker >= 0xc1 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      throw new DocumentRefused("the JPEG is progressive or lossless, not baseline: save it as an ordinary JPEG and attach that");
    }
    if (marker === 0xda || marker === 0xd9) break;
    i += 2 + len;
  }
  throw new DocumentRefused("the JPEG is broken: no frame header found");
}

export interface DocumentRequest {
  studyInstanceUID: string;
  kind: DocumentKind;
  title: string;
  language: string;
  /** SOPInstanceUID of the original this is a translation of */
  translationOf?: string;
  /** SOPClassUID of that original (the route looks it up in the index) */
  translationOfClassUID?: string;
}

/** Patient and study attributes copied from an instance of the study the document joins. */
const COPIED = ["00100010", "00100020", "00100030", "00100040", "00080020", "00080030", "00080050", "00080090", "00200010", "00100021"];
/**
 * The Type 2 ones among them (Patient and General Study modules): present even when the study has no value, empty
 * then, as the IODs require (dciodvfy checks this).
 */
const TYPE2_COPIED: Record<string, string> = {
  "00100010": "PatientName", "00100020": "PatientID", "00100030": "PatientBirthDate", "00100040": "PatientSex",
  "00080020": "StudyDate", "00080030": "StudyTime", "00080050": "AccessionNumber", "00080090": "ReferringPhysicianName", "00200010": "StudyID",
};

/**
 * Deterministic UIDs: the same file attached twice to the same study as the same kind is the same instance. PDFs
 * (Modality DOC) and photos (Modality OT) of a kind are two series, since a series has one modality.
 */
export function documentUids(studyUID: string, kind: DocumentKind, sha256: string, form: "pdf" | "image" = "pdf"): { seriesInstanceUID: string; sopInstanceUID: string } {
  return {
    seriesInstanceUID: uidFromName(form === "pdf" ? `dicom-relay documents series ${studyUID} ${kind}` : `dicom-relay document images series ${studyUID} ${kind}`),
    sopInstanceUID: uidFromName(`dicom-relay document ${studyUID} ${kind} ${sha256}`),
  };
}

/** Every series UID the relay gives documents of a study, with the kind each one holds. */
export function documentSeries(studyUID: string): Map<string, DocumentKind> {
  const out = new Map<string, DocumentKind>();
  for (const kind of Object.keys(DOCUMENT_KINDS) as DocumentKind[]) {
    for (const form of ["pdf", "image"] as const) out.set(documentUids(studyUID, kind, "", form).seriesInstanceUID, kind);
  }
  return out;
}

/** What the document becomes: the attributes describing its content and the file whose bytes fill the bulk element. */
export interface DocumentContent {
  contentType: ContentType;
  transferSyntaxUID: string;
  attributes: Record<string, unknown>;
  /** the element holding the content: EncapsulatedDocument (0042,0011) or PixelData (7FE0,0010) */
  element: "EncapsulatedDocument" | "PixelData";
  /** PixelData as one encapsulated fragment (JPEG) or native (PNG) */
  encapsulated: boolean;
  /** the file with the bytes (the spooled document, or the pixels decoded from a PNG) and how many */
  bulkPath: string;
  bulkLength: number;
}

/**
 * Checks the spooled document by content and prepares what goes into the wrapper; a PNG is decoded into pixelPath.
 * Throws DocumentRefused with a sentence for bad input.
 */
export async function readDocumentContent(doc: SpooledDocument, pixelPath: string): Promise<DocumentContent> {
  const contentType = detectContent(doc.head);
  if (!contentType) throw new DocumentRefused("the file is not a PDF, JPEG or PNG by its content; attach the report as one of those");
  if (contentType === "application/pdf") {
    checkPdf(doc);
    return {
      contentType, transferSyntaxUID: TransferSyntaxUID.ExplicitVRLittleEndian, element: "EncapsulatedDocument", encapsulated: false,
      attributes: { MIMETypeOfEncapsulatedDocument: "application/pdf", EncapsulatedDocumentLength: doc.size },
      bulkPath: doc.path, bulkLength: doc.size,
    };
  }
  const image = { BitsAllocated: 8, BitsStored: 8, HighBit: 7, PixelRepresentation: 0 };
  if (contentType === "image/png") {
    const png = await decodePngFile(doc.path, pixelPath);
    return {
      contentType, transferSyntaxUID: TransferSyntaxUID.ExplicitVRLittleEndian, element: "PixelData", encapsulated: false,
      attributes: {
        Rows: png.rows, Columns: png.columns, SamplesPerPixel: png.samplesPerPixel, ...image,
        PhotometricInterpretation: png.samplesPerPixel === 1 ? "MONOCHROME2" : "RGB",
        ...(png.samplesPerPixel === 3 ? { PlanarConfiguration: 0 } : {}),
      },
      bulkPath: pixelPath, bulkLength: png.length,
    };
  }
  const fh = await fsp.open(doc.path, "r");
  let h: JpegHeader;
  try {
    h = await readJpegHeader(fileReader(fh));
  } finally {
    await fh.close();
  }
  return {
    contentType, transferSyntaxUID: TransferSyntaxUID.JPEGBaseline8Bit, element: "PixelData", encapsulated: true,
    attributes: {
      Rows: h.rows, Columns: h.columns, SamplesPerPixel: h.components, ...image,
      PhotometricInterpretation: h.photometricInterpretation,
      ...(h.components === 3 ? { PlanarConfiguration: 0 } : {}),
      LossyImageCompression: "01",
    },
    bulkPath: doc.path, bulkLength: doc.size,
  };
}

/** The Part-10 bytes before and after the content; the content goes between them, padded to even length. */
export interface DocumentWrapper {
  prefix: Buffer;
  suffix: Buffer;
  /** 1 when the content's length is odd (DICOM values have even length) */
  pad: number;
  sopInstanceUID: string;
  seriesInstanceUID: string;
  contentType: ContentType;
}

// stands where the content goes while dcmjs writes the data set; found again by its bytes (random: no collision)
const PLACEHOLDER_LENGTH = 16;

/** Builds the data set of the wrapped document around a placeholder for its content (pure: no I/O). */
export function buildWrapper(content: Omit<DocumentContent, "bulkPath">, sha256: string, req: DocumentRequest, studyMetadata: DicomJsonDataset, now = new Date()): DocumentWrapper {
  const isPdf = content.contentType === "application/pdf";
  const { seriesInstanceUID, sopInstanceUID } = documentUids(req.studyInstanceUID, req.kind, sha256, isPdf ? "pdf" : "image");
  const kind = DOCUMENT_KINDS[req.kind];
  const copied: DicomJsonDataset = {};
  for (const t of COPIED) if (studyMetadata[t]) copied[t] = studyMetadata[t]!;
  const naturalized = dcmjs().data.DicomMetaDictionary.naturalizeDataset(structuredClone(copied)) as Record<string, unknown>;
  delete naturalized._vrMap;
  for (const [tag, keyword] of Object.entries(TYPE2_COPIED)) if (!studyMetadata[tag]?.Value?.length) naturalized[keyword] = "";
  const iso = now.toISOString();
  const date = iso.slice(0, 10).replace(/-/g, ""), time = iso.slice(11, 19).replace(/:/g, "");
  const sopClassUID = isPdf ? SOPClass.EncapsulatedPDFStorage : SOPClass.SecondaryCaptureImageStorage;
  const placeholder = crypto.randomBytes(PLACEHOLDER_LENGTH);
  const ds: Record<string, unknown> = {
    SpecificCharacterSet: "ISO_IR 192",
    ...naturalized,
    StudyInstanceUID: req.studyInstanceUID,
    SeriesInstanceUID: seriesInstanceUID,
    SOPInstanceUID: sopInstanceUID,
    SOPClassUID: sopClassUID,
    Modality: isPdf ? "DOC" : "OT",
    SeriesNumber: String(kind.seriesNumber + (isPdf ? 0 : 100)),
    SeriesDescription: req.kind,
    InstanceNumber: "1",
    ContentDate: date,
    ContentTime: time,
    InstanceCreationDate: date,
    InstanceCreationTime: time,
    Manufacturer: "dicom-relay",
    ConversionType: isPdf ? "SD" : "DF",
    DocumentTitle: req.title,
    BurnedInAnnotation: "YES",
    ConceptNameCodeSequence: [{ CodeValue: kind.code, CodingSchemeDesignator: "LN", CodeMeaning: kind.meaning }],
    // language of the document (PS3.3 C.12.1.1.2 SOP Common: Language Code Sequence, BCP 47 "RFC5646" scheme)
    LanguageCodeSequence: [{ CodeValue: req.language, CodingSchemeDesignator: "RFC5646", CodeMeaning: req.language }],
    // Type 2 (empty: not known): when the document was made; a photo of a page has no patient orientation.
    // Laterality (Type 2C) stays absent: a report is no paired body part
    ...(isPdf ? { AcquisitionDateTime: "" } : { PatientOrientation: "" }),
    ...content.attributes,
  };
  if (req.translationOf) {
    // the translation names its original in Source Instance Sequence (0042,0013, General Reference and Encapsulated
    // Document modules): "the instances this one was derived from", which a translation is. Referenced Instance
    // Sequence would need a purpose-of-reference code, and DICOM has none meaning "translation of"
    ds.SourceInstanceSequence = [{
      ReferencedSOPClassUID: req.translationOfClassUID ?? sopClassUID,
      ReferencedSOPInstanceUID: req.translationOf,
    }];
  }
  const value = toArrayBuffer(placeholder);
  if (content.element === "EncapsulatedDocument") ds.EncapsulatedDocument = [value];
  else {
    ds.PixelData = content.encapsulated ? [value] : value;
    ds._vrMap = { PixelData: "OB" };
  }
  const meta = {
    FileMetaInformationVersion: new Uint8Array([0, 1]).buffer,
    MediaStorageSOPClassUID: sopClassUID,
    MediaStorageSOPInstanceUID: sopInstanceUID,
    TransferSyntaxUID: content.transferSyntaxUID,
    ImplementationClassUID: IMPLEMENTATION_CLASS_UID,
    ImplementationVersionName: IMPLEMENTATION_VERSION_NAME,
  };
  const dict = new (dcmjs().data.DicomDict)(dcmjs().data.DicomMetaDictionary.denaturalizeDataset(meta));
  dict.dict = dcmjs().data.DicomMetaDictionary.denaturalizeDataset(ds);
  const written = Buffer.from(dict.write({ fragmentMultiframe: false }));
  const at = written.indexOf(placeholder);
  // the 4 bytes before the placeholder are its length: the element's (OB, defined length) or the fragment item's
  if (at < 4 || written.readUInt32LE(at - 4) !== PLACEHOLDER_LENGTH || written.indexOf(placeholder, at + 1) !== -1) {
    throw new Error("document wrapper: the content placeholder was not written as one value");
  }
  const pad = content.bulkLength % 2;
  const prefix = Buffer.from(written.subarray(0, at));
  prefix.writeUInt32LE(content.bulkLength + pad, at - 4);
  return { prefix, suffix: Buffer.from(written.subarray(at + PLACEHOLDER_LENGTH)), pad, sopInstanceUID, seriesInstanceUID, contentType: content.contentType };
}

/** The wrapped instance as a stream: prefix, the content read from its file, the pad byte, suffix. */
export async function* wrappedInstance(wrapper: DocumentWrapper, bulkPath: string): AsyncGenerator<Buffer> {
  yield wrapper.prefix;
  for await (const chunk of fs.createReadStream(bulkPath, { highWaterMark: 1 << 20 })) yield chunk as Buffer;
  if (wrapper.pad) yield Buffer.alloc(1);
  yield wrapper.suffix;
}

function toArrayBuffer(b: Buffer): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}
