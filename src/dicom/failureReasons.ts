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
  /**
   * The instance's StudyInstanceUID differs from the study in the STOW-RS URL. The standard has no code of its
   * own for this; it is a data set error, so 0xA900 with a sentence that says which UIDs differ.
   */
  StudyInstanceUIDMismatch: 0xa900,
} as const;
export type FailureReasonCode = (typeof FailureReason)[keyof typeof FailureReason];

/** A refused instance: a DICOM failure reason plus a sentence a person can act on. */
export class InstanceRejectedError extends Error {
  /** the instance's UIDs as far as they could be read before the refusal (FailedSOPSequence items carry them) */
  ids?: { sopClassUID?: string; sopInstanceUID?: string };
  constructor(readonly reason: FailureReasonCode, message: string) {
    super(message);
    this.name = "InstanceRejectedError";
  }
}

/** LO (Long String): at most 64 characters (PS3.5 6.2). */
export const LO_MAX = 64;

/**
 * A sentence as an Error Comment (0000,0902), which is LO: at most 64 characters, no backslash or control
 * characters. UIDs (the longest part of most sentences, and in the response's own attributes already) are left out
 * first; what is still too long is cut at a word with "...". The whole sentence stays in the log and the JSON API.
 */
export function errorComment(sentence: string): string {
  let s = sentence.replace(/[\\\u0000-\u001f\u007f]/g, " ").replace(/\s+/g, " ").trim();
  if (s.length <= LO_MAX) return s;
  s = s.replace(/ ?\b\d+(\.\d+){2,}\b/g, "").replace(/\s+([,;:)])/g, "$1").replace(/\s+/g, " ").trim();
  if (s.length <= LO_MAX) return s;
  const cut = s.slice(0, LO_MAX - 3);
  const atWord = cut.lastIndexOf(" ");
  return (atWord > 40 ? cut.slice(0, atWord) : cut).replace(/[\s,;:]+$/, "") + "...";
}
