/**
 * Patient Root Query/Retrieve (issue 16) against real peers: dcmtk findscu -P at PATIENT and STUDY levels,
 * getscu -P and movescu -P at PATIENT level, and Orthanc 1.10 as a DIMSE peer doing its patient-level query (which uses Patient
 * Root). Patients are told apart as the catalogue keeps them: the same PatientID with another name is another
 * patient, and anonymised studies (no ID, issuer or name) are never one patient. A peer with studies: "granted"
 * is answered from its granted studies only, and when that hides everything the log line says why.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig, type DeepPartial, type RelayConfig } from "../../src/config.ts";
import { startRelay, type RunningRelay } from "../../src/relay.ts";
import { createLogger } from "../../src/logger.ts";
import { dcmtk, startStorescp } from "../support/dcmtk.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { startOrthanc, orthancAvailable, type Orthanc } from "../support/orthanc.ts";
import { freePort } from "../../scripts/lib/net.ts";
import { generateStudy, type SyntheticStudyOptions } from "../../scripts/lib/synthetic.ts";
import { datasetOffset } from "../../src/dimse/dataset.ts";
import { readBareDataset } from "../../src/dicom/part10.ts";
import type { DicomJsonDataset } from "../../src/dicom/types.ts";

const RELAY_AE = "DICOM_RELAY";
const OPTS = { maxHeaderBytes: 1 << 20, bulkDataThreshold: 1 << 20 };
const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const value = (ds: DicomJsonDataset, tag: string): unknown => {
  const v = ds[tag]?.Value?.[0];
  return v && typeof v === "object" ? (v as { Alphabetic?: string }).Alphabetic : v;
};

async function readAnswers(dir: string): Promise<DicomJsonDataset[]> {
  const out: DicomJsonDataset[] = [];
  for (const f of (await fsp.readdir(dir)).sort()) {
    const b = await fsp.readFile(path.join(dir, f));
    out.push(await readBareDataset(b.subarray(datasetOffset(b.subarray(0, 64 * 1024))!), "1.2.840.10008.1.2.1", OPTS));
  }
  return out;
}

describe("Patient Root C-FIND / C-GET with dcmtk and Orthanc", () => {
  let relay: RunningRelay;
  let dataDir: string;
  let work: string;
  let orthanc: Orthanc;
  let logLines = "";
  const studies: Record<"janeA" | "janeB" | "rita" | "anon1" | "anon2", string> = { janeA: "", janeB: "", rita: "", anon1: "", anon2: "" };
  const args = (aet: string, extra: string[]) => ["-aet", aet, "-aec", RELAY_AE, ...extra, "127.0.0.1", String(relay.dimsePort)];
  let runs = 0;
  let homePort = 0;
  /** findscu -P (Patient Root), the answers read back */
  const findP = async (aet: string, keys: string[]): Promise<DicomJsonDataset[]> => {
    const out = path.join(work, `find-${++runs}`);
    await fsp.mkdir(out);
    const r = await dcmtk("findscu", ["-P", "-X", "-od", out, ...args(aet, keys.flatMap((k) => ["-k", k]))]);
    expect(r.code, r.stderr).toBe(0);
    return readAnswers(out);
  };

  beforeAll(async () => {
    if (!orthancAvailable()) throw new Error("Orthanc is not installed (scripts/test-prereqs.sh installs it)");
    work = fs.mkdtempSync(path.join(os.tmpdir(), "patient-root-"));
    dataDir = path.join(work, "data");
    const orthancPort = await freePort();
    homePort = await freePort();
    const config = loadConfig({
      env: {},
      overrides: {
        auth: { enabled: false },
        dataDir,
        server: { host: "127.0.0.1", port: 0 },
        log: { level: "info" },
        dimse: {
          enabled: true,
          port: 0,
          aeTitle: RELAY_AE,
          peers: [
            { aeTitle: "ADMINWS", host: "127.0.0.1", port: 0, studies: "all", store: false },
            { aeTitle: "HOMEPACS", host: "127.0.0.1", port: homePort, studies: "granted", store: false },
            { aeTitle: "ORTHANC", host: "127.0.0.1", port: orthancPort, studies: "all", store: false },
          ],
        },
      } as DeepPartial<RelayConfig>,
    });
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logLines += chunk.toString();
        cb();
      },
    });
    relay = await startRelay(config, { log: createLogger("info", sink) });
    const add = async (key: keyof typeof studies, o: Partial<SyntheticStudyOptions> & { instances: number }) => {
      const files = [...generateStudy({ modality: "CT", rows: 8, columns: 8, charset: "ISO_IR 100", ...o })];
      studies[key] = files[0]!.studyInstanceUID;
      await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: files.map((f) => toArrayBuffer(f.bytes)) });
    };
    await add("janeA", { instances: 3, seriesCount: 2, patientID: "P-1", patientName: "Doe^Jane", sex: "F", birthDate: "19700101", seed: 1 });
    await add("janeB", { instances: 2, patientID: "P-1", patientName: "Doe^Jane", sex: "F", birthDate: "19700101", seed: 2 });
    // the same ID written by another hospital for another person: another patient
    await add("rita", { instances: 1, patientID: "P-1", patientName: "Roe^Rita", sex: "F", birthDate: "19800202", seed: 3 });
    // anonymised exports: no ID, no name; the first has a sex, the second none
    await add("anon1", { instances: 1, patientID: "", patientName: "", sex: "F", birthDate: "19600303", seed: 4 });
    await add("anon2", { instances: 2, patientID: "", patientName: "", sex: "", birthDate: "", seed: 5 });
    orthanc = await startOrthanc({ aeTitle: "ORTHANC", relayAE: RELAY_AE, relayPort: relay.dimsePort, dicomPort: orthancPort });
  }, 120_000);

  afterAll(async () => {
    await orthanc?.dispose();
    await relay?.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it("findscu -P at PATIENT level: one answer per patient with its counts; the same ID with another name and anonymised studies stay apart", async () => {
    const answers = await findP("ADMINWS", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", "PatientSex", "PatientBirthDate", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances"]);
    const rows = answers.map((a) => [value(a, "00100020") ?? "", value(a, "00100010") ?? "", value(a, "00100040") ?? "", value(a, "00100030") ?? "", value(a, "00201200"), value(a, "00201202"), value(a, "00201204")]);
    expect(rows.sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)))).toEqual([
      ["", "", "", "", 1, 1, 2],
      ["", "", "F", "19600303", 1, 1, 1],
      ["P-1", "Doe^Jane", "F", "19700101", 2, 3, 5],
      ["P-1", "Roe^Rita", "F", "19800202", 1, 1, 1],
    ]);
    expect(answers.every((a) => value(a, "00080052") === "PATIENT")).toBe(true);

    // matching on the patient keys: a name wildcard, a sex
    const does = await findP("ADMINWS", ["QueryRetrieveLevel=PATIENT", "PatientName=doe*", "PatientID", "NumberOfPatientRelatedStudies"]);
    expect(does.map((a) => [value(a, "00100020"), value(a, "00201200")])).toEqual([["P-1", 2]]);
    // a key below the PATIENT level with a value is refused with a sentence, not ignored
    const refused = await dcmtk("findscu", ["-P", "-d", ...args("ADMINWS", ["-k", "QueryRetrieveLevel=PATIENT", "-k", "StudyDate=20240101"])]);
    expect(refused.stdout + refused.stderr).toMatch(/\(0000,0902\) LO \[StudyDate is a study key/);
  });

  it("findscu -P at STUDY level: the patient's keys are the upper-level keys", async () => {
    const p1 = await findP("ADMINWS", ["QueryRetrieveLevel=STUDY", "PatientID=P-1", "StudyInstanceUID", "NumberOfStudyRelatedInstances"]);
    expect(p1.map((a) => value(a, "0020000D")).sort()).toEqual([studies.janeA, studies.janeB, studies.rita].sort());
    const jane = await findP("ADMINWS", ["QueryRetrieveLevel=STUDY", "PatientID=P-1", "PatientName=Doe^Jane", "StudyInstanceUID"]);
    expect(jane.map((a) => value(a, "0020000D")).sort()).toEqual([studies.janeA, studies.janeB].sort());
    // Study Root has no PATIENT level: refused, naming the model that has
    const studyRoot = await dcmtk("findscu", ["-S", "-d", ...args("ADMINWS", ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID"])]);
    expect(studyRoot.stdout + studyRoot.stderr).toMatch(/\(0000,0902\) LO \[QueryRetrieveLevel .PATIENT. is not supported: use STUDY, SERIES/);
  });

  it("Orthanc's patient-level query (Patient Root) gets the patients, not a failure", async () => {
    const q = await fetch(`${orthanc.url}/modalities/relay/query`, {
      method: "POST",
      body: JSON.stringify({ Level: "Patient", Query: { PatientID: "P-1", PatientName: "", NumberOfPatientRelatedStudies: "" } }),
    });
    expect(q.status, await q.clone().text()).toBe(200);
    const { ID } = (await q.json()) as { ID: string };
    const indexes = await orthanc.get<string[]>(`/queries/${ID}/answers`);
    const answers = await Promise.all(indexes.map((i) => orthanc.get<Record<string, string>>(`/queries/${ID}/answers/${i}/content?simplify`)));
    expect(answers.map((a) => [a.PatientID, a.PatientName, a.NumberOfPatientRelatedStudies]).sort()).toEqual([["P-1", "Doe^Jane", "2"], ["P-1", "Roe^Rita", "1"]]);
  }, 60_000);

  it("a granted-only peer: nothing granted is explained in the log; then it counts and retrieves only what it may see (getscu -P, movescu -P at PATIENT level)", async () => {
    const none = await findP("HOMEPACS", ["QueryRetrieveLevel=PATIENT", "PatientID", "NumberOfPatientRelatedStudies"]);
    expect(none).toEqual([]);
    const line = logLines.split("\n").filter(Boolean).map((l) => JSON.parse(l) as { msg: string; callingAE?: string; level: unknown }).find((l) => l.callingAE === "HOMEPACS" && /C-FIND found nothing/.test(l.msg));
    expect(line?.msg).toBe('C-FIND found nothing; HOMEPACS sees only studies granted to it (dimse.peers[].studies = "granted") and none is granted: dicom-relay token share --study UID --peer HOMEPACS');

    relay.services.access!.peerGrants!.grant({ aeTitle: "HOMEPACS", studies: [studies.janeA], expiresAt: null, grantedBy: "test" });
    const visible = await findP("HOMEPACS", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"]);
    // Jane's other study and Rita (same ID) are not counted
    expect(visible.map((a) => [value(a, "00100020"), value(a, "00100010"), value(a, "00201200"), value(a, "00201204")])).toEqual([["P-1", "Doe^Jane", 1, 3]]);

    // a PATIENT level C-GET by PatientID: HOMEPACS sees one patient under P-1 and gets only the granted study
    const out = path.join(work, "get-home");
    await fsp.mkdir(out);
    const got = await dcmtk("getscu", ["-P", "-od", out, ...args("HOMEPACS", ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=P-1"])]);
    expect(got.code, got.stderr).toBe(0);
    const files = await readAnswers(out);
    expect(files.map((f) => value(f, "0020000D"))).toEqual([studies.janeA, studies.janeA, studies.janeA]);

    // the same by C-MOVE (movescu -P) into HOMEPACS's own storage SCP
    const moved = path.join(work, "move-home");
    await fsp.mkdir(moved);
    const scp = await startStorescp(homePort, "HOMEPACS", moved);
    try {
      const m = await dcmtk("movescu", ["-P", "-aem", "HOMEPACS", ...args("HOMEPACS", ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=P-1"])]);
      expect(m.code, m.stderr).toBe(0);
    } finally {
      await scp.stop();
    }
    expect((await readAnswers(moved)).map((f) => value(f, "0020000D"))).toEqual([studies.janeA, studies.janeA, studies.janeA]);

    // ADMINWS sees both people under P-1: a PATIENT level retrieve would mix patients, so it is refused
    const out2 = path.join(work, "get-admin");
    await fsp.mkdir(out2);
    const mixed = await dcmtk("getscu", ["-P", "-d", "-od", out2, ...args("ADMINWS", ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=P-1"])]);
    expect(mixed.stdout + mixed.stderr).toMatch(/\(0000,0902\) LO \[PatientID P-1 names 2 patients/);
    expect(await fsp.readdir(out2)).toEqual([]);
  }, 60_000);
});
