/**
 * Auto-forwarding of completed transfers to a real Orthanc home PACS: by DIMSE C-STORE and by STOW-RS, nothing
 * before the transfer is complete, retried while Orthanc is down, resumed after cut links without sending again
 * what Orthanc confirmed; status per study in GET /api/forwarding.
 */
import crypto from "node:crypto";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as tus from "tus-js-client";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { startOrthanc, type Orthanc } from "../support/orthanc.ts";
import { startFaultProxy, type FaultProxy } from "../support/faultProxy.ts";
import { generateStudy, type SyntheticInstance } from "../../scripts/lib/synthetic.ts";
import { createTarGzBundle } from "../../src/transfers/bundle.ts";
import type { ForwardItem, ForwardJob } from "../../src/forwarding/store.ts";

const RELAY_AE = "DICOM_RELAY";
const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

async function tgz(entries: SyntheticInstance[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const src = (async function* () {
    for (const e of entries) yield { name: `${e.sopInstanceUID}.dcm`, size: e.bytes.length, body: Readable.from([e.bytes]) };
  })();
  for await (const c of createTarGzBundle(src)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function tusUpload(endpoint: string, input: Buffer, metadata: Record<string, string>): Promise<void> {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(input, {
      endpoint,
      metadata,
      retryDelays: [0, 100, 300],
      storeFingerprintForResuming: false,
      onSuccess: () => resolve(),
      onError: reject,
    });
    upload.start();
  });
}

async function createTransfer(relay: TestRelay, insts: SyntheticInstance[]): Promise<string> {
  const res = await fetch(`${relay.url}/api/transfers`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      instances: insts.map((i) => ({ sopInstanceUID: i.sopInstanceUID, sha256: sha(i.bytes), size: i.bytes.length, studyInstanceUID: i.studyInstanceUID, seriesInstanceUID: i.seriesInstanceUID })),
    }),
  });
  expect(res.status).toBe(201);
  return ((await res.json()) as { id: string }).id;
}

async function jobs(relay: TestRelay, query: string): Promise<ForwardJob[]> {
  const res = await fetch(`${relay.url}/api/forwarding?${query}`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { jobs: ForwardJob[] }).jobs;
}

async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 90_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

describe("auto-forwarding to an Orthanc home PACS", () => {
  let orthanc: Orthanc;
  const relays: TestRelay[] = [];
  let proxy: FaultProxy | null = null;

  beforeAll(async () => {
    orthanc = await startOrthanc({ aeTitle: "HOMEPACS", relayAE: RELAY_AE });
  }, 90_000);

  afterAll(async () => {
    for (const r of relays) await r.dispose();
    await proxy?.close();
    await orthanc?.dispose();
  });

  const relayWith = async (rule: Record<string, unknown>, peerPort: number) => {
    const relay = await startTestRelay({
      dimse: { aeTitle: RELAY_AE, peers: [{ aeTitle: "HOMEPACS", host: "127.0.0.1", port: peerPort, studies: "granted", store: false }] },
      forwarding: { enabled: true, rules: [rule], retrySeconds: 0.2, maxRetrySeconds: 1, pollSeconds: 0.2 },
    } as never);
    relays.push(relay);
    return relay;
  };

  it("forwards by C-STORE only once the transfer is complete; status per study in the API", async () => {
    const relay = await relayWith({ name: "home-dimse", kind: "dimse", aeTitle: "HOMEPACS" }, orthanc.dicomPort);
    const study = [...generateStudy({ instances: 5, seriesCount: 1, modality: "CT", seed: 21, patientName: "Wang^XiaoDong=王^小东", charset: "GB18030" })];
    const uid = study[0]!.studyInstanceUID;
    const transferId = await createTransfer(relay, study);
    await tusUpload(`${relay.url}/api/uploads`, await tgz(study.slice(0, 3)), { transferId, filename: "part1.tgz" });
    // incomplete: nothing queued, nothing at the PACS
    await new Promise((r) => setTimeout(r, 600));
    expect(await jobs(relay, `transfer=${transferId}`)).toEqual([]);
    expect(await orthanc.studyInstances(uid)).toEqual([]);

    await tusUpload(`${relay.url}/api/uploads`, await tgz(study.slice(3)), { transferId, filename: "part2.tgz" });
    const [job] = await waitFor("the forwarding job to finish", async () => {
      const j = await jobs(relay, `study=${uid}`);
      return j.length && j[0]!.state !== "pending" ? j : null;
    });
    expect(job).toMatchObject({ rule: "home-dimse", transferId, studyInstanceUID: uid, state: "done", counts: { pending: 0, sent: 5, failed: 0 } });
    const atPacs = await orthanc.studyInstances(uid);
    expect(atPacs.map((i) => i.sopInstanceUID).sort()).toEqual(study.map((i) => i.sopInstanceUID).sort());
    expect(atPacs.every((i) => i.origin === "DicomProtocol")).toBe(true);

    const detail = await (await fetch(`${relay.url}/api/forwarding/jobs/${job!.id}`)).json() as ForwardJob & { instances: ForwardItem[] };
    expect(detail.instances.map((i) => [i.state, i.sends, i.status])).toEqual(study.map(() => ["sent", 1, 0]));
    const audit = await relay.services.access!.audit.query({ action: "forward.study" });
    expect(audit.at(-1)).toMatchObject({ outcome: "success", studyInstanceUID: uid });
  }, 120_000);

  it("forwards by STOW-RS, retried while Orthanc is down, completed once it is back, each instance sent once", async () => {
    const relay = await relayWith({ name: "home-stow", kind: "stow", url: orthanc.dicomwebUrl, token: "not-checked-by-this-orthanc" }, 0);
    const study = [...generateStudy({ instances: 6, seriesCount: 2, modality: "MR", seed: 33 })];
    const uid = study[0]!.studyInstanceUID;
    await orthanc.stop();
    try {
      const transferId = await createTransfer(relay, study);
      await tusUpload(`${relay.url}/api/uploads`, await tgz(study), { transferId, filename: "all.tgz" });
      const failing = await waitFor("retries while the PACS is down", async () => {
        const j = await jobs(relay, `study=${uid}`);
        return j.length && j[0]!.attempts >= 2 ? j[0]! : null;
      });
      expect(failing.state).toBe("pending");
      expect(failing.lastError).toMatch(/STOW-RS to http:\/\/127\.0\.0\.1:\d+ failed: .*ECONNREFUSED/);
      expect(failing.counts.sent).toBe(0);
    } finally {
      await orthanc.start();
    }
    const [job] = await waitFor("the job to complete after Orthanc came back", async () => {
      const j = await jobs(relay, `study=${uid}`);
      return j.length && j[0]!.state === "done" ? j : null;
    });
    expect(job!.counts).toEqual({ pending: 0, sent: 6, failed: 0 });
    const detail = await (await fetch(`${relay.url}/api/forwarding/jobs/${job!.id}`)).json() as { instances: ForwardItem[] };
    // the first instance was tried during the outage (never confirmed); none was sent twice after a confirmation
    expect(detail.instances.filter((i) => i.sends > 1).length).toBeLessThanOrEqual(1);
    expect(detail.instances.every((i) => i.state === "sent" && i.status === 200)).toBe(true);
    const atPacs = await orthanc.studyInstances(uid);
    expect(atPacs).toHaveLength(6);
    expect(atPacs.every((i) => i.origin !== "DicomProtocol")).toBe(true);
  }, 180_000);

  it("resumes a C-STORE forwarding cut mid-study by a failing link without sending confirmed instances again", async () => {
    const study = [...generateStudy({ instances: 8, seriesCount: 1, modality: "CT", seed: 55 })];
    const size = study[0]!.bytes.length;
    // each association is cut after about two and a half instances
    proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: orthanc.dicomPort }, resetAfterBytes: Math.floor(size * 2.5) });
    const relay = await relayWith({ name: "home-dimse-flaky", kind: "dimse", aeTitle: "HOMEPACS" }, proxy.port);
    const uid = study[0]!.studyInstanceUID;
    const transferId = await createTransfer(relay, study);
    await tusUpload(`${relay.url}/api/uploads`, await tgz(study), { transferId, filename: "all.tgz" });
    const [job] = await waitFor("the flaky forwarding to complete", async () => {
      const j = await jobs(relay, `study=${uid}`);
      return j.length && j[0]!.state !== "pending" ? j : null;
    }, 150_000);
    expect(job).toMatchObject({ state: "done", counts: { pending: 0, sent: 8, failed: 0 } });
    expect(job!.attempts).toBeGreaterThan(1);
    expect(proxy.stats().resets).toBeGreaterThan(0);
    const detail = await (await fetch(`${relay.url}/api/forwarding/jobs/${job!.id}`)).json() as { instances: ForwardItem[] };
    const sends = detail.instances.map((i) => i.sends);
    // only an instance cut in flight is sent again: never more sends than attempts that were cut, plus one each
    expect(sends.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(8 + job!.attempts - 1);
    expect(sends.every((n) => n <= 2)).toBe(true);
    const atPacs = await orthanc.studyInstances(uid);
    expect(atPacs.map((i) => i.sopInstanceUID).sort()).toEqual(study.map((i) => i.sopInstanceUID).sort());
  }, 180_000);
  it("answers bad status requests with a sentence", async () => {
    const relay = relays[0]!;
    const bad = await fetch(`${relay.url}/api/forwarding?state=bogus`);
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/state must be one of pending, done, failed/);
    expect((await fetch(`${relay.url}/api/forwarding/jobs/abc`)).status).toBe(400);
    expect((await fetch(`${relay.url}/api/forwarding/jobs/999999`)).status).toBe(404);
    const done = (await jobs(relay, "state=done"))[0]!;
    const retry = await fetch(`${relay.url}/api/forwarding/jobs/${done.id}/retry`, { method: "POST" });
    expect(retry.status).toBe(409);
  });
});
