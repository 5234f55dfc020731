/**
 * Every guard of STOW-RS / QIDO-RS / WADO-RS answered over raw HTTP: status, DICOM failure reason,
 * a sentence, and nothing stored or damaged.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import request from "supertest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";

const BOUNDARY = "relay-test-boundary-1234";

function multipart(parts: { type?: string; body: Buffer }[], boundary = BOUNDARY): Buffer {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Type: ${p.type ?? "application/dicom"}\r\n\r\n`));
    chunks.push(p.body);
    chunks.push(Buffer.from("\r\n"));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}
const CT = `multipart/related; type="application/dicom"; boundary=${BOUNDARY}`;

type Failed = { "00081197": { Value: number[] }; "00000902": { Value: string[] } };
const failures = (body: Record<string, { Value?: unknown[] }>) => (body["00081198"]?.Value ?? []) as Failed[];
const reasonOf = (body: Record<string, { Value?: unknown[] }>) => failures(body)[0]?.["00081197"].Value[0];
const sentenceOf = (body: Record<string, { Value?: unknown[] }>) => failures(body)[0]?.["00000902"].Value[0] ?? "";

/** Build a Part-10 file and then damage it. */
function withoutElement(bytes: Buffer, tagGroup: number, tagElement: number): Buffer {
  // find the explicit VR LE element header and zero its value (UI) so the UID is empty
  const needle = Buffer.alloc(4);
  needle.writeUInt16LE(tagGroup, 0);
  needle.writeUInt16LE(tagElement, 2);
  const at = bytes.indexOf(needle, 132);
  if (at < 0) throw new Error("tag not found");
  const copy = Buffer.from(bytes);
  const len = copy.readUInt16LE(at + 6);
  copy.fill(0x20, at + 8, at + 8 + len);
  return copy;
}

describe("bad input over raw HTTP", () => {
  let relay: TestRelay;
  const good = makeInstance({ rows: 16, columns: 16 });
  beforeAll(async () => {
    relay = await startTestRelay();
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  const stow = (body: Buffer, contentType = CT, urlPath = "/dicom-web/studies") =>
    request(relay.url).post(urlPath).set("Content-Type", contentType).set("Accept", "application/dicom+json").send(body);

  async function indexedCount(): Promise<number> {
    const res = await request(relay.url).get("/dicom-web/instances?includefield=00080018");
    return (res.body as unknown[]).length;
  }

  it("a JPEG or PDF sent as a study: 409, 0xC000 and a sentence asking for the DICOM export", async () => {
    const jpeg = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]), Buffer.from("JFIF\0"), crypto.randomBytes(500)]);
    const pdf = Buffer.from("%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n");
    for (const body of [jpeg, pdf]) {
      const res = await stow(multipart([{ body }]));
      expect(res.status).toBe(409);
      expect(reasonOf(res.body)).toBe(0xc000);
      // Error Comment is LO (64 characters); the whole sentence is in the Warning header (and the log)
      expect(sentenceOf(res.body)).toMatch(/not a DICOM file/i);
      expect(sentenceOf(res.body).length).toBeLessThanOrEqual(64);
      expect(res.headers.warning).toMatch(/not a DICOM file.*DICOM export/i);
    }
    expect(await indexedCount()).toBe(0);
  });

  it("a truncated file: 0xC000", async () => {
    const res = await stow(multipart([{ body: good.subarray(0, good.length - 100) }]));
    expect(res.status).toBe(409);
    expect(reasonOf(res.body)).toBe(0xc000);
    expect(sentenceOf(res.body)).toMatch(/truncated|ends before/i);
  });

  it("no DICM preamble and no parseable data set: 0xC000", async () => {
    const res = await stow(multipart([{ body: crypto.randomBytes(4096) }]));
    expect(res.status).toBe(409);
    expect(reasonOf(res.body)).toBe(0xc000);
  });

  it("missing or malformed UIDs and missing SOPClassUID: 0xA900", async () => {
    const cases = [
      withoutElement(makeInstance({ rows: 8, columns: 8 }), 0x0020, 0x000d),
      withoutElement(makeInstance({ rows: 8, columns: 8 }), 0x0020, 0x000e),
      makeInstance({ rows: 8, columns: 8, sopInstanceUID: "1.2.abc.4" }),
      makeInstance({ rows: 8, columns: 8, studyInstanceUID: "1.2." + "3".repeat(70) }),
      withoutElement(makeInstance({ rows: 8, columns: 8 }), 0x0008, 0x0016),
    ];
    for (const body of cases) {
      const res = await stow(multipart([{ body }]));
      expect(res.status).toBe(409);
      expect(reasonOf(res.body)).toBe(0xa900);
      expect(sentenceOf(res.body).length).toBeGreaterThan(10);
    }
    expect(await indexedCount()).toBe(0);
  });

  it("an unknown transfer syntax: 0xC122", async () => {
    const res = await stow(multipart([{ body: makeInstance({ rows: 8, columns: 8, transferSyntaxUID: "1.2.3.4.5.6.7" }) }]));
    expect(res.status).toBe(409);
    expect(reasonOf(res.body)).toBe(0xc122);
  });

  it("FailedSOPSequence items carry ReferencedSOPClassUID and ReferencedSOPInstanceUID whenever they could be read (issue 16)", async () => {
    const [a, b, d] = [newUid(), newUid(), newUid()];
    const truncated = makeInstance({ rows: 16, columns: 16, sopInstanceUID: d });
    const parts = [
      makeInstance({ rows: 8, columns: 8, sopInstanceUID: a, transferSyntaxUID: "1.2.3.4.5.6.7" }), // refused after the file meta
      makeInstance({ rows: 8, columns: 8, sopInstanceUID: b, studyInstanceUID: "1.2.abc" }), // after the data set's SOP UIDs
      makeInstance({ rows: 8, columns: 8, sopInstanceUID: "1.2.abc.4" }), // the instance UID itself is bad: class only
      truncated.subarray(0, truncated.length - 100), // the walk fails: the file meta's UIDs
      crypto.randomBytes(2048), // nothing readable: no UIDs
    ];
    const res = await stow(multipart(parts.map((body) => ({ body }))));
    expect(res.status).toBe(409);
    type Item = Record<string, { Value: unknown[] }>;
    const items = (res.body["00081198"]?.Value ?? []) as Item[];
    expect(items).toHaveLength(5);
    const sopOf = (i: Item) => i["00081155"]?.Value[0];
    expect(items.map(sopOf)).toEqual([a, b, undefined, d, undefined]);
    for (const i of items.slice(0, 4)) expect(i["00081150"]?.Value[0], JSON.stringify(i)).toMatch(/^1\.2\.840\.10008\.5\.1\.4\.1\.1\./);
    expect(items[4]!["00081150"]).toBeUndefined();
    expect(items.map((i) => i["00081197"]?.Value[0])).toEqual([0xc122, 0xa900, 0xa900, 0xc000, 0xc000]);
    expect(await indexedCount()).toBe(0);
  });

  it("an instance of another study than the one in the URL: refused, the rest stored (202)", async () => {
    const study = newUid();
    const mine = makeInstance({ rows: 8, columns: 8, studyInstanceUID: study });
    const other = makeInstance({ rows: 8, columns: 8 });
    const res = await stow(multipart([{ body: mine }, { body: other }]), CT, `/dicom-web/studies/${study}`);
    expect(res.status).toBe(202);
    expect(reasonOf(res.body)).toBe(0xa900);
    expect(sentenceOf(res.body)).toMatch(/belongs to study/);
    expect(res.body["00081199"].Value).toHaveLength(1);
  });

  it("wrong media type: 415; malformed multipart: 400; no parts: 400", async () => {
    expect((await stow(good, "application/dicom")).status).toBe(415);
    expect((await stow(good, 'multipart/related; type="image/jpeg"; boundary=x')).status).toBe(415);
    expect((await stow(good, 'multipart/related; type="application/dicom"')).status).toBe(400);
    const whole = multipart([{ body: good }]);
    // cut inside the part: no closing delimiter ever arrives
    const truncated = whole.subarray(0, whole.length - good.length / 2);
    const res = await stow(truncated);
    expect(res.status).toBe(400);
    expect(res.body.error).toMatch(/./);
    expect((await stow(Buffer.from(`--${BOUNDARY}--\r\n`))).status).toBe(400);
  });

  it("the same instance twice is stored once; different bytes under the same SOPInstanceUID are refused (0x0111), never overwritten", async () => {
    const sop = newUid();
    const study = newUid();
    const first = makeInstance({ rows: 8, columns: 8, sopInstanceUID: sop, studyInstanceUID: study, seriesDescription: "first" });
    const second = makeInstance({ rows: 8, columns: 8, sopInstanceUID: sop, studyInstanceUID: study, seriesDescription: "second" });
    expect((await stow(multipart([{ body: first }]))).status).toBe(200);
    const blobsBefore = countFiles(path.join(relay.dataDir, "blobs", "instances"));
    const again = await stow(multipart([{ body: first }]));
    expect(again.status).toBe(200);
    expect(countFiles(path.join(relay.dataDir, "blobs", "instances"))).toBe(blobsBefore);
    const conflict = await stow(multipart([{ body: second }]));
    expect(conflict.status).toBe(409);
    expect(reasonOf(conflict.body)).toBe(0x0111);
    expect(sentenceOf(conflict.body)).toMatch(/already stored/);
    expect(sentenceOf(conflict.body).length).toBeLessThanOrEqual(64);
    expect(conflict.headers.warning).toMatch(/different content/);
    const back = await request(relay.url).get(`/dicom-web/studies/${study}`).set("Accept", 'multipart/related; type="application/dicom"').buffer(true).parse((res, cb) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => cb(null, Buffer.concat(chunks)));
    });
    expect(back.status).toBe(200);
    expect((back.body as Buffer).includes(first)).toBe(true);
  });

  it("QIDO: an unknown attribute or bad date range is 400 with a sentence; XML is 406", async () => {
    const bad = await request(relay.url).get("/dicom-web/studies?NoSuchKeyword=1");
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatch(/NoSuchKeyword/);
    expect((await request(relay.url).get("/dicom-web/studies?StudyDate=2024-01-01")).status).toBe(400);
    expect((await request(relay.url).get("/dicom-web/studies").set("Accept", "application/dicom+xml")).status).toBe(406);
  });

  it("WADO: unknown UIDs 404, malformed UIDs 400, a transfer syntax the relay cannot produce 406, bad frame lists 400/404", async () => {
    const study = newUid();
    const series = newUid();
    const sop = newUid();
    await stow(multipart([{ body: makeInstance({ rows: 8, columns: 8, studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop }) }]));
    const base = `/dicom-web/studies/${study}/series/${series}/instances/${sop}`;
    expect((await request(relay.url).get(`/dicom-web/studies/${newUid()}`)).status).toBe(404);
    expect((await request(relay.url).get(`/dicom-web/studies/${newUid()}/metadata`)).status).toBe(404);
    expect((await request(relay.url).get(`/dicom-web/studies/..%2F..%2Fetc`)).status).toBe(400);
    const jp = await request(relay.url).get(base).set("Accept", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50');
    expect(jp.status).toBe(406);
    expect(jp.body.error).toMatch(/no encoder for JPEG Baseline/);
    expect((await request(relay.url).get(`${base}/frames/0`)).status).toBe(400);
    expect((await request(relay.url).get(`${base}/frames/1,x`)).status).toBe(400);
    expect((await request(relay.url).get(`${base}/frames/2`)).status).toBe(404);
    const jpegFrames = await request(relay.url).get(`${base}/frames/1`).set("Accept", 'multipart/related; type="image/jpeg"');
    expect(jpegFrames.status).toBe(406);
  });

  it("DELETE removes index rows and blobs", async () => {
    const study = newUid();
    const body = makeInstance({ rows: 8, columns: 8, studyInstanceUID: study });
    expect((await stow(multipart([{ body }]))).status).toBe(200);
    const blobs = countFiles(path.join(relay.dataDir, "blobs", "instances"));
    const del = await request(relay.url).delete(`/dicom-web/studies/${study}`);
    expect(del.status).toBe(200);
    expect(del.body.deletedInstances).toBe(1);
    expect(countFiles(path.join(relay.dataDir, "blobs", "instances"))).toBe(blobs - 1);
    expect((await request(relay.url).get(`/dicom-web/studies/${study}/metadata`)).status).toBe(404);
    expect((await request(relay.url).delete(`/dicom-web/studies/${study}`)).status).toBe(404);
  });

  it("health and readiness", async () => {
    expect((await request(relay.url).get("/healthz")).body).toEqual({ status: "ok" });
    const ready = await request(relay.url).get("/readyz");
    expect(ready.status).toBe(200);
    expect(ready.body.checks).toEqual({ index: "ok", storage: "ok" });
  });
});

function countFiles(dir: string): number {
  if (!fs.existsSync(dir)) return 0;
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    n += e.isDirectory() ? countFiles(path.join(dir, e.name)) : 1;
  }
  return n;
}

describe("frame lists and document headers (issue 15)", () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay({ dicomweb: { maxFramesPerRequest: 5 } });
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("a frame asked for many times is sent once; more distinct frames than dicomweb.maxFramesPerRequest is 400 with a sentence", async () => {
    const study = newUid();
    const series = newUid();
    const sop = newUid();
    const bytes = makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, rows: 8, columns: 8 });
    const body = Buffer.concat([Buffer.from(`--${BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n`), bytes, Buffer.from(`\r\n--${BOUNDARY}--\r\n`)]);
    const stored = await fetch(`${relay.dicomwebUrl}/studies`, { method: "POST", headers: { "Content-Type": `multipart/related; type="application/dicom"; boundary=${BOUNDARY}` }, body: new Uint8Array(body) });
    expect(stored.status).toBe(200);
    const base = `${relay.dicomwebUrl}/studies/${study}/series/${series}/instances/${sop}/frames`;
    const accept = { Accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=*' };
    const once = await (await fetch(`${base}/1`, { headers: accept })).arrayBuffer();
    const repeated = await fetch(`${base}/${Array(2000).fill("1").join(",")}`, { headers: accept });
    expect(repeated.status).toBe(200);
    // one part, not 2,000 (boundaries differ in length at most a little)
    expect(Math.abs((await repeated.arrayBuffer()).byteLength - once.byteLength)).toBeLessThan(200);
    const many = await fetch(`${base}/1,2,3,4,5,6`, { headers: accept });
    expect(many.status).toBe(400);
    expect(((await many.json()) as { error: string }).error).toMatch(/at most 5 .*dicomweb\.maxFramesPerRequest/);
  });

  it("X-Document-Title with bad percent-encoding is 400, not 500", async () => {
    const res = await fetch(`${relay.url}/api/studies/1.2.3/documents?kind=radiology-report&language=en`, { method: "POST", headers: { "X-Document-Title": "%ZZ", "Content-Type": "application/pdf" }, body: "%PDF-1.4" });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(/X-Document-Title .*percent-encoding/);
  });
});
