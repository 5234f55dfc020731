/**
 * Several nodes: two relay processes (`dicom-relay serve`, configured by environment variables, on two
 * 127.0.0.1 ports) over one real PostgreSQL index and one real MinIO bucket. What one node stores, the other
 * serves at once; the same instance sent to both at the same moment is stored once; a transfer is complete
 * and its receipt valid whichever node got which instance; a node SIGKILLed mid-ingest leaves no index row
 * without its blob and the sender's retry on the other node completes; PostgreSQL down -> 503, back -> works.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import http from "node:http";
import * as tus from "tus-js-client";
import { startPostgres, runSql, type RunningPostgres } from "../support/postgres.ts";
import { startMinio, type RunningMinio } from "../support/minio.ts";
import { startRelayProcess, runCli, removeDataDir, type RelayProcess } from "../support/relayProcess.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { generateStudy, makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { verifyReceipt } from "../../src/transfers/receipts.ts";
import type { TransferView } from "../../src/transfers/transferService.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";

const BOUNDARY = "cluster-boundary";
const STOW_TYPE = `multipart/related; type="application/dicom"; boundary=${BOUNDARY}`;
const stowBody = (parts: Buffer[]) =>
  Buffer.concat([...parts.flatMap((p) => [Buffer.from(`--${BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n`), p, Buffer.from("\r\n")]), Buffer.from(`--${BOUNDARY}--\r\n`)]);
const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");
const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
type Json = Record<string, { vr: string; Value?: unknown[] }>;
type Inst = { sopInstanceUID: string; seriesInstanceUID: string; studyInstanceUID: string; bytes: Buffer };

async function stow(node: RelayProcess, parts: Buffer[]): Promise<{ status: number; headers: Headers; body: Json }> {
  const res = await fetch(`${node.dicomwebUrl}/studies`, { method: "POST", headers: { "Content-Type": STOW_TYPE, Accept: "application/dicom+json" }, body: stowBody(parts) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? (JSON.parse(text) as Json) : {} };
}

/** Referenced SOP Sequence items of a STOW response, as [SOPInstanceUID, comment or null]. */
const referenced = (body: Json) =>
  ((body["00081199"]?.Value ?? []) as Json[]).map((i) => [i["00081155"]!.Value![0] as string, (i["00000902"]?.Value?.[0] as string) ?? null] as const);

async function qidoInstances(node: RelayProcess, study: string): Promise<string[]> {
  const res = await fetch(`${node.dicomwebUrl}/studies/${study}/instances`, { headers: { Accept: "application/dicom+json" } });
  if (res.status === 204 || res.status === 404) return [];
  expect(res.status).toBe(200);
  return ((await res.json()) as Json[]).map((d) => d["00080018"]!.Value![0] as string).sort();
}

async function api(node: RelayProcess, method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(node.url + path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

function tusUpload(endpoint: string, input: Buffer, metadata: Record<string, string>): Promise<UploadResult> {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(input, {
      endpoint,
      metadata,
      retryDelays: [0, 200, 500],
      storeFingerprintForResuming: false,
      onSuccess: ({ lastResponse }) => resolve(JSON.parse(lastResponse.getBody()) as UploadResult),
      onError: reject,
    });
    upload.start();
  });
}

/** `dicom-relay fsck` run as a separate process against the cluster's configuration; its summary line parsed. */
async function fsckCli(env: Record<string, string>): Promise<{ code: number | null; checked: number; missing: number; mismatches: number; orphans: number; stdout: string }> {
  const { DICOM_RELAY_SERVER_PORT: _port, ...rest } = env;
  const out = await runCli(["fsck"], rest);
  const m = /checked (\d+) instance\(s\): (\d+) missing blob\(s\), (\d+) hash mismatch\(es\), (\d+) orphan blob\(s\)/.exec(out.stdout);
  if (!m) throw new Error(`fsck printed no summary (exit ${out.code}):\n${out.stdout}\n${out.stderr}`);
  return { code: out.code, checked: Number(m[1]), missing: Number(m[2]), mismatches: Number(m[3]), orphans: Number(m[4]), stdout: out.stdout };
}

describe("two relay nodes over one PostgreSQL and one MinIO", () => {
  let postgres: RunningPostgres;
  let minio: RunningMinio;
  let a: RelayProcess;
  let b: RelayProcess;
  let clusterEnv: Record<string, string>;

  beforeAll(async () => {
    [postgres, minio] = await Promise.all([startPostgres(), startMinio()]);
    clusterEnv = {
      DICOM_RELAY_INDEX_KIND: "postgres",
      DICOM_RELAY_INDEX_POSTGRES_URL: postgres.url,
      DICOM_RELAY_INDEX_POSTGRES_POOL_SIZE: "4",
      DICOM_RELAY_STORAGE_KIND: "s3",
      DICOM_RELAY_STORAGE_S3_ENDPOINT: minio.endpoint,
      DICOM_RELAY_STORAGE_S3_ACCESS_KEY: minio.accessKey,
      DICOM_RELAY_STORAGE_S3_SECRET_KEY: minio.secretKey,
      DICOM_RELAY_STORAGE_S3_BUCKET: "cluster",
    };
    // both start at once: migrations and bucket creation race, as nodes of a real deployment do
    [a, b] = await Promise.all([startRelayProcess({ env: clusterEnv }), startRelayProcess({ env: clusterEnv })]);
  }, 240_000);

  afterAll(async () => {
    for (const n of [a, b]) {
      if (!n) continue;
      await n.stop();
      removeDataDir(n);
    }
    await minio?.destroy();
    await postgres?.stop();
  }, 120_000);

  it("a STOW-RS to one node is found by QIDO-RS and retrieved byte for byte by WADO-RS on the other at once", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 3, seriesCount: 1, rows: 32, columns: 32, studyInstanceUID: study })] as Inst[];
    await dicomwebClient(a.dicomwebUrl).storeInstances({ datasets: insts.map((i) => toArrayBuffer(i.bytes)) });
    const onB = dicomwebClient(b.dicomwebUrl);
    const studies = await onB.searchForStudies({ queryParams: { StudyInstanceUID: study } });
    expect(studies).toHaveLength(1);
    expect(studies[0]!["00201208"]?.Value).toEqual([3]);
    for (const i of insts) {
      const got = await onB.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: i.seriesInstanceUID, sopInstanceUID: i.sopInstanceUID });
      expect(sha(got)).toBe(sha(i.bytes));
    }
  });

  it("the same instances sent to both nodes at the same moment are stored once, and reported already stored by one of them", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 6, seriesCount: 2, rows: 64, columns: 64, studyInstanceUID: study })] as Inst[];
    for (const i of insts) {
      const [ra, rb] = await Promise.all([stow(a, [i.bytes]), stow(b, [i.bytes])]);
      expect([ra.status, rb.status]).toEqual([200, 200]);
      const comments = [referenced(ra.body)[0], referenced(rb.body)[0]];
      expect(comments.map((c) => c?.[0])).toEqual([i.sopInstanceUID, i.sopInstanceUID]);
      // exactly one wrote it; the other answered "already stored"
      expect(comments.filter((c) => c?.[1] === null)).toHaveLength(1);
      expect(comments.filter((c) => /already stored/.test(c?.[1] ?? ""))).toHaveLength(1);
    }
    expect(await qidoInstances(a, study)).toEqual(insts.map((i) => i.sopInstanceUID).sort());
    const rows = await runSql(postgres.url, "SELECT COUNT(*) AS n, COUNT(DISTINCT blob_key) AS k FROM instances i JOIN studies s ON s.pk = i.study_pk WHERE s.study_instance_uid = $1", [study]);
    expect(rows.rows[0]).toMatchObject({ n: "6", k: "6" });
    const counts = await runSql(postgres.url, "SELECT instance_count FROM studies WHERE study_instance_uid = $1", [study]);
    expect(counts.rows[0]!.instance_count).toBe(6);
    // a whole multipart sent to both at once: every instance stored once, none failed
    const again = [...generateStudy({ instances: 5, seriesCount: 1, rows: 32, columns: 32, studyInstanceUID: newUid() })] as Inst[];
    const [ma, mb] = await Promise.all([stow(a, again.map((i) => i.bytes)), stow(b, again.map((i) => i.bytes))]);
    expect([ma.status, mb.status]).toEqual([200, 200]);
    const written = [...referenced(ma.body), ...referenced(mb.body)].filter(([, c]) => c === null).map(([u]) => u).sort();
    expect(written).toEqual(again.map((i) => i.sopInstanceUID).sort());
  });

  it("a transfer's completeness and receipt are right whichever node got which instance", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 4, seriesCount: 1, rows: 16, columns: 16, studyInstanceUID: study })] as Inst[];
    const created = await api(a, "POST", "/api/transfers", {
      label: "cross-node",
      instances: insts.map((i) => ({ sopInstanceUID: i.sopInstanceUID, sha256: sha(i.bytes), size: i.bytes.length, studyInstanceUID: study, seriesInstanceUID: i.seriesInstanceUID })),
    });
    expect(created.status).toBe(201);
    const id = (created.json as unknown as TransferView).id;
    // the manifest was made on A; B knows it
    expect((await api(b, "GET", `/api/transfers/${id}`)).json).toMatchObject({ total: 4, missing: 4, state: "open" });

    const nodes = [b, a, b, a];
    for (const [n, i] of insts.slice(0, 3).entries()) {
      const r = await tusUpload(`${nodes[n]!.url}/api/uploads`, i.bytes, { transferId: id, filename: `IM${n}.dcm` });
      expect(r.entries[0]).toMatchObject({ status: "stored", sopInstanceUID: i.sopInstanceUID });
    }
    // three of four arrived, on both nodes: nobody sees a half study, nobody has a receipt
    expect((await api(a, "GET", `/api/transfers/${id}`)).json).toMatchObject({ state: "open", received: 3, missing: 1 });
    expect(await qidoInstances(a, study)).toEqual([]);
    expect(await qidoInstances(b, study)).toEqual([]);
    expect((await api(b, "GET", `/api/transfers/${id}/receipt`)).status).toBe(409);

    await tusUpload(`${a.url}/api/uploads`, insts[3]!.bytes, { transferId: id, filename: "IM3.dcm" });
    for (const n of [a, b]) {
      expect((await api(n, "GET", `/api/transfers/${id}`)).json).toMatchObject({ state: "complete", complete: true, received: 4, missing: 0, failed: 0 });
      expect(await qidoInstances(n, study)).toEqual(insts.map((i) => i.sopInstanceUID).sort());
    }
    // one receipt, the same from both nodes, signed by the one key both publish
    const fromA = (await api(a, "GET", `/api/transfers/${id}/receipt`)).json as { jws: string };
    const fromB = (await api(b, "GET", `/api/transfers/${id}/receipt`)).json as { jws: string };
    expect(fromB.jws).toBe(fromA.jws);
    const keyA = (await (await fetch(`${a.url}/.well-known/dicom-relay/receipt-key`)).json()) as { kid: string; x: string; pem: string };
    const keyB = (await (await fetch(`${b.url}/.well-known/dicom-relay/receipt-key`)).json()) as { kid: string; x: string; pem: string };
    expect(keyB).toEqual(keyA);
    const payload = verifyReceipt(fromA.jws, keyB.pem);
    expect(payload).toMatchObject({ transferId: id, keyId: keyA.kid });
    expect(payload.instances.map((x) => [x.sopInstanceUID, x.sha256, x.state])).toEqual(insts.map((i) => [i.sopInstanceUID, sha(i.bytes), "received"]));
  });

  it("a tus upload begun on one node and resumed on the other finishes, and both nodes report its result", async () => {
    const bytes = makeInstance({ rows: 1536, columns: 2048, bitsAllocated: 16, samplesPerPixel: 1 }); // ~6 MiB: four 2 MiB chunks
    const chunkSize = 2 * 1024 * 1024;
    // on A: three chunks, then the connection "drops" (abort)
    const uploadUrl = await new Promise<string>((resolve, reject) => {
      let chunks = 0;
      const upload: tus.Upload = new tus.Upload(bytes, {
        endpoint: `${a.url}/api/uploads`,
        chunkSize,
        metadata: { filename: "big.dcm" },
        retryDelays: [0, 200],
        storeFingerprintForResuming: false,
        onChunkComplete: () => {
          if (++chunks === 3) void upload.abort().then(() => resolve(upload.url!), reject);
        },
        onSuccess: () => reject(new Error("the upload finished before it could be cut after three chunks")),
        onError: reject,
      });
      upload.start();
    });
    expect(bytes.length).toBeGreaterThan(3 * chunkSize);
    const id = uploadUrl.split("/").pop()!;
    const head = await fetch(`${b.url}/api/uploads/${id}`, { method: "HEAD", headers: { "Tus-Resumable": "1.0.0" } });
    expect(head.status).toBe(200);
    expect(Number(head.headers.get("upload-offset"))).toBe(3 * chunkSize);

    // on B: tus-js-client asks B for the offset and sends the rest
    const offsets: number[] = [];
    const result = await new Promise<UploadResult>((resolve, reject) => {
      const upload = new tus.Upload(bytes, {
        endpoint: `${b.url}/api/uploads`,
        uploadUrl: `${b.url}/api/uploads/${id}`,
        chunkSize,
        retryDelays: [0, 200, 500],
        storeFingerprintForResuming: false,
        onAfterResponse: (req, res) => {
          if (req.getMethod() === "HEAD") offsets.push(Number(res.getHeader("Upload-Offset")));
        },
        onSuccess: ({ lastResponse }) => resolve(JSON.parse(lastResponse.getBody()) as UploadResult),
        onError: reject,
      });
      upload.start();
    });
    expect(offsets[0]).toBe(3 * chunkSize);
    expect(result).toMatchObject({ state: "done", filename: "big.dcm", counts: { entries: 1, stored: 1, failed: 0 } });
    const entry = result.entries[0]!;
    expect(entry.sha256).toBe(sha(bytes));
    // the node where it began knows the result too, and serves the instance byte for byte
    const fromA = (await (await fetch(`${a.url}/api/uploads/${id}`)).json()) as UploadResult;
    expect(fromA).toMatchObject({ state: "done", counts: { stored: 1 } });
    const got = await dicomwebClient(a.dicomwebUrl).retrieveInstance({ studyInstanceUID: entry.studyInstanceUID!, seriesInstanceUID: entry.seriesInstanceUID!, sopInstanceUID: entry.sopInstanceUID! });
    expect(sha(got)).toBe(sha(bytes));
  }, 120_000);

  it("a node SIGKILLed mid-ingest loses nothing acknowledged, leaves no index row without its blob, and the retry on the other node completes", async () => {
    const study = newUid();
    const acknowledged = [...generateStudy({ instances: 4, seriesCount: 1, rows: 32, columns: 32, studyInstanceUID: study })] as Inst[];
    const ack = await stow(a, acknowledged.map((i) => i.bytes));
    expect(ack.status).toBe(200);

    // a bigger STOW, streamed slowly enough that the node dies in the middle of it
    const big = [...generateStudy({ instances: 24, seriesCount: 2, rows: 256, columns: 256, bitsAllocated: 16, samplesPerPixel: 1, studyInstanceUID: study })] as Inst[];
    const body = stowBody(big.map((i) => i.bytes));
    const outcome = new Promise<string>((resolve) => {
      const req = http.request(`${a.dicomwebUrl}/studies`, { method: "POST", headers: { "Content-Type": STOW_TYPE, "Content-Length": body.length } }, (res) => {
        res.resume();
        res.on("end", () => resolve(`answered ${res.statusCode}`));
        res.on("error", () => resolve("cut"));
      });
      req.on("error", () => resolve("cut"));
      // 64 KiB every 20 ms: the relay stores instance after instance as they arrive
      let at = 0;
      const pump = () => {
        if (at >= body.length) return req.end();
        req.write(body.subarray(at, at + 65536));
        at += 65536;
        setTimeout(pump, 20);
      };
      pump();
    });
    // kill once some of them are indexed (seen through the other node), well before the end
    const deadline = Date.now() + 60_000;
    let seen = 0;
    while (Date.now() < deadline) {
      seen = (await qidoInstances(b, study)).length - acknowledged.length;
      if (seen >= 3) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(seen).toBeGreaterThanOrEqual(3);
    await a.kill();
    expect(await outcome).toBe("cut");
    const partial = (await qidoInstances(b, study)).length - acknowledged.length;
    expect(partial).toBeLessThan(big.length);

    // what was acknowledged is all there, byte for byte, through the surviving node
    const onB = dicomwebClient(b.dicomwebUrl);
    for (const i of acknowledged) {
      expect(sha(await onB.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: i.seriesInstanceUID, sopInstanceUID: i.sopInstanceUID }))).toBe(sha(i.bytes));
    }
    // no index row without its blob (an orphan blob, stored but not indexed, is allowed: fsck --repair removes it)
    const after = await fsckCli(clusterEnv);
    expect(after).toMatchObject({ missing: 0, mismatches: 0 });
    expect(after.checked).toBeGreaterThanOrEqual(acknowledged.length + partial);

    // the sender retries the whole request against the other node: everything there, once
    const retry = await stow(b, big.map((i) => i.bytes));
    expect(retry.status).toBe(200);
    const answers = referenced(retry.body);
    expect(answers).toHaveLength(big.length);
    expect(answers.filter(([, c]) => c !== null).length).toBe(partial);
    expect(await qidoInstances(b, study)).toEqual([...acknowledged, ...big].map((i) => i.sopInstanceUID).sort());
    for (const i of [big[0]!, big[big.length - 1]!]) {
      expect(sha(await onB.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: i.seriesInstanceUID, sopInstanceUID: i.sopInstanceUID }))).toBe(sha(i.bytes));
    }
    const clean = await fsckCli(clusterEnv);
    expect(clean).toMatchObject({ code: 0, missing: 0, mismatches: 0, orphans: 0 });

    // the killed node comes back on its data directory and serves the same data
    a = await startRelayProcess({ env: { ...clusterEnv, DICOM_RELAY_DATA_DIR: a.dataDir } });
    expect(await qidoInstances(a, study)).toHaveLength(acknowledged.length + big.length);
  }, 240_000);

  it("PostgreSQL down: STOW-RS 503 with Retry-After and a sentence, QIDO-RS 503, /readyz 503; back up: both nodes work without a restart", async () => {
    const inst = makeInstance({ rows: 16, columns: 16 });
    await postgres.halt();
    try {
      const s = await stow(a, [inst]);
      expect(s.status).toBe(503);
      expect(Number(s.headers.get("retry-after"))).toBeGreaterThan(0);
      const failed = (s.body["00081198"]?.Value ?? []) as Json[];
      expect(failed[0]!["00000902"]!.Value![0]).toMatch(/index database is unavailable.*nothing was stored.*retry/);

      const q = await fetch(`${b.dicomwebUrl}/studies`, { headers: { Accept: "application/dicom+json" } });
      expect(q.status).toBe(503);
      expect(Number(q.headers.get("retry-after"))).toBeGreaterThan(0);
      expect(((await q.json()) as { error: string }).error).toMatch(/index database is unavailable/);

      for (const n of [a, b]) {
        const ready = await fetch(`${n.url}/readyz`);
        expect(ready.status).toBe(503);
        expect(ready.headers.get("retry-after")).not.toBeNull();
        expect(((await ready.json()) as { checks: Record<string, string> }).checks.storage).toBe("ok");
      }
      // still alive (liveness is not readiness)
      expect((await fetch(`${a.url}/healthz`)).status).toBe(200);
    } finally {
      await postgres.start();
    }
    for (const n of [a, b]) expect((await fetch(`${n.url}/readyz`)).status).toBe(200);
    const s = await stow(b, [inst]);
    expect(s.status).toBe(200);
    expect(referenced(s.body)[0]?.[1]).toBeNull();
    const found = await fetch(`${a.dicomwebUrl}/instances?SOPInstanceUID=${referenced(s.body)[0]![0]}`, { headers: { Accept: "application/dicom+json" } });
    expect(found.status).toBe(200);
    expect((await found.json()) as unknown[]).toHaveLength(1);
  }, 120_000);

  it("PostgreSQL down: WADO-RS (instance, study metadata) and tus POST answer 503 with Retry-After and a sentence; back up: both work without a restart", async () => {
    const [stored] = [...generateStudy({ instances: 1, seriesCount: 1, rows: 16, columns: 16, studyInstanceUID: newUid() })] as Inst[];
    const { studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop } = stored!;
    expect((await stow(a, [stored!.bytes])).status).toBe(200);
    const [sent] = [...generateStudy({ instances: 1, seriesCount: 1, rows: 16, columns: 16, studyInstanceUID: newUid() })] as Inst[];
    const created = await api(a, "POST", "/api/transfers", {
      label: "pg-down",
      instances: [{ sopInstanceUID: sent!.sopInstanceUID, sha256: sha(sent!.bytes), size: sent!.bytes.length, studyInstanceUID: sent!.studyInstanceUID, seriesInstanceUID: sent!.seriesInstanceUID }],
    });
    expect(created.status).toBe(201);
    const transferId = (created.json as unknown as TransferView).id;

    const instanceUrl = (n: RelayProcess) => `${n.dicomwebUrl}/studies/${study}/series/${series}/instances/${sop}`;
    const retrieve = (n: RelayProcess) => fetch(instanceUrl(n), { headers: { Accept: 'multipart/related; type="application/dicom"' } });
    const metadata = (n: RelayProcess) => fetch(`${n.dicomwebUrl}/studies/${study}/metadata`, { headers: { Accept: "application/dicom+json" } });
    const b64 = (s: string) => Buffer.from(s).toString("base64");
    // a tus creation (no bytes yet), with and without a transfer to check against
    const tusCreate = (n: RelayProcess, meta: Record<string, string>) =>
      fetch(`${n.url}/api/uploads`, {
        method: "POST",
        headers: {
          "Tus-Resumable": "1.0.0",
          "Upload-Length": String(sent!.bytes.length),
          "Upload-Metadata": Object.entries(meta).map(([k, v]) => `${k} ${b64(v)}`).join(","),
        },
      });

    await postgres.halt();
    try {
      for (const n of [a, b]) {
        for (const [what, res] of [["retrieve", await retrieve(n)], ["metadata", await metadata(n)]] as const) {
          expect(res.status, what).toBe(503);
          expect(Number(res.headers.get("retry-after")), what).toBeGreaterThan(0);
          expect(((await res.json()) as { error: string }).error, what).toMatch(/index database is unavailable.*retry/);
        }
        for (const meta of [{ filename: "plain.dcm" }, { filename: "in-transfer.dcm", transferId }] as Record<string, string>[]) {
          const res = await tusCreate(n, meta);
          const body = await res.text();
          expect(res.status, `tus POST ${JSON.stringify(meta)}: ${body}`).toBe(503);
          expect(Number(res.headers.get("retry-after")), body).toBeGreaterThan(0);
          expect(body).toMatch(/database is unavailable.*retry/);
          expect(res.headers.get("location")).toBeNull();
        }
      }
    } finally {
      await postgres.start();
    }
    // back up: the same relays, no restart
    for (const n of [a, b]) {
      const r = await retrieve(n);
      expect(r.status).toBe(200);
      expect(r.headers.get("content-type")).toMatch(/^multipart\/related/);
      const got = await dicomwebClient(n.dicomwebUrl).retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop });
      expect(sha(got)).toBe(sha(stored!.bytes));
      const m = await metadata(n);
      expect(m.status).toBe(200);
      expect(((await m.json()) as Json[]).map((d) => d["00080018"]!.Value![0])).toEqual([sop]);
      const created = await tusCreate(n, { filename: "after.dcm" });
      expect(created.status).toBe(201);
      expect(created.headers.get("location")).toMatch(/\/api\/uploads\/[^/]+$/);
    }
    const result = await tusUpload(`${b.url}/api/uploads`, sent!.bytes, { transferId, filename: "in-transfer.dcm" });
    expect(result.entries[0]).toMatchObject({ status: "stored", sopInstanceUID: sent!.sopInstanceUID });
    expect((await api(a, "GET", `/api/transfers/${transferId}`)).json).toMatchObject({ state: "complete", received: 1, missing: 0 });
  }, 120_000);
});
