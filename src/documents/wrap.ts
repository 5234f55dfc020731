/**
 * Wraps a PDF or a JPEG photo of a paper report as a DICOM instance of an existing study, so it travels
 * with the images: PDF -> Encapsulated PDF Storage, JPEG -> Secondary Capture (encapsulated JPEG Baseline).
 */
import crypto from "node:crypto";
import { createRequire } from "node:module";
import { DocumentRefused } from "./errors.ts";
import { decodePng } from "./png.ts";
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
export function detectContent(bytes: Buffer): ContentType | null {
  if (bytes.subarray(0, 5).toString("latin1") === "%PDF-") return "application/pdf";
  if (bytes.length > 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "image/jpeg";
  if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return "image/png";
  return null;
}

/** Refuses broken (no %%EOF near the end) and encrypted (/Encrypt in a trailer) PDFs. */
export function checkPdf(bytes: Buffer): void {
  const tail = bytes.subarray(Math.max(0, bytes.length - 1024)).toString("latin1");
  if (!tail.includes("%%EOF")) throw new DocumentRefused("the PDF is broken: it has no %%EOF end marker (was the download cut short?)");
  // the trailer dictionary (or an xref stream dictionary) names /Encrypt when the file is encrypted
  if (/\/Encrypt\s*(\d+\s+\d+\s+R|<<)/.test(bytes.toString("latin1"))) {
    throw new DocumentRefused("the PDF is encrypted: a receiving PACS could not open it; save an unprotected copy and attach that");
  }
}

/** Rows, columns and components from a baseline 8-bit JPEG's SOF0 header; refuses any other JPEG process. */
export function readJpegHeader(bytes: Buffer): { rows: number; columns: number; components: number } {
  let i = 2;
  for (let guard = 0; guard < 10_000 && i + 4 <= bytes.length; guard++) {
    if (bytes[i] !== 0xff) throw new DocumentRefused("the JPEG is broken: a marker was expected");
    const marker = bytes[i + 1]!;
    if (marker === 0xff) { i++; continue; }
    const len = bytes.readUInt16BE(i + 2);
    if (marker === 0xc0) {
      if (bytes[i + 4] !== 8) throw new DocumentRefused("the JPEG is not 8-bit baseline: save it as an ordinary JPEG and attach that");
      const rows = bytes.readUInt16BE(i + 5), columns = bytes.readUInt16BE(i + 7), components = bytes[i + 9]!;
      if (!rows || !columns || (components !== 1 && components !== 3)) throw new DocumentRefused("the JPEG header gives no usable size or colour components");
      return { rows, columns, components };
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

/** Deterministic UIDs: the same file attached twice to the same study as the same kind is the same instance. */
export function documentUids(studyUID: string, kind: DocumentKind, sha256: string): { seriesInstanceUID: string; sopInstanceUID: string } {
  return {
    seriesInstanceUID: uidFromName(`dicom-relay documents series ${studyUID} ${kind}`),
    sopInstanceUID: uidFromName(`dicom-relay document ${studyUID} ${kind} ${sha256}`),
  };
}

/** Builds the Part-10 bytes of the wrapped document; throws DocumentRefused with a sentence for bad input. */
export function wrapDocument(bytes: Buffer, req: DocumentRequest, studyMetadata: DicomJsonDataset): { part10: Buffer; sopInstanceUID: string; contentType: ContentType } {
  const contentType = detectContent(bytes);
  if (!contentType) throw new DocumentRefused("the file is not a PDF, JPEG or PNG by its content; attach the report as one of those");
  const sha256 = crypto.createHash("sha256").update(bytes).digest("hex");
  const { seriesInstanceUID, sopInstanceUID } = documentUids(req.studyInstanceUID, req.kind, sha256);
  const kind = DOCUMENT_KINDS[req.kind];
  const copied: DicomJsonDataset = {};
  for (const t of COPIED) if (studyMetadata[t]) copied[t] = studyMetadata[t]!;
  const naturalized = dcmjs().data.DicomMetaDictionary.naturalizeDataset(structuredClone(copied)) as Record<string, unknown>;
  delete naturalized._vrMap;
  const now = new Date().toISOString();
  const date = now.slice(0, 10).replace(/-/g, ""), time = now.slice(11, 19).replace(/:/g, "");
  const isPdf = contentType === "application/pdf";
  const sopClassUID = isPdf ? SOPClass.EncapsulatedPDFStorage : SOPClass.SecondaryCaptureImageStorage;
  const ds: Record<string, unknown> = {
    SpecificCharacterSet: "ISO_IR 192",
    ...naturalized,
    StudyInstanceUID: req.studyInstanceUID,
    SeriesInstanceUID: seriesInstanceUID,
    SOPInstanceUID: sopInstanceUID,
    SOPClassUID: sopClassUID,
    Modality: isPdf ? "DOC" : "OT",
    SeriesNumber: String(kind.seriesNumber),
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
  };
  if (req.translationOf) {
    // the translation names its original in the standard Referenced Instance Sequence (0008,114A); no purpose
    // code: DICOM has none for "translation of", and a wrong one would mislead a PACS
    ds.ReferencedInstanceSequence = [{
      ReferencedSOPClassUID: req.translationOfClassUID ?? sopClassUID,
      ReferencedSOPInstanceUID: req.translationOf,
    }];
  }
  let transferSyntax: string = TransferSyntaxUID.ExplicitVRLittleEndian;
  if (isPdf) {
    checkPdf(bytes);
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf";
    ds.EncapsulatedDocumentLength = bytes.length;
    ds.EncapsulatedDocument = [toArrayBuffer(bytes)];
  } else if (contentType === "image/png") {
    const png = decodePng(bytes);
    Object.assign(ds, {
      Rows: png.rows, Columns: png.columns, SamplesPerPixel: png.samplesPerPixel, BitsAllocated: 8, BitsStored: 8, HighBit: 7,
      PixelRepresentation: 0, PhotometricInterpretation: png.samplesPerPixel === 1 ? "MONOCHROME2" : "RGB",
      ...(png.samplesPerPixel === 3 ? { PlanarConfiguration: 0 } : {}),
      PixelData: toArrayBuffer(png.pixels.length % 2 ? Buffer.concat([png.pixels, Buffer.alloc(1)]) : png.pixels),
      _vrMap: { PixelData: "OB" },
    });
  } else {
    const h = readJpegHeader(bytes);
    transferSyntax = TransferSyntaxUID.JPEGBaseline8Bit;
    Object.assign(ds, {
      Rows: h.rows, Columns: h.columns, SamplesPerPixel: h.components, BitsAllocated: 8, BitsStored: 8, HighBit: 7,
      PixelRepresentation: 0, PhotometricInterpretation: h.components === 1 ? "MONOCHROME2" : "YBR_FULL_422",
      ...(h.components === 3 ? { PlanarConfiguration: 0 } : {}),
      LossyImageCompression: "01",
      PixelData: [toArrayBuffer(bytes)],
      _vrMap: { PixelData: "OB" },
    });
  }
  const meta = {
    FileMetaInformationVersion: new Uint8Array([0, 1]).buffer,
    MediaStorageSOPClassUID: sopClassUID,
    MediaStorageSOPInstanceUID: sopInstanceUID,
    TransferSyntaxUID: transferSyntax,
    ImplementationClassUID: IMPLEMENTATION_CLASS_UID,
    ImplementationVersionName: IMPLEMENTATION_VERSION_NAME,
  };
  const dict = new (dcmjs().data.DicomDict)(dcmjs().data.DicomMetaDictionary.denaturalizeDataset(meta));
  dict.dict = dcmjs().data.DicomMetaDictionary.denaturalizeDataset(ds);
  return { part10: Buffer.from(dict.write({ fragmentMultiframe: false })), sopInstanceUID, contentType };
}

function toArrayBuffer(b: Buffer): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}
