/**
 * Failure reasons for (0008,1197) in a STOW-RS response (PS3.18 10.5.3, PS3.4 Annex GG/B.2.3).
 */
export const FailureReason = {
  /** Processing failure */
  ProcessingFailure: 0x0110,
  /** Duplicate SOP Instance (same SOPInstanceUID, different bytes) */
  DuplicateSOPInstance: 0x0111,
  /** No such SOP class / SOP class not supported */
  SOPClassNotSupported: 0x0122,
  /** Refused: out of resources */
  OutOfResources: 0xa700,
  /** Error: data set does not match SOP class (missing or malformed required attributes) */
  DataSetDoesNotMatchSOPClass: 0xa900,
  /** Error: cannot understand (not DICOM, truncated, unparseable) */
  CannotUnderstand: 0xc000,
  /** Referenced transfer syntax not supported */
  TransferSyntaxNotSupported: 0xc122,
  /** Instance's StudyInstanceUID does not match the study in the STOW-RS URL (PS3.18 10.5.3.1.4: 0xC409) */
  StudyInstanceUIDMismatch: 0xc409,
} as const;
export type FailureReasonCode = (typeof FailureReason)[keyof typeof FailureReason];

/** A refused instance: a DICOM failure reason plus a sentence a person can act on. */
export class InstanceRejectedError extends Error {
  constructor(readonly reason: FailureReasonCode, message: string) {
    super(message);
    this.name = "InstanceRejectedError";
  }
}
