/**
 * HTTPS and client certificates with real TLS handshakes: `dicom-relay pki` creates the CA, the server
 * certificate and a hospital's PKCS#12; a Node client holding it (https.request with pfx + passphrase) may
 * upload; without it, with a certificate of another CA, or once it is revoked, uploads are refused.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { spawn } from "node:child_process";
import fs from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import http from "node:http";
import { startTestRelay, type TestRelay, sqliteAccess } from "../support/relay.ts";
import { makeInstance } from "../../scripts/lib/synthetic.ts";
import { initPki, issueClientCert, pkiPaths } from "../../src/access/pki.ts";

const BIN = path.resolve("bin/dicom-relay.js");
const BOUNDARY = "mtls-boundary-42";

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), 60_000);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

interface Call {
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: Buffer;
  pfx?: Buffer;
  passphrase?: string;
  trustCa?: boolean;
}

describe("HTTPS and client certificates (mTLS) for uploads", () => {
  let relay: TestRelay;
  let dataDir: string;
  let admin: string;
  let caPem: Buffer;
  let hospitalA: { file: string; password: string; serial: string };
  let foreignP12: Buffer;
  const env = () => ({ DICOM_RELAY_DATA_DIR: dataDir, DICOM_RELAY_LOG_LEVEL: "silent" });

  const call = (c: Call): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const u = new URL(relay.url);
      const req = https.request(
        {
          host: u.hostname,
          port: u.port,
          method: c.method ?? "GET",
          path: c.path,
          headers: c.headers,
          ca: c.trustCa === false ? undefined : caPem,
          pfx: c.pfx,
          passphrase: c.passphrase,
          // a fresh connection per call: no TLS session or socket reused across identities
          agent: false,
        },
        (res) => {
          let body = "";
          res.on("data", (d: Buffer) => (body += d.toString()));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on("error", reject);
      req.end(c.body);
    });

  const stowBody = () => {
    const inst = makeInstance({ rows: 8, columns: 8 });
    return Buffer.concat([
      Buffer.from(`--${BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n`),
      inst,
      Buffer.from(`\r\n--${BOUNDARY}--\r\n`),
    ]);
  };
  const stow = (extra: Partial<Call>, token: string | null = admin) =>
    call({
      method: "POST",
      path: "/dicom-web/studies",
      headers: {
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
        "Content-Type": `multipart/related; type="application/dicom"; boundary=${BOUNDARY}`,
        Accept: "application/dicom+json",
      },
      body: stowBody(),
      ...extra,
    });

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "mtls-"));
    const init = await runCli(["pki", "init", "--host", "127.0.0.1,localhost"], env());
    expect(init.code, init.stderr).toBe(0);
    const pwFile = path.join(dataDir, "password.txt");
    fs.writeFileSync(pwFile, "Hospital-A p12 password\n", { mode: 0o600 });
    const file = path.join(dataDir, "hospital-a.p12");
    const issued = await runCli(["pki", "issue", "--name", "Hospital A gateway", "--org", "Hospital A", "--out", file, "--password-file", pwFile, "--json"], env());
    expect(issued.code, issued.stderr).toBe(0);
    hospitalA = { file, password: "Hospital-A p12 password", serial: (JSON.parse(issued.stdout) as { serial: string }).serial };
    caPem = fs.readFileSync(path.join(dataDir, "pki", "ca-cert.pem"));
    // a certificate from some other CA, with the same name
    const foreign = pkiPaths(path.join(dataDir, "foreign-pki"));
    initPki(foreign);
    foreignP12 = issueClientCert(foreign, { name: "Hospital A gateway", password: "foreign password", iterations: 2048 }).p12;

    relay = await startTestRelay({ auth: { enabled: true }, tls: { enabled: true, requireClientCertForUpload: true } }, { dataDir });
    admin = relay.initialAdminToken!;
  }, 120_000);
  afterAll(async () => {
    await relay?.dispose();
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it("serves HTTPS with the server certificate from pki init; plain HTTP and untrusting clients get nothing", async () => {
    expect(relay.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect((await call({ path: "/healthz" })).status).toBe(200);
    await expect(call({ path: "/healthz", trustCa: false })).rejects.toThrow(/certificate/i);
    const u = new URL(relay.url);
    const plain = new Promise<number>((resolve, reject) => {
      const req = http.request({ host: u.hostname, port: u.port, path: "/healthz", agent: false }, (res) => resolve(res.statusCode ?? 0));
      req.on("error", reject);
      req.end();
    });
    await expect(plain.then((s) => (s === 200 ? "served" : "refused")).catch(() => "refused")).resolves.toBe("refused");
  });

  it("reading needs no client certificate, only a token", async () => {
    const res = await call({ path: "/dicom-web/studies", headers: { Authorization: `Bearer ${admin}` } });
    expect(res.status).toBe(200);
  });

  it("an upload with the hospital's PKCS#12 and a token is stored", async () => {
    const pfx = fs.readFileSync(hospitalA.file);
    const res = await stow({ pfx, passphrase: hospitalA.password });
    expect(res.status, res.body).toBe(200);
    const tus = await call({
      method: "POST",
      path: "/api/uploads",
      headers: { Authorization: `Bearer ${admin}`, "Tus-Resumable": "1.0.0", "Upload-Length": "10" },
      pfx,
      passphrase: hospitalA.password,
    });
    expect(tus.status).toBe(201);
    // the certificate does not replace the token
    expect((await stow({ pfx, passphrase: hospitalA.password }, null)).status).toBe(401);
  });

  it("uploads without a certificate, or with one from another CA, are refused (403 with a sentence)", async () => {
    const none = await stow({});
    expect(none.status).toBe(403);
    expect(JSON.parse(none.body).error).toMatch(/client certificate issued by the relay CA; none was presented/);
    const tusNone = await call({ method: "POST", path: "/api/uploads", headers: { Authorization: `Bearer ${admin}`, "Tus-Resumable": "1.0.0", "Upload-Length": "10" } });
    expect(tusNone.status).toBe(403);
    const foreign = await stow({ pfx: foreignP12, passphrase: "foreign password" });
    expect(foreign.status).toBe(403);
    expect(JSON.parse(foreign.body).error).toMatch(/was not accepted/);
  });

  it("a revoked certificate is refused from the next request, while another hospital's still works", async () => {
    const b = issueClientCert(pkiPaths(path.join(dataDir, "pki")), { name: "Hospital B", password: "hospital b pw", iterations: 2048 });
    const revoked = await runCli(["pki", "revoke", hospitalA.serial, "--reason", "key compromised"], env());
    expect(revoked.code, revoked.stderr).toBe(0);
    const res = await stow({ pfx: fs.readFileSync(hospitalA.file), passphrase: hospitalA.password });
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body).error).toMatch(new RegExp(`serial ${hospitalA.serial}\\) has been revoked`));
    expect((await stow({ pfx: b.p12, passphrase: "hospital b pw" })).status).toBe(200);
    const list = await runCli(["pki", "list"], env());
    expect(list.stdout).toMatch(new RegExp(`${hospitalA.serial}  revoked`));
    // the refusal and the certificate actions are in the audit log, with the certificate subject
    const audit = sqliteAccess(relay).audit.query({ outcome: "failure" });
    expect(audit.some((r) => r.certSubject === "CN=Hospital A gateway,O=Hospital A" && /revoked/.test(r.detail ?? "") && r.status === 403)).toBe(true);
    const actions = sqliteAccess(relay).audit.query({}).map((r) => r.action);
    expect(actions).toEqual(expect.arrayContaining(["cert.ca.init", "cert.client.issue", "cert.client.revoke"]));
    const stored = sqliteAccess(relay).audit.query({ action: "instance.store", outcome: "success" });
    expect(stored.some((r) => r.certSubject?.includes("CN=Hospital B"))).toBe(true);
  });

  it("refuses to start with requireClientCertForUpload but no HTTPS, or with HTTPS but no certificate files", async () => {
    await expect(startTestRelay({ tls: { enabled: false, requireClientCertForUpload: true } })).rejects.toThrow(/tls\.requireClientCertForUpload.*HTTPS/);
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), "mtls-empty-"));
    try {
      await expect(startTestRelay({ tls: { enabled: true } }, { dataDir: empty })).rejects.toThrow(/pki init/);
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });
});
