/**
 * Rendering one decoded frame for people (PS3.18 8.3.5 rendered resources, PS3.3 C.11 LUT pipeline): Modality LUT
 * (Rescale Slope / Intercept), VOI LUT window (from the query, else the data set's first Window Center / Width,
 * else the frame's min..max) with the linear, linear-exact or sigmoid function, MONOCHROME1 inverted; RGB and
 * YBR_FULL colour; then cropped / scaled to the viewport and encoded as JPEG or PNG. Pure.
 */
import { encodeJpegImage } from "./codecs.ts";
import { encodePng } from "./png.ts";
import type { PixelModule } from "./pixelModule.ts";

export type VoiFunction = "LINEAR" | "LINEAR_EXACT" | "SIGMOID";

export interface Window {
  center: number;
  width: number;
  fn: VoiFunction;
}

export interface Viewport {
  /** output box: the image is scaled to fit it, aspect ratio kept */
  vw: number;
  vh: number;
  /** source region (PS3.18: sx, sy, sw, sh); the whole frame when left out */
  sx?: number;
  sy?: number;
  sw?: number;
  sh?: number;
}

export interface RenderParams {
  window?: Window;
  viewport?: Viewport;
  /** JPEG quality 1..100 (default 90) */
  quality?: number;
  mediaType: "image/jpeg" | "image/png";
}

export class RenderError extends Error {}

const MAX_VIEWPORT = 8192;

/** window=center,width[,function] (PS3.18 8.3.5.1.4); throws RenderError with a sentence. */
export function parseWindow(raw: string): Window {
  const [c, w, f, ...rest] = raw.split(",").map((s) => s.trim());
  const center = Number(c);
  const width = Number(w);
  const fn = (f ?? "linear").toUpperCase().replace("-", "_");
  if (rest.length || !c || !w || !Number.isFinite(center) || !Number.isFinite(width) || width < 1 || !["LINEAR", "LINEAR_EXACT", "SIGMOID"].includes(fn)) {
    throw new RenderError(`window="${raw.slice(0, 60)}" is not center,width[,function]: width at least 1, function linear, linear-exact or sigmoid`);
  }
  return { center, width, fn: fn as VoiFunction };
}

/** viewport=vw,vh[,sx,sy,sw,sh] */
export function parseViewport(raw: string): Viewport {
  const parts = raw.split(",").map((s) => s.trim());
  const nums = parts.map(Number);
  const ok = (parts.length === 2 || parts.length === 6) && nums.every((n) => Number.isInteger(n)) && nums[0]! >= 1 && nums[1]! >= 1 && nums[0]! <= MAX_VIEWPORT && nums[1]! <= MAX_VIEWPORT
    && (parts.length === 2 || (nums[2]! >= 0 && nums[3]! >= 0 && nums[4]! >= 1 && nums[5]! >= 1));
  if (!ok) throw new RenderError(`viewport="${raw.slice(0, 60)}" is not vw,vh or vw,vh,sx,sy,sw,sh (positive integers, vw and vh at most ${MAX_VIEWPORT})`);
  return parts.length === 2 ? { vw: nums[0]!, vh: nums[1]! } : { vw: nums[0]!, vh: nums[1]!, sx: nums[2]!, sy: nums[3]!, sw: nums[4]!, sh: nums[5]! };
}

export function parseQuality(raw: string): number {
  const q = Number(raw);
  if (!Number.isInteger(q) || q < 1 || q > 100) throw new RenderError(`quality="${raw.slice(0, 20)}" must be an integer from 1 to 100`);
  return q;
}

/** Stored values of a grey frame as numbers (masked to BitsStored, sign-extended when signed). */
function storedValues(pixels: Buffer, pm: PixelModule): Float64Array {
  const n = pm.rows * pm.columns;
  const out = new Float64Array(n);
  const bits = pm.bitsStored;
  const mask = bits >= 32 ? 0xffffffff : 2 ** bits - 1;
  const sign = 2 ** (bits - 1);
  const bytes = pm.bitsAllocated / 8;
  if (![1, 2, 4].includes(bytes)) throw new RenderError(`grey pixels of ${pm.bitsAllocated} bits allocated are not rendered`);
  for (let i = 0; i < n; i++) {
    let v = bytes === 1 ? pixels[i]! : bytes === 2 ? pixels.readUInt16LE(2 * i) : pixels.readUInt32LE(4 * i);
    // the value sits in the low BitsStored bits (HighBit = BitsStored - 1 in practice)
    v = (v >>> Math.max(0, pm.highBit + 1 - bits)) & mask;
    if (pm.pixelRepresentation === 1 && v >= sign) v -= 2 * sign;
    out[i] = v;
  }
  return out;
}

/** The window used: the query's, else the data set's, else the frame's min..max. */
export function chooseWindow(values: Float64Array, pm: PixelModule, asked?: Window): Window {
  if (asked) return asked;
  const fn = (pm.voiLutFunction === "SIGMOID" || pm.voiLutFunction === "LINEAR_EXACT" ? pm.voiLutFunction : "LINEAR") as VoiFunction;
  if (pm.windowCenter !== undefined && pm.windowWidth !== undefined && pm.windowWidth >= 1) return { center: pm.windowCenter, width: pm.windowWidth, fn };
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (!Number.isFinite(min)) return { center: 0, width: 1, fn: "LINEAR_EXACT" };
  // LINEAR_EXACT over [min, max] maps min to 0 and max to 255
  return { center: (min + max) / 2, width: Math.max(1, max - min), fn: "LINEAR_EXACT" };
}

/** VOI LUT function (PS3.3 C.11.2.1.2) to 0..255. */
export function voi(x: number, w: Window): number {
  const { center: c, width } = w;
  let y: number;
  if (w.fn === "SIGMOID") y = 255 / (1 + Math.exp((-4 * (x - c)) / width));
  else if (w.fn === "LINEAR_EXACT") y = x <= c - width / 2 ? 0 : x > c + width / 2 ? 255 : ((x - c) / width + 0.5) * 255;
  else if (x <= c - 0.5 - (width - 1) / 2) y = 0;
  else if (x > c - 0.5 + (width - 1) / 2) y = 255;
  else y = ((x - (c - 0.5)) / (width - 1) + 0.5) * 255;
  return Math.max(0, Math.min(255, Math.round(y)));
}

/** 8-bit output pixels (grey or RGB interleaved) of one decoded frame. */
export function toDisplay(pixels: Buffer, pm: PixelModule, photometric: string, planar: number, asked?: Window): { data: Buffer; samples: 1 | 3 } {
  const n = pm.rows * pm.columns;
  if (pm.samplesPerPixel === 1) {
    if (photometric === "PALETTE COLOR") throw new RenderError("PALETTE COLOR images are not rendered by this relay yet");
    const values = storedValues(pixels, pm);
    for (let i = 0; i < n; i++) values[i] = values[i]! * pm.rescaleSlope + pm.rescaleIntercept;
    const w = chooseWindow(values, pm, asked);
    const out = Buffer.allocUnsafe(n);
    const invert = photometric === "MONOCHROME1";
    for (let i = 0; i < n; i++) {
      const y = voi(values[i]!, w);
      out[i] = invert ? 255 - y : y;
    }
    return { data: out, samples: 1 };
  }
  if (pm.samplesPerPixel !== 3) throw new RenderError(`images of ${pm.samplesPerPixel} samples per pixel are not rendered`);
  if (!["RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"].includes(photometric)) throw new RenderError(`${photometric} colour is not rendered by this relay`);
  const bytes = pm.bitsAllocated / 8;
  if (bytes !== 1 && bytes !== 2) throw new RenderError(`colour pixels of ${pm.bitsAllocated} bits allocated are not rendered`);
  const shift = Math.max(0, pm.bitsStored - 8);
  const sample = (i: number, s: number): number => {
    const k = planar === 1 ? s * n + i : 3 * i + s;
    return (bytes === 1 ? pixels[k]! : pixels.readUInt16LE(2 * k)) >>> shift;
  };
  const out = Buffer.allocUnsafe(3 * n);
  const ybr = photometric !== "RGB";
  for (let i = 0; i < n; i++) {
    const a = sample(i, 0), b = sample(i, 1), c = sample(i, 2);
    if (ybr) {
      // YBR_FULL to RGB (PS3.3 C.7.6.3.1.2)
      out[3 * i] = clamp(a + 1.402 * (c - 128));
      out[3 * i + 1] = clamp(a - 0.344136 * (b - 128) - 0.714136 * (c - 128));
      out[3 * i + 2] = clamp(a + 1.772 * (b - 128));
    } else {
      out[3 * i] = a;
      out[3 * i + 1] = b;
      out[3 * i + 2] = c;
    }
  }
  return { data: out, samples: 3 };
}

const clamp = (v: number) => Math.max(0, Math.min(255, Math.round(v)));

/** Crop to the viewport's source region and scale to fit (vw, vh), aspect ratio kept; box filter when shrinking. */
export function fitViewport(img: { data: Buffer; samples: 1 | 3; width: number; height: number }, vp?: Viewport): { data: Buffer; width: number; height: number } {
  const sx = Math.min(vp?.sx ?? 0, img.width - 1);
  const sy = Math.min(vp?.sy ?? 0, img.height - 1);
  const sw = Math.min(vp?.sw ?? img.width, img.width - sx);
  const sh = Math.min(vp?.sh ?? img.height, img.height - sy);
  if (!vp && sx === 0 && sy === 0) return { data: img.data, width: img.width, height: img.height };
  const scale = vp ? Math.min(vp.vw / sw, vp.vh / sh) : 1;
  const width = Math.max(1, Math.round(sw * scale));
  const height = Math.max(1, Math.round(sh * scale));
  const s = img.samples;
  const out = Buffer.allocUnsafe(width * height * s);
  for (let y = 0; y < height; y++) {
    const y0 = sy + Math.floor((y * sh) / height);
    const y1 = Math.max(y0 + 1, sy + Math.floor(((y + 1) * sh) / height));
    for (let x = 0; x < width; x++) {
      const x0 = sx + Math.floor((x * sw) / width);
      const x1 = Math.max(x0 + 1, sx + Math.floor(((x + 1) * sw) / width));
      for (let c = 0; c < s; c++) {
        let sum = 0;
        for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) sum += img.data[(yy * img.width + xx) * s + c]!;
        out[(y * width + x) * s + c] = Math.round(sum / ((y1 - y0) * (x1 - x0)));
      }
    }
  }
  return { data: out, width, height };
}

/** One decoded frame to a JPEG or PNG image. Call loadCodecs() first (JPEG). */
export function renderFrame(pixels: Buffer, pm: PixelModule, photometric: string, planar: number, params: RenderParams): { body: Buffer; width: number; height: number } {
  const display = toDisplay(pixels, pm, photometric, planar, params.window);
  const fitted = fitViewport({ ...display, width: pm.columns, height: pm.rows }, params.viewport);
  const body = params.mediaType === "image/png"
    ? encodePng(fitted.data, fitted.width, fitted.height, display.samples)
    : encodeJpegImage(fitted.data, fitted.width, fitted.height, display.samples, params.quality ?? 90);
  return { body, width: fitted.width, height: fitted.height };
}
