/**
 * The crossborder section of npm run bench (BENCH_SKIP_CROSSBORDER=1 skips it): the real CLI (`dicom-relay push`, a
 * child process, default options) sends a synthetic study to a relay process through the link emulator
 * (test/support/faultProxy.ts: a per-connection rate cap standing for the share one TCP flow gets of a long lossy
 * path, a link cap all connections share, added round trip, optional resets).
 *
 * Studies: a 120-instance CT folder (512x512, ~63 MB) at three link profiles, and a large study (3 GB;
 * BENCH_CROSSBORDER_BIG_BYTES overrides) at the profiles in BENCH_CROSSBORDER_BIG_PROFILES (default "all": the
 * three the issue names; a list such as "40/4/200"; "none" to leave it out). BENCH_QUICK=1 shrinks both. Then a resume-under-cuts run of the CT
 * folder (a reset every few MB) and a rerun that should send ~0 bytes.
 *
 * Per run: seconds, x of the wire floor (bytes on the wire up / link rate), bytes on the wire / folder bytes, flows
 * used (peak and average concurrent connections, from the emulator's per-second series), time to first payload
 * byte, push peak RSS (the child's VmHWM), relay peak RSS. Every run is bounded in time (killed on timeout: not met):
 * two minutes plus four times the folder's link floor, at most BENCH_CROSSBORDER_MAX_SECONDS when set.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "./bench.ts";
import { writeStudy } from "./lib/synthetic.ts";
import { startFaultProxy, type LinkStats } from "../test/support/faultProxy.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const QUICK = process.env.BENCH_QUICK === "1";
const MB = 1024 * 1024;
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

export interface LinkProfile {
  name: string;
  linkMbit: number;
  flowMbit: number;
  rttMs: number;
}
export const PROFILES: LinkProfile[] = [
  { name: "40/4/200", linkMbit: 40, flowMbit: 4, rttMs: 200 },
  { name: "40/40/200", linkMbit: 40, flowMbit: 40, rttMs: 200 },
  { name: "100/2/300", linkMbit: 100, flowMbit: 2, rttMs: 300 },
];
/** a 512x512 16-bit CT slice with its header */
const PER_CT_INSTANCE = 512 * 512 * 2 + 2048;
const SIZES = {
  ctInstances: QUICK ? 30 : 120,
  bigBytes: Number(process.env.BENCH_CROSSBORDER_BIG_BYTES) || (QUICK ? 150 * MB : 3 * 1024 * MB),
  resumeResetEveryBytes: QUICK ? 2 * MB : 8 * MB,
};
const TARGET_RATIO = 1.25;
const TARGET_PUSH_RSS_MB = 300;

function profilesOf(v: string): LinkProfile[] {
  v = v.trim();
  if (v === "none" || v === "") return [];
  if (v === "all") return PROFILES;
  return v.split(",").map((n) => {
    const p = PROFILES.find((x) => x.name === n.trim());
    if (!p) throw new Error(`BENCH_CROSSBORDER_BIG_PROFILES: no profile ${n} (have ${PROFILES.map((x) => x.name).join(", ")}, all, none)`);
    return p;
  });
}

const vmHwm = (pid: number): number | null => {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null; // gone already
  }
};

interface PushRun {
  code: number | null;
  timedOut: boolean;
  seconds: number;
  /** seconds until 64 kB had reached the relay (payload, not just the first request's headers) */
  firstPayloadSeconds: number | null;
  pushPeakRss: number;
  output: string;
}

/**
 * The uploader a coordinator runs: the installable single file (scripts/build-uploader.mjs, docs/push.md), built once
 * per bench run; BENCH_CROSSBORDER_CLI=source runs bin/dicom-relay.js instead (TypeScript compiled as it loads,
 * which adds a few seconds of start-up on a busy machine).
 */
let uploader: string | null = null;
async function uploaderPath(workDir: string): Promise<string> {
  if (process.env.BENCH_CROSSBORDER_CLI === "source") return path.join(ROOT, "bin/dicom-relay.js");
  if (uploader) return uploader;
  const out = await new Promise<string>((resolve, reject) => {
    const b = spawn(process.execPath, [path.join(ROOT, "scripts/build-uploader.mjs"), path.join(workDir, "uploader")], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
    let text = "";
    b.stdout.on("data", (d: Buffer) => (text += d.toString()));
    b.on("close", (code) => (code === 0 ? resolve(text.split("\n")[0]!.trim()) : reject(new Error(`building the uploader failed (${code})`))));
  });
  uploader = out;
  return out;
}

/** One `dicom-relay push` with default options, killed after timeoutMs; samples its peak RSS and the first bytes. */
function runPush(cli: string, folder: string, url: string, dir: string, timeoutMs: number, wireUp: () => number): Promise<PushRun> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    // BENCH_PUSH_NODE_ARGS: node options for the uploader (e.g. --cpu-prof --cpu-prof-dir=DIR: where its time goes)
    const nodeArgs = (process.env.BENCH_PUSH_NODE_ARGS ?? "").split(/\s+/).filter(Boolean);
    const p = spawn(process.execPath, [...nodeArgs, cli, "push", folder, "--to", url, "--cache-dir", path.join(dir, "cache"), "--receipt-dir", path.join(dir, "receipts")], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, DICOM_RELAY_TOKEN: "" },
    });
    let output = "";
    let timedOut = false;
    let firstPayloadSeconds: number | null = null;
    let peak = 0;
    const sample = () => {
      peak = Math.max(peak, p.pid ? vmHwm(p.pid) ?? 0 : 0);
      if (firstPayloadSeconds === null && wireUp() >= 64 * 1024) firstPayloadSeconds = (performance.now() - t0) / 1000;
    };
    const sampler = setInterval(sample, 100);
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill("SIGKILL");
    }, timeoutMs);
    const keep = (d: Buffer) => (output = (output + d.toString()).slice(-4000));
    p.stdout.on("data", keep);
    p.stderr.on("data", keep);
    p.on("close", (code) => {
      clearInterval(sampler);
      clearTimeout(timer);
      resolve({ code, timedOut, seconds: (performance.now() - t0) / 1000, firstPayloadSeconds, pushPeakRss: peak, output });
    });
  });
}

/** Flows used: the most connections open at once, and the mean of flows passing bytes per second while data moved. */
function flowsUsed(s: LinkStats) {
  const moving = s.series.filter((r) => r.bytesUp > 16 * 1024);
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
  return {
    peakConnections: s.peakConnections,
    averageActiveFlows: round(mean(moving.map((r) => r.activeFlows)), 1),
    averageOpenConnections: round(mean(moving.map((r) => r.openConnections)), 1),
  };
}

interface Study {
  label: string;
  folder: string;
  bytes: number;
  instances: number;
}

async function pushThrough(study: Study, profile: LinkProfile, dir: string, extra: { resetEveryBytes?: number; rerun?: boolean } = {}) {
  await fsp.mkdir(dir, { recursive: true });
  const server = await startServer(path.join(dir, "relay"));
  const base = new URL(server.url);
  const linkBytesPerSec = (profile.linkMbit * 1e6) / 8;
  const proxy = await startFaultProxy({
    target: { host: base.hostname, port: Number(base.port) },
    linkBytesPerSec,
    flowBytesPerSec: (profile.flowMbit * 1e6) / 8,
    latencyMs: profile.rttMs / 2,
    resetEveryBytes: extra.resetEveryBytes,
  });
  try {
    const folderFloor = study.bytes / linkBytesPerSec;
    // bounded: two minutes of start-up and slack plus four times what the link needs for the folder's bytes
    const cap = Number(process.env.BENCH_CROSSBORDER_MAX_SECONDS) || Infinity;
    const timeoutMs = Math.min(120 + 4 * folderFloor, cap) * 1000;
    const cli = await uploaderPath(path.dirname(dir));
    const r = await runPush(cli, study.folder, proxy.url, dir, timeoutMs, () => proxy.stats().bytesUp);
    const s = proxy.linkStats();
    const wireFloor = s.bytesUp / linkBytesPerSec;
    const ok = r.code === 0 && !r.timedOut;
    const row: Record<string, unknown> = {
      study: study.label,
      profile: profile.name,
      linkMbit: profile.linkMbit,
      flowMbit: profile.flowMbit,
      rttMs: profile.rttMs,
      completed: ok,
      ...(r.timedOut && { timedOutAfterSeconds: round(timeoutMs / 1000, 0) }),
      ...((!ok || process.env.BENCH_CROSSBORDER_VERBOSE === "1") && { exitCode: r.code, outputTail: r.output.slice(-1500) }),
      // where the link sat idle: Mbit/s delivered in each second of the push
      ...(process.env.BENCH_CROSSBORDER_VERBOSE === "1" && { linkMbitEachSecond: s.series.map((x) => round((x.bytesUp * 8) / 1e6, 0)) }),
      seconds: round(r.seconds, 1),
      wireFloorSeconds: round(wireFloor, 1),
      xWireFloor: round(r.seconds / wireFloor, 2),
      folderFloorSeconds: round(folderFloor, 1),
      xFolderFloor: round(r.seconds / folderFloor, 2),
      wireBytesUp: s.bytesUp,
      wireBytesDown: s.bytesDown,
      wireToFolder: round(s.bytesUp / study.bytes, 3),
      linkUsedMbit: round((s.bytesUp * 8) / r.seconds / 1e6, 1),
      flows: flowsUsed(s),
      firstPayloadSeconds: r.firstPayloadSeconds === null ? null : round(r.firstPayloadSeconds, 1),
      pushPeakRssMB: round(r.pushPeakRss / MB, 0),
      relayPeakRssMB: round(server.peakRss() / MB, 0),
      ...(extra.resetEveryBytes && { resetEveryBytes: extra.resetEveryBytes, connectionsCut: s.resets }),
      met: ok && r.seconds / wireFloor <= TARGET_RATIO,
    };
    if (extra.rerun && ok) {
      proxy.setFaults({ resetEveryBytes: undefined });
      proxy.resetCounters();
      const again = await runPush(cli, study.folder, proxy.url, dir, 300_000, () => proxy.stats().bytesUp);
      row.rerun = { completed: again.code === 0, seconds: round(again.seconds, 1), wireBytesUp: proxy.stats().bytesUp };
    }
    return row;
  } finally {
    await proxy.close();
    await server.stop();
    await fsp.rm(path.join(dir, "relay"), { recursive: true, force: true });
  }
}

/** BENCH_CROSSBORDER_BIG_PROFILES: the large study's profiles (default all three, as the issue asks) */
const bigProfiles = () => profilesOf(process.env.BENCH_CROSSBORDER_BIG_PROFILES ?? "all");
/** BENCH_CROSSBORDER_PROFILES: the CT folder's profiles (default all three) */
const ctProfiles = () => profilesOf(process.env.BENCH_CROSSBORDER_PROFILES ?? "all");

export async function benchCrossborder(workDir: string): Promise<Record<string, unknown>> {
  if (process.env.BENCH_SKIP_CROSSBORDER === "1" || process.env.BENCH_SKIP_PUSH === "1") return { skipped: "BENCH_SKIP_CROSSBORDER=1" };
  const dir = path.join(workDir, "crossborder");
  await fsp.mkdir(dir, { recursive: true });
  uploader = null;
  try {
    const ctDir = path.join(dir, "ct");
    const ct = await writeStudy(ctDir, { instances: SIZES.ctInstances, seriesCount: 2, rows: 512, columns: 512, modality: "CT", seed: 21, realisticNoise: true });
    const ctStudy: Study = { label: `CT ${ct.files.length} instances`, folder: ctDir, bytes: ct.totalBytes, instances: ct.files.length };
    const runs: Record<string, unknown>[] = [];
    let i = 0;
    for (const p of ctProfiles()) runs.push(await pushThrough(ctStudy, p, path.join(dir, `run${i++}`)));
    const resume = process.env.BENCH_CROSSBORDER_RESUME === "0" ? { skipped: "BENCH_CROSSBORDER_RESUME=0" } : await pushThrough(ctStudy, PROFILES[0]!, path.join(dir, `run${i++}`), { resetEveryBytes: SIZES.resumeResetEveryBytes, rerun: true });

    const big: Record<string, unknown>[] = [];
    const profiles = bigProfiles();
    if (profiles.length) {
      const bigDir = path.join(dir, "big");
      const count = Math.max(1, Math.round(SIZES.bigBytes / PER_CT_INSTANCE));
      const b = await writeStudy(bigDir, { instances: count, seriesCount: Math.max(1, Math.round(count / 500)), rows: 512, columns: 512, modality: "CT", seed: 22, realisticNoise: true });
      const bigStudy: Study = { label: `CT ${b.files.length} instances (${round(b.totalBytes / 1024 ** 3, 2)} GiB)`, folder: bigDir, bytes: b.totalBytes, instances: b.files.length };
      for (const p of profiles) big.push(await pushThrough(bigStudy, p, path.join(dir, `run${i++}`)));
      await fsp.rm(bigDir, { recursive: true, force: true });
    }

    const targets: Record<string, boolean> = {};
    for (const r of runs) targets[`crossborder ${r.study} at ${r.profile} (link/flow Mbit/s, RTT ms) <= ${TARGET_RATIO}x the wire floor`] = r.met as boolean;
    for (const r of big) {
      targets[`crossborder ${r.study} at ${r.profile} <= ${TARGET_RATIO}x the wire floor`] = r.met as boolean;
      targets[`crossborder ${r.study} at ${r.profile}: push peak RSS < ${TARGET_PUSH_RSS_MB} MB`] = (r.completed as boolean) && (r.pushPeakRssMB as number) < TARGET_PUSH_RSS_MB;
    }
    const rerun = (resume as Record<string, unknown>).rerun as { completed: boolean; wireBytesUp: number } | undefined;
    targets[`crossborder resume under cuts (a reset every ${SIZES.resumeResetEveryBytes / MB} MB): completes in one run, a rerun sends < 1% of the folder`] =
      ((resume as Record<string, unknown>).completed as boolean) && !!rerun?.completed && rerun.wireBytesUp < ctStudy.bytes / 100;
    return {
      uploader: process.env.BENCH_CROSSBORDER_CLI === "source" ? "bin/dicom-relay.js (sources through tsx)" : "the installable single-file uploader (scripts/build-uploader.mjs)",
      note: "synthetic CT with per-slice quantum noise (realisticNoise), 12 bits stored in 16; the emulator's flow cap stands for the share one TCP flow gets of a lossy long path",
      ctFolder: { instances: ctStudy.instances, bytes: ctStudy.bytes },
      runs,
      resumeUnderCuts: resume,
      big: profiles.length ? big : { skipped: "BENCH_CROSSBORDER_BIG_PROFILES=none" },
      targets,
    };
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const work = await fsp.mkdtemp(path.join((await import("node:os")).tmpdir(), "relay-bench-crossborder-"));
  benchCrossborder(work)
    .then((r) => process.stdout.write(JSON.stringify(r, null, 2) + "\n"))
    .catch((err) => {
      process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
      process.exitCode = 1;
    })
    .finally(() => fsp.rm(work, { recursive: true, force: true }));
}
