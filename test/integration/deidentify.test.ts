/**
 * A de-identified copy for a second opinion, end to end: a real relay (disk + SQLite) holds a study with
 * identifying attributes everywhere (patient, institution, people, free text naming the patient, a private block,
 * references between instances, an ultrasound-like instance with burned-in text); POST .../deidentify makes the copy
 * and a share link; dcmtk's dcmdump reads every copied file; no attribute of the profile's table is left with its
 * value; pixel data is byte for byte the original; UIDs are new and consistent (a series stays a series, a reference
 * names the copy of what it named); the mapping and the audit row stay on the relay.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import request from "supertest";
import { spawn } from "node:child_process";
import { startTestRelay, sqliteAccess, type TestRelay } from "../support/relay.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { parse } from "../support/fixtures.ts";
import { profileRules } from "../../src/deidentify/profile.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";

const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.resolve("bin/dicom-relay.js"), ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), 60_000);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
const CT = "1.2.840.10008.5.1.4.1.1.2";
const US = "1.2.840.10008.5.1.4.1.1.6.1";

describe("de-identified copy for a second opinion", () => {
  let relay: TestRelay;
  let admin: string;
  const study = newUid();
  const seriesA = newUid();
  const seriesB = newUid();
  const frameOfReference = newUid();
  const seriesC = newUid();
  const sops = [newUid(), newUid(), newUid(), newUid(), newUid()];
  const usSop = newUid();
  const patient = { patientName: "Zhang^San=张^三", patientID: "CN-0001", birthDate: "19650312", sex: "M", charset: "GB18030" as const };
  const common = {
    ...patient,
    studyInstanceUID: study,
    studyDate: "20240315",
    studyTime: "101500",
    accessionNumber: "ACC778899",
    studyDescription: "CT chest for Zhang CN-0001",
    referringPhysicianName: "Li^Wei",
    rows: 16,
    columns: 16,
    extra: {
      InstitutionName: "Peking Union Hospital",
      InstitutionAddress: "1 Shuaifuyuan, Beijing",
      OperatorsName: "Wang^Tech",
      PatientAddress: "Chaoyang District",
      OtherPatientIDs: "OLD-77",
      PatientAge: "058Y",
      PatientWeight: "72",
      StationName: "CT01",
      DeviceSerialNumber: "SN-123",
      FrameOfReferenceUID: frameOfReference,
      AcquisitionDate: "20240315",
      "00290010": { vr: "LO", Value: ["ACME 1.0"] },
      "00291010": { vr: "LO", Value: ["kept private value"] },
      "00291011": { vr: "LO", Value: ["Zhang San private note"] },
    },
  };
  const files = [
    makeInstance({ ...common, modality: "CT", sopClassUID: CT, seriesInstanceUID: seriesA, sopInstanceUID: sops[0], instanceNumber: 1, seriesDescription: "Axial Zhang" }),
    makeInstance({ ...common, modality: "CT", sopClassUID: CT, seriesInstanceUID: seriesA, sopInstanceUID: sops[1], instanceNumber: 2, seriesDescription: "Axial Zhang" }),
    makeInstance({
      ...common,
      modality: "CT",
      sopClassUID: CT,
      seriesInstanceUID: seriesB,
      sopInstanceUID: sops[2],
      instanceNumber: 1,
      seriesDescription: "Reformat",
      extra: { ...common.extra, ReferencedImageSequence: [{ ReferencedSOPClassUID: CT, ReferencedSOPInstanceUID: sops[0] }] },
    }),
    // another transfer syntax each: implicit VR (8-byte pixel element header) and RLE (encapsulated fragments)
    makeInstance({ ...common, modality: "CT", sopClassUID: CT, seriesInstanceUID: seriesC, sopInstanceUID: sops[3], instanceNumber: 1, seriesDescription: "Implicit", transferSyntaxUID: "1.2.840.10008.1.2" }),
    makeInstance({ ...common, modality: "CT", sopClassUID: CT, seriesInstanceUID: seriesC, sopInstanceUID: sops[4], instanceNumber: 2, seriesDescription: "Implicit", transferSyntaxUID: "1.2.840.10008.1.2.5" }),
    makeInstance({ ...common, modality: "US", sopClassUID: US, seriesInstanceUID: newUid(), sopInstanceUID: usSop, instanceNumber: 1, seriesDescription: "US" }),
  ];
  let outDir: string;

  beforeAll(async () => {
    relay = await startTestRelay({ auth: { enabled: true } });
    admin = relay.initialAdminToken!;
    for (const f of files) {
      const r = await request(relay.url).post("/dicom-web/studies").set(bearer(admin)).set("Content-Type", 'multipart/related; type="application/dicom"; boundary=B').send(Buffer.concat([Buffer.from("--B\r\nContent-Type: application/dicom\r\n\r\n"), f, Buffer.from("\r\n--B--\r\n")]));
      expect(r.status).toBe(200);
    }
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), "deid-"));
  });

  afterAll(async () => {
    await relay?.close();
    fs.rmSync(outDir, { recursive: true, force: true });
  });

  it("needs admin; refuses an unknown study and bad options with a sentence", async () => {
    const reader = (await request(relay.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["read", "upload"] })).body.token as string;
    expect((await request(relay.url).post(`/api/studies/${study}/deidentify`).set(bearer(reader)).send({})).status).toBe(403);
    const unknown = await request(relay.url).post(`/api/studies/${newUid()}/deidentify`).set(bearer(admin)).send({});
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toMatch(/holds no study/);
    const bad = await request(relay.url).post(`/api/studies/${study}/deidentify`).set(bearer(admin)).send({ pseudonym: "Zhang\\San" });
    expect(bad.status).toBe(400);
    expect((await request(relay.url).post(`/api/studies/${study}/deidentify`).set(bearer(admin)).send({ keepPrivateTags: ["00100010"] })).status).toBe(400);
  });

  it("makes the copy: table attributes gone, pixels unchanged, UIDs new and consistent, burned-in left out, share link works", async () => {
    const r = await request(relay.url)
      .post(`/api/studies/${study}/deidentify`)
      .set(bearer(admin))
      .send({ pseudonym: "SECOND-OPINION-7", dateOffsetDays: -100, keepPrivateTags: ["00291010"], share: { expires: "2d" } });
    expect(r.status).toBe(201);
    const out = r.body;
    expect(out.originalStudyInstanceUID).toBe(study);
    expect(out.studyInstanceUID).toMatch(/^2\.25\.\d+$/);
    expect(out.options).toEqual(["retainModifiedDates", "retainPatientCharacteristics", "cleanDescriptors", "keepPrivateTags"]);
    expect(out.copied).toBe(5);
    expect(out.leftOut).toEqual([expect.objectContaining({ sopInstanceUID: usSop, reason: expect.stringMatching(/pixels/) })]);
    expect(out.failed).toEqual([]);
    expect(out.share.url).toContain("/share/drs_");

    // the share link opens the copy (and only it)
    const shareRoot = out.share.url as string;
    const shareQido = await request(shareRoot.replace(/\/dicom-web$/, "")).get("/dicom-web/studies");
    expect(shareQido.status).toBe(200);
    expect(shareQido.body.map((s: Record<string, { Value: string[] }>) => s["0020000D"]!.Value[0])).toEqual([out.studyInstanceUID]);

    // retrieve every copied instance as Part-10 files
    const instances = (await request(relay.url).get(`/dicom-web/studies/${out.studyInstanceUID}/instances`).set(bearer(admin))).body as Array<Record<string, { Value: string[] }>>;
    expect(instances).toHaveLength(5);
    const copies: Buffer[] = [];
    for (const i of instances) {
      const series = i["0020000E"]!.Value[0]!;
      const sop = i["00080018"]!.Value[0]!;
      const got = await dicomwebClient(relay.dicomwebUrl, bearer(admin)).retrieveInstance({ studyInstanceUID: out.studyInstanceUID, seriesInstanceUID: series, sopInstanceUID: sop });
      copies.push(Buffer.from(got as ArrayBuffer));
    }

    const rules = profileRules();
    const originals = new Map(await Promise.all(files.slice(0, 5).map(async (f) => [(await parse(f)).sopInstanceUID, await parse(f)] as const)));
    const copySeries = new Set<string>();
    const copySops = new Set<string>();
    let reference: string | undefined;
    for (const [n, bytes] of copies.entries()) {
      const file = path.join(outDir, `copy${n}.dcm`);
      fs.writeFileSync(file, bytes);
      // an independent reader: dcmtk reads the copy without complaint
      const dump = await dcmtk("dcmdump", ["+U8", "+L", file]);
      expect(dump.code, dump.stderr).toBe(0);
      expect(dump.stderr).not.toMatch(/E:/);
      const text = dump.stdout;
      for (const leak of ["Zhang", "张", "CN-0001", "19650312", "ACC778899", "Li^Wei", "Peking", "Shuaifuyuan", "Wang^Tech", "Chaoyang", "OLD-77", "CT01", "SN-123", "private note", study, seriesA, seriesB, seriesC, frameOfReference, ...sops]) {
        expect(text, `copy ${n} still holds ${leak}`).not.toContain(leak);
      }
      const parsed = await parse(bytes);
      for (const [tag, rule] of rules) {
        const a = parsed.dataset[tag];
        if (!a) continue;
        // what the table removes is absent; what it empties has no value; dummies are the pseudonym
        if (rule.action === "X" && !rule.option) throw new Error(`${rule.keyword} should be removed`);
        if (rule.action === "Z" && !rule.option) expect(a.Value ?? [], rule.keyword).toEqual([]);
      }
      expect(parsed.dataset["00100010"]!.Value).toEqual([{ Alphabetic: "SECOND-OPINION-7" }]);
      expect(parsed.dataset["00100020"]!.Value).toEqual(["SECOND-OPINION-7"]);
      expect(parsed.dataset["00120062"]!.Value).toEqual(["YES"]);
      expect(parsed.dataset["00280303"]!.Value).toEqual(["MODIFIED"]);
      const codes = (parsed.dataset["00120064"]!.Value as Array<Record<string, { Value: string[] }>>).map((c) => c["00080100"]!.Value[0]);
      expect(codes).toEqual(["113100", "113107", "113108", "113105", "113111"]);
      // options: patient characteristics kept, dates shifted 100 days back, descriptors cleaned, one private kept
      expect(parsed.dataset["00101010"]!.Value).toEqual(["058Y"]);
      expect(parsed.dataset["00100040"]!.Value).toEqual(["M"]);
      expect(parsed.dataset["00080020"]!.Value).toEqual(["20231206"]);
      expect(parsed.dataset["00081030"]!.Value).toEqual(["CT chest for"]);
      // in implicit VR a private element has no VR in the file: readers see it as UN bytes
      const kept = parsed.dataset["00291010"]!;
      expect(kept.Value ?? [Buffer.from(kept.InlineBinary ?? "", "base64").toString("latin1").trim()]).toEqual(["kept private value"]);
      expect(parsed.dataset["00291011"]).toBeUndefined();
      // UIDs: new, and the same original always maps to the same copy
      expect(parsed.studyInstanceUID).toBe(out.studyInstanceUID);
      copySeries.add(parsed.seriesInstanceUID);
      copySops.add(parsed.sopInstanceUID);
      expect(parsed.dataset["00200052"]!.Value![0]).toMatch(/^2\.25\./);
      const ref = parsed.dataset["00081140"]?.Value?.[0] as Record<string, { Value: string[] }> | undefined;
      if (ref) reference = ref["00081155"]!.Value[0];
      // pixel data byte for byte
      const original = [...originals.values()].find((o) => o.dataset["00200013"]?.Value?.[0] === parsed.dataset["00200013"]?.Value?.[0] && o.dataset["0008103E"]?.Value?.[0]?.toString().split(" ")[0] === String(parsed.dataset["0008103E"]?.Value?.[0] ?? "").split(" ")[0])!;
      expect(parsed.transferSyntaxUID).toBe(original.transferSyntaxUID);
      const origBytes = files.find((f) => f.includes(Buffer.from(original.sopInstanceUID)))!;
      expect(bytes.subarray(parsed.pixelData!.offset, parsed.pixelData!.offset + parsed.pixelData!.length).equals(origBytes.subarray(original.pixelData!.offset, original.pixelData!.offset + original.pixelData!.length))).toBe(true);
    }
    expect(copySeries.size).toBe(3);
    expect(copySops.size).toBe(5);
    // the reformat's reference names the copy of the first axial image
    expect(reference && copySops.has(reference)).toBe(true);
    // the frame of reference stays one across the copy
    const frames = new Set(await Promise.all(copies.map(async (c) => (await parse(c)).dataset["00200052"]!.Value![0])));
    expect(frames.size).toBe(1);

    // the original is untouched and still there
    const orig = (await request(relay.url).get(`/dicom-web/studies/${study}/instances`).set(bearer(admin))).body;
    expect(orig).toHaveLength(6);

    // the mapping stays on the relay (admin only) and the copy is audited
    const list = await request(relay.url).get(`/api/studies/${study}/deidentified`).set(bearer(admin));
    expect(list.status).toBe(200);
    expect(list.body.map((d: { studyInstanceUID: string }) => d.studyInstanceUID)).toContain(out.studyInstanceUID);
    const rows = sqliteAccess(relay).db.prepare("SELECT action, detail, study_instance_uid FROM audit WHERE action = 'study.deidentify'").all() as Array<{ detail: string; study_instance_uid: string }>;
    expect(rows.some((x) => x.study_instance_uid === study && x.detail?.includes(out.studyInstanceUID) && x.detail.includes(out.share.id))).toBe(true);
  });

  it("without the options: dates and characteristics go, burned-in instances come when asked for", async () => {
    const r = await request(relay.url).post(`/api/studies/${study}/deidentify`).set(bearer(admin)).send({ retainModifiedDates: false, retainPatientCharacteristics: false, cleanDescriptors: false, includeBurnedIn: true });
    expect(r.status).toBe(201);
    expect(r.body.copied).toBe(6);
    expect(r.body.pseudonym).toMatch(/^ANON-[0-9A-F]{8}$/);
    expect(r.body.dateOffsetDays).toBeNull();
    const meta = (await request(relay.url).get(`/dicom-web/studies/${r.body.studyInstanceUID}/metadata`).set(bearer(admin))).body as Array<Record<string, { Value?: unknown[] }>>;
    expect(meta).toHaveLength(6);
    for (const m of meta) {
      expect(m["00080020"]?.Value ?? []).toEqual([]);
      expect(m["00101010"]).toBeUndefined();
      expect(m["00081030"]).toBeUndefined();
      expect(m["00280303"]!.Value).toEqual(["REMOVED"]);
    }
  });

  it("the CLI asks the running relay for a copy and prints its share link; a read token is refused with a sentence", async () => {
    const r = await cli(["deidentify", study, "--to", relay.url, "--pseudonym", "CLI-CASE", "--share", "1d"], { DICOM_RELAY_TOKEN: admin });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stdout).toMatch(/De-identified copy 2\.25\.\d+ \(patient "CLI-CASE"\): 5 instance\(s\) copied\./);
    expect(r.stdout).toMatch(/left out .*pixels/);
    expect(r.stdout).toMatch(/Share link \(expires .*\): http:\/\/127\.0\.0\.1:\d+\/share\/drs_/);
    const reader = (await request(relay.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["read"] })).body.token as string;
    const refused = await cli(["deidentify", study, "--to", relay.url, "--token", reader]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/refused \(403\).*admin scope/);
  });
});
