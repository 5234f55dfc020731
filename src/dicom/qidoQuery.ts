/** The parsed form of a QIDO-RS request (PS3.18 10.6, 8.3.4): pure data, no SQL. */

export type QidoLevel = "study" | "series" | "instance";

/** One matching condition on one attribute (PS3.4 C.2.2.2). */
export type QidoMatch =
  /** single value matching; for PN, case-insensitive; for fuzzy PN see `fuzzy` */
  | { kind: "single"; value: string }
  /** wildcard matching with * and ? (value keeps the raw pattern) */
  | { kind: "wildcard"; pattern: string }
  /**
   * list matching: UID list matching (PS3.4 C.2.2.2.2), and "any of" for code strings such as
   * ModalitiesInStudy=CT\MR (backslash- or comma-separated)
   */
  | { kind: "uidList"; values: string[] }
  /**
   * range matching for DA/TM/DT: either bound may be missing; values normalised
   * (DA "YYYYMMDD", TM "HHMMSS.FFFFFF" trimmed to what was given, DT as given)
   */
  | { kind: "range"; from: string | null; to: string | null }
  /** universal matching (the key given empty): returned, never filters */
  | { kind: "universal" };

export interface QidoFilter {
  /** tag as 8 hex digits, e.g. "00100010" */
  tag: string;
  /** keyword from the data dictionary, e.g. "PatientName" */
  keyword: string;
  vr: string;
  match: QidoMatch;
}

export interface QidoQuery {
  level: QidoLevel;
  /** scope from the URL path */
  studyInstanceUID?: string;
  seriesInstanceUID?: string;
  filters: QidoFilter[];
  /** tags (8 hex) asked for with includefield; ignored when includeAll */
  includeFields: string[];
  includeAll: boolean;
  fuzzyMatching: boolean;
  limit: number;
  offset: number;
  /** keys that were given but that this server does not match on (reported in a Warning header) */
  unsupportedKeys: string[];
  /** parameters that are no DICOM key nor a QIDO parameter (a cache-buster `_`): ignored, reported in a Warning header */
  ignoredParameters: string[];
}
