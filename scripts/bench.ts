/**
 * npm run bench: measures the relay as a separate process (so its RSS is its own) over loopback,
 * and prints one JSON document. Every loop is bounded in count and time.
 *
 *   BENCH_QUICK=1 npm run bench            smaller sizes (for a smoke run)
 *   BENCH_ONLY=index100k npm run bench     only the named sections (comma-separated)
 *   BENCH_SKIP_S3=1, BENCH_SKIP_PEER=1, BENCH_SKIP_INDEX100K=1, BENCH_SKIP_CROSSBORDER=1, BENCH_SKIP_DIMSE=1   leave one out
 *   BENCH_RELAY_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof"   extra node options of the relay processes (profiling)
 *   BENCH_CROSSBORDER_BIG_PROFILES=all|none|40/4/200,...   the large study's link profiles (scripts/bench-crossborder.ts)
 */
import { spawn, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import { once } from "node:events";
import fs from "node:fs";
import fsp from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { generateStudy, makeInstance, newUid, writeLargeInstance } from "./lib/synthetic.ts";
import { orthancAvailable, orthancVersion, startOrthanc } from "./orthancPeer.ts";
import { benchTransfers } from "./bench-transfers.ts";
import { benchDimse } from "./bench-dimse.ts";
import { benchIndex100k } from "./bench-index.ts";
import { benchCrossborder } from "./bench-crossborder.ts";
import { startMinio } from "../test/support/minio.ts";
import { freePort } from "./lib/net.ts";
import { cpuSeconds, peakRssMeter } from "./lib/rss.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const QUICK = process.env.BENCH_QUICK === "1";
const SIZES = {
  ctInstances: QUICK ? 30 : 300,
  smallInstances: QUICK ? 200 : 2000,
  /** one study of small instances retrieved whole by WADO-RS: per-instance overhead shows */
  smallStudyInstances: QUICK ? 200 : 1000,
  wadoRepeats: QUICK ? 2 : 3,
  largeInstanceBytes: QUICK ? 50 * 1024 * 1024 : 500 * 1024 * 1024,
  qidoRepeats: QUICK ? 30 : 200,
  metadataRepeats: QUICK ? 10 : 50,
  documentPdfBytes: QUICK ? 20 * 1024 * 1024 : 95 * 1024 * 1024,
  documentPngWidth: QUICK ? 1000 : 4000,
  documentPngHeight: QUICK ? 750 : 3000,
};
const DEADLINE = Date.now() + 30 * 60_000;

function checkDeadline() {
  if (Date.now() > DEADLINE) throw new Error("benchmark exceeded its 30-minute bound");
}


interface Server {
  proc: ChildProcess;
  url: string;
  /** resident set size now, bytes */
  rss(): number;
  /** peak resident set size since the last reset, bytes (VmHWM; scripts/lib/rss.ts) */
  peakRss(): number;
  resetPeak(): void;
  peakRssMethod: string;
  /** CPU time used so far, seconds */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

export async function startServer(dataDir: string, env: Record<string, string> = {}): Promise<Server> {
  const port = await freePort();
  // BENCH_RELAY_NODE_ARGS: node options for every relay the bench starts; BENCH_CPU_PROF_DIR: each writes a V8 CPU
  // profile there when it stops (where the time goes)
  const nodeArgs = (process.env.BENCH_RELAY_NODE_ARGS ?? "").split(/\s+/).filter(Boolean);
  if (process.env.BENCH_CPU_PROF_DIR) nodeArgs.push("--cpu-prof", "--cpu-prof-dir", process.env.BENCH_CPU_PROF_DIR);
  // as `npm start` runs it: the built dist/relay.mjs (bin/dicom-relay.js builds it when a source is newer)
  const proc = spawn(process.execPath, [...nodeArgs, path.join(ROOT, "bin/dicom-relay.js"), "serve"], {
    cwd: ROOT,
    env: {
      ...process.env,
      DICOM_RELAY_DATA_DIR: dataDir,
      DICOM_RELAY_SERVER_PORT: String(port),
      DICOM_RELAY_SERVER_HOST: "127.0.0.1",
      DICOM_RELAY_LOG_LEVEL: "warn",
      DICOM_RELAY_AUTH_ENABLED: "false",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("relay did not start within 60 s")), 60_000);
    proc.stdout!.on("data", (d: Buffer) => {
      if (d.toString().includes("listening")) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once("exit", (code) => reject(new Error(`relay exited with ${code}`)));
  });
  proc.stdout!.resume();
  const meter = peakRssMeter(proc.pid!);
  return {
    proc,
    url: `http://127.0.0.1:${port}/dicom-web`,
    rss: meter.rss,
    peakRss: meter.peakRss,
    resetPeak: meter.resetPeak,
    peakRssMethod: meter.method,
    cpuSeconds: () => cpuSeconds(proc.pid!),
    stop: () =>
      new Promise((resolve) => {
        meter.close();
        proc.once("exit", () => resolve());
        proc.kill("SIGTERM");
      }),
  };
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

function httpRequest(url: string, opts: http.RequestOptions, body?: Readable | Buffer): Promise<{ status: number; body: Buffer; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { agent, ...opts }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks), headers: res.headers }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (body instanceof Readable) body.pipe(req);
    else req.end(body);
  });
}

/** One STOW-RS request body streamed from a list of buffers or files. */
function stowBody(boundary: string, parts: (Buffer | string)[]): Readable {
  return Readable.from((async function* () {
    for (const p of parts) {
      yield Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`);
      if (typeof p === "string") for await (const c of fs.createReadStream(p, { highWaterMark: 1 << 20 })) yield c as Buffer;
      else yield p;
      yield Buffer.from("\r\n");
    }
    yield Buffer.from(`--${boundary}--\r\n`);
  })());
}

async function stow(url: string, parts: (Buffer | string)[]): Promise<void> {
  const boundary = "bench" + crypto.randomBytes(8).toString("hex");
  const res = await httpRequest(`${url}/studies`, {
    method: "POST",
    headers: { "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`, Accept: "application/dicom+json" },
  }, stowBody(boundary, parts));
  if (res.status !== 200) throw new Error(`STOW-RS answered ${res.status}: ${res.body.toString().slice(0, 300)}`);
  // a 200 that still lists failed instances (Orthanc's plugin answers so; PS3.18 says 202): said here, not later as
  // a study that comes back short
  const failed = stowFailures(res.body);
  if (failed.length) throw new Error(`STOW-RS answered 200 but did not store ${failed.length} of ${parts.length} instances (failure reasons ${[...new Set(failed)].join(", ")})`);
}

/** The Failure Reasons (0008,1197) of a STOW-RS answer's Failed SOP Sequence (0008,1198); [] when none failed. */
function stowFailures(body: Buffer): string[] {
  let json: Record<string, { Value?: Array<Record<string, { Value?: unknown[] }>> }>;
  try {
    json = JSON.parse(body.toString());
  } catch {
    return [];
  }
  return (json["00081198"]?.Value ?? []).map((item) => String(item["00081197"]?.Value?.[0] ?? "none given"));
}

/** Ingest instances in batches with bounded concurrency; returns seconds. */
async function ingest(url: string, batches: AsyncIterable<Buffer[]> | Iterable<Buffer[]>, concurrency: number): Promise<number> {
  const started = performance.now();
  const inflight = new Set<Promise<void>>();
  for await (const batch of batches) {
    checkDeadline();
    const p = stow(url, batch).finally(() => inflight.delete(p));
    inflight.add(p);
    if (inflight.size >= concurrency) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  return (performance.now() - started) / 1000;
}

function* batched<T>(items: Iterable<T>, size: number): Generator<T[]> {
  let batch: T[] = [];
  for (const it of items) {
    batch.push(it);
    if (batch.length === size) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length) yield batch;
}

function percentiles(samples: number[]): { p50: number; p95: number; p99: number; max: number; n: number } {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  const r = (x: number) => Math.round(x * 100) / 100;
  return { p50: r(at(0.5)), p95: r(at(0.95)), p99: r(at(0.99)), max: r(s[s.length - 1]!), n: s.length };
}

async function timeGet(url: string, accept: string): Promise<{ ms: number; bytes: number; status: number }> {
  const t = performance.now();
  const res = await httpRequest(url, { method: "GET", headers: { Accept: accept } });
  return { ms: performance.now() - t, bytes: res.body.length, status: res.status };
}

/** Streams a WADO-RS response into a hash (never into memory); returns bytes and seconds. */
async function streamGet(url: string, accept: string): Promise<{ bytes: number; seconds: number }> {
  const t = performance.now();
  let bytes = 0;
  await new Promise<void>((resolve, reject) => {
    http.get(url, { agent, headers: { Accept: accept } }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`GET ${url} answered ${res.statusCode}`));
      const h = crypto.createHash("sha256");
      res.on("data", (c: Buffer) => { bytes += c.length; h.update(c); });
      res.on("end", () => resolve());
      res.on("error", reject);
    }).on("error", reject);
  });
  return { bytes, seconds: (performance.now() - t) / 1000 };
}

const MB = 1024 * 1024;
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

interface Target {
  url: string;
  rss(): number;
  peakRss(): number;
  resetPeak(): void;
  peakRssMethod: string;
  cpuSeconds(): number;
}

export async function benchCore(workDir: string) {
  const server = await startServer(path.join(workDir, "core"));
  try {
    return await measureDicomweb(server);
  } finally {
    await server.stop();
  }
}

/** The same workload against any DICOMweb origin server (the relay, or Orthanc as the peer). */
export async function measureDicomweb(server: Target) {
  {
    // --- 300-instance 512x512 16-bit CT ---
    const ctStudy = newUid();
    let ctBytes = 0;
    const ctGen = (function* () {
      for (const inst of generateStudy({ instances: SIZES.ctInstances, seriesCount: 3, rows: 512, columns: 512, modality: "CT", studyInstanceUID: ctStudy, patientName: "Wang^XiaoDong=王^小东", charset: "GB18030", seed: 1 })) {
        ctBytes += inst.bytes.length;
        yield inst.bytes;
      }
    })();
    // each phase's peak is its own (the meter is reset before it); what the process held when it began beside it
    const idleRss = server.rss();
    server.resetPeak();
    const ctCpuBefore = server.cpuSeconds();
    const ctSeconds = await ingest(server.url, batched(ctGen, 10), 2);
    const ctPeak = server.peakRss();
    const ctCpu = server.cpuSeconds() - ctCpuBefore;

    // --- 2,000 small instances over 100 studies ---
    let smallBytes = 0;
    const smallGen = (function* () {
      const perStudy = SIZES.smallInstances / 100;
      for (let s = 0; s < 100; s++) {
        for (const inst of generateStudy({ instances: perStudy, seriesCount: 2, rows: 16, columns: 16, modality: ["CR", "MR", "US", "CT"][s % 4], patientID: `P${s}`, studyDate: `2024${String((s % 12) + 1).padStart(2, "0")}15`, seed: s + 10 })) {
          smallBytes += inst.bytes.length;
          yield inst.bytes;
        }
      }
    })();
    // the CT's leftovers (heap not yet shrunk, freed memory glibc keeps) are in this phase's figure: the same
    // process, as in production; in two halves so that a peak growing with the number of instances shows
    const smallHalf = function* () {
      for (let i = 0; i < SIZES.smallInstances / 2; i++) {
        const next = smallGen.next();
        if (next.done) return;
        yield next.value;
      }
    };
    const rssBeforeSmall = server.rss();
    server.resetPeak();
    const smallCpuBefore = server.cpuSeconds();
    let smallSeconds = await ingest(server.url, batched(smallHalf(), 50), 2);
    const smallFirstHalfPeak = server.peakRss();
    smallSeconds += await ingest(server.url, batched(smallHalf(), 50), 2);
    const smallPeak = server.peakRss();
    const smallCpu = server.cpuSeconds() - smallCpuBefore;

    // --- QIDO ---
    const queries = [
      "/studies?PatientID=P42",
      "/studies?PatientName=Wang*",
      "/studies?StudyDate=20240301-20240630",
      "/studies?ModalitiesInStudy=MR&limit=50",
      `/studies/${ctStudy}/series`,
      `/studies/${ctStudy}/instances?limit=100`,
      "/studies?limit=100",
    ];
    const qidoMs: number[] = [];
    for (let i = 0; i < SIZES.qidoRepeats; i++) {
      checkDeadline();
      for (const q of queries) {
        const r = await timeGet(server.url + q, "application/dicom+json");
        if (r.status !== 200) throw new Error(`QIDO ${q} answered ${r.status}`);
        qidoMs.push(r.ms);
      }
    }

    // --- study metadata (300 instances) ---
    const metaMs: number[] = [];
    let metaBytes = 0;
    for (let i = 0; i < SIZES.metadataRepeats; i++) {
      const r = await timeGet(`${server.url}/studies/${ctStudy}/metadata`, "application/dicom+json");
      if (r.status !== 200) throw new Error(`metadata answered ${r.status}`);
      metaMs.push(r.ms);
      metaBytes = r.bytes;
    }

    // --- WADO-RS retrieve of the CT study (median of wadoRepeats; the peak RSS over all of them) ---
    server.resetPeak();
    // right after a reset the peak is the current RSS: what the earlier phases left on the heap
    const rssBeforeWado = server.peakRss();
    const accept = 'multipart/related; type="application/dicom"; transfer-syntax=*';
    const retrieve = async (study: string) => {
      const runs: Array<{ bytes: number; seconds: number }> = [];
      const cpu0 = server.cpuSeconds();
      for (let i = 0; i < SIZES.wadoRepeats; i++) {
        checkDeadline();
        runs.push(await streamGet(`${server.url}/studies/${study}`, accept));
      }
      // the server's CPU per retrieve: the client (reading and hashing the answer) shares the cores and often decides
      // the MB/s, so this says what a retrieve costs the server itself
      const cpuPerRun = (server.cpuSeconds() - cpu0) / runs.length;
      const mid = [...runs].sort((a, b) => a.seconds - b.seconds)[Math.floor(runs.length / 2)]!;
      return { ...mid, runsMBPerSecond: runs.map((r) => round(r.bytes / MB / r.seconds)), serverCpuSecondsPerRetrieve: round(cpuPerRun, 3) };
    };
    const wado = await retrieve(ctStudy);
    const wadoPeak = server.peakRss();

    // --- WADO-RS retrieve of one study of many 64x64 instances ---
    const smallStudy = newUid();
    let smallStudyBytes = 0;
    const smallStudyGen = (function* () {
      for (const inst of generateStudy({ instances: SIZES.smallStudyInstances, seriesCount: 2, rows: 64, columns: 64, modality: "MR", studyInstanceUID: smallStudy, seed: 7 })) {
        smallStudyBytes += inst.bytes.length;
        yield inst.bytes;
      }
    })();
    await ingest(server.url, batched(smallStudyGen, 50), 2);
    server.resetPeak();
    const wadoSmall = await retrieve(smallStudy);
    if (wadoSmall.bytes < smallStudyBytes) throw new Error(`the small study came back with ${wadoSmall.bytes} bytes, less than the ${smallStudyBytes} stored`);
    const wadoSmallPeak = server.peakRss();

    return {
      stowCt: {
        instances: SIZES.ctInstances, bytes: ctBytes, seconds: round(ctSeconds, 2),
        instancesPerSecond: round(SIZES.ctInstances / ctSeconds), mbPerSecond: round(ctBytes / MB / ctSeconds),
        serverPeakRssMB: round(ctPeak / MB), serverRssAtStartMB: round(idleRss / MB), serverCpuSeconds: round(ctCpu, 2),
      },
      stowSmall: {
        instances: SIZES.smallInstances, bytes: smallBytes, seconds: round(smallSeconds, 2),
        instancesPerSecond: round(SIZES.smallInstances / smallSeconds), mbPerSecond: round(smallBytes / MB / smallSeconds, 2),
        serverPeakRssMB: round(smallPeak / MB), serverRssAtStartMB: round(rssBeforeSmall / MB), serverCpuSeconds: round(smallCpu, 2),
        // flat in study size: the peak over the first half of the instances and over all of them
        serverPeakRssFirstHalfMB: round(smallFirstHalfPeak / MB),
      },
      qidoMs: { ...percentiles(qidoMs), queries: queries.length, indexedInstances: SIZES.ctInstances + SIZES.smallInstances },
      studyMetadataMs: { ...percentiles(metaMs), instances: SIZES.ctInstances, responseBytes: metaBytes },
      wadoRetrieveStudy: { bytes: wado.bytes, seconds: round(wado.seconds, 2), mbPerSecond: round(wado.bytes / MB / wado.seconds), runsMBPerSecond: wado.runsMBPerSecond, serverCpuSecondsPerRetrieve: wado.serverCpuSecondsPerRetrieve, serverPeakRssMB: round(wadoPeak / MB), serverRssAtStartMB: round(rssBeforeWado / MB) },
      wadoRetrieveSmallStudy: {
        instances: SIZES.smallStudyInstances, bytes: wadoSmall.bytes, seconds: round(wadoSmall.seconds, 2),
        instancesPerSecond: round(SIZES.smallStudyInstances / wadoSmall.seconds), mbPerSecond: round(wadoSmall.bytes / MB / wadoSmall.seconds, 2),
        runsMBPerSecond: wadoSmall.runsMBPerSecond, serverCpuSecondsPerRetrieve: wadoSmall.serverCpuSecondsPerRetrieve, serverPeakRssMB: round(wadoSmallPeak / MB),
      },
      serverPeakRssMB: round(server.peakRss() / MB),
      serverIdleRssMB: round(idleRss / MB),
      peakRssMethod: server.peakRssMethod,
    };
  }
}

export async function benchLargeInstance(workDir: string, env: Record<string, string> = {}) {
  const file = path.join(workDir, "large.dcm");
  const info = await writeLargeInstance(file, SIZES.largeInstanceBytes);
  const size = (await fsp.stat(file)).size;
  const server = await startServer(path.join(workDir, `large-${env.DICOM_RELAY_STORAGE_KIND ?? "fs"}`), env);
  try {
    server.resetPeak();
    const baseline = server.peakRss();
    const t = performance.now();
    await stow(server.url, [file]);
    const stowSeconds = (performance.now() - t) / 1000;
    const stowPeak = server.peakRss();
    server.resetPeak();
    const wado = await streamGet(
      `${server.url}/studies/${info.studyInstanceUID}/series/${info.seriesInstanceUID}/instances/${info.sopInstanceUID}`,
      'multipart/related; type="application/dicom"; transfer-syntax=*',
    );
    const wadoPeak = server.peakRss();
    return {
      instanceBytes: size,
      stow: { seconds: round(stowSeconds, 2), mbPerSecond: round(size / MB / stowSeconds), serverPeakRssMB: round(stowPeak / MB) },
      wado: { seconds: round(wado.seconds, 2), mbPerSecond: round(wado.bytes / MB / wado.seconds), serverPeakRssMB: round(wadoPeak / MB) },
      serverIdleRssMB: round(baseline / MB),
    };
  } finally {
    await server.stop();
    await fsp.rm(file, { force: true });
  }
}

/** A PDF of DOCUMENT_PDF_BYTES: a header, incompressible filler, an end marker (valid enough for the relay's checks). */
async function writeBenchPdf(file: string, bytes: number): Promise<void> {
  const out = fs.createWriteStream(file);
  out.write("%PDF-1.4\n");
  for (let left = bytes - 16; left > 0; left -= 1 << 20) {
    if (!out.write(crypto.randomBytes(Math.min(left, 1 << 20)).map((b) => (b === 0x25 ? 0x20 : b)))) await once(out, "drain");
  }
  out.end("\n%%EOF\n");
  await once(out, "close");
}

/** A width x height 8-bit RGB PNG (a phone photo of a page is about 12 megapixels). */
async function writeBenchPng(file: string, width: number, height: number): Promise<void> {
  const { deflateSync } = await import("node:zlib");
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width * 3; x++) raw[y * (width * 3 + 1) + 1 + x] = (x * 7 + y * 3) & 0xff;
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    return Buffer.concat([len, Buffer.from(type, "latin1"), data, Buffer.alloc(4)]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(width); ihdr.writeUInt32BE(height, 4); ihdr[8] = 8; ihdr[9] = 2;
  await fsp.writeFile(file, Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]));
}

/** Reports attached to a study (docs/documents.md): a large PDF and a 12-megapixel PNG, each with the server's peak RSS. */
export async function benchDocuments(workDir: string) {
  const dir = path.join(workDir, "documents");
  await fsp.mkdir(dir, { recursive: true });
  const pdf = path.join(dir, "report.pdf"), png = path.join(dir, "photo.png");
  await writeBenchPdf(pdf, SIZES.documentPdfBytes);
  await writeBenchPng(png, SIZES.documentPngWidth, SIZES.documentPngHeight);
  const server = await startServer(path.join(dir, "data"));
  const base = server.url.replace(/\/dicom-web$/, "");
  try {
    const study = newUid();
    await stow(server.url, [makeInstance({ studyInstanceUID: study, rows: 16, columns: 16 })]);
    const attach = async (file: string, kind: string) => {
      const size = (await fsp.stat(file)).size;
      server.resetPeak();
      const t = performance.now();
      const res = await httpRequest(`${base}/api/studies/${study}/documents?kind=${kind}&title=bench&language=en`, {
        method: "POST", headers: { "Content-Type": "application/octet-stream", "Content-Length": String(size) },
      }, fs.createReadStream(file, { highWaterMark: 1 << 20 }));
      const seconds = (performance.now() - t) / 1000;
      if (res.status !== 201) throw new Error(`attaching ${path.basename(file)} answered ${res.status}: ${res.body.toString().slice(0, 300)}`);
      return { fileBytes: size, seconds: round(seconds, 2), mbPerSecond: round(size / MB / seconds), serverPeakRssMB: round(server.peakRss() / MB) };
    };
    server.resetPeak();
    const idle = server.peakRss();
    const pdfResult = await attach(pdf, "pathology-report");
    const pngResult = await attach(png, "lab-results");
    return {
      pdf: pdfResult,
      png: { ...pngResult, pixels: `${SIZES.documentPngWidth}x${SIZES.documentPngHeight} RGB`, decodedBytes: SIZES.documentPngWidth * SIZES.documentPngHeight * 3 },
      serverIdleRssMB: round(idle / MB),
    };
  } finally {
    await server.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/** The core workload and the large instance with blobs on S3 (a real MinIO on loopback). */
async function benchS3(workDir: string) {
  if (process.env.BENCH_SKIP_S3 === "1") return { skipped: "BENCH_SKIP_S3=1" };
  const minio = await startMinio();
  const env = {
    DICOM_RELAY_STORAGE_KIND: "s3",
    DICOM_RELAY_STORAGE_S3_ENDPOINT: minio.endpoint,
    DICOM_RELAY_STORAGE_S3_ACCESS_KEY: minio.accessKey,
    DICOM_RELAY_STORAGE_S3_SECRET_KEY: minio.secretKey,
    DICOM_RELAY_STORAGE_S3_BUCKET: "bench",
  };
  try {
    const server = await startServer(path.join(workDir, "s3-core"), env);
    let core;
    try {
      core = await measureDicomweb(server);
    } finally {
      await server.stop();
    }
    const large = await benchLargeInstance(workDir, env);
    return { storage: "s3 (MinIO on loopback)", core, largeInstance: large };
  } finally {
    await minio.destroy();
  }
}

/**
 * The core workload with PostgreSQL as the index (blobs on local disk): a PostgreSQL server started for the run,
 * durable as in production (fsync, synchronous_commit and full_page_writes on).
 */
async function benchPostgres(workDir: string) {
  const { startPostgres } = await import("../test/support/postgres.ts");
  const pg = await startPostgres({ durable: true });
  try {
    const server = await startServer(path.join(workDir, "pg-core"), { DICOM_RELAY_INDEX_KIND: "postgres", DICOM_RELAY_INDEX_POSTGRES_URL: pg.url });
    try {
      return { index: "postgres (local server, fsync on)", core: await measureDicomweb(server) };
    } finally {
      await server.stop();
    }
  } finally {
    await pg.stop();
  }
}

/** The same core workload against Orthanc + its DICOMweb plugin, when installed. */
async function benchPeer(workDir: string) {
  const found = orthancAvailable();
  if (!found || process.env.BENCH_SKIP_PEER === "1") return { orthanc: "not measured (not installed or BENCH_SKIP_PEER=1)" };
  const orthanc = await startOrthanc(path.join(workDir, "peer"));
  try {
    return { orthanc: orthancVersion(found.binary), core: await measureDicomweb(orthanc) };
  } finally {
    await orthanc.stop();
  }
}

type CoreFigures = Awaited<ReturnType<typeof measureDicomweb>>;
const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;

/** Throughput of one run of the core workload over another's (more is better): STOW-RS and WADO-RS. */
function throughputRatios(top: CoreFigures, bottom: CoreFigures) {
  return {
    stowCt: ratio(top.stowCt.instancesPerSecond, bottom.stowCt.instancesPerSecond),
    stowSmall: ratio(top.stowSmall.instancesPerSecond, bottom.stowSmall.instancesPerSecond),
    wadoRetrieveStudy: ratio(top.wadoRetrieveStudy.mbPerSecond, bottom.wadoRetrieveStudy.mbPerSecond),
    wadoRetrieveSmallStudy: ratio(top.wadoRetrieveSmallStudy.mbPerSecond, bottom.wadoRetrieveSmallStudy.mbPerSecond),
  };
}

const coreOf = (section: unknown): CoreFigures | undefined => (section as { core?: CoreFigures }).core;

/** The relay's figures over Orthanc's of the same run (issue 17 targets: >= 1.2 for STOW and WADO), when both ran. */
function relayVersusOrthanc(core: CoreFigures | null, peer: unknown) {
  const orthanc = coreOf(peer);
  if (!core || !orthanc) return null;
  return {
    ...throughputRatios(core, orthanc),
    // lower is better for these: Orthanc's time (or memory) over the relay's
    studyMetadataP50: ratio(orthanc.studyMetadataMs.p50, core.studyMetadataMs.p50),
    qidoP95: ratio(orthanc.qidoMs.p95, core.qidoMs.p95),
    stowCtServerPeakRss: ratio(orthanc.stowCt.serverPeakRssMB, core.stowCt.serverPeakRssMB),
    stowSmallServerPeakRss: ratio(orthanc.stowSmall.serverPeakRssMB, core.stowSmall.serverPeakRssMB),
    // the server's own CPU for the same work (the client shares the cores): Orthanc's over the relay's
    stowCtServerCpu: ratio(orthanc.stowCt.serverCpuSeconds, core.stowCt.serverCpuSeconds),
    stowSmallServerCpu: ratio(orthanc.stowSmall.serverCpuSeconds, core.stowSmall.serverCpuSeconds),
    wadoRetrieveStudyServerCpu: ratio(orthanc.wadoRetrieveStudy.serverCpuSecondsPerRetrieve, core.wadoRetrieveStudy.serverCpuSecondsPerRetrieve),
    wadoRetrieveSmallStudyServerCpu: ratio(orthanc.wadoRetrieveSmallStudy.serverCpuSecondsPerRetrieve, core.wadoRetrieveSmallStudy.serverCpuSecondsPerRetrieve),
  };
}

/** S3 figures over the disk figures of the same run (issue 17 target: >= 0.8 each), when both sections ran. */
function s3VersusDisk(core: CoreFigures | null, s3: unknown) {
  const onS3 = coreOf(s3);
  return core && onS3 ? throughputRatios(onS3, core) : null;
}

/** BENCH_ONLY=core,index100k runs only the named sections (core, largeInstance, documents, s3, postgres, transfers, crossborder, peer, index100k, dimse). */
const ONLY = process.env.BENCH_ONLY ? new Set(process.env.BENCH_ONLY.split(",").map((s) => s.trim()).filter(Boolean)) : null;
const wanted = (section: string) => !ONLY || ONLY.has(section);
const notSelected = { skipped: `not in BENCH_ONLY=${process.env.BENCH_ONLY ?? ""}` };

async function main() {
  const workDir = await fsp.mkdtemp(path.join(os.tmpdir(), "relay-bench-"));
  const started = Date.now();
  try {
    const core = wanted("core") ? await benchCore(workDir) : null;
    const large = wanted("largeInstance") ? await benchLargeInstance(workDir) : null;
    const documents = wanted("documents") ? await benchDocuments(workDir) : null;
    const s3 = wanted("s3") ? await benchS3(workDir) : notSelected;
    const postgres = wanted("postgres") ? await benchPostgres(workDir) : notSelected;
    const transfers = wanted("transfers") ? await benchTransfers(workDir) : notSelected;
    const crossborder = wanted("crossborder") ? await benchCrossborder(workDir) : notSelected;
    const peer = wanted("peer") ? await benchPeer(workDir) : notSelected;
    const index100k = wanted("index100k") ? await benchIndex100k(workDir) : notSelected;
    const dimse = wanted("dimse") ? await benchDimse(workDir) : notSelected;
    const result = {
      when: new Date().toISOString(),
      machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, node: process.version, memoryGB: round(os.totalmem() / 1024 ** 3) },
      quick: QUICK,
      storage: "fs", index: "sqlite",
      core: core ?? notSelected,
      largeInstance: large ?? notSelected,
      documents: documents ?? notSelected,
      s3,
      s3VersusDisk: s3VersusDisk(core, s3) ?? notSelected,
      relayVersusOrthanc: relayVersusOrthanc(core, peer) ?? notSelected,
      postgres,
      transfers,
      crossborder,
      peer,
      dimse,
      index100k,
      targets: {
        ...(core && {
          "qido p95 < 20 ms": core.qidoMs.p95 < 20,
          "study metadata (300 instances) p95 < 50 ms": core.studyMetadataMs.p95 < 50,
        }),
        ...(core && {
          "peak RSS <= 120 MB during the small-set STOW-RS": core.stowSmall.serverPeakRssMB <= 120,
        }),
        ...(relayVersusOrthanc(core, peer) && {
          "STOW-RS >= 1.2x Orthanc, CT and small set": relayVersusOrthanc(core, peer)!.stowCt >= 1.2 && relayVersusOrthanc(core, peer)!.stowSmall >= 1.2,
          "WADO-RS study retrieve >= 1.2x Orthanc, CT and small-instance study": relayVersusOrthanc(core, peer)!.wadoRetrieveStudy >= 1.2 && relayVersusOrthanc(core, peer)!.wadoRetrieveSmallStudy >= 1.2,
        }),
        ...(s3VersusDisk(core, s3) && {
          "MinIO (loopback) STOW-RS and WADO-RS >= 0.8x the disk path, CT and small set": Object.values(s3VersusDisk(core, s3)!).every((x) => x >= 0.8),
        }),
        ...(large && {
          "peak RSS < 300 MB while a 500 MB instance is stored and retrieved": Math.max(large.stow.serverPeakRssMB, large.wado.serverPeakRssMB) < 300,
        }),
        ...(documents && {
          "peak RSS < 300 MB while a 95 MB PDF and a 12-megapixel PNG are attached": Math.max(documents.pdf.serverPeakRssMB, documents.png.serverPeakRssMB) < 300,
        }),
        ...("targets" in crossborder ? (crossborder.targets as Record<string, boolean>) : {}),
        ...("allPass" in index100k && {
          [`qido p95 < 20 ms and study metadata p95 < 50 ms at ${index100k.catalogue.instances.toLocaleString("en")} instances, SQLite and PostgreSQL (in process)`]: index100k.allPass.inProcess,
          "the same over HTTP": index100k.allPass.http,
        }),
      },
      totalSeconds: round((Date.now() - started) / 1000),
    };
    process.stdout.write(JSON.stringify(result, null, 2) + "\n");
  } finally {
    await fsp.rm(workDir, { recursive: true, force: true });
    agent.destroy();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
    process.exit(1);
  });
}
