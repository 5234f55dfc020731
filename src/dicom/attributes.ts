/**
 * The QIDO-RS attribute catalogue: which attributes this relay matches on and returns, per level
 * (PS3.18 Tables 10.6.1-5/6/7 for matching, 10.6.3-3/4/5 for the default return set), plus the
 * computed ones (counts, ModalitiesInStudy, RetrieveURL, InstanceAvailability, SpecificCharacterSet).
 * Anything else in the data dictionary is a valid key that is not matched (reported as unsupported)
 * but may still be returned through includefield, read from a stored instance's metadata.
 */
import { createRequire } from "node:module";
import type { QidoLevel } from "./qidoQuery.ts";

/** Where an attribute's value lives in the information model. */
export type EntityLevel = "patient" | "study" | "series" | "instance";

export interface QidoAttribute {
  /** 8 upper-case hex digits */
  tag: string;
  keyword: string;
  vr: string;
  level: EntityLevel;
  /** supported as a matching key */
  matching: boolean;
  /** returned without includefield at the query level that owns it (and below, see returnPlan in qido.ts) */
  returnedByDefault: boolean;
  /** derived by the index, not read from an instance */
  computed?: boolean;
}

const a = (tag: string, keyword: string, vr: string, level: EntityLevel, matching: boolean, returnedByDefault: boolean, computed = false): QidoAttribute =>
  ({ tag, keyword, vr, level, matching, returnedByDefault, ...(computed ? { computed } : {}) });

export const TAG = {
  SpecificCharacterSet: "00080005",
  SOPClassUID: "00080016",
  SOPInstanceUID: "00080018",
  StudyDate: "00080020",
  ContentDate: "00080023",
  AcquisitionDateTime: "0008002A",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  InstanceAvailability: "00080056",
  Modality: "00080060",
  ModalitiesInStudy: "00080061",
  ReferringPhysicianName: "00080090",
  RetrieveURL: "00081190",
  PatientName: "00100010",
  PatientID: "00100020",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  SeriesNumber: "00200011",
  InstanceNumber: "00200013",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  NumberOfSeriesRelatedInstances: "00201209",
} as const;

/** The catalogue. Order is irrelevant; responses are sorted by tag. */
export const QIDO_ATTRIBUTES: readonly QidoAttribute[] = [
  // computed, returned at every level
  a("00080005", "SpecificCharacterSet", "CS", "instance", false, true, true),
  a("00080056", "InstanceAvailability", "CS", "instance", false, true, true),
  a("00081190", "RetrieveURL", "UR", "instance", false, true, true),
  // patient
  a("00100010", "PatientName", "PN", "patient", true, true),
  a("00100020", "PatientID", "LO", "patient", true, true),
  a("00100021", "IssuerOfPatientID", "LO", "patient", true, false),
  a("00100030", "PatientBirthDate", "DA", "patient", true, true),
  a("00100040", "PatientSex", "CS", "patient", true, true),
  // study
  a("00080020", "StudyDate", "DA", "study", true, true),
  a("00080030", "StudyTime", "TM", "study", true, true),
  a("00080050", "AccessionNumber", "SH", "study", true, true),
  a("00080061", "ModalitiesInStudy", "CS", "study", true, true, true),
  a("00080090", "ReferringPhysicianName", "PN", "study", true, true),
  a("00080201", "TimezoneOffsetFromUTC", "SH", "study", false, true),
  a("00081030", "StudyDescription", "LO", "study", true, true),
  a("0020000D", "StudyInstanceUID", "UI", "study", true, true),
  a("00200010", "StudyID", "SH", "study", true, true),
  a("00201206", "NumberOfStudyRelatedSeries", "IS", "study", false, true, true),
  a("00201208", "NumberOfStudyRelatedInstances", "IS", "study", false, true, true),
  a("00101010", "PatientAge", "AS", "study", false, false),
  a("00101020", "PatientSize", "DS", "study", false, false),
  a("00101030", "PatientWeight", "DS", "study", false, false),
  // series
  a("00080060", "Modality", "CS", "series", true, true),
  a("0008103E", "SeriesDescription", "LO", "series", true, true),
  a("00080021", "SeriesDate", "DA", "series", true, false),
  a("00080031", "SeriesTime", "TM", "series", false, false),
  a("00180015", "BodyPartExamined", "CS", "series", true, false),
  a("0020000E", "SeriesInstanceUID", "UI", "series", true, true),
  a("00200011", "SeriesNumber", "IS", "series", true, true),
  a("00201209", "NumberOfSeriesRelatedInstances", "IS", "series", false, true, true),
  a("00400244", "PerformedProcedureStepStartDate", "DA", "series", true, true),
  a("00400245", "PerformedProcedureStepStartTime", "TM", "series", true, true),
  a("00400275", "RequestAttributeSequence", "SQ", "series", false, true),
  // instance
  a("00080016", "SOPClassUID", "UI", "instance", true, true),
  a("00080018", "SOPInstanceUID", "UI", "instance", true, true),
  a("00080023", "ContentDate", "DA", "instance", true, false),
  a("00080033", "ContentTime", "TM", "instance", false, false),
  a("0008002A", "AcquisitionDateTime", "DT", "instance", true, false),
  a("00200013", "InstanceNumber", "IS", "instance", true, true),
  a("00280008", "NumberOfFrames", "IS", "instance", false, true),
  a("00280010", "Rows", "US", "instance", false, true),
  a("00280011", "Columns", "US", "instance", false, true),
  a("00280100", "BitsAllocated", "US", "instance", false, true),
];

const BY_TAG = new Map(QIDO_ATTRIBUTES.map((x) => [x.tag, x]));

export function catalogueAttribute(tag: string): QidoAttribute | undefined {
  return BY_TAG.get(tag);
}

/** Non-computed catalogue tags stored with an entity (the index keeps them per patient/study/series/instance). */
export function storedTagsOf(level: EntityLevel): string[] {
  return QIDO_ATTRIBUTES.filter((x) => x.level === level && !x.computed).map((x) => x.tag);
}

const LEVEL_RANK: Record<EntityLevel, number> = { patient: 0, study: 1, series: 2, instance: 3 };
const QUERY_RANK: Record<QidoLevel, number> = { study: 1, series: 2, instance: 3 };

/** An attribute of this entity level is an attribute of the queried entity or one above it. */
export function isAtOrAbove(level: EntityLevel, queryLevel: QidoLevel): boolean {
  return LEVEL_RANK[level] <= QUERY_RANK[queryLevel];
}

// ---- the data dictionary (dcmjs ships one; only its lookup tables are used) ----

interface DictionaryEntry {
  tag: string; // "(0010,0010)"
  vr: string;
  name: string;
}
interface DcmjsDictionary {
  data: { DicomMetaDictionary: { dictionary: Record<string, DictionaryEntry>; nameMap: Record<string, DictionaryEntry> } };
}

let dictionary: DcmjsDictionary["data"]["DicomMetaDictionary"] | null = null;
let lowerCaseNames: Map<string, DictionaryEntry> | null = null;

function dict() {
  // loaded on first use: dcmjs ships no type declarations, and most processes never parse a query
  dictionary ??= (createRequire(import.meta.url)("dcmjs") as DcmjsDictionary).data.DicomMetaDictionary;
  return dictionary;
}

export interface DictionaryAttribute {
  tag: string;
  keyword: string;
  vr: string;
}

const fromEntry = (e: DictionaryEntry): DictionaryAttribute | null => {
  const m = /^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$/.exec(e.tag);
  return m ? { tag: (m[1]! + m[2]!).toUpperCase(), keyword: e.name, vr: e.vr } : null;
};

/** A keyword of the data dictionary (exact, else case-insensitive). */
export function lookupKeyword(keyword: string): DictionaryAttribute | null {
  const cat = QIDO_ATTRIBUTES.find((x) => x.keyword === keyword);
  if (cat) return { tag: cat.tag, keyword: cat.keyword, vr: cat.vr };
  const d = dict();
  const exact = Object.prototype.hasOwnProperty.call(d.nameMap, keyword) ? d.nameMap[keyword] : undefined;
  if (exact) return fromEntry(exact);
  if (!lowerCaseNames) {
    lowerCaseNames = new Map();
    for (const name of Object.keys(d.nameMap)) lowerCaseNames.set(name.toLowerCase(), d.nameMap[name]!);
  }
  const loose = lowerCaseNames.get(keyword.toLowerCase());
  return loose ? fromEntry(loose) : null;
}

/** A tag (8 hex digits) of the data dictionary; null for private or unknown tags. */
export function lookupTag(tag: string): DictionaryAttribute | null {
  const t = tag.toUpperCase();
  const cat = BY_TAG.get(t);
  if (cat) return { tag: cat.tag, keyword: cat.keyword, vr: cat.vr };
  const e = dict().dictionary[`(${t.slice(0, 4)},${t.slice(4)})`];
  return e ? fromEntry(e) : null;
}
