/**
 * The DICOM node against dcmtk's tools as real peers: C-ECHO, C-STORE in (storescu), C-FIND (findscu, with
 * UTF-8 and GB18030 Chinese names), C-MOVE out to a real storescp, C-GET (getscu), refusals (unknown AE,
 * wrong host, wrong called AE, a study not shared with the peer) and the audit trail.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dcmtk, startStorescp } from "../support/dcmtk.ts";
import { freePort } from "../../scripts/lib/net.ts";
import { encodeDataset as writeDataset, encodeFileMeta as writeMeta, makeInstance, tagOf, writeStudy } from "../../scripts/lib/synthetic.ts";
import { datasetOffset } from "../../src/dimse/dataset.ts";
import { readBareDataset } from "../../src/dicom/part10.ts";
import type { DicomJsonDataset } from "../../src/dicom/types.ts";
import type { AuditRecord } from "../../src/access/audit.ts";

const RELAY_AE = "DICOM_RELAY";
const OPTS = { maxHeaderBytes: 1 << 20, bulkDataThreshold: 1 << 20 };

/** The data set part of a Part-10 file (what DIMSE carries), for byte comparison. */
function datasetOf(file: Buffer): Buffer {
  return file.subarray(datasetOffset(file.subarray(0, 64 * 1024))!);
}

async function readIdentifierFile(file: string): Promise<DicomJsonDataset> {
  const b = await fsp.readFile(file);
  return readBareDataset(datasetOf(b), "1.2.840.10008.1.2.1", OPTS);
}

/** The project's CLI, as an administrator runs it beside the relay. */
function cli(args: string[], dataDir: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.resolve("bin/dicom-relay.js"), ...args], { env: { ...process.env, DICOM_RELAY_DATA_DIR: dataDir }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d));
    p.stderr.on("data", (d: Buffer) => (stderr += d));
    p.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out;
}

/** SOPInstanceUID -> SHA-256 of the data set, for a set of Part-10 files. */
async function datasetHashes(files: string[]): Promise<Map<string, string>> {
  const m = new Map<string, string>();
  for (const f of files) {
    const b = await fsp.readFile(f);
    const ds = datasetOf(b);
    const sop = (await readBareDataset(ds, "1.2.840.10008.1.2.1", OPTS))["00080018"]!.Value![0] as string;
    m.set(sop, sha(ds));
  }
  return m;
}

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

/** The audit rows of one action after sequence number `afterSeq`, waited for (bounded) until `until` holds. */
async function auditRows(relay: TestRelay, q: { action: string; actor?: string; afterSeq: number }, until: (rows: AuditRecord[]) => boolean, timeoutMs = 5_000): Promise<AuditRecord[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const rows = await relay.services.access!.audit.query(q);
    if (until(rows) || Date.now() > deadline) return rows;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The newest audit sequence number, to look only at the rows a step writes. */
async function lastAuditSeq(relay: TestRelay): Promise<number> {
  const rows = await relay.services.access!.audit.query({ limit: 10_000 });
  return rows.at(-1)?.seq ?? 0;
}

describe("DIMSE node with dcmtk peers", () => {
  let relay: TestRelay;
  let work: string;
  let storescpPort: number;
  let study: { files: string[]; studyInstanceUID: string };
  let secret: { files: string[]; studyInstanceUID: string };
  const args = (aet: string, extra: string[] = [], files: string[] = []) => ["-aet", aet, "-aec", RELAY_AE, ...extra, "127.0.0.1", String(relay.dimsePort), ...files];

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), "dimse-test-"));
    storescpPort = await freePort();
    relay = await startTestRelay({
      dimse: {
        enabled: true,
        port: 0,
        aeTitle: RELAY_AE,
        peers: [
          { aeTitle: "HOSPITAL", host: "127.0.0.1", port: 0, studies: "all", store: true },
          { aeTitle: "HOMEPACS", host: "127.0.0.1", port: storescpPort, studies: "granted", store: false },
          { aeTitle: "ADMINWS", host: "127.0.0.1", port: 0, studies: "all", store: false },
          { aeTitle: "FARAWAY", host: "10.9.8.7", port: 0, studies: "all", store: true },
        ],
      },
    } as never);
    study = await writeStudy(path.join(work, "in"), { instances: 6, seriesCount: 2, patientName: "Wang^XiaoDong=王^小东", charset: "GB18030", patientID: "CN-0002", modality: "CT", seed: 7 });
    secret = await writeStudy(path.join(work, "secret"), { instances: 2, patientName: "Li^Na=李^娜", charset: "ISO_IR 192", patientID: "CN-0003", modality: "MR", seed: 9 });
  }, 60_000);

  afterAll(async () => {
    await relay?.dispose();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it("answers C-ECHO from a configured peer; audited as dimse.associate, dimse.echo and dimse.release of that AE", async () => {
    const seq = await lastAuditSeq(relay);
    const r = await dcmtk("echoscu", args("HOSPITAL"));
    expect(r.code, r.stderr).toBe(0);
    const actor = "ae:HOSPITAL";
    const associate = await relay.services.access!.audit.query({ action: "dimse.associate", actor, afterSeq: seq });
    expect(associate.map((a) => a.outcome)).toEqual(["success"]);
    const echo = await relay.services.access!.audit.query({ action: "dimse.echo", actor, afterSeq: seq });
    expect(echo).toHaveLength(1);
    expect(echo[0]).toMatchObject({ action: "dimse.echo", actor, outcome: "success", route: `dimse://${RELAY_AE}` });
    // the release row is written when the association closes, which may be a moment after echoscu exits
    const release = await auditRows(relay, { action: "dimse.release", actor, afterSeq: seq }, (rows) => rows.length > 0);
    expect(release).toHaveLength(1);
    expect(release[0]).toMatchObject({ action: "dimse.release", actor, outcome: "success", detail: "released by the peer" });
    expect(release[0]!.seq).toBeGreaterThan(echo[0]!.seq);
    // nothing was written for another AE by this association
    const others = (await relay.services.access!.audit.query({ afterSeq: seq })).filter((a) => a.action.startsWith("dimse.") && a.actor !== actor);
    expect(others).toEqual([]);
  });

  it("refuses an unknown calling AE, a peer from the wrong host and a wrong called AE (A-ASSOCIATE-RJ)", async () => {
    const unknown = await dcmtk("echoscu", ["-v", ...args("STRANGER")]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stdout + unknown.stderr).toMatch(/Calling AE Title Not Recognized/i);
    const wrongHost = await dcmtk("echoscu", ["-v", ...args("FARAWAY")]);
    expect(wrongHost.code).not.toBe(0);
    expect(wrongHost.stdout + wrongHost.stderr).toMatch(/Calling AE Title Not Recognized/i);
    const wrongCalled = await dcmtk("echoscu", ["-v", "-aet", "HOSPITAL", "-aec", "SOMEONE_ELSE", "127.0.0.1", String(relay.dimsePort)]);
    expect(wrongCalled.code).not.toBe(0);
    expect(wrongCalled.stdout + wrongCalled.stderr).toMatch(/Called AE Title Not Recognized/i);
    const audit = await relay.services.access!.audit.query({ action: "dimse.associate", outcome: "failure" });
    expect(audit.map((a) => a.actor)).toEqual(expect.arrayContaining(["ae:STRANGER", "ae:FARAWAY", "ae:HOSPITAL"]));
    expect(audit.find((a) => a.actor === "ae:FARAWAY")!.detail).toMatch(/configured for host 10\.9\.8\.7/);
  });

  it("stores a folder sent with storescu through the ingest pipeline, data sets byte for byte", async () => {
    const r = await dcmtk("storescu", args("HOSPITAL", ["+sd", "+r"], [path.join(work, "in"), path.join(work, "secret")]), { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    for (const f of [...study.files, ...secret.files]) {
      const original = await fsp.readFile(f);
      const sop = (await readBareDataset(datasetOf(original), "1.2.840.10008.1.2.1", OPTS))["00080018"]!.Value![0] as string;
      const loc = await relay.services.index.getInstance(sop);
      expect(loc, f).not.toBeNull();
      const stream = await relay.services.store.get(loc!.blobKey);
      const chunks: Buffer[] = [];
      for await (const c of stream) chunks.push(c as Buffer);
      expect(sha(datasetOf(Buffer.concat(chunks)))).toBe(sha(datasetOf(original)));
    }
    const audit = await relay.services.access!.audit.query({ action: "instance.store", actor: "ae:HOSPITAL" });
    expect(audit.length).toBe(8);
    expect(audit.every((a) => a.outcome === "success" && a.method === "C-STORE")).toBe(true);
  }, 120_000);

  it("sends the same file again: already stored; different bytes under a stored SOPInstanceUID: refused 0x0111; not DICOM-conformant: refused", async () => {
    const again = await dcmtk("storescu", args("HOSPITAL", [], [study.files[0]!]));
    expect(again.code, again.stderr).toBe(0);
    const original = await fsp.readFile(study.files[0]!);
    const ds = await readBareDataset(datasetOf(original), "1.2.840.10008.1.2.1", OPTS);
    const conflicting = makeInstance({
      studyInstanceUID: study.studyInstanceUID,
      seriesInstanceUID: ds["0020000E"]!.Value![0] as string,
      sopInstanceUID: ds["00080018"]!.Value![0] as string,
      patientName: "Someone^Else",
      seed: 99,
    });
    const conflictFile = path.join(work, "conflict.dcm");
    await fsp.writeFile(conflictFile, conflicting);
    const conflict = await dcmtk("storescu", ["-v", ...args("HOSPITAL", [], [conflictFile])]);
    expect(conflict.stdout + conflict.stderr).toMatch(/Store Response \(Unknown Status: 0x111\)|Duplicate SOP Instance/i);
    // the stored instance is untouched
    const loc = await relay.services.index.getInstance(ds["00080018"]!.Value![0] as string);
    expect(loc!.sha256).not.toBe(sha(conflicting));

    // a data set without StudyInstanceUID: the pipeline refuses it with a data set error
    const bad = Buffer.concat([
      writeMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUID: "1.2.3.4.5.6", transferSyntaxUID: "1.2.840.10008.1.2.1" }),
      writeDataset([
        { tag: tagOf(0x0008, 0x0016), vr: "UI", value: "1.2.840.10008.5.1.4.1.1.7" },
        { tag: tagOf(0x0008, 0x0018), vr: "UI", value: "1.2.3.4.5.6" },
        { tag: tagOf(0x0010, 0x0020), vr: "LO", value: "NO-STUDY" },
      ], { explicitVR: true, littleEndian: true }),
    ]);
    const badFile = path.join(work, "bad.dcm");
    await fsp.writeFile(badFile, bad);
    const refused = await dcmtk("storescu", ["-v", ...args("HOSPITAL", [], [badFile])]);
    expect(refused.stdout + refused.stderr).toMatch(/Received Store Response \(Error: DataSetDoesNotMatchSOPClass\)/);
    expect(await relay.services.index.getInstance("1.2.3.4.5.6")).toBeNull();
    const failures = await relay.services.access!.audit.query({ action: "instance.store", outcome: "failure" });
    expect(failures.length).toBeGreaterThanOrEqual(2);
  }, 60_000);

  it("refuses C-STORE from a peer that may not store", async () => {
    const r = await dcmtk("storescu", ["-v", ...args("ADMINWS", [], [study.files[0]!])]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/no presentation context|No Acceptable Presentation Contexts|rejected/i);
  });

  it("C-FIND at study, series and image level from the same index as QIDO-RS", async () => {
    const seq = await lastAuditSeq(relay);
    const out = path.join(work, "find-study");
    await fsp.mkdir(out);
    const r = await dcmtk("findscu", ["-S", "-X", "-od", out, ...args("ADMINWS", ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=CN-0002", "-k", "StudyInstanceUID", "-k", "PatientName", "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy"])]);
    expect(r.code, r.stderr).toBe(0);
    const files = (await fsp.readdir(out)).map((f) => path.join(out, f));
    expect(files).toHaveLength(1);
    const m = await readIdentifierFile(files[0]!);
    expect(m["0020000D"]!.Value).toEqual([study.studyInstanceUID]);
    expect(m["00100010"]!.Value![0]).toMatchObject({ Alphabetic: "Wang^XiaoDong", Ideographic: "王^小东" });
    expect(m["00201208"]!.Value).toEqual([6]);
    expect(m["00080005"]!.Value).toEqual(["ISO_IR 192"]);

    const seriesOut = path.join(work, "find-series");
    await fsp.mkdir(seriesOut);
    const s = await dcmtk("findscu", ["-S", "-X", "-od", seriesOut, ...args("ADMINWS", ["-k", "QueryRetrieveLevel=SERIES", "-k", `StudyInstanceUID=${study.studyInstanceUID}`, "-k", "SeriesInstanceUID", "-k", "NumberOfSeriesRelatedInstances"])]);
    expect(s.code, s.stderr).toBe(0);
    const series = await Promise.all((await fsp.readdir(seriesOut)).map((f) => readIdentifierFile(path.join(seriesOut, f))));
    expect(series).toHaveLength(2);
    expect(series.map((x) => x["00201209"]!.Value![0]).sort()).toEqual([3, 3]);

    const imageOut = path.join(work, "find-image");
    await fsp.mkdir(imageOut);
    const i = await dcmtk("findscu", ["-S", "-X", "-od", imageOut, ...args("ADMINWS", ["-k", "QueryRetrieveLevel=IMAGE", "-k", `StudyInstanceUID=${study.studyInstanceUID}`, "-k", `SeriesInstanceUID=${series[0]!["0020000E"]!.Value![0]}`, "-k", "SOPInstanceUID", "-k", "InstanceNumber"])]);
    expect(i.code, i.stderr).toBe(0);
    expect(await fsp.readdir(imageOut)).toHaveLength(3);

    // one dimse.find row per query, by the calling AE, with level and match count; one release per association
    const actor = "ae:ADMINWS";
    const finds = await relay.services.access!.audit.query({ action: "dimse.find", actor, afterSeq: seq });
    expect(finds.map((f) => [f.outcome, f.studyInstanceUID])).toEqual([
      ["success", null],
      ["success", study.studyInstanceUID],
      ["success", study.studyInstanceUID],
    ]);
    expect(finds[0]!.detail).toMatch(/^level study; keys .*PatientID.*; 1 match\(es\)$/);
    expect(finds[1]!.detail).toMatch(/^level series; keys .*StudyInstanceUID.*; 2 match\(es\)$/);
    expect(finds[2]!.detail).toMatch(/^level instance; keys .*SeriesInstanceUID.*; 3 match\(es\)$/);
    const releases = await auditRows(relay, { action: "dimse.release", actor, afterSeq: seq }, (rows) => rows.length >= 3);
    expect(releases).toHaveLength(3);
    expect(releases.every((a) => a.outcome === "success" && a.detail === "released by the peer")).toBe(true);
  });

  it("C-FIND finds a Chinese name by either group, in UTF-8 and in GB18030", async () => {
    const utf8Out = path.join(work, "find-utf8");
    await fsp.mkdir(utf8Out);
    const u = await dcmtk("findscu", ["-S", "-X", "-od", utf8Out, ...args("ADMINWS", ["-k", "SpecificCharacterSet=ISO_IR 192", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=王^小东", "-k", "StudyInstanceUID"])]);
    expect(u.code, u.stderr).toBe(0);
    const found = await Promise.all((await fsp.readdir(utf8Out)).map((f) => readIdentifierFile(path.join(utf8Out, f))));
    expect(found.map((x) => x["0020000D"]!.Value![0])).toEqual([study.studyInstanceUID]);
    expect(found[0]!["00100010"]!.Value![0]).toMatchObject({ Ideographic: "王^小东" });

    // a query file in GB18030 (findscu -k cannot carry GB18030 bytes from a UTF-8 command line)
    const queryFile = path.join(work, "query-gb18030.dcm");
    await fsp.writeFile(queryFile, Buffer.concat([
      writeMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.2.2.1", sopInstanceUID: "1.2.3", transferSyntaxUID: "1.2.840.10008.1.2.1" }),
      writeDataset([
        { tag: tagOf(0x0008, 0x0005), vr: "CS", value: "GB18030" },
        { tag: tagOf(0x0008, 0x0052), vr: "CS", value: "STUDY" },
        { tag: tagOf(0x0010, 0x0010), vr: "PN", value: "王*" },
        { tag: tagOf(0x0020, 0x000d), vr: "UI", value: "" },
      ], { explicitVR: true, littleEndian: true, charset: "GB18030" }),
    ]));
    const gbOut = path.join(work, "find-gb");
    await fsp.mkdir(gbOut);
    const g = await dcmtk("findscu", ["-S", "-X", "-od", gbOut, ...args("ADMINWS", [], [queryFile])]);
    expect(g.code, g.stderr).toBe(0);
    const gb = await Promise.all((await fsp.readdir(gbOut)).map((f) => readIdentifierFile(path.join(gbOut, f))));
    expect(gb.map((x) => x["0020000D"]!.Value![0])).toEqual([study.studyInstanceUID]);

    // the alphabetic group, case-insensitively, finds the same study
    const alphaOut = path.join(work, "find-alpha");
    await fsp.mkdir(alphaOut);
    await dcmtk("findscu", ["-S", "-X", "-od", alphaOut, ...args("ADMINWS", ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=wang^xiaodong", "-k", "StudyInstanceUID"])]);
    const alpha = await Promise.all((await fsp.readdir(alphaOut)).map((f) => readIdentifierFile(path.join(alphaOut, f))));
    expect(alpha.map((x) => x["0020000D"]!.Value![0])).toEqual([study.studyInstanceUID]);
  });
  it("C-MOVE to a peer sees only studies granted to it (token share --peer); the moved data sets are byte for byte the stored ones", async () => {
    const out = path.join(work, "homepacs");
    await fsp.mkdir(out);
    const scp = await startStorescp(storescpPort, "HOMEPACS", out);
    try {
      // nothing granted yet: C-FIND finds nothing, C-MOVE moves nothing
      const before = path.join(work, "home-find-before");
      await fsp.mkdir(before);
      await dcmtk("findscu", ["-S", "-X", "-od", before, ...args("HOMEPACS", ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])]);
      expect(await fsp.readdir(before)).toEqual([]);
      // ... and the relay says why (audit and log), instead of an unexplained empty answer
      const finds = await relay.services.access!.audit.query({ action: "dimse.find", actor: "ae:HOMEPACS" });
      expect(finds.length).toBeGreaterThan(0);
      expect(finds.map((r) => r.detail).find((d) => /granted/.test(d ?? ""))).toMatch(/0 match\(es\); HOMEPACS sees only studies granted to it \(dimse\.peers\[\]\.studies = "granted"\) and none is granted: dicom-relay token share --study UID --peer HOMEPACS$/);
      const refused = await dcmtk("movescu", ["-v", "-S", ...args("HOMEPACS", ["-aem", "HOMEPACS", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${study.studyInstanceUID}`])]);
      expect(refused.stdout + refused.stderr).toMatch(/Move Response.*(0xc000|Failed)|Unable to process/i);
      expect(await filesUnder(out)).toEqual([]);

      const granted = await cli(["token", "share", "--study", study.studyInstanceUID, "--peer", "HOMEPACS"], relay.dataDir);
      expect(granted.code, granted.stderr).toBe(0);
      expect(granted.stdout).toMatch(/Granted 1 study/);

      const after = path.join(work, "home-find-after");
      await fsp.mkdir(after);
      await dcmtk("findscu", ["-S", "-X", "-od", after, ...args("HOMEPACS", ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])]);
      const visible = await Promise.all((await fsp.readdir(after)).map((f) => readIdentifierFile(path.join(after, f))));
      expect(visible.map((v) => v["0020000D"]!.Value![0])).toEqual([study.studyInstanceUID]);

      const moved = await dcmtk("movescu", ["-v", "-S", ...args("HOMEPACS", ["-aem", "HOMEPACS", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${study.studyInstanceUID}`])], { timeoutMs: 120_000 });
      expect(moved.code, moved.stderr).toBe(0);
      expect(moved.stdout + moved.stderr).toMatch(/Received Final Move Response \(Success\)/);
      const received = await datasetHashes(await filesUnder(out));
      expect(received).toEqual(await datasetHashes(study.files));

      // the study not granted stays out of reach
      const secretMove = await dcmtk("movescu", ["-v", "-S", ...args("HOMEPACS", ["-aem", "HOMEPACS", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${secret.studyInstanceUID}`])]);
      expect(secretMove.stdout + secretMove.stderr).toMatch(/0xc000|Unable to process|Failed/i);
      expect((await filesUnder(out)).length).toBe(6);

      const audit = await relay.services.access!.audit.query({ action: "dimse.move", actor: "ae:HOMEPACS" });
      expect(audit.map((a) => a.outcome)).toEqual(["failure", "success", "failure"]);
      expect(audit[1]!.detail).toMatch(/to HOMEPACS; 6 completed, 0 warning, 0 failed of 6/);
    } finally {
      await scp.stop();
    }
  }, 120_000);

  it("C-GET of a study not shared with the peer (studies \"granted\"): refused, no sub-operation, nothing arrives; its granted study still comes", async () => {
    // by now the C-MOVE test granted `study` to HOMEPACS, never `secret`
    const seq = await lastAuditSeq(relay);
    const out = path.join(work, "home-get-secret");
    await fsp.mkdir(out);
    const refused = await dcmtk("getscu", ["-v", "-S", "+B", "-od", out, ...args("HOMEPACS", ["-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${secret.studyInstanceUID}`])], { timeoutMs: 60_000 });
    const said = refused.stdout + refused.stderr;
    // getscu exits 0 even on a failed C-GET: the status and the sub-operation counts are what tell
    expect(said).toMatch(/Received C-GET Response \(Failed: UnableToProcess\)/);
    expect(said).toMatch(/Number of Completed Suboperations\s*:\s*0\b/);
    expect(said).not.toMatch(/Received C-STORE Request/i);
    expect(await filesUnder(out)).toEqual([]);
    const audit = await relay.services.access!.audit.query({ action: "dimse.get", actor: "ae:HOMEPACS", afterSeq: seq });
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({ outcome: "failure", studyInstanceUID: secret.studyInstanceUID });
    expect(audit[0]!.detail).toMatch(/not shared with this peer/);

    // the same peer, the same service, a study granted to it: the refusal above was the grant, nothing else
    const grantedOut = path.join(work, "home-get-granted");
    await fsp.mkdir(grantedOut);
    const got = await dcmtk("getscu", ["-S", "+B", "-od", grantedOut, ...args("HOMEPACS", ["-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${study.studyInstanceUID}`])], { timeoutMs: 120_000 });
    expect(got.code, got.stderr).toBe(0);
    expect(await datasetHashes(await filesUnder(grantedOut))).toEqual(await datasetHashes(study.files));
    const after = await relay.services.access!.audit.query({ action: "dimse.get", actor: "ae:HOMEPACS", afterSeq: seq });
    expect(after.map((a) => a.outcome)).toEqual(["failure", "success"]);
  }, 120_000);

  it("C-MOVE to an unknown destination: 0xA801", async () => {
    const r = await dcmtk("movescu", ["-v", "-S", ...args("ADMINWS", ["-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${study.studyInstanceUID}`])]);
    expect(r.stdout + r.stderr).toMatch(/Final Move Response \(Refused: Move ?Destination ?Unknown\)/i);
  });

  it("C-GET streams a series back on the same association; SHA-256 of each data set equals what was stored", async () => {
    const out = path.join(work, "getscu");
    await fsp.mkdir(out);
    const seriesUid = (await readBareDataset(datasetOf(await fsp.readFile(study.files[0]!)), "1.2.840.10008.1.2.1", OPTS))["0020000E"]!.Value![0] as string;
    const r = await dcmtk("getscu", ["-S", "+B", "-od", out, ...args("ADMINWS", ["-k", "QueryRetrieveLevel=SERIES", "-k", `StudyInstanceUID=${study.studyInstanceUID}`, "-k", `SeriesInstanceUID=${seriesUid}`])], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    const got = await datasetHashes(await filesUnder(out));
    expect(got.size).toBe(3);
    const stored = await datasetHashes(study.files);
    for (const [sop, h] of got) expect(h).toBe(stored.get(sop));
    const audit = await relay.services.access!.audit.query({ action: "dimse.get", actor: "ae:ADMINWS" });
    expect(audit.at(-1)!.detail).toMatch(/3 completed, 0 warning, 0 failed of 3/);
  }, 120_000);
  it("grants and withdraws a study for a peer through the admin API; bad grants get a sentence", async () => {
    const find = async () => {
      const dir = fs.mkdtempSync(path.join(work, "grant-find-"));
      await dcmtk("findscu", ["-S", "-X", "-od", dir, ...args("HOMEPACS", ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])]);
      const found = await Promise.all((await fsp.readdir(dir)).map((f) => readIdentifierFile(path.join(dir, f))));
      return found.map((f) => f["0020000D"]!.Value![0] as string).sort();
    };
    const base = `${relay.url}/api/admin/peers/HOMEPACS/studies`;
    const post = await fetch(base, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ studies: [secret.studyInstanceUID], expires: "1d" }) });
    expect(post.status).toBe(201);
    expect(await find()).toEqual([study.studyInstanceUID, secret.studyInstanceUID].sort());
    const list = (await (await fetch(base)).json()) as Array<{ studyInstanceUID: string; expiresAt: string | null }>;
    expect(list.find((g) => g.studyInstanceUID === secret.studyInstanceUID)!.expiresAt).not.toBeNull();
    expect((await fetch(`${base}/${secret.studyInstanceUID}`, { method: "DELETE" })).status).toBe(204);
    expect(await find()).toEqual([study.studyInstanceUID]);
    expect((await fetch(`${base}/${secret.studyInstanceUID}`, { method: "DELETE" })).status).toBe(404);
    const bad = await fetch(base, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ studies: ["not-a-uid"] }) });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/not a valid StudyInstanceUID/);
    const tooLong = await fetch(`${relay.url}/api/admin/peers/${"X".repeat(17)}/studies`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ studies: [study.studyInstanceUID] }) });
    expect(tooLong.status).toBe(400);
  });
});
