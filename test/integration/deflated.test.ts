/**
 * Deflated Explicit VR Little Endian with pixel data (issue 16): pydicom's image_dfl.dcm is stored by STOW-RS byte
 * for byte, its metadata is what pydicom reads, and its frame (served by inflating, not by a byte range of the
 * stored file) is pydicom's PixelData. A synthetic multi-frame deflated instance checks frames asked out of order.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import { dicomwebClient, type DicomwebClient } from "../support/dicomwebClient.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { PYDICOM_TEST_FILES, pydicomRead, toArrayBuffer } from "../support/pydicom.ts";
import zlib from "node:zlib";
import { makeInstance, newUid, tagOf } from "../../scripts/lib/synthetic.ts";
import { handMade, minimalElements, parse } from "../support/fixtures.ts";

const FILE = `${PYDICOM_TEST_FILES}/image_dfl.dcm`;
const DEFLATED = "1.2.840.10008.1.2.1.99";
const ELE = "1.2.840.10008.1.2.1";

interface Oracle { sop: string; study: string; series: string; sopClass: string; rows: number; columns: number; bits: number; photometric: string; comments: string; pixels: string }

/** What pydicom reads from the file. */
const pydicomOracle = () =>
  pydicomRead<Oracle>(FILE, `{"sop": d.SOPInstanceUID, "study": d.StudyInstanceUID, "series": d.SeriesInstanceUID, "sopClass": d.SOPClassUID, "rows": d.Rows, "columns": d.Columns, "bits": d.BitsAllocated, "photometric": d.PhotometricInterpretation, "comments": d.ImageComments, "pixels": base64.b64encode(d.PixelData).decode()}`);

let relay: TestRelay;
let client: DicomwebClient;
let oracle: Oracle;

beforeAll(async () => {
  oracle = await pydicomOracle();
  relay = await startTestRelay();
  client = dicomwebClient(relay.dicomwebUrl);
}, 60_000);
afterAll(async () => {
  await relay?.dispose();
});

describe("Deflated Explicit VR Little Endian with pixel data", () => {
  it("pydicom's image_dfl.dcm: stored byte for byte, metadata and frame as pydicom reads them", async () => {
    const file = fs.readFileSync(FILE);
    await client.storeInstances({ datasets: [toArrayBuffer(file)] });
    const ids = { studyInstanceUID: oracle.study, seriesInstanceUID: oracle.series, sopInstanceUID: oracle.sop };

    const back = Buffer.from(await client.retrieveInstance(ids));
    expect(back.equals(file)).toBe(true);

    const [meta] = (await client.retrieveInstanceMetadata(ids)) as Array<Record<string, { Value?: unknown[]; BulkDataURI?: string }>>;
    expect(meta!["00080016"]!.Value).toEqual([oracle.sopClass]);
    expect(meta!["00280010"]!.Value).toEqual([oracle.rows]);
    expect(meta!["00280011"]!.Value).toEqual([oracle.columns]);
    expect(meta!["00280100"]!.Value).toEqual([oracle.bits]);
    expect(meta!["00280004"]!.Value).toEqual([oracle.photometric]);
    expect(meta!["00204000"]!.Value).toEqual([oracle.comments]);
    expect(meta!["7FE00010"]!.BulkDataURI).toMatch(/\/bulkdata\/7FE00010$/);

    const pixels = Buffer.from(oracle.pixels, "base64");
    expect(pixels.length).toBe(oracle.rows * oracle.columns);
    // dicomweb-client asks for application/octet-stream: native pixels, Explicit VR Little Endian
    const [frame] = await client.retrieveInstanceFrames({ ...ids, frameNumbers: [1] });
    expect(Buffer.from(frame!).equals(pixels)).toBe(true);
    // the bulk data of the pixel data is the same bytes
    const [bulk] = await client.retrieveBulkData({ BulkDataURI: meta!["7FE00010"]!.BulkDataURI! });
    expect(Buffer.from(bulk!).equals(pixels)).toBe(true);

    const url = `${relay.dicomwebUrl}/studies/${oracle.study}/series/${oracle.series}/instances/${oracle.sop}`;
    // no Accept: the frame's own syntax, which for an inflated frame is Explicit VR Little Endian
    const any = await fetch(`${url}/frames/1`, { headers: { accept: "*/*" } });
    expect(any.status).toBe(200);
    expect(any.headers.get("content-type")).toMatch(/^multipart\/related; type="application\/octet-stream"/);
    expect(Buffer.from(await any.arrayBuffer()).includes(pixels)).toBe(true);
    // rendered: decoded from the inflated frame
    const png = await fetch(`${url}/rendered`, { headers: { accept: "image/png" } });
    expect(png.status).toBe(200);
    // the whole instance in another syntax is not made from a deflated one: 406 with a sentence, never wrong bytes
    const ele = await fetch(url, { headers: { accept: `multipart/related; type="application/dicom"; transfer-syntax=${ELE}` } });
    expect(ele.status).toBe(406);
    expect(await ele.text()).toMatch(/does not transcode from Deflated Explicit VR Little Endian/);
  }, 60_000);

  it("a multi-frame deflated instance: frames asked out of order are the frames written", async () => {
    const study = newUid(), series = newUid(), sop = newUid();
    const common = { studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, modality: "CT", rows: 24, columns: 20, frames: 3, seed: 11 };
    const file = makeInstance({ ...common, transferSyntaxUID: DEFLATED });
    const plain = makeInstance(common);
    const p = await parse(plain);
    const frameOf = (n: number) => plain.subarray(p.pixelData!.frames[n - 1]![0]!.offset, p.pixelData!.frames[n - 1]![0]!.offset + p.pixelData!.frames[n - 1]![0]!.length);
    await client.storeInstances({ datasets: [toArrayBuffer(file)] });
    const frames = await client.retrieveInstanceFrames({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, frameNumbers: [3, 1] });
    expect(frames.map((f) => Buffer.from(f))).toEqual([frameOf(3), frameOf(1)]);
  }, 60_000);

  it("a deflated instance's bulk data (waveform data in a sequence) is served by inflating", async () => {
    const study = newUid(), series = newUid(), sop = newUid();
    const wave = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 31) & 0xff));
    const plain = handMade([...minimalElements({ study, series, sop }),
      { tag: tagOf(0x5400, 0x0100), vr: "SQ", value: [[{ tag: tagOf(0x5400, 0x1010), vr: "OW", value: wave }]], undefinedLength: true }], { transferSyntaxUID: DEFLATED });
    const metaEnd = 144 + plain.readUInt32LE(140);
    const file = Buffer.concat([plain.subarray(0, metaEnd), zlib.deflateRawSync(plain.subarray(metaEnd))]);
    await client.storeInstances({ datasets: [toArrayBuffer(file)] });
    const ids = { studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop };
    const [meta] = (await client.retrieveInstanceMetadata(ids)) as Array<Record<string, { Value?: Array<Record<string, { BulkDataURI?: string }>> }>>;
    const uri = meta!["54000100"]!.Value![0]!["54001010"]!.BulkDataURI!;
    expect(uri).toMatch(/\/bulkdata\/54000100\/0\/54001010$/);
    const [bulk] = await client.retrieveBulkData({ BulkDataURI: uri });
    expect(Buffer.from(bulk!).equals(wave)).toBe(true);
    expect(Buffer.from(await client.retrieveInstance(ids)).equals(file)).toBe(true);
  }, 60_000);
});
