/**
 * The uploader a hospital installs: scripts/build-uploader.mjs bundles push and transfers into one file; copied
 * alone into an empty folder far from the repository (no node_modules, no registry), it says its version and the
 * relay versions it speaks to, and pushes a study to a relay started here, which then holds it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { writeStudy } from "../../scripts/lib/synthetic.ts";
import { SPEAKS_TO, VERSION, withinRange } from "../../src/version.ts";

function run(file: string, args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // only what a coordinator's machine has: no NODE_PATH, no DICOM_RELAY_* from the test's shell
    const p = spawn(process.execPath, [file, ...args], { cwd, env: { PATH: process.env.PATH ?? "", HOME: cwd }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), 90_000);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("the installable uploader (one file, Node.js only)", () => {
  let relay: TestRelay;
  let work: string;
  let hospital: string;
  let bundle: string;
  let token: string;

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), "uploader-"));
    const built = execFileSync(process.execPath, [path.resolve("scripts/build-uploader.mjs"), path.join(work, "build")], { encoding: "utf8" });
    const file = built.split("\n")[0]!;
    expect(path.basename(file)).toBe(`dicom-relay-push-${VERSION}.mjs`);
    expect(fs.readFileSync(file + ".sha256", "utf8")).toMatch(/^[0-9a-f]{64}  dicom-relay-push-/);
    hospital = path.join(work, "hospital");
    fs.mkdirSync(hospital);
    bundle = path.join(hospital, path.basename(file));
    fs.copyFileSync(file, bundle);
    relay = await startTestRelay({ auth: { enabled: true } }, { dataDir: path.join(work, "data") });
    const res = await fetch(`${relay.url}/api/admin/tokens`, { method: "POST", headers: { Authorization: `Bearer ${relay.initialAdminToken}`, "Content-Type": "application/json" }, body: JSON.stringify({ scopes: ["upload"], label: "hospital" }) });
    token = ((await res.json()) as { token: string }).token;
  }, 120_000);

  afterAll(async () => {
    await relay?.close();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it("VERSION is package.json's version; the relay names its version; the range check", async () => {
    expect(VERSION).toBe(JSON.parse(fs.readFileSync("package.json", "utf8")).version);
    expect((await fetch(`${relay.url}/healthz`)).headers.get("x-dicom-relay-version")).toBe(VERSION);
    expect(withinRange(VERSION)).toBe(true);
    expect(withinRange("0.2.0", ">=0.1.0 <0.2.0")).toBe(false);
    expect(withinRange("0.0.9", ">=0.1.0 <0.2.0")).toBe(false);
    expect(withinRange("0.1.7", ">=0.1.0 <0.2.0")).toBe(true);
    expect(withinRange("x", ">=0.1.0 <0.2.0")).toBeNull();
  });

  it("alone in an empty folder: --version names the relay versions it speaks to; push sends a study that arrives; transfers lists it", async () => {
    expect(fs.readdirSync(hospital)).toEqual([path.basename(bundle)]);
    const v = await run(bundle, ["--version"], hospital);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toContain(`dicom-relay-push ${VERSION}`);
    expect(v.stdout).toContain(`speaks to dicom-relay relays ${SPEAKS_TO}`);

    const study = await writeStudy(path.join(work, "cd"), { instances: 3, rows: 16, columns: 16, modality: "CT", seed: 81 });
    const push = await run(bundle, ["push", path.join(work, "cd"), "--to", relay.url, "--token", token, "--cache-dir", path.join(hospital, "cache")], hospital);
    expect(push.code, push.stdout + push.stderr).toBe(0);
    expect(push.stdout).toMatch(/stored now: 3 +already on the relay: 0 +failed: 0/);
    expect(push.stderr).not.toMatch(/is made for relays/);
    expect(fs.readdirSync(hospital).some((f) => /^dicom-relay-receipt-.*\.json$/.test(f))).toBe(true);
    const q = await fetch(`${relay.dicomwebUrl}/studies/${study.studyInstanceUID}/instances`, { headers: { Authorization: `Bearer ${relay.initialAdminToken}` } });
    expect(q.status).toBe(200);
    expect(((await q.json()) as unknown[]).length).toBe(3);

    const list = await run(bundle, ["transfers", "list", "--to", relay.url, "--token", token], hospital);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/complete .*3 received/);
  }, 120_000);
});
