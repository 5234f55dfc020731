/**
 * The Index contract: every implementation (SQLite now, PostgreSQL later) must pass it.
 * Usage: indexContract("sqlite", async () => new SqliteIndex({ path: ":memory:" }), async (index) => cleanup)
 *
 * Each test gets a fresh index from `make` (init() is called here). Records are built by hand:
 * DICOM JSON with the attributes a test needs, no real DICOM files.
 */
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import crypto from "node:crypto";
import type { Index, InstanceRecord, InstanceScope } from "../../src/catalog/index.ts";
import type { DicomJsonDataset } from "../../src/dicom/types.ts";
import { BULK_ROOT_PLACEHOLDER } from "../../src/dicom/types.ts";
import type { QidoLevel } from "../../src/dicom/qidoQuery.ts";
import { parseQidoQuery, type QidoPathUids } from "../../src/dicom/qido.ts";

/** A fresh UID (2.25 + 128 random bits), unique across runs so a shared database cannot collide. */
export function newUid(): string {
  return "2.25." + BigInt("0x" + crypto.randomBytes(16).toString("hex")).toString();
}

const sha = (s: string) => crypto.createHash("sha256").update(s).digest("hex");

export interface RecordSpec {
  study: string;
  series: string;
  sop?: string;
  patientName?: string | { Alphabetic?: string; Ideographic?: string; Phonetic?: string } | null;
  patientID?: string;
  studyDate?: string;
  studyTime?: string;
  accession?: string;
  studyDescription?: string;
  referring?: string;
  modality?: string;
  seriesNumber?: number;
  instanceNumber?: number;
  /** content marker: records with the same `bytes` have the same sha256 */
  bytes?: string;
  blobKey?: string;
  pending?: string | null;
  /** more attributes (DICOM JSON) */
  extra?: DicomJsonDataset;
}

const SOP_CLASS_CT = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_LE = "1.2.840.10008.1.2.1";

export function makeRecord(spec: RecordSpec): InstanceRecord {
  const sop = spec.sop ?? newUid();
  const ds: DicomJsonDataset = {
    "00080016": { vr: "UI", Value: [SOP_CLASS_CT] },
    "00080018": { vr: "UI", Value: [sop] },
    "0020000D": { vr: "UI", Value: [spec.study] },
    "0020000E": { vr: "UI", Value: [spec.series] },
    "00280010": { vr: "US", Value: [64] },
    "00280011": { vr: "US", Value: [64] },
    "7FE00010": { vr: "OW", BulkDataURI: `${BULK_ROOT_PLACEHOLDER}/studies/${spec.study}/series/${spec.series}/instances/${sop}/bulkdata/7FE00010` },
  };
  const str = (tag: string, vr: string, v: string | undefined) => {
    if (v !== undefined) ds[tag] = { vr, Value: [v] };
  };
  if (spec.patientName !== null) {
    const pn = spec.patientName ?? "Doe^Jane";
    ds["00100010"] = { vr: "PN", Value: [typeof pn === "string" ? { Alphabetic: pn } : pn] };
  }
  str("00100020", "LO", spec.patientID ?? "PID-1");
  str("00080020", "DA", spec.studyDate);
  str("00080030", "TM", spec.studyTime);
  str("00080050", "SH", spec.accession);
  str("00081030", "LO", spec.studyDescription);
  if (spec.referring !== undefined) ds["00080090"] = { vr: "PN", Value: [{ Alphabetic: spec.referring }] };
  str("00080060", "CS", spec.modality ?? "CT");
  if (spec.seriesNumber !== undefined) ds["00200011"] = { vr: "IS", Value: [spec.seriesNumber] };
  if (spec.instanceNumber !== undefined) ds["00200013"] = { vr: "IS", Value: [spec.instanceNumber] };
  Object.assign(ds, spec.extra ?? {});
  return {
    studyInstanceUID: spec.study,
    seriesInstanceUID: spec.series,
    sopInstanceUID: sop,
    sopClassUID: SOP_CLASS_CT,
    transferSyntaxUID: EXPLICIT_LE,
    size: 1000 + (spec.instanceNumber ?? 0),
    sha256: sha(spec.bytes ?? sop),
    blobKey: spec.blobKey ?? `instances/${sha(spec.bytes ?? sop)}`,
    metadata: ds,
    pixelData: { offset: 400, length: 8192, encapsulated: false, frames: [[{ offset: 400, length: 8192 }]] },
    bulkData: [{ tag: "00420011", vr: "OB", offset: 300, length: 10 }],
    pendingTransferId: spec.pending ?? null,
  };
}

const value = (ds: DicomJsonDataset | undefined, tag: string) => ds?.[tag]?.Value?.[0];
const LIMITS = { defaultLimit: 100, maxLimit: 1000 };

export function indexContract(name: string, make: () => Promise<Index>, cleanup?: (index: Index) => Promise<void>) {
  describe(`Index contract: ${name}`, () => {
    let index: Index;
    beforeEach(async () => {
      index = await make();
      await index.init();
    });
    afterEach(async () => {
      if (cleanup) await cleanup(index);
      else await index.close();
    });

    const insert = async (...specs: RecordSpec[]) => {
      const records = specs.map(makeRecord);
      for (const r of records) expect((await index.insertInstance(r)).outcome).toBe("inserted");
      return records;
    };
    const search = (level: QidoLevel, q: string | Record<string, string> = "", path: QidoPathUids = {}, allowedStudies?: readonly string[] | null) =>
      index.search(parseQidoQuery(level, path, new URLSearchParams(q), LIMITS), { allowedStudies }).then((r) => r.matches);
    const studyUids = async (q: string | Record<string, string>, allowed?: readonly string[] | null) =>
      (await search("study", q, {}, allowed)).map((m) => value(m, "0020000D"));
    const sorted = (xs: unknown[]) => [...xs].sort();

    describe("init, ping, close", () => {
      it("init a second time is a no-op and keeps the data", async () => {
        const [r] = await insert({ study: newUid(), series: newUid() });
        await index.init();
        expect((await index.getInstance(r!.sopInstanceUID))?.sha256).toBe(r!.sha256);
        await expect(index.ping()).resolves.toBeUndefined();
        expect(typeof index.kind).toBe("string");
      });
    });

    describe("insertInstance: de-duplication decided by SOPInstanceUID", () => {
      it("inserts, then reports identical bytes as duplicate and other bytes as conflict, writing nothing", async () => {
        const study = newUid();
        const series = newUid();
        const sop = newUid();
        const first = makeRecord({ study, series, sop, bytes: "v1", instanceNumber: 1 });
        expect(await index.insertInstance(first)).toEqual({ outcome: "inserted" });
        const dup = await index.insertInstance(makeRecord({ study, series, sop, bytes: "v1", instanceNumber: 1 }));
        expect(dup.outcome).toBe("duplicate");
        expect(dup.outcome !== "inserted" && dup.existing).toMatchObject({ sopInstanceUID: sop, sha256: first.sha256, blobKey: first.blobKey, seriesInstanceUID: series, studyInstanceUID: study });
        const conflict = await index.insertInstance(makeRecord({ study, series, sop, bytes: "v2", instanceNumber: 1, studyDescription: "other" }));
        expect(conflict.outcome).toBe("conflict");
        expect(conflict.outcome !== "inserted" && conflict.existing.sha256).toBe(first.sha256);
        expect(await index.listInstances({ studyInstanceUID: study })).toHaveLength(1);
        const [s] = await search("study", { StudyInstanceUID: study });
        expect(value(s, "00201208")).toBe(1);
        expect(s!["00081030"]).toBeUndefined();
      });

      it("the same instance inserted concurrently is inserted exactly once", async () => {
        const study = newUid();
        const series = newUid();
        const sop = newUid();
        const same = await Promise.all(Array.from({ length: 5 }, () => index.insertInstance(makeRecord({ study, series, sop, bytes: "same" }))));
        expect(same.filter((o) => o.outcome === "inserted")).toHaveLength(1);
        expect(same.filter((o) => o.outcome === "duplicate")).toHaveLength(4);
        const sop2 = newUid();
        const different = await Promise.all(["a", "b", "c"].map((b) => index.insertInstance(makeRecord({ study, series, sop: sop2, bytes: b }))));
        expect(different.filter((o) => o.outcome === "inserted")).toHaveLength(1);
        expect(different.filter((o) => o.outcome === "conflict")).toHaveLength(2);
        const [s] = await search("study", { StudyInstanceUID: study });
        expect(value(s, "00201208")).toBe(2);
      });

      it("keeps the location fields as given (pixel data frames, bulk data)", async () => {
        const [r] = await insert({ study: newUid(), series: newUid() });
        const loc = await index.getInstance(r!.sopInstanceUID);
        expect(loc).toEqual({
          studyInstanceUID: r!.studyInstanceUID, seriesInstanceUID: r!.seriesInstanceUID, sopInstanceUID: r!.sopInstanceUID,
          sopClassUID: r!.sopClassUID, transferSyntaxUID: r!.transferSyntaxUID, size: r!.size, sha256: r!.sha256, blobKey: r!.blobKey,
          pixelData: r!.pixelData, bulkData: r!.bulkData,
        });
        expect(await index.getInstance(newUid())).toBeNull();
      });
    });

    describe("listInstances / listMetadata", () => {
      it("orders by SeriesNumber then InstanceNumber, and scopes to study, series or instance", async () => {
        const study = newUid();
        const s1 = newUid();
        const s2 = newUid();
        const recs = await insert(
          { study, series: s2, seriesNumber: 2, instanceNumber: 2 },
          { study, series: s1, seriesNumber: 1, instanceNumber: 3 },
          { study, series: s2, seriesNumber: 2, instanceNumber: 1 },
          { study, series: s1, seriesNumber: 1, instanceNumber: 1 },
          { study, series: s1, seriesNumber: 1, instanceNumber: 2 },
        );
        const sopOf = (series: string, n: number) => recs.find((r) => r.seriesInstanceUID === series && value(r.metadata, "00200013") === n)!.sopInstanceUID;
        const expected = [sopOf(s1, 1), sopOf(s1, 2), sopOf(s1, 3), sopOf(s2, 1), sopOf(s2, 2)];
        expect((await index.listInstances({ studyInstanceUID: study })).map((l) => l.sopInstanceUID)).toEqual(expected);
        expect((await index.listInstances({ studyInstanceUID: study, seriesInstanceUID: s2 })).map((l) => l.sopInstanceUID)).toEqual(expected.slice(3));
        expect((await index.listInstances({ studyInstanceUID: study, seriesInstanceUID: s1, sopInstanceUID: expected[1] })).map((l) => l.sopInstanceUID)).toEqual([expected[1]]);
        // UIDs that exist but not together: nothing
        expect(await index.listInstances({ studyInstanceUID: study, seriesInstanceUID: s1, sopInstanceUID: expected[4] })).toEqual([]);
        expect(await index.listInstances({ studyInstanceUID: newUid(), seriesInstanceUID: s1 })).toEqual([]);
        const metadata = await index.listMetadata({ studyInstanceUID: study });
        expect(metadata.map((m) => value(JSON.parse(m), "00080018"))).toEqual(expected);
      });

      it("listInstanceBlobs: the instances of listInstances, same order and scope, with blob key, size and transfer syntax; never pending ones", async () => {
        const study = newUid();
        const s1 = newUid();
        const s2 = newUid();
        await insert(
          { study, series: s2, seriesNumber: 2, instanceNumber: 1 },
          { study, series: s1, seriesNumber: 1, instanceNumber: 2 },
          { study, series: s1, seriesNumber: 1, instanceNumber: 1 },
          { study, series: s1, seriesNumber: 1, instanceNumber: 3, pending: newUid() },
        );
        const full = await index.listInstances({ studyInstanceUID: study });
        const blobs = await index.listInstanceBlobs({ studyInstanceUID: study });
        expect(blobs).toHaveLength(3);
        expect(blobs).toEqual(full.map((l) => ({ studyInstanceUID: l.studyInstanceUID, sopInstanceUID: l.sopInstanceUID, transferSyntaxUID: l.transferSyntaxUID, size: l.size, blobKey: l.blobKey })));
        expect(typeof blobs[0]!.size).toBe("number");
        expect(await index.listInstanceBlobs({ studyInstanceUID: study, seriesInstanceUID: s2 })).toEqual([blobs[2]]);
        expect(await index.listInstanceBlobs({ studyInstanceUID: study, seriesInstanceUID: s1, sopInstanceUID: blobs[1]!.sopInstanceUID })).toEqual([blobs[1]]);
        expect(await index.listInstanceBlobs({ studyInstanceUID: study, allowedStudies: [newUid()] })).toEqual([]);
        expect(await index.listInstanceBlobs({ studyInstanceUID: study, allowedStudies: [study] })).toHaveLength(3);
        expect(await index.listInstanceBlobs({ studyInstanceUID: study, includePending: true })).toHaveLength(4);
      });

      it("returns the stored metadata JSON of each instance as a string", async () => {
        const [r] = await insert({ study: newUid(), series: newUid(), patientName: { Alphabetic: "Zhang^San", Ideographic: "张^三" } });
        const [text] = await index.listMetadata({ studyInstanceUID: r!.studyInstanceUID });
        expect(typeof text).toBe("string");
        expect(JSON.parse(text!)).toEqual(r!.metadata);
      });

      it("allowedStudies hides other studies", async () => {
        const [r] = await insert({ study: newUid(), series: newUid() });
        const scope: InstanceScope = { studyInstanceUID: r!.studyInstanceUID, allowedStudies: [newUid()] };
        expect(await index.listInstances(scope)).toEqual([]);
        expect(await index.listMetadata(scope)).toEqual([]);
        expect(await index.listInstances({ ...scope, allowedStudies: [] })).toEqual([]);
        expect(await index.listInstances({ ...scope, allowedStudies: [r!.studyInstanceUID] })).toHaveLength(1);
        expect(await index.listInstances({ ...scope, allowedStudies: null })).toHaveLength(1);
      });
    });

    describe("pending transfers", () => {
      it("instances of an unfinished transfer are invisible until the transfer is released", async () => {
        const study = newUid();
        const series = newUid();
        const transfer = `tr-${newUid()}`;
        const [visible] = await insert({ study, series, modality: "CT", instanceNumber: 1 });
        const [pending] = await insert(
          { study, series, modality: "CT", instanceNumber: 2, pending: transfer },
          { study, series: newUid(), modality: "MR", instanceNumber: 1, pending: transfer },
        );
        const hiddenStudy = newUid();
        await insert({ study: hiddenStudy, series: newUid(), pending: transfer });

        expect(await index.getInstance(pending!.sopInstanceUID)).toBeNull();
        expect((await index.getInstance(pending!.sopInstanceUID, { includePending: true }))?.sopInstanceUID).toBe(pending!.sopInstanceUID);
        expect((await index.listInstances({ studyInstanceUID: study })).map((l) => l.sopInstanceUID)).toEqual([visible!.sopInstanceUID]);
        expect(await index.listInstances({ studyInstanceUID: study, includePending: true })).toHaveLength(3);
        expect(await index.listMetadata({ studyInstanceUID: study })).toHaveLength(1);
        expect(await studyUids({ StudyInstanceUID: hiddenStudy })).toEqual([]);
        const [s] = await search("study", { StudyInstanceUID: study });
        expect(value(s, "00201206")).toBe(1);
        expect(value(s, "00201208")).toBe(1);
        expect(s!["00080061"]!.Value).toEqual(["CT"]);
        expect(await studyUids({ ModalitiesInStudy: "MR" })).toEqual([]);
        expect(await search("series", "", { studyInstanceUID: study })).toHaveLength(1);
        expect(await search("instance", "", { studyInstanceUID: study })).toHaveLength(1);

        expect(await index.releaseTransfer(transfer)).toBe(3);
        expect(await index.releaseTransfer(transfer)).toBe(0);
        expect(await index.releaseTransfer("no-such-transfer")).toBe(0);
        const [after] = await search("study", { StudyInstanceUID: study });
        expect(value(after, "00201206")).toBe(2);
        expect(value(after, "00201208")).toBe(3);
        expect(after!["00080061"]!.Value).toEqual(["CT", "MR"]);
        expect(await studyUids({ StudyInstanceUID: hiddenStudy })).toEqual([hiddenStudy]);
        expect(await index.getInstance(pending!.sopInstanceUID)).not.toBeNull();
      });
    });

    describe("search: study level", () => {
      it("returns the default attributes, computed counts, ModalitiesInStudy and RetrieveURL", async () => {
        const study = newUid();
        const ct = newUid();
        const mr = newUid();
        await insert(
          { study, series: ct, modality: "CT", patientName: "Smith^John", patientID: "UK-42", studyDate: "20230102", studyTime: "101500", accession: "ACC-1", studyDescription: "Chest", referring: "Who^Doctor", extra: { "00100030": { vr: "DA", Value: ["19700101"] }, "00100040": { vr: "CS", Value: ["M"] }, "00200010": { vr: "SH", Value: ["S1"] } } },
          { study, series: ct, modality: "CT" },
          { study, series: mr, modality: "MR" },
        );
        const [s, ...rest] = await search("study", { StudyInstanceUID: study });
        expect(rest).toEqual([]);
        expect(s).toEqual({
          "00080020": { vr: "DA", Value: ["20230102"] },
          "00080030": { vr: "TM", Value: ["101500"] },
          "00080050": { vr: "SH", Value: ["ACC-1"] },
          "00080056": { vr: "CS", Value: ["ONLINE"] },
          "00080061": { vr: "CS", Value: ["CT", "MR"] },
          "00080090": { vr: "PN", Value: [{ Alphabetic: "Who^Doctor" }] },
          "00081030": { vr: "LO", Value: ["Chest"] },
          "00081190": { vr: "UR", Value: [`${BULK_ROOT_PLACEHOLDER}/studies/${study}`] },
          "00100010": { vr: "PN", Value: [{ Alphabetic: "Smith^John" }] },
          "00100020": { vr: "LO", Value: ["UK-42"] },
          "00100030": { vr: "DA", Value: ["19700101"] },
          "00100040": { vr: "CS", Value: ["M"] },
          "0020000D": { vr: "UI", Value: [study] },
          "00200010": { vr: "SH", Value: ["S1"] },
          "00201206": { vr: "IS", Value: [2] },
          "00201208": { vr: "IS", Value: [3] },
        });
        expect(Object.keys(s!)).toEqual(Object.keys(s!).sort());
      });

      it("says SpecificCharacterSet ISO_IR 192 exactly when a returned value is not ASCII", async () => {
        const cn = newUid();
        const en = newUid();
        await insert({ study: cn, series: newUid(), patientName: { Alphabetic: "Zhang^San", Ideographic: "张^三" } }, { study: en, series: newUid(), patientName: "Smith^John" });
        const [c] = await search("study", { StudyInstanceUID: cn });
        expect(c!["00080005"]).toEqual({ vr: "CS", Value: ["ISO_IR 192"] });
        expect(c!["00100010"]!.Value).toEqual([{ Alphabetic: "Zhang^San", Ideographic: "张^三" }]);
        const [e] = await search("study", { StudyInstanceUID: en });
        expect(e!["00080005"]).toBeUndefined();
      });

      it("PatientName matches either the Alphabetic or the Ideographic group, case-insensitively", async () => {
        const zhang = newUid();
        const ideoOnly = newUid();
        const smith = newUid();
        await insert(
          { study: zhang, series: newUid(), patientName: { Alphabetic: "Zhang^San", Ideographic: "张^三" }, patientID: "CN-1" },
          { study: ideoOnly, series: newUid(), patientName: { Ideographic: "李^四" }, patientID: "CN-2" },
          { study: smith, series: newUid(), patientName: "Smith^John^^", patientID: "UK-1" },
        );
        const only = [zhang, ideoOnly, smith];
        const find = async (q: Record<string, string>) => sorted((await studyUids(q)).filter((u) => only.includes(u as string)));
        expect(await find({ PatientName: "张^三" })).toEqual([zhang]);
        expect(await find({ PatientName: "张*" })).toEqual([zhang]);
        expect(await find({ PatientName: "Zhang^San" })).toEqual([zhang]);
        expect(await find({ PatientName: "zhang^san" })).toEqual([zhang]);
        expect(await find({ PatientName: "ZHANG*" })).toEqual([zhang]);
        expect(await find({ PatientName: "Zhang^San=张^三" })).toEqual([zhang]);
        expect(await find({ PatientName: "=张^三" })).toEqual([zhang]);
        expect(await find({ PatientName: "Zhang^San=李^四" })).toEqual([]);
        expect(await find({ PatientName: "李^四" })).toEqual([ideoOnly]);
        expect(await find({ PatientName: "Smith^John" })).toEqual([smith]);
        expect(await find({ PatientName: "sm?th*" })).toEqual([smith]);
        expect(await find({ PatientName: "*^john" })).toEqual([smith]);
        // single value matching is exact (apart from case): a part of a name is not enough
        expect(await find({ PatientName: "Zhang" })).toEqual([]);
        expect(await find({ PatientName: "*" })).toEqual(sorted(only));
      });

      it("fuzzymatching: every query word starts some word of the name, in any order, case ignored", async () => {
        const zhang = newUid();
        const smith = newUid();
        await insert(
          { study: zhang, series: newUid(), patientName: { Alphabetic: "Zhang^San", Ideographic: "张^三" }, referring: "Wang^Wei" },
          { study: smith, series: newUid(), patientName: "Smith^John" },
        );
        const only = [zhang, smith];
        const fuzzy = async (name: string, key = "PatientName") =>
          sorted((await studyUids({ [key]: name, fuzzymatching: "true" })).filter((u) => only.includes(u as string)));
        expect(await fuzzy("zha")).toEqual([zhang]);
        expect(await fuzzy("san zhang")).toEqual([zhang]);
        expect(await fuzzy("San^Zh")).toEqual([zhang]);
        expect(await fuzzy("张")).toEqual([zhang]);
        expect(await fuzzy("三")).toEqual([zhang]);
        expect(await fuzzy("jo")).toEqual([smith]);
        expect(await fuzzy("ang")).toEqual([]);
        expect(await fuzzy("zhang smith")).toEqual([]);
        expect(await fuzzy("wei", "ReferringPhysicianName")).toEqual([zhang]);
        // without fuzzymatching the same query is a (failing) single value match
        expect((await studyUids({ PatientName: "zha" })).filter((u) => only.includes(u as string))).toEqual([]);
      });

      it("matches other text keys exactly and case-sensitively; wildcards keep % _ [ literal", async () => {
        const a = newUid();
        const b = newUid();
        const c = newUid();
        await insert(
          { study: a, series: newUid(), accession: "ACC-77", studyDescription: "CT Chest" },
          { study: b, series: newUid(), accession: "A%_1", studyDescription: "X[1]" },
          { study: c, series: newUid(), accession: "AB_1", studyDescription: "100% sure" },
        );
        const only = [a, b, c];
        const find = async (q: Record<string, string>) => sorted((await studyUids(q)).filter((u) => only.includes(u as string)));
        expect(await find({ AccessionNumber: "ACC-77" })).toEqual([a]);
        expect(await find({ AccessionNumber: "acc-77" })).toEqual([]);
        expect(await find({ AccessionNumber: "ACC*" })).toEqual([a]);
        expect(await find({ AccessionNumber: "acc*" })).toEqual([]);
        expect(await find({ AccessionNumber: "A%_1" })).toEqual([b]);
        expect(await find({ AccessionNumber: "A%*" })).toEqual([b]);
        expect(await find({ AccessionNumber: "A?_1" })).toEqual(sorted([b, c]));
        expect(await find({ AccessionNumber: "A_*" })).toEqual([]);
        expect(await find({ StudyDescription: "X[*" })).toEqual([b]);
        expect(await find({ StudyDescription: "*%*" })).toEqual([c]);
        expect(await find({ StudyDescription: "CT*" })).toEqual([a]);
        // hostile values are data, not SQL
        expect(await find({ AccessionNumber: "x' OR '1'='1" })).toEqual([]);
        expect(await find({ StudyDescription: "*'; DROP TABLE studies; --*" })).toEqual([]);
        expect(await find({ AccessionNumber: "ACC-77" })).toEqual([a]);
      });

      it("matches dates and times by value and by range; studies without a date fall outside ranges", async () => {
        const jan = newUid();
        const mar = newUid();
        const dec = newUid();
        const none = newUid();
        await insert(
          { study: jan, series: newUid(), studyDate: "20240110", studyTime: "083000" },
          { study: mar, series: newUid(), studyDate: "20240315", studyTime: "1230" },
          { study: dec, series: newUid(), studyDate: "20231231", studyTime: "235959.5" },
          { study: none, series: newUid() },
        );
        const only = [jan, mar, dec, none];
        const find = async (q: Record<string, string>) => sorted((await studyUids(q)).filter((u) => only.includes(u as string)));
        expect(await find({ StudyDate: "20240315" })).toEqual([mar]);
        expect(await find({ StudyDate: "20240101-20240131" })).toEqual([jan]);
        expect(await find({ StudyDate: "20240110-20240315" })).toEqual(sorted([jan, mar]));
        expect(await find({ StudyDate: "-20231231" })).toEqual([dec]);
        expect(await find({ StudyDate: "20240111-" })).toEqual([mar]);
        expect(await find({ StudyDate: "" })).toEqual(sorted(only));
        expect(await find({ StudyTime: "0800-0900" })).toEqual([jan]);
        expect(await find({ StudyTime: "1230" })).toEqual([mar]);
        expect(await find({ StudyTime: "-1230" })).toEqual(sorted([jan, mar]));
        expect(await find({ StudyTime: "2359-" })).toEqual([dec]);
        expect(await find({ StudyTime: "12-" })).toEqual(sorted([mar, dec]));
      });

      it("matches UID lists, ModalitiesInStudy and PatientID", async () => {
        const a = newUid();
        const b = newUid();
        const c = newUid();
        await insert(
          { study: a, series: newUid(), modality: "CT", patientID: "P-A" },
          { study: a, series: newUid(), modality: "MR", patientID: "P-A" },
          { study: b, series: newUid(), modality: "US", patientID: "P-B" },
          { study: c, series: newUid(), modality: "CT", patientID: "P-C" },
        );
        const only = [a, b, c];
        const find = async (q: Record<string, string>) => sorted((await studyUids(q)).filter((u) => only.includes(u as string)));
        expect(await find({ StudyInstanceUID: `${a},${b}` })).toEqual(sorted([a, b]));
        expect(await find({ StudyInstanceUID: `${c}\\${newUid()}` })).toEqual([c]);
        expect(await find({ ModalitiesInStudy: "MR" })).toEqual([a]);
        expect(await find({ ModalitiesInStudy: "CT" })).toEqual(sorted([a, c]));
        expect(await find({ ModalitiesInStudy: "US\\MR" })).toEqual(sorted([a, b]));
        expect(await find({ ModalitiesInStudy: "M*" })).toEqual([a]);
        expect(await find({ ModalitiesInStudy: "ct", PatientID: "P-C" })).toEqual([c]);
        expect(await find({ PatientID: "P-B" })).toEqual([b]);
        expect(await find({ PatientID: "nobody" })).toEqual([]);
      });

      it("orders newest study first (then by UID), with limit and offset", async () => {
        const uids = [newUid(), newUid(), newUid(), newUid()];
        const dates = ["20240102", "20240104", "20240101", "20240103"];
        const tag = `ORDER-${crypto.randomBytes(4).toString("hex")}`;
        for (let i = 0; i < uids.length; i++) await insert({ study: uids[i]!, series: newUid(), studyDate: dates[i], accession: tag });
        const sameDay = [newUid(), newUid()].sort();
        for (const u of sameDay) await insert({ study: u, series: newUid(), studyDate: "20240105", accession: tag });
        const undated = newUid();
        await insert({ study: undated, series: newUid(), accession: tag });
        const expected = [...sameDay, uids[1], uids[3], uids[0], uids[2], undated];
        expect(await studyUids({ AccessionNumber: tag })).toEqual(expected);
        expect(await studyUids({ AccessionNumber: tag, limit: "2" })).toEqual(expected.slice(0, 2));
        expect(await studyUids({ AccessionNumber: tag, limit: "3", offset: "2" })).toEqual(expected.slice(2, 5));
        expect(await studyUids({ AccessionNumber: tag, offset: "7" })).toEqual([]);
      });

      it("allowedStudies restricts search to those studies", async () => {
        const a = newUid();
        const b = newUid();
        const tag = `SHARE-${crypto.randomBytes(4).toString("hex")}`;
        await insert({ study: a, series: newUid(), accession: tag }, { study: b, series: newUid(), accession: tag });
        expect(sorted(await studyUids({ AccessionNumber: tag }))).toEqual(sorted([a, b]));
        expect(await studyUids({ AccessionNumber: tag }, [b])).toEqual([b]);
        expect(await studyUids({ AccessionNumber: tag }, [])).toEqual([]);
        expect(await search("series", "", { studyInstanceUID: a }, [b])).toEqual([]);
        expect(await search("instance", { AccessionNumber: tag }, {}, [a])).toHaveLength(1);
      });

      it("includefield returns attributes without a column from the study's first instance", async () => {
        const study = newUid();
        await insert({ study, series: newUid(), extra: { "00080080": { vr: "LO", Value: ["Hospital A"] } } }, { study, series: newUid(), extra: { "00080080": { vr: "LO", Value: ["Hospital B"] } } });
        const [s] = await search("study", { StudyInstanceUID: study, includefield: "InstitutionName,00101010" });
        expect(value(s, "00080080")).toBe("Hospital A");
        expect(s!["00101010"]).toBeUndefined();
        const [plain] = await search("study", { StudyInstanceUID: study });
        expect(plain!["00080080"]).toBeUndefined();
      });
    });

    describe("study and series attributes: first instance wins, blanks are filled", () => {
      it("keeps the first instance's values and takes missing ones from later instances", async () => {
        const study = newUid();
        const series = newUid();
        await insert(
          { study, series, studyDescription: "First", modality: "CT" },
          { study, series, studyDescription: "Second", accession: "LATE-1", seriesNumber: 7, extra: { "0008103E": { vr: "LO", Value: ["Axial"] } } },
        );
        const [s] = await search("study", { StudyInstanceUID: study });
        expect(value(s, "00081030")).toBe("First");
        expect(value(s, "00080050")).toBe("LATE-1");
        expect(await studyUids({ AccessionNumber: "LATE-1" })).toEqual([study]);
        const [se] = await search("series", { SeriesNumber: "7" }, { studyInstanceUID: study });
        expect(value(se, "0008103E")).toBe("Axial");
        expect(value(se, "00200011")).toBe(7);
      });

      it("a study shows the patient its own instances name, even when another study shares the PatientID", async () => {
        const a = newUid();
        const b = newUid();
        const pid = `SHARED-${crypto.randomBytes(4).toString("hex")}`;
        await insert({ study: a, series: newUid(), patientID: pid, patientName: "Li^Lei" }, { study: b, series: newUid(), patientID: pid, patientName: "Han^Meimei" });
        const byUid = new Map((await search("study", { PatientID: pid })).map((m) => [value(m, "0020000D"), m]));
        expect(byUid.size).toBe(2);
        expect(value(byUid.get(a), "00100010")).toEqual({ Alphabetic: "Li^Lei" });
        expect(value(byUid.get(b), "00100010")).toEqual({ Alphabetic: "Han^Meimei" });
        expect(await studyUids({ PatientID: pid, PatientName: "han*" })).toEqual([b]);
      });

      it("studies without a patient identity are never one patient: each shows and matches its own instances' patient attributes", async () => {
        const a = newUid();
        const b = newUid();
        const sexF = { "00100040": { vr: "CS", Value: ["F"] }, "00100030": { vr: "DA", Value: ["19700101"] } };
        // A: no ID, no name, no sex; B: empty ID, name ^^^^ (empty components), sex F; then more of A, still without sex
        await insert(
          { study: a, series: newUid(), patientID: "", patientName: null },
          { study: b, series: newUid(), patientID: "", patientName: "^^^^", extra: sexF },
          { study: a, series: newUid(), patientID: "", patientName: null, studyDescription: "A again" },
        );
        const both = `${a},${b}`;
        const byUid = new Map((await search("study", { StudyInstanceUID: both, includefield: "00100040,00100030" })).map((m) => [value(m, "0020000D"), m]));
        expect(byUid.size).toBe(2);
        expect(value(byUid.get(a), "00100040")).toBeUndefined();
        expect(value(byUid.get(a), "00100030")).toBeUndefined();
        expect(value(byUid.get(b), "00100040")).toBe("F");
        expect(value(byUid.get(b), "00100030")).toBe("19700101");
        expect(await studyUids({ StudyInstanceUID: both, PatientSex: "F" })).toEqual([b]);
        expect(await studyUids({ StudyInstanceUID: both, PatientBirthDate: "19700101" })).toEqual([b]);
        expect((await search("series", { PatientSex: "F" }, { studyInstanceUID: a }))).toEqual([]);
        // the same identity in two studies: each study still shows only what its own instances say
        const pid = `SAME-${crypto.randomBytes(4).toString("hex")}`;
        const c = newUid();
        const d = newUid();
        await insert({ study: c, series: newUid(), patientID: pid }, { study: d, series: newUid(), patientID: pid, extra: sexF });
        expect(await studyUids({ PatientID: pid, PatientSex: "F" })).toEqual([d]);
        // and a study's own later instance fills its blanks
        await insert({ study: c, series: newUid(), patientID: pid, extra: { "00100040": { vr: "CS", Value: ["F"] } } });
        expect(sorted(await studyUids({ PatientID: pid, PatientSex: "F" }))).toEqual(sorted([c, d]));
      });
    });

    describe("attributes present with an empty value (PS3.18 F.2.5)", () => {
      it("are returned as {vr} without Value at study and series level; absent ones stay absent; a later value fills them", async () => {
        const study = newUid();
        const series = newUid();
        const empty = { "00100040": { vr: "CS" }, "00200010": { vr: "SH" }, "00080050": { vr: "SH" }, "0008103E": { vr: "LO" } };
        await insert({ study, series, extra: empty });
        const [s] = await search("study", { StudyInstanceUID: study, includefield: "00100040" });
        expect(s!["00100040"]).toEqual({ vr: "CS" });
        expect(s!["00200010"]).toEqual({ vr: "SH" });
        expect(s!["00080050"]).toEqual({ vr: "SH" });
        // never given: not invented
        expect(s!["00100030"]).toBeUndefined();
        expect(s!["00081030"]).toBeUndefined();
        const [se] = await search("series", {}, { studyInstanceUID: study });
        expect(se!["0008103E"]).toEqual({ vr: "LO" });
        await insert({ study, series, accession: "LATER-1" });
        const [again] = await search("study", { StudyInstanceUID: study });
        expect(again!["00080050"]).toEqual({ vr: "SH", Value: ["LATER-1"] });
        expect(again!["00200010"]).toEqual({ vr: "SH" });
      });
    });

    describe("search: series and instance levels", () => {
      it("lists a study's series by SeriesNumber with their own attributes and counts", async () => {
        const study = newUid();
        const s1 = newUid();
        const s2 = newUid();
        const s3 = newUid();
        await insert(
          { study, series: s2, seriesNumber: 2, modality: "MR", patientName: "Smith^John" },
          { study, series: s3, modality: "SR" },
          { study, series: s1, seriesNumber: 1, modality: "CT" },
          { study, series: s2, seriesNumber: 2, modality: "MR" },
        );
        const list = await search("series", "", { studyInstanceUID: study });
        expect(list.map((m) => value(m, "0020000E"))).toEqual([s1, s2, s3]);
        const second = list[1]!;
        expect(value(second, "00080060")).toBe("MR");
        expect(value(second, "00201209")).toBe(2);
        expect(value(second, "0020000D")).toBe(study);
        expect(value(second, "00081190")).toBe(`${BULK_ROOT_PLACEHOLDER}/studies/${study}/series/${s2}`);
        // the study is in the path: its attributes are not repeated
        expect(second["00100010"]).toBeUndefined();
        expect((await search("series", { Modality: "MR" }, { studyInstanceUID: study })).map((m) => value(m, "0020000E"))).toEqual([s2]);
        expect((await search("series", { SeriesInstanceUID: `${s1},${s3}` }, { studyInstanceUID: study })).map((m) => value(m, "0020000E"))).toEqual([s1, s3]);
        // across studies: study attributes included, study keys may be matched
        const across = await search("series", { PatientName: "smith^john", Modality: "CT" });
        expect(across.map((m) => value(m, "0020000E"))).toEqual([s1]);
        expect(value(across[0], "00100010")).toEqual({ Alphabetic: "Smith^John" });
        expect(value(across[0], "00201208")).toBe(4);
      });

      it("lists instances by InstanceNumber with default attributes; includefield and includefield=all", async () => {
        const study = newUid();
        const series = newUid();
        const recs = await insert(
          { study, series, instanceNumber: 3, extra: { "00180050": { vr: "DS", Value: [1.25] } } },
          { study, series, instanceNumber: 1 },
          { study, series, instanceNumber: 2 },
        );
        const list = await search("instance", "", { studyInstanceUID: study, seriesInstanceUID: series });
        const bySop = (n: number) => recs.find((r) => value(r.metadata, "00200013") === n)!.sopInstanceUID;
        expect(list.map((m) => value(m, "00080018"))).toEqual([bySop(1), bySop(2), bySop(3)]);
        const last = list[2]!;
        expect(value(last, "00080016")).toBe(SOP_CLASS_CT);
        expect(value(last, "00200013")).toBe(3);
        expect(value(last, "00280010")).toBe(64);
        expect(value(last, "0020000E")).toBe(series);
        expect(value(last, "00081190")).toBe(`${BULK_ROOT_PLACEHOLDER}/studies/${study}/series/${series}/instances/${bySop(3)}`);
        expect(last["00180050"]).toBeUndefined();
        expect(last["00100010"]).toBeUndefined();
        const [withField] = await search("instance", { SOPInstanceUID: bySop(3), includefield: "SliceThickness" }, { studyInstanceUID: study, seriesInstanceUID: series });
        expect(value(withField, "00180050")).toBe(1.25);
        const [all] = await search("instance", { SOPInstanceUID: bySop(3), includefield: "all" }, { studyInstanceUID: study });
        expect(value(all, "00180050")).toBe(1.25);
        expect(all!["7FE00010"]).toEqual(recs[0]!.metadata["7FE00010"]);
        expect(value(all, "00080060")).toBe("CT");
        const acrossStudies = await search("instance", { SOPInstanceUID: bySop(2) });
        expect(acrossStudies).toHaveLength(1);
        expect(value(acrossStudies[0], "00100010")).toEqual({ Alphabetic: "Doe^Jane" });
        expect(value(acrossStudies[0], "00080060")).toBe("CT");
        expect((await search("instance", { InstanceNumber: "2" }, { studyInstanceUID: study })).map((m) => value(m, "00080018"))).toEqual([bySop(2)]);
        expect((await search("instance", { limit: "1", offset: "1" }, { studyInstanceUID: study })).map((m) => value(m, "00080018"))).toEqual([bySop(2)]);
      });
    });

    describe("deleteInstances", () => {
      it("removes rows, keeps counts right, and removes a series and a study with their last instance", async () => {
        const study = newUid();
        const s1 = newUid();
        const s2 = newUid();
        const recs = await insert({ study, series: s1, instanceNumber: 1 }, { study, series: s1, instanceNumber: 2 }, { study, series: s2, modality: "MR" });
        const removed = await index.deleteInstances({ studyInstanceUID: study, seriesInstanceUID: s1, sopInstanceUID: recs[0]!.sopInstanceUID });
        expect(removed.map((l) => l.sopInstanceUID)).toEqual([recs[0]!.sopInstanceUID]);
        expect(removed[0]!.blobKey).toBe(recs[0]!.blobKey);
        let [s] = await search("study", { StudyInstanceUID: study });
        expect(value(s, "00201208")).toBe(2);
        expect(value(s, "00201206")).toBe(2);

        expect((await index.deleteInstances({ studyInstanceUID: study, seriesInstanceUID: s2 })).map((l) => l.sopInstanceUID)).toEqual([recs[2]!.sopInstanceUID]);
        [s] = await search("study", { StudyInstanceUID: study });
        expect(value(s, "00201206")).toBe(1);
        expect(s!["00080061"]!.Value).toEqual(["CT"]);
        expect((await search("series", "", { studyInstanceUID: study })).map((m) => value(m, "0020000E"))).toEqual([s1]);

        expect(await index.deleteInstances({ studyInstanceUID: study })).toHaveLength(1);
        expect(await studyUids({ StudyInstanceUID: study })).toEqual([]);
        expect(await index.deleteInstances({ studyInstanceUID: study })).toEqual([]);
        // the UIDs can be stored again from scratch, with new attributes
        await insert({ study, series: s1, sop: recs[0]!.sopInstanceUID, studyDescription: "again" });
        const [again] = await search("study", { StudyInstanceUID: study });
        expect(value(again, "00081030")).toBe("again");
        expect(value(again, "00201208")).toBe(1);
      });

      it("leaves pending instances unless includePending, and honours allowedStudies", async () => {
        const study = newUid();
        const series = newUid();
        const [, pending] = await insert({ study, series }, { study, series, pending: "tr-1" });
        expect(await index.deleteInstances({ studyInstanceUID: study, allowedStudies: [newUid()] })).toEqual([]);
        expect(await index.deleteInstances({ studyInstanceUID: study })).toHaveLength(1);
        expect(await index.getInstance(pending!.sopInstanceUID, { includePending: true })).not.toBeNull();
        expect((await index.deleteInstances({ studyInstanceUID: study, includePending: true })).map((l) => l.sopInstanceUID)).toEqual([pending!.sopInstanceUID]);
        expect(await index.listInstances({ studyInstanceUID: study, includePending: true })).toEqual([]);
        expect(await index.releaseTransfer("tr-1")).toBe(0);
      });
    });

    describe("blobs, replace, iterate", () => {
      it("isBlobReferenced is true while any row points to the key", async () => {
        const study = newUid();
        const series = newUid();
        const key = `instances/shared-${newUid()}`;
        const [a, b] = await insert({ study, series, blobKey: key }, { study, series, blobKey: key });
        expect(await index.isBlobReferenced(key)).toBe(true);
        await index.deleteInstances({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: a!.sopInstanceUID });
        expect(await index.isBlobReferenced(key)).toBe(true);
        await index.deleteInstances({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: b!.sopInstanceUID });
        expect(await index.isBlobReferenced(key)).toBe(false);
        expect(await index.isBlobReferenced("instances/never")).toBe(false);
      });

      it("replaceInstance swaps the row and returns the old location (or null when there was none)", async () => {
        const study = newUid();
        const s1 = newUid();
        const s2 = newUid();
        const sop = newUid();
        const [old] = await insert({ study, series: s1, sop, bytes: "old" }, { study, series: s1 });
        const replaced = await index.replaceInstance(makeRecord({ study, series: s2, sop, bytes: "new", modality: "MR" }));
        expect(replaced).toMatchObject({ sopInstanceUID: sop, sha256: old!.sha256, blobKey: old!.blobKey, seriesInstanceUID: s1 });
        const now = await index.getInstance(sop);
        expect(now?.sha256).toBe(makeRecord({ study, series: s2, sop, bytes: "new" }).sha256);
        expect(now?.seriesInstanceUID).toBe(s2);
        const [s] = await search("study", { StudyInstanceUID: study });
        expect(value(s, "00201208")).toBe(2);
        expect(s!["00080061"]!.Value).toEqual(["CT", "MR"]);
        const fresh = newUid();
        expect(await index.replaceInstance(makeRecord({ study, series: s1, sop: fresh }))).toBeNull();
        expect(await index.getInstance(fresh)).not.toBeNull();
      });

      it("iterateInstances yields every instance once, pending ones included", async () => {
        const study = newUid();
        const series = newUid();
        const recs = await insert(...Array.from({ length: 25 }, (_, i) => ({ study, series, instanceNumber: i, pending: i % 5 === 0 ? "tr-x" : null })));
        const seen: string[] = [];
        for await (const loc of index.iterateInstances()) seen.push(loc.sopInstanceUID);
        const mine = seen.filter((s) => recs.some((r) => r.sopInstanceUID === s));
        expect(sorted(mine)).toEqual(sorted(recs.map((r) => r.sopInstanceUID)));
        expect(new Set(seen).size).toBe(seen.length);
      });
    });
  });
}
