/**
 * Decoding, transcoding and encoding frames on generated data compressed by real tools (dcmtk for JPEG, JPEG-LS and
 * RLE, GDCM for JPEG 2000), with dcmtk's decoders as the oracle.
 */
import { describe, it, expect, beforeAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { dcmtk } from "../support/dcmtk.ts";
import { parse } from "../support/fixtures.ts";
import { makeInstance } from "../../scripts/lib/synthetic.ts";
import { decodeRle, encodeRle } from "../../src/imaging/rle.ts";
import { transcodeInstance, whyNotTranscodable, frameIn } from "../../src/imaging/transcode.ts";
import { pixelModuleOf, type PixelModule } from "../../src/imaging/pixelModule.ts";
import { loadCodecs, decodeFrame } from "../../src/imaging/codecs.ts";
import type { BlobStore } from "../../src/storage/blobStore.ts";
import type { ParsedInstance } from "../../src/dicom/types.ts";

const ELE = "1.2.840.10008.1.2.1";
const ILE = "1.2.840.10008.1.2";

/** Just enough of a BlobStore to read one file by range (unit test of the transcoder, not of storage). */
function bufferStore(bytes: Buffer): BlobStore {
  return { get: async (_k: string, r?: { start: number; end: number }) => Readable.from([r ? bytes.subarray(r.start, r.end + 1) : bytes]) } as unknown as BlobStore;
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of it) parts.push(b);
  return Buffer.concat(parts);
}

function pixelBytes(bytes: Buffer, p: ParsedInstance): Buffer {
  return bytes.subarray(p.pixelData!.offset, p.pixelData!.offset + p.pixelData!.length);
}

const loc = (p: ParsedInstance, bytes: Buffer) => ({ blobKey: "k", size: bytes.length, transferSyntaxUID: p.transferSyntaxUID, pixelData: p.pixelData });

let dir: string;
let original: Buffer;
let originalParsed: ParsedInstance;
beforeAll(async () => {
  await loadCodecs();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "imaging-"));
  original = makeInstance({ modality: "CT", rows: 64, columns: 48, frames: 3, seed: 5 });
  originalParsed = await parse(original);
  fs.writeFileSync(path.join(dir, "native.dcm"), original);
}, 60_000);

async function compressed(tool: string, args: string[], name: string): Promise<Buffer> {
  const out = path.join(dir, name);
  const r = await dcmtk(tool, [...args, path.join(dir, "native.dcm"), out], { timeoutMs: 60_000 });
  expect(r.code, `${tool}: ${r.stderr}`).toBe(0);
  return fs.readFileSync(out);
}

describe("RLE (PS3.5 Annex G)", () => {
  it("decodes what it encodes, 8 and 16 bit, grey and colour", () => {
    for (const shape of [{ rows: 7, columns: 9, samplesPerPixel: 1, bitsAllocated: 16 }, { rows: 5, columns: 6, samplesPerPixel: 3, bitsAllocated: 8 }]) {
      const n = shape.rows * shape.columns * shape.samplesPerPixel * (shape.bitsAllocated / 8);
      const px = Buffer.from(Array.from({ length: n }, (_, i) => (i % 7 < 3 ? 9 : (i * 31) & 0xff)));
      expect(decodeRle(encodeRle(px, shape), shape).equals(px)).toBe(true);
    }
  });

  it("refuses a frame whose segment count does not fit the pixel module", () => {
    const shape = { rows: 2, columns: 2, samplesPerPixel: 1, bitsAllocated: 16 };
    const f = encodeRle(Buffer.alloc(8), { ...shape, bitsAllocated: 8 });
    expect(() => decodeRle(f, shape)).toThrow(/segments/);
  });
});

describe("transcoding to Explicit / Implicit VR Little Endian (dcmtk's decoders as oracle)", () => {
  const cases: Array<[string, string, string[], string, string[]]> = [
    ["JPEG-LS lossless", "dcmcjpls", [], "dcmdjpls", []],
    ["JPEG lossless SV1", "dcmcjpeg", ["+e1"], "dcmdjpeg", []],
    ["RLE", "dcmcrle", [], "dcmdrle", []],
    ["JPEG extended 12-bit (lossy)", "dcmcjpeg", ["+ee"], "dcmdjpeg", []],
  ];
  for (const [name, enc, encArgs, dec, decArgs] of cases) {
    it(`${name}: every frame equals the oracle's, the file is valid Part 10`, async () => {
      const bytes = await compressed(enc, encArgs, `${enc}${encArgs.join("")}.dcm`);
      const p = await parse(bytes);
      expect(p.transferSyntaxUID).not.toBe(ELE);
      const pm = pixelModuleOf(p.dataset) as PixelModule;
      expect(whyNotTranscodable(loc(p, bytes), pm, ELE)).toBeNull();
      const out = await collect(transcodeInstance(bufferStore(bytes), loc(p, bytes), pm, ELE, { part10: true }));
      const q = await parse(out);
      expect(q.transferSyntaxUID).toBe(ELE);
      expect(q.pixelData!.frames.length).toBe(3);
      expect(q.dataset["00100020"]).toEqual(p.dataset["00100020"]);
      // oracle: dcmtk's own decoder
      const oracleFile = path.join(dir, `${dec}-${enc}${encArgs.join("")}.dcm`);
      const r = await dcmtk(dec, [...decArgs, path.join(dir, `${enc}${encArgs.join("")}.dcm`), oracleFile]);
      expect(r.code, r.stderr).toBe(0);
      const oracle = fs.readFileSync(oracleFile);
      const o = await parse(oracle);
      const mine = pixelBytes(out, q);
      const theirs = pixelBytes(oracle, o);
      expect(mine.length).toBe(theirs.length);
      if (name.includes("lossy")) {
        // two JPEG decoders (libjpeg-turbo, dcmtk's IJG) may round differently by a unit or two
        let max = 0;
        for (let i = 0; i < mine.length; i += 2) max = Math.max(max, Math.abs(mine.readUInt16LE(i) - theirs.readUInt16LE(i)));
        expect(max).toBeLessThanOrEqual(2);
      } else {
        expect(mine.equals(theirs)).toBe(true);
        expect(mine.equals(pixelBytes(original, originalParsed))).toBe(true);
      }
      // and frame by frame
      const f2 = await frameIn(bufferStore(bytes), loc(p, bytes), pm, 2, ELE);
      const fb = 64 * 48 * 2;
      if (!name.includes("lossy")) expect(f2.equals(theirs.subarray(fb, 2 * fb))).toBe(true);
      // dcmtk reads the result
      fs.writeFileSync(path.join(dir, "out.dcm"), out);
      const dump = await dcmtk("dcmdump", ["+E", path.join(dir, "out.dcm")]);
      expect(dump.code, dump.stderr).toBe(0);
      expect(dump.stderr).toBe("");
    }, 60_000);
  }

  it("JPEG 2000 (made by GDCM) decodes to the original pixels, and to Implicit VR", async () => {
    const j2k = path.join(dir, "j2k.dcm");
    const r = await dcmtk("gdcmconv", ["--j2k", path.join(dir, "native.dcm"), j2k]);
    expect(r.code, r.stderr).toBe(0);
    const bytes = fs.readFileSync(j2k);
    const p = await parse(bytes);
    expect(p.transferSyntaxUID).toBe("1.2.840.10008.1.2.4.90");
    const pm = pixelModuleOf(p.dataset) as PixelModule;
    const out = await collect(transcodeInstance(bufferStore(bytes), loc(p, bytes), pm, ILE, { part10: true }));
    const q = await parse(out);
    expect(q.transferSyntaxUID).toBe(ILE);
    expect(pixelBytes(out, q).equals(pixelBytes(original, originalParsed))).toBe(true);
  }, 60_000);

  it("re-encodes to JPEG-LS, JPEG 2000, JPEG lossless and RLE losslessly", async () => {
    const pm = pixelModuleOf(originalParsed.dataset) as PixelModule;
    const native = pixelBytes(original, originalParsed);
    for (const ts of ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.201"]) {
      const out = await collect(transcodeInstance(bufferStore(original), loc(originalParsed, original), pm, ts, { part10: true }));
      const q = await parse(out);
      expect(q.transferSyntaxUID).toBe(ts);
      expect(q.pixelData!.frames.length).toBe(3);
      for (let n = 1; n <= 3; n++) {
        const f = await frameIn(bufferStore(out), loc(q, out), pm, n, ELE);
        expect(f.equals(native.subarray((n - 1) * f.length, n * f.length)), `${ts} frame ${n}`).toBe(true);
      }
    }
  }, 60_000);

  it("says why it cannot: no encoder for a lossy target, big endian source", () => {
    const pm = pixelModuleOf(originalParsed.dataset) as PixelModule;
    expect(whyNotTranscodable(loc(originalParsed, original), pm, "1.2.840.10008.1.2.4.50")).toMatch(/no encoder.*it can transcode to .*1\.2\.840\.10008\.1\.2\.1/);
    expect(whyNotTranscodable({ ...loc(originalParsed, original), transferSyntaxUID: "1.2.840.10008.1.2.2" }, pm, ELE)).toMatch(/does not transcode from/);
  });

  it("a corrupt JPEG-LS frame is a CodecError, not a crash", () => {
    const pm = pixelModuleOf(originalParsed.dataset) as PixelModule;
    expect(() => decodeFrame("1.2.840.10008.1.2.4.80", Buffer.from([0xff, 0xd8, 0xff, 0xf7, 1, 2, 3]), pm)).toThrow(/cannot be decoded/);
  });
});
