/**
 * How index rows are derived from an instance and read back, shared by every Index implementation
 * (sqlite.ts, postgres.ts) so both keep exactly the same semantics.
 */
import type { InstanceBlob, InstanceLocation } from "./index.ts";
import type { QidoStudyValues } from "../dicom/qido.ts";
import type { DicomJsonAttribute, DicomJsonDataset } from "../dicom/types.ts";
import { TAG, storedTagsOf, type EntityLevel } from "../dicom/attributes.ts";
import { matchColumnNames } from "./queryCompiler.ts";
import { nameKey, personNameGroups } from "./pnMatch.ts";

export interface LocationRow {
  pk: number;
  series_pk: number;
  study_pk: number;
  sop_instance_uid: string;
  sop_class_uid: string;
  transfer_syntax_uid: string;
  size: number;
  sha256: string;
  blob_key: string;
  pixel_data: string | null;
  bulk_data: string;
  series_instance_uid: string;
  study_instance_uid: string;
}

/** Reads the location columns (the pk columns are not needed). */
export function toLocation(r: Omit<LocationRow, "pk" | "series_pk" | "study_pk">): InstanceLocation {
  return {
    studyInstanceUID: r.study_instance_uid,
    seriesInstanceUID: r.series_instance_uid,
    sopInstanceUID: r.sop_instance_uid,
    sopClassUID: r.sop_class_uid,
    transferSyntaxUID: r.transfer_syntax_uid,
    size: r.size,
    sha256: r.sha256,
    blobKey: r.blob_key,
    pixelData: r.pixel_data === null ? null : JSON.parse(r.pixel_data),
    bulkData: JSON.parse(r.bulk_data),
  };
}

/** The columns of an InstanceBlob (aliases i, st), and the row they give. */
export const BLOB_COLUMNS = "i.sop_instance_uid, i.transfer_syntax_uid, i.size, i.blob_key, st.study_instance_uid";
export type BlobRow = Pick<LocationRow, "sop_instance_uid" | "transfer_syntax_uid" | "size" | "blob_key" | "study_instance_uid">;

export function toBlob(r: BlobRow): InstanceBlob {
  return { studyInstanceUID: r.study_instance_uid, sopInstanceUID: r.sop_instance_uid, transferSyntaxUID: r.transfer_syntax_uid, size: r.size, blobKey: r.blob_key };
}

export function hasValue(a: DicomJsonAttribute | undefined): boolean {
  if (!a) return false;
  if (a.InlineBinary !== undefined || a.BulkDataURI !== undefined) return true;
  return Array.isArray(a.Value) && a.Value.length > 0 && a.Value.some((v) => v !== null && v !== "");
}

/**
 * The stored attributes of one entity level, taken from an instance's data set. An attribute present with an
 * empty value is kept as {vr} (no Value), so QIDO-RS returns the key as PS3.18 F.2.5 says and clients written
 * against Orthanc expect (issue 16); an absent one stays absent.
 */
export function pick(ds: DicomJsonDataset, level: EntityLevel): DicomJsonDataset {
  const out: DicomJsonDataset = {};
  for (const tag of storedTagsOf(level)) {
    const a = ds[tag];
    if (hasValue(a)) out[tag] = a!;
    else if (a) out[tag] = { vr: a.vr };
  }
  return out;
}

/** First instance wins; attributes it left empty (or without) are taken from a later one. Null when nothing changed. */
export function fillBlanks(stored: DicomJsonDataset, ds: DicomJsonDataset, level: EntityLevel): DicomJsonDataset | null {
  let changed = false;
  for (const tag of storedTagsOf(level)) {
    const a = ds[tag];
    if (!hasValue(stored[tag]) && hasValue(a)) {
      stored[tag] = a!;
      changed = true;
    } else if (!stored[tag] && a) {
      stored[tag] = { vr: a.vr };
      changed = true;
    }
  }
  return changed ? stored : null;
}

/**
 * The patient attributes a study shows, from its own instances in the order they were indexed (first wins,
 * blanks filled): never from another study, even one of the same patient (issue 16).
 */
export function studyPatientAttrs(instances: Iterable<DicomJsonDataset>): DicomJsonDataset {
  let out: DicomJsonDataset | null = null;
  for (const ds of instances) {
    if (!out) out = pick(ds, "patient");
    else out = fillBlanks(out, ds, "patient") ?? out;
  }
  return out ?? {};
}

export function stringValue(ds: DicomJsonDataset, tag: string): string {
  const v = ds[tag]?.Value?.[0];
  return typeof v === "string" ? v.trim() : "";
}

/** Identity of a patient: ID, issuer and name as written (two people sharing an ID stay apart). */
export function patientKey(ds: DicomJsonDataset) {
  return {
    patient_key_id: stringValue(ds, TAG.PatientID),
    patient_key_issuer: stringValue(ds, "00100021"),
    patient_key_name: nameKey(personNameGroups(ds[TAG.PatientName]?.Value?.[0])),
  };
}

export const PATIENT_COLUMNS = matchColumnNames("patient");
export const STUDY_COLUMNS = matchColumnNames("study");
export const SERIES_COLUMNS = matchColumnNames("series");
export const INSTANCE_COLUMNS = matchColumnNames("instance");

export interface StudyRow {
  pk: number;
  study_instance_uid: string;
  attrs: string;
  /** the study's own patient attributes (studies.patient_attrs) */
  patient_attrs: string;
  visible_count: number;
}

/**
 * Study-level QIDO values from the study rows and their per-(study, modality) series counts.
 * Modalities in code-point order, so both databases answer alike.
 */
export function studyValues(rows: StudyRow[], perSeries: { study_pk: number; modality: string | null; n: number }[]): Map<number, QidoStudyValues> {
  const out = new Map<number, QidoStudyValues>();
  for (const r of rows) {
    out.set(r.pk, {
      studyInstanceUID: r.study_instance_uid,
      attrs: { ...JSON.parse(r.patient_attrs), ...JSON.parse(r.attrs) },
      numberOfSeries: 0,
      numberOfInstances: r.visible_count,
      modalities: [],
    });
  }
  for (const s of perSeries) {
    const st = out.get(s.study_pk);
    if (!st) continue;
    st.numberOfSeries += Number(s.n);
    if (s.modality) st.modalities.push(s.modality);
  }
  for (const st of out.values()) st.modalities.sort();
  return out;
}
