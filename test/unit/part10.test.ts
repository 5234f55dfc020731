import crypto from "node:crypto";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import iconv from "iconv-lite";
import { describe, expect, it } from "vitest";
import { chunksSource, fileSource, readBareDataset, readPart10 } from "../../src/dicom/part10.ts";
import { FailureReason } from "../../src/dicom/failureReasons.ts";
import { transferSyntaxInfo } from "../../src/dicom/transferSyntax.ts";
import { BULK_ROOT_PLACEHOLDER, type DicomJsonDataset } from "../../src/dicom/types.ts";
import { encodeDataset, encodeFileMeta, makeInstance, newUid, rleEncodeFrame, tagOf, type WriterElement } from "../../scripts/lib/synthetic.ts";
import { countingSource, H31_YAMADA, handMade, minimalElements, parse, READ_OPTS, rejection, TS } from "../support/fixtures.ts";


const value = (ds: DicomJsonDataset, tag: string) => ds[tag]?.Value;

/** A Deflated Explicit VR Little Endian file of these elements (raw deflate after the file meta, PS3.5 A.5). */
function deflatedFile(elements: WriterElement[]): Buffer {
  const f = handMade(elements, { transferSyntaxUID: TS.deflated });
  const metaEnd = 144 + f.readUInt32LE(140); // after (0002,0000) UL and the group it counts
  return Buffer.concat([f.subarray(0, metaEnd), zlib.deflateRawSync(f.subarray(metaEnd))]);
}

/** The bytes of every frame, read back through the locations the reader reported. */
function frameBytes(file: Buffer, frames: Array<Array<{ offset: number; length: number }>>): Buffer[] {
  return frames.map((runs) => Buffer.concat(runs.map((r) => file.subarray(r.offset, r.offset + r.length))));
}

describe("readPart10: encodings", () => {
  const common = { rows: 16, columns: 16, frames: 2, modality: "CT", patientName: "Zhang^San=张^三", charset: "GB18030" as const, seed: 7 };

  it("reads an explicit VR little endian CT into DICOM JSON with the right types", async () => {
    const study = newUid(), series = newUid(), sop = newUid();
    const bytes = makeInstance({ ...common, studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, extra: { FrameIncrementPointer: 0x00181063 } });
    const p = await parse(bytes);
    expect(p).toMatchObject({ transferSyntaxUID: TS.explicitLE, studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, sopClassUID: "1.2.840.10008.5.1.4.1.1.7.3" });
    const ds = p.dataset;
    expect(value(ds, "00100010")).toEqual([{ Alphabetic: "Zhang^San", Ideographic: "张^三" }]);
    expect(value(ds, "00080005")).toEqual(["GB18030"]);
    expect(value(ds, "00281052")).toEqual([-1024]); // DS as a number
    expect(value(ds, "00200013")).toEqual([1]); // IS
    expect(value(ds, "00280010")).toEqual([16]); // US
    expect(value(ds, "00200032")).toEqual([-180, -180, -1.25]);
    expect(value(ds, "00280009")).toEqual(["00181063"]); // AT as hex
    expect(ds["00081032"]).toEqual({ vr: "SQ", Value: [{ "00080100": { vr: "SH", Value: ["RPID16"] }, "00080102": { vr: "SH", Value: ["RADLEX"] }, "00080104": { vr: "LO", Value: ["CT CHEST W/O CONTRAST"] } }] });
    expect(ds["00091001"]!.vr).toBe("OB");
    expect(Buffer.from(ds["00091001"]!.InlineBinary!, "base64").toString("latin1")).toMatch(/^synthetic:/);
    expect(ds["7FE00010"]).toEqual({ vr: "OW", BulkDataURI: `${BULK_ROOT_PLACEHOLDER}/studies/${study}/series/${series}/instances/${sop}/bulkdata/7FE00010` });
    // keys sorted, no dcmjs internals anywhere
    expect(Object.keys(ds)).toEqual([...Object.keys(ds)].sort());
    expect(JSON.stringify(ds)).not.toMatch(/_rawValue|_vrMap/);
    expect(p.fileMeta["00020010"]).toEqual({ vr: "UI", Value: [TS.explicitLE] });
    expect(p.fileMeta["00020003"]).toEqual({ vr: "UI", Value: [sop] });
    expect(p.pixelData).toEqual({ offset: expect.any(Number), length: 1024, encapsulated: false, frames: [[{ offset: p.pixelData!.offset, length: 512 }], [{ offset: p.pixelData!.offset + 512, length: 512 }]] });
    expect(p.bulkData).toEqual([{ tag: "7FE00010", vr: "OW", offset: p.pixelData!.offset, length: 1024 }]);
  });

  it("gives the same metadata for implicit VR LE, explicit VR BE and explicit VR LE", async () => {
    const uids = { studyInstanceUID: newUid(), seriesInstanceUID: newUid(), sopInstanceUID: newUid() };
    const [le, ile, be] = await Promise.all([TS.explicitLE, TS.implicitLE, TS.explicitBE].map((ts) =>
      parse(makeInstance({ ...common, ...uids, transferSyntaxUID: ts, undefinedLengthSequences: ts === TS.implicitLE }))));
    const strip = (ds: DicomJsonDataset) => {
      const c = { ...ds };
      delete c["00091001"]; // private: OB in explicit, UN in implicit (no dictionary VR)
      return c;
    };
    expect(strip(ile!.dataset)).toEqual(strip(le!.dataset));
    expect(strip(be!.dataset)).toEqual(strip(le!.dataset));
    expect(ile!.dataset["00091001"]).toEqual({ vr: "UN", InlineBinary: le!.dataset["00091001"]!.InlineBinary });
    expect(be!.transferSyntaxUID).toBe(TS.explicitBE);
    expect(be!.pixelData!.frames.map((f) => f[0]!.length)).toEqual([512, 512]);
  });

  it("reads implicit VR US/SS (xs) attributes by PixelRepresentation", async () => {
    const els: WriterElement[] = [...minimalElements(),
      { tag: tagOf(0x0028, 0x0103), vr: "US", value: 1 },
      { tag: tagOf(0x0028, 0x0106), vr: "SS", value: -100 }];
    const p = await parse(handMade(els, { transferSyntaxUID: TS.implicitLE, explicitVR: false }));
    expect(p.dataset["00280106"]).toEqual({ vr: "SS", Value: [-100] });
  });

  it("walks nested undefined-length sequences and items", async () => {
    const bytes = makeInstance({ ...common, undefinedLengthSequences: true, extra: { OtherPatientIDsSequence: [{ PatientID: "A", OtherPatientIDsSequence: [{ PatientID: "B", OtherPatientIDsSequence: [] }] }, {}] } });
    const p = await parse(bytes);
    expect(p.dataset["00101002"]).toEqual({
      vr: "SQ",
      Value: [{ "00100020": { vr: "LO", Value: ["A"] }, "00101002": { vr: "SQ", Value: [{ "00100020": { vr: "LO", Value: ["B"] }, "00101002": { vr: "SQ" } }] } }, {}],
    });
    expect(p.pixelData!.frames).toHaveLength(2);
  });

  it("locates binary values inside sequence items (waveform data) as bulk data with a path; small ones stay inline", async () => {
    const wave = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * seed) & 0xff));
    for (const [explicitVR, undefinedLength, deflated] of [[true, false, false], [true, true, false], [false, true, false], [true, true, true]] as const) {
      const big0 = wave(3000, 7), big1 = wave(2048, 13), small = wave(16, 3);
      const item = (data: Buffer) => [{ tag: tagOf(0x003a, 0x0005), vr: "US", value: 1 }, { tag: tagOf(0x5400, 0x1010), vr: "OW", value: data }];
      const els: WriterElement[] = [...minimalElements(), { tag: tagOf(0x5400, 0x0100), vr: "SQ", value: [item(big0), item(small), item(big1)], undefinedLength }];
      const file = deflated ? deflatedFile(els) : handMade(els, explicitVR ? {} : { transferSyntaxUID: TS.implicitLE, explicitVR: false });
      const p = await parse(file);
      const what = `explicit ${explicitVR}, undefined length ${undefinedLength}, deflated ${deflated}`;
      // positions of a deflated data set are in the inflated data set
      const data = deflated ? Buffer.concat([file.subarray(0, p.bulkData[0]!.inflatedFrom!), zlib.inflateRawSync(file.subarray(p.bulkData[0]!.inflatedFrom!))]) : file;
      if (deflated) expect(p.bulkData.every((b) => b.inflatedFrom !== undefined), what).toBe(true);
      const items = p.dataset["54000100"]!.Value as DicomJsonDataset[];
      expect(items, what).toHaveLength(3);
      expect(items[0]!["54001010"]!.BulkDataURI, what).toMatch(/\/bulkdata\/54000100\/0\/54001010$/);
      expect(items[2]!["54001010"]!.BulkDataURI, what).toMatch(/\/bulkdata\/54000100\/2\/54001010$/);
      expect(items[1]!["54001010"]!.InlineBinary, what).toBe(small.toString("base64"));
      expect(items[0]!["003A0005"]!.Value, what).toEqual([1]);
      const located = Object.fromEntries(p.bulkData.map((b) => [b.tag, deflated ? data.subarray(b.inflatedFrom! + b.offset, b.inflatedFrom! + b.offset + b.length) : data.subarray(b.offset, b.offset + b.length)]));
      expect(located["54000100/0/54001010"], what).toEqual(big0);
      expect(located["54000100/2/54001010"], what).toEqual(big1);
      expect(Object.keys(located), what).not.toContain("54000100/1/54001010");
    }
  });

  it("reads a sequence written as UN with a defined length (implicit VR items; gdcmconv output, issue 16)", async () => {
    const inner = encodeDataset([{ tag: tagOf(0x0008, 0x1150), vr: "UI", value: "1.2.840.10008.5.1.4.1.1.481.5" }, { tag: tagOf(0x0008, 0x1155), vr: "UI", value: "1.2.3.4" }], { explicitVR: false, littleEndian: true });
    const item = Buffer.alloc(8);
    item.writeUInt32LE(0xe000fffe, 0);
    item.writeUInt32LE(inner.length, 4);
    // ReferencedRTPlanSequence (300C,0002), dictionary VR SQ, written as UN with the items' length
    const els: WriterElement[] = [...minimalElements(), { tag: tagOf(0x300c, 0x0002), vr: "UN", value: Buffer.concat([item, inner]) }];
    const p = await parse(handMade(els));
    expect(p.dataset["300C0002"]).toEqual({ vr: "SQ", Value: [{ "00081150": { vr: "UI", Value: ["1.2.840.10008.5.1.4.1.1.481.5"] }, "00081155": { vr: "UI", Value: ["1.2.3.4"] } }] });
  });

  it("reads a UN element of undefined length (an implicit VR sequence inside an explicit data set)", async () => {
    const inner = encodeDataset([{ tag: tagOf(0x0011, 0x0010), vr: "LO", value: "PRIVATE" }], { explicitVR: false, littleEndian: true });
    const item = Buffer.alloc(8);
    item.writeUInt32LE(0xe000fffe, 0);
    item.writeUInt32LE(0xffffffff, 4);
    const itemEnd = Buffer.from([0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0]);
    const seqEnd = Buffer.from([0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
    const els: WriterElement[] = [...minimalElements(), { tag: tagOf(0x0011, 0x1001), vr: "UN", value: Buffer.concat([item, inner, itemEnd, seqEnd]), undefinedLength: true }];
    const p = await parse(handMade(els));
    expect(p.dataset["00111001"]).toEqual({ vr: "SQ", Value: [{ "00110010": { vr: "LO", Value: ["PRIVATE"] } }] });
  });

  it("accepts a deflated data set and locates its pixel data in the inflated data set", async () => {
    const ok = await parse(makeInstance({ ...common, transferSyntaxUID: TS.deflated, noPixelData: true }));
    expect(ok.transferSyntaxUID).toBe(TS.deflated);
    expect(value(ok.dataset, "00100010")).toEqual([{ Alphabetic: "Zhang^San", Ideographic: "张^三" }]);
    expect(ok.pixelData).toBeNull();
    expect(ok.bulkData).toEqual([]);

    const file = makeInstance({ ...common, transferSyntaxUID: TS.deflated });
    const plain = makeInstance({ ...common, transferSyntaxUID: TS.explicitLE });
    const p = await parse(file);
    const q = await parse(plain);
    const metaEnd = file.indexOf(Buffer.from("DICOMRELAY_01")) + "DICOMRELAY_01".length + 1;
    const inflated = zlib.inflateRawSync(file.subarray(metaEnd));
    expect(p.pixelData!.inflatedFrom).toBe(metaEnd);
    expect(p.pixelData!.frames).toHaveLength(2);
    // the frames, read from the inflated data set, are those of the same instance written uncompressed
    expect(frameBytes(inflated, p.pixelData!.frames)).toEqual(frameBytes(plain, q.pixelData!.frames));
    expect(p.bulkData).toEqual([expect.objectContaining({ tag: "7FE00010", inflatedFrom: metaEnd })]);
    expect(p.dataset["7FE00010"]!.BulkDataURI).toMatch(/\/bulkdata\/7FE00010$/);
    expect(value(p.dataset, "00100010")).toEqual([{ Alphabetic: "Zhang^San", Ideographic: "张^三" }]);
  });

  it("bounds a deflated data set: its inflated size (0xA700) and its header (0xA700); a damaged stream is 0xC000", async () => {
    const file = makeInstance({ ...common, rows: 64, columns: 64, transferSyntaxUID: TS.deflated });
    const big = await rejection(file, { maxInflatedBytes: 8 * 1024 });
    expect(big.reason).toBe(FailureReason.OutOfResources);
    expect(big.message).toMatch(/inflates to more than the relay accepts \(8192 bytes\)/);
    const header = await rejection(file, { maxHeaderBytes: 256 });
    expect(header.reason).toBe(FailureReason.OutOfResources);
    expect(header.message).toMatch(/header .* is larger than the relay parses in memory \(256 bytes\)/);
    const cut = await rejection(file.subarray(0, file.length - 200));
    expect(cut.reason).toBe(FailureReason.CannotUnderstand);
    expect(cut.message).toMatch(/the deflated data set could not be inflated .*damaged or truncated/);
  });

  it("reads pydicom's image_dfl.dcm (Deflated Explicit VR LE with pixel data) as pydicom does", async () => {
    const file = await fsp.readFile("/usr/lib/python3/dist-packages/pydicom/data/test_files/image_dfl.dcm");
    const p = await parse(file);
    expect(p).toMatchObject({ transferSyntaxUID: TS.deflated, sopInstanceUID: "1.3.6.1.4.1.5962.1.1.0.0.0.977067309.6001.0" });
    expect(value(p.dataset, "00280010")).toEqual([512]);
    const metaEnd = p.pixelData!.inflatedFrom!;
    const pixels = frameBytes(zlib.inflateRawSync(file.subarray(metaEnd)), p.pixelData!.frames)[0]!;
    // sha256 of pydicom's ds.PixelData (pydicom 2.3.1)
    expect(crypto.createHash("sha256").update(pixels).digest("hex")).toBe("1f5f1b1c1a57606a55d7e4212ee2655c8205b45e264bd55057f7388c258deef8");
  });

  it("trusts the bytes when an implicit VR data set is labelled explicit", async () => {
    const bytes = handMade(minimalElements(), { transferSyntaxUID: TS.explicitLE, explicitVR: false });
    const p = await parse(bytes);
    expect(value(p.dataset, "00100020")).toEqual(["HAND-1"]);
  });
});

describe("readPart10: character sets", () => {
  it("decodes ISO 2022 IR 13 half-width katakana beside JIS X 0208 (PS3.5 H.3.1), in PN and LO, implicit VR too", async () => {
    for (const explicitVR of [true, false]) {
      const els: WriterElement[] = [
        { tag: tagOf(0x0008, 0x0005), vr: "CS", value: ["ISO 2022 IR 13", "ISO 2022 IR 87"] },
        ...minimalElements().filter((e) => e.tag !== tagOf(0x0010, 0x0020)),
        { tag: tagOf(0x0010, 0x0010), vr: "PN", value: H31_YAMADA },
        { tag: tagOf(0x0010, 0x0020), vr: "LO", value: Buffer.from("d4cfc0de", "hex") },
      ].sort((x, y) => x.tag - y.tag);
      const p = await parse(handMade(els, { explicitVR }));
      expect(p.dataset["00100010"], `explicit ${explicitVR}`).toEqual({ vr: "PN", Value: [{ Alphabetic: "ﾔﾏﾀﾞ^ﾀﾛｳ", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう" }] });
      expect(p.dataset["00100020"]).toEqual({ vr: "LO", Value: ["ﾔﾏﾀﾞ"] });
      expect(JSON.stringify(p.dataset)).not.toContain("\ufffd");
    }
  });

  it("decodes text inside sequence items at any depth in the data set's character set, and an item's own SpecificCharacterSet within that item (PS3.5 7.5.3)", async () => {
    const katakana = Buffer.from("d4cfc0de5ec0dbb3", "hex"); // ﾔﾏﾀﾞ^ﾀﾛｳ
    const yamada = { Alphabetic: "ﾔﾏﾀﾞ^ﾀﾛｳ", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう" };
    const pn = (v: Buffer): WriterElement => ({ tag: tagOf(0x0010, 0x0010), vr: "PN", value: v });
    const lo = (v: Buffer): WriterElement => ({ tag: tagOf(0x0040, 0x1001), vr: "SH", value: v }); // RequestedProcedureID
    const sq = (g: number, e: number, items: WriterElement[][]): WriterElement => ({ tag: tagOf(g, e), vr: "SQ", value: items });
    const ir13 = { tag: tagOf(0x0008, 0x0005), vr: "CS", value: ["ISO 2022 IR 13", "ISO 2022 IR 87"] };
    for (const explicitVR of [true, false]) {
      for (const undefinedLengthSequences of [false, true]) {
        const label = `explicit ${explicitVR}, undefined lengths ${undefinedLengthSequences}`;
        // the data set in IR 13 \ IR 87: an item (ReferencedPatientSequence), an item of an item (RequestAttributesSequence > ReferencedStudySequence)
        const inDataSet: WriterElement[] = [ir13, ...minimalElements(), pn(H31_YAMADA),
          sq(0x0008, 0x1120, [[pn(H31_YAMADA), lo(katakana)]]),
          sq(0x0040, 0x0275, [[lo(katakana), sq(0x0008, 0x1110, [[pn(H31_YAMADA)]])]])];
        const a = await parse(Buffer.concat([encodeFileMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUID: "1.2.3", transferSyntaxUID: explicitVR ? TS.explicitLE : TS.implicitLE }),
          encodeDataset(inDataSet, { explicitVR, littleEndian: true, undefinedLengthSequences })]));
        expect(value(a.dataset, "00100010"), label).toEqual([yamada]);
        const ref = value(a.dataset, "00081120")![0] as DicomJsonDataset;
        expect(ref["00100010"], label).toEqual({ vr: "PN", Value: [yamada] });
        expect(ref["00401001"], label).toEqual({ vr: "SH", Value: ["ﾔﾏﾀﾞ^ﾀﾛｳ"] });
        const req = value(a.dataset, "00400275")![0] as DicomJsonDataset;
        expect(req["00401001"], label).toEqual({ vr: "SH", Value: ["ﾔﾏﾀﾞ^ﾀﾛｳ"] });
        expect(((req["00081110"]!.Value![0] as DicomJsonDataset)["00100010"]), label).toEqual({ vr: "PN", Value: [yamada] });
        expect(JSON.stringify(a.dataset), label).not.toMatch(/\ufffd|\u00d4/);

        // no SpecificCharacterSet in the data set; the first item has its own, which also applies to its nested item;
        // the second item has none: Latin-1 there (PS3.5 7.5.3)
        const inItem: WriterElement[] = [...minimalElements(),
          sq(0x0040, 0x0275, [
            [ir13, pn(H31_YAMADA), sq(0x0008, 0x1110, [[lo(katakana)]])],
            [lo(Buffer.from("M\xfcller", "latin1"))],
          ])];
        const b = await parse(Buffer.concat([encodeFileMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUID: "1.2.3", transferSyntaxUID: explicitVR ? TS.explicitLE : TS.implicitLE }),
          encodeDataset(inItem, { explicitVR, littleEndian: true, undefinedLengthSequences })]));
        const [own, plain] = value(b.dataset, "00400275") as DicomJsonDataset[];
        expect(own!["00080005"], label).toEqual({ vr: "CS", Value: ["ISO 2022 IR 13", "ISO 2022 IR 87"] });
        expect(own!["00100010"], label).toEqual({ vr: "PN", Value: [yamada] });
        expect((own!["00081110"]!.Value![0] as DicomJsonDataset)["00401001"], label).toEqual({ vr: "SH", Value: ["ﾔﾏﾀﾞ^ﾀﾛｳ"] });
        expect(plain!["00401001"], label).toEqual({ vr: "SH", Value: ["Müller"] });
        expect(b.dataset["00080005"]).toBeUndefined();
      }
    }
  });

  it("decodes pydicom's chrSQEncoding*.dcm: IR 13 \\ IR 87 in a sequence item, as the item's own set (data set UTF-8) and as the data set's", async () => {
    const yamada = { Alphabetic: "ﾔﾏﾀﾞ^ﾀﾛｳ", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう" };
    for (const [name, itemCharset] of [["chrSQEncoding.dcm", true], ["chrSQEncoding1.dcm", false]] as const) {
      const file = await fsp.readFile(`/usr/lib/python3/dist-packages/pydicom/data/charset_files/${name}`);
      // fragments without SOP class or UIDs (STOW refuses them): read as a bare data set, the same decoding
      const ds = await readBareDataset(file.subarray(144 + file.readUInt32LE(140)), TS.explicitLE, READ_OPTS);
      expect(value(ds, "00080005"), name).toEqual(itemCharset ? ["ISO_IR 192"] : ["ISO 2022 IR 13", "ISO 2022 IR 87"]);
      expect(value(ds, "00321032"), name).toEqual([{ Alphabetic: "Doctor^Who^^MD" }]);
      const item = value(ds, "00321064")![0] as DicomJsonDataset;
      expect(item["00100010"], name).toEqual({ vr: "PN", Value: [yamada] });
      expect(item["00080005"], name).toEqual(itemCharset ? { vr: "CS", Value: ["ISO 2022 IR 13", "ISO 2022 IR 87"] } : undefined);
    }
  });

  it("decodes UTF-8 and GB18030 text inside sequence items (dcmjs alone reads items as Latin-1)", async () => {
    for (const [charset, text] of [["ISO_IR 192", "Müller^陈"], ["GB18030", "张^三"]] as const) {
      const els: WriterElement[] = [{ tag: tagOf(0x0008, 0x0005), vr: "CS", value: charset }, ...minimalElements(),
        { tag: tagOf(0x0008, 0x1120), vr: "SQ", value: [[{ tag: tagOf(0x0010, 0x0010), vr: "PN", value: text }, { tag: tagOf(0x0010, 0x0020), vr: "LO", value: ["ID-1", "ASCII only"] }]] }];
      const p = await parse(handMade(els, { charset }));
      const item = value(p.dataset, "00081120")![0] as DicomJsonDataset;
      expect(item["00100010"], charset).toEqual({ vr: "PN", Value: [{ Alphabetic: text }] });
      expect(item["00100020"], charset).toEqual({ vr: "LO", Value: ["ID-1", "ASCII only"] });
    }
  });

  const cases = [
    { charset: "GB18030" as const, name: "Zhang^San=张^三", bytes: iconv.encode("张", "gb18030") },
    { charset: "GBK" as const, name: "Li^Na=李^娜", bytes: iconv.encode("李", "gbk") },
    { charset: "ISO_IR 192" as const, name: "Chen^Jing=陈^静", bytes: Buffer.from("陈", "utf8") },
    { charset: "ISO_IR 100" as const, name: "Müller^Jürgen", bytes: Buffer.from("ü", "latin1") },
  ];
  for (const c of cases) {
    it(`decodes ${c.charset} person names written in that encoding`, async () => {
      const file = makeInstance({ rows: 8, columns: 8, patientName: c.name, charset: c.charset });
      expect(file.includes(c.bytes)).toBe(true); // really encoded, not UTF-8
      const p = await parse(file);
      const [alphabetic, ideographic] = c.name.split("=");
      expect(value(p.dataset, "00100010")).toEqual([ideographic ? { Alphabetic: alphabetic, Ideographic: ideographic } : { Alphabetic: alphabetic }]);
      expect(value(p.dataset, "00080005")).toEqual([c.charset]);
    });
  }

  it("decodes ISO 2022 IR 58 code extensions (GB2312 after escapes) and keeps the original values", async () => {
    const esc = Buffer.from([0x1b, 0x24, 0x29, 0x41]);
    const pn = Buffer.concat([Buffer.from("Zhang^San="), esc, iconv.encode("张", "gb2312"), Buffer.from("^"), esc, iconv.encode("三", "gb2312")]);
    const els: WriterElement[] = [...minimalElements(),
      { tag: tagOf(0x0008, 0x0005), vr: "CS", value: ["", "ISO 2022 IR 58"] },
      { tag: tagOf(0x0010, 0x0010), vr: "PN", value: pn }];
    const p = await parse(handMade(els));
    expect(value(p.dataset, "00100010")).toEqual([{ Alphabetic: "Zhang^San", Ideographic: "张^三" }]);
    expect(value(p.dataset, "00080005")).toEqual([null, "ISO 2022 IR 58"]);
  });

  it("does not fail on a SpecificCharacterSet it does not know", async () => {
    const els: WriterElement[] = [...minimalElements(),
      { tag: tagOf(0x0008, 0x0005), vr: "CS", value: ["ISO_IR 999", "WHATEVER"] },
      { tag: tagOf(0x0010, 0x0010), vr: "PN", value: Buffer.from("Doe^Jane") }];
    const p = await parse(handMade(els));
    expect(value(p.dataset, "00100010")).toEqual([{ Alphabetic: "Doe^Jane" }]);
    expect(value(p.dataset, "00080005")).toEqual(["ISO_IR 999", "WHATEVER"]);
    // in a sequence item too (dcmjs, given it, would refuse the data set): Latin-1 there, the value kept as written
    const nested = await parse(handMade([...minimalElements(), { tag: tagOf(0x0008, 0x1120), vr: "SQ", value: [[
      { tag: tagOf(0x0008, 0x0005), vr: "CS", value: ["ISO_IR 999", "WHATEVER"] }, { tag: tagOf(0x0010, 0x0010), vr: "PN", value: Buffer.from("J\xe9r\xf4me", "latin1") }]] }]));
    expect(value(nested.dataset, "00081120")).toEqual([{ "00080005": { vr: "CS", Value: ["ISO_IR 999", "WHATEVER"] }, "00100010": { vr: "PN", Value: [{ Alphabetic: "Jérôme" }] } }]);
  });
});

describe("readPart10: bulk data and frames", () => {
  it("locates binary elements at or above the threshold as bulk data, keeps smaller ones inline", async () => {
    const big = Buffer.alloc(4000, 7);
    const small = Buffer.alloc(16, 9);
    const els: WriterElement[] = [...minimalElements(),
      { tag: tagOf(0x0042, 0x0011), vr: "OB", value: big },
      { tag: tagOf(0x0019, 0x0010), vr: "LO", value: "X" },
      { tag: tagOf(0x0019, 0x1001), vr: "OB", value: small }];
    const file = handMade(els);
    const p = await parse(file, { bulkDataThreshold: 1024 });
    const loc = p.bulkData.find((b) => b.tag === "00420011")!;
    expect(loc).toMatchObject({ vr: "OB", length: 4000 });
    expect(file.subarray(loc.offset, loc.offset + loc.length).equals(big)).toBe(true);
    expect(p.dataset["00420011"]!.BulkDataURI).toMatch(new RegExp(`^${BULK_ROOT_PLACEHOLDER}/studies/.+/bulkdata/00420011$`));
    expect(p.dataset["00191001"]).toEqual({ vr: "OB", InlineBinary: small.toString("base64") });
    expect(p.pixelData).toBeNull();
  });

  it("never reads the pixel data of a 512x512 CT (positional reads of the header only)", async () => {
    const file = makeInstance({ rows: 512, columns: 512, modality: "CT" });
    const c = countingSource(file);
    const p = await readPart10(c.source, READ_OPTS);
    expect(p.pixelData!.length).toBe(512 * 512 * 2);
    expect(c.bytesRead()).toBeLessThanOrEqual(64 * 1024);
  });

  it("computes native frames for 8-bit RGB and for 1-bit frames that do not end on a byte", async () => {
    const rgb = await parse(makeInstance({ rows: 4, columns: 6, samplesPerPixel: 3, frames: 3, modality: "US" }));
    expect(rgb.pixelData!.frames.map((f) => f[0]!.length)).toEqual([72, 72, 72]);
    // 3x3 1-bit frames: 9 bits each, 27 bits = 4 bytes; frame 2 is bits 9..17 (bytes 1..2), frame 3 bits 18..26 (bytes 2..3)
    const els: WriterElement[] = [...minimalElements(),
      { tag: tagOf(0x0028, 0x0002), vr: "US", value: 1 }, { tag: tagOf(0x0028, 0x0008), vr: "IS", value: 3 },
      { tag: tagOf(0x0028, 0x0010), vr: "US", value: 3 }, { tag: tagOf(0x0028, 0x0011), vr: "US", value: 3 },
      { tag: tagOf(0x0028, 0x0100), vr: "US", value: 1 }, { tag: 0x7fe00010, vr: "OB", value: Buffer.from([0xff, 0x01, 0x02, 0x03]) }];
    const p = await parse(handMade(els));
    const o = p.pixelData!.offset;
    expect(p.pixelData!.frames).toEqual([[{ offset: o, length: 2 }], [{ offset: o + 1, length: 2 }], [{ offset: o + 2, length: 2 }]]);
  });

  it("refuses native pixel data shorter than its frames need (0xA900)", async () => {
    const els: WriterElement[] = [...minimalElements(),
      { tag: tagOf(0x0028, 0x0010), vr: "US", value: 8 }, { tag: tagOf(0x0028, 0x0011), vr: "US", value: 8 },
      { tag: tagOf(0x0028, 0x0100), vr: "US", value: 16 }, { tag: 0x7fe00010, vr: "OW", value: Buffer.alloc(64) }];
    const err = await rejection(handMade(els));
    expect(err.reason).toBe(FailureReason.DataSetDoesNotMatchSOPClass);
    expect(err.message).toMatch(/PixelData is 64 bytes/);
  });

  const shape = { rows: 16, columns: 16, bitsAllocated: 16 as const, samplesPerPixel: 1 as const };
  const rleCases: Array<{ name: string; frames: number; opts: Record<string, unknown>; fragmentsPerFrame: number }> = [
    { name: "Basic Offset Table", frames: 3, opts: {}, fragmentsPerFrame: 1 },
    { name: "Basic Offset Table, two fragments per frame", frames: 3, opts: { fragmentsPerFrame: 2 }, fragmentsPerFrame: 2 },
    { name: "no offset table, one fragment per frame", frames: 3, opts: { basicOffsetTable: false }, fragmentsPerFrame: 1 },
    { name: "no offset table, one frame in two fragments", frames: 1, opts: { basicOffsetTable: false, fragmentsPerFrame: 2 }, fragmentsPerFrame: 2 },
    { name: "Extended Offset Table, two fragments per frame", frames: 3, opts: { extendedOffsetTable: true, fragmentsPerFrame: 2 }, fragmentsPerFrame: 2 },
  ];
  for (const c of rleCases) {
    it(`maps RLE fragments to frames: ${c.name}`, async () => {
      const file = makeInstance({ ...shape, frames: c.frames, modality: "MR", transferSyntaxUID: TS.rle, seed: 3, instanceNumber: 2, ...c.opts });
      const nativeFile = makeInstance({ ...shape, frames: c.frames, modality: "MR", seed: 3, instanceNumber: 2 });
      const native = await parse(nativeFile);
      const p = await parse(file);
      expect(p.pixelData!.encapsulated).toBe(true);
      expect(p.pixelData!.frames).toHaveLength(c.frames);
      for (const f of p.pixelData!.frames) expect(f).toHaveLength(c.fragmentsPerFrame);
      // each frame's fragments are exactly the RLE encoding of the same native frame
      const nativeFrames = frameBytes(nativeFile, native.pixelData!.frames);
      frameBytes(file, p.pixelData!.frames).forEach((enc, i) => {
        const expected = rleEncodeFrame(nativeFrames[i]!, shape);
        expect(enc.subarray(0, expected.length).equals(expected)).toBe(true);
      });
      const loc = p.bulkData.find((b) => b.tag === "7FE00010")!;
      expect(loc.offset + loc.length).toBe(file.length); // up to and including the sequence delimiter
      expect(file.readUInt32LE(file.length - 8)).toBe(0xe0ddfffe);
    });
  }

  it("gives frames up for several frames in mismatched fragments without an offset table", async () => {
    const file = makeInstance({ ...shape, frames: 3, transferSyntaxUID: TS.rle, basicOffsetTable: false, fragmentsPerFrame: 2 });
    const p = await parse(file);
    expect(p.pixelData!.frames).toEqual([]);
    expect(p.pixelData!.encapsulated).toBe(true);
  });
});

describe("readPart10: refusals", () => {
  const magic: Array<[string, Buffer, RegExp]> = [
    ["PDF", Buffer.concat([Buffer.from("%PDF-1.7\n"), Buffer.alloc(300)]), /this is a PDF document, not a DICOM file; ask for the DICOM export/],
    ["JPEG", Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(300)]), /this is a JPEG image, not a DICOM file/],
    ["PNG", Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(300)]), /this is a PNG image, not a DICOM file/],
    ["ZIP", Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(300)]), /this is a ZIP archive, not a DICOM file/],
    ["gzip", Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), Buffer.alloc(300)]), /this is a gzip archive/],
  ];
  for (const [name, bytes, sentence] of magic) {
    it(`says a ${name} file is not DICOM (0xC000)`, async () => {
      const err = await rejection(bytes);
      expect(err.reason).toBe(FailureReason.CannotUnderstand);
      expect(err.message).toMatch(sentence);
    });
  }

  it("refuses a file too short to be Part 10, and arbitrary bytes (0xC000)", async () => {
    expect((await rejection(Buffer.from("hello"))).message).toMatch(/too short/);
    expect((await rejection(Buffer.alloc(0))).reason).toBe(FailureReason.CannotUnderstand);
    const junk = Buffer.alloc(2000, 0x41);
    const err = await rejection(junk);
    expect(err.reason).toBe(FailureReason.CannotUnderstand);
    expect(err.message).toMatch(/no "DICM" marker/);
  });

  it("refuses a bare data set without preamble and file meta (0xC000), even though it would parse", async () => {
    const err = await rejection(makeInstance({ rows: 8, columns: 8, noFileMeta: true, transferSyntaxUID: TS.implicitLE }));
    expect(err.reason).toBe(FailureReason.CannotUnderstand);
    expect(err.message).toMatch(/bare DICOM data set without the Part-10 header/);
  });

  it("refuses a file truncated in the header, in the pixel data and in an encapsulated fragment (0xC000)", async () => {
    const file = makeInstance({ rows: 64, columns: 64, modality: "CT" });
    for (const cut of [140, 400, file.length - 100, file.length - 1]) {
      const err = await rejection(file.subarray(0, cut));
      expect(err.reason).toBe(FailureReason.CannotUnderstand);
      expect(err.message).toMatch(/truncated/);
    }
    const rle = makeInstance({ rows: 64, columns: 64, frames: 2, transferSyntaxUID: TS.rle });
    for (const cut of [rle.length - 4, rle.length - 200]) {
      const err = await rejection(rle.subarray(0, cut));
      expect(err.message).toMatch(/truncated/);
    }
  });

  it("refuses a truncated undefined-length sequence (0xC000)", async () => {
    const file = makeInstance({ rows: 4, columns: 4, noPixelData: true, undefinedLengthSequences: true, extra: { OtherPatientIDsSequence: [{ PatientID: "A" }] } });
    const seq = Buffer.from([0x10, 0x00, 0x02, 0x10, 0x53, 0x51]); // (0010,1002) SQ
    const at = file.indexOf(seq);
    const err = await rejection(file.subarray(0, at + 20));
    expect(err.reason).toBe(FailureReason.CannotUnderstand);
    expect(err.message).toMatch(/truncated/);
  });

  it("refuses a damaged element (no valid VR) with 0xC000", async () => {
    const file = Buffer.from(makeInstance({ rows: 4, columns: 4 }));
    const at = file.indexOf(Buffer.from([0x10, 0x00, 0x20, 0x00, 0x4c, 0x4f])); // (0010,0020) LO
    file.write("\x01\x02", at + 4, "latin1");
    const err = await rejection(file);
    expect(err.reason).toBe(FailureReason.CannotUnderstand);
    expect(err.message).toMatch(/\(0010,0020\).*no valid value representation/);
  });

  const uidCases: Array<[string, Record<string, unknown>, RegExp]> = [
    ["missing StudyInstanceUID", { StudyInstanceUID: null }, /no StudyInstanceUID \(0020,000D\)/],
    ["missing SeriesInstanceUID", { SeriesInstanceUID: null }, /no SeriesInstanceUID \(0020,000E\)/],
    ["missing SOPClassUID", { SOPClassUID: null }, /no SOPClassUID \(0008,0016\)/],
    ["empty SOPInstanceUID", { SOPInstanceUID: "" }, /no SOPInstanceUID \(0008,0018\)/],
    ["letters in a UID", { StudyInstanceUID: "1.2.abc.4" }, /StudyInstanceUID \(0020,000D\) "1.2.abc.4" is not a valid UID/],
    ["a leading zero", { SeriesInstanceUID: "1.2.03.4" }, /SeriesInstanceUID .* is not a valid UID/],
    ["more than 64 characters", { StudyInstanceUID: "1.2." + "3".repeat(70) }, /is not a valid UID/],
    ["malformed SOPClassUID", { SOPClassUID: "1..2" }, /SOPClassUID .* is not a valid UID/],
  ];
  for (const [name, extra, sentence] of uidCases) {
    it(`refuses ${name} (0xA900)`, async () => {
      const err = await rejection(makeInstance({ rows: 4, columns: 4, mediaStorageSOPInstanceUID: undefined, extra }));
      expect(err.reason).toBe(FailureReason.DataSetDoesNotMatchSOPClass);
      expect(err.message).toMatch(sentence);
    });
  }

  it("accepts a MediaStorageSOPInstanceUID that differs from SOPInstanceUID, under the data set's UID, with a warning", async () => {
    const sop = newUid();
    const p = await parse(makeInstance({ rows: 4, columns: 4, sopInstanceUID: sop, mediaStorageSOPInstanceUID: newUid() }));
    expect(p.sopInstanceUID).toBe(sop);
    expect(p.warnings).toHaveLength(1);
    expect(p.warnings[0]).toMatch(/^file meta SOPInstanceUID differs; stored as the data set's UID: MediaStorageSOPInstanceUID \(0002,0003\) ".+", data set SOPInstanceUID .+; the bytes are stored unchanged$/);
    expect((await parse(makeInstance({ rows: 4, columns: 4 }))).warnings).toEqual([]);
  });

  it("refuses an unknown transfer syntax (0xC122) and a file meta without one (0xC000)", async () => {
    const err = await rejection(makeInstance({ rows: 4, columns: 4, transferSyntaxUID: "1.2.3.4.5.6.7" }));
    expect(err.reason).toBe(FailureReason.TransferSyntaxNotSupported);
    expect(err.message).toMatch(/"1.2.3.4.5.6.7" is not a standard DICOM transfer syntax/);
    const meta = encodeFileMeta({ sopClassUID: "1.2.3", sopInstanceUID: "1.2.3", transferSyntaxUID: "1.2.840.10008.1.2.1" });
    const at = meta.indexOf(Buffer.from([0x02, 0x00, 0x10, 0x00]), 132);
    const noTs = Buffer.from(meta);
    noTs.writeUInt16LE(0x0011, at + 2); // (0002,0011): no longer the transfer syntax
    const err2 = await rejection(Buffer.concat([noTs, encodeDataset(minimalElements(), { explicitVR: true, littleEndian: true })]));
    expect(err2.reason).toBe(FailureReason.CannotUnderstand);
    expect(err2.message).toMatch(/no TransferSyntaxUID/);
  });

  it("refuses a header larger than maxHeaderBytes (0xA700), in plain elements and in a sequence", async () => {
    const els: WriterElement[] = [...minimalElements(), { tag: tagOf(0x0020, 0x4000), vr: "LT", value: "x".repeat(9000) }];
    const err = await rejection(handMade(els), { maxHeaderBytes: 8192 });
    expect(err.reason).toBe(FailureReason.OutOfResources);
    expect(err.message).toMatch(/larger than the relay parses in memory \(8192 bytes\)/);
    const items = Array.from({ length: 400 }, (_, i) => ({ PatientID: `ID-${i}-${"y".repeat(40)}` }));
    const seq = makeInstance({ rows: 4, columns: 4, undefinedLengthSequences: true, extra: { OtherPatientIDsSequence: items } });
    expect((await rejection(seq, { maxHeaderBytes: 8192 })).reason).toBe(FailureReason.OutOfResources);
    // the same file parses with room to spare, and bulk data does not count
    await expect(parse(seq, { maxHeaderBytes: 64 * 1024 })).resolves.toBeTruthy();
    await expect(parse(makeInstance({ rows: 512, columns: 512 }), { maxHeaderBytes: 8192 })).resolves.toBeTruthy();
  });
});

describe("readPart10: files and speed", () => {
  it("reads through fileSource from a file on disk", async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "part10-"));
    try {
      const file = path.join(dir, "a.dcm");
      const bytes = makeInstance({ rows: 128, columns: 128, frames: 2, transferSyntaxUID: TS.rle });
      await fsp.writeFile(file, bytes);
      const fh = await fsp.open(file, "r");
      try {
        const p = await readPart10(fileSource(fh, bytes.length), READ_OPTS);
        expect(p.pixelData!.frames).toHaveLength(2);
        const src = fileSource(fh, bytes.length);
        expect((await src.read(bytes.length - 10, 100)).length).toBe(10); // short at EOF, no error
      } finally {
        await fh.close();
      }
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe("transfer syntaxes", () => {
  it("knows encoding and frame media type of the standard transfer syntaxes", () => {
    expect(transferSyntaxInfo(TS.implicitLE)).toMatchObject({ explicitVR: false, littleEndian: true, encapsulated: false, mediaType: "application/octet-stream" });
    expect(transferSyntaxInfo(TS.explicitBE)).toMatchObject({ explicitVR: true, littleEndian: false, retired: true });
    expect(transferSyntaxInfo(TS.deflated)).toMatchObject({ deflated: true, encapsulated: false });
    expect(transferSyntaxInfo("1.2.840.10008.1.2.4.50")).toMatchObject({ encapsulated: true, mediaType: "image/jpeg" });
    expect(transferSyntaxInfo("1.2.840.10008.1.2.4.80")!.mediaType).toBe("image/jls");
    expect(transferSyntaxInfo("1.2.840.10008.1.2.4.90")!.mediaType).toBe("image/jp2");
    expect(transferSyntaxInfo("1.2.840.10008.1.2.4.201")!.mediaType).toBe("image/jphc");
    expect(transferSyntaxInfo(TS.rle)!.mediaType).toBe("image/dicom-rle");
    expect(transferSyntaxInfo(TS.encapsulatedUncompressed)).toMatchObject({ encapsulated: true, mediaType: "application/octet-stream" });
    expect(transferSyntaxInfo("1.2.3.4")).toBeUndefined();
  });
});

describe("deflated test files", () => {
  it("are raw DEFLATE (RFC 1951) after the file meta, as PS3.5 A.5 requires", () => {
    const file = makeInstance({ rows: 4, columns: 4, transferSyntaxUID: TS.deflated, noPixelData: true });
    const metaEnd = file.indexOf(Buffer.from("DICOMRELAY_01")) + "DICOMRELAY_01".length + 1;
    expect(zlib.inflateRawSync(file.subarray(metaEnd)).length).toBeGreaterThan(100);
  });
});

describe("readPart10: encapsulated reads", () => {
  it("reads only item headers between large fragments", async () => {
    const file = makeInstance({ rows: 256, columns: 256, frames: 6, modality: "MR", transferSyntaxUID: TS.encapsulatedUncompressed });
    const c = countingSource(file);
    const p = await readPart10(c.source, READ_OPTS);
    expect(p.pixelData!.frames).toHaveLength(6);
    expect(c.bytesRead()).toBeLessThan(70 * 1024); // the first window plus 8-byte item headers
  });
});

describe("chunksSource (an instance held in memory as the chunks it arrived in)", () => {
  it("reads any range, within a chunk or across many, as the joined bytes would give it", async () => {
    const whole = crypto.randomBytes(10_000);
    const chunks: Buffer[] = [];
    for (let i = 0; i < whole.length;) {
      const n = 1 + (i % 997) % 700; // uneven sizes, some of one byte
      chunks.push(whole.subarray(i, i + n));
      i += n;
    }
    const src = chunksSource(chunks);
    expect(src.size).toBe(whole.length);
    for (const [pos, len] of [[0, 1], [0, 10_000], [5, 3000], [699, 2], [9_990, 50], [10_000, 5], [4321, 0], [1234, 5678]] as const) {
      expect(Buffer.compare(await src.read(pos, len), whole.subarray(pos, Math.min(whole.length, pos + len)))).toBe(0);
    }
    for (let k = 0; k < 200; k++) {
      const pos = (k * 7919) % whole.length;
      const len = (k * 104729) % 4000;
      expect(Buffer.compare(await src.read(pos, len), whole.subarray(pos, Math.min(whole.length, pos + len)))).toBe(0);
    }
  });

  it("parses a Part-10 instance from its chunks as from the file", async () => {
    const bytes = makeInstance({ rows: 32, columns: 32, seed: 5 });
    const chunks: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += 333) chunks.push(bytes.subarray(i, i + 333));
    const opts = { maxHeaderBytes: 1 << 20, bulkDataThreshold: 1024, maxInflatedBytes: 1 << 30 };
    const fromChunks = await readPart10(chunksSource(chunks), opts);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "chunks-"));
    const file = path.join(dir, "i.dcm");
    await fsp.writeFile(file, bytes);
    const handle = await fsp.open(file, "r");
    try {
      const fromFile = await readPart10(fileSource(handle, bytes.length), opts);
      expect(fromChunks.dataset).toEqual(fromFile.dataset);
      expect(fromChunks.pixelData).toEqual(fromFile.pixelData);
      expect(fromChunks.sopInstanceUID).toBe(fromFile.sopInstanceUID);
    } finally {
      await handle.close();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
