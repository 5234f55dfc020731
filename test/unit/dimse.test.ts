import { describe, expect, it } from "vitest";
import {
  decodeAssociateAC, decodeAssociateRQ, decodePData, encodeAssociateAC, encodeAssociateRQ, encodePData, PduError, PduFramer, PcResult, Reject,
} from "../../src/dimse/pdu.ts";
import { CommandError, CommandField, decodeCommand, encodeCommand, Status } from "../../src/dimse/command.ts";
import { decideAssociation, sameHost, SopClassUID } from "../../src/dimse/peers.ts";
import { ingestAccepts } from "../../src/dicom/transferSyntax.ts";
import { IdentifierError, PatientAnswers, planFind, responseIdentifier } from "../../src/dimse/find.ts";
import { storeStatus } from "../../src/dimse/store.ts";
import { planRetrieve, retrieveScopes, storageContexts, SubOperations } from "../../src/dimse/retrieve.ts";
import { datasetOffset, encodeDataset, encodeFileMeta } from "../../src/dimse/dataset.ts";
import { readBareDataset } from "../../src/dicom/part10.ts";
import { FailureReason } from "../../src/dicom/failureReasons.ts";

const LIMITS = { defaultLimit: 100, maxLimit: 100 };
const CT = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT = "1.2.840.10008.1.2.1";
const IMPLICIT = "1.2.840.10008.1.2";

function rq(over: Partial<Parameters<typeof encodeAssociateRQ>[0]> = {}) {
  const bytes = encodeAssociateRQ({
    calledAE: "DICOM_RELAY",
    callingAE: "HOMEPACS",
    contexts: [
      { id: 1, abstractSyntax: SopClassUID.Verification, transferSyntaxes: [IMPLICIT] },
      { id: 3, abstractSyntax: CT, transferSyntaxes: ["1.2.3.4.5", EXPLICIT] },
      { id: 5, abstractSyntax: "1.2.840.10008.5.1.4.31", transferSyntaxes: [EXPLICIT] },
    ],
    maxPduLength: 16384,
    implementationClassUID: "1.2.3",
    implementationVersion: "TEST",
    roles: [{ sopClassUID: CT, scuRole: false, scpRole: true }],
    ...over,
  });
  return decodeAssociateRQ(bytes.subarray(6));
}

describe("upper layer PDUs", () => {
  it("round-trips an A-ASSOCIATE-RQ with contexts, max length and role selection", () => {
    const r = rq();
    expect(r.calledAE).toBe("DICOM_RELAY");
    expect(r.callingAE).toBe("HOMEPACS");
    expect(r.applicationContext).toBe("1.2.840.10008.3.1.1.1");
    expect(r.contexts[1]).toEqual({ id: 3, abstractSyntax: CT, transferSyntaxes: ["1.2.3.4.5", EXPLICIT] });
    expect(r.maxPduLength).toBe(16384);
    expect(r.roles).toEqual([{ sopClassUID: CT, scuRole: false, scpRole: true }]);
  });

  it("round-trips an A-ASSOCIATE-AC", () => {
    const ac = decodeAssociateAC(encodeAssociateAC({
      calledAE: "A", callingAE: "B", maxPduLength: 1000, implementationClassUID: "1.2", implementationVersion: "V",
      contexts: [{ id: 1, result: PcResult.acceptance, transferSyntax: EXPLICIT }, { id: 3, result: PcResult.abstractSyntaxNotSupported, transferSyntax: "" }],
      roles: [],
    }).subarray(6));
    expect(ac.contexts).toEqual([{ id: 1, result: 0, transferSyntax: EXPLICIT }, { id: 3, result: 3, transferSyntax: "" }]);
    expect(ac.maxPduLength).toBe(1000);
  });

  it("frames PDUs across chunk boundaries and refuses one longer than announced", () => {
    const f = new PduFramer(100);
    const pdu = encodePData(1, true, true, Buffer.from("abcdef"));
    f.push(pdu.subarray(0, 3));
    expect(f.next()).toBeNull();
    f.push(pdu.subarray(3, 10));
    expect(f.next()).toBeNull();
    f.push(Buffer.concat([pdu.subarray(10), pdu]));
    const one = f.next()!;
    expect(decodePData(one.body)).toEqual([{ contextId: 1, command: true, last: true, data: Buffer.from("abcdef") }]);
    expect(f.next()).not.toBeNull();
    const big = new PduFramer(100);
    big.push(encodePData(1, false, true, Buffer.alloc(200)));
    expect(() => big.next()).toThrow(PduError);
  });

  it("refuses a PDV that claims more than its PDU holds", () => {
    const body = Buffer.from([0, 0, 0, 50, 1, 3, 1, 2]);
    expect(() => decodePData(body)).toThrow(/claims 50 bytes/);
  });
});

describe("DIMSE commands", () => {
  it("round-trips a C-MOVE response with counters", () => {
    const c = decodeCommand(encodeCommand({ commandField: CommandField.CMoveRSP, messageIdBeingRespondedTo: 7, affectedSOPClassUID: SopClassUID.StudyRootMove, status: Status.Pending, remaining: 3, completed: 2, failed: 0, warning: 1, hasDataset: false }));
    expect(c).toMatchObject({ commandField: 0x8021, messageIdBeingRespondedTo: 7, affectedSOPClassUID: SopClassUID.StudyRootMove, status: 0xff00, remaining: 3, completed: 2, failed: 0, warning: 1, hasDataset: false });
  });

  it("pads odd UIDs with NUL and reads them back trimmed; a command without CommandField is refused", () => {
    const enc = encodeCommand({ commandField: CommandField.CStoreRQ, messageId: 1, affectedSOPClassUID: "1.2.3", affectedSOPInstanceUID: "1.2.34", moveDestination: "PACS", hasDataset: true });
    expect(enc.length % 2).toBe(0);
    expect(decodeCommand(enc)).toMatchObject({ affectedSOPClassUID: "1.2.3", affectedSOPInstanceUID: "1.2.34", moveDestination: "PACS", hasDataset: true });
    expect(() => decodeCommand(enc.subarray(12, 20))).toThrow(CommandError);
  });
});

describe("association policy", () => {
  const cfg = {
    aeTitle: "DICOM_RELAY",
    peers: [
      { aeTitle: "HOMEPACS", host: "127.0.0.1", port: 104, studies: "granted" as const, store: false, tls: false, storageCommitment: true },
      { aeTitle: "HOSPITAL", host: "localhost", port: 0, studies: "all" as const, store: true, tls: false, storageCommitment: false },
    ],
  };

  it("refuses unknown calling AEs, wrong hosts and wrong called AEs with the standard reasons", () => {
    const unknown = decideAssociation(rq({ callingAE: "STRANGER" }), "127.0.0.1", cfg);
    expect(unknown).toMatchObject({ ok: false, result: Reject.permanent, source: 1, reason: Reject.user.callingAeNotRecognized });
    const host = decideAssociation(rq(), "192.168.1.20", cfg);
    expect(host).toMatchObject({ ok: false, reason: Reject.user.callingAeNotRecognized });
    expect(!host.ok && host.message).toMatch(/configured for host 127\.0\.0\.1/);
    const called = decideAssociation(rq({ calledAE: "OTHER" }), "127.0.0.1", cfg);
    expect(called).toMatchObject({ ok: false, reason: Reject.user.calledAeNotRecognized });
  });

  it("accepts known services, storage only for storing peers or as C-GET destination, and answers the role", () => {
    const d = decideAssociation(rq(), "::ffff:127.0.0.1", cfg);
    if (!d.ok) throw new Error(d.message);
    expect(d.contexts.map((c) => [c.id, c.result, c.transferSyntax])).toEqual([
      [1, PcResult.acceptance, IMPLICIT],
      [3, PcResult.acceptance, EXPLICIT],
      [5, PcResult.abstractSyntaxNotSupported, ""],
    ]);
    expect(d.roles).toEqual([{ sopClassUID: CT, scuRole: false, scpRole: true }]);
    const noRole = decideAssociation(rq({ roles: [] }), "127.0.0.1", cfg);
    expect(noRole.ok && noRole.contexts[1]!.result).toBe(PcResult.userRejection);
    const storing = decideAssociation(rq({ callingAE: "HOSPITAL", roles: [] }), "::1", cfg);
    expect(storing.ok && storing.contexts[1]!.result).toBe(PcResult.acceptance);
  });

  it("never accepts a storage context in a syntax the ingest refuses (Deflate): the peer's next choice or a rejection", () => {
    const DEFLATE = "1.2.840.10008.1.2.1.99";
    const deflateFirst = decideAssociation(rq({ callingAE: "HOSPITAL", roles: [], contexts: [{ id: 3, abstractSyntax: CT, transferSyntaxes: [DEFLATE, EXPLICIT] }] }), "::1", cfg);
    expect(deflateFirst.ok && deflateFirst.contexts[0]).toMatchObject({ result: PcResult.acceptance, transferSyntax: EXPLICIT });
    const deflateOnly = decideAssociation(rq({ callingAE: "HOSPITAL", roles: [], contexts: [{ id: 3, abstractSyntax: CT, transferSyntaxes: [DEFLATE] }] }), "::1", cfg);
    expect(deflateOnly.ok && deflateOnly.contexts[0]!.result).toBe(PcResult.transferSyntaxesNotSupported);
    expect(ingestAccepts(DEFLATE)).toBe(false);
    expect(ingestAccepts("1.2.840.10008.1.2.4.80")).toBe(true);
  });

  it("compares hosts as addresses", () => {
    expect(sameHost("127.0.0.1", "::ffff:127.0.0.1")).toBe(true);
    expect(sameHost("localhost", "::1")).toBe(true);
    expect(sameHost("10.0.0.1", "10.0.0.10")).toBe(false);
  });
});

describe("C-FIND identifiers", () => {
  it("becomes the QIDO query, a PN given in both groups included", () => {
    const plan = planFind({
      "00080052": { vr: "CS", Value: ["STUDY"] },
      "00100010": { vr: "PN", Value: [{ Alphabetic: "Wang*" }] },
      "00080020": { vr: "DA", Value: ["20240101-20240131"] },
      "0020000D": { vr: "UI" },
      "00201208": { vr: "IS" },
    }, LIMITS);
    expect(plan.level).toBe("study");
    expect(plan.query.filters.map((f) => [f.keyword, f.match.kind])).toEqual(expect.arrayContaining([["PatientName", "wildcard"], ["StudyDate", "range"], ["StudyInstanceUID", "universal"]]));
    expect(plan.query.includeFields).toEqual(expect.arrayContaining(["00201208"]));
    const rsp = responseIdentifier(plan, { "0020000D": { vr: "UI", Value: ["1.2.3"] }, "00100010": { vr: "PN", Value: [{ Alphabetic: "Wang^X", Ideographic: "王^小东" }] }, "00081190": { vr: "UR", Value: ["x"] } }, "RELAY");
    expect(Object.keys(rsp).sort()).toEqual(["00080005", "00080020", "00080052", "00100010", "0020000D", "00201208"]);
    expect(rsp["00080020"]).toEqual({ vr: "DA" });
    expect(rsp["00080005"]!.Value).toEqual(["ISO_IR 192"]);
  });

  it("refuses a missing or Patient Root level and a bad value with a sentence", () => {
    expect(() => planFind({}, LIMITS)).toThrow(IdentifierError);
    expect(() => planFind({ "00080052": { vr: "CS", Value: ["PATIENT"] } }, LIMITS)).toThrow(/STUDY, SERIES or IMAGE \(Study Root\)/);
    expect(() => planFind({ "00080052": { vr: "CS", Value: ["STUDY"] }, "00080020": { vr: "DA", Value: ["2024-01-01"] } }, LIMITS)).toThrow(/StudyDate/);
  });

  it("encodes a UTF-8 response that reads back with both name groups", async () => {
    const ds = { "00080005": { vr: "CS", Value: ["ISO_IR 192"] }, "00100010": { vr: "PN", Value: [{ Alphabetic: "Wang^XiaoDong", Ideographic: "王^小东" }] }, "00201208": { vr: "IS", Value: [6] } };
    for (const explicit of [true, false]) {
      const bytes = encodeDataset(ds, { explicit });
      expect(bytes.length % 2).toBe(0);
      const back = await readBareDataset(bytes, explicit ? EXPLICIT : IMPLICIT, { maxHeaderBytes: 1 << 20, bulkDataThreshold: 1 << 20 });
      expect(back["00100010"]!.Value![0]).toMatchObject({ Alphabetic: "Wang^XiaoDong", Ideographic: "王^小东" });
      expect(back["00201208"]!.Value).toEqual([6]);
    }
  });
});

describe("C-FIND Patient Root", () => {
  const level = (l: string) => ({ "00080052": { vr: "CS", Value: [l] } });
  const study = (uid: string, patient: { id?: string; issuer?: string; name?: string; sex?: string; birth?: string }, series: number, instances: number) => ({
    "0020000D": { vr: "UI", Value: [uid] },
    ...(patient.id !== undefined ? { "00100020": { vr: "LO", Value: [patient.id] } } : {}),
    ...(patient.issuer !== undefined ? { "00100021": { vr: "LO", Value: [patient.issuer] } } : {}),
    ...(patient.name !== undefined ? { "00100010": { vr: "PN", Value: [{ Alphabetic: patient.name }] } } : {}),
    ...(patient.sex !== undefined ? { "00100040": { vr: "CS", Value: [patient.sex] } } : { "00100040": { vr: "CS" } }),
    ...(patient.birth !== undefined ? { "00100030": { vr: "DA", Value: [patient.birth] } } : {}),
    "00201206": { vr: "IS", Value: [series] },
    "00201208": { vr: "IS", Value: [instances] },
    "00081190": { vr: "UR", Value: [`http://x/studies/${uid}`] },
  });

  it("a PATIENT level identifier becomes a study search on the patient keys, reading what grouping needs", () => {
    const plan = planFind({
      ...level("PATIENT"),
      "00100020": { vr: "LO", Value: ["P-1"] },
      "00100010": { vr: "PN", Value: [{ Alphabetic: "Doe*" }] },
      "00100030": { vr: "DA" },
      "00201200": { vr: "IS" },
      "00201204": { vr: "IS" },
      "0020000D": { vr: "UI" },
    }, LIMITS, "patient");
    expect(plan.level).toBe("patient");
    expect(plan.query.level).toBe("study");
    expect(plan.query.filters.map((f) => [f.keyword, f.match.kind])).toEqual([["PatientID", "single"], ["PatientName", "wildcard"], ["PatientBirthDate", "universal"]]);
    expect(plan.query.includeFields).toEqual(expect.arrayContaining(["00100020", "00100021", "00100010", "00201206", "00201208"]));
    // a key below the PATIENT level is returned zero-length when empty, refused when it carries a value
    expect(plan.keys.map((k) => k.tag)).toContain("0020000D");
    expect(() => planFind({ ...level("PATIENT"), "00080020": { vr: "DA", Value: ["20240101"] } }, LIMITS, "patient")).toThrow(/StudyDate is a study key/);
    // the lower levels work as under Study Root, the patient's keys matched as upper-level keys
    const series = planFind({ ...level("SERIES"), "00100020": { vr: "LO", Value: ["P-1"] }, "0020000D": { vr: "UI", Value: ["1.2.3"] }, "00080060": { vr: "CS" } }, LIMITS, "patient");
    expect(series.level).toBe("series");
    expect(series.query.filters.map((f) => f.keyword)).toEqual(["PatientID", "StudyInstanceUID", "Modality"]);
    expect(() => planFind(level("WARD"), LIMITS, "patient")).toThrow(/PATIENT, STUDY, SERIES or IMAGE \(Patient Root\)/);
  });

  it("groups studies into patients as the catalogue does: counts summed, anonymous studies never one patient", () => {
    const plan = planFind({ ...level("PATIENT"), "00100020": { vr: "LO" }, "00100010": { vr: "PN" }, "00100040": { vr: "CS" }, "00100030": { vr: "DA" }, "00201200": { vr: "IS" }, "00201202": { vr: "IS" }, "00201204": { vr: "IS" }, "00201206": { vr: "IS" }, "00081190": { vr: "UR" } }, LIMITS, "patient");
    const answers = new PatientAnswers(10);
    expect(answers.add(study("1.1", { id: "P-1", name: "Doe^Jane", sex: "F" }, 2, 5))).toBe(true);
    answers.add(study("1.2", { id: "P-1", name: "Doe^Jane", birth: "19700101" }, 1, 3));
    answers.add(study("1.3", { id: "P-1", name: "Roe^Rita" }, 1, 1)); // same ID, another person
    answers.add(study("1.4", {}, 1, 2)); // anonymised: no ID, issuer or name
    answers.add(study("1.5", { name: "" }, 3, 4, ));
    const out = [...answers.responses(plan, "RELAY")];
    expect(out).toHaveLength(4);
    const [jane, rita, anon1, anon2] = out;
    expect(jane!["00080052"]!.Value).toEqual(["PATIENT"]);
    expect(jane!["00100020"]!.Value).toEqual(["P-1"]);
    expect(jane!["00100040"]!.Value).toEqual(["F"]);
    expect(jane!["00100030"]!.Value).toEqual(["19700101"]); // the same patient's blank filled from its other study
    expect([jane, rita, anon1, anon2].map((r) => [r!["00201200"]!.Value![0], r!["00201202"]!.Value![0], r!["00201204"]!.Value![0]])).toEqual([[2, 3, 8], [1, 1, 1], [1, 1, 2], [1, 3, 4]]);
    // no study's own values leak into a patient's answer, and anonymous patients get no attributes of others
    expect(jane!["00201206"]).toEqual({ vr: "IS" });
    expect(jane!["00081190"]).toEqual({ vr: "UR" });
    expect(anon1!["00100040"]).toEqual({ vr: "CS" });
    expect(anon1!["00100030"]).toEqual({ vr: "DA" });
    // bounded: a patient past the limit is refused, the known ones still count
    const small = new PatientAnswers(1);
    expect(small.add(study("2.1", { id: "A" }, 1, 1))).toBe(true);
    expect(small.add(study("2.2", { id: "A" }, 1, 1))).toBe(true);
    expect(small.add(study("2.3", { id: "B" }, 1, 1))).toBe(false);
  });

  it("a PATIENT level retrieve names one patient by PatientID; the other levels are scopes as under Study Root", () => {
    const p = planRetrieve({ ...level("PATIENT"), "00100020": { vr: "LO", Value: ["P-1"] }, "00100021": { vr: "LO", Value: ["HOSP"] } }, null, "patient", LIMITS);
    expect("patient" in p && p.patient.query.filters.map((f) => [f.keyword, f.match])).toEqual([["PatientID", { kind: "single", value: "P-1" }], ["IssuerOfPatientID", { kind: "single", value: "HOSP" }]]);
    expect(() => planRetrieve(level("PATIENT"), null, "patient", LIMITS)).toThrow(/needs PatientID/);
    expect(() => planRetrieve({ ...level("PATIENT"), "00100020": { vr: "LO", Value: ["P*"] } }, null, "patient", LIMITS)).toThrow(/without wildcards/);
    expect(() => planRetrieve({ ...level("PATIENT"), "00100020": { vr: "LO", Value: ["P-1"] } }, null, "study", LIMITS)).toThrow(/PATIENT is Patient Root's/);
    expect(planRetrieve({ ...level("STUDY"), "00100020": { vr: "LO", Value: ["P-1"] }, "0020000D": { vr: "UI", Value: ["1.2"] } }, ["1.2"], "patient", LIMITS)).toEqual({ scopes: [{ allowedStudies: ["1.2"], studyInstanceUID: "1.2" }] });
  });

  it("Patient Root FIND / MOVE / GET are accepted in association negotiation", () => {
    const cfg = { aeTitle: "DICOM_RELAY", peers: [{ aeTitle: "HOMEPACS", host: "127.0.0.1", port: 104, studies: "all" as const, store: false, tls: false, storageCommitment: false }] };
    const d = decideAssociation(rq({ roles: [], contexts: [SopClassUID.PatientRootFind, SopClassUID.PatientRootMove, SopClassUID.PatientRootGet, "1.2.840.10008.5.1.4.1.2.3.1"].map((abstractSyntax, i) => ({ id: 2 * i + 1, abstractSyntax, transferSyntaxes: [EXPLICIT] })) }), "127.0.0.1", cfg);
    expect(d.ok && d.contexts.map((c) => c.result)).toEqual([PcResult.acceptance, PcResult.acceptance, PcResult.acceptance, PcResult.abstractSyntaxNotSupported]);
  });
});

describe("C-STORE status of an ingest result", () => {
  const ids = { studyInstanceUID: "1", seriesInstanceUID: "2", sopInstanceUID: "3", sopClassUID: CT, size: 1 };
  it("maps each outcome to a DIMSE status", () => {
    expect(storeStatus({ status: "stored", ...ids, sha256: "a" }).status).toBe(0);
    expect(storeStatus({ status: "already-stored", ...ids, sha256: "a" }).status).toBe(0);
    expect(storeStatus({ status: "already-stored", ...ids, sha256: "a", keptOther: true }).status).toBe(0xb000);
    // stored under the data set's UID while the command (the file meta) named another: warning 0xB007, its short form
    const warned = storeStatus({ status: "stored", ...ids, sha256: "a", warnings: ["file meta SOPInstanceUID differs; stored as the data set's UID: long details"] });
    expect(warned).toMatchObject({ status: 0xb007, errorComment: "file meta SOPInstanceUID differs; stored as the data set's UID" });
    expect(storeStatus({ status: "failed", reason: FailureReason.OutOfResources, message: "big" }).status).toBe(0xa700);
    expect(storeStatus({ status: "failed", reason: FailureReason.ProcessingFailure, message: "down", retryable: true }).status).toBe(0xa700);
    expect(storeStatus({ status: "failed", reason: FailureReason.DataSetDoesNotMatchSOPClass, message: "x" }).status).toBe(0xa900);
    expect(storeStatus({ status: "failed", reason: FailureReason.CannotUnderstand, message: "x" }).status).toBe(0xc000);
    expect(storeStatus({ status: "failed", reason: FailureReason.DuplicateSOPInstance, message: "x" }).status).toBe(0x0111);
  });
});

describe("retrieve", () => {
  it("reads the scopes of a Study Root identifier and refuses incomplete ones", () => {
    expect(retrieveScopes({ "00080052": { vr: "CS", Value: ["STUDY"] }, "0020000D": { vr: "UI", Value: ["1.2", "1.3"] } }, ["1.2"])).toEqual([
      { allowedStudies: ["1.2"], studyInstanceUID: "1.2" },
      { allowedStudies: ["1.2"], studyInstanceUID: "1.3" },
    ]);
    expect(() => retrieveScopes({ "00080052": { vr: "CS", Value: ["SERIES"] }, "0020000D": { vr: "UI", Value: ["1.2"] } }, null)).toThrow(/SeriesInstanceUID/);
    expect(() => retrieveScopes({ "00080052": { vr: "CS", Value: ["STUDY"] }, "0020000D": { vr: "UI", Value: ["x.y"] } }, null)).toThrow(/not a DICOM UID/);
  });

  it("proposes one context per SOP class and transfer syntax, odd ids", () => {
    const ctx = storageContexts([{ sopClassUID: CT, transferSyntaxUID: EXPLICIT }, { sopClassUID: CT, transferSyntaxUID: EXPLICIT }, { sopClassUID: CT, transferSyntaxUID: IMPLICIT }]);
    expect(ctx).toEqual([{ id: 1, abstractSyntax: CT, transferSyntaxes: [EXPLICIT] }, { id: 3, abstractSyntax: CT, transferSyntaxes: [IMPLICIT] }]);
  });

  it("offers uncompressed syntaxes besides a decodable compressed one, after every stored syntax", () => {
    const JLS = "1.2.840.10008.1.2.4.80";
    const MPEG = "1.2.840.10008.1.2.4.100";
    const ctx = storageContexts([{ sopClassUID: CT, transferSyntaxUID: JLS }, { sopClassUID: CT, transferSyntaxUID: EXPLICIT }, { sopClassUID: "1.2.840.10008.5.1.4.1.1.77.1.4.1", transferSyntaxUID: MPEG }]);
    expect(ctx).toEqual([
      { id: 1, abstractSyntax: CT, transferSyntaxes: [JLS] },
      { id: 3, abstractSyntax: CT, transferSyntaxes: [EXPLICIT] },
      { id: 5, abstractSyntax: "1.2.840.10008.5.1.4.1.1.77.1.4.1", transferSyntaxes: [MPEG] },
      { id: 7, abstractSyntax: CT, transferSyntaxes: [EXPLICIT, IMPLICIT] },
    ]);
  });

  it("counts sub-operations and gives B000 when any failed", () => {
    const ops = new SubOperations(3);
    ops.add("a", { status: 0 });
    expect(ops.counts()).toEqual({ remaining: 2, completed: 1, failed: 0, warning: 0 });
    ops.add("b", { status: 0xa700 });
    ops.add("c", { status: 0xb007 });
    expect(ops.finalStatus()).toBe(0xb000);
    expect(ops.failedUids).toEqual(["b"]);
  });

  it("finds where the data set of a Part-10 file starts", () => {
    const meta = encodeFileMeta({ sopClassUID: CT, sopInstanceUID: "1.2.3", transferSyntaxUID: EXPLICIT, sourceAE: "PACS" });
    const file = Buffer.concat([meta, Buffer.from([0x08, 0x00, 0x16, 0x00])]);
    expect(datasetOffset(file)).toBe(meta.length);
    expect(datasetOffset(file.subarray(0, 140))).toBeNull();
    expect(() => datasetOffset(Buffer.alloc(200))).toThrow(/not a DICOM Part-10 file/);
  });
});
