/**
 * Uploader benchmark (wired into npm run bench by scripts/bench.ts; BENCH_SKIP_PUSH=1 skips it): the real CLI
 * (`dicom-relay push`, a child process) sends a synthetic CT study to a relay process through the fault proxy
 * (20 Mbit/s shared by all connections, 250 ms added round trip, a reset every 30 MB).
 *
 * Reported: wall time from start to verified receipt vs the time the bandwidth alone needs for the study's bytes
 * (target <= 1.25x), and bytes on the wire vs the study's size (gzip bundles). Every wait is bounded.
 */
import { spawn } from "node:child_process";
import fsp from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "./bench.ts";
import { writeStudy } from "./lib/synthetic.ts";
import { startFaultProxy } from "../test/support/faultProxy.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const QUICK = process.env.BENCH_QUICK === "1";
const MB = 1024 * 1024;
const SIZES = {
  studyBytes: QUICK ? 15 * MB : 150 * MB,
  resetEveryBytes: QUICK ? 3 * MB : 30 * MB,
  linkBitsPerSecond: 20_000_000,
  addedRttMs: 250,
};
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

function runCli(args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(ROOT, "bin/dicom-relay.js"), "push", ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, DICOM_RELAY_TOKEN: "" } });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export async function benchPush(workDir: string): Promise<Record<string, unknown>> {
  if (process.env.BENCH_SKIP_PUSH === "1") return { skipped: "BENCH_SKIP_PUSH=1" };
  const dir = path.join(workDir, "push");
  await fsp.mkdir(dir, { recursive: true });
  // 512x512 16-bit CT slices, about 0.5 MB each
  const perInstance = 512 * 512 * 2 + 2048;
  const study = await writeStudy(path.join(dir, "cd"), { instances: Math.ceil(SIZES.studyBytes / perInstance), seriesCount: 3, rows: 512, columns: 512, modality: "CT", seed: 21 });
  const server = await startServer(path.join(dir, "relay"));
  const base = new URL(server.url);
  const proxy = await startFaultProxy({
    target: { host: base.hostname, port: Number(base.port) },
    bandwidthBytesPerSec: SIZES.linkBitsPerSecond / 8,
    latencyMs: SIZES.addedRttMs / 2,
    resetEveryBytes: SIZES.resetEveryBytes,
    sharedBandwidth: true,
  });
  try {
    const bandwidthSeconds = (study.totalBytes * 8) / SIZES.linkBitsPerSecond;
    const t = performance.now();
    const r = await runCli([path.join(dir, "cd"), "--to", proxy.url, "--cache-dir", path.join(dir, "cache"), "--receipt-dir", path.join(dir, "receipts")], Math.max(600_000, bandwidthSeconds * 4000));
    const seconds = (performance.now() - t) / 1000;
    if (r.code !== 0) throw new Error(`push exited ${r.code}: ${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`);
    const stats = proxy.stats();
    // a second run of the same folder: what "send nothing twice" costs on the wire
    const before = proxy.stats().bytesUp;
    const t2 = performance.now();
    const again = await runCli([path.join(dir, "cd"), "--to", proxy.url, "--cache-dir", path.join(dir, "cache"), "--receipt-dir", path.join(dir, "receipts")], 300_000);
    const secondSeconds = (performance.now() - t2) / 1000;
    if (again.code !== 0) throw new Error(`second push exited ${again.code}`);
    const wireSeconds = (stats.bytesUp * 8) / SIZES.linkBitsPerSecond;
    return {
      instances: study.files.length,
      studyBytes: study.totalBytes,
      linkMbitPerSecond: SIZES.linkBitsPerSecond / 1e6,
      addedRttMs: SIZES.addedRttMs,
      resetEveryBytes: SIZES.resetEveryBytes,
      connectionsCut: stats.resets,
      seconds: round(seconds, 1),
      bandwidthAloneSeconds: round(bandwidthSeconds, 1),
      ratio: round(seconds / bandwidthSeconds, 2),
      wireBytesUp: stats.bytesUp,
      wireBytesDown: stats.bytesDown,
      studyToWireRatio: round(study.totalBytes / stats.bytesUp, 2),
      // the same comparison without the gain from compression: time vs what the link needs for the bytes actually sent
      bandwidthForWireBytesSeconds: round(wireSeconds, 1),
      ratioVsWireBytes: round(seconds / wireSeconds, 2),
      secondRun: { seconds: round(secondSeconds, 1), wireBytesUp: proxy.stats().bytesUp - before },
      note: "synthetic pixel data (smooth gradients + noise); real CT/MR compress about 2-3x with gzip",
      targets: { "push <= 1.25x the bandwidth time of the study": seconds / bandwidthSeconds <= 1.25 },
    };
  } finally {
    await proxy.close();
    await server.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const work = await fsp.mkdtemp(path.join((await import("node:os")).tmpdir(), "relay-bench-push-"));
  benchPush(work)
    .then((r) => process.stdout.write(JSON.stringify(r, null, 2) + "\n"))
    .catch((err) => {
      process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
      process.exitCode = 1;
    })
    .finally(() => fsp.rm(work, { recursive: true, force: true }));
}
