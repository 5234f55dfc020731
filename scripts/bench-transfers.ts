/**
 * Transfer benchmarks (wired into npm run bench by scripts/bench.ts): the relay runs as a separate process
 * (startServer), clients run here. Every loop is bounded in count and time.
 *
 *  - tus upload throughput on loopback vs a raw HTTP PUT of the same bytes into the same disk (target >= 80%);
 *  - one bundle of N small instances vs N single-file uploads;
 *  - a study through the fault proxy at 20 Mbit/s with a reset every 30 MB vs the time the bandwidth alone needs
 *    (target <= 1.25x);
 *  - bytes on the wire vs study size with gzip bundles;
 *  - peak RSS of the relay while a large bundle is ingested (target < 300 MB for 2 GB);
 *  - the same ~150 MB tus upload with uploads on local disk (storage fs) and in S3 (storage s3, a real MinIO on
 *    loopback): upload MB/s, upload + ingest MB/s, peak RSS (benchTusStorage; BENCH_SKIP_S3=1 skips the S3 side).
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import * as tus from "tus-js-client";
import tar from "tar-stream";
import { startServer } from "./bench.ts";
import { generateStudy, newUid, writeLargeInstance } from "./lib/synthetic.ts";
import { createTarGzBundle } from "../src/transfers/bundle.ts";
import { startFaultProxy } from "../test/support/faultProxy.ts";
import { startMinio } from "../test/support/minio.ts";

const QUICK = process.env.BENCH_QUICK === "1";
const MB = 1024 * 1024;
const SIZES = {
  throughputBytes: QUICK ? 64 * MB : 512 * MB,
  smallInstances: QUICK ? 200 : 2000,
  linkStudyBytes: QUICK ? 15 * MB : 150 * MB,
  linkResetEveryBytes: QUICK ? 3 * MB : 30 * MB,
  linkBitsPerSecond: 20_000_000,
  tusStorageBytes: QUICK ? 32 * MB : 150 * MB,
  gzipStudyInstances: QUICK ? 20 : 100,
  largeBundleBytes: QUICK ? 256 * MB : 2048 * MB,
};
const DEADLINE = Date.now() + (QUICK ? 10 : 30) * 60_000;
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

function checkDeadline(): void {
  if (Date.now() > DEADLINE) throw new Error("transfer benchmark exceeded its time bound");
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

function request(url: string, opts: http.RequestOptions, body?: Readable | Buffer): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { agent, ...opts }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (body instanceof Readable) body.pipe(req);
    else req.end(body);
  });
}

const TUS = { "Tus-Resumable": "1.0.0" };

/** Creation + one PATCH streaming the file (what a tus client does on a clean link). Returns the upload URL. */
async function tusRaw(base: string, file: string, metadata: Record<string, string> = {}): Promise<{ url: string; body: Buffer }> {
  const size = (await fsp.stat(file)).size;
  const meta = Object.entries(metadata).map(([k, v]) => `${k} ${Buffer.from(v).toString("base64")}`).join(",");
  const created = await request(`${base}/api/uploads`, { method: "POST", headers: { ...TUS, "Upload-Length": String(size), ...(meta ? { "Upload-Metadata": meta } : {}) } });
  if (created.status !== 201) throw new Error(`tus creation answered ${created.status}: ${created.body.toString()}`);
  const url = new URL(created.headers.location!, base).href;
  const patched = await request(url, {
    method: "PATCH",
    headers: { ...TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream", "Content-Length": String(size) },
  }, fs.createReadStream(file, { highWaterMark: MB }));
  if (patched.status !== 204 && patched.status !== 200) throw new Error(`tus PATCH answered ${patched.status}: ${patched.body.toString()}`);
  return { url, body: patched.body };
}

/** Poll the upload's result until done (bounded by the deadline). */
async function waitResult(url: string): Promise<{ counts: { stored: number; alreadyStored: number; failed: number }; error: string | null }> {
  // each turn sleeps 100 ms; the deadline bounds the loop
  for (;;) {
    checkDeadline();
    const r = await request(url, { method: "GET" });
    if (r.status === 200) {
      const j = JSON.parse(r.body.toString()) as { state: string; counts: { stored: number; alreadyStored: number; failed: number }; error: string | null };
      if (j.state === "done") return j;
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** A plain HTTP server that writes each PUT body to a file: the raw baseline on the same disk. */
async function rawPutServer(dir: string): Promise<{ url: string; close(): Promise<void> }> {
  let n = 0;
  const server = http.createServer((req, res) => {
    const target = path.join(dir, `put-${n++}`);
    pipeline(req, fs.createWriteStream(target)).then(
      () => res.writeHead(204).end(),
      () => res.writeHead(500).end(),
    );
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** A plain tar of the entries; an entry given as a file is streamed from disk (never read into memory). */
async function writeTar(file: string, entries: Iterable<{ name: string; bytes?: Buffer; file?: string }>): Promise<number> {
  const pack = tar.pack();
  const done = pipeline(pack, fs.createWriteStream(file));
  for (const e of entries) {
    checkDeadline();
    const bytes = e.bytes;
    if (bytes) {
      await new Promise<void>((res, rej) => pack.entry({ name: e.name, size: bytes.length }, bytes, (err) => (err ? rej(err) : res())));
    } else {
      const size = (await fsp.stat(e.file!)).size;
      await new Promise<void>((res, rej) => {
        const w = pack.entry({ name: e.name, size }, (err) => (err ? rej(err) : res()));
        fs.createReadStream(e.file!, { highWaterMark: MB }).on("error", rej).pipe(w as unknown as NodeJS.WritableStream);
      });
    }
  }
  pack.finalize();
  await done;
  return (await fsp.stat(file)).size;
}

async function writeTgz(file: string, entries: Iterable<{ name: string; bytes: Buffer }>): Promise<number> {
  const src = (async function* () {
    for (const e of entries) yield { name: e.name, size: e.bytes.length, body: Readable.from([e.bytes]) };
  })();
  await pipeline(createTarGzBundle(src), fs.createWriteStream(file));
  return (await fsp.stat(file)).size;
}

/** Instances of a CT-like study until about targetBytes. */
function* studyOf(targetBytes: number, opts: { rows: number; columns: number; seed: number }): Generator<{ name: string; bytes: Buffer }> {
  const perInstance = opts.rows * opts.columns * 2 + 2048;
  const count = Math.max(1, Math.ceil(targetBytes / perInstance));
  let i = 0;
  for (const inst of generateStudy({ instances: count, seriesCount: Math.min(4, count), rows: opts.rows, columns: opts.columns, modality: "CT", studyInstanceUID: newUid(), seed: opts.seed })) {
    yield { name: `IM${String(i++).padStart(5, "0")}`, bytes: inst.bytes };
  }
}

/** One tus-js-client upload of a file (the real client, with retries), resolving when the bytes are all acknowledged. */
function tusClient(endpoint: string, file: string, onRetry: () => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(fs.createReadStream(file), {
      endpoint,
      chunkSize: Number.POSITIVE_INFINITY,
      retryDelays: Array.from({ length: 50 }, (_, i) => (i === 0 ? 0 : 500)),
      storeFingerprintForResuming: false,
      onShouldRetry: () => {
        onRetry();
        return true;
      },
      onSuccess: () => resolve(upload.url!),
      onError: reject,
    });
    upload.start();
  });
}

export async function benchTransfers(workDir: string) {
  const dir = path.join(workDir, "transfers");
  await fsp.mkdir(dir, { recursive: true });
  const out: Record<string, unknown> = { quick: QUICK };

  // --- tus throughput vs raw PUT of the same bytes, same disk ---
  {
    const file = path.join(dir, "large.dcm");
    await writeLargeInstance(file, SIZES.throughputBytes);
    const size = (await fsp.stat(file)).size;
    const raw = await rawPutServer(path.join(dir));
    let rawSeconds: number;
    try {
      const t = performance.now();
      const r = await request(raw.url, { method: "PUT", headers: { "Content-Length": String(size) } }, fs.createReadStream(file, { highWaterMark: MB }));
      if (r.status !== 204) throw new Error(`raw PUT answered ${r.status}`);
      rawSeconds = (performance.now() - t) / 1000;
    } finally {
      await raw.close();
      for (const f of await fsp.readdir(dir)) if (f.startsWith("put-")) await fsp.rm(path.join(dir, f), { force: true });
    }
    // finishWaitSeconds 0: the final PATCH answers once the bytes are on disk; ingest is timed separately
    const server = await startServer(path.join(dir, "relay-throughput"), { DICOM_RELAY_TRANSFERS_FINISH_WAIT_SECONDS: "0" });
    const base = server.url.replace(/\/dicom-web$/, "");
    try {
      server.resetPeak();
      const t = performance.now();
      const { url } = await tusRaw(base, file);
      const uploadSeconds = (performance.now() - t) / 1000;
      const result = await waitResult(url);
      const totalSeconds = (performance.now() - t) / 1000;
      if (result.counts.stored !== 1) throw new Error(`the large instance was not stored: ${JSON.stringify(result)}`);
      out.throughput = {
        bytes: size,
        rawPutMBps: round(size / MB / rawSeconds),
        tusUploadMBps: round(size / MB / uploadSeconds),
        tusVsRaw: round(rawSeconds / uploadSeconds, 2),
        tusUploadPlusIngestMBps: round(size / MB / totalSeconds),
        serverPeakRssMB: round(server.peakRss() / MB),
      };
    } finally {
      await server.stop();
      await fsp.rm(file, { force: true });
    }
  }

  // --- one bundle of N small instances vs N single uploads ---
  {
    const n = SIZES.smallInstances;
    const insts = [...generateStudy({ instances: n, seriesCount: 4, rows: 16, columns: 16, modality: "MR", seed: 7 })];
    const bundle = path.join(dir, "small.tgz");
    const bundleBytes = await writeTgz(bundle, insts.map((x, i) => ({ name: `IM${i}`, bytes: x.bytes })));
    const singles = [...generateStudy({ instances: n, seriesCount: 4, rows: 16, columns: 16, modality: "MR", seed: 8 })];
    const server = await startServer(path.join(dir, "relay-small"));
    const base = server.url.replace(/\/dicom-web$/, "");
    try {
      let t = performance.now();
      const { url } = await tusRaw(base, bundle, { filename: "small.tgz" });
      const r = await waitResult(url);
      const bundleSeconds = (performance.now() - t) / 1000;
      if (r.counts.stored !== n) throw new Error(`bundle stored ${r.counts.stored} of ${n}`);
      // singles: creation-with-upload, one request per instance, 4 at a time
      t = performance.now();
      let next = 0;
      const worker = async () => {
        // each turn takes one instance; n bounds the loop
        while (next < singles.length) {
          checkDeadline();
          const inst = singles[next++]!;
          const res = await request(`${base}/api/uploads`, {
            method: "POST",
            headers: { ...TUS, "Upload-Length": String(inst.bytes.length), "Content-Type": "application/offset+octet-stream" },
          }, inst.bytes);
          if (res.status !== 201) throw new Error(`single upload answered ${res.status}`);
        }
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      const singleSeconds = (performance.now() - t) / 1000;
      out.smallInstances = {
        instances: n,
        bundleBytes,
        bundleSeconds: round(bundleSeconds, 2),
        singleUploadsSeconds: round(singleSeconds, 2),
        bundleSpeedup: round(singleSeconds / bundleSeconds, 1),
        instancesPerSecond: { bundle: round(n / bundleSeconds), singles: round(n / singleSeconds) },
      };
    } finally {
      await server.stop();
      await fsp.rm(bundle, { force: true });
    }
  }

  // --- a study over a 20 Mbit/s link cut every 30 MB ---
  {
    const file = path.join(dir, "link.tar");
    const size = await writeTar(file, studyOf(SIZES.linkStudyBytes, { rows: 512, columns: 512, seed: 3 }));
    const server = await startServer(path.join(dir, "relay-link"));
    const base = new URL(server.url);
    const proxy = await startFaultProxy({
      target: { host: base.hostname, port: Number(base.port) },
      bandwidthBytesPerSec: SIZES.linkBitsPerSecond / 8,
      resetEveryBytes: SIZES.linkResetEveryBytes,
    });
    try {
      let retries = 0;
      const t = performance.now();
      const url = await tusClient(`${proxy.url}/api/uploads`, file, () => retries++);
      const r = await waitResult(url.replace(proxy.url, base.origin));
      const seconds = (performance.now() - t) / 1000;
      const bandwidthSeconds = (size * 8) / SIZES.linkBitsPerSecond;
      out.unreliableLink = {
        studyBytes: size,
        linkMbitPerSecond: SIZES.linkBitsPerSecond / 1e6,
        resetEveryBytes: SIZES.linkResetEveryBytes,
        connectionsCut: retries,
        seconds: round(seconds, 1),
        bandwidthAloneSeconds: round(bandwidthSeconds, 1),
        ratio: round(seconds / bandwidthSeconds, 2),
        stored: r.counts.stored,
      };
    } finally {
      await proxy.close();
      await server.stop();
      await fsp.rm(file, { force: true });
    }
  }

  // --- bytes on the wire vs study size with gzip bundles ---
  {
    const insts = [...studyOf(SIZES.gzipStudyInstances * (512 * 512 * 2 + 2048), { rows: 512, columns: 512, seed: 5 })];
    const studyBytes = insts.reduce((s, x) => s + x.bytes.length, 0);
    const tgzFile = path.join(dir, "wire.tgz");
    const tgzBytes = await writeTgz(tgzFile, insts);
    await fsp.rm(tgzFile, { force: true });
    out.gzipBundle = {
      instances: insts.length,
      studyBytes,
      bundleBytes: tgzBytes,
      studyToWireRatio: round(studyBytes / tgzBytes, 2),
      note: "synthetic pixel data; real CT/MR compress 2-3x with gzip",
    };
  }

  // --- peak RSS while a large bundle is ingested ---
  {
    const file = path.join(dir, "large.tar");
    // few big instances plus many CT slices: both the per-entry streaming and the entry loop are exercised
    const big = path.join(dir, "big.dcm");
    await writeLargeInstance(big, Math.floor(SIZES.largeBundleBytes / 4));
    const bigSize = (await fsp.stat(big)).size;
    const size = await writeTar(file, (function* () {
      yield { name: "big.dcm", file: big };
      yield* studyOf(SIZES.largeBundleBytes - bigSize, { rows: 512, columns: 512, seed: 9 });
    })());
    await fsp.rm(big, { force: true });
    const server = await startServer(path.join(dir, "relay-rss"), { DICOM_RELAY_TRANSFERS_FINISH_WAIT_SECONDS: "0" });
    const base = server.url.replace(/\/dicom-web$/, "");
    try {
      server.resetPeak();
      const t = performance.now();
      const { url } = await tusRaw(base, file);
      const r = await waitResult(url);
      out.largeBundle = {
        bytes: size,
        seconds: round((performance.now() - t) / 1000, 1),
        stored: r.counts.stored,
        failed: r.counts.failed,
        serverPeakRssMB: round(server.peakRss() / MB),
      };
    } finally {
      await server.stop();
      await fsp.rm(file, { force: true });
    }
  }

  out.tusStorage = await benchTusStorage(dir);

  const t = out.throughput as { tusVsRaw: number };
  const l = out.unreliableLink as { ratio: number };
  const b = out.largeBundle as { serverPeakRssMB: number };
  out.targets = {
    "tus upload >= 80% of raw PUT": t.tusVsRaw >= 0.8,
    "unreliable link <= 1.25x bandwidth time": l.ratio <= 1.25,
    "peak RSS < 300 MB for the large bundle": b.serverPeakRssMB < 300,
  };
  agent.destroy();
  return out;
}

/** One tus upload of the same ~150 MB instance to a relay per storage: uploads on local disk, uploads in S3. */
export async function benchTusStorage(dir: string) {
  await fsp.mkdir(dir, { recursive: true });
  const file = path.join(dir, "tus-storage.dcm");
  await writeLargeInstance(file, SIZES.tusStorageBytes);
  const size = (await fsp.stat(file)).size;
  const measure = async (name: string, env: Record<string, string>) => {
    // finishWaitSeconds 0: the final PATCH answers once the bytes are stored; ingest is timed to the result
    const server = await startServer(path.join(dir, `relay-tus-${name}`), { DICOM_RELAY_TRANSFERS_FINISH_WAIT_SECONDS: "0", ...env });
    const base = server.url.replace(/\/dicom-web$/, "");
    try {
      server.resetPeak();
      const t = performance.now();
      const { url } = await tusRaw(base, file);
      const uploadSeconds = (performance.now() - t) / 1000;
      const result = await waitResult(url);
      const totalSeconds = (performance.now() - t) / 1000;
      if (result.counts.stored !== 1) throw new Error(`tus upload on ${name} was not stored: ${JSON.stringify(result)}`);
      return {
        uploadMBps: round(size / MB / uploadSeconds),
        uploadPlusIngestMBps: round(size / MB / totalSeconds),
        serverPeakRssMB: round(server.peakRss() / MB),
      };
    } finally {
      await server.stop();
    }
  };
  try {
    const out: Record<string, unknown> = { bytes: size, fs: await measure("fs", {}) };
    if (process.env.BENCH_SKIP_S3 === "1") {
      out.s3 = { skipped: "BENCH_SKIP_S3=1" };
      return out;
    }
    const minio = await startMinio();
    try {
      out.s3 = {
        storage: "uploads and blobs in MinIO on loopback",
        ...(await measure("s3", {
          DICOM_RELAY_STORAGE_KIND: "s3",
          DICOM_RELAY_STORAGE_S3_ENDPOINT: minio.endpoint,
          DICOM_RELAY_STORAGE_S3_ACCESS_KEY: minio.accessKey,
          DICOM_RELAY_STORAGE_S3_SECRET_KEY: minio.secretKey,
          DICOM_RELAY_STORAGE_S3_BUCKET: "bench-tus",
        })),
      };
    } finally {
      await minio.destroy();
    }
    return out;
  } finally {
    await fsp.rm(file, { force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const work = await fsp.mkdtemp(path.join((await import("node:os")).tmpdir(), "relay-bench-transfers-"));
  // BENCH_ONLY=tus-storage: just the fs vs S3 tus figure
  (process.env.BENCH_ONLY === "tus-storage" ? benchTusStorage(path.join(work, "transfers")).then((r) => ({ tusStorage: r })) : benchTransfers(work))
    .then((r) => process.stdout.write(JSON.stringify(r, null, 2) + "\n"))
    .catch((err) => {
      process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
      process.exitCode = 1;
    })
    .finally(() => fsp.rm(work, { recursive: true, force: true }));
}
