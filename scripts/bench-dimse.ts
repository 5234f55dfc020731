/**
 * DIMSE benchmarks (wired into npm run bench by scripts/bench.ts; BENCH_SKIP_DIMSE=1 skips them): the relay
 * runs as a separate process with its DICOM node on, dcmtk's tools are the peers.
 *
 *  - C-STORE in: storescu sends the 300-instance 512x512 CT (one association, files in order);
 *  - C-MOVE out: movescu asks for the study, the relay sends it to a storescp that keeps nothing (--ignore);
 *  - one large multi-frame instance (500 MB; 50 MB quick) in by C-STORE and out by C-MOVE, with the relay's
 *    peak RSS: the data set is streamed both ways, never held whole.
 *
 * Figures sit beside the DICOMweb ones (STOW-RS of the same CT, WADO-RS retrieve of it) in the JSON.
 */
import { spawn, execFileSync } from "node:child_process";
import fsp from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { startServer } from "./bench.ts";
import { writeLargeInstance, writeStudy } from "./lib/synthetic.ts";
import { freePort } from "./lib/net.ts";

const QUICK = process.env.BENCH_QUICK === "1";
const MB = 1024 * 1024;
/**
 * dcmtk as packaged leaves Nagle's algorithm on unless TCP_NODELAY=1: every C-STORE response then waits for a
 * delayed ACK (about 40 ms per instance on Linux), which would measure the peer, not the relay.
 */
const DCMTK_ENV = { ...process.env, TCP_NODELAY: "1" };
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

function has(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: DCMTK_ENV });
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
    p.stderr.on("data", (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.on("error", reject);
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, out });
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: "127.0.0.1", port }, () => (s.destroy(), resolve(true)));
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function benchDimse(workDir: string) {
  if (process.env.BENCH_SKIP_DIMSE === "1") return { skipped: "BENCH_SKIP_DIMSE=1" };
  if (!["storescu", "movescu", "storescp"].every(has)) return { skipped: "dcmtk is not installed (scripts/install-dcmtk.sh)" };
  const instances = QUICK ? 30 : 300;
  const studyDir = path.join(workDir, "dimse-ct");
  const study = await writeStudy(studyDir, { instances, seriesCount: 3, rows: 512, columns: 512, modality: "CT", patientName: "Wang^XiaoDong=王^小东", charset: "GB18030", seed: 1 });
  const dimsePort = await freePort();
  const destPort = await freePort();
  const server = await startServer(path.join(workDir, "dimse-relay"), {
    DICOM_RELAY_DIMSE_ENABLED: "true",
    DICOM_RELAY_DIMSE_PORT: String(dimsePort),
    DICOM_RELAY_DIMSE_PEERS: JSON.stringify([
      { aeTitle: "BENCH", host: "127.0.0.1", studies: "all", store: true },
      { aeTitle: "BENCHDEST", host: "127.0.0.1", port: destPort, studies: "all" },
    ]),
  });
  const dest = spawn("storescp", ["--aetitle", "BENCHDEST", "--ignore", String(destPort)], { stdio: "ignore", env: DCMTK_ENV });
  try {
    await waitForPort(dimsePort, 30_000);
    await waitForPort(destPort, 30_000);

    server.resetPeak();
    let t = performance.now();
    const store = await run("storescu", ["-aet", "BENCH", "-aec", "DICOM_RELAY", "+sd", "+r", "127.0.0.1", String(dimsePort), studyDir], 20 * 60_000);
    const storeSeconds = (performance.now() - t) / 1000;
    const storePeak = server.peakRss();
    if (store.code !== 0) throw new Error(`storescu failed: ${store.out}`);

    server.resetPeak();
    t = performance.now();
    const move = await run("movescu", ["-S", "-aet", "BENCH", "-aec", "DICOM_RELAY", "-aem", "BENCHDEST", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${study.studyInstanceUID}`, "127.0.0.1", String(dimsePort)], 20 * 60_000);
    const moveSeconds = (performance.now() - t) / 1000;
    const movePeak = server.peakRss();
    if (move.code !== 0) throw new Error(`movescu failed: ${move.out}`);

    // --- one large instance ---
    const largeFile = path.join(workDir, "dimse-large", "large.dcm");
    const large = await writeLargeInstance(largeFile, QUICK ? 50 * MB : 500 * MB);
    server.resetPeak();
    t = performance.now();
    const storeLarge = await run("storescu", ["-aet", "BENCH", "-aec", "DICOM_RELAY", "127.0.0.1", String(dimsePort), largeFile], 20 * 60_000);
    const storeLargeSeconds = (performance.now() - t) / 1000;
    const storeLargePeak = server.peakRss();
    await fsp.rm(path.dirname(largeFile), { recursive: true, force: true });
    if (storeLarge.code !== 0) throw new Error(`storescu (large) failed: ${storeLarge.out}`);
    server.resetPeak();
    t = performance.now();
    const moveLarge = await run("movescu", ["-S", "-aet", "BENCH", "-aec", "DICOM_RELAY", "-aem", "BENCHDEST", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${large.studyInstanceUID}`, "127.0.0.1", String(dimsePort)], 20 * 60_000);
    const moveLargeSeconds = (performance.now() - t) / 1000;
    const moveLargePeak = server.peakRss();
    if (moveLarge.code !== 0) throw new Error(`movescu (large) failed: ${moveLarge.out}`);

    return {
      largeInstance: {
        bytes: large.bytes,
        cStoreIn: { seconds: round(storeLargeSeconds, 2), mbPerSecond: round(large.bytes / MB / storeLargeSeconds), serverPeakRssMB: round(storeLargePeak / MB) },
        cMoveOut: { seconds: round(moveLargeSeconds, 2), mbPerSecond: round(large.bytes / MB / moveLargeSeconds), serverPeakRssMB: round(moveLargePeak / MB) },
      },
      study: { instances, bytes: study.totalBytes },
      cStoreIn: { seconds: round(storeSeconds, 2), instancesPerSecond: round(instances / storeSeconds), mbPerSecond: round(study.totalBytes / MB / storeSeconds), serverPeakRssMB: round(storePeak / MB) },
      cMoveOut: { seconds: round(moveSeconds, 2), instancesPerSecond: round(instances / moveSeconds), mbPerSecond: round(study.totalBytes / MB / moveSeconds), serverPeakRssMB: round(movePeak / MB) },
      note: "storescu/movescu/storescp of dcmtk (TCP_NODELAY=1) on loopback, one association each; compare with core.stowCt and core.wadoRetrieveStudy",
    };
  } finally {
    dest.kill("SIGTERM");
    await server.stop();
    await fsp.rm(studyDir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = await fsp.mkdtemp(path.join((await import("node:os")).tmpdir(), "relay-bench-dimse-"));
  try {
    process.stdout.write(JSON.stringify(await benchDimse(dir), null, 2) + "\n");
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
