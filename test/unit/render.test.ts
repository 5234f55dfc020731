import { describe, it, expect, beforeAll } from "vitest";
import { chooseWindow, fitViewport, parseViewport, parseWindow, renderFrame, toDisplay, voi, RenderError } from "../../src/imaging/render.ts";
import { loadCodecs } from "../../src/imaging/codecs.ts";
import type { PixelModule } from "../../src/imaging/pixelModule.ts";
import { pixelModuleOf } from "../../src/imaging/pixelModule.ts";
import { decodeJpeg, decodePng } from "../support/images.ts";

const pm = (over: Partial<PixelModule> = {}): PixelModule => ({
  rows: 2, columns: 3, samplesPerPixel: 1, bitsAllocated: 16, bitsStored: 12, highBit: 11, pixelRepresentation: 0, planarConfiguration: 0,
  photometricInterpretation: "MONOCHROME2", numberOfFrames: 1, rescaleSlope: 1, rescaleIntercept: 0, ...over,
});
const u16 = (vals: number[]) => Buffer.from(new Uint16Array(vals).buffer);

beforeAll(() => loadCodecs());

describe("VOI LUT functions (PS3.3 C.11.2.1.2)", () => {
  it("linear: below the window 0, above 255, the centre mid-grey", () => {
    const w = { center: 40, width: 400, fn: "LINEAR" as const };
    expect(voi(-160.5, w)).toBe(0);
    expect(voi(240, w)).toBe(255);
    expect(voi(40, w)).toBe(128);
    expect(voi(-60, w)).toBe(Math.round(((-60 - 39.5) / 399 + 0.5) * 255));
  });
  it("linear-exact and sigmoid", () => {
    expect(voi(0, { center: 0, width: 100, fn: "LINEAR_EXACT" })).toBe(128);
    expect(voi(50, { center: 0, width: 100, fn: "LINEAR_EXACT" })).toBe(255);
    expect(voi(0, { center: 0, width: 100, fn: "SIGMOID" })).toBe(128);
    expect(voi(1000, { center: 0, width: 100, fn: "SIGMOID" })).toBe(255);
  });
  it("parses window and viewport, with sentences for bad ones", () => {
    expect(parseWindow("40,400")).toEqual({ center: 40, width: 400, fn: "LINEAR" });
    expect(parseWindow("-600,1500,linear-exact").fn).toBe("LINEAR_EXACT");
    expect(() => parseWindow("40")).toThrow(RenderError);
    expect(() => parseWindow("40,0")).toThrow(/width at least 1/);
    expect(parseViewport("64,32")).toEqual({ vw: 64, vh: 32 });
    expect(() => parseViewport("0,10")).toThrow(/vw,vh/);
  });
});

describe("the LUT pipeline", () => {
  it("applies rescale slope / intercept before the window (CT Hounsfield)", () => {
    // stored 1024 + intercept -1024 = 0 HU; window 0,100 -> mid grey
    const d = toDisplay(u16([1024, 974, 1074, 0, 4095, 1024]), pm({ rescaleIntercept: -1024 }), "MONOCHROME2", 0, { center: 0, width: 100, fn: "LINEAR_EXACT" });
    expect([...d.data]).toEqual([128, 0, 255, 0, 255, 128]);
  });
  it("takes the data set's window when the query has none, else min..max", () => {
    const v = new Float64Array([10, 20, 30]);
    expect(chooseWindow(v, pm({ windowCenter: 5, windowWidth: 7 }))).toMatchObject({ center: 5, width: 7 });
    const d = toDisplay(u16([100, 200, 300, 100, 200, 300]), pm(), "MONOCHROME2", 0);
    expect([...d.data]).toEqual([0, 128, 255, 0, 128, 255]);
  });
  it("inverts MONOCHROME1 and masks bits above BitsStored, sign-extends signed data", () => {
    const d = toDisplay(u16([100, 300, 100, 300, 100, 300]), pm(), "MONOCHROME1", 0);
    expect([...d.data]).toEqual([255, 0, 255, 0, 255, 0]);
    // 0xF000 | 5 with 12 bits stored is 5; 0x0FFF signed 12-bit is -1
    const s = toDisplay(u16([0xf005, 0x0fff, 0, 0, 0, 0]), pm({ pixelRepresentation: 1 }), "MONOCHROME2", 0, { center: 0, width: 20, fn: "LINEAR_EXACT" });
    expect(s.data[0]).toBe(Math.round((5 / 20 + 0.5) * 255));
    expect(s.data[1]).toBe(Math.round((-1 / 20 + 0.5) * 255));
  });
  it("converts YBR_FULL to RGB and reads planar colour", () => {
    const one = pm({ rows: 1, columns: 1, samplesPerPixel: 3, bitsAllocated: 8, bitsStored: 8, highBit: 7 });
    const red = toDisplay(Buffer.from([76, 85, 255]), one, "YBR_FULL", 0).data;
    expect(red[0]).toBeGreaterThan(250);
    expect(red[1]).toBeLessThan(5);
    expect(red[2]).toBeLessThan(5);
    const planar = toDisplay(Buffer.from([1, 2, 3, 4, 5, 6]), { ...one, columns: 2 }, "RGB", 1).data;
    expect([...planar]).toEqual([1, 3, 5, 2, 4, 6]);
    expect(() => toDisplay(Buffer.alloc(6), pm(), "PALETTE COLOR", 0)).toThrow(/PALETTE COLOR/);
  });
  it("fits the viewport keeping the aspect ratio, averaging when it shrinks", () => {
    const img = { data: Buffer.from([0, 100, 200, 255, 0, 100, 200, 255]), samples: 1 as const, width: 4, height: 2 };
    const f = fitViewport(img, { vw: 2, vh: 2 });
    expect([f.width, f.height]).toEqual([2, 1]);
    expect([...f.data]).toEqual([50, 228]);
    const crop = fitViewport(img, { vw: 2, vh: 2, sx: 2, sy: 0, sw: 2, sh: 2 });
    expect([...crop.data]).toEqual([200, 255, 200, 255]);
  });
  it("encodes PNG (exact pixels) and JPEG (right size, close pixels)", async () => {
    const big = pm({ rows: 32, columns: 64 });
    const px = u16(Array.from({ length: 32 * 64 }, (_, i) => (i % 64) * 16));
    const png = decodePng(renderFrame(px, big, "MONOCHROME2", 0, { mediaType: "image/png", window: { center: 512, width: 1024, fn: "LINEAR_EXACT" } }).body);
    expect([png.width, png.height, png.samples]).toEqual([64, 32, 1]);
    expect(png.data[10]).toBe(Math.round(((160 - 512) / 1024 + 0.5) * 255));
    const jpg = await decodeJpeg(renderFrame(px, big, "MONOCHROME2", 0, { mediaType: "image/jpeg", viewport: { vw: 32, vh: 32 }, quality: 95 }).body);
    expect([jpg.width, jpg.height]).toEqual([32, 16]);
    expect(Math.abs(jpg.data[31]! - 255)).toBeLessThan(12);
    expect(jpg.data[0]).toBeLessThan(12);
  });
  it("reads the pixel module from DICOM JSON", () => {
    const m = pixelModuleOf({ "00280010": { vr: "US", Value: [2] }, "00280011": { vr: "US", Value: [3] }, "00280100": { vr: "US", Value: [16] }, "00281050": { vr: "DS", Value: [40, 50] }, "00281051": { vr: "DS", Value: ["400"] } });
    expect(m).toMatchObject({ rows: 2, columns: 3, bitsStored: 16, windowCenter: 40, windowWidth: 400, photometricInterpretation: "MONOCHROME2" });
    expect(pixelModuleOf({})).toMatch(/Rows/);
  });
});
