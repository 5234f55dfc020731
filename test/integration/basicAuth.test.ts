/**
 * HTTP Basic authentication with the token as the password (issue 16): raw HTTP for every rule (same scopes and
 * audit as Bearer, bad Basic refused with a sentence, the Basic challenge on the DICOMweb root, share links
 * untouched, the token never in a log line), and a real Orthanc 1.10 + DICOMweb plugin configured as a DICOMweb
 * client of the relay that pulls studies with "Username"/"Password" (both server forms) and with a Bearer header
 * (HttpHeaders).
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import request from "supertest";
import { loadConfig, type DeepPartial, type RelayConfig } from "../../src/config.ts";
import { startRelay, type RunningRelay } from "../../src/relay.ts";
import { createLogger } from "../../src/logger.ts";
import { sqliteAccess } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { startOrthanc, orthancAvailable, type Orthanc } from "../support/orthanc.ts";
import { generateStudy, newUid } from "../../scripts/lib/synthetic.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");
const basic = (user: string, password: string) => ({ Authorization: `Basic ${Buffer.from(`${user}:${password}`, "utf8").toString("base64")}` });
const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
const uidOf = (ds: Record<string, { Value?: unknown[] }>, tag: string) => ds[tag]?.Value?.[0];

/** A relay with access control whose log lines (debug level) are kept in memory, to prove no token reaches them. */
async function startLoggedRelay(): Promise<{ relay: RunningRelay; url: string; dicomwebUrl: string; log: () => string; dispose(): Promise<void> }> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-basic-"));
  const config = loadConfig({
    env: {},
    overrides: { auth: { enabled: true }, dataDir, server: { host: "127.0.0.1", port: 0 }, log: { level: "debug" } } as DeepPartial<RelayConfig>,
  });
  let lines = "";
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines += chunk.toString();
      cb();
    },
  });
  const relay = await startRelay(config, { log: createLogger("debug", sink) });
  return {
    relay,
    url: relay.url,
    dicomwebUrl: relay.dicomwebUrl,
    log: () => lines,
    async dispose() {
      await relay.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

describe("HTTP Basic authentication (token as the password)", () => {
  let t: Awaited<ReturnType<typeof startLoggedRelay>>;
  let admin: string;
  let readToken: string;
  let uploadToken: string;
  const studyA = newUid();
  const studyB = newUid();
  const a = [...generateStudy({ instances: 2, seriesCount: 1, rows: 16, columns: 16, modality: "CT", studyInstanceUID: studyA, patientName: "Basic^A", patientID: "B-A" })];
  const b = [...generateStudy({ instances: 1, seriesCount: 1, rows: 16, columns: 16, modality: "MR", studyInstanceUID: studyB, patientName: "Basic^B", patientID: "B-B" })];

  beforeAll(async () => {
    t = await startLoggedRelay();
    admin = t.relay.initialAdminToken!;
    // the admin API takes Basic like Bearer
    const mk = async (scopes: string[]) => {
      const res = await request(t.url).post("/api/admin/tokens").set(basic("admin", admin)).send({ scopes, label: scopes.join("+") });
      expect(res.status, JSON.stringify(res.body)).toBe(201);
      return res.body.token as string;
    };
    readToken = await mk(["read"]);
    uploadToken = await mk(["upload"]);
    // STOW-RS by dicomweb-client with Basic
    await dicomwebClient(t.dicomwebUrl, basic("sender", uploadToken)).storeInstances({ datasets: [...a, ...b].map((i) => toArrayBuffer(i.bytes)) });
  });
  afterAll(async () => {
    await t?.dispose();
  });

  it("reads with Basic as with Bearer, whatever the user name: QIDO finds, WADO returns the stored bytes", async () => {
    for (const user of ["orthanc", "", "any one"]) {
      const client = dicomwebClient(t.dicomwebUrl, basic(user, readToken));
      const studies = await client.searchForStudies();
      expect(studies.map((s) => uidOf(s, "0020000D")).sort()).toEqual([studyA, studyB].sort());
    }
    const pulled = await dicomwebClient(t.dicomwebUrl, basic("orthanc", readToken)).retrieveStudy({ studyInstanceUID: studyA });
    expect(pulled.map(sha).sort()).toEqual(a.map((i) => sha(i.bytes)).sort());
  });

  it("the same scopes: a read token cannot store, an upload token cannot read (403 as with Bearer)", async () => {
    const r = request(t.url);
    const stow = await r.post("/dicom-web/studies").set(basic("u", readToken)).set("Content-Type", 'multipart/related; type="application/dicom"; boundary=x').send("--x--");
    expect(stow.status).toBe(403);
    expect(stow.body.error).toMatch(/lacks the upload scope/);
    const read = await r.get("/dicom-web/studies").set(basic("u", uploadToken));
    expect(read.status).toBe(403);
    expect(read.body.error).toMatch(/lacks the read scope/);
    // tus uploads and the admin API accept Basic too
    expect((await r.post("/api/uploads").set(basic("u", uploadToken)).set("Tus-Resumable", "1.0.0").set("Upload-Length", "10")).status).toBe(201);
    expect((await r.get("/api/admin/tokens").set(basic("u", readToken))).status).toBe(403);
  });

  it("bad Basic credentials get 401 with a sentence; the DICOMweb root offers both challenges", async () => {
    const r = request(t.url);
    const b64 = (s: string) => `Basic ${Buffer.from(s).toString("base64")}`;
    const cases: [string, RegExp][] = [
      ["Basic %%%", /not base64/],
      [b64(readToken), /no colon/],
      [b64("orthanc:"), /empty password/],
      [b64("orthanc:not-a-token"), /not well formed/],
      [b64(`orthanc:${readToken.slice(0, -2)}${readToken.endsWith("AA") ? "BB" : "AA"}`), /not known/],
    ];
    for (const [header, why] of cases) {
      const res = await r.get("/dicom-web/studies").set("Authorization", header);
      expect(res.status, header).toBe(401);
      expect(res.body.error, header).toMatch(why);
      expect(res.headers["www-authenticate"], header).toMatch(/^Bearer realm="dicom-relay"(, error="invalid_token", error_description="[^"]*")?, Basic realm="dicom-relay", charset="UTF-8"$/);
    }
    const none = await r.get("/dicom-web/studies");
    expect(none.headers["www-authenticate"]).toBe('Bearer realm="dicom-relay", Basic realm="dicom-relay", charset="UTF-8"');
    // a script in a browser page (the console, the viewer) and a caller that sent Bearer see only Bearer: no browser password dialog
    expect((await r.get("/dicom-web/studies").set("Sec-Fetch-Dest", "empty")).headers["www-authenticate"]).toBe('Bearer realm="dicom-relay"');
    expect((await r.get("/dicom-web/studies").set(bearer("drt_0123456789abcdef_x"))).headers["www-authenticate"]).toMatch(/^Bearer realm="dicom-relay", error="invalid_token"[^,]*,[^,]*$/);
    // outside the DICOMweb root: Bearer only (the console's API)
    expect((await r.get("/api/admin/tokens")).headers["www-authenticate"]).toBe('Bearer realm="dicom-relay"');
  });

  it("share links: a link in a /share/ URL ignores any Authorization header; a link as the Basic password is read only and limited", async () => {
    const r = request(t.url);
    const made = await r.post("/api/admin/shares").set(bearer(admin)).send({ studies: [studyA] });
    expect(made.status, JSON.stringify(made.body)).toBe(201);
    const link = made.body.token as string;
    // the path's link rules, even with a (valid, broader) Basic header alongside
    const viaPath = await r.get(`/share/${link}/dicom-web/studies`).set(basic("u", admin));
    expect(viaPath.status).toBe(200);
    expect((viaPath.body as Record<string, { Value?: unknown[] }>[]).map((s) => uidOf(s, "0020000D"))).toEqual([studyA]);
    const viaBasic = await r.get("/dicom-web/studies").set(basic("viewer", link));
    expect(viaBasic.status).toBe(200);
    expect((viaBasic.body as Record<string, { Value?: unknown[] }>[]).map((s) => uidOf(s, "0020000D"))).toEqual([studyA]);
    expect((await r.get(`/dicom-web/studies/${studyB}/metadata`).set(basic("viewer", link))).status).toBe(404);
    expect((await r.delete(`/dicom-web/studies/${studyA}`).set(basic("viewer", link))).status).toBe(403);
  });

  it("audit rows name the token (never the secret) and say Basic; no log line holds a token's secret", async () => {
    const db = sqliteAccess(t.relay).db;
    const readId = /^drt_([0-9a-f]{16})_/.exec(readToken)![1]!;
    const rows = db.prepare("SELECT actor, action, outcome, status, detail FROM audit WHERE actor = ? AND route = '/dicom-web/studies' AND status = 200").all(readId) as { actor: string; action: string; outcome: string; status: number; detail: string | null }[];
    expect(rows.length).toBeGreaterThanOrEqual(3);
    expect(rows.every((row) => row.action === "dicomweb.qido" && row.outcome === "success" && row.detail === "Basic authentication")).toBe(true);
    const refused = db.prepare("SELECT detail FROM audit WHERE action = 'auth' AND detail LIKE '%empty password%'").all();
    expect(refused.length).toBe(1);
    const everything = JSON.stringify(db.prepare("SELECT * FROM audit").all()) + t.log();
    expect(t.log()).toMatch(/"msg":"request"/);
    for (const token of [admin, readToken, uploadToken]) {
      expect(everything).not.toContain(token.slice(21));
      expect(everything).not.toContain(Buffer.from(`orthanc:${token}`).toString("base64"));
    }
  });
});

describe("Orthanc as a DICOMweb client of the relay (Basic and Bearer)", () => {
  let t: Awaited<ReturnType<typeof startLoggedRelay>>;
  let orthanc: Orthanc;
  let readToken: string;
  // one study per server entry, so each pull is proven by what it brought
  const studies = { array: newUid(), object: newUid(), bearer: newUid(), wrong: newUid() };
  const made = Object.fromEntries(
    Object.entries(studies).map(([k, uid]) => [k, [...generateStudy({ instances: 2, seriesCount: 1, rows: 16, columns: 16, modality: "CT", studyInstanceUID: uid, patientName: `Orthanc^${k}`, patientID: `O-${k}` })]]),
  ) as Record<keyof typeof studies, ReturnType<typeof generateStudy> extends Iterable<infer I> ? I[] : never>;

  beforeAll(async () => {
    if (!orthancAvailable()) throw new Error("Orthanc is not installed (scripts/test-prereqs.sh installs it)");
    t = await startLoggedRelay();
    const admin = t.relay.initialAdminToken!;
    const res = await request(t.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["read"], label: "orthanc" });
    readToken = res.body.token as string;
    await dicomwebClient(t.dicomwebUrl, bearer(admin)).storeInstances({ datasets: Object.values(made).flat().map((i) => toArrayBuffer(i.bytes)) });
    const root = `${t.dicomwebUrl}/`;
    orthanc = await startOrthanc({
      aeTitle: "ORTHANCWEB",
      relayAE: "RELAY",
      // exactly the forms docs/security.md gives
      dicomwebServers: {
        "relay-array": [root, "orthanc", readToken],
        "relay-object": { Url: root, Username: "orthanc", Password: readToken },
        "relay-bearer": { Url: root, HttpHeaders: { Authorization: `Bearer ${readToken}` } },
        "relay-wrong": { Url: root, Username: "orthanc", Password: `${readToken.slice(0, -2)}${readToken.endsWith("AA") ? "BB" : "AA"}` },
      },
    });
  }, 120_000);
  afterAll(async () => {
    await orthanc?.dispose();
    await t?.dispose();
  });

  const retrieve = (server: string, study: string) =>
    fetch(`${orthanc.url}/dicom-web/servers/${server}/retrieve`, { method: "POST", body: JSON.stringify({ Resources: [{ Study: study }] }) });

  const storedBytes = async (study: string) => {
    const inst = await orthanc.studyInstances(study);
    const out: string[] = [];
    for (const i of inst) out.push(sha(Buffer.from(await (await fetch(`${orthanc.url}/instances/${i.id}/file`)).arrayBuffer())));
    return out.sort();
  };

  for (const [server, key] of [["relay-array", "array"], ["relay-object", "object"], ["relay-bearer", "bearer"]] as const) {
    it(`${server}: Orthanc retrieves a study from the relay, byte for byte`, async () => {
      const res = await retrieve(server, studies[key]);
      expect(res.status, await res.clone().text()).toBe(200);
      expect(await storedBytes(studies[key])).toEqual(made[key].map((i) => sha(i.bytes)).sort());
    }, 60_000);
  }

  it("Orthanc's QIDO through the relay with Basic finds the studies; a wrong password brings nothing", async () => {
    const q = await fetch(`${orthanc.url}/dicom-web/servers/relay-object/get`, { method: "POST", body: JSON.stringify({ Uri: "/studies" }) });
    expect(q.status).toBe(200);
    const found = ((await q.json()) as Record<string, { Value?: unknown[] }>[]).map((s) => uidOf(s, "0020000D"));
    expect(found.sort()).toEqual(Object.values(studies).sort());
    const res = await retrieve("relay-wrong", studies.wrong);
    expect(res.status).not.toBe(200);
    expect(await orthanc.studyInstances(studies.wrong)).toEqual([]);
    // the relay saw Basic for the two Basic entries, Bearer for the header entry, and kept no secret
    const db = sqliteAccess(t.relay).db;
    const id = /^drt_([0-9a-f]{16})_/.exec(readToken)![1]!;
    const ok = db.prepare("SELECT detail, action FROM audit WHERE actor = ? AND status = 200").all(id) as { detail: string | null; action: string }[];
    // Basic rows say so (a retrieve also says how many instances it sent); the Bearer entry's retrieve does not
    expect(ok.filter((r) => r.detail === "Basic authentication").length).toBeGreaterThan(0);
    expect(ok.filter((r) => r.action === "dicomweb.wado" && /^Basic authentication; \d+ instance\(s\) sent$/.test(r.detail ?? "")).length).toBeGreaterThan(0);
    expect(ok.filter((r) => r.action === "dicomweb.wado" && /^\d+ instance\(s\) sent$/.test(r.detail ?? "")).length).toBeGreaterThan(0);
    const refused = db.prepare("SELECT status FROM audit WHERE actor = ? AND status = 401").all(id);
    expect(refused.length).toBeGreaterThan(0);
    expect(JSON.stringify(db.prepare("SELECT * FROM audit").all()) + t.log()).not.toContain(readToken.slice(21));
  }, 60_000);
});
