/**
 * Access control over real HTTP: every refusal (no token, wrong scope, expired, revoked, tampered, other study
 * through a share link, path traversal, oversized headers), share links used by dicomweb-client as a DICOMweb
 * root, and the token CLI against a running relay.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import http from "node:http";
import path from "node:path";
import request from "supertest";
import { startTestRelay, type TestRelay, sqliteAccess } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { generateStudy, makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { RECEIPT_KEY_PATH } from "../../src/transfers/routes.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");
const uidOf = (ds: Record<string, { Value?: unknown[] }>, tag: string) => ds[tag]?.Value?.[0];
const BIN = path.resolve("bin/dicom-relay.js");

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), 30_000);
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A request whose path is sent exactly as written (no client-side normalization), with extra headers. */
function rawRequest(url: string, rawPath: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: rawPath, method: "GET", headers }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("access control", () => {
  let relay: TestRelay;
  let admin: string;
  let readToken: string;
  let uploadToken: string;
  const studyA = newUid();
  const studyB = newUid();
  const a = [...generateStudy({ instances: 3, seriesCount: 1, rows: 32, columns: 32, modality: "CT", studyInstanceUID: studyA, patientName: "Share^Me", patientID: "P-A" })];
  const b = [...generateStudy({ instances: 2, seriesCount: 1, rows: 32, columns: 32, modality: "MR", studyInstanceUID: studyB, patientName: "Private^Other", patientID: "P-B" })];
  const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
  const makeOne = () => {
    const uid = newUid();
    return { uid, bytes: makeInstance({ rows: 8, columns: 8, sopInstanceUID: uid }) };
  };

  beforeAll(async () => {
    relay = await startTestRelay({ auth: { enabled: true } });
    admin = relay.initialAdminToken!;
    const mk = async (scopes: string[]) =>
      (await request(relay.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes, label: scopes.join("+") })).body.token as string;
    readToken = await mk(["read"]);
    uploadToken = await mk(["upload"]);
    const up = dicomwebClient(relay.dicomwebUrl, bearer(uploadToken));
    await up.storeInstances({ datasets: a.map((i) => toArrayBuffer(i.bytes)) });
    await up.storeInstances({ datasets: b.map((i) => toArrayBuffer(i.bytes)) });
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("the default start printed nothing but created an admin token; tokens come from the admin API", () => {
    expect(admin).toMatch(/^drt_[0-9a-f]{16}_/);
    expect(readToken).toMatch(/^drt_/);
    expect(uploadToken).toMatch(/^drt_/);
  });

  it("health, readiness and the receipt public key stay open; every other route needs a token (401 + WWW-Authenticate)", async () => {
    const r = request(relay.url);
    expect((await r.get("/healthz")).status).toBe(200);
    expect((await r.get("/readyz")).status).toBe(200);
    expect((await r.get(RECEIPT_KEY_PATH)).status).toBe(200);
    const refused = [
      r.get("/dicom-web/studies"),
      r.get(`/dicom-web/studies/${studyA}/metadata`),
      r.get(`/dicom-web/studies/${studyA}`),
      r.post("/dicom-web/studies").set("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=x").send("--x--"),
      r.delete(`/dicom-web/studies/${studyA}`),
      r.post("/api/uploads").set("Tus-Resumable", "1.0.0").set("Upload-Length", "10"),
      r.head("/api/uploads/abc").set("Tus-Resumable", "1.0.0"),
      r.get("/api/uploads/abc"),
      r.post("/api/transfers").send({}),
      r.get("/api/transfers/abc"),
      r.post("/api/transfers/abc/release"),
      r.get("/api/admin/tokens"),
      r.get("/api/admin/audit"),
      r.get("/no/such/route"),
    ];
    for (const [i, req] of refused.entries()) {
      const res = await req;
      expect(res.status, `request ${i}`).toBe(401);
      // the DICOMweb root also offers Basic (PACS clients that can only do Basic); other routes only Bearer
      const basicToo = i < 5;
      expect(res.headers["www-authenticate"], `request ${i}`).toBe(basicToo ? 'Bearer realm="dicom-relay", Basic realm="dicom-relay", charset="UTF-8"' : 'Bearer realm="dicom-relay"');
    }
    // Basic is read as the token in the password (basicAuth.test.ts); "pass" is no token
    const basic = await r.get("/dicom-web/studies").set("Authorization", "Basic dXNlcjpwYXNz");
    expect(basic.status).toBe(401);
    expect(basic.body.error).toMatch(/not well formed/);
  });

  it("a read token reads but cannot store, delete, upload or administer (403 insufficient_scope)", async () => {
    const r = request(relay.url);
    const qido = await r.get("/dicom-web/studies").set(bearer(readToken));
    expect(qido.status).toBe(200);
    expect((qido.body as Record<string, { Value?: unknown[] }>[]).map((s) => uidOf(s, "0020000D")).sort()).toEqual([studyA, studyB].sort());
    const forbidden = [
      r.post("/dicom-web/studies").set("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=x").send("--x--"),
      r.delete(`/dicom-web/studies/${studyA}`),
      r.post("/api/uploads").set("Tus-Resumable", "1.0.0").set("Upload-Length", "10"),
      r.post("/api/transfers").send({}),
      r.get("/api/admin/tokens"),
      r.post("/api/admin/shares").send({ studies: [studyA] }),
      // attaching a report is an upload
      r.post(`/api/studies/${studyA}/documents?kind=other&title=x&language=en`).set("Content-Type", "application/octet-stream").send(Buffer.from("%PDF-1.4\n%%EOF\n")),
    ];
    for (const [i, req] of forbidden.entries()) {
      const res = await req.set(bearer(readToken));
      expect(res.status, `request ${i}`).toBe(403);
      expect(res.headers["www-authenticate"]).toMatch(/error="insufficient_scope"/);
    }
    expect((await r.get(`/dicom-web/studies/${studyA}/metadata`).set(bearer(readToken))).status).toBe(200);
  });

  it("an upload token stores but cannot read; the guard holds whatever the path's case", async () => {
    const r = request(relay.url);
    for (const p of ["/dicom-web/studies", "/DICOM-WEB/studies", "/Dicom-Web/studies/", `/dicom-web/studies/${studyA}/metadata`]) {
      const res = await r.get(p).set(bearer(uploadToken));
      expect(res.status, p).toBe(403);
      expect(res.body.error).toMatch(/lacks the read scope/);
    }
    const tus = await r.post("/api/uploads").set(bearer(uploadToken)).set("Tus-Resumable", "1.0.0").set("Upload-Length", "10");
    expect(tus.status).toBe(201);
    const doc = await r.post(`/api/studies/${studyB}/documents?kind=other&title=x&language=en`).set(bearer(uploadToken))
      .set("Content-Type", "application/octet-stream").send(Buffer.from("%PDF-1.4\n%%EOF\n"));
    expect(doc.status, JSON.stringify(doc.body)).toBe(201);
    expect((await r.get("/api/admin/audit").set(bearer(uploadToken))).status).toBe(403);
  });

  it("tampered, malformed, expired and revoked tokens are refused with error=\"invalid_token\"", async () => {
    const r = request(relay.url);
    const tampered = readToken.slice(0, -2) + (readToken.endsWith("AA") ? "BB" : "AA");
    const expired = sqliteAccess(relay).tokens.create({ scopes: ["read"], expiresAt: new Date(Date.now() - 1000).toISOString(), createdBy: "test" });
    const created = await r.post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["read"], expires: "1h" });
    expect(created.status).toBe(201);
    expect(created.body.expiresAt).toBeTruthy();
    expect((await r.get("/dicom-web/studies").set(bearer(created.body.token))).status).toBe(200);
    const revoke = await r.delete(`/api/admin/tokens/${created.body.id}`).set(bearer(admin));
    expect(revoke.status).toBe(200);
    expect(revoke.body.revokedAt).toBeTruthy();
    const cases: [string, RegExp][] = [
      [tampered, /not known/],
      ["drt_0123456789abcdef_short", /not well formed/],
      [expired.token, /expired/],
      [created.body.token, /revoked/],
    ];
    for (const [token, why] of cases) {
      const res = await r.get("/dicom-web/studies").set(bearer(token));
      expect(res.status).toBe(401);
      expect(res.headers["www-authenticate"]).toMatch(/^Bearer realm="dicom-relay", error="invalid_token", error_description="/);
      expect(res.body.error).toMatch(why);
    }
    // the token list never shows secrets
    const list = await r.get("/api/admin/tokens?includeRevoked=true").set(bearer(admin));
    expect(list.status).toBe(200);
    expect(JSON.stringify(list.body)).not.toContain(readToken.slice(21));
    expect((list.body as { id: string; revokedAt: string | null }[]).find((t) => t.id === created.body.id)?.revokedAt).toBeTruthy();
    expect((await r.post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["write"] })).status).toBe(400);
    expect((await r.post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["read"], expires: "2001-01-01" })).status).toBe(400);
  });

  describe("study share links", () => {
    let share: { id: string; token: string; url: string };
    beforeAll(async () => {
      const res = await request(relay.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [studyA], label: "second opinion", expires: "1h" });
      expect(res.status).toBe(201);
      share = res.body;
    });

    it("work as a DICOMweb root for dicomweb-client: QIDO sees only the shared study, WADO returns its bytes", async () => {
      expect(share.url).toBe(`${relay.url}/share/${share.token}/dicom-web`);
      const client = dicomwebClient(share.url);
      const studies = await client.searchForStudies();
      expect(studies.map((s) => uidOf(s, "0020000D"))).toEqual([studyA]);
      expect(String(uidOf(studies[0]!, "00081190"))).toBe(`${share.url}/studies/${studyA}`);
      expect(await client.searchForStudies({ queryParams: { PatientID: "P-B" } })).toEqual([]);
      const series = await client.searchForSeries();
      expect(series.map((s) => uidOf(s, "0020000D"))).toEqual([studyA]);
      expect(await client.searchForInstances({ queryParams: { StudyInstanceUID: studyB } })).toEqual([]);
      const meta = await client.retrieveStudyMetadata({ studyInstanceUID: studyA });
      expect(meta).toHaveLength(3);
      const one = a[0]!;
      const got = await client.retrieveInstance({ studyInstanceUID: studyA, seriesInstanceUID: one.seriesInstanceUID, sopInstanceUID: one.sopInstanceUID });
      expect(sha(got)).toBe(sha(one.bytes));
    });

    it("any other study is 404 (not 403), and the link can never store or delete (403)", async () => {
      const client = dicomwebClient(share.url);
      await expect(client.retrieveStudyMetadata({ studyInstanceUID: studyB })).rejects.toMatchObject({ status: 404 });
      const r = request(relay.url);
      const root = `/share/${share.token}/dicom-web`;
      for (const p of [`/studies/${studyB}`, `/studies/${studyB}/metadata`, `/studies/${studyB}/series`, `/studies/${b[0]!.studyInstanceUID}/series/${b[0]!.seriesInstanceUID}/instances/${b[0]!.sopInstanceUID}`]) {
        const res = await r.get(root + p).set("Accept", p.endsWith("metadata") || p.endsWith("series") ? "application/dicom+json" : "multipart/related; type=\"application/dicom\"");
        expect(res.status, p).toBe(404);
      }
      const stow = await r.post(`${root}/studies`).set("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=x").send("--x--");
      expect(stow.status).toBe(403);
      expect(stow.body.error).toMatch(/can only read/);
      expect((await r.delete(`${root}/studies/${studyA}`)).status).toBe(403);
      // nothing was deleted
      expect((await r.get(`${root}/studies/${studyA}/metadata`)).status).toBe(200);
    });

    it("the same link works as a bearer token at the normal root, read only and limited to its studies", async () => {
      const r = request(relay.url);
      const qido = await r.get("/dicom-web/studies").set(bearer(share.token));
      expect(qido.status).toBe(200);
      expect((qido.body as Record<string, { Value?: unknown[] }>[]).map((s) => uidOf(s, "0020000D"))).toEqual([studyA]);
      expect((await r.get(`/dicom-web/studies/${studyB}/metadata`).set(bearer(share.token))).status).toBe(404);
      expect((await r.post("/dicom-web/studies").set(bearer(share.token)).set("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=x").send("--x--")).status).toBe(403);
      expect((await r.delete(`/dicom-web/studies/${studyA}`).set(bearer(share.token))).status).toBe(403);
      expect((await r.post("/api/uploads").set(bearer(share.token)).set("Tus-Resumable", "1.0.0").set("Upload-Length", "10")).status).toBe(403);
      expect((await r.get("/api/admin/tokens").set(bearer(share.token))).status).toBe(403);
    });

    it("only share links open /share/ URLs; revoked and expired links are refused; errors never echo the token", async () => {
      const r = request(relay.url);
      expect((await r.get(`/share/${readToken}/dicom-web/studies`)).status).toBe(401);
      expect((await r.get(`/share/${share.token.slice(0, -1)}x/dicom-web/studies`)).status).toBe(401);
      const notFound = await r.get(`/share/${share.token}/elsewhere`);
      expect(notFound.status).toBe(404);
      expect(JSON.stringify(notFound.body)).not.toContain(share.token.slice(21));
      const expired = sqliteAccess(relay).tokens.createShare({ studies: [studyA], expiresAt: new Date(Date.now() - 1000).toISOString(), createdBy: "test" });
      const res = await r.get(`/share/${expired.token}/dicom-web/studies`);
      expect(res.status).toBe(401);
      expect(res.body.error).toMatch(/share link.*expired/);
      expect(JSON.stringify(res.body)).not.toContain(expired.token.slice(21));
      const other = (await r.post("/api/admin/shares").set(bearer(admin)).send({ studies: [studyB] })).body as { id: string; token: string; expiresAt: string };
      // share links expire by default (auth.shareDefaultExpiry, 7 days)
      expect(Date.parse(other.expiresAt) - Date.now()).toBeGreaterThan(6.9 * 86400_000);
      expect((await r.get(`/share/${other.token}/dicom-web/studies`)).status).toBe(200);
      expect((await r.delete(`/api/admin/shares/${other.id}`).set(bearer(admin))).status).toBe(200);
      expect((await r.get(`/share/${other.token}/dicom-web/studies`)).status).toBe(401);
      expect((await r.get("/dicom-web/studies").set(bearer(other.token))).status).toBe(401);
      expect((await r.post("/api/admin/shares").set(bearer(admin)).send({ studies: ["../../etc/passwd"] })).status).toBe(400);
    });
  });

  it("path traversal in UIDs or in the share token is refused before it reaches storage or SQL", async () => {
    for (const p of [
      "/dicom-web/studies/..%2F..%2Fetc%2Fpasswd/metadata",
      `/dicom-web/studies/${studyA}/series/..%2F..%2F..%2Fblobs/metadata`,
      "/dicom-web/studies/1.2.3%00/metadata",
      "/dicom-web/studies/1.2.3'%20OR%20'1'='1/metadata",
    ]) {
      const res = await rawRequest(relay.url, p, { ...bearer(readToken), Accept: "application/dicom+json" });
      expect(res.status, p).toBe(400);
      expect(res.body).toMatch(/not a valid DICOM UID/);
    }
    for (const p of ["/share/..%2F..%2Fetc%2Fpasswd/dicom-web/studies", "/share/abc/../../dicom-web/studies", "/share/%2e%2e/dicom-web/studies"]) {
      const res = await rawRequest(relay.url, p);
      expect(res.status, p).toBe(401);
    }
  });

  it("oversized headers are refused with 431 before any handler runs", async () => {
    const huge = await rawRequest(relay.url, "/dicom-web/studies", { ...bearer(readToken), "X-Padding": "a".repeat(20 * 1024) });
    expect(huge.status).toBe(431);
    const hugeAuth = await rawRequest(relay.url, "/dicom-web/studies", { Authorization: `Bearer ${"x".repeat(20 * 1024)}` });
    expect(hugeAuth.status).toBe(431);
  });

  it("token CLI: create, list and revoke against the running relay (shared access database)", async () => {
    const env = { DICOM_RELAY_DATA_DIR: relay.dataDir, DICOM_RELAY_LOG_LEVEL: "silent" };
    const created = await runCli(["token", "create", "--scope", "read", "--expires", "30d", "--label", "radiology viewer"], env);
    expect(created.code, created.stderr).toBe(0);
    const token = /^(drt_\S+)$/m.exec(created.stdout)?.[1];
    expect(token).toBeTruthy();
    expect(created.stdout).toMatch(/shown this once/);
    expect((await request(relay.url).get("/dicom-web/studies").set(bearer(token!))).status).toBe(200);
    const id = token!.slice(4, 20);
    const list = await runCli(["token", "list"], env);
    expect(list.stdout).toMatch(new RegExp(`${id}.*active.*scopes read.*"radiology viewer"`));
    expect(list.stdout).not.toContain(token!.slice(21));
    const revoked = await runCli(["token", "revoke", id], env);
    expect(revoked.code).toBe(0);
    expect((await request(relay.url).get("/dicom-web/studies").set(bearer(token!))).status).toBe(401);
    const share = await runCli(["token", "share", "--study", studyA, "--expires", "2h", "--url", relay.url, "--json"], env);
    expect(share.code, share.stderr).toBe(0);
    const shared = JSON.parse(share.stdout) as { url: string; studies: string[] };
    expect(shared.studies).toEqual([studyA]);
    const viaCli = await request(shared.url).get("/studies");
    expect(viaCli.status).toBe(200);
    const bad = await runCli(["token", "create", "--scope", "everything"], env);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/unknown scope "everything"/);
    expect((await runCli(["token", "revoke", "ffffffffffffffff"], env)).code).toBe(1);
  }, 60_000);
  it("uploads, transfers, results and receipts belong to their sender: another token gets 404, admin sees all; no stored hash is ever shown", async () => {
    const otherUpload = (await request(relay.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["upload"], label: "hospital B" })).body.token as string;
    const idOf = (t: string) => t.slice(4, 20);
    const tusHeaders = (t: string) => ({ ...bearer(t), "Tus-Resumable": "1.0.0" });
    const fresh = makeOne();
    // hospital A: a transfer and an unfinished upload
    const manifest = { instances: [{ sopInstanceUID: fresh.uid, sha256: sha(fresh.bytes), size: fresh.bytes.length }] };
    const t = await request(relay.url).post("/api/transfers").set(bearer(uploadToken)).send(manifest);
    expect(t.status).toBe(201);
    const created = await fetch(`${relay.url}/api/uploads`, { method: "POST", headers: { ...tusHeaders(uploadToken), "Upload-Length": String(fresh.bytes.length), "Upload-Metadata": `transferId ${Buffer.from(t.body.id).toString("base64")}` } });
    expect(created.status).toBe(201);
    const loc = new URL(created.headers.get("location")!).pathname;
    // hospital B sees none of it
    for (const path of [`/api/transfers/${t.body.id}`, `/api/transfers/${t.body.id}/receipt`]) {
      const res = await request(relay.url).get(path).set(bearer(otherUpload));
      expect(res.status, path).toBe(404);
      expect(res.body.error).toMatch(/^no transfer with id/);
    }
    expect((await fetch(relay.url + loc, { method: "HEAD", headers: tusHeaders(otherUpload) })).status).toBe(404);
    expect((await fetch(relay.url + loc, { method: "PATCH", headers: { ...tusHeaders(otherUpload), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(fresh.bytes) })).status).toBe(404);
    expect((await fetch(relay.url + loc, { method: "DELETE", headers: tusHeaders(otherUpload) })).status).toBe(404);
    // nor can it upload into A's transfer, or claim A as the owner through Upload-Metadata
    const intoA = await fetch(`${relay.url}/api/uploads`, { method: "POST", headers: { ...tusHeaders(otherUpload), "Upload-Length": "10", "Upload-Metadata": `transferId ${Buffer.from(t.body.id).toString("base64")}` } });
    expect(intoA.status).toBe(404);
    const spoof = await fetch(`${relay.url}/api/uploads`, { method: "POST", headers: { ...tusHeaders(otherUpload), "Upload-Length": "10", "Upload-Metadata": `relayOwner ${Buffer.from(idOf(uploadToken)).toString("base64")}` } });
    expect(spoof.status).toBe(400);
    expect(await spoof.text()).toMatch(/relayOwner is reserved for the relay/);
    // A finishes its upload; its result and receipt are A's (and the admin's) only
    expect((await fetch(relay.url + loc, { method: "HEAD", headers: tusHeaders(uploadToken) })).status).toBe(200);
    const done = await fetch(relay.url + loc, { method: "PATCH", headers: { ...tusHeaders(uploadToken), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(fresh.bytes) });
    expect(done.status).toBe(200);
    expect((await request(relay.url).get(loc).set(bearer(uploadToken))).status).toBe(200);
    expect((await request(relay.url).get(loc).set(bearer(otherUpload))).status).toBe(404);
    expect((await request(relay.url).get(loc).set(bearer(admin))).status).toBe(200);
    expect((await request(relay.url).get(`/api/transfers/${t.body.id}/receipt`).set(bearer(uploadToken))).status).toBe(200);
    expect((await request(relay.url).get(`/api/transfers/${t.body.id}/receipt`).set(bearer(admin))).status).toBe(200);
    // ids with a dot or a slash are not upload ids
    expect((await fetch(`${relay.url}${loc}.json`, { method: "DELETE", headers: tusHeaders(uploadToken) })).status).toBe(404);

    // B declares a wrong hash for A's instance: the answer never shows the stored hash, so B cannot learn it to
    // declare it next and have A's study counted as "already held"
    const storedHash = sha(a[0]!.bytes);
    const guess = await request(relay.url).post("/api/transfers").set(bearer(otherUpload)).send({ instances: [{ sopInstanceUID: a[0]!.sopInstanceUID, sha256: "0".repeat(64), size: 1 }] });
    expect(guess.status).toBe(201);
    expect(guess.body.alreadyHeld).toEqual([]);
    expect(JSON.stringify(guess.body)).not.toContain(storedHash);
    expect(JSON.stringify((await request(relay.url).get(`/api/transfers/${guess.body.id}`).set(bearer(otherUpload))).body)).not.toContain(storedHash);
  });

  it("reading a study's documents needs read scope (an upload token gets 403)", async () => {
    expect((await request(relay.url).get(`/api/studies/${studyA}/documents`).set(bearer(readToken))).status).toBe(200);
    expect((await request(relay.url).get(`/api/studies/${studyA}/completeness`).set(bearer(readToken))).status).toBe(200);
    const up = await request(relay.url).get(`/api/studies/${studyA}/documents`).set(bearer(uploadToken));
    expect(up.status).toBe(403);
    expect((await request(relay.url).get(`/api/studies/${studyA}/completeness`).set(bearer(uploadToken))).status).toBe(403);
  });
  it("a share link dies with the token that minted it; a token may have only auth.maxShareLinksPerToken live links (429)", async () => {
    const small = await startTestRelay({ auth: { enabled: true, maxShareLinksPerToken: 2 } });
    try {
      const root = small.initialAdminToken!;
      const study = newUid();
      await dicomwebClient(small.dicomwebUrl, bearer(root)).storeInstances({ datasets: [toArrayBuffer(makeInstance({ studyInstanceUID: study, rows: 8, columns: 8 }))] });
      const viewer = (await request(small.url).post("/api/admin/tokens").set(bearer(root)).send({ scopes: ["read"], label: "viewer" })).body as { token: string; id: string };
      const mint = () => request(small.url).post("/api/viewer-links").set(bearer(viewer.token)).send({ studyInstanceUID: study });
      const first = await mint();
      expect(first.status).toBe(201);
      const secret = /\/share\/([^/]+)\//.exec(first.body.url as string)![1]!;
      expect((await request(small.url).get(`/share/${secret}/dicom-web/studies`)).status).toBe(200);
      expect((await mint()).status).toBe(201);
      const third = await mint();
      expect(third.status).toBe(429);
      expect(third.body.error).toMatch(/already has 2 live share links.*auth\.maxShareLinksPerToken/);
      // revoking the maker ends its links at their next request
      expect((await request(small.url).delete(`/api/admin/tokens/${viewer.id}`).set(bearer(root))).status).toBe(200);
      const dead = await request(small.url).get(`/share/${secret}/dicom-web/studies`);
      expect(dead.status).toBe(401);
      expect(dead.body.error).toMatch(/made by token .* which was revoked/);
      expect((await request(small.url).get(`/dicom-web/studies`).set(bearer(decodeURIComponent(secret)))).status).toBe(401);
    } finally {
      await small.dispose();
    }
  });
});

describe("first start (issue 15)", () => {
  it("a start that cannot listen (port taken) leaves no admin token; the next start creates and returns it", async () => {
    const fs = await import("node:fs");
    const os = await import("node:os");
    const net = await import("node:net");
    const { openAccessDb, accessDbPath } = await import("../../src/access/db.ts");
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-first-"));
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", () => r()));
    const port = (blocker.address() as { port: number }).port;
    try {
      await expect(startTestRelay({ auth: { enabled: true }, server: { port } }, { dataDir })).rejects.toThrow(/already in use/);
      const db = openAccessDb(accessDbPath(dataDir));
      expect((db.prepare("SELECT COUNT(*) AS n FROM tokens").get() as { n: number }).n).toBe(0);
      db.close();
      const relay = await startTestRelay({ auth: { enabled: true } }, { dataDir });
      expect(relay.initialAdminToken).toMatch(/^drt_/);
      await relay.dispose();
    } finally {
      blocker.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe("credentials in URLs (issue 15)", () => {
  it("a token sent in the query string is never written whole into the audit log", async () => {
    const relay = await startTestRelay({ auth: { enabled: true } });
    try {
      const admin = relay.initialAdminToken!;
      const secret = admin.slice(21);
      await request(relay.url).get(`/dicom-web/studies?access_token=${encodeURIComponent(admin)}&limit=5`);
      await request(relay.url).get(`/dicom-web/studies?foo=${encodeURIComponent(admin)}&token=abc`).set({ Authorization: `Bearer ${admin}` });
      const rows = sqliteAccess(relay).db.prepare("SELECT route FROM audit WHERE route LIKE '/dicom-web/studies?%'").all() as { route: string }[];
      expect(rows.length).toBe(2);
      for (const r of rows) {
        expect(r.route).not.toContain(secret);
        expect(r.route).toMatch(/=\[redacted\]/);
      }
      expect(rows.map((r) => r.route).join(" ")).toContain("limit=5");
    } finally {
      await relay.dispose();
    }
  });
});

describe("data directory permissions (issue 15)", () => {
  it("the data directory and its stores are the relay user's only (dirs 0700, databases 0600)", async () => {
    const fs = await import("node:fs");
    const relay = await startTestRelay({ auth: { enabled: true } });
    try {
      const mode = (p: string) => fs.statSync(p).mode & 0o777;
      for (const d of [relay.dataDir, path.join(relay.dataDir, "blobs"), path.join(relay.dataDir, "uploads"), path.join(relay.dataDir, "tmp")]) expect(mode(d), d).toBe(0o700);
      for (const f of ["index.sqlite", "transfers.sqlite", "access.sqlite"]) expect(mode(path.join(relay.dataDir, f)), f).toBe(0o600);
    } finally {
      await relay.dispose();
    }
  });
});

describe("orphan tus data files (issue 15)", () => {
  it("the expiry sweep removes a data file whose info file is gone, once it is older than the expiration", async () => {
    const fs = await import("node:fs");
    const relay = await startTestRelay({ transfers: { expirationSeconds: 60 } });
    try {
      const dir = relay.config.transfers.uploadDir;
      const orphan = path.join(dir, "0123456789abcdef0123456789abcdef");
      const young = path.join(dir, "fedcba9876543210fedcba9876543210");
      fs.writeFileSync(orphan, "left behind");
      fs.writeFileSync(young, "still recent");
      const old = new Date(Date.now() - 3600_000);
      fs.utimesSync(orphan, old, old);
      await relay.services.transfers!.uploads.deleteExpired();
      expect(fs.existsSync(orphan)).toBe(false);
      expect(fs.existsSync(young)).toBe(true);
    } finally {
      await relay.dispose();
    }
  });
});
