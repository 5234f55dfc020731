/**
 * /rendered and /thumbnail over HTTP on a real relay: a CT with a known pixel ramp (stored JPEG-LS by dcmtk, so the
 * frame is decoded on the way), checked by decoding the PNG / JPEG that comes back.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import request from "supertest";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { handMade, minimalElements } from "../support/fixtures.ts";
import { decodeJpeg, decodePng } from "../support/images.ts";
import { newUid, tagOf, makeInstance } from "../../scripts/lib/synthetic.ts";

const ROWS = 40;
const COLS = 80;
const study = newUid();
const series = newUid();
const sop = newUid();
let relay: TestRelay;
let base: string;

/** stored value = column * 50; rescale intercept -1024 (so HU = column * 50 - 1024); window in the data set 0,400 */
function ramp(): Buffer {
  const px = Buffer.alloc(ROWS * COLS * 2 * 2);
  for (let f = 0; f < 2; f++) for (let y = 0; y < ROWS; y++) for (let x = 0; x < COLS; x++) px.writeUInt16LE(f === 0 ? x * 50 : 4000 - x * 50, 2 * (f * ROWS * COLS + y * COLS + x));
  return handMade([
    ...minimalElements({ study, series, sop, sopClass: "1.2.840.10008.5.1.4.1.1.2" }),
    { tag: tagOf(0x0028, 0x0002), vr: "US", value: 1 },
    { tag: tagOf(0x0028, 0x0004), vr: "CS", value: "MONOCHROME2" },
    { tag: tagOf(0x0028, 0x0008), vr: "IS", value: "2" },
    { tag: tagOf(0x0028, 0x0010), vr: "US", value: ROWS },
    { tag: tagOf(0x0028, 0x0011), vr: "US", value: COLS },
    { tag: tagOf(0x0028, 0x0100), vr: "US", value: 16 },
    { tag: tagOf(0x0028, 0x0101), vr: "US", value: 12 },
    { tag: tagOf(0x0028, 0x0102), vr: "US", value: 11 },
    { tag: tagOf(0x0028, 0x0103), vr: "US", value: 0 },
    { tag: tagOf(0x0028, 0x1050), vr: "DS", value: "0" },
    { tag: tagOf(0x0028, 0x1051), vr: "DS", value: "400" },
    { tag: tagOf(0x0028, 0x1052), vr: "DS", value: "-1024" },
    { tag: tagOf(0x0028, 0x1053), vr: "DS", value: "1" },
    { tag: tagOf(0x7fe0, 0x0010), vr: "OW", value: px },
  ]);
}

const binary = (r: request.Test) => r.buffer(true).parse((res, cb) => { const b: Buffer[] = []; res.on("data", (d: Buffer) => b.push(d)); res.on("end", () => cb(null, Buffer.concat(b))); });

beforeAll(async () => {
  relay = await startTestRelay();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "rendered-"));
  fs.writeFileSync(path.join(dir, "ramp.dcm"), ramp());
  const r = await dcmtk("dcmcjpls", [path.join(dir, "ramp.dcm"), path.join(dir, "ramp.jls")]);
  if (r.code !== 0) throw new Error(r.stderr);
  const jls = fs.readFileSync(path.join(dir, "ramp.jls"));
  const other = makeInstance({ studyInstanceUID: study, modality: "US", rows: 48, columns: 64, seed: 4 });
  const doc = makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, noPixelData: true, seed: 6 });
  const ab = (b: Buffer) => b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer;
  await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: [ab(jls), ab(other), ab(doc)] });
  base = `/dicom-web/studies/${study}/series/${series}/instances/${sop}`;
}, 60_000);

afterAll(async () => {
  await relay?.dispose();
});

/** the HU of column x */
const hu = (x: number) => x * 50 - 1024;

describe("rendered resources", () => {
  it("an instance renders as JPEG by default with the data set's window, right size", async () => {
    const res = await binary(request(relay.url).get(`${base}/rendered`));
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("image/jpeg");
    const img = await decodeJpeg(res.body as Buffer);
    expect([img.width, img.height, img.samples]).toEqual([COLS, ROWS, 1]);
    // window 0,400 linear: HU -200 and below black, 200 and above white
    const at = (x: number) => img.data[10 * COLS + x]!;
    expect(at(5)).toBeLessThan(10); // -774 HU
    expect(at(70)).toBeGreaterThan(245); // 2476 HU
    expect(Math.abs(at(20) - Math.round(((hu(20) + 0.5) / 399 + 0.5) * 255))).toBeLessThan(12); // -24 HU
  });

  it("PNG follows the window asked for exactly, and the viewport scales it", async () => {
    const res = await binary(request(relay.url).get(`${base}/frames/1/rendered?window=1000,2000,linear-exact`).set("Accept", "image/png"));
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("image/png");
    const img = decodePng(res.body as Buffer);
    expect([img.width, img.height]).toEqual([COLS, ROWS]);
    for (const x of [0, 13, 40, 79]) expect(img.data[x]).toBe(Math.max(0, Math.min(255, Math.round(((hu(x) - 1000) / 2000 + 0.5) * 255))));
    const small = decodePng((await binary(request(relay.url).get(`${base}/frames/2/rendered?viewport=40,40`).set("Accept", "image/png"))).body as Buffer);
    expect([small.width, small.height]).toEqual([40, 20]);
    // frame 2 is the mirrored ramp: bright on the left
    expect(small.data[0]!).toBeGreaterThan(small.data[39]!);
  });

  it("series and study rendered: multipart/related with one image per image instance", async () => {
    const s = await binary(request(relay.url).get(`/dicom-web/studies/${study}/rendered`));
    expect(s.status).toBe(200);
    expect(s.headers["content-type"]).toMatch(/^multipart\/related; type="image\/jpeg"/);
    const jpegs = (s.body as Buffer).toString("latin1").split("Content-Type: image/jpeg").length - 1;
    expect(jpegs).toBe(2); // the instance without pixel data is left out
  });

  it("thumbnails are small JPEGs at every level", async () => {
    for (const url of [`/dicom-web/studies/${study}/thumbnail`, `/dicom-web/studies/${study}/series/${series}/thumbnail`, `${base}/thumbnail`, `${base}/frames/2/thumbnail`]) {
      const res = await binary(request(relay.url).get(url));
      expect(res.status, url).toBe(200);
      const img = await decodeJpeg(res.body as Buffer);
      expect(Math.max(img.width, img.height), url).toBe(128);
    }
  });

  it("bad parameters are 400, unsupported media types 406, no pixel data 404, each with a sentence", async () => {
    const bad = await request(relay.url).get(`${base}/rendered?window=abc`);
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatch(/center,width/);
    const vp = await request(relay.url).get(`${base}/rendered?viewport=0,0`);
    expect(vp.status).toBe(400);
    const gif = await request(relay.url).get(`${base}/rendered`).set("Accept", "image/gif");
    expect(gif.status).toBe(406);
    expect(gif.body.error).toMatch(/image\/jpeg.*image\/png/);
    const frame = await request(relay.url).get(`${base}/frames/3/rendered`);
    expect(frame.status).toBe(404);
    expect((await request(relay.url).get(`/dicom-web/studies/${newUid()}/thumbnail`)).status).toBe(404);
  });
});
