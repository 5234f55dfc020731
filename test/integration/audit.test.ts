/**
 * The audit log end to end: who read, stored or deleted which study, from where, with what outcome; failed
 * authentications recorded as failures; append-only (triggers) and tamper-evident (hash chain); queried by
 * study and time through the admin API and the CLI.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import request from "supertest";
import { startTestRelay, type TestRelay, sqliteAccess } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { generateStudy, newUid } from "../../scripts/lib/synthetic.ts";
import { AuditLog, auditTime, type AuditRecord } from "../../src/access/audit.ts";
import { openAccessDb } from "../../src/access/db.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const BIN = path.resolve("bin/dicom-relay.js");

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), 30_000);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("audit log", () => {
  let relay: TestRelay;
  let admin: string;
  let adminId: string;
  let reader: { id: string; token: string };
  let uploader: { id: string; token: string };
  const study = newUid();
  const other = newUid();
  const inst = [...generateStudy({ instances: 2, seriesCount: 1, rows: 16, columns: 16, studyInstanceUID: study })];
  const otherInst = [...generateStudy({ instances: 1, seriesCount: 1, rows: 16, columns: 16, studyInstanceUID: other })];
  const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
  let startedAt: string;

  beforeAll(async () => {
    startedAt = new Date(Date.now() - 1000).toISOString();
    relay = await startTestRelay({ auth: { enabled: true } });
    admin = relay.initialAdminToken!;
    adminId = admin.slice(4, 20);
    const mk = async (scopes: string[]) => (await request(relay.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes })).body as { id: string; token: string };
    reader = await mk(["read"]);
    uploader = await mk(["upload"]);
    await dicomwebClient(relay.dicomwebUrl, bearer(uploader.token)).storeInstances({ datasets: [...inst, ...otherInst].map((i) => toArrayBuffer(i.bytes)) });
    const readClient = dicomwebClient(relay.dicomwebUrl, bearer(reader.token));
    await readClient.retrieveStudyMetadata({ studyInstanceUID: study });
    await readClient.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: inst[0]!.seriesInstanceUID, sopInstanceUID: inst[0]!.sopInstanceUID });
    await request(relay.url).get("/dicom-web/studies").set(bearer("drt_0123456789abcdef_" + "A".repeat(43)));
    await request(relay.url).get(`/dicom-web/studies/${study}/metadata`);
    await request(relay.url).delete(`/dicom-web/studies/${study}`).set(bearer(reader.token));
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  const entries = (q: Parameters<AuditLog["query"]>[0] = {}): AuditRecord[] => sqliteAccess(relay).audit.query(q);

  it("records each stored instance with its UIDs, under the uploading token, from its address", () => {
    const stored = entries({ action: "instance.store" });
    expect(stored.map((e) => e.sopInstanceUID).sort()).toEqual([...inst, ...otherInst].map((i) => i.sopInstanceUID).sort());
    for (const e of stored) {
      expect(e.actor).toBe(uploader.id);
      expect(e.outcome).toBe("success");
      expect(e.remoteAddr).toMatch(/127\.0\.0\.1/);
      expect(e.route).toBe("/dicom-web/studies");
      expect(e.detail).toMatch(/^stored; stow/);
    }
    const stow = entries({ action: "dicomweb.stow" });
    expect(stow).toHaveLength(1);
    expect(stow[0]).toMatchObject({ actor: uploader.id, method: "POST", status: 200, outcome: "success" });
  });

  it("records reads (WADO metadata and instance) with the study, series and instance UIDs", () => {
    const reads = entries({ study, actor: reader.id, action: "dicomweb.wado" });
    expect(reads.map((r) => r.route)).toEqual([
      `/dicom-web/studies/${study}/metadata`,
      `/dicom-web/studies/${study}/series/${inst[0]!.seriesInstanceUID}/instances/${inst[0]!.sopInstanceUID}`,
    ]);
    expect(reads[1]).toMatchObject({ seriesInstanceUID: inst[0]!.seriesInstanceUID, sopInstanceUID: inst[0]!.sopInstanceUID, status: 200, outcome: "success", method: "GET" });
    expect(Date.parse(reads[0]!.at)).toBeGreaterThanOrEqual(Date.parse(startedAt));
  });

  it("records failed authentications and refusals as failures, with the token id when there was one", () => {
    const fails = entries({ outcome: "failure" });
    expect(fails.find((f) => f.action === "auth" && f.actor === "0123456789abcdef")).toMatchObject({ status: 401, detail: expect.stringMatching(/not known/) });
    expect(fails.find((f) => f.action === "auth" && f.actor === "unauthenticated" && f.studyInstanceUID === null && f.route === `/dicom-web/studies/${study}/metadata`)).toMatchObject({ status: 401 });
    expect(fails.find((f) => f.action === "dicomweb.delete")).toMatchObject({ actor: reader.id, status: 403, studyInstanceUID: study, detail: expect.stringMatching(/lacks the admin scope/) });
  });

  it("records token and share actions", async () => {
    const share = await request(relay.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [study], expires: "1h" });
    await request(relay.url).delete(`/api/admin/shares/${share.body.id}`).set(bearer(admin));
    await request(`${relay.url}/share/${share.body.token}/dicom-web`).get("/studies");
    const created = entries({ action: "token.create" });
    expect(created.map((e) => e.actor)).toEqual(["system", adminId, adminId]);
    expect(created[1]!.detail).toContain(`created token ${reader.id} scopes read`);
    expect(entries({ action: "share.create" })[0]).toMatchObject({ actor: adminId, studyInstanceUID: study, status: 201 });
    expect(entries({ action: "share.revoke" })[0]).toMatchObject({ actor: adminId, outcome: "success" });
    const refused = entries({ actor: share.body.id, action: "auth" });
    expect(refused[0]).toMatchObject({ outcome: "failure", status: 401 });
    // the share token is never written to the audit log, only its id
    expect(JSON.stringify(entries())).not.toContain(share.body.token.slice(21));
  });

  it("every refused /share request leaves a failure row with a reason and the URL redacted (bad percent-encoding, unknown or revoked link)", async () => {
    const live = (await request(relay.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [study], expires: "1h" })).body as { id: string; token: string };
    const revoked = (await request(relay.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [study], expires: "1h" })).body as { id: string; token: string };
    await request(relay.url).delete(`/api/admin/shares/${revoked.id}`).set(bearer(admin));
    const unknown = `drs_fedcba9876543210_${"B".repeat(43)}`;
    const secret = (t: string) => t.slice(21);
    const probes: { path: string; status: number; secrets: string[] }[] = [
      // bad percent-encoding where the link goes, around a real link's secret, and after a valid link
      { path: `/share/%ZZ${live.token}/dicom-web/studies`, status: 400, secrets: [secret(live.token)] },
      { path: `/share/%ZZ${live.token}/viewer`, status: 400, secrets: [secret(live.token)] },
      { path: `/share/${live.token}%ZZ/dicom-web/studies`, status: 400, secrets: [secret(live.token)] },
      { path: `/share/${live.token}/dicom-web/studies/%ZZ/metadata`, status: 400, secrets: [secret(live.token)] },
      { path: `/share/${unknown}/dicom-web/studies`, status: 401, secrets: [secret(unknown)] },
      { path: `/share/${unknown}/viewer`, status: 401, secrets: [secret(unknown)] },
      { path: `/share/${revoked.token}/dicom-web/studies`, status: 401, secrets: [secret(revoked.token)] },
      { path: `/share/${revoked.token}/viewer`, status: 401, secrets: [secret(revoked.token)] },
    ];
    for (const probe of probes) {
      const before = (sqliteAccess(relay).db.prepare("SELECT MAX(seq) FROM audit").pluck().get() as number | null) ?? 0;
      // raw HTTP: fetch and supertest would re-encode a bad escape
      const status = await new Promise<number>((resolve, reject) => {
        const url = new URL(relay.url);
        const req = http.request({ host: url.hostname, port: url.port, path: probe.path, method: "GET" }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode!));
        });
        req.on("error", reject);
        req.end();
      });
      expect(status, probe.path).toBe(probe.status);
      await sqliteAccess(relay).audit.flush();
      const rows = sqliteAccess(relay).audit.query({ afterSeq: before });
      const row = rows.find((r) => r.route?.startsWith("/share/"));
      expect(row, `${probe.path}: no audit row`).toBeDefined();
      expect(row, probe.path).toMatchObject({ outcome: "failure", status: probe.status, method: "GET" });
      expect(row!.detail, probe.path).toMatch(/\w+ \w+/);
      for (const s of probe.secrets) expect(JSON.stringify(rows), probe.path).not.toContain(s);
    }
  });

  it("is queryable by study and time through the admin API (admin scope only)", async () => {
    const res = await request(relay.url).get(`/api/admin/audit?study=${study}&since=1h`).set(bearer(admin));
    expect(res.status).toBe(200);
    const got = res.body.entries as AuditRecord[];
    expect(got.length).toBeGreaterThan(3);
    expect(got.every((e) => e.studyInstanceUID === study)).toBe(true);
    expect(got.some((e) => e.studyInstanceUID === other)).toBe(false);
    const later = await request(relay.url).get(`/api/admin/audit?study=${study}&since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`).set(bearer(admin));
    expect(later.body.entries).toEqual([]);
    const before = await request(relay.url).get(`/api/admin/audit?until=${encodeURIComponent(startedAt)}`).set(bearer(admin));
    expect(before.body.entries).toEqual([]);
    const paged = await request(relay.url).get("/api/admin/audit?limit=2").set(bearer(admin));
    expect(paged.body.entries).toHaveLength(2);
    expect(paged.body.next).toEqual({ afterSeq: paged.body.entries[1].seq });
    expect((await request(relay.url).get("/api/admin/audit?since=yesterday").set(bearer(admin))).status).toBe(400);
    expect((await request(relay.url).get("/api/admin/audit").set(bearer(reader.token))).status).toBe(403);
    // reading the audit log is itself audited
    expect(entries({ action: "audit.query", actor: adminId }).length).toBeGreaterThan(0);
  });

  it("is append-only: UPDATE and DELETE are refused by the database itself", () => {
    const db = sqliteAccess(relay).db;
    expect(() => db.prepare("UPDATE audit SET actor = 'someone else'").run()).toThrow(/append-only/);
    expect(() => db.prepare("DELETE FROM audit").run()).toThrow(/append-only/);
    expect(sqliteAccess(relay).audit.verifyChain()).toMatchObject({ ok: true, firstBadSeq: null });
  });

  it("the CLI queries by study and time, and --verify finds rows altered behind the relay's back", async () => {
    const env = { DICOM_RELAY_DATA_DIR: relay.dataDir, DICOM_RELAY_LOG_LEVEL: "silent" };
    const out = await runCli(["audit", "--study", study, "--since", "1h", "--json"], env);
    expect(out.code, out.stderr).toBe(0);
    const rows = JSON.parse(out.stdout) as AuditRecord[];
    expect(rows.length).toBeGreaterThan(3);
    expect(rows.every((r) => r.studyInstanceUID === study)).toBe(true);
    const text = await runCli(["audit", "--study", study, "--action", "dicomweb.wado"], env);
    expect(text.stdout).toMatch(new RegExp(`ok  +${reader.id}  dicomweb\\.wado  GET /dicom-web/studies/${study.replace(/\./g, "\\.")}/metadata  200`));
    expect((await runCli(["audit", "--since", "last week"], env)).code).toBe(1);
    expect((await runCli(["audit", "--verify"], env)).stdout).toMatch(/intact: \d+ entries, hash chain verified; newest hash [0-9a-f]{64}/);

    // someone with the file drops the triggers and edits a row: the chain shows it
    const copy = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "audit-copy-")), "access.sqlite");
    await sqliteAccess(relay).db.backup(copy);
    const raw = new Database(copy);
    raw.exec("DROP TRIGGER audit_no_update");
    raw.prepare("UPDATE audit SET actor = 'nobody' WHERE seq = 3").run();
    raw.close();
    const tampered = openAccessDb(copy);
    expect(new AuditLog(tampered).verifyChain()).toMatchObject({ ok: false, firstBadSeq: 3 });
    tampered.close();
    fs.rmSync(path.dirname(copy), { recursive: true, force: true });
  }, 60_000);

  it("parses audit times: durations ago and ISO dates", () => {
    const now = new Date("2030-05-01T12:00:00Z");
    expect(auditTime("24h", now)).toBe("2030-04-30T12:00:00.000Z");
    expect(auditTime("2030-04-01", now)).toBe("2030-04-01T00:00:00.000Z");
    expect(() => auditTime("soon", now)).toThrow(/not a time/);
  });
});
