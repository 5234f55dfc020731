/**
 * The fast header decoder (src/dicom/fastDecode.ts) against dcmjs: every file at hand read with the fast path and with
 * dcmjs forced must give the same ParsedInstance (or the same refusal), key order included; the fast path must really
 * be taken for Latin-1 / UTF-8 / GB18030 / GBK files and left for other character sets (ISO 2022 ones included). Then
 * the value decoders' edge cases, each checked against dcmjs and against the DICOM JSON it must give.
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import iconv from "iconv-lite";
import { afterEach, describe, expect, it } from "vitest";
import { bufferSource, headerDecoding, readBareDataset, readPart10 } from "../../src/dicom/part10.ts";
import { decodeValue, fastDecodeHeader, FastDecodeFallback, type TextCoding } from "../../src/dicom/fastDecode.ts";
import { InstanceRejectedError } from "../../src/dicom/failureReasons.ts";
import type { DicomJsonDataset } from "../../src/dicom/types.ts";
import { encodeDataset, encodeFileMeta, makeInstance, tagOf, type SyntheticInstanceOptions, type WriterElement } from "../../scripts/lib/synthetic.ts";
import { handMade, minimalElements, READ_OPTS, TS } from "../support/fixtures.ts";

const PYDICOM = "/usr/lib/python3/dist-packages/pydicom/data";
const EXTRA = ["/usr/share/doc/libgdcm3.0/examples/00191113.dcm", "/usr/share/doc/dicom3tools/examples/0051.dcm"];

type Path = "fast" | "dcmjs" | "none";
interface Outcome {
  /** the ParsedInstance / data set, or the refusal */
  result: unknown;
  /** which decoder read the header ("none": refused before decoding) */
  path: Path;
  why: string;
}

afterEach(() => {
  headerDecoding.dcmjsOnly = false;
});

async function outcome(read: () => Promise<unknown>, dcmjsOnly: boolean): Promise<Outcome> {
  headerDecoding.dcmjsOnly = dcmjsOnly;
  const fast = headerDecoding.fast;
  const dcmjs = headerDecoding.dcmjs;
  let result: unknown;
  try {
    result = await read();
  } catch (err) {
    if (!(err instanceof InstanceRejectedError)) throw err;
    result = { refused: err.reason, message: err.message, ids: err.ids };
  } finally {
    headerDecoding.dcmjsOnly = false;
  }
  const path: Path = headerDecoding.fast > fast ? "fast" : headerDecoding.dcmjs > dcmjs ? "dcmjs" : "none";
  return { result, path, why: path === "dcmjs" ? headerDecoding.lastFallback : "" };
}

/** Reads `read` with the fast path on and with dcmjs forced; asserts the same result, key order included. */
async function differential(read: () => Promise<unknown>, label: string): Promise<Outcome> {
  const withFast = await outcome(read, false);
  const dcmjsOnly = await outcome(read, true);
  expect(dcmjsOnly.path === "fast", label).toBe(false);
  expect(withFast.result, label).toEqual(dcmjsOnly.result);
  expect(JSON.stringify(withFast.result), label).toBe(JSON.stringify(dcmjsOnly.result));
  return withFast;
}

const readFile = (bytes: Buffer) => () => readPart10(bufferSource(bytes), READ_OPTS);

/** The data set after the file meta and its transfer syntax, for files refused before their header is decoded. */
function bareDataset(file: Buffer): { dataset: Buffer; ts: string } | null {
  if (file.length < 144 || file.toString("latin1", 128, 132) !== "DICM") return null;
  let p = 132;
  let ts = "";
  while (p + 8 <= file.length && file.readUInt16LE(p) === 0x0002) {
    const vr = file.toString("latin1", p + 4, p + 6);
    const long = ["OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR"].includes(vr);
    const length = long ? file.readUInt32LE(p + 8) : file.readUInt16LE(p + 6);
    const at = p + (long ? 12 : 8);
    if (file.readUInt16LE(p + 2) === 0x0010) ts = file.toString("latin1", at, at + length).replace(/[\0 ]+$/, "");
    p = at + length;
  }
  return ts && ts !== TS.deflated ? { dataset: file.subarray(p), ts } : null;
}

function corpus(): string[] {
  const files: string[] = [];
  for (const dir of ["test_files", "charset_files", "palettes"]) {
    const root = path.join(PYDICOM, dir);
    if (!fs.existsSync(root)) continue;
    for (const f of fs.readdirSync(root, { recursive: true }) as string[]) {
      const p = path.join(root, f);
      if (fs.statSync(p).isFile() && !/\.(txt|dump|md|py|pyc|json|gz)$/i.test(f) && !/README/.test(f)) files.push(p);
    }
  }
  return [...files.sort(), ...EXTRA.filter((f) => fs.existsSync(f))];
}

describe("fast header decoder against dcmjs: files", () => {
  it("reads every pydicom test, charset and palette file (and the GDCM and dicom3tools examples) as dcmjs does", async () => {
    const files = corpus();
    expect(files.length).toBeGreaterThan(80);
    const paths: Record<string, Path> = {};
    const whys: Record<string, string> = {};
    for (const file of files) {
      const name = path.relative(PYDICOM, file);
      const bytes = fs.readFileSync(file);
      let o = await differential(readFile(bytes), name);
      if (o.path === "none") {
        // refused before its header was decoded (no SOP class, a DICOMDIR, ...): its data set read as a bare one
        const bare = bareDataset(bytes);
        if (bare) o = await differential(() => readBareDataset(bare.dataset, bare.ts, READ_OPTS), `${name} (bare data set)`);
      }
      paths[name] = o.path;
      if (o.why) whys[name] = o.why;
    }
    const count = (p: Path) => Object.values(paths).filter((x) => x === p).length;
    console.log(`fast header decoder, corpus: ${files.length} files, ${count("fast")} fast, ${count("dcmjs")} dcmjs, ${count("none")} not decoded\n`
      + Object.entries(whys).map(([f, w]) => `  dcmjs: ${f}: ${w}`).join("\n") + "\n"
      + Object.entries(paths).filter(([, p]) => p === "none").map(([f]) => `  not decoded (refused first): ${f}`).join("\n"));

    // Latin-1 and UTF-8 files, plain, with sequences, SR trees, waveforms, RT, implicit VR, big endian, deflated
    for (const f of ["test_files/CT_small.dcm", "test_files/MR_small.dcm", "test_files/MR_small_implicit.dcm", "test_files/MR_small_bigendian.dcm",
      "test_files/image_dfl.dcm", "test_files/rtplan.dcm", "test_files/rtdose.dcm", "test_files/reportsi.dcm", "test_files/test-SR.dcm",
      "test_files/waveform_ecg.dcm", "test_files/JPEG2000.dcm", "test_files/MR_small_RLE.dcm", "test_files/nested_priv_SQ.dcm",
      "charset_files/chrFren.dcm", "charset_files/chrFrenMulti.dcm", "charset_files/chrGerm.dcm", "charset_files/chrX1.dcm",
      "charset_files/chrX2.dcm"]) { // chrX2: GB18030
      expect(paths[f], f).toBe("fast");
    }
    // other character sets go to dcmjs, also when only an item has one
    for (const f of ["charset_files/chrArab.dcm", "charset_files/chrGreek.dcm", "charset_files/chrHbrw.dcm", "charset_files/chrRuss.dcm",
      "charset_files/chrH31.dcm", "charset_files/chrH32.dcm", "charset_files/chrI2.dcm", "charset_files/chrJapMulti.dcm",
      "charset_files/chrKoreanMulti.dcm", "charset_files/chrSQEncoding.dcm", "charset_files/chrSQEncoding1.dcm"]) {
      expect(paths[f], f).toBe("dcmjs");
      expect(whys[f], f).toMatch(/^SpecificCharacterSet /);
    }
    expect(count("fast")).toBeGreaterThan(50);
  });

  it("reads the synthetic generator's instances as dcmjs does: every transfer syntax, character set and sequence layout", async () => {
    const paths: Path[] = [];
    const extra = {
      OtherPatientIDsSequence: [{ PatientID: "A", IssuerOfPatientID: "Klinik Süd", OtherPatientIDsSequence: [{ PatientID: "B", OtherPatientIDsSequence: [] }] }, {}],
      ReferencedStudySequence: [],
      ImageComments: "multi\\line comment ",
      FrameIncrementPointer: 0x00181063,
    };
    // Chinese text: 錦 E55C, 誠 D55C, 運 DF5C, 衆 D05C end in the backslash byte in GBK and GB18030; three PN groups;
    // multi-valued LO / CS / PN; trailing spaces; an item in the other GB set (the writer encodes items in the data
    // set's set: these characters have the same bytes in both)
    const chineseExtra = (charset: string) => ({
      ...extra,
      OtherPatientIDs: [" 運誠", "衆 ", "", "錦  "],
      OtherPatientNames: "Yun^Cheng=運^誠=yun^cheng\\=衆^錦\\Zhong ",
      InstitutionalDepartmentName: "放射科\\診斷 ",
      PatientComments: "診斷\\運 ok  ",
      ScanOptions: ["HELICAL ", " AXIAL", ""],
      ReferencedPatientSequence: [{ SpecificCharacterSet: charset === "GBK" ? "GB18030" : charset === "GB18030" ? "GBK" : charset, PatientID: "錦", IssuerOfPatientID: "運誠醫院 ", ReferencedPatientSequence: [{ PatientID: "衆\\誠" }] }, {}],
    });
    let n = 0;
    for (const transferSyntaxUID of Object.values(TS)) {
      for (const charset of ["ISO_IR 100", "ISO_IR 192", "GB18030", "GBK"] as const) {
        for (const undefinedLengthSequences of [false, true]) {
          const chinese = charset !== "ISO_IR 100";
          const o: SyntheticInstanceOptions = { rows: 16, columns: 16, frames: 2, seed: n++, transferSyntaxUID, charset, undefinedLengthSequences, extra: chinese ? chineseExtra(charset) : extra, modality: ["CT", "MR", "US", "PT"][n % 4] };
          o.patientName = chinese ? "Huang^JinCheng=黃^錦誠=huang^jincheng " : "Müller^Jürgen";
          const label = `${transferSyntaxUID} ${charset} undefined lengths ${undefinedLengthSequences}`;
          const out = await differential(readFile(makeInstance(o)), label);
          expect(out.path, label).toBe("fast");
          paths.push(out.path);
          if (!chinese) continue;
          // decoded before the split on "\\": the 0x5C trail bytes stayed in their characters
          const ds = (out.result as { dataset: DicomJsonDataset }).dataset;
          expect(ds["00100010"], label).toEqual({ vr: "PN", Value: [{ Alphabetic: "Huang^JinCheng", Ideographic: "黃^錦誠", Phonetic: "huang^jincheng" }] });
          expect(ds["00101000"], label).toEqual({ vr: "LO", Value: ["運誠", "衆", null, "錦"] });
          expect(ds["00101001"], label).toEqual({ vr: "PN", Value: [{ Alphabetic: "Yun^Cheng", Ideographic: "運^誠", Phonetic: "yun^cheng" }, { Ideographic: "衆^錦" }, { Alphabetic: "Zhong" }] });
          expect(ds["00104000"], label).toEqual({ vr: "LT", Value: ["診斷\\運 ok"] });
          expect(ds["00080005"], label).toEqual({ vr: "CS", Value: [charset] });
          const item = (ds["00081120"]!.Value as DicomJsonDataset[])[0]!;
          expect(item["00100021"], label).toEqual({ vr: "LO", Value: ["運誠醫院"] });
          expect((item["00081120"]!.Value as DicomJsonDataset[])[0]!["00100020"], label).toEqual({ vr: "LO", Value: ["衆", "誠"] });
        }
      }
    }
    // the generator's default study: random patients and modalities
    for (let seed = 100; seed < 116; seed++) paths.push((await differential(readFile(makeInstance({ rows: 8, columns: 8, seed })), `seed ${seed}`)).path);
    expect(paths.filter((p) => p !== "fast")).toEqual([]);
    console.log(`fast header decoder, synthetic: ${paths.length} instances, ${paths.filter((p) => p === "fast").length} fast, ${paths.filter((p) => p === "dcmjs").length} dcmjs`);
  });
});

// ---------------------------------------------------------------------------------------------
// Value decoders
// ---------------------------------------------------------------------------------------------

const E = (g: number, e: number, vr: string, value: WriterElement["value"]): WriterElement => ({ tag: tagOf(g, e), vr, value });
const raw = (s: string, enc: BufferEncoding = "latin1") => Buffer.from(s, enc);
const f32 = (...v: number[]) => { const b = Buffer.alloc(4 * v.length); v.forEach((x, i) => b.writeFloatLE(x, 4 * i)); return b; };
const f64 = (...v: number[]) => { const b = Buffer.alloc(8 * v.length); v.forEach((x, i) => b.writeDoubleLE(x, 8 * i)); return b; };

/** Elements whose values dcmjs reads in its own ways, and the DICOM JSON both paths must give. */
const EDGE: Array<[WriterElement, DicomJsonDataset[string]]> = [
  // PN: one trailing space is padding; empty values are dropped; "=" groups kept when they have text
  [E(0x0008, 0x0090, "PN", raw("Doe^John ")), { vr: "PN", Value: [{ Alphabetic: "Doe^John" }] }],
  [E(0x0008, 0x1048, "PN", raw("A\\\\B\\ \\=Ideo\\A^B==Phon\\Doe\0\0")), { vr: "PN", Value: [{ Alphabetic: "A" }, { Alphabetic: "B" }, null, { Ideographic: "Ideo" }, { Alphabetic: "A^B", Phonetic: "Phon" }, { Alphabetic: "Doe" }] }],
  [E(0x0008, 0x1050, "PN", raw("    ")), { vr: "PN" }],
  [E(0x0008, 0x1060, "PN", raw("")), { vr: "PN" }],
  [E(0x0008, 0x1070, "PN", raw("A=B=C=D")), { vr: "PN", Value: [{ Alphabetic: "A", Ideographic: "B", Phonetic: "C" }] }],
  // LO, SH: trimmed as a whole, then split; values keep inner leading spaces; 8-bit bytes as dcmjs's TextDecoder("latin1")
  // reads them (windows-1252 by its label; Node 20 gives U+0080 for 0x80, later versions may give the euro sign)
  [E(0x0008, 0x0070, "LO", raw("  lead\\ inner \\trail  ")), { vr: "LO", Value: ["lead", " inner", "trail"] }],
  [E(0x0008, 0x0080, "LO", raw("Price \x80 5\\\\")), { vr: "LO", Value: [`Price ${new TextDecoder("latin1").decode(Buffer.from([0x80]))} 5`, null, null] }],
  [E(0x0008, 0x0081, "ST", raw("a\\b  ")), { vr: "ST", Value: ["a", "b"] }], // ST split like multi-valued text
  [E(0x0008, 0x1010, "SH", raw("\0\0")), { vr: "SH" }],
  [E(0x0020, 0x4000, "LT", raw("line\\one\r\n  ")), { vr: "LT", Value: ["line\\one"] }], // LT is not split
  [E(0x0040, 0x1400, "LT", raw("")), { vr: "LT" }],
  [E(0x0008, 0x0119, "UC", raw("x\\y ")), { vr: "UC", Value: ["x", "y"] }],
  [E(0x0018, 0x9916, "UT", raw("a\\\\b \t")), { vr: "UT", Value: ["a", null, "b"] }], // (0018,9916) is retired UT
  // DS, IS: white space, signs, exponents, junk characters dropped before Number()
  [E(0x0018, 0x0050, "DS", raw(" 1.5 \\-2e3\\+4\\1,5\\abc\\\\1e400\\.5E-1")), { vr: "DS", Value: [1.5, -2000, 4, 15, null, null, null, 0.05] }],
  [E(0x0020, 0x0013, "IS", raw(" 12 \\-3 ")), { vr: "IS", Value: [12, -3] }],
  [E(0x0018, 0x0060, "DS", raw("")), { vr: "DS" }],
  [E(0x0018, 0x0088, "DS", raw("1.2.3\\-")), { vr: "DS" }],
  // CS, AE trimmed; DA, DT, AS, UR only padding removed; TM right-trimmed
  [E(0x0008, 0x0008, "CS", raw(" A \\B\\\\ ")), { vr: "CS", Value: ["A", "B", null, null] }],
  [E(0x0008, 0x0064, "CS", raw("")), { vr: "CS" }],
  [E(0x0008, 0x0054, "AE", raw(" AE1 \\ X ")), { vr: "AE", Value: ["AE1", " X"] }],
  [E(0x0008, 0x0020, "DA", raw("20200101\\ 20200102 ")), { vr: "DA", Value: ["20200101", " 20200102"] }],
  [E(0x0008, 0x002a, "DT", raw("20200101101010.5+0100")), { vr: "DT", Value: ["20200101101010.5+0100"] }],
  [E(0x0010, 0x1010, "AS", raw("045Y")), { vr: "AS", Value: ["045Y"] }],
  [E(0x0008, 0x0030, "TM", raw("101010.123 \t ")), { vr: "TM", Value: ["101010.123"] }],
  [E(0x0008, 0x1190, "UR", raw("http://x/y ")), { vr: "UR", Value: ["http://x/y"] }],
  // UI: as written (dcmjs's own Value strips letters), padding and white space trimmed
  [E(0x0008, 0x1150, "UI", raw("1.2.abc\0")), { vr: "UI", Value: ["1.2.abc"] }],
  [E(0x0008, 0x1155, "UI", raw("1.2.3 \\ 4.5\0")), { vr: "UI", Value: ["1.2.3", "4.5"] }],
  [E(0x0020, 0x0052, "UI", raw("")), { vr: "UI" }],
  // AT as hex; binary numbers of any multiplicity; an empty one reads as [0] (dcmjs's default value)
  [E(0x0028, 0x0009, "AT", [0x00181063, 0x7fe00010]), { vr: "AT", Value: ["00181063", "7FE00010"] }],
  [E(0x0020, 0x9165, "AT", Buffer.alloc(0)), { vr: "AT" }],
  [E(0x0028, 0x0010, "US", Buffer.alloc(0)), { vr: "US", Value: [0] }],
  [E(0x0028, 0x1101, "US", [4096, 0, 16]), { vr: "US", Value: [4096, 0, 16] }],
  [E(0x0028, 0x0106, "SS", [-100, 32767]), { vr: "SS", Value: [-100, 32767] }],
  [E(0x0018, 0x9219, "SS", Buffer.alloc(0)), { vr: "SS", Value: [0] }],
  [E(0x0028, 0x0108, "UL", [0xffffffff]), { vr: "UL", Value: [4294967295] }],
  [E(0x0018, 0x6020, "SL", [-5, 7]), { vr: "SL", Value: [-5, 7] }],
  [E(0x0018, 0x9089, "FD", [0.1, -1e300, Infinity]), { vr: "FD", Value: [0.1, -1e300, null] }],
  [E(0x0018, 0x9087, "FD", [NaN]), { vr: "FD" }],
  [E(0x0018, 0x9445, "FL", [1.5, 0.1]), { vr: "FL", Value: [1.5, Math.fround(0.1)] }],
  [E(0x0018, 0x9441, "FL", Buffer.alloc(0)), { vr: "FL", Value: [0] }],
  [E(0x0040, 0xa132, "UV" as string, [2n ** 63n, 7n]), { vr: "UV", Value: ["9223372036854775808", 7] }],
  // binary: InlineBinary, nothing when empty (an odd OB length stays as written at the top level)
  [E(0x0009, 0x0010, "LO", raw("EDGE CREATOR")), { vr: "LO", Value: ["EDGE CREATOR"] }],
  [E(0x0009, 0x1001, "OB", Buffer.from([1, 2, 3])), { vr: "OB", InlineBinary: "AQID" }],
  [E(0x0009, 0x1002, "OB", Buffer.alloc(0)), { vr: "OB" }],
  [E(0x0009, 0x1003, "OW", Buffer.from([1, 2, 3, 4])), { vr: "OW", InlineBinary: "AQIDBA==" }],
  [E(0x0009, 0x1004, "OF", f32(1)), { vr: "OF", InlineBinary: f32(1).toString("base64") }],
  [E(0x0009, 0x1005, "OD", f64(1)), { vr: "OD", InlineBinary: f64(1).toString("base64") }],
  [E(0x0009, 0x1006, "UN", Buffer.from("private")), { vr: "UN", InlineBinary: Buffer.from("private\0").toString("base64") }],
];

/** An explicit VR LE file of `els` written as they are (odd lengths too), without the synthetic writer's padding. */
function rawFile(els: WriterElement[]): Buffer {
  const parts = els.map((el) => {
    if (!Buffer.isBuffer(el.value)) return encodeDataset([el], { explicitVR: true, littleEndian: true });
    const long = ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"].includes(el.vr);
    const h = Buffer.alloc(long ? 12 : 8);
    h.writeUInt16LE(el.tag >>> 16, 0);
    h.writeUInt16LE(el.tag & 0xffff, 2);
    h.write(el.vr, 4, "latin1");
    if (long) h.writeUInt32LE(el.value.length, 8);
    else h.writeUInt16LE(el.value.length, 6);
    return Buffer.concat([h, el.value]);
  });
  const sop = els.find((e) => e.tag === 0x00080018)!.value as string;
  return Buffer.concat([encodeFileMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUID: sop, transferSyntaxUID: TS.explicitLE }), ...parts]);
}

const byTag = (els: WriterElement[]) => [...els].sort((a, b) => a.tag - b.tag);

describe("fast header decoder: values", () => {
  it("decodes each VR's edge cases as dcmjs + toDicomJson do, at the top level and in items, little and big endian", async () => {
    const edge = EDGE.map(([el]) => el);
    const expected = Object.fromEntries(EDGE.map(([el, json]) => [el.tag.toString(16).toUpperCase().padStart(8, "0"), json]));
    const check = (ds: DicomJsonDataset, label: string, inItem = false) => {
      for (const [key, json] of Object.entries(expected)) {
        // the writer pads odd values in items and in other encodings: the odd OB gets its NUL
        const want = key === "00091001" && inItem ? { vr: "OB", InlineBinary: "AQIDAA==" } : json;
        expect(ds[key], `${label} ${key}`).toEqual(want);
      }
    };

    // top level, odd lengths as written
    const top = byTag([...minimalElements(), ...edge]);
    const a = await differential(readFile(rawFile(top)), "top level");
    expect(a.path).toBe("fast");
    check((a.result as { dataset: DicomJsonDataset }).dataset, "top level");

    // in items two deep, in each encoding the walker re-encodes (the writer pads odd values)
    const inItems = byTag([...minimalElements(), E(0x0040, 0x0275, "SQ", [[E(0x0008, 0x1110, "SQ", [edge]), E(0x0040, 0x1001, "SH", "X")], []])]);
    const sop = inItems.find((e) => e.tag === tagOf(0x0008, 0x0018))!.value as string;
    for (const ts of [TS.explicitLE, TS.explicitBE]) {
      for (const undefinedLengthSequences of [false, true]) {
        const file = Buffer.concat([encodeFileMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUID: sop, transferSyntaxUID: ts }),
          encodeDataset(inItems, { explicitVR: true, littleEndian: ts !== TS.explicitBE, undefinedLengthSequences })]);
        const label = `${ts} undefined lengths ${undefinedLengthSequences}`;
        const o = await differential(readFile(file), label);
        expect(o.path, label).toBe("fast");
        const ds = (o.result as { dataset: DicomJsonDataset }).dataset;
        const [item, empty] = ds["00400275"]!.Value as DicomJsonDataset[];
        expect(empty, label).toEqual({});
        check((item!["00081110"]!.Value as DicomJsonDataset[])[0]!, label, true);
      }
    }
  });

  it("reads implicit VR data sets (dictionary VRs, private tags as UN) as dcmjs does", async () => {
    const els = byTag([...minimalElements(), ...EDGE.map(([el]) => el).filter((e) => e.tag >>> 16 !== 0x0009),
    E(0x0009, 0x0010, "LO", "EDGE"), E(0x0009, 0x1001, "OB", Buffer.from([1, 2, 3, 4]))]);
    const o = await differential(readFile(handMade(els, { transferSyntaxUID: TS.implicitLE, explicitVR: false })), "implicit");
    expect(o.path).toBe("fast");
    expect((o.result as { dataset: DicomJsonDataset }).dataset["00091001"]).toEqual({ vr: "UN", InlineBinary: "AQIDBA==" });
  });

  it("keeps sequences, empty items and nested items in place, and an item's own Latin-1 / UTF-8 character set", async () => {
    const els = byTag([{ tag: tagOf(0x0008, 0x0005), vr: "CS", value: "ISO_IR 192" }, ...minimalElements(),
      E(0x0008, 0x1110, "SQ", []),
      E(0x0008, 0x1115, "SQ", [[], [E(0x0008, 0x1140, "SQ", [[], [E(0x0008, 0x1150, "UI", "1.2.3")], []])], []]),
      E(0x0040, 0x0275, "SQ", [
        [E(0x0008, 0x0005, "CS", "ISO_IR 100"), E(0x0040, 0x1001, "SH", raw("M\xfcller"))],
        [E(0x0040, 0x1001, "SH", raw("Müller", "utf8")), E(0x0010, 0x0010, "PN", raw("Wang^XiaoDong=王^小東", "utf8"))],
      ])]);
    for (const undefinedLengthSequences of [false, true]) {
      const file = Buffer.concat([encodeFileMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUID: els.find((e) => e.tag === tagOf(0x0008, 0x0018))!.value as string, transferSyntaxUID: TS.explicitLE }),
        encodeDataset(els, { explicitVR: true, littleEndian: true, undefinedLengthSequences })]);
      const o = await differential(readFile(file), `undefined lengths ${undefinedLengthSequences}`);
      expect(o.path).toBe("fast");
      const ds = (o.result as { dataset: DicomJsonDataset }).dataset;
      expect(ds["00081110"]).toEqual({ vr: "SQ" });
      expect(ds["00081115"]).toEqual({ vr: "SQ", Value: [{}, { "00081140": { vr: "SQ", Value: [{}, { "00081150": { vr: "UI", Value: ["1.2.3"] } }, {}] } }, {}] });
      expect(ds["00400275"]).toEqual({ vr: "SQ", Value: [
        { "00080005": { vr: "CS", Value: ["ISO_IR 100"] }, "00401001": { vr: "SH", Value: ["Müller"] } },
        { "00100010": { vr: "PN", Value: [{ Alphabetic: "Wang^XiaoDong", Ideographic: "王^小東" }] }, "00401001": { vr: "SH", Value: ["Müller"] } },
      ] });
      expect(ds["00080005"]).toEqual({ vr: "CS", Value: ["ISO_IR 192"] });
    }
  });

  it("decodes GB18030 and GBK text as dcmjs does: 0x5C trail bytes, multi-values, PN groups, padding, lone and four-byte sequences, items in other sets", async () => {
    const enc = (text: string, charset: string) => iconv.encode(text, charset.toLowerCase());
    const gb = (text: string) => iconv.encode(text, "gb18030");
    // GB18030's four-byte sequences (𠀀 95 32 82 36) and a GBK-only extension (䶮 FE 9F): Node's "gbk" decoder is not
    // its "gb18030" one, so a GBK data set with these bytes shows which decoder read them
    const fourByte = gb("𠀀䶮 胸部 ");
    const otherSet = { GB18030: "GBK", GBK: "GB18030", "ISO_IR 100": "GB18030", "ISO_IR 192": "GBK" } as Record<string, string>;
    for (const charset of ["GB18030", "GBK", "ISO_IR 100", "ISO_IR 192"]) {
      const chinese = charset === "GB18030" || charset === "GBK";
      const text = (t: string) => (chinese ? enc(t, charset) : charset === "ISO_IR 192" ? raw(t, "utf8") : raw("Latin-1 \xe9"));
      const item = otherSet[charset]!;
      const els = byTag([...minimalElements(), E(0x0008, 0x0005, "CS", charset),
        // CS is read byte by byte (a 0x5C trail byte splits it: 運 is DF 5C)
        E(0x0008, 0x0008, "CS", Buffer.concat([raw("ORIGINAL\\"), gb("運"), raw("X ")])),
        E(0x0010, 0x0010, "PN", text("Huang^JinCheng=黃^錦誠=huang^jincheng ")),
        E(0x0008, 0x0090, "PN", text("Yun^Cheng=運^誠=yun^cheng\\=衆^錦\\\\Zhong  ")),
        E(0x0010, 0x1000, "LO", text(" 運誠\\衆 \\\\錦 \u3000 ")),
        E(0x0008, 0x1010, "SH", text("運\\誠")),
        E(0x0010, 0x4000, "LT", text("診斷: 錦\\運\r\n  ")),
        E(0x0008, 0x0081, "ST", text("北京\\東城區 ")),
        E(0x0008, 0x0119, "UC", text("運\\誠 ")),
        E(0x0008, 0x1030, "LO", chinese ? fourByte : text("x")),
        // 0x80, 0xFF, a lead byte at the end, then a value starting with 0x5C: one decode() each, nothing carried over
        E(0x0008, 0x103e, "LO", Buffer.from([0x41, 0x80, 0xff, 0x42, 0xb0])),
        E(0x0008, 0x1040, "LO", Buffer.from([0x5c, 0x41, 0x5c])),
        E(0x0040, 0x0275, "SQ", [
          // the data set's set, inherited (re-decoded by part10 after either decoder)
          [E(0x0040, 0x1001, "SH", text("運誠 ")), E(0x0040, 0x1002, "LO", text("錦\\衆"))],
          // another set of its own, and an item nested in it that inherits it
          [E(0x0008, 0x0005, "CS", item), E(0x0040, 0x1001, "SH", enc("運誠", item)),
            E(0x0040, 0x1002, "LO", item === "GB18030" ? fourByte : enc("錦\\衆", item)),
            E(0x0008, 0x1110, "SQ", [[E(0x0010, 0x0010, "PN", enc("Li^Na=李^錦=li^jin", item))]])],
          [E(0x0008, 0x0005, "CS", "ISO_IR 100"), E(0x0040, 0x1001, "SH", raw("M\xfcller"))],
          [],
        ])]);
      const sop = els.find((e) => e.tag === tagOf(0x0008, 0x0018))!.value as string;
      const files: Array<[string, Buffer]> = [["explicit LE", rawFile(els)], ["implicit LE", handMade(els, { transferSyntaxUID: TS.implicitLE, explicitVR: false })],
        ["explicit BE", Buffer.concat([encodeFileMeta({ sopClassUID: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUID: sop, transferSyntaxUID: TS.explicitBE }),
          encodeDataset(els, { explicitVR: true, littleEndian: false, undefinedLengthSequences: true })])]];
      for (const [layout, file] of files) {
        const label = `${charset} ${layout}`;
        const o = await differential(readFile(file), label);
        expect(o.path, label).toBe("fast");
        const ds = (o.result as { dataset: DicomJsonDataset }).dataset;
        expect(ds["00080005"], label).toEqual({ vr: "CS", Value: [charset] });
        expect(ds["00080008"], label).toEqual({ vr: "CS", Value: ["ORIGINAL", "\xdf", "X"] });
        const items = ds["00400275"]!.Value as DicomJsonDataset[];
        expect(items.length, label).toBe(4);
        expect(items[1]!["00080005"], label).toEqual({ vr: "CS", Value: [item] });
        expect(items[1]!["00401001"], label).toEqual({ vr: "SH", Value: ["運誠"] });
        expect((items[1]!["00081110"]!.Value as DicomJsonDataset[])[0], label).toEqual({ "00100010": { vr: "PN", Value: [{ Alphabetic: "Li^Na", Ideographic: "李^錦", Phonetic: "li^jin" }] } });
        expect(items[2]!["00401001"], label).toEqual({ vr: "SH", Value: ["Müller"] });
        if (!chinese) continue;
        expect(ds["00100010"], label).toEqual({ vr: "PN", Value: [{ Alphabetic: "Huang^JinCheng", Ideographic: "黃^錦誠", Phonetic: "huang^jincheng" }] });
        expect(ds["00080090"], label).toEqual({ vr: "PN", Value: [{ Alphabetic: "Yun^Cheng", Ideographic: "運^誠", Phonetic: "yun^cheng" }, { Ideographic: "衆^錦" }, { Alphabetic: "Zhong" }] });
        expect(ds["00101000"], label).toEqual({ vr: "LO", Value: ["運誠", "衆", null, "錦"] });
        expect(ds["00081010"], label).toEqual({ vr: "SH", Value: ["運", "誠"] });
        expect(ds["00104000"], label).toEqual({ vr: "LT", Value: ["診斷: 錦\\運"] });
        expect(ds["00080081"], label).toEqual({ vr: "ST", Value: ["北京", "東城區"] });
        expect(ds["00080119"], label).toEqual({ vr: "UC", Value: ["運", "誠"] });
        const studyDescription = ds["00081030"]!.Value![0];
        if (charset === "GB18030") expect(studyDescription, label).toBe("𠀀䶮 胸部");
        else expect(studyDescription, label).toBe(new TextDecoder("gbk").decode(fourByte).trim());
        expect(items[0], label).toEqual({ "00401001": { vr: "SH", Value: ["運誠"] }, "00401002": { vr: "LO", Value: ["錦", "衆"] } });
      }
    }
  });

  it("leaves to dcmjs what it is not sure of, with the same result: other character sets, UN of a dictionary tag, odd numeric lengths, fragments in items, delimiter-like data in items", async () => {
    const cases: Array<[string, WriterElement[], RegExp]> = [
      ["ISO_IR 144", [E(0x0008, 0x0005, "CS", "ISO_IR 144"), E(0x0010, 0x0010, "PN", raw("\xbb\xee\xda"))], /^SpecificCharacterSet ISO_IR 144$/],
      ["an item in ISO 2022 IR 87", [E(0x0008, 0x1120, "SQ", [[E(0x0008, 0x0005, "CS", ["", "ISO 2022 IR 87"]), E(0x0010, 0x0010, "PN", raw("Yamada"))]])], /in an item$/],
      // GB2312 with code extensions: chooseCharset gives it the GBK decoder, but only the dcmjs path strips escapes
      ["ISO 2022 IR 58", [E(0x0008, 0x0005, "CS", ["", "ISO 2022 IR 58"]), E(0x0010, 0x0010, "PN", Buffer.concat([raw("Wang^XiaoDong=\x1b$)A"), iconv.encode("王^小东", "gbk")]))], /^SpecificCharacterSet \\ISO 2022 IR 58$/],
      ["an item in ISO 2022 IR 58 in a GB18030 data set", [E(0x0008, 0x0005, "CS", "GB18030"), E(0x0010, 0x0010, "PN", iconv.encode("Wang=王", "gb18030")),
        E(0x0008, 0x1120, "SQ", [[E(0x0008, 0x0005, "CS", ["", "ISO 2022 IR 58"]), E(0x0010, 0x0010, "PN", raw("Wang"))]])], /^SpecificCharacterSet \\ISO 2022 IR 58 in an item$/],
      ["GB18030 beside ISO 2022 IR 6", [E(0x0008, 0x0005, "CS", ["ISO 2022 IR 6", "GB18030"]), E(0x0010, 0x0010, "PN", iconv.encode("Wang=王", "gb18030"))], /^SpecificCharacterSet ISO 2022 IR 6\\GB18030$/],
      ["UN of a dictionary tag", [E(0x0028, 0x0010, "UN", Buffer.from([0, 2]))], /^UN with a dictionary VR$/],
      ["an odd US", [E(0x0028, 0x0010, "US", Buffer.from([0, 2, 0]))], /^a US value of 3 bytes$/],
      ["encapsulated fragments in an item", [E(0x0088, 0x0200, "SQ", [[E(0x0028, 0x0010, "US", 1),
        { tag: 0x7fe00010, vr: "OB", undefinedLength: true, value: Buffer.from("feff00e000000000feff00e002000000aabbfeffdde000000000", "hex") }]])], /undefined-length OB/],
      ["delimiter-like data in an item", [E(0x0008, 0x1120, "SQ", [[E(0x0009, 0x0010, "LO", "X"), E(0x0009, 0x1001, "OB", Buffer.from("feff0de000000000", "hex"))]])], /.+/],
      ["an item start in data", [E(0x0008, 0x1120, "SQ", [[E(0x0009, 0x0010, "LO", "X"), E(0x0009, 0x1001, "OB", Buffer.from("feff00e0ffffffff", "hex"))]])], /.+/],
    ];
    for (const [label, extra, why] of cases) {
      const els = byTag([...minimalElements(), ...extra]);
      const o = await differential(readFile(rawFile(els)), label);
      expect(o.path, label).toBe("dcmjs");
      expect(o.why, label).toMatch(why);
    }
  });

  it("keeps the last of duplicated elements and drops group 0000, as dcmjs's dictionary and toDicomJson do", async () => {
    const els = [E(0x0000, 0x0000, "UL", [4]), ...byTag(minimalElements()), E(0x0010, 0x0020, "LO", "SECOND"), E(0x0010, 0x0010, "PN", "Out^Of^Order")];
    const o = await differential(readFile(rawFile(els)), "duplicates");
    expect(o.path).toBe("fast");
    const ds = (o.result as { dataset: DicomJsonDataset }).dataset;
    expect(ds["00100020"]).toEqual({ vr: "LO", Value: ["SECOND"] });
    expect(Object.keys(ds)).toEqual(Object.keys(ds).sort());
    expect(Object.keys(ds).some((k) => k.startsWith("0000"))).toBe(false);
  });

  it("leaves to dcmjs an item whose data holds a delimiter with a length (dcmjs reads the wrong bytes, slowly: not run here)", () => {
    const meta = encodeFileMeta({ sopClassUID: "1.2.3", sopInstanceUID: "1.2.3.4", transferSyntaxUID: TS.explicitLE }).subarray(132);
    const el = (tag: number, vr: string, v: Buffer) => encodeDataset([{ tag, vr, value: v }], { explicitVR: true, littleEndian: true });
    const header = (tag: number, length: number) => { const b = Buffer.alloc(8); b.writeUInt32LE(((tag & 0xffff) << 16 | tag >>> 16) >>> 0, 0); b.writeUInt32LE(length, 4); return b; };
    const sq = Buffer.from("08002011" + "5351" + "0000" + "ffffffff", "hex"); // (0008,1120) SQ, undefined length
    const item = (content: Buffer) => Buffer.concat([header(0xfffee000, 0xffffffff), content, header(0xfffee00d, 0)]);
    const dataset = (ob: string) => Buffer.concat([sq, item(el(tagOf(0x0009, 0x1001), "OB", Buffer.from(ob, "hex"))), header(0xfffee0dd, 0)]);
    expect(fastDecodeHeader(meta, dataset("01020304")).dataset["00081120"]).toEqual({ vr: "SQ", Value: [{ "00091001": { vr: "OB", InlineBinary: "AQIDBA==" } }] });
    expect(() => fastDecodeHeader(meta, dataset("feff0de004000000"))).toThrow(/^an item dcmjs would misread$/);
    expect(() => fastDecodeHeader(meta, dataset("feff0de000000000"))).toThrow(FastDecodeFallback);
  });

  it("decodes single values directly: the text decoder in effect, ASCII fast, windows-1252 and UTF-8 (a BOM dropped) otherwise", () => {
    const v = (vr: string, b: Buffer, coding: TextCoding = "latin1") => decodeValue(vr, b, 0, b.length, coding);
    expect(v("LO", raw("caf\xe9 \x93q\x94"))).toEqual({ vr: "LO", Value: [new TextDecoder("latin1").decode(raw("caf\xe9 \x93q\x94"))] });
    expect(v("LO", raw("caf\xe9"))).toEqual({ vr: "LO", Value: ["café"] });
    expect(v("LO", raw("\ufeffcafé", "utf8"), "utf-8")).toEqual({ vr: "LO", Value: ["café"] });
    expect(v("LO", raw("caf\xe9"), "utf-8")).toEqual({ vr: "LO", Value: ["caf\ufffd"] });
    // GBK / GB18030: decoded whole, then split (錦 is E5 5C); each label its own decoder, as dcmjs's
    expect(v("LO", iconv.encode("錦\\運誠 ", "gbk"), "gbk")).toEqual({ vr: "LO", Value: ["錦", "運誠"] });
    const fourByte = iconv.encode("𠀀", "gb18030");
    expect(v("SH", fourByte, "gb18030")).toEqual({ vr: "SH", Value: ["𠀀"] });
    expect(v("SH", fourByte, "gbk")).toEqual({ vr: "SH", Value: [new TextDecoder("gbk").decode(fourByte)] });
    expect(v("CS", raw("caf\x80"))).toEqual({ vr: "CS", Value: ["caf\x80"] }); // the ASCII VRs read bytes, not windows-1252
    expect(v("PN", raw("Doe^John  "))).toEqual({ vr: "PN", Value: [{ Alphabetic: "Doe^John" }] });
    expect(() => v("UL", Buffer.alloc(6))).toThrow(FastDecodeFallback);
    expect(() => v("XX", Buffer.alloc(2))).toThrow(FastDecodeFallback);
  });

  it("reads the file meta as dcmjs does and refuses a meta without its group length", () => {
    const meta = encodeFileMeta({ sopClassUID: "1.2.3", sopInstanceUID: "1.2.3.4", transferSyntaxUID: TS.explicitLE }).subarray(132);
    const out = fastDecodeHeader(meta, Buffer.alloc(0));
    expect(out.dataset).toEqual({});
    expect(out.fileMeta["00020001"]).toEqual({ vr: "OB", InlineBinary: "AAE=" });
    expect(out.fileMeta["00020003"]).toEqual({ vr: "UI", Value: ["1.2.3.4"] });
    expect(() => fastDecodeHeader(meta.subarray(12), Buffer.alloc(0))).toThrow(FastDecodeFallback);
  });

  it("is the path taken for a 512x512 CT, which then never loads dcmjs (a fresh process)", () => {
    const script = `
      import { createRequire } from "node:module";
      const { bufferSource, headerDecoding, readPart10 } = await import("./src/dicom/part10.ts");
      const { makeInstance } = await import("./scripts/lib/synthetic.ts");
      const loaded = () => Object.keys(createRequire(import.meta.url).cache).some((k) => /node_modules[\\/]dcmjs[\\/]/.test(k));
      const file = makeInstance({ rows: 512, columns: 512, modality: "CT", charset: "ISO_IR 192", patientName: "Doe^Jane" });
      const opts = { maxHeaderBytes: 1 << 22, bulkDataThreshold: 1024 };
      const p = await readPart10(bufferSource(file), opts);
      const afterFast = loaded();
      headerDecoding.dcmjsOnly = true;
      await readPart10(bufferSource(file), opts);
      console.log(JSON.stringify({ afterFast, afterDcmjs: loaded(), fast: headerDecoding.fast, name: p.dataset["00100010"] }));`;
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: path.resolve(import.meta.dirname, "../.."), encoding: "utf8" });
    expect(JSON.parse(out)).toEqual({ afterFast: false, afterDcmjs: true, fast: 1, name: { vr: "PN", Value: [{ Alphabetic: "Doe^Jane" }] } });
  });
});
