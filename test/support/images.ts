/** Decoders for what /rendered returns, to check it in tests: PNG (8-bit grey/RGB, filter None as written here or any filter) and JPEG (via the codecs). */
import zlib from "node:zlib";
import { decodeFrame, loadCodecs } from "../../src/imaging/codecs.ts";

export function decodePng(b: Buffer): { width: number; height: number; samples: number; data: Buffer } {
  expect8(b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), "not a PNG");
  let p = 8;
  let width = 0, height = 0, samples = 1;
  const idat: Buffer[] = [];
  while (p < b.length) {
    const len = b.readUInt32BE(p);
    const type = b.toString("latin1", p + 4, p + 8);
    const data = b.subarray(p + 8, p + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      samples = data[9] === 2 ? 3 : 1;
    } else if (type === "IDAT") idat.push(data);
    p += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * samples;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    expect8(raw[y * (stride + 1)] === 0, "only filter None is decoded here");
    raw.copy(out, y * stride, y * (stride + 1) + 1, (y + 1) * (stride + 1));
  }
  return { width, height, samples, data: out };
}

function expect8(ok: boolean, msg: string): void {
  if (!ok) throw new Error(msg);
}

/** Size and pixels of a JPEG (SOF0 dimensions, libjpeg-turbo decode). */
export async function decodeJpeg(b: Buffer): Promise<{ width: number; height: number; samples: number; data: Buffer }> {
  expect8(b[0] === 0xff && b[1] === 0xd8, "not a JPEG");
  let p = 2;
  let width = 0, height = 0, samples = 0;
  while (p < b.length) {
    const marker = b[p + 1]!;
    const len = b.readUInt16BE(p + 2);
    if (marker === 0xc0 || marker === 0xc1) {
      height = b.readUInt16BE(p + 5);
      width = b.readUInt16BE(p + 7);
      samples = b[p + 9]!;
      break;
    }
    p += 2 + len;
  }
  await loadCodecs();
  const d = decodeFrame("1.2.840.10008.1.2.4.50", b, {
    rows: height, columns: width, samplesPerPixel: samples, bitsAllocated: 8, bitsStored: 8, highBit: 7, pixelRepresentation: 0, planarConfiguration: 0,
    photometricInterpretation: samples === 3 ? "RGB" : "MONOCHROME2", numberOfFrames: 1, rescaleSlope: 1, rescaleIntercept: 0,
  });
  return { width, height, samples, data: d.pixels };
}
