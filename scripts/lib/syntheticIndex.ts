/**
 * A generated catalogue of any size for index tests and benchmarks: patients, studies over several
 * years, series and instances as InstanceRecords, written through the real Index insert path
 * (insertInstance), so the rows are exactly what the relay writes.
 *
 * The shape per `patients` P: 2P studies, 4P series, 20P instances (P = 1,000 -> 20,000 instances,
 * P = 5,000 -> 100,000; exact when P is a multiple of 20), with realistic variation that still sums exactly: patients have 1-3 studies,
 * studies 1-3 series, series 1-10 instances. Half of the patients have Chinese names with an
 * Ideographic group (SpecificCharacterSet GB18030 or ISO_IR 192), drawn from common surnames and given
 * names, so names repeat as they do in a real catalogue. Everything is deterministic (no randomness),
 * so tests can compute what a query must find from the same functions (`syntheticStudies`).
 *
 * Metadata: each instance's DICOM JSON starts from a template made by the real Part-10 reader from a
 * synthetic file (scripts/lib/synthetic.ts) with a realistic header (scanner, acquisition and request
 * attributes, sequences, a private block; ~5 KB as JSON), with the identifying attributes replaced.
 */
import crypto from "node:crypto";
import type { Index, InstanceRecord } from "../../src/catalog/index.ts";
import type { DicomJsonAttribute, DicomJsonDataset, PixelDataLocation, BulkDataLocation } from "../../src/dicom/types.ts";
import { BULK_ROOT_PLACEHOLDER } from "../../src/dicom/types.ts";
import { bufferSource, readPart10 } from "../../src/dicom/part10.ts";
import { instanceBlobKey } from "../../src/storage/blobStore.ts";
import { SOPClass, TransferSyntaxUID } from "../../src/dicom/uids.ts";
import { makeInstance } from "./synthetic.ts";

export const UID_ROOT = "1.2.826.0.1.3680043.10.1.";

export interface SyntheticIndexOptions {
  /** number of patients P: about 2P studies, 4P series, 20P instances (exactly when P is a multiple of 20) */
  patients: number;
  /** first year of study dates (default 2020); dates spread evenly over `years` (default 5) */
  firstYear?: number;
  years?: number;
  /** instances of every n-th series belong to the unfinished transfer "tr-open" (default: none) */
  pendingEverySeries?: number;
}

export interface SyntheticPatient {
  /** 1-based */
  index: number;
  patientID: string;
  alphabetic: string;
  /** "" for patients without a Chinese name */
  ideographic: string;
  charset: string;
  birthDate: string;
  sex: "F" | "M";
}

export interface SyntheticSeries {
  seriesInstanceUID: string;
  seriesNumber: number;
  modality: string;
  description: string;
  bodyPart: string;
  instances: number;
  /** transfer id when the series' instances are pending, else null */
  pendingTransferId: string | null;
}

export interface SyntheticStudy {
  /** 1-based */
  index: number;
  studyInstanceUID: string;
  patient: SyntheticPatient;
  studyDate: string;
  studyTime: string;
  accessionNumber: string;
  description: string;
  referringPhysician: { Alphabetic: string; Ideographic?: string };
  series: SyntheticSeries[];
}

// common surnames and given names (pinyin, characters): names repeat as in a real catalogue
const CN_SURNAMES: [string, string][] = [
  ["Wang", "王"], ["Li", "李"], ["Zhang", "张"], ["Liu", "刘"], ["Chen", "陈"], ["Yang", "杨"], ["Huang", "黄"], ["Zhao", "赵"],
  ["Wu", "吴"], ["Zhou", "周"], ["Xu", "徐"], ["Sun", "孙"], ["Ma", "马"], ["Zhu", "朱"], ["Hu", "胡"], ["Guo", "郭"],
  ["He", "何"], ["Gao", "高"], ["Lin", "林"], ["Luo", "罗"],
];
const CN_GIVEN: [string, string][] = [
  ["XiaoDong", "小东"], ["Wei", "伟"], ["Fang", "芳"], ["Na", "娜"], ["Min", "敏"], ["Jing", "静"], ["Li", "丽"], ["Qiang", "强"],
  ["Lei", "磊"], ["Jun", "军"], ["Yang", "洋"], ["Yong", "勇"], ["Yan", "艳"], ["Jie", "杰"], ["Juan", "娟"], ["Tao", "涛"],
  ["Ming", "明"], ["Chao", "超"], ["XiuYing", "秀英"], ["Hua", "华"], ["XiaoMing", "小明"], ["Hui", "慧"], ["Ping", "平"],
];
const WESTERN_SURNAMES = ["Smith", "Müller", "Dupont", "Garcia", "Rossi", "Jones", "Schmidt", "Martin", "Lopez", "Brown", "Novak",
  "Kowalski", "Silva", "Bernard", "Fischer", "Moreau", "Taylor", "Weber", "Romano", "Petit"];
const WESTERN_GIVEN = ["John", "Anna", "Jürgen", "Amélie", "Lucia", "Marco", "Sophie", "Peter", "Maria", "Luca", "Elena", "Thomas",
  "Laura", "Pierre", "Julia", "Carlos", "Eva", "Hans", "Clara", "Paul", "Ines"];

const STUDY_KINDS = [
  { modality: "CT", series: ["CT", "CT", "SR"], description: "胸部CT平扫 CT CHEST W/O CONTRAST", bodyPart: "CHEST" },
  { modality: "MR", series: ["MR", "MR", "MR"], description: "头颅磁共振 MR BRAIN", bodyPart: "HEAD" },
  { modality: "CR", series: ["CR", "CR", "SR"], description: "胸部正位片 CHEST PA", bodyPart: "CHEST" },
  { modality: "US", series: ["US", "US", "SR"], description: "腹部超声 US ABDOMEN", bodyPart: "ABDOMEN" },
  { modality: "PT", series: ["PT", "CT", "SR"], description: "全身PET/CT PET/CT WHOLE BODY", bodyPart: "WHOLEBODY" },
] as const;

/** studies per patient, series per study, instances per series: cycles with exact means 2, 2, 5 */
const STUDIES_PER_PATIENT = [1, 2, 2, 3];
const SERIES_PER_STUDY = [1, 2, 2, 3];
const INSTANCES_PER_SERIES = [1, 3, 5, 6, 10];

const pad = (n: number, w: number) => String(n).padStart(w, "0");

function dateString(d: Date): string {
  return `${d.getUTCFullYear()}${pad(d.getUTCMonth() + 1, 2)}${pad(d.getUTCDate(), 2)}`;
}

export function syntheticPatient(g: number): SyntheticPatient {
  const chinese = g % 2 === 1;
  const birth = new Date(Date.UTC(1935, 0, 1) + ((g * 7919) % (70 * 365)) * 86_400_000);
  const base = {
    index: g,
    patientID: `GEN-${g}`,
    birthDate: dateString(birth),
    sex: (g % 4 < 2 ? "F" : "M") as "F" | "M",
  };
  // h runs over 0, 1, 2, ... within each half, so every name of the lists is used
  const h = Math.floor(g / 2);
  if (chinese) {
    const [sa, si] = CN_SURNAMES[(h * 7) % CN_SURNAMES.length]!;
    const [ga, gi] = CN_GIVEN[(h * 13) % CN_GIVEN.length]!;
    return { ...base, alphabetic: `${sa}^${ga}`, ideographic: `${si}^${gi}`, charset: g % 4 === 1 ? "GB18030" : "ISO_IR 192" };
  }
  const s = WESTERN_SURNAMES[(h * 7) % WESTERN_SURNAMES.length]!;
  const n = WESTERN_GIVEN[(h * 11) % WESTERN_GIVEN.length]!;
  return { ...base, alphabetic: `${s}^${n}`, ideographic: "", charset: "ISO_IR 100" };
}

/** How many patients, studies, series and instances (pending ones included) the options generate. */
export function shapeOf(opts: SyntheticIndexOptions) {
  const out = { patients: opts.patients, studies: 0, series: 0, instances: 0 };
  for (const s of syntheticStudies(opts)) {
    out.studies++;
    out.series += s.series.length;
    for (const se of s.series) out.instances += se.instances;
  }
  return out;
}

/** The catalogue as studies (no metadata built): cheap enough for tests to compute expectations. */
export function* syntheticStudies(opts: SyntheticIndexOptions): Generator<SyntheticStudy> {
  const firstYear = opts.firstYear ?? 2020;
  const days = Math.round((opts.years ?? 5) * 365.25);
  const start = Date.UTC(firstYear, 0, 1);
  let studyIndex = 0;
  let seriesIndex = 0;
  for (let g = 1; g <= opts.patients; g++) {
    const patient = syntheticPatient(g);
    const studies = STUDIES_PER_PATIENT[(g - 1) % STUDIES_PER_PATIENT.length]!;
    for (let k = 0; k < studies; k++) {
      const s = ++studyIndex;
      const kind = STUDY_KINDS[s % STUDY_KINDS.length]!;
      const studyInstanceUID = `${UID_ROOT}${s}`;
      const nSeries = SERIES_PER_STUDY[(s - 1) % SERIES_PER_STUDY.length]!;
      const series: SyntheticSeries[] = [];
      for (let n = 1; n <= nSeries; n++) {
        const e = ++seriesIndex;
        series.push({
          seriesInstanceUID: `${studyInstanceUID}.${n}`,
          seriesNumber: n,
          modality: kind.series[n - 1]!,
          description: `${kind.series[n - 1]} series ${n}`,
          bodyPart: kind.bodyPart,
          instances: INSTANCES_PER_SERIES[(e - 1) % INSTANCES_PER_SERIES.length]!,
          pendingTransferId: opts.pendingEverySeries && e % opts.pendingEverySeries === 0 ? "tr-open" : null,
        });
      }
      const chineseReferrer = patient.ideographic !== "";
      yield {
        index: s,
        studyInstanceUID,
        patient,
        studyDate: dateString(new Date(start + ((s * 7919) % days) * 86_400_000)),
        studyTime: `${pad(7 + ((s * 31) % 12), 2)}${pad((s * 17) % 60, 2)}${pad((s * 7) % 60, 2)}`,
        accessionNumber: `ACC${s}`,
        description: chineseReferrer ? kind.description : kind.description.replace(/^\S+ /, ""),
        referringPhysician: chineseReferrer ? { Alphabetic: "Li^Wei", Ideographic: "李^伟" } : { Alphabetic: "Jones^Alice" },
        series,
      };
    }
  }
}

// ---- metadata templates (the real reader's output for a realistic header) ----

/** Header attributes a modality's instance carries besides what synthetic.ts writes. */
function realisticExtra(modality: string): Record<string, unknown> {
  const common: Record<string, unknown> = {
    Manufacturer: "RELAY MEDICAL SYSTEMS",
    ManufacturerModelName: `Synthetic ${modality} 2000`,
    StationName: `${modality}STATION01`,
    InstitutionAddress: "1 Shuaifuyuan, Dongcheng District, Beijing 100730, China",
    InstitutionalDepartmentName: "Department of Radiology",
    DeviceSerialNumber: "SN-0042-7711",
    SoftwareVersions: ["VA40A", "SP2"],
    ProtocolName: `${modality} routine adult`,
    OperatorsName: "Zhou^Min",
    PerformingPhysicianName: "Zhao^Lei",
    PatientAge: "054Y",
    PatientSize: 1.72,
    PatientWeight: 68,
    AcquisitionNumber: 1,
    PatientPosition: "HFS",
    PositionReferenceIndicator: "SN",
    LossyImageCompression: "00",
    BurnedInAnnotation: "NO",
    ImageComments: "Generated for the index benchmark; values are realistic in size, not in meaning.",
    RequestAttributesSequence: [{
      RequestedProcedureID: "RP-7710042",
      ScheduledProcedureStepID: "SPS-7710042-1",
      RequestedProcedureDescription: `${modality} examination as requested`,
      ReasonForTheRequestedProcedure: "follow-up after treatment abroad",
    }],
    ReferencedStudySequence: [{ ReferencedSOPClassUID: "1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID: "1.2.826.0.1.3680043.10.543.1.20231105.77" }],
    PerformedProtocolCodeSequence: [{ CodeValue: "RPID16", CodingSchemeDesignator: "RADLEX", CodeMeaning: "routine protocol" }],
    AnatomicRegionSequence: [{ CodeValue: "T-D3000", CodingSchemeDesignator: "SRT", CodeMeaning: "Chest" }],
    // a private block as scanners write them (short values stay inline)
    "00290010": { vr: "LO", Value: ["RELAY CSA HEADER"] },
    "00291008": { vr: "CS", Value: ["IMAGE NUM 4"] },
    "00291009": { vr: "LO", Value: ["20231105"] },
    "00291018": { vr: "CS", Value: ["CT"] },
    "00291019": { vr: "LO", Value: ["relay synthetic reconstruction parameters set 7"] },
  };
  if (modality === "CT" || modality === "PT") {
    Object.assign(common, {
      KVP: 120, DataCollectionDiameter: 500, ReconstructionDiameter: 360, DistanceSourceToDetector: 1085.6, DistanceSourceToPatient: 595,
      GantryDetectorTilt: 0, TableHeight: 145, RotationDirection: "CW", ExposureTime: 500, XRayTubeCurrent: 210, Exposure: 105,
      FilterType: "FLAT", GeneratorPower: 25, FocalSpots: 1.2, ConvolutionKernel: "B30f", SpiralPitchFactor: 0.8,
      CTDIvol: 7.4, SpacingBetweenSlices: 1.25, ReconstructionAlgorithm: "ITERATIVE",
    });
  }
  if (modality === "MR") {
    Object.assign(common, {
      ScanningSequence: "SE", SequenceVariant: "SK", ScanOptions: "PFP", MRAcquisitionType: "2D", EchoTrainLength: 1,
      ImagingFrequency: 63.6, ImagedNucleus: "1H", NumberOfAverages: 2, PercentSampling: 100, PercentPhaseFieldOfView: 75,
      PixelBandwidth: 130, ReceiveCoilName: "Head_32", TransmitCoilName: "Body", FlipAngle: 90, SAR: 1.2,
    });
  }
  return common;
}

interface Template {
  dataset: DicomJsonDataset;
  pixelData: PixelDataLocation | null;
  bulkData: BulkDataLocation[];
  sopClassUID: string;
  size: number;
}

const SOP_CLASS: Record<string, string> = {
  CT: SOPClass.CTImageStorage, MR: SOPClass.MRImageStorage, PT: SOPClass.PETImageStorage, CR: SOPClass.ComputedRadiographyImageStorage,
  US: SOPClass.UltrasoundImageStorage, SR: "1.2.840.10008.5.1.4.1.1.88.22",
};
/** bytes of a typical stored instance of the modality (for the size column) */
const TYPICAL_SIZE: Record<string, number> = { CT: 526_000, MR: 133_000, PT: 66_000, CR: 7_100_000, US: 930_000, SR: 12_000 };

async function makeTemplates(): Promise<Map<string, Template>> {
  const out = new Map<string, Template>();
  for (const modality of ["CT", "MR", "PT", "CR", "US", "SR"]) {
    // small pixel data: only the header and the pixel data location are kept
    const bytes = makeInstance({
      modality, charset: "ISO_IR 192", patientName: "Wang^XiaoDong=王^小东", rows: 32, columns: 32, seed: 7,
      sopClassUID: SOP_CLASS[modality], noPixelData: modality === "SR", extra: realisticExtra(modality),
    });
    const parsed = await readPart10(bufferSource(bytes), { maxHeaderBytes: 1 << 20, bulkDataThreshold: 1024 });
    out.set(modality, { dataset: parsed.dataset, pixelData: parsed.pixelData, bulkData: parsed.bulkData, sopClassUID: parsed.sopClassUID, size: TYPICAL_SIZE[modality]! });
  }
  return out;
}

const v = (vr: string, ...values: unknown[]): DicomJsonAttribute => ({ vr, Value: values });

/**
 * Every instance of the catalogue as an InstanceRecord, in storage order (study by study), built
 * lazily: 100,000 records never sit in memory together.
 */
export async function* syntheticRecords(opts: SyntheticIndexOptions): AsyncGenerator<InstanceRecord> {
  const templates = await makeTemplates();
  for (const study of syntheticStudies(opts)) {
    const p = study.patient;
    const name = p.ideographic ? { Alphabetic: p.alphabetic, Ideographic: p.ideographic } : { Alphabetic: p.alphabetic };
    // study and patient level attributes, shared by the study's instances (never mutated)
    const studyAttrs: DicomJsonDataset = {
      "00080005": v("CS", p.charset),
      "00080020": v("DA", study.studyDate),
      "00080030": v("TM", study.studyTime),
      "00080050": v("SH", study.accessionNumber),
      "00080090": v("PN", study.referringPhysician),
      "00081030": v("LO", study.description),
      "00100010": v("PN", name),
      "00100020": v("LO", p.patientID),
      "00100030": v("DA", p.birthDate),
      "00100040": v("CS", p.sex),
      "0020000D": v("UI", study.studyInstanceUID),
      "00200010": v("SH", String(study.index % 100_000)),
    };
    for (const se of study.series) {
      const t = templates.get(se.modality) ?? templates.get("CT")!;
      const seriesAttrs: DicomJsonDataset = {
        "00080021": v("DA", study.studyDate),
        "00080060": v("CS", se.modality),
        "0008103E": v("LO", se.description),
        "00180015": v("CS", se.bodyPart),
        "0020000E": v("UI", se.seriesInstanceUID),
        "00200011": v("IS", se.seriesNumber),
        "00200052": v("UI", `${se.seriesInstanceUID}.0`),
      };
      for (let n = 1; n <= se.instances; n++) {
        const sop = `${se.seriesInstanceUID}.${n}`;
        const ds: DicomJsonDataset = {
          ...t.dataset,
          ...studyAttrs,
          ...seriesAttrs,
          "00080012": v("DA", study.studyDate),
          "00080016": v("UI", t.sopClassUID),
          "00080018": v("UI", sop),
          "00080023": v("DA", study.studyDate),
          "00200013": v("IS", n),
        };
        if (t.dataset["00200032"]) ds["00200032"] = v("DS", -180, -180, -1.25 * n);
        if (t.dataset["00201041"]) ds["00201041"] = v("DS", -1.25 * n);
        if (t.dataset["7FE00010"]) {
          ds["7FE00010"] = { vr: t.dataset["7FE00010"].vr, BulkDataURI: `${BULK_ROOT_PLACEHOLDER}/studies/${study.studyInstanceUID}/series/${se.seriesInstanceUID}/instances/${sop}/bulkdata/7FE00010` };
        }
        const sha256 = crypto.createHash("sha256").update(sop).digest("hex");
        yield {
          studyInstanceUID: study.studyInstanceUID,
          seriesInstanceUID: se.seriesInstanceUID,
          sopInstanceUID: sop,
          sopClassUID: t.sopClassUID,
          transferSyntaxUID: TransferSyntaxUID.ExplicitVRLittleEndian,
          size: t.size + n,
          sha256,
          blobKey: instanceBlobKey(sha256),
          metadata: ds,
          pixelData: t.pixelData,
          bulkData: t.bulkData,
          pendingTransferId: se.pendingTransferId,
        };
      }
    }
  }
}

export interface LoadResult {
  instances: number;
  seconds: number;
  instancesPerSecond: number;
  /** average size of the stored metadata JSON (UTF-8 bytes, sampled every 97th instance) */
  metadataBytesAvg: number;
}

/**
 * Writes the catalogue through `index` as the ingest pipeline does for each instance (a de-duplication
 * read, then insertInstance), `concurrency` instances at a time (several STOW-RS requests / uploads
 * in parallel). Every outcome must be "inserted".
 */
export async function loadSyntheticIndex(
  index: Index,
  opts: SyntheticIndexOptions & { concurrency?: number; onProgress?: (n: number) => void; /** Date.now() past which loading stops with an error */ deadline?: number },
): Promise<LoadResult> {
  const concurrency = Math.max(1, opts.concurrency ?? 8);
  const started = performance.now();
  let done = 0;
  let metaBytes = 0;
  let sampled = 0;
  const inflight = new Set<Promise<void>>();
  let failure: unknown = null;
  for await (const record of syntheticRecords(opts)) {
    if (failure) break;
    if (opts.deadline !== undefined && Date.now() > opts.deadline) {
      failure = new Error(`loading the synthetic catalogue did not finish in time (${done} instances written)`);
      break;
    }
    if (done % 97 === 0) {
      metaBytes += Buffer.byteLength(JSON.stringify(record.metadata));
      sampled++;
    }
    const p = (async () => {
      await index.getInstance(record.sopInstanceUID, { includePending: true });
      const outcome = await index.insertInstance(record);
      if (outcome.outcome !== "inserted") throw new Error(`${record.sopInstanceUID}: ${outcome.outcome}, expected inserted`);
    })()
      .catch((err) => {
        failure ??= err;
      })
      .finally(() => inflight.delete(p));
    inflight.add(p);
    done++;
    if (done % 10_000 === 0) opts.onProgress?.(done);
    if (inflight.size >= concurrency) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  if (failure) throw failure;
  const seconds = (performance.now() - started) / 1000;
  return { instances: done, seconds, instancesPerSecond: done / seconds, metadataBytesAvg: Math.round(metaBytes / Math.max(1, sampled)) };
}
