/**
 * Starting and stopping as a newcomer meets it: `dicom-relay serve` in a child process. A taken port, a data
 * directory that cannot be used and TLS files that are not a certificate and key each stop the start with one
 * sentence naming the setting (no stack trace); a good start prints the console URL, and human lines (stdout) are
 * never mixed with JSON log lines (stderr).
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { runCli } from "../support/relayProcess.ts";

const BIN = path.resolve("bin/dicom-relay.js");

/** One sentence on stderr, exit 1, no stack frames. */
function expectOneSentence(r: { code: number | null; stdout: string; stderr: string }, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(1);
  const lines = r.stderr.trim().split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^dicom-relay: /);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

describe("dicom-relay serve: why it could not start, in one sentence", () => {
  it("port in use names the port and the setting to change", async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    const port = (blocker.address() as net.AddressInfo).port;
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "start-port-"));
    try {
      const r = await runCli(["serve"], { DICOM_RELAY_DATA_DIR: dataDir, DICOM_RELAY_SERVER_PORT: String(port), DICOM_RELAY_LOG_LEVEL: "silent" }, 60_000);
      expectOneSentence(r, new RegExp(`port ${port} on 127\\.0\\.0\\.1 is already in use .*server\\.port \\(DICOM_RELAY_SERVER_PORT\\)`));
    } finally {
      blocker.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }, 180_000);

  it("a data directory that cannot be used (a file is in the way) names dataDir", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "start-data-"));
    fs.writeFileSync(path.join(dir, "file"), "not a folder");
    const r = await runCli(["serve"], { DICOM_RELAY_DATA_DIR: path.join(dir, "file", "data"), DICOM_RELAY_SERVER_PORT: "0", DICOM_RELAY_LOG_LEVEL: "silent" }, 60_000);
    expectOneSentence(r, /the data directory .*file\/data cannot be used \(.*\): set dataDir \(DICOM_RELAY_DATA_DIR\)/);
    fs.rmSync(dir, { recursive: true, force: true });
  }, 180_000);

  it("TLS files that are not a certificate / key, or do not belong together, are named", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "start-tls-"));
    const { generateKeyPairSync } = await import("node:crypto");
    fs.writeFileSync(path.join(dir, "cert.pem"), "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    const key = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" });
    fs.writeFileSync(path.join(dir, "key.pem"), key);
    const env = { DICOM_RELAY_DATA_DIR: path.join(dir, "data"), DICOM_RELAY_SERVER_PORT: "0", DICOM_RELAY_LOG_LEVEL: "silent", DICOM_RELAY_TLS_ENABLED: "true", DICOM_RELAY_TLS_CERT_FILE: path.join(dir, "cert.pem"), DICOM_RELAY_TLS_KEY_FILE: path.join(dir, "key.pem") };
    const bad = await runCli(["serve"], env, 60_000);
    expectOneSentence(bad, /tls\.certFile \(DICOM_RELAY_TLS_CERT_FILE\) .*cert\.pem is not a PEM certificate/);
    // a real certificate (openssl, installed by scripts/test-prereqs.sh) with somebody else's key
    const { execFileSync } = await import("node:child_process");
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path.join(dir, "other-key.pem"), "-out", path.join(dir, "server-cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1"], { stdio: "ignore" });
    const mismatch = await runCli(["serve"], { ...env, DICOM_RELAY_TLS_CERT_FILE: path.join(dir, "server-cert.pem") }, 60_000);
    expectOneSentence(mismatch, /the TLS key .*key\.pem does not belong to the certificate .*server-cert\.pem/);
    fs.rmSync(dir, { recursive: true, force: true });
  }, 240_000);
});

describe("dicom-relay serve: what it prints", () => {
  it("prints the console URL; stdout holds only human lines and stderr only JSON log lines", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "start-out-"));
    const p = spawn(process.execPath, [BIN, "serve"], { env: { PATH: process.env.PATH ?? "", HOME: os.homedir(), DICOM_RELAY_DATA_DIR: dataDir, DICOM_RELAY_SERVER_PORT: "0", DICOM_RELAY_LOG_LEVEL: "info" }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const deadline = Date.now() + 60_000;
    while (!/Web console: /.test(stdout) && Date.now() < deadline && p.exitCode === null) await new Promise((r) => setTimeout(r, 100));
    const url = /Web console: (http:\/\/127\.0\.0\.1:\d+\/console\/)\n/.exec(stdout)?.[1];
    expect(url, stdout + stderr).toBeTruthy();
    expect((await fetch(url!)).status).toBe(200);
    p.kill("SIGTERM");
    await new Promise((r) => p.once("close", r));
    const out = stdout.trim().split("\n");
    expect(out.some((l) => l.startsWith("{"))).toBe(false);
    expect(out.some((l) => /Admin token: drt_/.test(l))).toBe(true);
    const logs = stderr.trim().split("\n").filter(Boolean);
    expect(logs.length).toBeGreaterThan(0);
    for (const l of logs) expect(() => JSON.parse(l), l).not.toThrow();
    expect(logs.some((l) => JSON.parse(l).msg === "dicom-relay listening")).toBe(true);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }, 180_000);
});
