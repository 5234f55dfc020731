/**
 * A relay as a real child process (`dicom-relay serve`, through bin/dicom-relay.js), configured by
 * DICOM_RELAY_* environment variables, on 127.0.0.1 and a free port: what a node of a cluster is.
 *
 * Teardown as for the database and MinIO harnesses (serverProcess.ts): each relay runs in its own process
 * group, registered so the test process's exit hook SIGKILLs it if afterAll never ran; stop() sends SIGTERM
 * (the relay's graceful stop) and SIGKILLs the group when that does not end it in time.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "../../scripts/lib/net.ts";
import { logTail, runningGroups, sleep, tempRoots, waitGroupGone } from "./serverProcess.ts";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = path.join(REPO_ROOT, "bin/dicom-relay.js");

export interface RelayProcess {
  /** http://127.0.0.1:port */
  url: string;
  dicomwebUrl: string;
  port: number;
  dataDir: string;
  /** the environment the relay runs with (DICOM_RELAY_* keys), for CLI commands against the same configuration */
  env: Record<string, string>;
  logPath: string;
  /** SIGTERM (graceful stop) and wait; SIGKILL when it takes longer than timeoutMs */
  stop(timeoutMs?: number): Promise<void>;
  /** SIGKILL the node at once: a crash, nothing finishes */
  kill(): Promise<void>;
  /** exit code once it ended (null while running or when killed by a signal) */
  readonly exitCode: number | null;
  /** the last bytes of its log (stdout and stderr) */
  log(bytes?: number): string;
}

export interface RelayProcessOptions {
  /** DICOM_RELAY_* settings; server host/port, data dir and log level are filled in unless given */
  env?: Record<string, string>;
  /** how long to wait for /healthz (ms) */
  startTimeoutMs?: number;
  /** run the node under `ulimit -n` this low (a descriptor-starved host) */
  maxOpenFiles?: number;
}

/** Run a dicom-relay CLI command (fsck, token ...) with this environment; resolves with its output. */
export function runCli(args: string[], env: Record<string, string>, timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...baseEnv(), ...env }, stdio: ["ignore", "pipe", "pipe"], cwd: REPO_ROOT });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Only what a node needs from our environment: no DICOM_RELAY_* leaking in from the shell running the tests. */
function baseEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "NODE_OPTIONS"]) {
    const v = process.env[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

export async function startRelayProcess(opts: RelayProcessOptions = {}): Promise<RelayProcess> {
  const dataDir = opts.env?.DICOM_RELAY_DATA_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), "relay-node-"));
  const ownDataDir = !opts.env?.DICOM_RELAY_DATA_DIR;
  if (ownDataDir) tempRoots.add(dataDir);
  const logPath = path.join(dataDir, "relay.log");
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;

  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const env: Record<string, string> = {
      DICOM_RELAY_SERVER_HOST: "127.0.0.1",
      DICOM_RELAY_DATA_DIR: dataDir,
      DICOM_RELAY_LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "warn",
      DICOM_RELAY_AUTH_ENABLED: "false",
      ...opts.env,
      DICOM_RELAY_SERVER_PORT: String(port),
    };
    const logFd = fs.openSync(logPath, "a");
    const [cmd, args] = opts.maxOpenFiles
      ? ["bash", ["-c", `ulimit -n ${Math.floor(opts.maxOpenFiles)} && exec "$0" "$@"`, process.execPath, BIN, "serve"]]
      : [process.execPath, [BIN, "serve"]];
    const child: ChildProcess = spawn(cmd, args, {
      env: { ...baseEnv(), ...env },
      cwd: REPO_ROOT,
      detached: true, // own process group: one signal reaches the node and anything it started
      stdio: ["ignore", logFd, logFd],
    });
    fs.closeSync(logFd);
    const pgid = child.pid!;
    runningGroups.add(pgid);
    let exitCode: number | null = null;
    let exited = false;
    child.once("exit", (code) => {
      exited = true;
      exitCode = code;
    });

    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + startTimeoutMs;
    let up = false;
    while (Date.now() < deadline && !exited) {
      try {
        const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2000) });
        if (res.ok) {
          up = true;
          break;
        }
      } catch {
        // not listening yet
      }
      await sleep(100);
    }

    const end = async (signal: NodeJS.Signals, timeoutMs: number) => {
      if (!runningGroups.has(pgid)) return;
      try {
        process.kill(-pgid, signal);
      } catch {
        // already gone
      }
      if (!(await waitGroupGone(pgid, timeoutMs))) {
        try {
          process.kill(-pgid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
        await waitGroupGone(pgid, 5_000);
      }
      runningGroups.delete(pgid);
    };

    if (!up) {
      await end("SIGKILL", 5_000);
      const tail = logTail(logPath);
      // a port taken between freePort() and the relay's bind: try another (bounded)
      if (attempt < 3 && /EADDRINUSE/.test(tail)) continue;
      throw new Error(`the relay process did not answer /healthz on ${url} within ${startTimeoutMs} ms; log tail:\n${tail}`);
    }

    return {
      url,
      dicomwebUrl: `${url}/dicom-web`,
      port,
      dataDir,
      env,
      logPath,
      stop: (timeoutMs = 20_000) => end("SIGTERM", timeoutMs),
      kill: () => end("SIGKILL", 5_000),
      get exitCode() {
        return exitCode;
      },
      log: (bytes = 4000) => logTail(logPath, bytes),
    };
  }
}

/** Remove a node's data directory (after stop or kill). */
export function removeDataDir(node: RelayProcess): void {
  fs.rmSync(node.dataDir, { recursive: true, force: true });
  tempRoots.delete(node.dataDir);
}
