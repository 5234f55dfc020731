/**
 * Auto-forwarding of completed transfers to a real Orthanc home PACS: by DIMSE C-STORE and by STOW-RS, nothing
 * before the transfer is complete, retried while Orthanc is down, resumed after cut links without sending again
 * what Orthanc confirmed; status per study in GET /api/forwarding. STOW-RS with a bearer token to a second relay
 * with access control on: the right upload token delivers, a wrong one is refused and nothing arrives.
 */
import crypto from "node:crypto";
import http from "node:http";
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

/** The study's forwarding jobs once none is pending any more (waited for up to timeoutMs). */
function settledJobs(relay: TestRelay, uid: string, what: string, timeoutMs?: number): Promise<ForwardJob[]> {
  return waitFor(what, async () => {
    const j = await jobs(relay, `study=${uid}`);
    return j.length && j[0]!.state !== "pending" ? j : null;
  }, timeoutMs);
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
    const [job] = await settledJobs(relay, uid, "the forwarding job to finish");
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
    // the first instances (one per connection, forwarding.concurrency) were tried during the outage (never
    // confirmed); none was sent twice after a confirmation
    expect(detail.instances.filter((i) => i.sends > 1).length).toBeLessThanOrEqual(relay.config.forwarding.concurrency);
    expect(detail.instances.filter((i) => i.sends > 1).length).toBeLessThan(6);
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
    const [job] = await settledJobs(relay, uid, "the flaky forwarding to complete", 150_000);
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

describe("auto-forwarding by STOW-RS to a second relay that checks bearer tokens", () => {
  let home: TestRelay;
  let uploadToken: string;
  let uploadTokenId: string;
  let readToken: string;
  let readOnlyForUpload: string;
  const relays: TestRelay[] = [];
  const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });

  const mkToken = async (scopes: string[]) => {
    const res = await fetch(`${home.url}/api/admin/tokens`, {
      method: "POST",
      headers: { ...bearer(home.initialAdminToken!), "Content-Type": "application/json" },
      body: JSON.stringify({ scopes, label: `forwarding-${scopes.join("+")}` }),
    });
    expect(res.status).toBe(201);
    return (await res.json()) as { id: string; token: string };
  };

  /** the SOPInstanceUIDs the home relay holds for a study, asked by QIDO-RS with a read token */
  const atHome = async (uid: string): Promise<string[]> => {
    const res = await fetch(`${home.dicomwebUrl}/studies/${uid}/instances`, { headers: { ...bearer(readToken), Accept: "application/dicom+json" } });
    if (res.status === 204 || res.status === 404) return [];
    expect(res.status).toBe(200);
    const body = (await res.json()) as Array<Record<string, { Value?: unknown[] }>>;
    return body.map((d) => d["00080018"]!.Value![0] as string).sort();
  };

  const forwarder = async (rules: Array<Record<string, unknown>>) => {
    const relay = await startTestRelay({
      dimse: { aeTitle: RELAY_AE },
      forwarding: { enabled: true, rules, retrySeconds: 0.2, maxRetrySeconds: 1, pollSeconds: 0.2, requestTimeoutSeconds: 10 },
    } as never);
    relays.push(relay);
    return relay;
  };

  beforeAll(async () => {
    home = await startTestRelay({ auth: { enabled: true } });
    expect(home.initialAdminToken).toMatch(/^drt_/);
    const up = await mkToken(["upload"]);
    uploadToken = up.token;
    uploadTokenId = up.id;
    readToken = (await mkToken(["read"])).token;
    readOnlyForUpload = (await mkToken(["read"])).token;
  }, 60_000);

  afterAll(async () => {
    for (const r of relays) await r.dispose();
    await home?.dispose();
  });

  it("with the right upload token the study arrives at the home relay (the token reached it: its audit names the token)", async () => {
    const relay = await forwarder([{ name: "home-relay", kind: "stow", url: home.dicomwebUrl, token: uploadToken }]);
    const study = [...generateStudy({ instances: 4, seriesCount: 2, modality: "CT", seed: 71, rows: 32, columns: 32 })];
    const uid = study[0]!.studyInstanceUID;
    expect(await atHome(uid)).toEqual([]);
    const transferId = await createTransfer(relay, study);
    await tusUpload(`${relay.url}/api/uploads`, await tgz(study), { transferId, filename: "all.tgz" });
    const [job] = await settledJobs(relay, uid, "the forwarding job to finish", 60_000);
    expect(job, JSON.stringify(job)).toMatchObject({ rule: "home-relay", state: "done", lastError: null, counts: { pending: 0, sent: 4, failed: 0 } });
    expect(await atHome(uid)).toEqual(study.map((i) => i.sopInstanceUID).sort());
    // the stored bytes at home are the bytes sent
    for (const i of study) {
      const loc = await home.services.index.getInstance(i.sopInstanceUID);
      expect(loc?.sha256).toBe(sha(i.bytes));
    }
    const stows = (await home.services.access!.audit.query({ action: "dicomweb.stow" })).filter((a) => a.method === "POST");
    expect(stows.length).toBe(4);
    expect(stows.every((a) => a.actor === uploadTokenId && a.outcome === "success" && a.status === 200)).toBe(true);
  }, 90_000);

  it("with a wrong token (bad secret, or a token without the upload scope) the status shows the refusal in a sentence and nothing arrives", async () => {
    const tampered = uploadToken.slice(0, -1) + (uploadToken.endsWith("a") ? "b" : "a");
    const relay = await forwarder([
      { name: "home-bad-secret", kind: "stow", url: home.dicomwebUrl, token: tampered },
      { name: "home-read-only", kind: "stow", url: home.dicomwebUrl, token: readOnlyForUpload },
    ]);
    const study = [...generateStudy({ instances: 3, seriesCount: 1, modality: "MR", seed: 72, rows: 32, columns: 32 })];
    const uid = study[0]!.studyInstanceUID;
    const transferId = await createTransfer(relay, study);
    await tusUpload(`${relay.url}/api/uploads`, await tgz(study), { transferId, filename: "all.tgz" });
    const failing = await waitFor("both jobs to have failed at least twice", async () => {
      const j = await jobs(relay, `study=${uid}`);
      return j.length === 2 && j.every((x) => x.attempts >= 2 && x.lastError) ? j : null;
    }, 60_000);
    const byRule = new Map(failing.map((j) => [j.rule, j]));
    const badSecret = byRule.get("home-bad-secret")!;
    const readOnly = byRule.get("home-read-only")!;
    for (const j of [badSecret, readOnly]) {
      // not done: refused by authentication, the job keeps its instances (an administrator can fix the token)
      expect(j.state, j.rule).toBe("pending");
      expect(j.counts.pending, j.rule).toBe(3);
      expect(j.counts.sent, j.rule).toBe(0);
    }
    expect(badSecret.lastError).toMatch(/^STOW-RS answered 401: .*the token was refused/);
    expect(readOnly.lastError).toMatch(/^STOW-RS answered 403: .*this token lacks the upload scope/);
    // the secret never leaks into the status
    expect(badSecret.lastError).not.toContain(tampered);
    expect(await atHome(uid)).toEqual([]);
    for (const i of study) expect(await home.services.index.getInstance(i.sopInstanceUID)).toBeNull();
    const refusals = await home.services.access!.audit.query({ outcome: "failure" });
    expect(refusals.some((a) => a.action === "auth" && a.status === 401 && a.method === "POST")).toBe(true);
    expect(refusals.some((a) => a.action === "dicomweb.stow" && a.status === 403)).toBe(true);
  }, 90_000);

  it("sends over several connections at once (forwarding.concurrency), every instance arrives byte-exact, a failed one is retried alone", async () => {
    // a counting receiver in front of the home relay: holds each request 150 ms (a long link), counts requests and
    // sockets in flight at once, and answers the very first request 503 without passing it on
    let inFlight = 0;
    let maxInFlight = 0;
    let requests = 0;
    const sockets = new Set<unknown>();
    const target = new URL(home.dicomwebUrl);
    const counter = http.createServer((req, res) => {
      sockets.add(req.socket);
      requests++;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      const done = () => inFlight--;
      if (requests === 1) {
        req.resume();
        req.on("end", () => setTimeout(() => (done(), res.writeHead(503, { "Retry-After": "1" }).end("busy")), 150));
        return;
      }
      setTimeout(() => {
        const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
          r.on("end", done);
        });
        up.on("error", () => (done(), res.destroy()));
        req.pipe(up);
      }, 150);
    });
    await new Promise<void>((r) => counter.listen(0, "127.0.0.1", () => r()));
    try {
      const port = (counter.address() as { port: number }).port;
      const relay = await forwarder([{ name: "home-parallel", kind: "stow", url: `http://127.0.0.1:${port}${target.pathname}`, token: uploadToken }]);
      expect(relay.config.forwarding.concurrency).toBe(4);
      const study = [...generateStudy({ instances: 12, seriesCount: 2, modality: "CT", seed: 73, rows: 32, columns: 32 })];
      const uid = study[0]!.studyInstanceUID;
      const transferId = await createTransfer(relay, study);
      await tusUpload(`${relay.url}/api/uploads`, await tgz(study), { transferId, filename: "all.tgz" });
      const [job] = await settledJobs(relay, uid, "the forwarding job to finish", 60_000);
      expect(job, JSON.stringify(job)).toMatchObject({ state: "done", counts: { pending: 0, sent: 12, failed: 0 } });
      expect(job!.attempts).toBeGreaterThanOrEqual(2); // the 503 made a second attempt
      expect(maxInFlight).toBeGreaterThan(1);
      expect(sockets.size).toBeGreaterThan(1);
      // 12 instances + the one answered 503 sent again: nothing else twice
      expect(requests).toBe(13);
      expect(await atHome(uid)).toEqual(study.map((i) => i.sopInstanceUID).sort());
      for (const i of study) expect((await home.services.index.getInstance(i.sopInstanceUID))?.sha256).toBe(sha(i.bytes));
    } finally {
      counter.closeAllConnections();
      await new Promise((r) => counter.close(r));
    }
  }, 90_000);
});
