/**
 * tus uploads kept in S3 (storage.kind=s3, a real MinIO), with tus-js-client and raw requests against real relays:
 * objects under the uploads prefix, results readable from the bucket, resume after cut connections (parts and
 * sub-5-MiB tails), an upload begun on one relay and finished on another, MinIO stopped mid-upload (503 +
 * Retry-After, then the same upload resumes), expiry and recovery at start.
 */
import crypto from "node:crypto";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as Minio from "minio";
import * as tus from "tus-js-client";
import { startMinio, type RunningMinio } from "../support/minio.ts";
import { tarOf } from "../support/streams.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { startFaultProxy } from "../support/faultProxy.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { generateStudy, makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";
import type { DeepPartial, RelayConfig } from "../../src/config.ts";
import { RelayS3Store } from "../../src/transfers/s3UploadStore.ts";
import { Upload } from "@tus/server";
import { createLogger } from "../../src/logger.ts";
import { uploadResultEntriesContract } from "../contracts/transferStore.ts";
import { bundleOf, createTransfer, expectStoredExactly, parallelUpload, postFinal, rawPartial, studyOf } from "../support/tusConcat.ts";

const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");
const TUS = { "Tus-Resumable": "1.0.0" };
const OCTETS = "application/offset+octet-stream";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


interface Sent {
  url: string;
  result: UploadResult;
  retries: number;
  headOffsets: number[];
  statuses: number[];
}

/** tus-js-client, retrying quickly (bounded); resumes uploadUrl when given. */
function send(endpoint: string, bytes: Buffer, opts: { uploadUrl?: string; chunkSize?: number; metadata?: Record<string, string>; retryMs?: number } = {}): Promise<Sent> {
  let retries = 0;
  const headOffsets: number[] = [];
  const statuses: number[] = [];
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(bytes, {
      endpoint,
      uploadUrl: opts.uploadUrl,
      metadata: opts.metadata ?? {},
      chunkSize: opts.chunkSize ?? Number.POSITIVE_INFINITY,
      retryDelays: Array.from({ length: 60 }, (_, i) => (i === 0 ? 0 : (opts.retryMs ?? 250))),
      storeFingerprintForResuming: false,
      onShouldRetry: () => {
        retries++;
        return true;
      },
      onAfterResponse: (req, res) => {
        statuses.push(res.getStatus());
        if (req.getMethod() === "HEAD" && res.getStatus() === 200) headOffsets.push(Number(res.getHeader("Upload-Offset")));
      },
      onSuccess: ({ lastResponse }) => {
        const body = lastResponse.getBody();
        const done = (r: UploadResult) => resolve({ url: upload.url!, result: r, retries, headOffsets, statuses });
        if (body && body.startsWith("{")) return done(JSON.parse(body) as UploadResult);
        // the result may still be processing, or the final response was a HEAD: read it at the upload URL
        void (async () => {
          for (let i = 0; i < 100; i++) {
            const r = await fetch(upload.url!);
            if (r.status === 200) {
              const j = (await r.json()) as UploadResult;
              if (j.state === "done") return done(j);
            } else await r.arrayBuffer();
            await sleep(100);
          }
          reject(new Error("no result"));
        })().catch(reject);
      },
      onError: reject,
    });
    upload.start();
  });
}

function s3Overrides(minio: RunningMinio, extra: DeepPartial<RelayConfig> = {}): DeepPartial<RelayConfig> {
  return {
    ...extra,
    storage: {
      kind: "s3",
      s3: { endpoint: minio.endpoint, accessKey: minio.accessKey, secretKey: minio.secretKey, bucket: "tus-it", prefix: "site-a/", createBucket: true },
    },
  };
}

describe("tus uploads on S3 (real MinIO)", () => {
  let minio: RunningMinio;
  let relay: TestRelay;
  let endpoint: string;
  let s3: Minio.Client;

  beforeAll(async () => {
    minio = await startMinio();
    relay = await startTestRelay(s3Overrides(minio, { transfers: { maxUploadBytes: 64 * 1024 * 1024 } }));
    endpoint = `${relay.url}/api/uploads`;
    const u = new URL(minio.endpoint);
    s3 = new Minio.Client({ endPoint: u.hostname, port: Number(u.port), useSSL: false, accessKey: minio.accessKey, secretKey: minio.secretKey });
  }, 60_000);
  afterAll(async () => {
    await relay?.dispose();
    await minio?.destroy();
  });

  const keys = async (prefix = "site-a/uploads/"): Promise<string[]> => {
    const out: string[] = [];
    for await (const o of s3.listObjectsV2("tus-it", prefix, true) as AsyncIterable<{ name?: string }>) if (o.name) out.push(o.name);
    return out.sort();
  };
  const wado = async (r: TestRelay, e: { studyInstanceUID?: string; seriesInstanceUID?: string; sopInstanceUID?: string }) =>
    sha(await dicomwebClient(r.dicomwebUrl).retrieveInstance({ studyInstanceUID: e.studyInstanceUID!, seriesInstanceUID: e.seriesInstanceUID!, sopInstanceUID: e.sopInstanceUID! }));

  it("keeps the upload in the bucket under the uploads prefix; after ingest only .info and the result (summary, entries) stay; HEAD says complete", async () => {
    const bytes = makeInstance({ rows: 1024, columns: 1536, bitsAllocated: 16, modality: "CT" }); // ~3 MiB: 1 MiB chunks are each below S3's part minimum
    const up = await send(endpoint, bytes, { chunkSize: 1024 * 1024, metadata: { filename: "big.dcm" } });
    expect(up.result).toMatchObject({ state: "done", filename: "big.dcm", counts: { entries: 1, stored: 1, failed: 0 }, error: null });
    expect(await wado(relay, up.result.entries[0]!)).toBe(sha(bytes));
    const id = path.basename(new URL(up.url).pathname);
    // the bytes object and the tail are gone, the info and the result (summary, one page of entries) stay; nothing on the relay's local disk
    expect(await keys()).toEqual([`site-a/uploads/${id}.info`, `site-a/uploads/${id}.result.0.entries.json`, `site-a/uploads/${id}.result.json`]);
    expect(fs.existsSync(path.join(relay.config.transfers.uploadDir, id))).toBe(false);
    const head = await fetch(up.url, { method: "HEAD", headers: TUS });
    expect(head.status).toBe(200);
    expect(head.headers.get("upload-offset")).toBe(String(bytes.length));
    // a repeated final PATCH is answered from the result, nothing written again
    const patch = await fetch(up.url, { method: "PATCH", headers: { ...TUS, "Upload-Offset": String(bytes.length), "Content-Type": OCTETS }, body: new Uint8Array(0) });
    expect(patch.status).toBe(200);
    expect(((await patch.json()) as UploadResult).counts).toMatchObject({ stored: 1 });
    expect(((await (await fetch(up.url)).json()) as UploadResult).entries[0]!.sha256).toBe(sha(bytes));
    for (const k of await keys()) await s3.removeObject("tus-it", k);
  }, 60_000);

  it("reads tar and zip bundles from S3 (zip spooled for random access), creation-with-upload in one POST", async () => {
    const insts = [...generateStudy({ instances: 3, rows: 32, columns: 32 })];
    const bundle = await tarOf(insts.map((g, i) => ({ name: `IM${i}.dcm`, body: g.bytes })));
    const post = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Length": String(bundle.length), "Content-Type": OCTETS }, body: new Uint8Array(bundle) });
    expect(post.status).toBe(201);
    const result = (await post.json()) as UploadResult;
    expect(result).toMatchObject({ kind: "tar", counts: { entries: 3, stored: 3, failed: 0 } });
    for (const [i, g] of insts.entries()) expect(result.entries[i]!.sha256).toBe(sha(g.bytes));
    // a zip made by Info-ZIP (installed by scripts/test-prereqs.sh)
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tus-s3-zip-"));
    try {
      const more = [...generateStudy({ instances: 2, rows: 32, columns: 32 })];
      for (const [i, g] of more.entries()) fs.writeFileSync(path.join(dir, `z${i}.dcm`), g.bytes);
      execFileSync("zip", ["-q", "-r", "bundle.zip", "z0.dcm", "z1.dcm"], { cwd: dir });
      const zipped = fs.readFileSync(path.join(dir, "bundle.zip"));
      const up = await send(endpoint, zipped, { chunkSize: 2000 });
      expect(up.result).toMatchObject({ kind: "zip", counts: { entries: 2, stored: 2, failed: 0 } });
      expect(up.result.entries.map((e) => e.sha256).sort()).toEqual(more.map((g) => sha(g.bytes)).sort());
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  // a result's entries in pages of objects (a prefix of its own: the cut-off below forgets every result under it)
  uploadResultEntriesContract(async () => new RelayS3Store({
    s3: relay.config.storage.s3,
    prefix: `results-contract-${crypto.randomBytes(4).toString("hex")}/`,
    partSize: relay.config.transfers.s3.partSize,
    expirationMs: 0,
    hooks: { isProcessed: async () => false, isProcessing: () => false },
    log: createLogger("silent"),
  }), new Date(Date.now() + 3_600_000).toISOString());

  it("an upload whose parts are all in S3 but whose completion failed is completed on the next HEAD and ingested", async () => {
    const bytes = makeInstance({ rows: 2048, columns: 1536, bitsAllocated: 16, modality: "CT" }); // ~6.3 MB: one full part and a final part
    const store = new RelayS3Store({
      s3: relay.config.storage.s3,
      prefix: relay.config.transfers.s3.prefix,
      partSize: relay.config.transfers.s3.partSize,
      expirationMs: 0,
      hooks: { isProcessed: async () => false, isProcessing: () => false },
      log: createLogger("silent"),
    });
    const id = crypto.randomBytes(16).toString("hex");
    try {
      await store.create(new Upload({ id, size: bytes.length, offset: 0, metadata: {} }));
      // S3 goes away between the last part and CompleteMultipartUpload
      (store as unknown as { finishMultipartUpload: () => Promise<never> }).finishMultipartUpload = async () => {
        throw Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
      };
      await expect(store.write(Readable.from([bytes.subarray(0, 5 * 1024 * 1024), bytes.subarray(5 * 1024 * 1024)]), id, 0)).rejects.toThrow(/unavailable/);
    } finally {
      await store.close();
    }
    const head = await fetch(`${endpoint}/${id}`, { method: "HEAD", headers: TUS });
    expect(head.status).toBe(200);
    expect(head.headers.get("upload-offset")).toBe(String(bytes.length));
    let result: UploadResult | null = null;
    for (let i = 0; i < 100 && result?.state !== "done"; i++) {
      const r = await fetch(`${endpoint}/${id}`);
      if (r.status === 200) result = (await r.json()) as UploadResult;
      else await r.arrayBuffer();
      if (result?.state !== "done") await sleep(100);
    }
    expect(result).toMatchObject({ state: "done", counts: { stored: 1 } });
    expect(await wado(relay, result!.entries[0]!)).toBe(sha(bytes));
  }, 60_000);

  it("refuses an upload over transfers.maxUploadBytes with 413 and a sentence; an id naming another object is 404", async () => {
    const res = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Length": String(64 * 1024 * 1024 + 1) } });
    expect(res.status).toBe(413);
    expect(await res.text()).toMatch(/transfers.maxUploadBytes/);
    const create = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Length": "10" } });
    const id = path.basename(create.headers.get("location")!);
    for (const other of [`${id}.info`, `${id}.part`]) {
      expect((await fetch(`${endpoint}/${other}`, { method: "HEAD", headers: TUS })).status).toBe(404);
    }
  });

  it("terminates an upload: DELETE removes its objects from the bucket", async () => {
    const create = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Length": "100000" } });
    const url = create.headers.get("location")!;
    const id = path.basename(url);
    const patch = await fetch(url, { method: "PATCH", headers: { ...TUS, "Upload-Offset": "0", "Content-Type": OCTETS }, body: new Uint8Array(5000) });
    expect(patch.headers.get("upload-offset")).toBe("5000");
    expect(await keys()).toEqual(expect.arrayContaining([`site-a/uploads/${id}.info`, `site-a/uploads/${id}.part`]));
    expect((await fetch(url, { method: "DELETE", headers: TUS })).status).toBe(204);
    expect((await keys()).filter((k) => k.includes(id))).toEqual([]);
    expect((await fetch(url, { method: "HEAD", headers: TUS })).status).toBe(404);
  });

  it("resumes after the connection is cut again and again (fault proxy); the instance comes back byte-identical", async () => {
    const proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: relay.port }, resetEveryBytes: 3 * 1024 * 1024 });
    try {
      const bytes = makeInstance({ rows: 2048, columns: 3072, bitsAllocated: 16, modality: "CT" }); // ~12.6 MB: full 8 MiB parts and tails
      const up = await send(`${proxy.url}/api/uploads`, bytes);
      expect(proxy.stats().resets).toBeGreaterThanOrEqual(3);
      expect(up.retries).toBeGreaterThanOrEqual(3);
      expect(Math.max(...up.headOffsets)).toBeGreaterThan(0);
      expect(up.result.counts).toMatchObject({ entries: 1, stored: 1, failed: 0 });
      expect(await wado(relay, up.result.entries[0]!)).toBe(sha(bytes));
    } finally {
      await proxy.close();
    }
  }, 120_000);

  it("MinIO stopped mid-upload: POST, PATCH and HEAD answer 503 + Retry-After with a sentence; back: the same upload resumes, byte-identical", async () => {
    const sopInstanceUID = newUid();
    const bytes = makeInstance({ rows: 2048, columns: 2560, sopInstanceUID, bitsAllocated: 16, modality: "CT" }); // ~10.5 MB
    const create = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Length": String(bytes.length) } });
    const url = create.headers.get("location")!;
    const first = 9 * 1024 * 1024;
    expect(bytes.length).toBeGreaterThan(first + 1024 * 1024);
    const p1 = await fetch(url, { method: "PATCH", headers: { ...TUS, "Upload-Offset": "0", "Content-Type": OCTETS }, body: new Uint8Array(bytes.subarray(0, first)) });
    expect([p1.status, p1.headers.get("upload-offset"), bytes.length, await p1.text()]).toEqual([204, String(first), bytes.length, ""]);

    await minio.stop();
    try {
      const patch = await fetch(url, { method: "PATCH", headers: { ...TUS, "Upload-Offset": String(first), "Content-Type": OCTETS }, body: new Uint8Array(bytes.subarray(first)) });
      const head = await fetch(url, { method: "HEAD", headers: TUS });
      const post = await fetch(endpoint, { method: "POST", headers: { ...TUS, "Upload-Length": "1000" } });
      for (const res of [patch, head, post]) {
        expect(res.status).toBe(503);
        expect(res.headers.get("retry-after")).toMatch(/^\d+$/);
      }
      for (const res of [patch, post]) {
        const text = await res.text();
        expect(text).toMatch(/upload storage is unavailable/);
        expect(text).not.toMatch(/at .*\.(ts|js):\d+/); // no stack
      }
      // nothing was indexed: the upload never finished
      expect(await relay.services.index.getInstance(sopInstanceUID, { includePending: true })).toBeNull();
    } finally {
      await minio.restart();
    }
    // the same upload, resumed by tus-js-client from the offset the relay kept
    const up = await send(endpoint, bytes, { uploadUrl: url });
    expect(up.url).toBe(url);
    expect(up.headOffsets[0]).toBe(first);
    expect(up.result.counts).toMatchObject({ entries: 1, stored: 1, failed: 0 });
    expect(await wado(relay, up.result.entries[0]!)).toBe(sha(bytes));
  }, 120_000);

  it("a tus-js-client upload running while MinIO goes away and comes back finishes without a relay restart", async () => {
    const proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: relay.port }, bandwidthBytesPerSec: 2 * 1024 * 1024 });
    try {
      const bytes = makeInstance({ rows: 2048, columns: 2048, bitsAllocated: 16, modality: "CT" }); // ~8.4 MB, ~4 s through the proxy
      const sending = send(`${proxy.url}/api/uploads`, bytes, { retryMs: 500 });
      await sleep(1500);
      await minio.stop();
      await sleep(2000);
      await minio.restart();
      const up = await sending;
      expect(up.statuses).toContain(503);
      expect(up.result.counts).toMatchObject({ entries: 1, stored: 1, failed: 0 });
      expect(await wado(relay, up.result.entries[0]!)).toBe(sha(bytes));
    } finally {
      await proxy.close();
    }
  }, 120_000);

  it("MinIO stopped while a finished upload is being ingested: the relay ingests it by itself once MinIO is back", async () => {
    const slow = await startTestRelay(s3Overrides(minio, { transfers: { finishWaitSeconds: 0 } }));
    try {
      const insts = [...generateStudy({ instances: 40, rows: 256, columns: 256 })];
      const bundle = await tarOf(insts.map((g, i) => ({ name: `IM${i}.dcm`, body: g.bytes })));
      const create = await fetch(`${slow.url}/api/uploads`, { method: "POST", headers: { ...TUS, "Upload-Length": String(bundle.length) } });
      const url = create.headers.get("location")!;
      const patch = await fetch(url, { method: "PATCH", headers: { ...TUS, "Upload-Offset": "0", "Content-Type": OCTETS }, body: new Uint8Array(bundle) });
      expect(patch.status).toBe(204); // finishWaitSeconds 0: answered before the ingest ends
      await minio.stop();
      try {
        const during = await fetch(url);
        expect(during.status).toBe(503);
        expect(during.headers.get("retry-after")).toMatch(/^\d+$/);
        await during.arrayBuffer();
        await sleep(1000);
      } finally {
        await minio.restart();
      }
      let result: UploadResult | null = null;
      for (let i = 0; i < 300 && result?.state !== "done"; i++) {
        const r = await fetch(url);
        if (r.status === 200) result = (await r.json()) as UploadResult;
        else await r.arrayBuffer();
        if (result?.state !== "done") await sleep(100);
      }
      expect(result).toMatchObject({ state: "done", error: null, counts: { entries: 40, failed: 0 } });
      expect(result!.counts.stored + result!.counts.alreadyStored).toBe(40);
      for (const g of insts) expect((await slow.services.index.getInstance(g.sopInstanceUID))?.sha256).toBe(sha(g.bytes));
    } finally {
      await slow.dispose();
    }
  }, 120_000);

  it("an upload begun on relay A is finished on relay B over the same bucket; B answers HEAD and the result", async () => {
    const dataA = fs.mkdtempSync(path.join(os.tmpdir(), "relay-a-"));
    const dataB = fs.mkdtempSync(path.join(os.tmpdir(), "relay-b-"));
    const indexPath = path.join(dataA, "shared-index.sqlite");
    try {
      const a = await startTestRelay(s3Overrides(minio, { index: { kind: "sqlite", sqlite: { path: indexPath } } }), { dataDir: dataA });
      const bytes = makeInstance({ rows: 2048, columns: 3072, bitsAllocated: 16, modality: "CT" });
      const create = await fetch(`${a.url}/api/uploads`, { method: "POST", headers: { ...TUS, "Upload-Length": String(bytes.length), "Upload-Metadata": `filename ${Buffer.from("ab.dcm").toString("base64")}` } });
      const id = path.basename(create.headers.get("location")!);
      const sent = 9 * 1024 * 1024 + 12345; // a full part and a tail below 5 MiB
      expect(bytes.length).toBeGreaterThan(sent + 1024 * 1024);
      const p = await fetch(`${a.url}/api/uploads/${id}`, { method: "PATCH", headers: { ...TUS, "Upload-Offset": "0", "Content-Type": OCTETS }, body: new Uint8Array(bytes.subarray(0, sent)) });
      expect(p.headers.get("upload-offset")).toBe(String(sent));
      await a.close();

      const b = await startTestRelay(s3Overrides(minio, { index: { kind: "sqlite", sqlite: { path: indexPath } } }), { dataDir: dataB });
      try {
        const head = await fetch(`${b.url}/api/uploads/${id}`, { method: "HEAD", headers: TUS });
        expect(head.status).toBe(200);
        expect(head.headers.get("upload-offset")).toBe(String(sent));
        const up = await send(`${b.url}/api/uploads`, bytes, { uploadUrl: `${b.url}/api/uploads/${id}` });
        expect(up.headOffsets[0]).toBe(sent);
        expect(up.result).toMatchObject({ filename: "ab.dcm", counts: { stored: 1, failed: 0 } });
        expect(await wado(b, up.result.entries[0]!)).toBe(sha(bytes));
        // the result is in the bucket: a restarted A (its own transfer database) reads it too
        const a2 = await startTestRelay(s3Overrides(minio, { index: { kind: "sqlite", sqlite: { path: indexPath } } }), { dataDir: dataA });
        try {
          const r = await fetch(`${a2.url}/api/uploads/${id}`);
          expect(r.status).toBe(200);
          expect(((await r.json()) as UploadResult).entries[0]!.sha256).toBe(sha(bytes));
          const h = await fetch(`${a2.url}/api/uploads/${id}`, { method: "HEAD", headers: TUS });
          expect(h.headers.get("upload-offset")).toBe(String(bytes.length));
        } finally {
          await a2.close();
        }
      } finally {
        await b.close();
      }
    } finally {
      fs.rmSync(dataA, { recursive: true, force: true });
      fs.rmSync(dataB, { recursive: true, force: true });
    }
  }, 120_000);

  it("ingests at start an upload that was complete in S3 but never ingested", async () => {
    const bytes = makeInstance({ rows: 64, columns: 64, bitsAllocated: 16, modality: "CT" });
    // what a relay stopped between the last byte and the ingest leaves in the bucket
    const store = new RelayS3Store({
      s3: relay.config.storage.s3,
      prefix: relay.config.transfers.s3.prefix,
      partSize: relay.config.transfers.s3.partSize,
      expirationMs: 0,
      hooks: { isProcessed: async () => false, isProcessing: () => false },
      log: createLogger("silent"),
    });
    const id = crypto.randomBytes(16).toString("hex");
    await store.create(new Upload({ id, size: bytes.length, offset: 0, metadata: { filename: "left.dcm" } }));
    expect(await store.write(Readable.from([bytes]), id, 0)).toBe(bytes.length);
    await store.close();
    const other = await startTestRelay(s3Overrides(minio));
    try {
      let result: UploadResult | null = null;
      for (let i = 0; i < 100 && result?.state !== "done"; i++) {
        const r = await fetch(`${other.url}/api/uploads/${id}`);
        if (r.status === 200) result = (await r.json()) as UploadResult;
        else await r.arrayBuffer();
        if (result?.state !== "done") await sleep(100);
      }
      expect(result).toMatchObject({ state: "done", filename: "left.dcm", counts: { stored: 1 } });
      expect(await keys()).not.toContain(`site-a/uploads/${id}`);
    } finally {
      await other.dispose();
    }
  }, 60_000);
});

describe("tus uploads on S3: expiry", () => {
  let minio: RunningMinio;
  let relay: TestRelay;
  beforeAll(async () => {
    minio = await startMinio();
    relay = await startTestRelay(s3Overrides(minio, { transfers: { expirationSeconds: 1, cleanupIntervalSeconds: 1 } }));
  }, 60_000);
  afterAll(async () => {
    await relay?.dispose();
    await minio?.destroy();
  });

  it("removes an abandoned upload's objects and its multipart upload after the expiration", async () => {
    const u = new URL(minio.endpoint);
    const s3 = new Minio.Client({ endPoint: u.hostname, port: Number(u.port), useSSL: false, accessKey: minio.accessKey, secretKey: minio.secretKey });
    const list = async () => {
      const out: string[] = [];
      for await (const o of s3.listObjectsV2("tus-it", "site-a/uploads/", true) as AsyncIterable<{ name?: string }>) if (o.name) out.push(o.name);
      return out;
    };
    const create = await fetch(`${relay.url}/api/uploads`, { method: "POST", headers: { ...TUS, "Upload-Length": "10000000" } });
    expect(create.headers.get("upload-expires")).toBeTruthy();
    const url = create.headers.get("location")!;
    const id = path.basename(url);
    await fetch(url, { method: "PATCH", headers: { ...TUS, "Upload-Offset": "0", "Content-Type": OCTETS }, body: new Uint8Array(300_000) });
    expect(await list()).toEqual(expect.arrayContaining([`site-a/uploads/${id}.info`, `site-a/uploads/${id}.part`]));
    for (let i = 0; i < 80 && (await list()).some((k) => k.includes(id)); i++) await sleep(100);
    expect((await list()).filter((k) => k.includes(id))).toEqual([]);
    expect([404, 410]).toContain((await fetch(url, { method: "HEAD", headers: TUS })).status);
  }, 60_000);
});

describe("tus concatenation on S3 (real MinIO)", () => {
  let minio: RunningMinio;
  let relay: TestRelay;
  let s3: Minio.Client;
  beforeAll(async () => {
    minio = await startMinio();
    relay = await startTestRelay(s3Overrides(minio, { transfers: { locker: { kind: "memory", acquireTimeoutSeconds: 2 } } }));
    const u = new URL(minio.endpoint);
    s3 = new Minio.Client({ endPoint: u.hostname, port: Number(u.port), useSSL: false, accessKey: minio.accessKey, secretKey: minio.secretKey });
  }, 60_000);
  afterAll(async () => {
    const dataDir = relay?.dataDir;
    await relay?.dispose();
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    await minio?.destroy();
  });
  const keys = async (): Promise<string[]> => {
    const out: string[] = [];
    for await (const o of s3.listObjectsV2("tus-it", "site-a/uploads/", true) as AsyncIterable<{ name?: string }>) if (o.name) out.push(o.name);
    return out;
  };

  it("tus-js-client parallelUploads through a cutting proxy: partials in the bucket, a final ingested byte-exact, partial bytes removed", async () => {
    const proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: relay.port }, resetEveryBytes: 120_000 });
    try {
      const insts = studyOf(10, 128);
      const t = await createTransfer(relay.url, insts);
      const bundle = await bundleOf(insts);
      const up = await parallelUpload(`${proxy.url}/api/uploads`, bundle, { parallel: 3, metadata: { transferId: t.id } });
      expect(proxy.stats().resets).toBeGreaterThan(0);
      expect(JSON.parse(up.body)).toMatchObject({ state: "done", size: bundle.length, counts: { stored: 10, failed: 0 } });
      await expectStoredExactly(relay, insts);
      const head = await fetch(`${relay.url}${new URL(up.url).pathname}`, { method: "HEAD", headers: TUS });
      expect(head.headers.get("upload-offset")).toBe(String(bundle.length));
      const parts = head.headers.get("upload-concat")!.slice("final;".length).split(" ").map((p) => path.basename(p));
      expect(parts).toHaveLength(3);
      // partials' bytes objects are gone, their .info stay (HEAD still says complete)
      const left = await keys();
      for (const p of parts) {
        expect(left).toContain(`site-a/uploads/${p}.info`);
        expect(left).not.toContain(`site-a/uploads/${p}`);
      }
    } finally {
      await proxy.close();
    }
  }, 60_000);

  it("a partial continues on a restarted relay; the final there ingests; a retried final is the same final; a partial alone is never ingested", async () => {
    const insts = studyOf(4);
    const bundle = await bundleOf(insts);
    const half = Math.floor(bundle.length / 2);
    const t = await createTransfer(relay.url, insts);
    const first = await rawPartial(`${relay.url}/api/uploads`, bundle.subarray(0, half));
    const second = await rawPartial(`${relay.url}/api/uploads`, bundle.subarray(half), { send: 500 });
    // the relay restarts (uploads and results live in the bucket, the transfer in its data directory)
    const dataDir = relay.dataDir;
    await relay.close();
    relay = await startTestRelay(s3Overrides(minio, { transfers: { locker: { kind: "memory", acquireTimeoutSeconds: 2 } } }), { dataDir });
    const other = relay;
    const at = (u: string) => `${other.url}/api/uploads/${path.basename(new URL(u).pathname)}`;
    expect((await fetch(at(second), { method: "HEAD", headers: TUS })).headers.get("upload-offset")).toBe("500");
    const rest = await fetch(at(second), { method: "PATCH", headers: { ...TUS, "Upload-Offset": "500", "Content-Type": OCTETS }, body: new Uint8Array(bundle.subarray(half + 500)) });
    expect(rest.status).toBe(204);
    expect((await other.services.transfers!.uploads.listComplete()).map((u) => u.id)).not.toContain(path.basename(second));
    expect(await other.services.index.getInstance(insts[0]!.sopInstanceUID, { includePending: true })).toBeNull();
    const fin = await postFinal(`${other.url}/api/uploads`, [at(first), at(second)], { metadata: { transferId: t.id } });
    expect(fin.status).toBe(201);
    const r1 = (await fin.json()) as UploadResult;
    expect(r1.counts).toMatchObject({ stored: 4, failed: 0 });
    const again = await postFinal(`${other.url}/api/uploads`, [at(first), at(second)], { metadata: { transferId: t.id } });
    expect(again.status).toBe(201);
    expect(again.headers.get("location")).toBe(fin.headers.get("location"));
    expect((await again.json()) as UploadResult).toEqual(r1);
    await expectStoredExactly(relay, insts);
  }, 60_000);
});
