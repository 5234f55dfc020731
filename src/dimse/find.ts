/**
 * C-FIND (Study Root and Patient Root) as a QIDO-RS search: the identifier becomes the same query parameters
 * the QIDO-RS route parses, so both paths share one parser, one query compiler and one set of matching rules
 * (including Person Name groups: a name written Wang^XiaoDong=王^小东 is found by either group).
 * Responses carry exactly the keys asked for, as UTF-8 (SpecificCharacterSet ISO_IR 192). Pure.
 *
 * QIDO-RS has no patient resource, so a PATIENT level query (Patient Root only) is a study search on the
 * patient keys whose matches are grouped into patients the way the catalogue keeps them: one patient per
 * (PatientID, IssuerOfPatientID, PatientName), and a study without any of the three is a patient of its own
 * (anonymised exports are never one patient). STUDY / SERIES / IMAGE levels are the same under both models:
 * the patient's keys are matched as the upper-level keys (PS3.4 C.6.1.1).
 */
import type { DicomJsonAttribute, DicomJsonDataset } from "../dicom/types.ts";
import { parseQidoQuery, QidoQueryError, type QidoLimits } from "../dicom/qido.ts";
import type { QidoLevel, QidoQuery } from "../dicom/qidoQuery.ts";
import { catalogueAttribute, lookupTag } from "../dicom/attributes.ts";
import { patientKey } from "../catalog/rows.ts";

const QUERY_RETRIEVE_LEVEL = "00080052";
const SPECIFIC_CHARACTER_SET = "00080005";
const RETRIEVE_AE_TITLE = "00080054";
const LEVELS: Record<string, QidoLevel> = { STUDY: "study", SERIES: "series", IMAGE: "instance" };
const LEVEL_NAME: Record<FindLevel, string> = { patient: "PATIENT", study: "STUDY", series: "SERIES", instance: "IMAGE" };
/** PS3.4 C.6.1.1.2: the computed patient-level counts */
const PATIENT_COUNTS = { studies: "00201200", series: "00201202", instances: "00201204" } as const;
const NUMBER_OF_STUDY_RELATED_SERIES = "00201206";
const NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208";
const STUDY_INSTANCE_UID = "0020000D";
/** what grouping studies into patients reads from each study match */
const PATIENT_IDENTITY = ["00100020", "00100021", "00100010"];

/** Study Root (1.2.840.10008.5.1.4.1.2.2.x) or Patient Root (1.2.840.10008.5.1.4.1.2.1.x) information model. */
export type QueryModel = "study" | "patient";
export type FindLevel = QidoLevel | "patient";

/** An identifier the relay cannot search with: answered 0xA900 with the sentence as error comment. */
export class IdentifierError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IdentifierError";
  }
}

function valueText(attr: DicomJsonAttribute): string {
  const values = (attr.Value ?? []) as unknown[];
  return values
    .map((v) => {
      if (v === null || v === undefined) return "";
      if (typeof v === "object") {
        const o = v as Record<string, unknown>;
        return [o.Alphabetic, o.Ideographic, o.Phonetic].map((g) => (typeof g === "string" ? g : "")).join("=").replace(/=+$/, "");
      }
      return String(v);
    })
    .join("\\");
}

export interface FindPlan {
  level: FindLevel;
  /** the QIDO query for the first page (offset 0); a study search at PATIENT level */
  query: QidoQuery;
  /** tags the response carries, with their VR for zero-length answers */
  keys: Array<{ tag: string; vr: string }>;
}

/** The QIDO query for a C-FIND identifier. Throws IdentifierError. */
export function planFind(identifier: DicomJsonDataset, limits: QidoLimits, model: QueryModel = "study"): FindPlan {
  const levelText = valueText(identifier[QUERY_RETRIEVE_LEVEL] ?? { vr: "CS" }).trim().toUpperCase();
  const level: FindLevel | undefined = levelText === "PATIENT" && model === "patient" ? "patient" : LEVELS[levelText];
  const levelNames = model === "patient" ? "PATIENT, STUDY, SERIES or IMAGE" : "STUDY, SERIES or IMAGE";
  if (!level) {
    throw new IdentifierError(levelText
      ? `QueryRetrieveLevel "${levelText.slice(0, 16)}" is not supported: use ${levelNames} (${model === "patient" ? "Patient" : "Study"} Root)`
      : `the identifier has no QueryRetrieveLevel (0008,0052): use ${levelNames}`);
  }
  const params = new URLSearchParams();
  const keys: FindPlan["keys"] = [];
  const include: string[] = [];
  for (const [tag, attr] of Object.entries(identifier)) {
    if (tag === QUERY_RETRIEVE_LEVEL || tag === SPECIFIC_CHARACTER_SET || tag.startsWith("0000") || tag.startsWith("0002")) continue;
    keys.push({ tag, vr: attr.vr });
    if (tag === RETRIEVE_AE_TITLE) continue; // answered by the relay, not matched
    if (level === "patient") {
      if (Object.values(PATIENT_COUNTS).includes(tag as never)) continue; // computed from the grouped studies
      const cat = catalogueAttribute(tag);
      if (cat && cat.level !== "patient") {
        // PS3.4 C.4.1.2.1: no keys below the query level; an empty one is only returned (zero-length), a value is refused
        if (hasMatchValue(attr)) throw new IdentifierError(`${cat.keyword} is a ${cat.level} key; a PATIENT level query matches patient keys only`);
        continue;
      }
    }
    if (attr.vr === "SQ") {
      // sequence matching is not supported: the key is returned when stored, never matched
      include.push(tag);
      continue;
    }
    if (attr.BulkDataURI || attr.InlineBinary) throw new IdentifierError(`the key ${tag} has a binary value, which cannot be matched`);
    const known = lookupTag(tag);
    params.append(known?.keyword ?? tag, valueText(attr));
    include.push(tag);
  }
  if (level === "patient") include.push(...PATIENT_IDENTITY, NUMBER_OF_STUDY_RELATED_SERIES, NUMBER_OF_STUDY_RELATED_INSTANCES);
  if (include.length) params.append("includefield", [...new Set(include)].join(","));
  let query: QidoQuery;
  try {
    query = parseQidoQuery(level === "patient" ? "study" : level, {}, params, limits);
  } catch (err) {
    if (err instanceof QidoQueryError) throw new IdentifierError(err.message);
    throw err;
  }
  return { level, query, keys };
}

function hasMatchValue(attr: DicomJsonAttribute): boolean {
  return attr.vr !== "SQ" && valueText(attr).trim() !== "";
}

/** One C-FIND response identifier from one QIDO match: the keys asked for, zero-length when unknown. */
export function responseIdentifier(plan: FindPlan, match: DicomJsonDataset, retrieveAE: string): DicomJsonDataset {
  const out: DicomJsonDataset = {
    [SPECIFIC_CHARACTER_SET]: { vr: "CS", Value: ["ISO_IR 192"] },
    [QUERY_RETRIEVE_LEVEL]: { vr: "CS", Value: [LEVEL_NAME[plan.level]] },
  };
  for (const { tag, vr } of plan.keys) {
    if (tag === RETRIEVE_AE_TITLE) {
      out[tag] = { vr: "AE", Value: [retrieveAE] };
      continue;
    }
    const found = match[tag];
    out[tag] = found && !found.BulkDataURI ? found : { vr };
  }
  return out;
}

/** One patient of a PATIENT level answer: its attributes (first study's, blanks filled) and counts. */
interface PatientEntry {
  attrs: DicomJsonDataset;
  studies: number;
  series: number;
  instances: number;
}

const count = (ds: DicomJsonDataset, tag: string): number => {
  const n = Number(ds[tag]?.Value?.[0] ?? 0);
  return Number.isFinite(n) ? n : 0;
};

/**
 * Study matches grouped into patients (PATIENT level). Memory is one entry per patient, bounded by the
 * caller (maxPatients): add() says false when one more patient would pass it.
 */
export class PatientAnswers {
  private readonly byKey = new Map<string, PatientEntry>();
  constructor(private readonly maxPatients: number) {}

  get size(): number {
    return this.byKey.size;
  }

  /** The identity the catalogue groups by; a study without ID, issuer and name is a patient of its own. */
  static keyOf(study: DicomJsonDataset): string {
    const k = patientKey(study);
    if (!k.patient_key_id && !k.patient_key_issuer && !k.patient_key_name) {
      return `study:${String(study[STUDY_INSTANCE_UID]?.Value?.[0] ?? "")}`;
    }
    return JSON.stringify([k.patient_key_id, k.patient_key_issuer, k.patient_key_name]);
  }

  add(study: DicomJsonDataset): boolean {
    const key = PatientAnswers.keyOf(study);
    let e = this.byKey.get(key);
    if (!e) {
      if (this.byKey.size >= this.maxPatients) return false;
      e = { attrs: {}, studies: 0, series: 0, instances: 0 };
      this.byKey.set(key, e);
    }
    // the same identity: attributes a first study left empty may come from another of the same patient
    for (const [tag, attr] of Object.entries(study)) {
      const cat = catalogueAttribute(tag);
      if (cat && cat.level !== "patient") continue; // a study's own values (its counts, its RetrieveURL) are no patient's
      if (!valueText(e.attrs[tag] ?? { vr: attr.vr }) && (valueText(attr) || !e.attrs[tag])) e.attrs[tag] = attr;
    }
    e.studies++;
    e.series += count(study, NUMBER_OF_STUDY_RELATED_SERIES);
    e.instances += count(study, NUMBER_OF_STUDY_RELATED_INSTANCES);
    return true;
  }

  /** The response identifiers, one per patient, in the order their first study matched. */
  *responses(plan: FindPlan, retrieveAE: string): Generator<DicomJsonDataset> {
    for (const e of this.byKey.values()) {
      const computed: DicomJsonDataset = {
        ...e.attrs,
        [PATIENT_COUNTS.studies]: { vr: "IS", Value: [e.studies] },
        [PATIENT_COUNTS.series]: { vr: "IS", Value: [e.series] },
        [PATIENT_COUNTS.instances]: { vr: "IS", Value: [e.instances] },
      };
      yield responseIdentifier(plan, computed, retrieveAE);
    }
  }
}
