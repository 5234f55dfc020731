/**
 * GET /metrics end to end: a real relay (disk + SQLite, DIMSE on) serves Prometheus text whose counters follow what
 * real clients did (dicomweb-client STOW/QIDO/WADO, a refused STOW part, a transfer manifest, dcmtk echoscu);
 * the route needs the metrics or admin scope; metrics.port serves the same without a token and nothing else.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import request from "supertest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { generateStudy, newUid } from "../../scripts/lib/synthetic.ts";
import { freePort } from "../../scripts/lib/net.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });

function sample(text: string, name: string, labels: Record<string, string>): number | null {
  for (const line of text.split("\n")) {
    const m = /^([^{ ]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return null;
}

describe("metrics", () => {
  let relay: TestRelay;
  let admin: string;
  let metricsToken: string;
  let readToken: string;
  let metricsPort: number;
  let badStatus = 0;
  const study = newUid();
  const inst = [...generateStudy({ instances: 3, seriesCount: 1, rows: 16, columns: 16, studyInstanceUID: study })];

  beforeAll(async () => {
    metricsPort = await freePort();
    relay = await startTestRelay({
      auth: { enabled: true },
      metrics: { port: metricsPort, host: "127.0.0.1" },
      dimse: { enabled: true, port: 0, aeTitle: "RELAY", peers: [{ aeTitle: "HOSPITAL", host: "127.0.0.1", port: 0, studies: "all", store: true }] },
    });
    admin = relay.initialAdminToken!;
    const mk = async (scopes: string[]) => (await request(relay.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes })).body as { token: string };
    metricsToken = (await mk(["metrics"])).token;
    readToken = (await mk(["read"])).token;
    const client = dicomwebClient(relay.dicomwebUrl, bearer(admin));
    await client.storeInstances({ datasets: inst.map((i) => toArrayBuffer(i.bytes)) });
    await client.searchForStudies({ queryParams: { StudyInstanceUID: study } });
    await client.retrieveStudyMetadata({ studyInstanceUID: study });
    await client.retrieveStudy({ studyInstanceUID: study });
    // a part that is not DICOM: refused with 0xC000-class reason
    const boundary = "b0undary";
    const body = Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`), Buffer.from("this is not a DICOM file at all, just text".repeat(10)), Buffer.from(`\r\n--${boundary}--\r\n`)]);
    const bad = await request(relay.url).post("/dicom-web/studies").set(bearer(admin)).set("Content-Type", `multipart/related; type="application/dicom"; boundary=${boundary}`).send(body);
    badStatus = bad.status;
    expect(bad.status).toBeGreaterThanOrEqual(400);
    const manifest = { instances: [{ sopInstanceUID: newUid(), sha256: "a".repeat(64), size: 10 }] };
    const t = await request(relay.url).post("/api/transfers").set(bearer(admin)).send(manifest);
    expect(t.status).toBe(201);
    const echo = await dcmtk("echoscu", ["-aet", "HOSPITAL", "-aec", "RELAY", "127.0.0.1", String(relay.dimsePort)]);
    expect(echo.code).toBe(0);
  });

  afterAll(async () => {
    await relay?.close();
  });

  it("needs the metrics or admin scope on the main listener", async () => {
    expect((await request(relay.url).get("/metrics")).status).toBe(401);
    const read = await request(relay.url).get("/metrics").set(bearer(readToken));
    expect(read.status).toBe(403);
    expect(read.body.error).toMatch(/metrics or admin scope/);
    expect((await request(relay.url).get("/metrics").set(bearer(admin))).status).toBe(200);
    // a metrics token opens nothing else
    expect((await request(relay.url).get("/dicom-web/studies").set(bearer(metricsToken))).status).toBe(403);
  });

  it("counts what real clients did, by operation, result and reason", async () => {
    const r = await request(relay.url).get("/metrics").set(bearer(metricsToken));
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = r.text;
    expect(sample(text, "dicomrelay_http_requests_total", { operation: "stow", method: "POST", status: "2xx" })).toBe(1);
    expect(sample(text, "dicomrelay_http_requests_total", { operation: "stow", method: "POST", status: `${Math.floor(badStatus / 100)}xx` })).toBe(1);
    expect(sample(text, "dicomrelay_http_requests_total", { operation: "qido", method: "GET", status: "2xx" })).toBe(1);
    expect(sample(text, "dicomrelay_http_requests_total", { operation: "wado-metadata", method: "GET", status: "2xx" })).toBe(1);
    expect(sample(text, "dicomrelay_http_requests_total", { operation: "wado-retrieve", method: "GET", status: "2xx" })).toBe(1);
    // every answered QIDO is timed, whatever its status (the 403 above included)
    const qidos = ["2xx", "4xx"].reduce((n, status) => n + (sample(text, "dicomrelay_http_requests_total", { operation: "qido", method: "GET", status }) ?? 0), 0);
    expect(sample(text, "dicomrelay_http_request_duration_seconds_count", { operation: "qido" })).toBe(qidos);
    // the retrieve sent at least the three instances' bytes
    const studyBytes = inst.reduce((n, i) => n + i.bytes.length, 0);
    expect(sample(text, "dicomrelay_http_sent_bytes_total", { operation: "wado-retrieve" })).toBeGreaterThan(studyBytes);
    expect(sample(text, "dicomrelay_http_received_bytes_total", { operation: "stow" })).toBeGreaterThan(studyBytes);
    expect(sample(text, "dicomrelay_ingest_instances_total", { source: "stow", result: "stored", reason: "none" })).toBe(3);
    expect(sample(text, "dicomrelay_ingest_bytes_total", { source: "stow", result: "stored" })).toBe(studyBytes);
    const failed = text.split("\n").filter((l) => l.startsWith('dicomrelay_ingest_instances_total{source="stow",result="failed",reason="0x'));
    expect(failed.length).toBe(1);
    expect(sample(text, "dicomrelay_transfers", { state: "open" })).toBe(1);
    expect(sample(text, "dicomrelay_forwarding_instances", { state: "pending" })).toBe(0);
    expect(sample(text, "dicomrelay_storage_filesystem_bytes", { kind: "free" })).toBeGreaterThan(0);
    expect(sample(text, "dicomrelay_dimse_requests_total", { command: "C-ECHO", outcome: "completed" })).toBe(1);
    // never a UID or a token in a label
    expect(text).not.toContain(study);
    expect(text).not.toContain(admin);
  });

  it("metrics.port serves /metrics without a token, and nothing else", async () => {
    expect(relay.metricsPort).toBe(metricsPort);
    const base = `http://127.0.0.1:${metricsPort}`;
    const r = await request(base).get("/metrics");
    expect(r.status).toBe(200);
    expect(sample(r.text, "dicomrelay_ingest_instances_total", { source: "stow", result: "stored", reason: "none" })).toBe(3);
    expect((await request(base).get("/dicom-web/studies")).status).toBe(404);
    expect((await request(base).post("/metrics")).status).toBe(404);
  });
});
