/**
 * Helpers for tests that read Part-10 files: parse a buffer, catch a refusal, count what a read touches,
 * hand-build damaged files, decode RLE to check the generator.
 */
import { bufferSource, readPart10, type RandomAccessSource, type ReadPart10Options } from "../../src/dicom/part10.ts";
import { InstanceRejectedError } from "../../src/dicom/failureReasons.ts";
import type { ParsedInstance } from "../../src/dicom/types.ts";
import { encodeDataset, encodeFileMeta, newUid, tagOf, type WriterElement } from "../../scripts/lib/synthetic.ts";

export const READ_OPTS: ReadPart10Options = { maxHeaderBytes: 4 * 1024 * 1024, bulkDataThreshold: 1024 };

export function parse(bytes: Buffer, opts: Partial<ReadPart10Options> = {}): Promise<ParsedInstance> {
  return readPart10(bufferSource(bytes), { ...READ_OPTS, ...opts });
}

/** The refusal readPart10 gives for `bytes`; fails the test if it parses. */
export async function rejection(bytes: Buffer, opts: Partial<ReadPart10Options> = {}): Promise<InstanceRejectedError> {
  try {
    await parse(bytes, opts);
  } catch (err) {
    if (err instanceof InstanceRejectedError) return err;
    throw err;
  }
  throw new Error("expected the instance to be refused, but it parsed");
}

/** A source that records every read, to prove bulk data is never read. */
export function countingSource(bytes: Buffer): { source: RandomAccessSource; reads: Array<{ position: number; length: number }>; bytesRead(): number } {
  const inner = bufferSource(bytes);
  const reads: Array<{ position: number; length: number }> = [];
  return {
    reads,
    bytesRead: () => reads.reduce((n, r) => n + r.length, 0),
    source: {
      size: inner.size,
      async read(position, length) {
        const b = await inner.read(position, length);
        reads.push({ position, length: b.length });
        return b;
      },
    },
  };
}

/** The minimal attributes of a valid instance, for hand-built files. */
export function minimalElements(uids: { study?: string; series?: string; sop?: string; sopClass?: string } = {}): WriterElement[] {
  return [
    { tag: tagOf(0x0008, 0x0016), vr: "UI", value: uids.sopClass ?? "1.2.840.10008.5.1.4.1.1.7" },
    { tag: tagOf(0x0008, 0x0018), vr: "UI", value: uids.sop ?? newUid() },
    { tag: tagOf(0x0008, 0x0060), vr: "CS", value: "OT" },
    { tag: tagOf(0x0010, 0x0020), vr: "LO", value: "HAND-1" },
    { tag: tagOf(0x0020, 0x000d), vr: "UI", value: uids.study ?? newUid() },
    { tag: tagOf(0x0020, 0x000e), vr: "UI", value: uids.series ?? newUid() },
  ];
}

/** A Part-10 file from elements (explicit VR LE unless told otherwise). */
export function handMade(elements: WriterElement[], o: { transferSyntaxUID?: string; explicitVR?: boolean; littleEndian?: boolean; charset?: string } = {}): Buffer {
  const sop = elements.find((e) => e.tag === tagOf(0x0008, 0x0018))?.value;
  const sopClass = elements.find((e) => e.tag === tagOf(0x0008, 0x0016))?.value;
  const meta = encodeFileMeta({
    sopClassUID: typeof sopClass === "string" ? sopClass : "1.2.840.10008.5.1.4.1.1.7",
    sopInstanceUID: typeof sop === "string" ? sop : "1.2.3",
    transferSyntaxUID: o.transferSyntaxUID ?? "1.2.840.10008.1.2.1",
  });
  return Buffer.concat([meta, encodeDataset(elements, { explicitVR: o.explicitVR ?? true, littleEndian: o.littleEndian ?? true, charset: o.charset })]);
}

/** Decodes one RLE Lossless frame (PS3.5 Annex G) to interleaved little-endian samples. */
export function rleDecodeFrame(encoded: Buffer, shape: { rows: number; columns: number; bitsAllocated: number; samplesPerPixel: number }): Buffer {
  const n = shape.rows * shape.columns;
  const bytesPerSample = shape.bitsAllocated / 8;
  const segments = encoded.readUInt32LE(0);
  const offsets = Array.from({ length: segments }, (_, i) => encoded.readUInt32LE(4 + 4 * i));
  const out = Buffer.alloc(n * shape.samplesPerPixel * bytesPerSample);
  for (let s = 0; s < segments; s++) {
    const start = offsets[s]!;
    const end = s + 1 < segments ? offsets[s + 1]! : encoded.length;
    const plane = Buffer.alloc(n);
    let o = 0;
    for (let p = start; p < end && o < n;) {
      const h = encoded.readInt8(p++);
      if (h >= 0) {
        encoded.copy(plane, o, p, p + h + 1);
        o += h + 1;
        p += h + 1;
      } else if (h !== -128) {
        plane.fill(encoded[p]!, o, o + 1 - h);
        o += 1 - h;
        p++;
      }
    }
    const sample = Math.floor(s / bytesPerSample);
    const byte = bytesPerSample - 1 - (s % bytesPerSample);
    const stride = shape.samplesPerPixel * bytesPerSample;
    for (let i = 0; i < n; i++) out[i * stride + sample * bytesPerSample + byte] = plane[i]!;
  }
  return out;
}

/** PS3.5 H.3.1: "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう" in ISO 2022 IR 13 \\ ISO 2022 IR 87 */
export const H31_YAMADA = Buffer.from(
  [
    "d4cfc0de", "5e", "c0dbb3", "3d", // ﾔﾏﾀﾞ^ﾀﾛｳ=
    "1b2442", "3b334544", "1b284a", "5e", "1b2442", "42404f3a", "1b284a", "3d", // 山田^太郎=
    "1b2442", "2464245e2440", "1b284a", "5e", "1b2442", "243f246d2426", "1b284a", // やまだ^たろう
  ].join(""),
  "hex",
);

/** Transfer syntax UIDs the parser tests name */
export const TS = {
  explicitLE: "1.2.840.10008.1.2.1",
  implicitLE: "1.2.840.10008.1.2",
  explicitBE: "1.2.840.10008.1.2.2",
  deflated: "1.2.840.10008.1.2.1.99",
  rle: "1.2.840.10008.1.2.5",
  encapsulatedUncompressed: "1.2.840.10008.1.2.1.98",
};
