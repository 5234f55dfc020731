import { describe, it, expect, afterAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { Readable } from "node:stream";
import zlib from "node:zlib";
import { PngUnfilter, decodePngFile } from "../../src/documents/png.ts";
import { DocumentTooLarge, EncryptScanner, spoolDocument } from "../../src/documents/spool.ts";
import {
  DocumentRefused, bufferReader, buildWrapper, checkPdf, detectContent, documentSeries, documentUids, readDocumentContent, readJpegHeader, wrappedInstance,
  type DocumentRequest,
} from "../../src/documents/wrap.ts";

const dcmjs = createRequire(import.meta.url)("dcmjs") as {
  data: { DicomMessage: { readFile(b: ArrayBuffer): { dict: unknown; meta: unknown } }; DicomMetaDictionary: { naturalizeDataset(d: unknown): Record<string, any> } };
};

const pdf = Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n\n");
// SOI, SOF0 (8-bit, 16 rows x 24 columns, 3 components, first component sampled 2x2), EOI
const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x10, 0x00, 0x18, 0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "docs-unit-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const spool = (b: Buffer, max = 1 << 20) => spoolDocument(Readable.from([b]), tmp, max);
const req: DocumentRequest = { studyInstanceUID: "1.2.3", kind: "pathology-report", title: "病理报告", language: "zh" };
const studyMetadata = { "00100010": { vr: "PN", Value: [{ Alphabetic: "Zhang^San", Ideographic: "张^三" }] }, "00100020": { vr: "LO", Value: ["CN-1"] } };

/** The whole wrapped instance as one buffer, read back with dcmjs (fine for these few bytes). */
async function wrapAndRead(b: Buffer): Promise<{ bytes: Buffer; ds: Record<string, any>; meta: Record<string, any>; tags: string[] }> {
  const doc = await spool(b);
  const content = await readDocumentContent(doc, doc.path + ".pixels");
  const wrapper = buildWrapper(content, doc.sha256, req, studyMetadata);
  const chunks: Buffer[] = [];
  for await (const c of wrappedInstance(wrapper, content.bulkPath)) chunks.push(c);
  const bytes = Buffer.concat(chunks);
  const read = dcmjs.data.DicomMessage.readFile(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer);
  return { bytes, ds: dcmjs.data.DicomMetaDictionary.naturalizeDataset(read.dict), meta: dcmjs.data.DicomMetaDictionary.naturalizeDataset(read.meta), tags: Object.keys(read.dict as object) };
}

describe("document content", () => {
  it("detects by magic bytes, not name", () => {
    expect(detectContent(pdf)).toBe("application/pdf");
    expect(detectContent(jpeg)).toBe("image/jpeg");
    expect(detectContent(Buffer.from("\x89PNG\r\n\x1a\nxxxx", "latin1"))).toBe("image/png");
    expect(detectContent(Buffer.from("hello, not a report"))).toBeNull();
  });
  it("refuses broken and encrypted PDFs", async () => {
    expect(() => checkPdf(spoolLike("%PDF-1.4\n1 0 obj<<>>endobj\n"))).toThrow(/no %%EOF/);
    expect(() => checkPdf(spoolLike("%PDF-1.4\ntrailer<</Encrypt 5 0 R>>\n%%EOF\n"))).toThrow(/encrypted/);
    const good = await spool(pdf);
    expect(() => checkPdf(good)).not.toThrow();
    // the same checks on the spooled file: the end marker is looked for in the last KiB only
    const long = Buffer.concat([Buffer.from("%PDF-1.4\n%%EOF\n"), Buffer.alloc(5000, 0x20)]);
    expect(() => checkPdf(endsOf(long))).toThrow(/no %%EOF/);
  });
  it("finds /Encrypt across chunk borders", () => {
    const s = new EncryptScanner();
    s.push(Buffer.from("%PDF-1.7 ... trailer << /Enc"));
    expect(s.found).toBe(false);
    s.push(Buffer.from("rypt 12 0 R >>"));
    expect(s.found).toBe(true);
    const clean = new EncryptScanner();
    clean.push(Buffer.from("/Encryption is a word; /Encrypt alone is not a reference"));
    expect(clean.found).toBe(false);
  });
  it("reads a baseline JPEG header, with the photometric interpretation its sampling asks for", async () => {
    expect(await readJpegHeader(bufferReader(jpeg))).toEqual({ rows: 16, columns: 24, components: 3, photometricInterpretation: "YBR_FULL_422" });
    const full = Buffer.from(jpeg); full[13] = 0x11;
    expect((await readJpegHeader(bufferReader(full))).photometricInterpretation).toBe("YBR_FULL");
    const progressive = Buffer.from(jpeg); progressive[3] = 0xc2;
    await expect(readJpegHeader(bufferReader(progressive))).rejects.toThrow(DocumentRefused);
  });
  it("derives the same UIDs for the same study, kind and bytes; PDFs and photos of a kind are two series", () => {
    const a = documentUids("1.2.3", "pathology-report", "ab"), b = documentUids("1.2.3", "pathology-report", "ab");
    expect(a).toEqual(b);
    expect(documentUids("1.2.3", "radiology-report", "ab").seriesInstanceUID).not.toBe(a.seriesInstanceUID);
    expect(documentUids("1.2.3", "pathology-report", "cd").seriesInstanceUID).toBe(a.seriesInstanceUID);
    const photo = documentUids("1.2.3", "pathology-report", "ab", "image");
    expect(photo.seriesInstanceUID).not.toBe(a.seriesInstanceUID);
    expect(photo.sopInstanceUID).toBe(a.sopInstanceUID);
    expect(documentSeries("1.2.3").get(photo.seriesInstanceUID)).toBe("pathology-report");
    expect(documentSeries("1.2.3").size).toBe(12);
  });
  it("refuses content that is not PDF, JPEG or PNG with a sentence", async () => {
    const doc = await spool(Buffer.from("plain text"));
    await expect(readDocumentContent(doc, doc.path + ".px")).rejects.toThrow(/not a PDF, JPEG or PNG/);
  });
});

describe("spooling a document", () => {
  it("hashes, counts and keeps the ends of the body in one pass", async () => {
    const body = Buffer.concat([Buffer.from("%PDF-1.4\n"), Buffer.alloc(300_000, 0x41), Buffer.from("\n%%EOF\n")]);
    const pieces = [body.subarray(0, 7), body.subarray(7, 150_000), body.subarray(150_000)];
    const doc = await spoolDocument(Readable.from(pieces), tmp, 1 << 20);
    expect(doc.size).toBe(body.length);
    expect(fs.readFileSync(doc.path).equals(body)).toBe(true);
    expect(doc.sha256).toBe((await import("node:crypto")).createHash("sha256").update(body).digest("hex"));
    expect(doc.head.subarray(0, 9).toString()).toBe("%PDF-1.4\n");
    expect(doc.tail.toString("latin1").endsWith("%%EOF\n")).toBe(true);
    expect(doc.tail.length).toBe(1024);
  });
  it("stops at the limit and keeps nothing", async () => {
    const before = fs.readdirSync(tmp).length;
    await expect(spoolDocument(Readable.from([Buffer.alloc(600), Buffer.alloc(600)]), tmp, 1000)).rejects.toBeInstanceOf(DocumentTooLarge);
    expect(fs.readdirSync(tmp).length).toBe(before);
  });
});

describe("the wrapped instance", () => {
  it("a PDF: Encapsulated PDF Storage, UTF-8, the kind's code, the bytes unchanged and padded to even length", async () => {
    const odd = Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n");
    expect(odd.length % 2).toBe(1);
    const { ds, meta } = await wrapAndRead(odd);
    expect(meta.TransferSyntaxUID).toBe("1.2.840.10008.1.2.1");
    expect(ds.SOPClassUID).toBe("1.2.840.10008.5.1.4.1.1.104.1");
    expect(ds.SpecificCharacterSet).toBe("ISO_IR 192");
    expect(ds.Modality).toBe("DOC");
    expect(ds.DocumentTitle).toBe("病理报告");
    expect([ds.ConceptNameCodeSequence].flat()[0]).toMatchObject({ CodeValue: "11526-1", CodingSchemeDesignator: "LN" });
    expect(ds.PatientID).toBe("CN-1");
    expect(ds.EncapsulatedDocumentLength).toBe(odd.length);
    const stored = Buffer.from(ds.EncapsulatedDocument[0] as ArrayBuffer);
    expect(stored.length).toBe(odd.length + 1);
    expect(stored.subarray(0, odd.length).equals(odd)).toBe(true);
  });
  it("Type 2 attributes the study lacks are present and empty (Patient, General Study; the IOD's own)", async () => {
    // studyMetadata has only PatientName and PatientID
    const type2 = ["00100030", "00100040", "00080020", "00080030", "00080050", "00080090", "00200010"];
    const pdfDoc = await wrapAndRead(pdf);
    expect(type2.filter((t) => !pdfDoc.tags.includes(t))).toEqual([]);
    for (const keyword of ["PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"]) {
      expect([pdfDoc.ds[keyword] ?? ""].flat().join(""), keyword).toBe("");
    }
    expect(pdfDoc.tags).toContain("0008002A"); // AcquisitionDateTime
    const photo = await wrapAndRead(jpeg);
    expect(photo.tags).toContain("00200020"); // PatientOrientation
    expect(photo.tags).not.toContain("00200060"); // Laterality: a report is no paired body part
    expect(photo.ds.PatientID).toBe("CN-1");
  });

  it("a JPEG: Secondary Capture with the JPEG as its one fragment", async () => {
    const { ds, meta } = await wrapAndRead(jpeg);
    expect(meta.TransferSyntaxUID).toBe("1.2.840.10008.1.2.4.50");
    expect(ds.SOPClassUID).toBe("1.2.840.10008.5.1.4.1.1.7");
    expect(ds).toMatchObject({ Modality: "OT", Rows: 16, Columns: 24, SamplesPerPixel: 3, PhotometricInterpretation: "YBR_FULL_422" });
    const frame = Buffer.concat((ds.PixelData as ArrayBuffer[]).map((f) => Buffer.from(f)));
    expect(frame.subarray(0, jpeg.length).equals(jpeg)).toBe(true);
  });
  it("a PNG: Secondary Capture with its decoded pixels", async () => {
    // 2x2 RGB, row 0 filter None, row 1 filter Up
    const { ds } = await wrapAndRead(png(2, 8, [Buffer.from([0, 1, 2, 3, 4, 5, 6]), Buffer.from([2, 1, 1, 1, 1, 1, 1])]));
    expect(ds).toMatchObject({ Rows: 2, Columns: 2, SamplesPerPixel: 3, PhotometricInterpretation: "RGB", Modality: "OT" });
    expect(Number(ds.SeriesNumber)).toBe(9102);
    expect([...Buffer.from([ds.PixelData].flat()[0] as ArrayBuffer)]).toEqual([1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 7]);
  });
});

const chunk = (type: string, data: Buffer) => {
  const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
  return Buffer.concat([len, Buffer.from(type, "latin1"), data, Buffer.alloc(4)]); // CRC not checked
};
function png(colorType: number, depth: number, rows: Buffer[], idat?: Buffer) {
  const channels = colorType === 0 ? 1 : colorType === 2 ? 3 : 4;
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE((rows[0]!.length - 1) / channels); ihdr.writeUInt32BE(rows.length, 4);
  ihdr[8] = depth; ihdr[9] = colorType;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", idat ?? zlib.deflateSync(Buffer.concat(rows))), chunk("IEND", Buffer.alloc(0))]);
}
const decode = async (b: Buffer) => {
  const src = path.join(tmp, `png-${Math.random()}.png`), dest = src + ".px";
  fs.writeFileSync(src, b);
  const d = await decodePngFile(src, dest);
  return { ...d, pixels: fs.readFileSync(dest) };
};
function spoolLike(text: string) {
  const b = Buffer.from(text, "latin1");
  const s = new EncryptScanner(); s.push(b);
  return { tail: b.subarray(-1024), mentionsEncrypt: s.found };
}
const endsOf = (b: Buffer) => ({ tail: b.subarray(-1024), mentionsEncrypt: false });

describe("PNG photos", () => {
  it("decodes RGBA with Sub and Up filters, dropping alpha", async () => {
    // 2x2 RGBA: row 0 Sub filter, row 1 Up filter
    const d = await decode(png(6, 8, [Buffer.from([1, 10, 20, 30, 255, 5, 5, 5, 0]), Buffer.from([2, 1, 1, 1, 0, 1, 1, 1, 0])]));
    expect(d).toMatchObject({ rows: 2, columns: 2, samplesPerPixel: 3, length: 12 });
    expect([...d.pixels]).toEqual([10, 20, 30, 15, 25, 35, 11, 21, 31, 16, 26, 36]);
  });
  it("unfilters rows fed in pieces of any size the same way (Average and Paeth too)", () => {
    const raw = Buffer.from([3, 10, 20, 30, 40, 4, 1, 2, 3, 4, 1, 5, 5, 5, 5]); // gray, 4 columns, 3 rows: Average, Paeth, Sub
    const whole = new PngUnfilter(4, 3, 1).push(raw);
    const u = new PngUnfilter(4, 3, 1);
    const pieces: Buffer[] = [];
    for (let i = 0; i < raw.length; i += 2) pieces.push(...u.push(raw.subarray(i, i + 2)));
    expect(Buffer.concat(pieces).equals(Buffer.concat(whole))).toBe(true);
    expect(whole.map((r) => [...r])).toEqual([[10, 25, 42, 61], [11, 27, 45, 65], [5, 10, 15, 20]]);
    expect(u.done).toBe(true);
  });
  it("refuses 16-bit, broken and short PNGs with a sentence", async () => {
    await expect(decode(png(0, 16, [Buffer.from([0, 1, 2])]))).rejects.toThrow(/8-bit gray, RGB or RGBA/);
    await expect(decode(png(0, 8, [Buffer.from([0, 1, 2])], Buffer.from("not deflate data")))).rejects.toThrow(/does not decompress/);
    await expect(decode(png(0, 8, [Buffer.from([0, 1, 2]), Buffer.from([0, 1, 2])], zlib.deflateSync(Buffer.from([0, 1, 2]))))).rejects.toThrow(/short/);
  });
  it("keeps only the declared rows of an image whose data inflates to far more (a deflate bomb)", async () => {
    // one 4-pixel row declared, 50 MB of zeros behind it in the stream
    const d = await decode(png(0, 8, [Buffer.from([0, 0, 0, 0, 0])], zlib.deflateSync(Buffer.alloc(50_000_000))));
    expect(d.length).toBe(4);
    expect(d.pixels.length).toBe(4);
  });
});
