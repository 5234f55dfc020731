/**
 * Transcoding a stored instance, a frame at a time: the header (everything before the pixel data) is re-encoded in
 * the target transfer syntax, then each frame is read by its byte ranges, decoded, encoded again when the target is
 * compressed, and written before the next frame is read. Memory holds the header and one frame, whatever the size
 * of the instance.
 */
import { Readable } from "node:stream";
import type { BlobStore } from "../storage/blobStore.ts";
import type { ByteRange } from "../dicom/types.ts";
import { inflatedRanges } from "../dicom/deflate.ts";
import { TransferSyntaxUID } from "../dicom/uids.ts";
import type { InstanceLocation } from "../catalog/index.ts";
import { transferSyntaxInfo } from "../dicom/transferSyntax.ts";
import { canDecode, canEncode, decodeFrame, encodeFrame, encodableSyntaxes, loadCodecs, UNCOMPRESSED, type DecodedFrame } from "./codecs.ts";
import { encodeElement, fileMeta, fragmentItem, pixelDataHeader, readElements, replacement, SEQUENCE_DELIMITER, type Enc, type RawElement } from "./dataset.ts";
import { nativeFrameBytes, type PixelModule } from "./pixelModule.ts";

/** Largest header (bytes before the pixel data) read into memory for transcoding. */
export const MAX_TRANSCODE_HEADER = 64 * 1024 * 1024;
const MAX_TAIL = 1024 * 1024;

export type Located = Pick<InstanceLocation, "blobKey" | "size" | "transferSyntaxUID" | "pixelData">;

/** Transfer syntaxes the relay can transcode to, in words, for 406 sentences. */
export function transcodeTargetsSentence(): string {
  const names = [...UNCOMPRESSED, ...encodableSyntaxes()].map((u) => `${transferSyntaxInfo(u)?.name ?? u} (${u})`);
  return names.join(", ");
}

/**
 * null when the instance can be transcoded to `target`, else a sentence why not (for a 406 or a DIMSE comment).
 */
export function whyNotTranscodable(loc: Located, pm: PixelModule | string | null, target: string): string | null {
  if (loc.transferSyntaxUID === target) return null;
  const src = transferSyntaxInfo(loc.transferSyntaxUID);
  const dst = transferSyntaxInfo(target);
  if (!dst) return `${target.slice(0, 64)} is not a DICOM transfer syntax`;
  if (!src || !src.littleEndian || src.deflated) return `the relay does not transcode from ${src?.name ?? loc.transferSyntaxUID}`;
  const targetNative = UNCOMPRESSED.includes(target);
  if (!targetNative && !encodableSyntaxes().includes(target)) {
    return `the relay has no encoder for ${dst.name}; it can transcode to ${transcodeTargetsSentence()}`;
  }
  if (!loc.pixelData) return targetNative ? null : `the instance has no pixel data to compress`;
  if (typeof pm === "string") return pm;
  if (!pm) return "the instance has no image pixel attributes";
  if (!canDecode(loc.transferSyntaxUID)) return `the relay has no decoder for ${src.name}`;
  if (loc.pixelData.frames.length === 0) return "the frames of this instance cannot be told apart (no offset table), so they cannot be decoded one at a time";
  if (pm.bitsAllocated % 8 !== 0) return `pixels of ${pm.bitsAllocated} bits allocated are not transcoded`;
  if (!targetNative && !canEncode(target, pm)) return `the relay cannot encode ${pm.bitsAllocated}-bit pixels to ${dst.name}`;
  return null;
}

async function readAll(store: BlobStore, key: string, start: number, end: number): Promise<Buffer> {
  if (end <= start) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const c of await store.get(key, { start, end: end - 1 })) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/**
 * The bytes of `ranges` of a stored instance, one after the other, as a stream: ranged reads of the stored file, or
 * for a deflated data set (inflatedFrom set) inflated from its start up to the last range.
 */
export function storedRanges(store: BlobStore, key: string, ranges: ByteRange[], deflated?: { inflatedFrom?: number; size: number }): Readable {
  const inflatedFrom = deflated?.inflatedFrom;
  if (inflatedFrom !== undefined) {
    return Readable.from((async function* () {
      yield* inflatedRanges(await store.get(key, { start: inflatedFrom, end: deflated!.size - 1 }), ranges);
    })(), { objectMode: false });
  }
  return Readable.from((async function* () {
    for (const r of ranges) {
      if (r.length === 0) continue;
      for await (const chunk of await store.get(key, { start: r.offset, end: r.offset + r.length - 1 })) yield chunk as Buffer;
    }
  })(), { objectMode: false });
}

/** The stored bytes of frame n (1-based), concatenated from its fragments (inflated for a deflated data set). */
export async function storedFrame(store: BlobStore, loc: Located, n: number): Promise<Buffer> {
  const ranges = loc.pixelData?.frames[n - 1];
  if (!ranges) throw new Error(`frame ${n} does not exist`);
  const parts: Buffer[] = [];
  for await (const c of storedRanges(store, loc.blobKey, ranges, { inflatedFrom: loc.pixelData!.inflatedFrom, size: loc.size })) parts.push(c as Buffer);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/** Frame n decoded to native pixels. */
export async function decodedFrame(store: BlobStore, loc: Located, pm: PixelModule, n: number): Promise<DecodedFrame> {
  await loadCodecs();
  // an inflated frame of a deflated data set is native pixels, as in Explicit VR Little Endian
  const ts = transferSyntaxInfo(loc.transferSyntaxUID)?.deflated ? TransferSyntaxUID.ExplicitVRLittleEndian : loc.transferSyntaxUID;
  return decodeFrame(ts, await storedFrame(store, loc, n), pm);
}

/** Frame n in the target transfer syntax (native bytes for the uncompressed ones). */
export async function frameIn(store: BlobStore, loc: Located, pm: PixelModule, n: number, target: string): Promise<Buffer> {
  if (target === loc.transferSyntaxUID) return storedFrame(store, loc, n);
  const d = await decodedFrame(store, loc, pm, n);
  if (UNCOMPRESSED.includes(target)) return d.pixels;
  return encodeFrame(target, d.pixels, { ...pm, photometricInterpretation: d.photometricInterpretation });
}

/**
 * The instance in the target transfer syntax: a Part-10 file (part10 true) or the data set alone (DIMSE). Check
 * whyNotTranscodable first. Yields buffers of at most one frame.
 */
export async function* transcodeInstance(store: BlobStore, loc: Located, pm: PixelModule | null, target: string, opts: { part10: boolean }): AsyncGenerator<Buffer> {
  const src = transferSyntaxInfo(loc.transferSyntaxUID)!;
  const from: Enc = { explicit: src.explicitVR };
  const to: Enc = { explicit: target !== UNCOMPRESSED[1] };
  const px = loc.pixelData;
  const pixelElementStart = px ? px.offset - (from.explicit ? 12 : 8) : loc.size;
  if (pixelElementStart > MAX_TRANSCODE_HEADER) throw new Error(`the header of the instance is larger than ${MAX_TRANSCODE_HEADER} bytes`);
  const head = await readAll(store, loc.blobKey, 0, pixelElementStart);
  const meta = readElements(head, { explicit: true }, 132, (tag) => tag >>> 16 !== 0x0002);
  const dataStart = meta.length ? meta[meta.length - 1]!.end : 132;
  const elements = readElements(head, from, dataStart);

  const targetNative = UNCOMPRESSED.includes(target);
  const frameCount = px ? px.frames.length : 0;
  // the first frame is decoded before the header is written: the codec says what the pixels became (RGB for YBR)
  const copyPixels = loc.transferSyntaxUID === target || (!src.encapsulated && targetNative);
  let first: DecodedFrame | null = null;
  if (px && !copyPixels) {
    if (!pm) throw new Error("the instance has no image pixel attributes");
    first = await decodedFrame(store, loc, pm, 1);
  }

  const changed = new Map<number, RawElement>();
  if (first && pm && pm.samplesPerPixel > 1) {
    changed.set(0x00280004, replacement(0x00280004, "CS", first.photometricInterpretation));
    changed.set(0x00280006, replacement(0x00280006, "US", first.planarConfiguration));
  }
  const out: Buffer[] = [];
  if (opts.part10) out.push(fileMeta(meta, target));
  for (const el of elements) {
    // the offset tables describe the stored fragments, not the new ones
    if (el.tag === 0x7fe00001 || el.tag === 0x7fe00002) continue;
    if (el.tag >>> 16 === 0x0002) continue;
    encodeElement(changed.get(el.tag) ?? el, el.nested, to, out);
    changed.delete(el.tag);
  }
  // PlanarConfiguration is required for colour; add it where the source left it out (sorted order kept: 0028 < 7FE0)
  for (const el of changed.values()) encodeElement(el, { explicit: true }, to, out);
  yield Buffer.concat(out);
  if (!px) return;

  if (copyPixels || !pm) {
    // the pixel bytes are the same: copy them as stored
    const vr = (pm?.bitsAllocated ?? 16) > 8 ? "OW" : "OB";
    yield pixelDataHeader(to, vr, px.length);
    for await (const c of await store.get(loc.blobKey, { start: px.offset, end: px.offset + px.length - 1 })) yield c as Buffer;
  } else if (targetNative) {
    const frameBytes = nativeFrameBytes(pm);
    const total = frameBytes * frameCount;
    yield pixelDataHeader(to, pm.bitsAllocated > 8 ? "OW" : "OB", total + (total % 2));
    for (let n = 1; n <= frameCount; n++) {
      const d = n === 1 && first ? first : await decodedFrame(store, loc, pm, n);
      yield d.pixels.length === frameBytes ? d.pixels : d.pixels.subarray(0, frameBytes);
    }
    if (total % 2) yield Buffer.alloc(1);
  } else {
    yield pixelDataHeader(to, "OB", null);
    yield fragmentItem(0); // empty Basic Offset Table: the fragments are written as they are made
    for (let n = 1; n <= frameCount; n++) {
      const d = n === 1 && first ? first : await decodedFrame(store, loc, pm, n);
      let e = encodeFrame(target, d.pixels, { ...pm, photometricInterpretation: d.photometricInterpretation });
      if (e.length % 2) e = Buffer.concat([e, Buffer.alloc(1)]);
      yield fragmentItem(e.length);
      yield e;
    }
    yield SEQUENCE_DELIMITER;
  }
  // elements after the pixel data (rare: trailing padding, private tags)
  const tailStart = px.offset + px.length;
  if (tailStart < loc.size && loc.size - tailStart <= MAX_TAIL) {
    const tail = await readAll(store, loc.blobKey, tailStart, loc.size);
    const rest: Buffer[] = [];
    for (const el of readElements(tail, from)) if (el.tag !== 0xfffcfffc) encodeElement(el, el.nested, to, rest);
    if (rest.length) yield Buffer.concat(rest);
  }
}
