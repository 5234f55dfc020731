/**
 * The DICOM Basic Application Level Confidentiality Profile (PS3.15 Annex E, Table E.1-1) applied to one data set
 * in dcmjs' dictionary form ({"00100010": {vr, Value}}), with the options a second-opinion radiologist needs:
 *   - Retain Longitudinal Temporal Information with Modified Dates (113107): dates shifted by a fixed number of days
 *     (the same for the whole study, so intervals between series stay true), times kept;
 *   - Retain Patient Characteristics (113108): sex, age, size, weight, ... kept;
 *   - Clean Descriptors (113105): study/series/protocol descriptions kept with every trace of the patient's name, ID
 *     and birth date removed from the text.
 * Every UID that is not a DICOM-defined one (1.2.840.10008.*) is replaced by a new one from one map for the whole
 * study, so a series stays a series and references (Referenced SOP Instance UID, Frame of Reference ...) follow.
 * Private attributes are removed unless on the keep list. Pure: no I/O; unit-tested.
 */
import crypto from "node:crypto";
import { createRequire } from "node:module";

/** X remove, Z empty (Type 2 kept present), D replace with a dummy, K keep, C clean/modify (by option). */
type Action = "X" | "Z" | "D" | "K" | "C";
type OptionName = "retainPatientCharacteristics" | "retainModifiedDates" | "cleanDescriptors";

interface Rule {
  action: Action;
  /** the action when the option is chosen */
  option?: [OptionName, Action];
}

// Table E.1-1 by keyword (the rows that can carry identity; rows whose basic action is U are covered by the UID
// rule; the rows below are the identifying attributes a relay meets in CT/MR/PET/US/CR/DX/SR/RT data).
const R = (action: Action, option?: [OptionName, Action]): Rule => ({ action, option });
const PAT: [OptionName, Action] = ["retainPatientCharacteristics", "K"];
const DATE: [OptionName, Action] = ["retainModifiedDates", "C"];
const DESC: [OptionName, Action] = ["cleanDescriptors", "C"];

const TABLE: Record<string, Rule> = {
  // patient
  PatientName: R("D"),
  PatientID: R("D"),
  IssuerOfPatientID: R("X"),
  IssuerOfPatientIDQualifiersSequence: R("X"),
  PatientBirthDate: R("Z"),
  PatientBirthTime: R("X"),
  PatientBirthDateInAlternativeCalendar: R("X"),
  PatientDeathDateInAlternativeCalendar: R("X"),
  PatientAlternativeCalendar: R("X"),
  PatientSex: R("Z", PAT),
  PatientAge: R("X", PAT),
  PatientSize: R("X", PAT),
  PatientWeight: R("X", PAT),
  PatientSexNeutered: R("X", PAT),
  EthnicGroup: R("X", PAT),
  SmokingStatus: R("X", PAT),
  PregnancyStatus: R("X", PAT),
  OtherPatientIDs: R("X"),
  OtherPatientNames: R("X"),
  OtherPatientIDsSequence: R("X"),
  PatientBirthName: R("X"),
  PatientAddress: R("X"),
  PatientMotherBirthName: R("X"),
  PatientTelephoneNumbers: R("X"),
  PatientTelecomInformation: R("X"),
  PatientInsurancePlanCodeSequence: R("X"),
  PatientPrimaryLanguageCodeSequence: R("X"),
  InsurancePlanIdentification: R("X"),
  MilitaryRank: R("X"),
  BranchOfService: R("X"),
  MedicalRecordLocator: R("X"),
  MedicalAlerts: R("X"),
  Allergies: R("X"),
  CountryOfResidence: R("X"),
  RegionOfResidence: R("X"),
  Occupation: R("X"),
  AdditionalPatientHistory: R("X", DESC),
  LastMenstrualDate: R("X"),
  PatientReligiousPreference: R("X"),
  PatientComments: R("X", DESC),
  ResponsiblePerson: R("X"),
  ResponsibleOrganization: R("X"),
  PatientState: R("X"),
  ReferencedPatientSequence: R("X"),
  ReferencedPatientAliasSequence: R("X"),
  AdmissionID: R("X"),
  IssuerOfAdmissionIDSequence: R("X"),
  AdmittingDiagnosesDescription: R("X", DESC),
  AdmittingDiagnosesCodeSequence: R("X"),
  ServiceEpisodeID: R("X"),
  ServiceEpisodeDescription: R("X"),
  CurrentPatientLocation: R("X"),
  PatientInstitutionResidence: R("X"),
  VisitComments: R("X"),
  SpecialNeeds: R("X"),
  // study
  StudyDate: R("Z", DATE),
  StudyTime: R("Z", DATE),
  AccessionNumber: R("Z"),
  IssuerOfAccessionNumberSequence: R("X"),
  StudyID: R("Z"),
  StudyDescription: R("X", DESC),
  ReferringPhysicianName: R("Z"),
  ReferringPhysicianAddress: R("X"),
  ReferringPhysicianTelephoneNumbers: R("X"),
  ReferringPhysicianIdentificationSequence: R("X"),
  ConsultingPhysicianName: R("X"),
  ConsultingPhysicianIdentificationSequence: R("X"),
  PhysiciansOfRecord: R("X"),
  PhysiciansOfRecordIdentificationSequence: R("X"),
  NameOfPhysiciansReadingStudy: R("X"),
  PhysiciansReadingStudyIdentificationSequence: R("X"),
  RequestingPhysician: R("X"),
  RequestingService: R("X"),
  RequestedProcedureDescription: R("X", DESC),
  RequestedContrastAgent: R("X"),
  StudyComments: R("X"),
  ReferencedStudySequence: R("X"),
  ProcedureCodeSequence: R("X", ["cleanDescriptors", "K"]),
  ReasonForStudy: R("X"),
  RequestedProcedureComments: R("X"),
  ReasonForTheRequestedProcedure: R("X"),
  ReasonForTheImagingServiceRequest: R("X"),
  ImagingServiceRequestComments: R("X"),
  PlacerOrderNumberImagingServiceRequest: R("Z"),
  FillerOrderNumberImagingServiceRequest: R("Z"),
  OrderEnteredBy: R("X"),
  OrderEntererLocation: R("X"),
  OrderCallbackPhoneNumber: R("X"),
  OrderCallbackTelecomInformation: R("X"),
  RequestAttributesSequence: R("X"),
  RequestedProcedureID: R("X"),
  RequestedProcedureLocation: R("X"),
  NamesOfIntendedRecipientsOfResults: R("X"),
  PersonAddress: R("X"),
  PersonTelephoneNumbers: R("X"),
  PersonTelecomInformation: R("X"),
  PatientTransportArrangements: R("X"),
  ConfidentialityConstraintOnPatientDataDescription: R("X"),
  ScheduledStudyLocation: R("X"),
  ScheduledStudyLocationAETitle: R("X"),
  ScheduledStationAETitle: R("X"),
  ScheduledStationName: R("X"),
  ScheduledProcedureStepLocation: R("X"),
  ScheduledPerformingPhysicianName: R("X"),
  ScheduledProcedureStepDescription: R("X"),
  ScheduledProcedureStepID: R("X"),
  ScheduledProcedureStepStartDate: R("X"),
  ScheduledProcedureStepStartTime: R("X"),
  ScheduledProcedureStepEndDate: R("X"),
  ScheduledProcedureStepEndTime: R("X"),
  // institution and equipment
  InstitutionName: R("X"),
  InstitutionAddress: R("X"),
  InstitutionCodeSequence: R("X"),
  InstitutionalDepartmentName: R("X"),
  InstitutionalDepartmentTypeCodeSequence: R("X"),
  StationName: R("X"),
  DeviceSerialNumber: R("X"),
  PlateID: R("X"),
  GantryID: R("X"),
  CassetteID: R("X"),
  GeneratorID: R("X"),
  DetectorID: R("X"),
  UniqueDeviceIdentifier: R("X"),
  DateOfLastCalibration: R("X"),
  TimeOfLastCalibration: R("X"),
  DateOfLastDetectorCalibration: R("X"),
  TimeOfLastDetectorCalibration: R("X"),
  TimezoneOffsetFromUTC: R("X"),
  // series and procedure steps
  SeriesDate: R("X", DATE),
  SeriesTime: R("X", DATE),
  SeriesDescription: R("X", DESC),
  ProtocolName: R("X", DESC),
  PerformingPhysicianName: R("X"),
  PerformingPhysicianIdentificationSequence: R("X"),
  OperatorsName: R("X"),
  OperatorIdentificationSequence: R("X"),
  PerformedProcedureStepStartDate: R("X", DATE),
  PerformedProcedureStepStartTime: R("X", DATE),
  PerformedProcedureStepEndDate: R("X", DATE),
  PerformedProcedureStepEndTime: R("X", DATE),
  PerformedProcedureStepID: R("X"),
  PerformedProcedureStepDescription: R("X", DESC),
  PerformedStationAETitle: R("X"),
  PerformedStationName: R("X"),
  PerformedLocation: R("X"),
  CommentsOnThePerformedProcedureStep: R("X"),
  ReferencedPerformedProcedureStepSequence: R("X"),
  AcquisitionDeviceProcessingDescription: R("X", DESC),
  AcquisitionProtocolDescription: R("X", DESC),
  ContrastBolusAgent: R("X", DESC),
  DerivationDescription: R("X", DESC),
  // instance
  InstanceCreationDate: R("X", DATE),
  InstanceCreationTime: R("X", DATE),
  AcquisitionDate: R("X", DATE),
  AcquisitionTime: R("X", DATE),
  AcquisitionDateTime: R("X", DATE),
  ContentDate: R("Z", DATE),
  ContentTime: R("Z", DATE),
  DateOfSecondaryCapture: R("X", DATE),
  TimeOfSecondaryCapture: R("X", DATE),
  ImageComments: R("X", DESC),
  FrameComments: R("X", DESC),
  ContentSequence: R("X"),
  ContentCreatorName: R("Z"),
  ContentCreatorIdentificationCodeSequence: R("X"),
  VerifyingObserverName: R("D"),
  VerifyingObserverSequence: R("X"),
  VerifyingObserverIdentificationCodeSequence: R("X"),
  VerifyingOrganization: R("X"),
  AuthorObserverSequence: R("X"),
  ParticipantSequence: R("X"),
  CustodialOrganizationSequence: R("X"),
  PersonName: R("D"),
  TextString: R("X"),
  TextComments: R("X"),
  IconImageSequence: R("X"),
  StorageMediaFileSetID: R("X"),
  TopicTitle: R("X"),
  TopicSubject: R("X"),
  TopicAuthor: R("X"),
  TopicKeywords: R("X"),
  DigitalSignaturesSequence: R("X"),
  OriginalAttributesSequence: R("X"),
  ModifiedAttributesSequence: R("X"),
  ContributionDescription: R("X"),
  ClinicalTrialSponsorName: R("X"),
  ClinicalTrialProtocolID: R("X"),
  ClinicalTrialProtocolName: R("X"),
  ClinicalTrialSiteID: R("X"),
  ClinicalTrialSiteName: R("X"),
  ClinicalTrialSubjectID: R("X"),
  ClinicalTrialSubjectReadingID: R("X"),
  ClinicalTrialTimePointID: R("X"),
  ClinicalTrialTimePointDescription: R("X"),
  ClinicalTrialCoordinatingCenterName: R("X"),
};

/** Overlay Data and Overlay Comments (60xx,3000), (60xx,4000), and Curve data groups (50xx): removed. */
const removedByPattern = (tag: string) => /^60[0-9A-F]{2}(3000|4000)$/.test(tag) || /^50[0-9A-F]{2}/.test(tag);

interface DcmjsDictionary {
  nameMap: Record<string, { tag: string; vr: string }>;
}
let cachedRules: Map<string, Rule & { keyword: string }> | undefined;

/** The table by tag (8 hex digits); every keyword must name a dictionary attribute (unit-tested). */
export function profileRules(): Map<string, Rule & { keyword: string }> {
  if (cachedRules) return cachedRules;
  const dict = (createRequire(import.meta.url)("dcmjs") as { data: { DicomMetaDictionary: DcmjsDictionary } }).data.DicomMetaDictionary;
  const out = new Map<string, Rule & { keyword: string }>();
  for (const [keyword, rule] of Object.entries(TABLE)) {
    // retired attributes still turn up in old files: dcmjs names them RETIRED_<keyword>
    const entry = dict.nameMap[keyword] ?? dict.nameMap[`RETIRED_${keyword}`];
    if (!entry) throw new Error(`de-identification table: ${keyword} is not in the DICOM dictionary`);
    out.set(entry.tag.replace(/[(),]/g, "").toUpperCase(), { ...rule, keyword });
  }
  return (cachedRules = out);
}

export interface DeidentifyOptions {
  retainModifiedDates: boolean;
  retainPatientCharacteristics: boolean;
  cleanDescriptors: boolean;
  /** days added to every date with retainModifiedDates (negative: earlier) */
  dateOffsetDays: number;
  /** new PatientName and PatientID */
  pseudonym: string;
  /** private attributes kept (tags as 8 hex digits, e.g. "00291010"); every other private attribute is removed */
  keepPrivateTags: readonly string[];
}

/** What is known of the original patient, to clean free text (Clean Descriptors). */
export interface PatientIdentity {
  names: string[];
  ids: string[];
  birthDates: string[];
}

type DcmjsElement = { vr: string; Value?: unknown[] };
export type DcmjsDataset = Record<string, DcmjsElement>;

/** Codes of PS3.16 CID 7050 for the De-identification Method Code Sequence. */
const METHOD_CODES = {
  basic: ["113100", "Basic Application Confidentiality Profile"],
  modifiedDates: ["113107", "Retain Longitudinal Temporal Information Modified Dates Option"],
  patientCharacteristics: ["113108", "Retain Patient Characteristics Option"],
  cleanDescriptors: ["113105", "Clean Descriptors Option"],
  safePrivate: ["113111", "Retain Safe Private Option"],
} as const;

/** A UID for a UID: one-way (keyed hash), the same original always gives the same copy within a de-identification. */
export class UidMap {
  private readonly map = new Map<string, string>();
  constructor(private readonly secret: Buffer = crypto.randomBytes(32)) {}

  /** 2.25.<128-bit decimal> (PS3.5 B.2: a UUID-derived UID needs no registered root). */
  map1(uid: string): string {
    const clean = uid.replace(/\0/g, "").trim();
    if (!clean || isStandardUid(clean)) return clean;
    let out = this.map.get(clean);
    if (!out) {
      const h = crypto.createHmac("sha256", this.secret).update(clean).digest();
      out = `2.25.${BigInt("0x" + h.subarray(0, 16).toString("hex")).toString(10)}`;
      this.map.set(clean, out);
    }
    return out;
  }

  entries(): Array<[string, string]> {
    return [...this.map.entries()];
  }
}

/** DICOM-defined UIDs (SOP classes, transfer syntaxes, coding schemes, ...) name no patient and stay. */
export const isStandardUid = (uid: string) => uid.startsWith("1.2.840.10008.");

const isPrivateTag = (tag: string) => (parseInt(tag.slice(0, 4), 16) & 1) === 1;

/** YYYYMMDD shifted by days (UTC calendar); anything unparseable is emptied rather than kept. */
export function shiftDate(da: string, days: number): string {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(da.trim());
  if (!m) return "";
  const d = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
  if (Number.isNaN(d.getTime())) return "";
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10).replace(/-/g, "");
}

function shiftValue(vr: string, v: unknown, days: number): unknown {
  if (typeof v !== "string") return v;
  if (vr === "DA") {
    // a range "A-B" keeps its shape
    return v.split("-").map((p) => (p ? shiftDate(p, days) : p)).join("-");
  }
  if (vr === "DT") {
    const date = v.slice(0, 8);
    return /^\d{8}$/.test(date) ? shiftDate(date, days) + v.slice(8) : "";
  }
  return v;
}

/** Removes every occurrence of the patient's names (each component), IDs and birth dates from a text. */
export function cleanText(text: string, who: PatientIdentity): string {
  const needles = new Set<string>();
  for (const n of who.names) {
    for (const group of n.split("=")) {
      // an ideographic name is written without separators in text: 杜^约翰 -> 杜约翰
      if (/[^\x00-\x7f]/.test(group)) needles.add(group.replace(/\^/g, ""));
      // a one-letter latin part would cut words apart; a one-character ideographic surname is a name
      for (const part of group.split(/[\^\s]+/)) if (part.trim().length >= 2 || /[^\x00-\x7f]/.test(part)) needles.add(part.trim());
    }
  }
  for (const id of who.ids) if (id.trim().length >= 2) needles.add(id.trim());
  for (const d of who.birthDates) if (/^\d{8}$/.test(d)) (needles.add(d), needles.add(`${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}`));
  let out = text;
  for (const n of [...needles].sort((a, b) => b.length - a.length)) out = out.split(n).join("");
  return out.replace(/\s{2,}/g, " ").trim();
}

/** The patient's names, IDs and birth dates as found in a data set (to clean free text everywhere in the study). */
export function identityOf(ds: DcmjsDataset): PatientIdentity {
  const strings = (tag: string) =>
    (ds[tag]?.Value ?? []).flatMap((v) => (typeof v === "string" ? [v] : v && typeof v === "object" ? Object.values(v as Record<string, string>).filter((x) => typeof x === "string") : []));
  return { names: [...strings("00100010"), ...strings("00101001")], ids: [...strings("00100020"), ...strings("00101000")], birthDates: strings("00100030") };
}

export interface ProfileResult {
  dataset: DcmjsDataset;
  /** keywords or tags removed/emptied/replaced, for the audit detail (counts only in logs) */
  changed: number;
}

/**
 * Applies the profile to a data set in place semantics (returns a new object; the input is not changed). Recurses
 * into sequences: an attribute of the table is treated the same wherever it stands.
 */
export function applyProfile(ds: DcmjsDataset, opts: DeidentifyOptions, uids: UidMap, who: PatientIdentity): ProfileResult {
  const rules = profileRules();
  const keepPrivate = new Set(opts.keepPrivateTags.map((t) => t.toUpperCase()));
  let changed = 0;

  const walk = (input: DcmjsDataset): DcmjsDataset => {
    const out: DcmjsDataset = {};
    for (const [tagRaw, el] of Object.entries(input)) {
      const tag = tagRaw.toUpperCase();
      if (tag.startsWith("0002")) continue;
      if (isPrivateTag(tag)) {
        // a private creator (gggg,00xx) stays when an element of its block (gggg,xxyy) is kept
        const creatorKept = tag.slice(4, 6) === "00" && [...keepPrivate].some((k) => k.slice(0, 4) === tag.slice(0, 4) && k.slice(4, 6) === tag.slice(6, 8));
        if (!keepPrivate.has(tag) && !creatorKept) {
          changed++;
          continue;
        }
        out[tag] = el;
        continue;
      }
      if (removedByPattern(tag)) {
        changed++;
        continue;
      }
      const rule = rules.get(tag);
      let action: Action = rule?.action ?? "K";
      if (rule?.option && opts[rule.option[0]]) action = rule.option[1];
      if (action === "X") {
        changed++;
        continue;
      }
      if (action === "Z") {
        changed++;
        out[tag] = { vr: el.vr, Value: [] };
        continue;
      }
      if (action === "D") {
        changed++;
        if (tag === "00100010") out[tag] = { vr: "PN", Value: [{ Alphabetic: opts.pseudonym }] };
        else if (tag === "00100020") out[tag] = { vr: "LO", Value: [opts.pseudonym.slice(0, 64)] };
        else if (el.vr === "PN") out[tag] = { vr: "PN", Value: [{ Alphabetic: "ANONYMOUS" }] };
        else out[tag] = { vr: el.vr, Value: [] };
        continue;
      }
      if (action === "C") {
        changed++;
        if (rule!.option![0] === "retainModifiedDates") {
          out[tag] = { vr: el.vr, Value: (el.Value ?? []).map((v) => shiftValue(el.vr, v, opts.dateOffsetDays)) };
        } else {
          // clean descriptors: free text without the patient's name, ID or birth date; coded items kept
          out[tag] = el.vr === "SQ" ? { vr: "SQ", Value: (el.Value ?? []).map((item) => walk(item as DcmjsDataset)) } : { vr: el.vr, Value: (el.Value ?? []).map((v) => (typeof v === "string" ? cleanText(v, who) : v)) };
        }
        continue;
      }
      // keep: UIDs mapped, sequences walked
      if (el.vr === "UI") {
        const values = (el.Value ?? []).map((v) => (typeof v === "string" ? uids.map1(v) : v));
        if (values.some((v, i) => v !== (el.Value ?? [])[i])) changed++;
        out[tag] = { vr: "UI", Value: values };
      } else if (el.vr === "SQ") {
        out[tag] = { vr: "SQ", Value: (el.Value ?? []).map((item) => walk(item as DcmjsDataset)) };
      } else {
        out[tag] = el;
      }
    }
    return out;
  };

  const out = walk(ds);
  // what was done, in the data set itself (PS3.15 E.1.1, PS3.3 C.7.1.1)
  const codes: Array<readonly [string, string]> = [METHOD_CODES.basic];
  if (opts.retainModifiedDates) codes.push(METHOD_CODES.modifiedDates);
  if (opts.retainPatientCharacteristics) codes.push(METHOD_CODES.patientCharacteristics);
  if (opts.cleanDescriptors) codes.push(METHOD_CODES.cleanDescriptors);
  if (keepPrivate.size) codes.push(METHOD_CODES.safePrivate);
  out["00120062"] = { vr: "CS", Value: ["YES"] };
  out["00120063"] = { vr: "LO", Value: [`dicom-relay: ${codes.map((c) => c[1].replace(/ Option$/, "")).join("; ")}`.slice(0, 64)] };
  out["00120064"] = { vr: "SQ", Value: codes.map(([code, meaning]) => ({ "00080100": { vr: "SH", Value: [code] }, "00080102": { vr: "SH", Value: ["DCM"] }, "00080104": { vr: "LO", Value: [meaning] } })) };
  out["00280303"] = { vr: "CS", Value: [opts.retainModifiedDates ? "MODIFIED" : "REMOVED"] };
  // the copy is written in UTF-8 whatever the original's character set (dcmjs decoded it)
  out["00080005"] = { vr: "CS", Value: ["ISO_IR 192"] };
  return { dataset: out, changed };
}

/**
 * Might this instance show the patient's identity in its pixels? BurnedInAnnotation YES, or, when it is absent,
 * a modality or SOP class known to carry text in the image (ultrasound, secondary capture, photos, documents).
 */
export function burnedInRisk(ds: DcmjsDataset): string | null {
  const first = (tag: string) => {
    const v = ds[tag]?.Value?.[0];
    return typeof v === "string" ? v.trim().toUpperCase() : "";
  };
  const burned = first("00280301");
  if (burned === "YES") return "BurnedInAnnotation is YES";
  if (burned === "NO") return null;
  const modality = first("00080060");
  if (["US", "SC", "OT", "XC", "ES", "GM", "DOC", "SM", "IVUS"].includes(modality)) return `modality ${modality} often carries the patient's name in the pixels and BurnedInAnnotation is absent`;
  const sopClass = first("00080016");
  if (sopClass.startsWith("1.2.840.10008.5.1.4.1.1.7") || sopClass === "1.2.840.10008.5.1.4.1.1.104.1") return "a secondary capture or encapsulated document";
  return null;
}
