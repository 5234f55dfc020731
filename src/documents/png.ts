/** A small PNG decoder for photos of paper reports: 8-bit gray, RGB or RGBA, non-interlaced; anything else is refused. */
import zlib from "node:zlib";
import { DocumentRefused } from "./errors.ts";

export interface DecodedPng { rows: number; columns: number; samplesPerPixel: 1 | 3; pixels: Buffer }

/** A photo of a page needs far fewer pixels than this; the cap also bounds what inflate may produce. */
const MAX_PIXELS = 100_000_000;

export function decodePng(bytes: Buffer): DecodedPng {
  let pos = 8;
  let width = 0, height = 0, colorType = -1;
  const idat: Buffer[] = [];
  for (let guard = 0; guard < 1_000_000 && pos + 12 <= bytes.length; guard++) {
    const len = bytes.readUInt32BE(pos);
    const type = bytes.toString("latin1", pos + 4, pos + 8);
    const data = bytes.subarray(pos + 8, pos + 8 + len);
    if (data.length !== len) throw new DocumentRefused("the PNG is broken: a chunk runs past the end of the file");
    if (type === "IHDR") {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4);
      const depth = data[8], interlace = data[12];
      colorType = data[9]!;
      if (depth !== 8 || ![0, 2, 6].includes(colorType) || interlace !== 0) {
        throw new DocumentRefused("the PNG is not an 8-bit gray, RGB or RGBA non-interlaced image: save it as JPEG and attach that");
      }
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    pos += 12 + len;
  }
  if (!width || !height || !idat.length) throw new DocumentRefused("the PNG is broken: no header or no image data");
  if (width * height > MAX_PIXELS) throw new DocumentRefused(`the PNG has more than ${MAX_PIXELS} pixels; scale the photo down and attach it again`);
  const channels = colorType === 0 ? 1 : colorType === 2 ? 3 : 4;
  const stride = width * channels;
  let raw: Buffer;
  try {
    raw = zlib.inflateSync(Buffer.concat(idat), { maxOutputLength: (stride + 1) * height });
  } catch {
    throw new DocumentRefused("the PNG is broken: its image data does not decompress");
  }
  if (raw.length < (stride + 1) * height) throw new DocumentRefused("the PNG is broken: its image data is short");
  const out = Buffer.alloc(width * height * (channels === 1 ? 1 : 3));
  let prev = Buffer.alloc(stride);
  const cur = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? cur[x - channels]! : 0, b = prev[x]!, c = x >= channels ? prev[x - channels]! : 0;
      let p: number;
      switch (filter) {
        case 0: p = 0; break;
        case 1: p = a; break;
        case 2: p = b; break;
        case 3: p = (a + b) >> 1; break;
        case 4: { const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c); p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c; break; }
        default: throw new DocumentRefused("the PNG is broken: unknown row filter");
      }
      cur[x] = (line[x]! + p) & 0xff;
    }
    // RGBA: the alpha channel is dropped (a photo of paper is opaque)
    if (channels === 4) for (let x = 0; x < width; x++) cur.copy(out, (y * width + x) * 3, x * 4, x * 4 + 3);
    else cur.copy(out, y * stride);
    prev = Buffer.from(cur);
  }
  return { rows: height, columns: width, samplesPerPixel: channels === 1 ? 1 : 3, pixels: out };
}
