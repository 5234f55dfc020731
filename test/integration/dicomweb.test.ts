/**
 * The core user story with a real client: store a study with STOW-RS, find it with QIDO-RS, pull it
 * back with WADO-RS byte for byte (dicomweb-client over loopback against the real server, real disk + SQLite).
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import http from "node:http";
import { parseMultipartRelatedContentType, readMultipartParts } from "../../src/dicom/multipart.ts";
import { dicomwebClient, type DicomwebClient } from "../support/dicomwebClient.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { generateStudy, makeInstance, newUid, tagOf, type WriterElement } from "../../scripts/lib/synthetic.ts";
import { H31_YAMADA, handMade, minimalElements } from "../support/fixtures.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");
const value = (ds: Record<string, { Value?: unknown[] }>, tag: string) => ds[tag]?.Value?.[0];

describe("DICOMweb round trip with dicomweb-client", () => {
  let relay: TestRelay;
  let client: DicomwebClient;
  const studyUID = newUid();
  const ct = [...generateStudy({ instances: 12, seriesCount: 2, rows: 64, columns: 64, modality: "CT", studyInstanceUID: studyUID, patientName: "Zhang^San=张^三", patientID: "CN-0001", charset: "GB18030", studyDate: "20240315", accessionNumber: "ACC-77" })];
  const mrStudyUID = newUid();
  const mr = [...generateStudy({ instances: 3, seriesCount: 1, rows: 32, columns: 32, modality: "MR", studyInstanceUID: mrStudyUID, patientName: "Smith^John", patientID: "UK-42", charset: "ISO_IR 100", studyDate: "20230102" })];

  beforeAll(async () => {
    relay = await startTestRelay();
    client = dicomwebClient(relay.dicomwebUrl);
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("stores a study with STOW-RS (dicomweb-client storeInstances)", async () => {
    await client.storeInstances({ datasets: ct.map((i) => toArrayBuffer(i.bytes)) });
    await client.storeInstances({ datasets: mr.map((i) => toArrayBuffer(i.bytes)), studyInstanceUID: mrStudyUID });
  });

  it("finds studies with QIDO-RS: computed attributes and Chinese names decoded from GB18030", async () => {
    const studies = await client.searchForStudies({ queryParams: { PatientID: "CN-0001" } });
    expect(studies).toHaveLength(1);
    const s = studies[0]!;
    expect(value(s, "0020000D")).toBe(studyUID);
    expect(value(s, "00201206")).toBe(2); // NumberOfStudyRelatedSeries
    expect(value(s, "00201208")).toBe(12); // NumberOfStudyRelatedInstances
    expect(s["00080061"]?.Value).toEqual(["CT"]); // ModalitiesInStudy
    expect(value(s, "00100010")).toEqual({ Alphabetic: "Zhang^San", Ideographic: "张^三" });
    expect(String(value(s, "00081190"))).toBe(`${relay.dicomwebUrl}/studies/${studyUID}`);
  });

  it("matches either name group, wildcards, date ranges, UID lists and ModalitiesInStudy", async () => {
    const uidsOf = async (q: Record<string, unknown>) =>
      (await client.searchForStudies({ queryParams: q })).map((s) => value(s, "0020000D")).sort();
    expect(await uidsOf({ PatientName: "张^三" })).toEqual([studyUID]);
    expect(await uidsOf({ PatientName: "zhang*" })).toEqual([studyUID]);
    expect(await uidsOf({ PatientName: "Sm?th*" })).toEqual([mrStudyUID]);
    expect(await uidsOf({ StudyDate: "20240101-20241231" })).toEqual([studyUID]);
    expect(await uidsOf({ StudyDate: "-20231231" })).toEqual([mrStudyUID]);
    expect(await uidsOf({ StudyInstanceUID: `${studyUID},${mrStudyUID}` })).toEqual([studyUID, mrStudyUID].sort());
    expect(await uidsOf({ ModalitiesInStudy: "MR" })).toEqual([mrStudyUID]);
    expect(await uidsOf({ AccessionNumber: "ACC-77" })).toEqual([studyUID]);
    expect(await uidsOf({ PatientID: "nobody" })).toEqual([]);
    expect(await client.searchForStudies({ queryParams: { limit: 1 } })).toHaveLength(1);
  });

  it("lists series and instances of a study", async () => {
    const series = await client.searchForSeries({ studyInstanceUID: studyUID });
    expect(series).toHaveLength(2);
    expect(series.every((s) => value(s, "00080060") === "CT")).toBe(true);
    const seriesUID = String(value(series[0]!, "0020000E"));
    const instances = await client.searchForInstances({ studyInstanceUID: studyUID, seriesInstanceUID: seriesUID });
    const expected = ct.filter((i) => i.seriesInstanceUID === seriesUID).map((i) => i.sopInstanceUID).sort();
    expect(instances.map((i) => value(i, "00080018")).sort()).toEqual(expected);
    const all = await client.searchForInstances({ studyInstanceUID: studyUID });
    expect(all).toHaveLength(12);
  });

  it("retrieves the study with WADO-RS byte for byte", async () => {
    const parts = await client.retrieveStudy({ studyInstanceUID: studyUID });
    expect(parts).toHaveLength(12);
    expect(parts.map(sha).sort()).toEqual(ct.map((i) => sha(i.bytes)).sort());
    const one = ct[3]!;
    const inst = await client.retrieveInstance({ studyInstanceUID: studyUID, seriesInstanceUID: one.seriesInstanceUID, sopInstanceUID: one.sopInstanceUID });
    expect(sha(inst)).toBe(sha(one.bytes));
  });

  it("returns study metadata from the index with resolvable bulk data URIs", async () => {
    const meta = await client.retrieveStudyMetadata({ studyInstanceUID: studyUID });
    expect(meta).toHaveLength(12);
    const m = meta.find((x) => value(x, "00080018") === ct[0]!.sopInstanceUID)!;
    expect(value(m, "00280010")).toBe(64);
    const pixel = m["7FE00010"] as { BulkDataURI?: string };
    expect(pixel.BulkDataURI).toMatch(new RegExp(`^${relay.dicomwebUrl}/studies/${studyUID}/series/.+/bulkdata/7FE00010$`));
    const [bulk] = await client.retrieveBulkData({ BulkDataURI: pixel.BulkDataURI! });
    expect(Buffer.from(bulk!).length).toBe(64 * 64 * 2);
  });

  it("retrieves frames of native pixel data that match the stored pixel bytes", async () => {
    const one = ct[0]!;
    const frames = await client.retrieveInstanceFrames({ studyInstanceUID: studyUID, seriesInstanceUID: one.seriesInstanceUID, sopInstanceUID: one.sopInstanceUID, frameNumbers: [1] });
    expect(frames).toHaveLength(1);
    const frame = Buffer.from(frames[0]!);
    expect(frame.length).toBe(64 * 64 * 2);
    // the frame is the tail of the file: native pixel data is the last element in these instances
    expect(one.bytes.includes(frame)).toBe(true);
  });

  it("serves each frame of a multi-frame RLE (encapsulated) instance by ranged reads", async () => {
    const sop = newUid();
    const series = newUid();
    const bytes = makeInstance({ studyInstanceUID: studyUID, seriesInstanceUID: series, sopInstanceUID: sop, rows: 32, columns: 32, frames: 3, transferSyntaxUID: "1.2.840.10008.1.2.5", modality: "CT" });
    await client.storeInstances({ datasets: [toArrayBuffer(bytes)] });
    const frames = await client.retrieveInstanceFrames({
      studyInstanceUID: studyUID, seriesInstanceUID: series, sopInstanceUID: sop, frameNumbers: [1, 3],
      mediaTypes: [{ mediaType: "application/octet-stream", transferSyntaxUID: "*" }],
    });
    expect(frames).toHaveLength(2);
    for (const f of frames) {
      const b = Buffer.from(f);
      expect(b.length).toBeGreaterThan(64); // RLE header is 64 bytes
      expect(b.readUInt32LE(0)).toBeGreaterThan(0); // number of RLE segments
      expect(bytes.includes(b)).toBe(true);
    }
    expect(Buffer.from(frames[0]!).equals(Buffer.from(frames[1]!))).toBe(false);
  });

  it("keeps half-width katakana (ISO 2022 IR 13 \\ IR 87) decoded inside sequence items: STOW-RS, then QIDO-RS and /metadata", async () => {
    const study = newUid(), series = newUid();
    const yamada = { Alphabetic: "ﾔﾏﾀﾞ^ﾀﾛｳ", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう" };
    const ir13: WriterElement = { tag: tagOf(0x0008, 0x0005), vr: "CS", value: ["ISO 2022 IR 13", "ISO 2022 IR 87"] };
    const pn: WriterElement = { tag: tagOf(0x0010, 0x0010), vr: "PN", value: H31_YAMADA };
    const sh: WriterElement = { tag: tagOf(0x0040, 0x1001), vr: "SH", value: Buffer.from("d4cfc0de", "hex") }; // ﾔﾏﾀﾞ
    // the data set in IR 13 \ IR 87 (an item, an item of an item); and one without, whose item has its own
    const inDataSet = handMade([ir13, ...minimalElements({ study, series }), pn,
      { tag: tagOf(0x0040, 0x0275), vr: "SQ", value: [[sh, { tag: tagOf(0x0008, 0x1110), vr: "SQ", value: [[pn]] }]] }]);
    const ownSop = newUid();
    const inItem = handMade([...minimalElements({ study, series, sop: ownSop }), { tag: tagOf(0x0008, 0x1120), vr: "SQ", value: [[ir13, pn]] }]);
    await client.storeInstances({ datasets: [toArrayBuffer(inDataSet), toArrayBuffer(inItem)], studyInstanceUID: study });

    const found = await client.searchForStudies({ queryParams: { StudyInstanceUID: study } });
    expect(value(found[0]!, "00100010")).toEqual(yamada);
    const meta = await client.retrieveStudyMetadata({ studyInstanceUID: study });
    expect(meta).toHaveLength(2);
    type Ds = Record<string, { vr: string; Value?: unknown[] }>;
    const a = meta.find((m) => value(m, "00080018") !== ownSop)! as Ds;
    const req = a["00400275"]!.Value![0] as Ds;
    expect(req["00401001"]).toEqual({ vr: "SH", Value: ["ﾔﾏﾀﾞ"] });
    expect((req["00081110"]!.Value![0] as Ds)["00100010"]).toEqual({ vr: "PN", Value: [yamada] });
    const b = meta.find((m) => value(m, "00080018") === ownSop)! as Ds;
    expect(b["00080005"]).toBeUndefined();
    expect(b["00081120"]!.Value![0]).toEqual({ "00080005": { vr: "CS", Value: ["ISO 2022 IR 13", "ISO 2022 IR 87"] }, "00100010": { vr: "PN", Value: [yamada] } });
    expect(JSON.stringify(meta)).not.toContain("\ufffd");
  });
});

describe("WADO-RS retrieves at once share the relay's read memory, each byte for byte", () => {
  let relay: TestRelay;
  const studyUID = newUid();
  // three sizes of instance (8 kB, 131 kB, 525 kB): read memory is kept by size and read into again
  const instances = [
    ...generateStudy({ instances: 16, seriesCount: 1, rows: 64, columns: 64, modality: "MR", studyInstanceUID: studyUID, seed: 81 }),
    ...generateStudy({ instances: 16, seriesCount: 1, rows: 256, columns: 256, modality: "CT", studyInstanceUID: studyUID, seed: 82 }),
    ...generateStudy({ instances: 16, seriesCount: 1, rows: 512, columns: 512, modality: "CT", studyInstanceUID: studyUID, seed: 83 }),
  ];
  const expected = instances.map((i) => sha(i.bytes)).sort();

  beforeAll(async () => {
    relay = await startTestRelay();
    await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: instances.map((i) => toArrayBuffer(i.bytes)) });
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  /** a retrieve read over raw HTTP, the response left unread for `stallMs` first (a slow home PACS) */
  async function slowRetrieve(stallMs: number): Promise<string[]> {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
      http.get(`${relay.dicomwebUrl}/studies/${studyUID}`, { headers: { Accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' } }, resolve).on("error", reject),
    );
    expect(res.statusCode).toBe(200);
    res.pause();
    await new Promise((resolve) => setTimeout(resolve, stallMs));
    const boundary = parseMultipartRelatedContentType(String(res.headers["content-type"])).boundary;
    const out: string[] = [];
    for await (const part of readMultipartParts(res, boundary)) {
      const h = crypto.createHash("sha256");
      for await (const c of part.body) h.update(c as Buffer);
      out.push(h.digest("hex"));
    }
    return out.sort();
  }

  it("five retrieves of a 48-instance study at once (one of them stalled), then five more: every part is its own instance's bytes", async () => {
    const client = dicomwebClient(relay.dicomwebUrl);
    for (let round = 0; round < 2; round++) {
      const got = await Promise.all([
        ...[0, 1, 2, 3].map(() => client.retrieveStudy({ studyInstanceUID: studyUID }).then((parts) => parts.map(sha).sort())),
        slowRetrieve(400),
      ]);
      for (const parts of got) expect(parts).toEqual(expected);
    }
  }, 60_000);
});

describe("frame media types over raw HTTP", () => {
  it("an RLE instance's frames come as image/dicom-rle, also when asked by the legacy name, decoded for application/octet-stream", async () => {
    const { default: request } = await import("supertest");
    const relay = await startTestRelay();
    try {
      const study = newUid(), series = newUid(), sop = newUid();
      const bytes = makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, rows: 16, columns: 16, frames: 2, transferSyntaxUID: "1.2.840.10008.1.2.5" });
      await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: [toArrayBuffer(bytes)] });
      const url = `/dicom-web/studies/${study}/series/${series}/instances/${sop}/frames/2`;
      for (const accept of ['multipart/related; type="image/dicom-rle"', 'multipart/related; type="image/x-dicom-rle"']) {
        const res = await request(relay.url).get(url).set("Accept", accept);
        expect(res.status).toBe(200);
        expect(res.headers["content-type"]).toMatch(/type="image\/dicom-rle"/);
      }
      // application/octet-stream without a transfer syntax is Explicit VR Little Endian: the frame decoded
      const plain = await request(relay.url).get(url).set("Accept", 'multipart/related; type="application/octet-stream"').buffer(true)
        .parse((r, cb) => { const b: Buffer[] = []; r.on("data", (d: Buffer) => b.push(d)); r.on("end", () => cb(null, Buffer.concat(b))); });
      expect(plain.status).toBe(200);
      expect(plain.headers["content-type"]).toMatch(/type="application\/octet-stream"/);
      expect((plain.body as Buffer).includes(Buffer.from("transfer-syntax=1.2.840.10008.1.2.1\r\n"))).toBe(true);
      // a big endian stored instance cannot be decoded here: 406 with a sentence
      const bigSop = newUid();
      await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: [toArrayBuffer(makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: bigSop, rows: 16, columns: 16, transferSyntaxUID: "1.2.840.10008.1.2.2" }))] });
      const big = await request(relay.url).get(`/dicom-web/studies/${study}/series/${series}/instances/${bigSop}/frames/1`).set("Accept", 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1');
      expect(big.status).toBe(406);
      expect(big.body.error).toMatch(/no decoder for Explicit VR Big Endian/);
    } finally {
      await relay.dispose();
    }
  });
});
