import { describe, it, expect } from "vitest";
import zlib from "node:zlib";
import { decodePng } from "../../src/documents/png.ts";
import { checkPdf, detectContent, documentUids, readJpegHeader, wrapDocument, DocumentRefused } from "../../src/documents/wrap.ts";

const pdf = Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n\n");
// SOI, SOF0 (8-bit, 16 rows x 24 columns, 3 components), EOI
const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x10, 0x00, 0x18, 0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);

describe("document content", () => {
  it("detects by magic bytes, not name", () => {
    expect(detectContent(pdf)).toBe("application/pdf");
    expect(detectContent(jpeg)).toBe("image/jpeg");
    expect(detectContent(Buffer.from("\x89PNG\r\n\x1a\nxxxx", "latin1"))).toBe("image/png");
    expect(detectContent(Buffer.from("hello, not a report"))).toBeNull();
  });
  it("refuses broken and encrypted PDFs", () => {
    expect(() => checkPdf(Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\n"))).toThrow(/no %%EOF/);
    expect(() => checkPdf(Buffer.from("%PDF-1.4\ntrailer<</Encrypt 5 0 R>>\n%%EOF\n"))).toThrow(/encrypted/);
    expect(() => checkPdf(pdf)).not.toThrow();
  });
  it("reads a baseline JPEG header and refuses a progressive one", () => {
    expect(readJpegHeader(jpeg)).toEqual({ rows: 16, columns: 24, components: 3 });
    const progressive = Buffer.from(jpeg); progressive[3] = 0xc2;
    expect(() => readJpegHeader(progressive)).toThrow(DocumentRefused);
  });
  it("derives the same UIDs for the same study, kind and bytes", () => {
    const a = documentUids("1.2.3", "pathology-report", "ab"), b = documentUids("1.2.3", "pathology-report", "ab");
    expect(a).toEqual(b);
    expect(documentUids("1.2.3", "radiology-report", "ab").seriesInstanceUID).not.toBe(a.seriesInstanceUID);
    expect(documentUids("1.2.3", "pathology-report", "cd").seriesInstanceUID).toBe(a.seriesInstanceUID);
  });
  it("refuses content that is not PDF, JPEG or PNG with a sentence", () => {
    expect(() => wrapDocument(Buffer.from("plain text"), { studyInstanceUID: "1.2.3", kind: "other", title: "x", language: "en" }, {})).toThrow(/not a PDF, JPEG or PNG/);
  });
});

describe("PNG photos", () => {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    return Buffer.concat([len, Buffer.from(type, "latin1"), data, Buffer.alloc(4)]); // CRC not checked
  };
  const png = (colorType: number, depth: number, rows: Buffer[]) => {
    const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(rows[0]!.length - 1 === 0 ? 0 : (rows[0]!.length - 1) / (colorType === 0 ? 1 : colorType === 2 ? 3 : 4)); ihdr.writeUInt32BE(rows.length, 4);
    ihdr[8] = depth; ihdr[9] = colorType;
    return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(Buffer.concat(rows))), chunk("IEND", Buffer.alloc(0))]);
  };
  it("decodes RGBA with Sub and Up filters, dropping alpha", () => {
    // 2x2 RGBA: row 0 Sub filter, row 1 Up filter
    const img = png(6, 8, [Buffer.from([1, 10, 20, 30, 255, 5, 5, 5, 0]), Buffer.from([2, 1, 1, 1, 0, 1, 1, 1, 0])]);
    const d = decodePng(img);
    expect(d).toMatchObject({ rows: 2, columns: 2, samplesPerPixel: 3 });
    expect([...d.pixels]).toEqual([10, 20, 30, 15, 25, 35, 11, 21, 31, 16, 26, 36]);
  });
  it("refuses 16-bit PNGs with a sentence", () => {
    expect(() => decodePng(png(0, 16, [Buffer.from([0, 1, 2])]))).toThrow(/8-bit gray, RGB or RGBA/);
  });
  it("wraps a gray PNG as Secondary Capture", () => {
    const w = wrapDocument(png(0, 8, [Buffer.from([0, 7, 9])]), { studyInstanceUID: "1.2.3", kind: "other", title: "x", language: "en" }, {});
    expect(w.contentType).toBe("image/png");
    expect(w.part10.includes(Buffer.from("1.2.840.10008.5.1.4.1.1.7"))).toBe(true);
  });
});
