/** The command line as a person runs it: start the relay, bad configuration, help. */
import { describe, it, expect } from "vitest";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const BIN = path.resolve("bin/dicom-relay.js");

function run(args: string[], env: Record<string, string>, untilLine?: RegExp): Promise<{ code: number | null; stdout: string; stderr: string; kill: () => void }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), 30_000);
    p.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (untilLine && untilLine.test(stdout)) resolve({ code: null, stdout, stderr, kill: () => p.kill("SIGTERM") });
    });
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, kill: () => {} });
    });
  });
}

describe("dicom-relay fsck", () => {
  it("reports a missing blob and an orphan, exits 2; --repair fixes both; then it is clean", async () => {
    const { startTestRelay } = await import("../support/relay.ts");
    const { makeInstance } = await import("../../scripts/lib/synthetic.ts");
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "cli-fsck-"));
    const relay = await startTestRelay({}, { dataDir });
    for (let i = 0; i < 2; i++) {
      const r = await relay.services.ingest.ingestStream((await import("node:stream")).Readable.from([makeInstance({ rows: 8, columns: 8 })]));
      expect(r.status).toBe("stored");
    }
    await relay.close();
    const blobs: string[] = [];
    const walk = (d: string) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) e.isDirectory() ? walk(path.join(d, e.name)) : blobs.push(path.join(d, e.name)); };
    walk(path.join(dataDir, "blobs", "instances"));
    expect(blobs).toHaveLength(2);
    fs.rmSync(blobs[0]!);
    fs.mkdirSync(path.join(dataDir, "blobs", "instances", "ff", "ff"), { recursive: true });
    fs.writeFileSync(path.join(dataDir, "blobs", "instances", "ff", "ff", "f".repeat(64) + ".dcm"), "orphan");
    const env = { DICOM_RELAY_DATA_DIR: dataDir };
    const check = await run(["fsck"], env);
    expect(check.code).toBe(2);
    expect(check.stdout).toMatch(/1 missing blob\(s\).*1 orphan blob\(s\)/s);
    const repair = await run(["fsck", "--repair"], env);
    expect(repair.code).toBe(0);
    const again = await run(["fsck"], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/checked 1 instance\(s\): 0 missing blob\(s\), 0 hash mismatch\(es\), 0 orphan blob\(s\)/);
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
});

describe("dicom-relay command line", () => {
  it("serve starts on embedded defaults, prints the DICOMweb root URL and, on the first start only, an admin token", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "cli-"));
    const env = { DICOM_RELAY_DATA_DIR: dataDir, DICOM_RELAY_SERVER_PORT: "0", DICOM_RELAY_LOG_LEVEL: "silent" };
    const r = await run(["serve"], env, /DICOMweb root: (\S+)/);
    const url = /DICOMweb root: (\S+)/.exec(r.stdout)?.[1];
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/dicom-web$/);
    // the default start is safe: an admin token is created, shown once, and needed for every request
    expect(r.stdout).toMatch(/admin token was created\. It is shown this once/);
    const token = /Admin token: (drt_\S+)/.exec(r.stdout)?.[1];
    expect(token).toMatch(/^drt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    expect((await fetch(`${url}/studies`)).status).toBe(401);
    const res = await fetch(`${url}/studies`, { headers: { Authorization: `Bearer ${token}` } });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual([]);
    expect(fs.existsSync(path.join(dataDir, "index.sqlite"))).toBe(true);
    r.kill();
    // a later start on the same data prints no token; the first one still works
    const again = await run(["serve"], env, /DICOMweb root: (\S+)/);
    const url2 = /DICOMweb root: (\S+)/.exec(again.stdout)?.[1];
    expect(again.stdout).not.toMatch(/Admin token/);
    expect((await fetch(`${url2}/studies`, { headers: { Authorization: `Bearer ${token}` } })).status).toBe(200);
    again.kill();
  });

  it("bad configuration stops the start with a sentence naming the key", async () => {
    const r = await run(["serve"], { DICOM_RELAY_SERVER_PORT: "eighty", DICOM_RELAY_LOG_LEVEL: "silent" });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/server\.port.*DICOM_RELAY_SERVER_PORT/);
  });

  it("help lists the commands; an unknown command exits 1", async () => {
    const help = await run(["help"], {});
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/serve/);
    expect(help.stdout).toMatch(/fsck/);
    const bad = await run(["frobnicate"], {});
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/unknown command "frobnicate"/);
  });
});
