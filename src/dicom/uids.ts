/**
 * DICOM UIDs (PS3.5 9.1): syntax check, the ones this relay names, and a generator.
 */
import crypto from "node:crypto";

/**
 * A UID is components of digits separated by dots, no leading zero in a multi-digit component,
 * no empty component, at most 64 characters.
 */
export function isValidUid(uid: string): boolean {
  if (uid.length === 0 || uid.length > 64) return false;
  // one pass instead of a regex: this runs for every path parameter and every ingested instance
  let componentStart = 0;
  for (let i = 0; i <= uid.length; i++) {
    const c = i < uid.length ? uid.charCodeAt(i) : 0x2e;
    if (c === 0x2e) {
      const len = i - componentStart;
      if (len === 0) return false;
      if (len > 1 && uid.charCodeAt(componentStart) === 0x30) return false;
      componentStart = i + 1;
    } else if (c < 0x30 || c > 0x39) {
      return false;
    }
  }
  return true;
}

/**
 * A new UID under the 2.25 root (PS3.5 B.2): the decimal form of a random 128-bit number, so no
 * organisation root is needed and collisions are negligible. At most 44 characters.
 */
export function newUid(): string {
  const bytes = crypto.randomBytes(16);
  return `2.25.${BigInt("0x" + bytes.toString("hex")).toString(10)}`;
}

/** A UID derived from a name (PS3.5 B.2 allows 2.25 + the integer form of a UUID; here a SHA-256 prefix). */
export function uidFromName(name: string): string {
  const h = crypto.createHash("sha256").update(name).digest().subarray(0, 16);
  h[6] = (h[6]! & 0x0f) | 0x50; // mark it as a name-based (version 5 style) UUID
  h[8] = (h[8]! & 0x3f) | 0x80;
  return `2.25.${BigInt("0x" + h.toString("hex")).toString(10)}`;
}

/** Identifies files this relay writes (File Meta (0002,0012)). */
export const IMPLEMENTATION_CLASS_UID = uidFromName("dicom-relay implementation class 1");
export const IMPLEMENTATION_VERSION_NAME = "DICOMRELAY_01";

/** Storage SOP classes the relay and its tests name (PS3.6 Annex A). */
export const SOPClass = {
  CTImageStorage: "1.2.840.10008.5.1.4.1.1.2",
  EnhancedCTImageStorage: "1.2.840.10008.5.1.4.1.1.2.1",
  MRImageStorage: "1.2.840.10008.5.1.4.1.1.4",
  EnhancedMRImageStorage: "1.2.840.10008.5.1.4.1.1.4.1",
  PETImageStorage: "1.2.840.10008.5.1.4.1.1.128",
  ComputedRadiographyImageStorage: "1.2.840.10008.5.1.4.1.1.1",
  DigitalXRayImageStorageForPresentation: "1.2.840.10008.5.1.4.1.1.1.1",
  DigitalMammographyXRayImageStorageForPresentation: "1.2.840.10008.5.1.4.1.1.1.2",
  UltrasoundImageStorage: "1.2.840.10008.5.1.4.1.1.6.1",
  UltrasoundMultiFrameImageStorage: "1.2.840.10008.5.1.4.1.1.3.1",
  SecondaryCaptureImageStorage: "1.2.840.10008.5.1.4.1.1.7",
  MultiFrameSingleBitSecondaryCaptureImageStorage: "1.2.840.10008.5.1.4.1.1.7.1",
  MultiFrameGrayscaleByteSecondaryCaptureImageStorage: "1.2.840.10008.5.1.4.1.1.7.2",
  MultiFrameGrayscaleWordSecondaryCaptureImageStorage: "1.2.840.10008.5.1.4.1.1.7.3",
  MultiFrameTrueColorSecondaryCaptureImageStorage: "1.2.840.10008.5.1.4.1.1.7.4",
  EncapsulatedPDFStorage: "1.2.840.10008.5.1.4.1.1.104.1",
  BasicTextSRStorage: "1.2.840.10008.5.1.4.1.1.88.11",
  VLPhotographicImageStorage: "1.2.840.10008.5.1.4.1.1.77.1.4",
} as const;

/** Transfer syntax UIDs used by name in code (the full table is in transferSyntax.ts). */
export const TransferSyntaxUID = {
  ImplicitVRLittleEndian: "1.2.840.10008.1.2",
  ExplicitVRLittleEndian: "1.2.840.10008.1.2.1",
  EncapsulatedUncompressedExplicitVRLittleEndian: "1.2.840.10008.1.2.1.98",
  DeflatedExplicitVRLittleEndian: "1.2.840.10008.1.2.1.99",
  ExplicitVRBigEndian: "1.2.840.10008.1.2.2",
  JPEGBaseline8Bit: "1.2.840.10008.1.2.4.50",
  JPEGLosslessSV1: "1.2.840.10008.1.2.4.70",
  JPEGLSLossless: "1.2.840.10008.1.2.4.80",
  JPEG2000Lossless: "1.2.840.10008.1.2.4.90",
  RLELossless: "1.2.840.10008.1.2.5",
} as const;
