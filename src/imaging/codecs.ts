/**
 * Frame codecs: which transfer syntaxes the relay can decode to native pixels and encode from them, one frame at a
 * time. The codecs are dcmjs-codecs' WebAssembly build (libjpeg-turbo 8/12/16-bit incl. lossless, CharLS, OpenJPEG,
 * OpenJPH), shipped inside the npm package and loaded once; RLE is decoded here (rle.ts). Why this library:
 * docs/conformance.md, "Transcoding".
 */
import path from "node:path";
import { createRequire } from "node:module";
import { TransferSyntaxUID } from "../dicom/uids.ts";
import { decodeRle, encodeRle } from "./rle.ts";
import type { PixelModule } from "./pixelModule.ts";

const require = createRequire(import.meta.url);

interface CodecContext {
  getDecodedBuffer(): Uint8Array | undefined;
  getEncodedBuffer(): Uint8Array | undefined;
  getPhotometricInterpretation(): string | undefined;
  getPlanarConfiguration(): number | undefined;
}
interface DcmjsCodecs {
  Context: new (attrs: Record<string, unknown>) => CodecContext;
  NativeCodecs: {
    initializeAsync(opts?: { webAssemblyModulePathOrUrl?: string }): Promise<void>;
    isInitialized(): boolean;
  } & Record<string, (ctx: CodecContext, params?: Record<string, unknown>) => CodecContext>;
}

let codecs: DcmjsCodecs | null = null;
let loading: Promise<DcmjsCodecs> | null = null;

/** Load the WebAssembly codecs once (about 100 ms); later calls return at once. */
export function loadCodecs(): Promise<DcmjsCodecs> {
  if (codecs) return Promise.resolve(codecs);
  loading ??= (async () => {
    const mod = require("dcmjs-codecs") as DcmjsCodecs;
    const wasm = path.join(path.dirname(require.resolve("dcmjs-codecs")), "dcmjs-native-codecs.wasm");
    if (!mod.NativeCodecs.isInitialized()) await mod.NativeCodecs.initializeAsync({ webAssemblyModulePathOrUrl: wasm });
    codecs = mod;
    return mod;
  })();
  return loading;
}

export const UNCOMPRESSED: readonly string[] = [TransferSyntaxUID.ExplicitVRLittleEndian, TransferSyntaxUID.ImplicitVRLittleEndian];

/** dcmjs-codecs decoder per transfer syntax. */
const DECODERS: Record<string, string> = {
  "1.2.840.10008.1.2.4.50": "decodeJpeg",
  "1.2.840.10008.1.2.4.51": "decodeJpeg",
  "1.2.840.10008.1.2.4.57": "decodeJpeg",
  "1.2.840.10008.1.2.4.70": "decodeJpeg",
  "1.2.840.10008.1.2.4.80": "decodeJpegLs",
  "1.2.840.10008.1.2.4.81": "decodeJpegLs",
  "1.2.840.10008.1.2.4.90": "decodeJpeg2000",
  "1.2.840.10008.1.2.4.91": "decodeJpeg2000",
  "1.2.840.10008.1.2.4.201": "decodeHtJpeg2000",
  "1.2.840.10008.1.2.4.202": "decodeHtJpeg2000",
  "1.2.840.10008.1.2.4.203": "decodeHtJpeg2000",
  "1.2.840.10008.1.2.4.110": "decodeJpegXl",
  "1.2.840.10008.1.2.4.112": "decodeJpegXl",
};
const RLE = "1.2.840.10008.1.2.5";
const ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98";

/** Lossless encoders only: a relay must not lose pixels the sender kept, so lossy targets are not offered. */
const ENCODERS: Record<string, { fn: string; params: Record<string, unknown> }> = {
  "1.2.840.10008.1.2.4.70": { fn: "encodeJpeg", params: { lossy: false, predictor: 1, pointTransform: 0 } },
  "1.2.840.10008.1.2.4.80": { fn: "encodeJpegLs", params: { lossy: false } },
  "1.2.840.10008.1.2.4.90": { fn: "encodeJpeg2000", params: { lossy: false } },
  "1.2.840.10008.1.2.4.201": { fn: "encodeHtJpeg2000", params: { lossy: false } },
};

/** Can frames stored in this transfer syntax be decoded to native pixels? */
export function canDecode(tsUid: string): boolean {
  return UNCOMPRESSED.includes(tsUid) || tsUid === RLE || tsUid === ENCAPSULATED_UNCOMPRESSED || tsUid in DECODERS;
}

/** Transfer syntaxes native frames can be encoded to (besides the uncompressed ones). */
export function encodableSyntaxes(): string[] {
  return [RLE, ...Object.keys(ENCODERS)];
}

export function canEncode(tsUid: string, pm: Pick<PixelModule, "bitsAllocated">): boolean {
  if (tsUid === RLE) return pm.bitsAllocated % 8 === 0;
  return tsUid in ENCODERS && pm.bitsAllocated <= 16 && pm.bitsAllocated >= 8;
}

export class CodecError extends Error {}

export interface DecodedFrame {
  /** native little endian pixels, interleaved when samplesPerPixel > 1 */
  pixels: Buffer;
  /** what the pixels are now: JPEG YBR comes out as RGB */
  photometricInterpretation: string;
  planarConfiguration: number;
}

function contextOf(c: DcmjsCodecs, pm: PixelModule, buffers: { encodedBuffer?: Uint8Array; decodedBuffer?: Uint8Array }): CodecContext {
  return new c.Context({
    width: pm.columns,
    height: pm.rows,
    bitsAllocated: pm.bitsAllocated,
    bitsStored: pm.bitsStored,
    samplesPerPixel: pm.samplesPerPixel,
    pixelRepresentation: pm.pixelRepresentation,
    planarConfiguration: pm.planarConfiguration,
    photometricInterpretation: pm.photometricInterpretation,
    ...buffers,
  });
}

/** Decode one frame of the given transfer syntax. Call loadCodecs() first. */
export function decodeFrame(tsUid: string, encoded: Buffer, pm: PixelModule): DecodedFrame {
  const want = Math.ceil((pm.rows * pm.columns * pm.samplesPerPixel * pm.bitsAllocated) / 8);
  if (UNCOMPRESSED.includes(tsUid) || tsUid === ENCAPSULATED_UNCOMPRESSED) {
    return { pixels: encoded, photometricInterpretation: pm.photometricInterpretation, planarConfiguration: pm.planarConfiguration };
  }
  if (tsUid === RLE) {
    try {
      return { pixels: decodeRle(encoded, pm), photometricInterpretation: pm.photometricInterpretation, planarConfiguration: 0 };
    } catch (err) {
      throw new CodecError(`the RLE frame cannot be decoded: ${(err as Error).message}`);
    }
  }
  const fn = DECODERS[tsUid];
  if (!fn) throw new CodecError(`the relay has no decoder for transfer syntax ${tsUid}`);
  if (!codecs) throw new Error("loadCodecs() was not awaited");
  let out: CodecContext;
  try {
    out = codecs.NativeCodecs[fn]!(contextOf(codecs, pm, { encodedBuffer: new Uint8Array(encoded.buffer, encoded.byteOffset, encoded.length) }), { convertColorspaceToRgb: true });
  } catch (err) {
    throw new CodecError(`the frame cannot be decoded (${fn}): ${(err as Error).message ?? String(err)}`);
  }
  const d = out.getDecodedBuffer();
  if (!d || d.length < want) throw new CodecError(`the frame decodes to ${d?.length ?? 0} bytes, ${want} expected from Rows, Columns, SamplesPerPixel and BitsAllocated`);
  const colour = pm.samplesPerPixel > 1;
  return {
    pixels: Buffer.from(d.buffer, d.byteOffset, want),
    // JPEG / JPEG 2000 colour comes out as RGB (YBR_FULL_422, YBR_ICT, YBR_RCT converted by the codec)
    photometricInterpretation: colour ? (out.getPhotometricInterpretation() ?? "RGB") : pm.photometricInterpretation,
    planarConfiguration: colour ? (out.getPlanarConfiguration() ?? 0) : 0,
  };
}

/** Encode one native frame (interleaved) to a lossless compressed transfer syntax. Call loadCodecs() first. */
export function encodeFrame(tsUid: string, native: Buffer, pm: PixelModule): Buffer {
  if (tsUid === RLE) return encodeRle(native, pm);
  const enc = ENCODERS[tsUid];
  if (!enc) throw new CodecError(`the relay has no encoder for transfer syntax ${tsUid}`);
  if (!codecs) throw new Error("loadCodecs() was not awaited");
  try {
    const out = codecs.NativeCodecs[enc.fn]!(contextOf(codecs, { ...pm, planarConfiguration: 0 }, { decodedBuffer: new Uint8Array(native.buffer, native.byteOffset, native.length) }), enc.params);
    const e = out.getEncodedBuffer();
    if (!e) throw new Error("no output");
    return Buffer.from(e);
  } catch (err) {
    throw new CodecError(`the frame cannot be encoded (${enc.fn}): ${(err as Error).message ?? String(err)}`);
  }
}

/** Baseline JPEG of 8-bit grey (1 sample) or RGB (3 samples, interleaved) pixels. */
export function encodeJpegImage(pixels: Buffer, width: number, height: number, samples: 1 | 3, quality: number): Buffer {
  if (!codecs) throw new Error("loadCodecs() was not awaited");
  const ctx = new codecs.Context({
    width, height, bitsAllocated: 8, bitsStored: 8, samplesPerPixel: samples, pixelRepresentation: 0, planarConfiguration: 0,
    photometricInterpretation: samples === 3 ? "RGB" : "MONOCHROME2", decodedBuffer: new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.length),
  });
  const out = codecs.NativeCodecs.encodeJpeg!(ctx, { lossy: true, quality });
  const e = out.getEncodedBuffer();
  if (!e) throw new CodecError("the JPEG encoder gave no output");
  return Buffer.from(e);
}
