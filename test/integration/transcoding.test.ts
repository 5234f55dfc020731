/**
 * WADO-RS transcoding with real clients: instances compressed by real tools (dcmtk: JPEG-LS, JPEG lossless; GDCM:
 * JPEG 2000) are stored, then dicomweb-client asks for frames in Explicit VR Little Endian and gets the pixels
 * dcmtk's own decoders give; raw HTTP checks the negotiation (stored bytes for * / none, 406 sentences).
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import request from "supertest";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { parse } from "../support/fixtures.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { readMultipartParts } from "../../src/dicom/multipart.ts";
import { Readable } from "node:stream";

const ELE = "1.2.840.10008.1.2.1";
const toArrayBuffer = (b: Buffer) => b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer;

let relay: TestRelay;
let dir: string;
const study = newUid();
const series = newUid();
interface Case { name: string; sop: string; ts: string; compressed: Buffer; oracle: Buffer }
const cases: Case[] = [];

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await dcmtk(cmd, args, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
}

/** pixel data value bytes of a native Part-10 file */
async function nativePixels(bytes: Buffer): Promise<Buffer> {
  const p = await parse(bytes);
  return bytes.subarray(p.pixelData!.offset, p.pixelData!.offset + p.pixelData!.length);
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "transcode-"));
  relay = await startTestRelay();
  const makers: Array<[string, string, string[], string]> = [
    ["JPEG-LS", "dcmcjpls", [], "dcmdjpls"],
    ["JPEG lossless", "dcmcjpeg", ["+e1"], "dcmdjpeg"],
    ["JPEG 2000", "gdcmconv", ["--j2k"], "gdcmconv"],
    ["RLE", "dcmcrle", [], "dcmdrle"],
  ];
  for (const [name, tool, args, decoder] of makers) {
    const sop = newUid();
    const native = path.join(dir, `${sop}.dcm`);
    fs.writeFileSync(native, makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, modality: "CT", rows: 40, columns: 56, frames: 2, seed: cases.length + 1 }));
    await run(tool, [...args, native, `${native}.c`]);
    // the oracle: the tool's own decoder (GDCM's --raw for JPEG 2000)
    await run(decoder, decoder === "gdcmconv" ? ["--raw", `${native}.c`, `${native}.d`] : [`${native}.c`, `${native}.d`]);
    const compressed = fs.readFileSync(`${native}.c`);
    const p = await parse(compressed);
    cases.push({ name, sop, ts: p.transferSyntaxUID, compressed, oracle: await nativePixels(fs.readFileSync(`${native}.d`)) });
  }
  await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: cases.map((c) => toArrayBuffer(c.compressed)) });
}, 120_000);

afterAll(async () => {
  await relay?.dispose();
});

describe("frames in Explicit VR Little Endian from compressed instances (dicomweb-client)", () => {
  it("JPEG-LS, JPEG lossless, JPEG 2000 and RLE frames decode to the oracle's pixels", async () => {
    const client = dicomwebClient(relay.dicomwebUrl);
    expect(cases.map((c) => c.ts)).toEqual(["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"]);
    for (const c of cases) {
      const frames = await client.retrieveInstanceFrames({
        studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: c.sop, frameNumbers: [1, 2],
        mediaTypes: [{ mediaType: "application/octet-stream", transferSyntaxUID: ELE }],
      });
      expect(frames, c.name).toHaveLength(2);
      const got = Buffer.concat(frames.map((f) => Buffer.from(f)));
      expect(got.length, c.name).toBe(40 * 56 * 2 * 2);
      expect(got.equals(c.oracle), `${c.name} pixels equal the oracle's`).toBe(true);
    }
  }, 60_000);
});

describe("negotiation over raw HTTP", () => {
  const url = (c: Case, f = "1") => `/dicom-web/studies/${study}/series/${series}/instances/${c.sop}/frames/${f}`;

  it("no Accept or */* on frames returns the stored bytes in their own media type", async () => {
    const c = cases[0]!;
    for (const accept of [undefined, "*/*", 'multipart/related; type="image/jls"', 'multipart/related; type="application/octet-stream"; transfer-syntax=*']) {
      const r = request(relay.url).get(url(c)).buffer(true).parse((res, cb) => { const b: Buffer[] = []; res.on("data", (d: Buffer) => b.push(d)); res.on("end", () => cb(null, Buffer.concat(b))); });
      const res = await (accept ? r.set("Accept", accept) : r);
      expect(res.status, String(accept)).toBe(200);
      expect(res.headers["content-type"]).toMatch(/multipart\/related/);
      const body = res.body as Buffer;
      expect(body.includes(Buffer.from(`transfer-syntax=${c.ts}`)), String(accept)).toBe(true);
    }
  });

  it("application/octet-stream without a transfer syntax means decoded pixels (Explicit VR Little Endian)", async () => {
    const c = cases[2]!;
    const res = await request(relay.url).get(url(c, "2")).set("Accept", 'multipart/related; type="application/octet-stream"')
      .buffer(true).parse((r, cb) => { const b: Buffer[] = []; r.on("data", (d: Buffer) => b.push(d)); r.on("end", () => cb(null, Buffer.concat(b))); });
    expect(res.status).toBe(200);
    const ct = { boundary: /boundary=([^;]+)/.exec(String(res.headers["content-type"]))![1]! };
    const parts: Buffer[] = [];
    for await (const part of readMultipartParts(Readable.from([res.body as Buffer]), ct!.boundary)) {
      expect(part.headers["content-type"]).toBe(`application/octet-stream; transfer-syntax=${ELE}`);
      const chunks: Buffer[] = [];
      for await (const ch of part.body) chunks.push(ch as Buffer);
      parts.push(Buffer.concat(chunks));
    }
    expect(parts).toHaveLength(1);
    expect(parts[0]!.equals(c.oracle.subarray(40 * 56 * 2))).toBe(true);
  });

  it("a compressed frame asked as another compressed syntax is re-encoded (JPEG 2000 -> JPEG-LS)", async () => {
    const c = cases[2]!;
    const res = await request(relay.url).get(url(c)).set("Accept", 'multipart/related; type="image/jls"').buffer(true)
      .parse((r, cb) => { const b: Buffer[] = []; r.on("data", (d: Buffer) => b.push(d)); r.on("end", () => cb(null, Buffer.concat(b))); });
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toMatch(/type="image\/jls"/);
    const body = res.body as Buffer;
    expect(body.includes(Buffer.from("transfer-syntax=1.2.840.10008.1.2.4.80"))).toBe(true);
    // the JPEG-LS start-of-image + SOF55 markers
    expect(body.includes(Buffer.from([0xff, 0xd8, 0xff, 0xf7]))).toBe(true);
  });

  it("a syntax without an encoder is 406 with a sentence naming what is available", async () => {
    const c = cases[0]!;
    const res = await request(relay.url).get(url(c)).set("Accept", 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50');
    expect(res.status).toBe(406);
    expect(res.body.error).toMatch(/can send them as application\/octet-stream.*JPEG-LS Lossless/);
  });

  it("an instance asked for in Explicit VR Little Endian comes decoded, streamed per frame, and parses", async () => {
    const c = cases[1]!;
    const client = dicomwebClient(relay.dicomwebUrl);
    const res = await request(relay.url).get(`/dicom-web/studies/${study}/series/${series}/instances/${c.sop}`)
      .set("Accept", `multipart/related; type="application/dicom"; transfer-syntax=${ELE}`).buffer(true)
      .parse((r, cb) => { const b: Buffer[] = []; r.on("data", (d: Buffer) => b.push(d)); r.on("end", () => cb(null, Buffer.concat(b))); });
    expect(res.status).toBe(200);
    const ct = { boundary: /boundary=([^;]+)/.exec(String(res.headers["content-type"]))![1]! };
    const files: Buffer[] = [];
    for await (const part of readMultipartParts(Readable.from([res.body as Buffer]), ct!.boundary)) {
      expect(part.headers["content-type"]).toBe(`application/dicom; transfer-syntax=${ELE}`);
      const chunks: Buffer[] = [];
      for await (const ch of part.body) chunks.push(ch as Buffer);
      files.push(Buffer.concat(chunks));
    }
    expect(files).toHaveLength(1);
    const p = await parse(files[0]!);
    expect(p.transferSyntaxUID).toBe(ELE);
    expect(p.sopInstanceUID).toBe(c.sop);
    expect((await nativePixels(files[0]!)).equals(c.oracle)).toBe(true);
    // and dicomweb-client's default (no transfer syntax named) still gets the stored bytes
    const stored = await client.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: c.sop });
    expect(Buffer.from(stored).equals(c.compressed)).toBe(true);
  });

  it("a study asked for in a syntax one instance cannot reach is 406 naming the transfer syntaxes available", async () => {
    const res = await request(relay.url).get(`/dicom-web/studies/${study}`).set("Accept", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50');
    expect(res.status).toBe(406);
    expect(res.body.error).toMatch(/no encoder for JPEG Baseline.*Explicit VR Little Endian \(1\.2\.840\.10008\.1\.2\.1\)/);
  });
});
