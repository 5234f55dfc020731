/**
 * A real MinIO server for tests: the binary built by scripts/install-minio.sh, on 127.0.0.1 with a
 * free port, a temp data dir and its own process group.
 *
 * Teardown is reliable three ways: stop()/kill() signal the whole process group; a process "exit"
 * hook SIGKILLs every group still running; and MinIO runs under a small sh guard that kills it when
 * our stdin pipe closes, so even a SIGKILLed test process leaves no MinIO behind.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "../../scripts/lib/net.ts";
import { groupAlive, logTail, runningGroups, sleep, tempRoots, waitGroupGone } from "./serverProcess.ts";

export interface MinioOptions {
  /** keep the MinIO log on stderr of the test run (default: only shown when start fails) */
  verbose?: boolean;
  /** how long to wait for /minio/health/live (ms) */
  startTimeoutMs?: number;
}

export interface RunningMinio {
  /** http://127.0.0.1:port */
  endpoint: string;
  port: number;
  accessKey: string;
  secretKey: string;
  dataDir: string;
  /** SIGTERM the server and wait until it is gone; data is kept for restart() */
  stop(): Promise<void>;
  /** start again on the same port with the same data */
  restart(): Promise<void>;
  /** SIGKILL (a crash); data is kept for restart() */
  kill(): Promise<void>;
  /** SIGSTOP: the port still accepts connections (kernel backlog) but nothing answers, like a hung server */
  freeze(): Promise<void>;
  /** SIGCONT after freeze() */
  thaw(): void;
  /** stop and remove the data dir */
  destroy(): Promise<void>;
}

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Path of the cached MinIO binary; a sentence saying how to get it when it is missing. */
export function minioBinary(): string {
  const bin = process.env.MINIO_BINARY ||
    execFileSync("bash", [path.join(REPO_ROOT, "scripts/install-minio.sh"), "--path"], { encoding: "utf8" }).trim();
  if (!fs.existsSync(bin)) {
    throw new Error(`the MinIO binary ${bin} is missing: run 'bash scripts/test-prereqs.sh' (builds it from source with Go, once)`);
  }
  return bin;
}




/** Every process of the group is in state T (stopped), per /proc (Linux). */
function groupStopped(pgid: number): boolean {
  let members = 0;
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue; // exited meanwhile
    }
    // fields after "(comm)": state ppid pgrp ...
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (Number(pgrp) !== pgid) continue;
    members++;
    if (state !== "T") return false;
  }
  return members > 0;
}


/**
 * /minio/health/live answers 200 as soon as the HTTP listener runs, while S3 calls still get 503
 * (server not initialized); it then carries "x-minio-server-status: offline". Ready = 200 without it.
 */
async function isLive(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/minio/health/live`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.ok && res.headers.get("x-minio-server-status") !== "offline";
  } catch {
    return false;
  }
}


export async function startMinio(opts: MinioOptions = {}): Promise<RunningMinio> {
  const bin = minioBinary();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "minio-test-"));
  tempRoots.add(root);
  const dataDir = path.join(root, "data");
  fs.mkdirSync(dataDir);
  const logPath = path.join(root, "minio.log");
  const accessKey = "relay-test-" + crypto.randomBytes(4).toString("hex");
  const secretKey = crypto.randomBytes(18).toString("base64url");
  const startTimeoutMs = opts.startTimeoutMs ?? 30_000;

  let port = 0;
  let child: ChildProcess | null = null;

  const launch = async (): Promise<void> => {
    const consolePort = await freePort();
    const logFd = fs.openSync(logPath, "a");
    // sh guard: MinIO in the background, then block on our stdin; when this process dies the pipe
    // closes, `cat` returns and MinIO is terminated.
    const guard = '"$@" </dev/null & child=$!; cat >/dev/null; kill -TERM "$child" 2>/dev/null; wait "$child"';
    const proc = spawn(
      "sh",
      ["-c", guard, "minio-guard", bin, "server", "--quiet", "--address", `127.0.0.1:${port}`,
        "--console-address", `127.0.0.1:${consolePort}`, dataDir],
      {
        detached: true, // own process group: one signal reaches sh, cat and MinIO
        stdio: ["pipe", logFd, logFd],
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          HOME: root,
          MINIO_ROOT_USER: accessKey,
          MINIO_ROOT_PASSWORD: secretKey,
          MINIO_UPDATE: "off",
          MINIO_BROWSER: "on",
        },
      },
    );
    fs.closeSync(logFd);
    child = proc;
    runningGroups.add(proc.pid!);
    let exited = false;
    proc.once("exit", () => {
      exited = true;
    });
    const deadline = Date.now() + startTimeoutMs;
    while (Date.now() < deadline) {
      if (await isLive(port)) {
        if (opts.verbose) process.stderr.write(`minio up on ${port}, log ${logPath}\n`);
        return;
      }
      if (exited || !groupAlive(proc.pid!)) break;
      await sleep(100);
    }
    await halt("SIGKILL");
    throw new Error(`MinIO did not become live on 127.0.0.1:${port} within ${startTimeoutMs} ms; log tail:\n${logTail(logPath)}`);
  };

  const halt = async (signal: "SIGTERM" | "SIGKILL"): Promise<void> => {
    const proc = child;
    if (!proc || proc.pid === undefined) return;
    const pgid = proc.pid;
    child = null;
    try {
      process.kill(-pgid, signal);
      process.kill(-pgid, "SIGCONT"); // a frozen server must wake up to see the SIGTERM
    } catch {
      // already gone
    }
    if (!(await waitGroupGone(pgid, signal === "SIGTERM" ? 10_000 : 5_000))) {
      try {
        process.kill(-pgid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
      await waitGroupGone(pgid, 5_000);
    }
    proc.stdin?.destroy();
    runningGroups.delete(pgid);
  };

  const signalGroup = (signal: NodeJS.Signals): void => {
    if (!child?.pid) throw new Error("MinIO is not running");
    process.kill(-child.pid, signal);
  };

  // a port taken between freePort() and MinIO's bind is retried with another one (bounded)
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    try {
      await launch();
      break;
    } catch (err) {
      if (attempt >= 3) {
        fs.rmSync(root, { recursive: true, force: true });
        tempRoots.delete(root);
        throw err;
      }
    }
  }

  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    accessKey,
    secretKey,
    dataDir,
    stop: () => halt("SIGTERM"),
    kill: () => halt("SIGKILL"),
    restart: async () => {
      await halt("SIGTERM");
      // the same port: a client that knew the old server must find the new one
      await launch();
    },
    freeze: async () => {
      signalGroup("SIGSTOP");
      // kill() returns before the threads stop: wait until every process of the group is stopped
      const deadline = Date.now() + 5_000;
      while (!groupStopped(child!.pid!)) {
        if (Date.now() > deadline) throw new Error("MinIO did not stop on SIGSTOP");
        await sleep(10);
      }
    },
    thaw: () => signalGroup("SIGCONT"),
    destroy: async () => {
      await halt("SIGTERM");
      fs.rmSync(root, { recursive: true, force: true });
      tempRoots.delete(root);
    },
  };
}
