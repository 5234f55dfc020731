/**
 * A real PostgreSQL server for tests: Debian's binaries (scripts/install-postgres.sh installs them),
 * a fresh cluster from initdb in a temp dir, listening on 127.0.0.1 with a free port.
 *
 * PostgreSQL refuses to run as root, so when the tests run as root the cluster directory belongs
 * to the postgres user and initdb / postgres are started with that uid (spawn's uid/gid options:
 * unlike su/runuser -c, which start a new session, the server stays in our process group and dies
 * with it). Teardown is reliable three ways, as for MinIO: stop() asks for a fast shutdown of the
 * whole process group and kills it when that does not end it in time; a process "exit" hook SIGKILLs
 * every group still running; and the server runs under a small sh guard that shuts it down when our
 * stdin pipe closes, so even a SIGKILLed test process leaves no PostgreSQL behind.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { freePort } from "../../scripts/lib/net.ts";
import { groupAlive, logTail, runningGroups, sleep, tempRoots, waitGroupGone } from "./serverProcess.ts";

export interface RunningPostgres {
  /** postgres://user:password@127.0.0.1:port/database — the database created for this run */
  url: string;
  /** the same server, database "postgres" (for CREATE DATABASE and the like) */
  adminUrl: string;
  port: number;
  /** a new empty database on the same server; returns its URL */
  createDatabase(name?: string): Promise<string>;
  /** fast shutdown (open sessions are ended) and removal of the cluster directory */
  stop(): Promise<void>;
  /** fast shutdown, keeping the cluster: the database is down until start() (an outage, a restart) */
  halt(): Promise<void>;
  /** start again after halt(), on the same port with the same data */
  start(): Promise<void>;
}

export interface PostgresOptions {
  /** how long to wait for the server to accept connections (ms) */
  startTimeoutMs?: number;
  /** keep the server log on stderr of the test run (default: shown only when start fails) */
  verbose?: boolean;
  /** fsync, synchronous commit and full page writes on, as in production (the bench); tests run without them */
  durable?: boolean;
}

const USER = "relay";

/** The newest /usr/lib/postgresql/<version>/bin holding initdb and postgres; a sentence when there is none. */
export function postgresBinDir(): string {
  const fromEnv = process.env.POSTGRES_BIN_DIR;
  if (fromEnv) {
    if (!fs.existsSync(path.join(fromEnv, "postgres"))) throw new Error(`POSTGRES_BIN_DIR=${fromEnv} holds no postgres binary`);
    return fromEnv;
  }
  const root = "/usr/lib/postgresql";
  const versions = fs.existsSync(root)
    ? fs.readdirSync(root).filter((v) => /^\d+$/.test(v) && fs.existsSync(path.join(root, v, "bin", "initdb"))).sort((a, b) => Number(b) - Number(a))
    : [];
  if (!versions.length) {
    throw new Error("no PostgreSQL server binaries under /usr/lib/postgresql: run 'bash scripts/test-prereqs.sh' (installs Debian's postgresql package)");
  }
  return path.join(root, versions[0]!, "bin");
}

/** uid/gid to run the server as: ourselves, unless we are root (then the postgres user). */
function serverIdentity(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  try {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    return { uid, gid };
  } catch {
    throw new Error("running as root, and there is no postgres user to run PostgreSQL as: run 'bash scripts/install-postgres.sh'");
  }
}

/** A non-C default locale when the machine has one, so tests prove the schema does not rely on C. */
function clusterLocale(): string {
  try {
    const have = execFileSync("locale", ["-a"], { encoding: "utf8" }).split("\n").map((l) => l.trim().toLowerCase());
    if (have.includes("en_us.utf8")) return "en_US.UTF-8";
  } catch {
    // no `locale` program: fall through
  }
  return "C.UTF-8";
}






async function accepts(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  client.on("error", () => {}); // a refused or reset connection is an answer here, not a crash
  try {
    await client.connect();
    await client.query("SELECT 1");
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Run one SQL statement on `url` (a fresh connection: used a few times per test file). */
export async function runSql(url: string, sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  client.on("error", () => {});
  await client.connect();
  try {
    return await client.query(sql, params);
  } finally {
    await client.end().catch(() => {});
  }
}

export async function startPostgres(opts: PostgresOptions = {}): Promise<RunningPostgres> {
  const bin = postgresBinDir();
  const identity = serverIdentity();
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "postgres-test-"));
  tempRoots.add(root);
  const dataDir = path.join(root, "data");
  const socketDir = path.join(root, "sock");
  const logPath = path.join(root, "postgres.log");
  const password = crypto.randomBytes(18).toString("base64url");
  const pwFile = path.join(root, "pw");
  fs.mkdirSync(socketDir);
  fs.writeFileSync(pwFile, password + "\n", { mode: 0o600 });
  fs.writeFileSync(logPath, "");
  if (identity) {
    for (const p of [root, socketDir, pwFile, logPath]) fs.chownSync(p, identity.uid, identity.gid);
  }
  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: root, LC_ALL: "C.UTF-8" };
  const asServer = identity ? { uid: identity.uid, gid: identity.gid } : {};

  try {
    // --no-sync and fsync=off: a test cluster needs no durability, and the machine is shared
    execFileSync(path.join(bin, "initdb"), [
      "-D", dataDir, "-U", USER, `--pwfile=${pwFile}`, "--auth-host=scram-sha-256", "--auth-local=trust",
      "--encoding=UTF8", `--locale=${clusterLocale()}`, "--no-sync",
    ], { ...asServer, env, cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    fs.rmSync(root, { recursive: true, force: true });
    tempRoots.delete(root);
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`initdb failed: ${e.stderr?.toString() || e.message}`);
  }
  fs.rmSync(pwFile, { force: true });

  let child: ChildProcess | null = null;
  let port = 0;
  const urlOf = (db: string) => `postgres://${USER}:${encodeURIComponent(password)}@127.0.0.1:${port}/${db}`;

  const halt = async (): Promise<void> => {
    const proc = child;
    if (!proc || proc.pid === undefined) return;
    const pgid = proc.pid;
    child = null;
    // closing the guard's stdin makes it send SIGINT (fast shutdown: open sessions are ended)
    proc.stdin?.destroy();
    if (!(await waitGroupGone(pgid, 15_000))) {
      try {
        process.kill(-pgid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
      await waitGroupGone(pgid, 5_000);
    }
    runningGroups.delete(pgid);
  };

  const launch = async (): Promise<void> => {
    const logFd = fs.openSync(logPath, "a");
    // sh guard: the server in the background, then block on our stdin; when this process dies the
    // pipe closes, `cat` returns and the server gets SIGINT.
    const guard = '"$@" </dev/null & child=$!; cat >/dev/null; kill -INT "$child" 2>/dev/null; wait "$child"';
    const proc = spawn("sh", ["-c", guard, "postgres-guard", path.join(bin, "postgres"),
      "-D", dataDir, "-p", String(port), "-c", "listen_addresses=127.0.0.1", "-c", `unix_socket_directories=${socketDir}`,
      ...(opts.durable ? [] : ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]), "-c", "max_connections=60",
      "-c", "shared_buffers=64MB", "-c", "logging_collector=off"], {
      ...asServer,
      detached: true, // own process group: one signal reaches sh, cat, the postmaster and its backends
      stdio: ["pipe", logFd, logFd],
      env,
      cwd: root,
    });
    fs.closeSync(logFd);
    child = proc;
    runningGroups.add(proc.pid!);
    let exited = false;
    proc.once("exit", () => {
      exited = true;
    });
    const deadline = Date.now() + startTimeoutMs;
    while (Date.now() < deadline) {
      if (await accepts(urlOf("postgres"))) {
        if (opts.verbose) process.stderr.write(`postgres up on ${port}, log ${logPath}\n`);
        return;
      }
      if (exited || !groupAlive(proc.pid!)) break;
      await sleep(100);
    }
    await halt();
    throw new Error(`PostgreSQL did not accept connections on 127.0.0.1:${port} within ${startTimeoutMs} ms; log tail:\n${logTail(logPath)}`);
  };

  // a port taken between freePort() and the server's bind is retried with another one (bounded)
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

  const createDatabase = async (name = `relay_${crypto.randomBytes(6).toString("hex")}`): Promise<string> => {
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`not a plain database name: ${name}`);
    await runSql(urlOf("postgres"), `CREATE DATABASE ${name}`);
    return urlOf(name);
  };

  const url = await createDatabase();
  return {
    url,
    adminUrl: urlOf("postgres"),
    port,
    createDatabase,
    halt,
    start: launch,
    stop: async () => {
      await halt();
      fs.rmSync(root, { recursive: true, force: true });
      tempRoots.delete(root);
    },
  };
}
