import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync, spawnSync } from "node:child_process";
import http from "node:http";
import { Readable } from "node:stream";
import zlib from "node:zlib";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";

// the odd-length case (DICOM pads odd values) is checked in its own test below
const pdf = Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n\n");
const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x10, 0x00, 0x18, 0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);

describe("documents attached to a study", () => {
  let relay: TestRelay;
  const study = newUid();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "docs-test-"));
  const post = (body: Buffer, q: Record<string, string>, s = study) =>
    fetch(`${relay.url}/api/studies/${s}/documents?${new URLSearchParams(q)}`, { method: "POST", body: new Uint8Array(body), headers: { "content-type": "application/octet-stream" } });
  /** The stored instance as a Part-10 file, read back by WADO-RS. */
  const part10File = async (series: string, sop: string, name: string) => {
    const res = await fetch(`${relay.dicomwebUrl}/studies/${study}/series/${series}/instances/${sop}`, { headers: { accept: 'multipart/related; type="application/dicom"' } });
    const raw = Buffer.from(await res.arrayBuffer());
    const file = path.join(tmp, name);
    fs.writeFileSync(file, raw.subarray(raw.indexOf("DICM") - 128, raw.lastIndexOf(Buffer.from("\r\n--"))));
    return file;
  };
  /**
   * dicom3tools' IOD checker: the lines it calls errors. For Secondary Capture it asks for Laterality (Type 2C, "if
   * the body part is paired"), a condition it cannot evaluate: a report is no body part, so the relay leaves it out.
   */
  const iodErrors = (file: string) => {
    const out = spawnSync("dciodvfy", [file], { encoding: "utf8" });
    return (out.stdout + out.stderr).split("\n").filter((l) => /^Error/.test(l) && !/Type 2C Conditional Element=<Laterality>/.test(l));
  };
  const count = async () => ((await (await fetch(`${relay.dicomwebUrl}/studies/${study}/instances`)).json()) as unknown[]).length;

  beforeAll(async () => {
    // the test PDF is tiny: a low threshold makes it bulk data, as any real PDF (>1 KiB) is
    relay = await startTestRelay({ ingest: { bulkDataThreshold: 16 } });
    const inst = makeInstance({ studyInstanceUID: study, patientName: "Zhang^San=张^三", patientID: "CN-0001", charset: "GB18030", rows: 8, columns: 8 });
    const res = await fetch(`${relay.dicomwebUrl}/studies`, {
      method: "POST", body: new Uint8Array(Buffer.concat([Buffer.from("--b\r\nContent-Type: application/dicom\r\n\r\n"), inst, Buffer.from("\r\n--b--\r\n")])),
      headers: { "content-type": 'multipart/related; type="application/dicom"; boundary=b' },
    });
    expect(res.status).toBe(200);
  });
  afterAll(async () => { await relay?.dispose(); fs.rmSync(tmp, { recursive: true, force: true }); });

  it("wraps a PDF, stores it once, finds it by QIDO and returns it byte-identical", async () => {
    const r1 = await post(pdf, { kind: "pathology-report", title: "病理报告", language: "zh" });
    expect(r1.status).toBe(201);
    const b1 = (await r1.json()) as { status: string; sopInstanceUID: string; seriesInstanceUID: string };
    expect(b1.status).toBe("stored");
    // the wrapper carries the time it was made: attach again in a later second, still the same instance
    await new Promise((r) => setTimeout(r, 1100));
    const r2 = await post(pdf, { kind: "pathology-report", title: "病理报告", language: "zh" });
    expect(r2.status).toBe(200);
    expect((await r2.json()) as { status: string; sopInstanceUID: string }).toMatchObject({ status: "already-stored", sopInstanceUID: b1.sopInstanceUID });

    const q = (await (await fetch(`${relay.dicomwebUrl}/instances?Modality=DOC&SOPClassUID=1.2.840.10008.5.1.4.1.1.104.1`)).json()) as Record<string, { Value: string[] }>[];
    expect(q.map((d) => d["00080018"]!.Value[0])).toEqual([b1.sopInstanceUID]);

    const base = `${relay.dicomwebUrl}/studies/${study}/series/${b1.seriesInstanceUID}/instances/${b1.sopInstanceUID}`;
    const bulk = await fetch(`${base}/bulkdata/00420011`, { headers: { accept: "application/pdf" } });
    expect(bulk.status).toBe(200);
    expect(bulk.headers.get("content-type")).toMatch(/^application\/pdf/);
    expect(Buffer.from(await bulk.arrayBuffer()).equals(pdf)).toBe(true);

    const md = (await (await fetch(`${base}/metadata`)).json()) as Record<string, { Value?: unknown[] }>[];
    expect(md[0]!["00420010"]!.Value).toEqual(["病理报告"]);
    expect((md[0]!["00100010"]!.Value![0] as { Ideographic: string }).Ideographic).toBe("张^三");

    const file = await part10File(b1.seriesInstanceUID, b1.sopInstanceUID, "doc.dcm");
    execFileSync("dcm2pdf", [file, path.join(tmp, "out.pdf")]);
    expect(fs.readFileSync(path.join(tmp, "out.pdf")).equals(pdf)).toBe(true);
    const dump = spawnSync("dcmdump", [file], { encoding: "utf8" });
    expect(dump.status).toBe(0);
    expect(dump.stderr + dump.stdout).not.toMatch(/error|warning/i);
    expect(dump.stdout).toContain("病理报告");
    // the Encapsulated PDF IOD: every Type 1 and Type 2 attribute there (empty where the study has no value)
    expect(iodErrors(file)).toEqual([]);
  });

  it("links a translation to its original and reports completeness", async () => {
    const orig = (await (await post(Buffer.concat([pdf, Buffer.from("% radiology\n\n")]), { kind: "radiology-report", title: "放射报告", language: "zh" })).json()) as { sopInstanceUID: string };
    const en = Buffer.concat([pdf, Buffer.from("% translation\n")]);
    const tr = await post(en, { kind: "radiology-report", title: "Radiology report", language: "en", translationOf: orig.sopInstanceUID });
    expect(tr.status).toBe(201);
    const list = (await (await fetch(`${relay.url}/api/studies/${study}/documents`)).json()) as { documents: { kind: string; language: string; original: boolean; translationOf?: string }[] };
    const t = list.documents.find((d) => d.language === "en")!;
    expect(t).toMatchObject({ kind: "radiology-report", original: false, translationOf: orig.sopInstanceUID });
    // the link is Source Instance Sequence (0042,0013): the translation is derived from the original
    const trBody = (await tr.json()) as { sopInstanceUID: string; seriesInstanceUID: string };
    const trFile = await part10File(trBody.seriesInstanceUID, trBody.sopInstanceUID, "translation.dcm");
    expect(spawnSync("dcmdump", [trFile], { encoding: "utf8" }).stdout).toMatch(new RegExp(`\\(0042,0013\\) SQ[\\s\\S]*\\(0008,1155\\) UI \\[${orig.sopInstanceUID.replace(/\./g, "\\.")}\\]`));
    expect(iodErrors(trFile)).toEqual([]);
    expect(list.documents.filter((d) => d.kind === "radiology-report" && d.original)).toHaveLength(1);
    const c = (await (await fetch(`${relay.url}/api/studies/${study}/completeness`)).json()) as { present: string[]; missing: string[] };
    expect(c.present.sort()).toEqual(["pathology-report", "radiology-report"]);
    expect(c.missing).toContain("discharge-summary");
  });

  it("wraps a JPEG photo as Secondary Capture, Modality OT", async () => {
    const r = await post(jpeg, { kind: "lab-results", title: "化验单", language: "zh" });
    expect(r.status).toBe(201);
    const q = (await (await fetch(`${relay.dicomwebUrl}/instances?Modality=OT&SOPClassUID=1.2.840.10008.5.1.4.1.1.7`)).json()) as unknown[];
    expect(q).toHaveLength(1);
    const b = (await r.json()) as { sopInstanceUID: string; seriesInstanceUID: string };
    expect(iodErrors(await part10File(b.seriesInstanceUID, b.sopInstanceUID, "jpeg.dcm"))).toEqual([]);
  });

  it("refuses bad input with a sentence and stores nothing", async () => {
    const before = await count();
    const cases: [Buffer, Record<string, string>, number, RegExp, string?][] = [
      [Buffer.from("just text named report.pdf"), { kind: "other", title: "x", language: "en" }, 422, /not a PDF, JPEG or PNG/],
      [Buffer.from("%PDF-1.4\ntrailer<</Encrypt 5 0 R>>\n%%EOF\n"), { kind: "other", title: "x", language: "en" }, 422, /encrypted/],
      [Buffer.from("%PDF-1.4\n1 0 obj<<>>"), { kind: "other", title: "x", language: "en" }, 422, /broken/],
      [pdf, { kind: "horoscope", title: "x", language: "en" }, 400, /kind must be/],
      [pdf, { kind: "other", title: "x", language: "en" }, 404, /not on this relay/, newUid()],
      [Buffer.alloc(101 * 1024 * 1024, 0x20), { kind: "other", title: "x", language: "en" }, 413, /larger than/],
    ];
    for (const [body, q, status, msg, s] of cases) {
      const r = await post(body, q, s);
      expect(r.status).toBe(status);
      expect(JSON.stringify(await r.json())).toMatch(msg);
    }
    expect(await count()).toBe(before);
  });

  it("a body sent without Content-Length that passes the limit is answered 413 with a sentence, and leaves no spool file", async () => {
    const spoolDir = path.join(relay.dataDir, "tmp");
    const limit = relay.config.ingest.maxDocumentBytes;
    // chunked: the relay learns the size only while reading; 1 MiB pieces up to past the limit
    const piece = Buffer.alloc(1 << 20, 0x20);
    piece.write("%PDF-1.4\n");
    const body = Readable.from((function* () { for (let sent = 0; sent <= limit + (1 << 20); sent += piece.length) yield piece; })());
    const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const u = new URL(`${relay.url}/api/studies/${study}/documents?kind=other&title=big&language=en`);
      const rq = http.request(u, { method: "POST", headers: { "content-type": "application/pdf" } }, (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c) => (text += c)).on("end", () => resolve({ status: res.statusCode!, text }));
      });
      rq.on("error", reject);
      body.pipe(rq);
    });
    expect(answer.status).toBe(413);
    expect(answer.text).toMatch(/larger than the relay accepts for documents/);
    expect(fs.readdirSync(spoolDir).filter((f) => f.includes("document") || f.includes("pixels"))).toEqual([]);
  });

  it("a declared length over the limit: the whole body sent, the sender reads the 413 and its connection carries the next request", async () => {
    const limit = relay.config.ingest.maxDocumentBytes;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const sockets = new Set<unknown>();
    const call = (method: string, p: string, body?: Buffer) => new Promise<{ status: number; text: string }>((resolve, reject) => {
      const rq = http.request(new URL(`${relay.url}${p}`), { method, agent, headers: body ? { "content-type": "application/pdf", "content-length": String(body.length) } : {} }, (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c) => (text += c)).on("end", () => resolve({ status: res.statusCode!, text }));
      });
      rq.on("socket", (s) => sockets.add(s));
      rq.on("error", reject);
      rq.end(body);
    });
    try {
      // a few MiB over: without reading the rest the relay's close would reset the sender mid-write (seen as ECONNRESET)
      const big = Buffer.alloc(limit + 4 * (1 << 20), 0x20);
      big.write("%PDF-1.4\n");
      for (let i = 0; i < 2; i++) {
        const r = await call("POST", `/api/studies/${study}/documents?kind=other&title=big&language=en`, big);
        expect(r.status).toBe(413);
        expect(r.text).toMatch(/larger than the relay accepts for documents/);
      }
      const list = await call("GET", `/api/studies/${study}/documents`);
      expect(list.status).toBe(200);
      expect(sockets.size).toBe(1);
    } finally {
      agent.destroy();
    }
  });

  it("a PNG photo becomes a Secondary Capture in its own series that dcmdump reads; a translation must name a document", async () => {
    // 3 x 2 RGB, rows unfiltered
    const rows = [Buffer.from([0, 255, 0, 0, 0, 255, 0, 0, 0, 255]), Buffer.from([0, 9, 9, 9, 8, 8, 8, 7, 7, 7])];
    const chunk = (type: string, data: Buffer) => {
      const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
      return Buffer.concat([len, Buffer.from(type, "latin1"), data, Buffer.alloc(4)]);
    };
    const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(3); ihdr.writeUInt32BE(2, 4); ihdr[8] = 8; ihdr[9] = 2;
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(Buffer.concat(rows))), chunk("IEND", Buffer.alloc(0))]);
    const r = await post(png, { kind: "lab-results", title: "化验单", language: "zh" });
    expect(r.status).toBe(201);
    const b = (await r.json()) as { sopInstanceUID: string; seriesInstanceUID: string; contentType: string };
    expect(b.contentType).toBe("image/png");
    const pdfOfKind = (await (await post(pdf, { kind: "lab-results", title: "Lab results", language: "en" })).json()) as { seriesInstanceUID: string };
    // one modality per series: the photo (OT) and the PDF (DOC) of one kind are two series
    expect(pdfOfKind.seriesInstanceUID).not.toBe(b.seriesInstanceUID);
    const file = await part10File(b.seriesInstanceUID, b.sopInstanceUID, "photo.dcm");
    expect(iodErrors(file)).toEqual([]);
    const dump = spawnSync("dcmdump", ["+L", file], { encoding: "utf8" });
    expect(dump.status, dump.stderr).toBe(0);
    expect(dump.stderr).not.toMatch(/error|warn/i);
    expect(dump.stdout).toMatch(/\(0008,0016\) UI =SecondaryCaptureImageStorage/);
    expect(dump.stdout).toMatch(/\(0028,0004\) CS \[RGB\]/);
    expect(dump.stdout).toMatch(/\(0008,0005\) CS \[ISO_IR 192\]/);
    expect(dump.stdout).toMatch(/\(0008,0100\) SH \[11502-2\]/);
    expect(dump.stdout.split("\n").find((l) => l.startsWith("(7fe0,0010)"))).toMatch(/\(7fe0,0010\) OB ff\\00\\00\\00\\ff\\00\\00\\00\\ff\\09\\09\\09\\08\\08\\08\\07\\07\\07/);
    // the images of the study are not documents: a translation cannot name one
    const series = (await (await fetch(`${relay.dicomwebUrl}/studies/${study}/series`)).json()) as Record<string, { Value: (string | number)[] }>[];
    const imageSeries = series.find((x) => Number(x["00200011"]?.Value[0]) < 9000)!;
    const image = ((await (await fetch(`${relay.dicomwebUrl}/studies/${study}/series/${imageSeries["0020000E"]!.Value[0]}/instances`)).json()) as Record<string, { Value: string[] }>[])[0]!;
    const wrong = await post(pdf, { kind: "other", title: "x", language: "en", translationOf: image["00080018"]!.Value[0]! });
    expect(wrong.status).toBe(404);
    expect(((await wrong.json()) as { error: string }).error).toMatch(/is not a document of study/);
  });

  it("returns an odd-length PDF without DICOM's pad byte (trimmed to EncapsulatedDocumentLength)", async () => {
    const odd = Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n");
    expect(odd.length % 2).toBe(1);
    const r = await post(odd, { kind: "discharge-summary", title: "Discharge summary", language: "en" });
    expect(r.status).toBe(201);
    const b = (await r.json()) as { sopInstanceUID: string; seriesInstanceUID: string };
    const url = `${relay.dicomwebUrl}/studies/${study}/series/${b.seriesInstanceUID}/instances/${b.sopInstanceUID}/bulkdata/00420011`;
    const bulk = await fetch(url, { headers: { accept: "application/pdf" } });
    expect(bulk.status).toBe(200);
    expect(Buffer.from(await bulk.arrayBuffer()).equals(odd)).toBe(true);
  });

});
