/**
 * `npm start` and the CLI run dist/relay.mjs, built from the sources when missing or stale (bin/dicom-relay.js,
 * scripts/build-relay.mjs), not the sources through a TypeScript loader; DICOM_RELAY_FROM_SOURCE=1 keeps the loader.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { RELAY_BUILD } from "../../scripts/build-relay.mjs";

const ROOT = path.resolve(import.meta.dirname, "../..");
const BIN = path.join(ROOT, "bin/dicom-relay.js");
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** The built files loaded with `file` by its static imports (not its dynamic import() calls), `file` included. */
function staticClosure(file: string, seen = new Set<string>()): Set<string> {
  seen.add(file);
  for (const m of fs.readFileSync(file, "utf8").matchAll(/^import\b[^;]*?["'](\.{1,2}\/[^"']+)["']/gm)) {
    const next = path.resolve(path.dirname(file), m[1]!);
    if (!seen.has(next)) staticClosure(next, seen);
  }
  return seen;
}

/** `dicom-relay serve` until it says where it listens; then one DICOMweb request, then SIGTERM. */
async function serveOnce(env: Record<string, string>): Promise<{ status: number; stderr: string }> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-start-"));
  dirs.push(dataDir);
  const p = spawn(process.execPath, [BIN, "serve"], {
    env: { PATH: process.env.PATH ?? "", HOME: os.homedir(), DICOM_RELAY_DATA_DIR: dataDir, DICOM_RELAY_SERVER_HOST: "127.0.0.1", DICOM_RELAY_SERVER_PORT: "0", DICOM_RELAY_LOG_LEVEL: "warn", DICOM_RELAY_AUTH_ENABLED: "false", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    cwd: ROOT,
  });
  let stdout = "";
  let stderr = "";
  p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  try {
    const root = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "listening" line in 60 s: ${stdout} ${stderr}`)), 60_000);
      p.stdout.on("data", () => {
        const m = /DICOMweb root: (\S+)/.exec(stdout);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      p.once("exit", (code) => reject(new Error(`exited with ${code}: ${stderr}`)));
    });
    const res = await fetch(`${root}/studies`, { headers: { Accept: "application/dicom+json" } });
    return { status: res.status, stderr };
  } finally {
    p.kill("SIGTERM");
    await new Promise((r) => (p.exitCode !== null ? r(null) : p.once("exit", r)));
  }
}

describe("production start", () => {
  it("runs the built file, rebuilt when it is older than a source, and answers DICOMweb", async () => {
    // a stale build (older than every source): the next start builds it again
    if (fs.existsSync(RELAY_BUILD)) fs.utimesSync(RELAY_BUILD, new Date(0), new Date(0));
    const r = await serveOnce({});
    expect(r.status).toBe(200);
    expect(r.stderr).not.toContain("running from the sources");
    expect(fs.statSync(RELAY_BUILD).mtimeMs).toBeGreaterThan(Date.now() - 120_000);
    const built = fs.readFileSync(RELAY_BUILD, "utf8");
    expect(built).toContain("built by scripts/build-relay.mjs");
    expect(built).toMatch(/DICOMweb root:/);
    // what is imported dynamically is a chunk loaded when used: at start no server (express) and no uploader (tus client)
    const atStart = staticClosure(RELAY_BUILD);
    expect(atStart.size).toBeGreaterThan(1);
    const packages = [...atStart].flatMap((f) => [...fs.readFileSync(f, "utf8").matchAll(/^import\b[^;]*?from "([^".][^"]*)"/gm)].map((m) => m[1]));
    expect(packages).toContain("zod");
    expect(packages).not.toContain("express");
    expect(packages).not.toContain("tus-js-client");
  }, 120_000);

  it("a relay on disk does not load the S3 upload store and its AWS SDK", async () => {
    // a module hook that writes down every package the relay's process resolves
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-loaded-"));
    dirs.push(dir);
    const list = path.join(dir, "packages.txt");
    fs.writeFileSync(path.join(dir, "hooks.mjs"), `import fs from "node:fs";
export async function resolve(spec, ctx, next) {
  const r = await next(spec, ctx);
  const m = /node_modules\\/(@[^/]+\\/[^/]+|[^/]+)\\//.exec(r.url);
  if (m) fs.appendFileSync(${JSON.stringify(list)}, m[1] + "\\n");
  return r;
}
`);
    fs.writeFileSync(path.join(dir, "register.mjs"), `import { register } from "node:module";\nregister(${JSON.stringify(new URL(`file://${path.join(dir, "hooks.mjs")}`).href)});\n`);
    const r = await serveOnce({ NODE_OPTIONS: `--import ${path.join(dir, "register.mjs")}` });
    expect(r.status).toBe(200);
    const loaded = new Set(fs.readFileSync(list, "utf8").split("\n").filter(Boolean));
    // the hook saw the relay's packages
    expect(loaded).toContain("@tus/server");
    expect(loaded).toContain("better-sqlite3");
    expect(loaded).not.toContain("@tus/s3-store");
    expect(loaded).not.toContain("@aws-sdk/client-s3");
    expect(loaded).not.toContain("minio");
  }, 120_000);

  it("DICOM_RELAY_FROM_SOURCE=1 runs the sources through tsx, with the same answers", async () => {
    const r = await serveOnce({ DICOM_RELAY_FROM_SOURCE: "1" });
    expect(r.status).toBe(200);
  }, 120_000);
});
