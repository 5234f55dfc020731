/**
 * Transfers over a bad link, with tus-js-client as the real client and the fault-injecting TCP proxy between it and
 * the relay: connections cut again and again, the relay killed and restarted mid-upload, the same bundle sent
 * twice, overlapping bundles sent at once.
 */
import { spawn, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as tus from "tus-js-client";
import tar from "tar-stream";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { startFaultProxy, type FaultProxy } from "../support/faultProxy.ts";
import { generateStudy, newUid } from "../../scripts/lib/synthetic.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";
import { freePort } from "../../scripts/lib/net.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");
type Inst = { sopInstanceUID: string; seriesInstanceUID: string; studyInstanceUID: string; bytes: Buffer };

async function tarOf(insts: Inst[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const [i, x] of insts.entries()) pack.entry({ name: `IM${i}.dcm`, size: x.bytes.length }, x.bytes);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

interface Sent {
  result: UploadResult;
  retries: number;
  /** Upload-Offset of every HEAD (what the relay said it already had when the client came back) */
  headOffsets: number[];
}

/** tus-js-client with many quick retries (a cut link is the normal case here); bounded by the retry list. */
function send(endpoint: string, bytes: Buffer, opts: { metadata?: Record<string, string>; onProgress?: (sent: number) => void } = {}): Promise<Sent> {
  let retries = 0;
  const headOffsets: number[] = [];
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(bytes, {
      endpoint,
      metadata: opts.metadata ?? {},
      chunkSize: Number.POSITIVE_INFINITY,
      // ~30 s of retries: a relay restarting on a busy machine can take that long to listen again
      retryDelays: Array.from({ length: 120 }, (_, i) => (i === 0 ? 0 : 250)),
      storeFingerprintForResuming: false,
      onShouldRetry: () => {
        retries++;
        return true;
      },
      onAfterResponse: (req, res) => {
        if (req.getMethod() === "HEAD") headOffsets.push(Number(res.getHeader("Upload-Offset")));
      },
      onProgress: (sent) => opts.onProgress?.(sent),
      onSuccess: ({ lastResponse }) => {
        // the final response carries the result; if it was lost, GET the upload URL
        const body = lastResponse.getBody();
        const done = (r: UploadResult) => resolve({ result: r, retries, headOffsets });
        if (body && body.startsWith("{")) return done(JSON.parse(body) as UploadResult);
        fetch(upload.url!).then((r) => r.json()).then((r) => done(r as UploadResult), reject);
      },
      onError: reject,
    });
    upload.start();
  });
}

describe("uploads through a faulty link (in-process relay)", () => {
  let relay: TestRelay;
  let proxy: FaultProxy;

  beforeAll(async () => {
    relay = await startTestRelay();
    proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: relay.port }, latencyMs: 5 });
  });
  afterAll(async () => {
    await proxy?.close();
    await relay?.dispose();
  });

  const blobSha = async (uid: string) => {
    const loc = await relay.services.index.getInstance(uid);
    if (!loc) return null;
    const h = crypto.createHash("sha256");
    for await (const c of await relay.services.store.get(loc.blobKey)) h.update(c as Buffer);
    return h.digest("hex");
  };

  it("finishes a bundle upload cut 5+ times, and the stored instances are byte-identical", async () => {
    const insts = [...generateStudy({ instances: 6, seriesCount: 2, rows: 512, columns: 512, modality: "CT", studyInstanceUID: newUid(), seed: 11 })] as Inst[];
    const bundle = await tarOf(insts);
    expect(bundle.length).toBeGreaterThan(3 * 1024 * 1024);
    proxy.setFaults({ resetEveryBytes: 450 * 1024 });
    const before = proxy.stats().resets;
    try {
      const sent = await send(`${proxy.url}/api/uploads`, bundle);
      expect(proxy.stats().resets - before).toBeGreaterThanOrEqual(5);
      expect(sent.retries).toBeGreaterThanOrEqual(5);
      // it resumed: the relay reported kept bytes when the client came back
      expect(Math.max(...sent.headOffsets)).toBeGreaterThan(0);
      expect(sent.result.counts).toMatchObject({ entries: 6, stored: 6, failed: 0 });
    } finally {
      proxy.setFaults({ resetEveryBytes: undefined });
    }
    for (const i of insts) expect(await blobSha(i.sopInstanceUID)).toBe(sha(i.bytes));
  }, 60_000);

  it("stores nothing new when the same bundle is uploaded twice", async () => {
    const insts = [...generateStudy({ instances: 5, rows: 32, columns: 32, studyInstanceUID: newUid(), seed: 12 })] as Inst[];
    const bundle = await tarOf(insts);
    const first = await send(`${proxy.url}/api/uploads`, bundle);
    expect(first.result.counts).toMatchObject({ stored: 5, alreadyStored: 0 });
    const blobsBefore = await countBlobs(relay);
    const second = await send(`${proxy.url}/api/uploads`, bundle);
    expect(second.result.counts).toMatchObject({ entries: 5, stored: 0, alreadyStored: 5, failed: 0 });
    expect(await countBlobs(relay)).toBe(blobsBefore);
  }, 30_000);

  it("stores each instance once when overlapping bundles are uploaded at the same time", async () => {
    const study = newUid();
    const insts = [...generateStudy({ instances: 12, seriesCount: 2, rows: 32, columns: 32, studyInstanceUID: study, seed: 13 })] as Inst[];
    const blobsBefore = await countBlobs(relay);
    const [a, b, c] = await Promise.all([
      send(`${proxy.url}/api/uploads`, await tarOf(insts.slice(0, 8))),
      send(`${proxy.url}/api/uploads`, await tarOf(insts.slice(4, 12))),
      send(`${proxy.url}/api/uploads`, await tarOf(insts.slice(2, 10))),
    ]);
    const stored = a.result.counts.stored + b.result.counts.stored + c.result.counts.stored;
    const already = a.result.counts.alreadyStored + b.result.counts.alreadyStored + c.result.counts.alreadyStored;
    expect(stored).toBe(12);
    expect(already).toBe(24 - 12);
    expect(await relay.services.index.listInstances({ studyInstanceUID: study })).toHaveLength(12);
    expect(await countBlobs(relay)).toBe(blobsBefore + 12);
    for (const i of insts) expect(await blobSha(i.sopInstanceUID)).toBe(sha(i.bytes));
  }, 30_000);
});

async function countBlobs(relay: TestRelay): Promise<number> {
  let n = 0;
  // bounded by the store's content
  for await (const _ of relay.services.store.list()) n++;
  return n;
}

// ---------------------------------------------------------------- relay as a child process


function spawnRelay(dataDir: string, port: number): Promise<ChildProcess> {
  // as `npm start` runs it (the built dist/relay.mjs)
  const proc = spawn(process.execPath, [path.join(ROOT, "bin/dicom-relay.js"), "serve"], {
    cwd: ROOT,
    env: {
      ...process.env,
      DICOM_RELAY_DATA_DIR: dataDir,
      DICOM_RELAY_SERVER_PORT: String(port),
      DICOM_RELAY_SERVER_HOST: "127.0.0.1",
      DICOM_RELAY_LOG_LEVEL: "warn",
      DICOM_RELAY_AUTH_ENABLED: "false",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("relay did not start within 60 s")), 60_000);
    proc.stdout!.on("data", (d: Buffer) => {
      if (d.toString().includes("listening")) {
        clearTimeout(timer);
        proc.stdout!.resume();
        resolve(proc);
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`relay exited with ${code} before listening`));
    });
  });
}

describe("relay killed and restarted mid-upload (child process)", () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-kill-"));
  let proc: ChildProcess | null = null;
  let proxy: FaultProxy | null = null;

  afterAll(async () => {
    await proxy?.close();
    if (proc && proc.exitCode === null) {
      const exited = new Promise((r) => proc!.once("exit", r));
      proc.kill("SIGTERM");
      await exited;
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it("resumes from the offset the relay kept on disk", async () => {
    const port = await freePort();
    proc = await spawnRelay(dataDir, port);
    // 4 MB/s: the ~8 MB bundle takes ~2 s, time enough to kill the relay halfway
    proxy = await startFaultProxy({ target: { host: "127.0.0.1", port }, bandwidthBytesPerSec: 4 * 1024 * 1024 });
    const study = newUid();
    const insts = [...generateStudy({ instances: 16, seriesCount: 2, rows: 512, columns: 512, modality: "CT", studyInstanceUID: study, seed: 21 })] as Inst[];
    const bundle = await tarOf(insts);

    let killed: Promise<void> | null = null;
    const sent = send(`${proxy.url}/api/uploads`, bundle, {
      onProgress: (n) => {
        if (killed || n < bundle.length * 0.4) return;
        // a real crash: no graceful shutdown, then the relay comes back on the same port and data directory
        const victim = proc!;
        killed = (async () => {
          const exited = new Promise((r) => victim.once("exit", r));
          victim.kill("SIGKILL");
          await exited;
          proc = await spawnRelay(dataDir, port);
        })();
      },
    });
    const { result, headOffsets } = await sent;
    expect(killed).not.toBeNull();
    await killed;
    // the client came back to an offset the relay kept across the restart, not to zero
    expect(headOffsets.some((o) => o > 0)).toBe(true);
    expect(proxy.stats().bytesUp).toBeLessThan(bundle.length * 1.6);
    expect(result.counts).toMatchObject({ entries: 16, stored: 16, failed: 0 });
    const bySop = new Map(result.entries.map((e) => [e.sopInstanceUID, e.sha256]));
    for (const i of insts) expect(bySop.get(i.sopInstanceUID)).toBe(sha(i.bytes));
    const qido = await fetch(`http://127.0.0.1:${port}/dicom-web/studies/${study}/instances`, { headers: { Accept: "application/dicom+json" } });
    expect(((await qido.json()) as unknown[]).length).toBe(16);
  }, 90_000);
});

describe("relay killed mid-STOW (child process, group commit)", () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-kill-stow-"));
  let proc: ChildProcess | null = null;

  afterAll(async () => {
    if (proc && proc.exitCode === null) {
      const exited = new Promise((r) => proc!.once("exit", r));
      proc.kill("SIGTERM");
      await exited;
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  /** One STOW-RS request by raw HTTP; null when the connection died with the relay. */
  async function stowRaw(url: string, insts: Inst[]): Promise<number | null> {
    const boundary = "kill" + crypto.randomBytes(6).toString("hex");
    const body = Buffer.concat([
      ...insts.flatMap((i) => [Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`), i.bytes, Buffer.from("\r\n")]),
      Buffer.from(`--${boundary}--\r\n`),
    ]);
    try {
      const res = await fetch(`${url}/studies`, {
        method: "POST", body,
        headers: { "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`, Accept: "application/dicom+json" },
      });
      await res.arrayBuffer();
      return res.status;
    } catch {
      return null;
    }
  }

  it("keeps every acknowledged instance; the others are wholly there or wholly absent, never half-visible", async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/dicom-web`;
    proc = await spawnRelay(dataDir, port);
    const study = newUid();
    const insts = [...generateStudy({ instances: 60, seriesCount: 3, rows: 32, columns: 32, modality: "MR", studyInstanceUID: study, seed: 31 })] as Inst[];
    const batches = Array.from({ length: 12 }, (_, i) => insts.slice(i * 5, i * 5 + 5));
    const acknowledged: Inst[] = [];
    let killed: Promise<void> | null = null;
    // all requests at once, so several groups are being committed when the first answer triggers the crash
    await Promise.all(batches.map(async (batch) => {
      const status = await stowRaw(url, batch);
      if (status === 200 && !killed) acknowledged.push(...batch);
      if (status !== null && !killed) {
        const victim = proc!;
        killed = new Promise<void>((r) => victim.once("exit", () => r()));
        victim.kill("SIGKILL");
      }
    }));
    expect(killed).not.toBeNull();
    await killed;
    expect(acknowledged.length).toBeGreaterThan(0);
    proc = await spawnRelay(dataDir, port);

    const client = dicomwebClient(url);
    const visible = await client.searchForInstances({ studyInstanceUID: study });
    const visibleSops = new Set(visible.map((i) => String(i["00080018"]!.Value![0])));
    // what the relay answered 200 for survived the crash
    for (const i of acknowledged) expect(visibleSops.has(i.sopInstanceUID)).toBe(true);
    // every visible instance has its bytes, identical to what was sent
    const bySop = new Map(insts.map((i) => [i.sopInstanceUID, sha(i.bytes)]));
    const parts = await client.retrieveStudy({ studyInstanceUID: study });
    expect(parts.map((p) => sha(Buffer.from(p))).sort()).toEqual([...visibleSops].map((s) => bySop.get(s)).sort());
    // the study and series rows count exactly the visible instances (no half-committed group)
    const [studyRow] = await client.searchForStudies({ queryParams: { StudyInstanceUID: study, includefield: "00201208" } });
    expect(studyRow!["00201208"]!.Value![0]).toBe(visibleSops.size);
    const series = await client.searchForSeries({ studyInstanceUID: study, queryParams: { includefield: "00201209" } });
    expect(series.reduce((n, s) => n + Number(s["00201209"]!.Value![0]), 0)).toBe(visibleSops.size);

    // the sender re-sends what it was not told was stored: all of it lands, nothing conflicts
    const statuses = await Promise.all(batches.map((b) => stowRaw(url, b)));
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(await client.searchForInstances({ studyInstanceUID: study })).toHaveLength(60);
  }, 90_000);
});
