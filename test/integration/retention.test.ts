/**
 * Retention end to end, with the clock driven by the test: a relay deletes a study N days after every instance was
 * delivered (WADO-RS with a token; C-GET to a DIMSE peer), or after arrival by a transfer's own policy; a share link
 * does not count as delivery; the dry run lists without deleting; deletion removes index rows, blobs no other study
 * uses, the study's share links, the unfinished uploads of its transfers, and is audited. On disk + SQLite, and on MinIO + PostgreSQL.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import request from "supertest";
import { startTestRelay, sqliteAccess, type TestRelay } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { startMinio, type RunningMinio } from "../support/minio.ts";
import { startPostgres, type RunningPostgres } from "../support/postgres.ts";
import { generateStudy, newUid } from "../../scripts/lib/synthetic.ts";
import { instanceBlobKey } from "../../src/storage/blobStore.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");
const DAY = 86_400_000;

async function exercise(relay: TestRelay, blobExists: (key: string) => Promise<boolean>, dimse: boolean): Promise<void> {
  const admin = relay.initialAdminToken!;
  const mk = async (body: object) => (await request(relay.url).post("/api/admin/tokens").set(bearer(admin)).send(body)).body as { id: string; token: string };
  const homePacs = await mk({ scopes: ["read"], label: "home PACS" });
  const a = [...generateStudy({ instances: 2, seriesCount: 2, rows: 16, columns: 16 })];
  const b = [...generateStudy({ instances: 1, seriesCount: 1, rows: 16, columns: 16 })];
  const c = [...generateStudy({ instances: 1, seriesCount: 1, rows: 16, columns: 16 })];
  const studyA = a[0]!.studyInstanceUID, studyB = b[0]!.studyInstanceUID, studyC = c[0]!.studyInstanceUID;
  const up = dicomwebClient(relay.dicomwebUrl, bearer(admin));
  await up.storeInstances({ datasets: [...a, ...b].map((i) => toArrayBuffer(i.bytes)) });
  // study C comes as a transfer whose manifest keeps it 1 day after arrival, delivered or not
  const manifest = { retention: { afterArrivalDays: 1 }, instances: c.map((i) => ({ sopInstanceUID: i.sopInstanceUID, sha256: sha(i.bytes), size: i.bytes.length, studyInstanceUID: studyC })) };
  const created = await request(relay.url).post("/api/transfers").set(bearer(admin)).send(manifest);
  expect(created.status).toBe(201);
  await up.storeInstances({ datasets: c.map((i) => toArrayBuffer(i.bytes)) });
  // two uploads under way (100 of 1,000 bytes sent): one for C's transfer (goes with C), one for no transfer (stays)
  const unfinished = async (transferId: string | null) => {
    const meta = [`filename ${Buffer.from("c.dcm").toString("base64")}`, ...(transferId ? [`transferId ${Buffer.from(transferId).toString("base64")}`] : [])].join(",");
    const res = await fetch(`${relay.url}${relay.config.transfers.tusPath}`, {
      method: "POST",
      headers: { ...bearer(admin), "Tus-Resumable": "1.0.0", "Upload-Length": "1000", "Upload-Metadata": meta, "Content-Type": "application/offset+octet-stream" },
      body: new Uint8Array(100),
    });
    expect(res.status).toBe(201);
    const location = res.headers.get("location")!;
    return location.startsWith("http") ? location : `${relay.url}${location}`;
  };
  const uploadOfC = await unfinished((created.body as { id: string }).id);
  const uploadOfNone = await unfinished(null);
  const headStatus = async (url: string) => (await fetch(url, { method: "HEAD", headers: { ...bearer(admin), "Tus-Resumable": "1.0.0" } })).status;
  expect(await headStatus(uploadOfC)).toBe(200);
  const share = (await request(relay.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [studyA], expires: "30d" })).body as { id: string; url: string };
  const shareB = (await request(relay.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [studyB], expires: "30d" })).body as { url: string };

  const delivery = async (study: string) => (await request(relay.url).get(`/api/studies/${study}/delivery`).set(bearer(admin))).body;
  expect(await delivery(studyA)).toMatchObject({ instances: 2, deliveredAt: null, recipients: [], deleteAt: null, policy: { afterDeliveryDays: 7, source: "relay" } });
  expect((await request(relay.url).get(`/api/studies/${studyA}/delivery`).set(bearer(homePacs.token))).status).toBe(403);

  // the home PACS pulls one series: not yet delivered; then the whole study: delivered
  const home = dicomwebClient(relay.dicomwebUrl, bearer(homePacs.token));
  await home.retrieveSeries({ studyInstanceUID: studyA, seriesInstanceUID: a[0]!.seriesInstanceUID });
  await waitFor(async () => (await delivery(studyA)).recipients.length === 1);
  expect((await delivery(studyA)).deliveredAt).toBeNull();
  // metadata and a radiologist's share link are not deliveries
  await home.retrieveStudyMetadata({ studyInstanceUID: studyA });
  await dicomwebClient(shareB.url).retrieveStudy({ studyInstanceUID: studyB });
  await home.retrieveStudy({ studyInstanceUID: studyA });
  await waitFor(async () => (await delivery(studyA)).deliveredAt !== null);
  const reportA = await delivery(studyA);
  expect(reportA.recipients).toEqual([{ recipient: homePacs.id, via: "wado", instances: 2, first: expect.any(String), last: expect.any(String) }]);
  expect(Date.parse(reportA.deleteAt) - Date.parse(reportA.deliveredAt)).toBe(7 * DAY);
  expect((await delivery(studyB)).recipients).toEqual([]);

  if (dimse) {
    // a DIMSE peer takes study B by C-GET: delivered to ae:HOMEPACS
    const out = fs.mkdtempSync(path.join(os.tmpdir(), "ret-get-"));
    const got = await dcmtk("getscu", ["-S", "-od", out, "-aet", "HOMEPACS", "-aec", "RELAY", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${studyB}`, "127.0.0.1", String(relay.dimsePort)], { timeoutMs: 60_000 });
    expect(got.code, got.stderr).toBe(0);
    expect(fs.readdirSync(out)).toHaveLength(1);
    fs.rmSync(out, { recursive: true, force: true });
    await waitFor(async () => (await delivery(studyB)).deliveredAt !== null);
    expect((await delivery(studyB)).recipients).toEqual([expect.objectContaining({ recipient: "ae:HOMEPACS", via: "c-get", instances: 1 })]);
  }

  // now: nothing is due; the dry run through the API says so
  const now = await request(relay.url).post("/api/admin/retention/sweep").set(bearer(admin)).send({});
  expect(now.status).toBe(200);
  expect(now.body).toMatchObject({ dryRun: true, studies: [] });

  // 8 days later (the test drives the clock): A (7 days after delivery) and C (1 day after arrival) are due
  const later = new Date(Date.now() + 8 * DAY);
  const retention = relay.services.retention!;
  const dry = await retention.sweep({ dryRun: true, now: later });
  const due = dry.studies.map((s) => s.studyInstanceUID).sort();
  const expected = (dimse ? [studyA, studyB, studyC] : [studyA, studyC]).sort();
  expect(due).toEqual(expected);
  expect(dry.studies.find((s) => s.studyInstanceUID === studyC)!.reason).toMatch(/1 day\(s\) after it arrived/);
  // a dry run deletes nothing
  expect(await up.searchForInstances({ studyInstanceUID: studyA })).toHaveLength(2);

  const done = await retention.sweep({ dryRun: false, now: later });
  expect(done.studies.map((s) => s.studyInstanceUID).sort()).toEqual(expected);
  expect(done.studies.find((s) => s.studyInstanceUID === studyA)).toMatchObject({ instances: 2, deletedBlobs: 2, revokedShareLinks: 1 });
  // the unfinished upload of C's transfer went with C (its bytes are C's images); the other one stays
  expect(done.studies.find((s) => s.studyInstanceUID === studyC)).toMatchObject({ removedUploads: 1 });
  expect(done.studies.find((s) => s.studyInstanceUID === studyA)).toMatchObject({ removedUploads: 0 });
  expect(await headStatus(uploadOfC)).toBe(404);
  expect(await headStatus(uploadOfNone)).toBe(200);
  const audit = (await request(relay.url).get(`/api/admin/audit?study=${studyC}&action=retention.delete`).set(bearer(admin))).body as { entries: { detail: string }[] };
  expect(audit.entries.at(-1)!.detail).toMatch(/1 day\(s\) after it arrived.*1 instance\(s\).*1 unfinished upload\(s\) removed/);
  expect(await up.searchForInstances({ studyInstanceUID: studyA })).toHaveLength(0);
  expect(await up.searchForInstances({ studyInstanceUID: studyC })).toHaveLength(0);
  for (const i of [...a, ...c]) expect(await blobExists(instanceBlobKey(sha(i.bytes)))).toBe(false);
  if (!dimse) {
    // B was never delivered: it stays, bytes and all
    expect(await up.searchForInstances({ studyInstanceUID: studyB })).toHaveLength(1);
    expect(await blobExists(instanceBlobKey(sha(b[0]!.bytes)))).toBe(true);
  }
  // the share link of A went with it
  const viaShare = await request(share.url.replace(/\/dicom-web$/, "")).get("/dicom-web/studies");
  expect(viaShare.status).toBe(401);
  expect((await request(relay.url).get(`/api/studies/${studyA}/delivery`).set(bearer(admin))).status).toBe(404);
}

async function waitFor(check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("condition not met in time");
}

describe("retention on disk + SQLite", () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay({
      auth: { enabled: true },
      retention: { enabled: true, afterDeliveryDays: 7, afterArrivalDays: 0 },
      dimse: { enabled: true, port: 0, aeTitle: "RELAY", peers: [{ aeTitle: "HOMEPACS", host: "127.0.0.1", port: 0, studies: "all", store: false }] },
    });
  });
  afterAll(async () => {
    await relay?.close();
  });

  it("deletes after delivery (WADO-RS, C-GET) and after arrival, audited; never what was not delivered", async () => {
    const root = relay.services.config.storage.fs.root;
    await exercise(relay, async (key) => fs.existsSync(path.join(root, key)), true);
    const rows = sqliteAccess(relay).db.prepare("SELECT actor, detail FROM audit WHERE action = 'retention.delete'").all() as Array<{ actor: string; detail: string }>;
    expect(rows).toHaveLength(3);
    expect(rows.every((r) => r.actor === "system" && /instance\(s\), \d+ blob\(s\) removed, \d+ share link\(s\) revoked/.test(r.detail))).toBe(true);
  });

  it("a study's own policy (PUT) wins over the relay's; bad policies are refused with a sentence", async () => {
    const admin = relay.initialAdminToken!;
    const [x] = [...generateStudy({ instances: 1, seriesCount: 1, rows: 8, columns: 8 })];
    await dicomwebClient(relay.dicomwebUrl, bearer(admin)).storeInstances({ datasets: [toArrayBuffer(x!.bytes)] });
    const put = await request(relay.url).put(`/api/studies/${x!.studyInstanceUID}/retention`).set(bearer(admin)).send({ afterDeliveryDays: null, afterArrivalDays: 2 });
    expect(put.status).toBe(200);
    expect(put.body.policy).toEqual({ afterDeliveryDays: 7, afterArrivalDays: 2, source: "study" });
    expect(Date.parse(put.body.deleteAt) - Date.parse(put.body.arrival.lastArrivedAt)).toBe(2 * DAY);
    const bad = await request(relay.url).put(`/api/studies/${x!.studyInstanceUID}/retention`).set(bearer(admin)).send({ afterDeliveryDays: "soon" });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatch(/whole number of days/);
    expect((await request(relay.url).put(`/api/studies/${newUid()}/retention`).set(bearer(admin)).send({ afterArrivalDays: 1 })).status).toBe(404);
  });
});

describe("retention on MinIO + PostgreSQL", () => {
  let minio: RunningMinio;
  let pg: RunningPostgres;
  let relay: TestRelay;
  beforeAll(async () => {
    [minio, pg] = await Promise.all([startMinio(), startPostgres()]);
    relay = await startTestRelay({
      auth: { enabled: true },
      retention: { enabled: true, afterDeliveryDays: 7, afterArrivalDays: 0 },
      index: { kind: "postgres", postgres: { url: pg.url, poolSize: 3 } },
      storage: { kind: "s3", s3: { endpoint: minio.endpoint, accessKey: minio.accessKey, secretKey: minio.secretKey, bucket: "retention-it", prefix: "r/", createBucket: true } },
    });
  });
  afterAll(async () => {
    await relay?.close();
    await Promise.all([minio?.destroy(), pg?.stop()]);
  });

  it("deletes after delivery and after arrival; blobs leave the bucket", async () => {
    const store = relay.services.store;
    await exercise(relay, async (key) => (await store.stat(key)) !== null, false);
  });
});
