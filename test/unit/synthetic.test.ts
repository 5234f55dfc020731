import { execFile } from "node:child_process";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import iconv from "iconv-lite";
import { describe, expect, it } from "vitest";
import { encodeText, generateStudy, makeInstance, newUid, rleEncodeFrame, writeLargeInstance, writeStudy } from "../../scripts/lib/synthetic.ts";
import { isValidUid } from "../../src/dicom/uids.ts";
import { parse, rleDecodeFrame } from "../support/fixtures.ts";

const pixels = async (file: Buffer) => {
  const p = await parse(file);
  return file.subarray(p.pixelData!.offset, p.pixelData!.offset + p.pixelData!.length);
};

describe("makeInstance", () => {
  it("writes a Part-10 file: preamble, DICM, file meta, data set", async () => {
    const sop = newUid();
    const file = makeInstance({ sopInstanceUID: sop, rows: 8, columns: 8 });
    expect(file.subarray(0, 128).every((b) => b === 0)).toBe(true);
    expect(file.subarray(128, 132).toString("latin1")).toBe("DICM");
    expect(file.readUInt16LE(132)).toBe(0x0002);
    const p = await parse(file);
    expect(p.sopInstanceUID).toBe(sop);
    expect(isValidUid(p.studyInstanceUID)).toBe(true);
  });

  it("encodes names for real in GB18030, GBK, UTF-8 and Latin-1", () => {
    const gb = makeInstance({ rows: 4, columns: 4, patientName: "Zhang^San=张^三", charset: "GB18030" });
    expect(gb.includes(Buffer.concat([Buffer.from("Zhang^San="), iconv.encode("张^三", "gb18030")]))).toBe(true);
    expect(gb.includes(Buffer.from("张", "utf8"))).toBe(false);
    expect(makeInstance({ rows: 4, columns: 4, patientName: "Li^Na=李^娜", charset: "GBK" }).includes(iconv.encode("李^娜", "gbk"))).toBe(true);
    expect(makeInstance({ rows: 4, columns: 4, patientName: "Chen^Jing=陈^静", charset: "ISO_IR 192" }).includes(Buffer.from("陈^静", "utf8"))).toBe(true);
    expect(makeInstance({ rows: 4, columns: 4, patientName: "Müller^Jürgen", charset: "ISO_IR 100" }).includes(Buffer.from("Müller", "latin1"))).toBe(true);
    expect(() => makeInstance({ patientName: "张^三", charset: "ISO_IR 100" })).toThrow(/cannot be written in ISO_IR 100/);
    expect(() => encodeText("x", "ISO 2022 IR 87")).toThrow(/does not encode/);
  });

  it("makes realistic CT defaults: 16-bit 512x512, rescale, window, position, pixel data not all zeros", async () => {
    const file = makeInstance({ modality: "CT", seed: 5 });
    const p = await parse(file);
    const v = (t: string) => p.dataset[t]?.Value;
    expect([v("00280010"), v("00280011"), v("00280100")]).toEqual([[512], [512], [16]]);
    expect([v("00281052"), v("00281053"), v("00281050"), v("00281051")]).toEqual([[-1024], [1], [40], [400]]);
    expect(v("00200032")).toHaveLength(3);
    expect(v("00080016")).toEqual(["1.2.840.10008.5.1.4.1.1.2"]);
    const px = await pixels(file);
    expect(px.length).toBe(512 * 512 * 2);
    expect(px.some((b) => b !== 0)).toBe(true);
  });

  it("is deterministic in its pixel data when seeded, and varies per instance", async () => {
    const a = await pixels(makeInstance({ rows: 32, columns: 32, modality: "MR", seed: 9, instanceNumber: 1 }));
    const b = await pixels(makeInstance({ rows: 32, columns: 32, modality: "MR", seed: 9, instanceNumber: 1 }));
    const c = await pixels(makeInstance({ rows: 32, columns: 32, modality: "MR", seed: 9, instanceNumber: 2 }));
    expect(a.equals(b)).toBe(true);
    expect(a.equals(c)).toBe(false);
  });

  it("writes RLE Lossless that decodes back to the native frames (16-bit and RGB)", async () => {
    for (const shape of [{ rows: 24, columns: 20, bitsAllocated: 16 as const, samplesPerPixel: 1 as const }, { rows: 10, columns: 12, bitsAllocated: 8 as const, samplesPerPixel: 3 as const }]) {
      const opts = { ...shape, frames: 2, modality: "US", seed: 4 };
      const nativeFile = makeInstance(opts);
      const native = await parse(nativeFile);
      const rleFile = makeInstance({ ...opts, transferSyntaxUID: "1.2.840.10008.1.2.5" });
      const rle = await parse(rleFile);
      rle.pixelData!.frames.forEach((runs, i) => {
        const enc = Buffer.concat(runs.map((r) => rleFile.subarray(r.offset, r.offset + r.length)));
        const n = native.pixelData!.frames[i]![0]!;
        expect(rleDecodeFrame(enc, shape).equals(nativeFile.subarray(n.offset, n.offset + n.length))).toBe(true);
      });
    }
    // long runs and literals both appear
    const flat = rleEncodeFrame(Buffer.alloc(512, 3), { rows: 16, columns: 32, bitsAllocated: 8, samplesPerPixel: 1 });
    expect(flat.length).toBeLessThan(64 + 16);
  });

  it("applies extra attributes, including removal and private tags", async () => {
    const p = await parse(makeInstance({ rows: 4, columns: 4, extra: { PatientWeight: 72.5, InstitutionName: null, "00291010": { vr: "LO", Value: ["hello"] }, "00290010": { vr: "LO", Value: ["ACME"] } } }));
    expect(p.dataset["00101030"]).toEqual({ vr: "DS", Value: [72.5] });
    expect(p.dataset["00080080"]).toBeUndefined();
    expect(p.dataset["00291010"]).toEqual({ vr: "LO", Value: ["hello"] });
    expect(() => makeInstance({ extra: { NoSuchKeyword: 1 } })).toThrow(/unknown attribute keyword/);
  });
});

describe("generateStudy / writeStudy", () => {
  it("spreads instances over series with one study, numbered per series", () => {
    const study = newUid();
    const all = [...generateStudy({ instances: 7, seriesCount: 3, rows: 8, columns: 8, studyInstanceUID: study, seed: 2 })];
    expect(all).toHaveLength(7);
    expect(new Set(all.map((i) => i.studyInstanceUID))).toEqual(new Set([study]));
    expect(new Set(all.map((i) => i.seriesInstanceUID)).size).toBe(3);
    expect(new Set(all.map((i) => i.sopInstanceUID)).size).toBe(7);
    expect(all.map((i) => `${i.seriesNumber}/${i.instanceNumber}`)).toEqual(["1/1", "1/2", "1/3", "2/1", "2/2", "2/3", "3/1"]);
  });

  it("keeps study-level attributes the same across the study", async () => {
    const [a, b] = [...generateStudy({ instances: 2, seriesCount: 2, rows: 8, columns: 8, seed: 11 })];
    const pa = await parse(a!.bytes), pb = await parse(b!.bytes);
    for (const tag of ["00100010", "00100020", "00080020", "00080050", "00080005", "00080060"]) expect(pb.dataset[tag]).toEqual(pa.dataset[tag]);
  });

  it("is fast enough for 300 512x512 CT instances", () => {
    const t = performance.now();
    let bytes = 0;
    for (const i of generateStudy({ instances: 300, rows: 512, columns: 512, modality: "CT", seed: 1 })) bytes += i.bytes.length;
    expect(bytes).toBeGreaterThan(300 * 512 * 512 * 2);
    expect(performance.now() - t).toBeLessThan(5000);
  });

  it("writes a study to a directory", async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "synthetic-"));
    try {
      const r = await writeStudy(dir, { instances: 4, seriesCount: 2, rows: 8, columns: 8 });
      expect(r.files).toHaveLength(4);
      const sizes = await Promise.all(r.files.map(async (f) => (await fsp.stat(f)).size));
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(r.totalBytes);
      expect((await parse(await fsp.readFile(r.files[0]!))).studyInstanceUID).toBe(r.studyInstanceUID);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe("writeLargeInstance", () => {
  it("streams one multi-frame instance of about the asked size to disk", async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "synthetic-large-"));
    try {
      const file = path.join(dir, "large.dcm");
      const info = await writeLargeInstance(file, 8 * 1024 * 1024);
      const size = (await fsp.stat(file)).size;
      expect(size).toBe(info.bytes);
      expect(Math.abs(size - 8 * 1024 * 1024)).toBeLessThan(512 * 1024);
      const p = await parse(await fsp.readFile(file));
      expect(p.sopInstanceUID).toBe(info.sopInstanceUID);
      expect(p.pixelData!.frames).toHaveLength(info.frames);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe("scripts/generate-study.ts", () => {
  it("writes a study and prints a JSON summary", async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "generate-"));
    try {
      const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", "scripts/generate-study.ts", "--out", dir, "--instances", "3", "--rows", "8", "--cols", "8", "--ts", "rle", "--charset", "GBK"], { timeout: 60_000 });
      const summary = JSON.parse(stdout) as { instances: number; studyInstanceUID: string; totalBytes: number };
      expect(summary.instances).toBe(3);
      expect(isValidUid(summary.studyInstanceUID)).toBe(true);
      expect(summary.totalBytes).toBeGreaterThan(0);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
