import { describe, expect, it } from "vitest";
import { chooseCharset, decodeJisX0201WithExtensions, firstNumber, firstString, needsJisX0201, sortDicomJson, textAttribute, toDicomJson, toDicomJsonAttribute } from "../../src/dicom/dicomJson.ts";
import { H31_YAMADA } from "../support/fixtures.ts";

describe("toDicomJson", () => {
  it("converts each VR family the way PS3.18 F.2 says, without dcmjs internals", () => {
    const ab = new Uint8Array([1, 2, 3, 4]).buffer;
    const ds = toDicomJson({
      "00100010": { vr: "PN", Value: [{ Alphabetic: "Zhang^San", Ideographic: "张^三", Phonetic: "" }], _rawValue: "Zhang^San=张^三" },
      "00280010": { vr: "US", Value: [512], _rawValue: [512] },
      "00281050": { vr: "DS", Value: [40, 60], _rawValue: ["40", "60"] },
      "00200013": { vr: "IS", Value: ["7"] },
      "00280009": { vr: "AT", Value: [0x00181063] },
      "00091001": { vr: "OB", Value: [ab] },
      "00081032": { vr: "SQ", Value: [{ "00080100": { vr: "SH", Value: ["RPID16"], _rawValue: ["RPID16"] } }] },
      "00080018": { vr: "UI", Value: ["1.2.3"], _rawValue: ["1.2.3\0"] },
      "00101030": { vr: "DS", Value: [null], _rawValue: [""] },
      "00081040": { vr: "LO", Value: [""] },
      "00080060": { vr: "CS", Value: ["CT"] },
    });
    expect(ds).toEqual({
      "00080018": { vr: "UI", Value: ["1.2.3"] },
      "00080060": { vr: "CS", Value: ["CT"] },
      "00081032": { vr: "SQ", Value: [{ "00080100": { vr: "SH", Value: ["RPID16"] } }] },
      "00081040": { vr: "LO" },
      "00091001": { vr: "OB", InlineBinary: "AQIDBA==" },
      "00100010": { vr: "PN", Value: [{ Alphabetic: "Zhang^San", Ideographic: "张^三" }] },
      "00101030": { vr: "DS" },
      "00200013": { vr: "IS", Value: [7] },
      "00280009": { vr: "AT", Value: ["00181063"] },
      "00280010": { vr: "US", Value: [512] },
      "00281050": { vr: "DS", Value: [40, 60] },
    });
    expect(Object.keys(ds)).toEqual(Object.keys(ds).sort());
  });

  it("keeps a malformed UID as written (dcmjs would strip the letters)", () => {
    expect(toDicomJsonAttribute({ vr: "UI", Value: ["1.2.4"], _rawValue: ["1.2.abc4"] })).toEqual({ vr: "UI", Value: ["1.2.abc4"] });
  });

  it("marks empty values in a multi-valued attribute as null, and empty sequences have no Value", () => {
    expect(toDicomJsonAttribute({ vr: "LO", Value: ["A", "", "C"] })).toEqual({ vr: "LO", Value: ["A", null, "C"] });
    expect(toDicomJsonAttribute({ vr: "SQ", Value: [] })).toEqual({ vr: "SQ" });
    expect(toDicomJsonAttribute({ vr: "OB", Value: [new ArrayBuffer(0)] })).toEqual({ vr: "OB" });
  });

  it("turns 64-bit integers into numbers when safe and strings when not", () => {
    expect(toDicomJsonAttribute({ vr: "UV", Value: [5n, 2n ** 63n] })).toEqual({ vr: "UV", Value: [5, "9223372036854775808"] });
  });

  it("reads person names given as strings and strips ISO 2022 escapes and NUL padding when asked", () => {
    expect(toDicomJsonAttribute({ vr: "PN", Value: ["Doe^John==Doe^Jon"] })).toEqual({ vr: "PN", Value: [{ Alphabetic: "Doe^John", Phonetic: "Doe^Jon" }] });
    const escaped = { vr: "PN", Value: [{ Alphabetic: "Zhang^San", Ideographic: "\x1b$)A张^\x1b$)A三\0" }] };
    expect(toDicomJsonAttribute(escaped, { stripIso2022Escapes: true })).toEqual({ vr: "PN", Value: [{ Alphabetic: "Zhang^San", Ideographic: "张^三" }] });
    expect(toDicomJsonAttribute({ vr: "LO", Value: ["\x1b$)A北京\0"] }, { stripIso2022Escapes: true })).toEqual({ vr: "LO", Value: ["北京"] });
  });

  it("leaves out group 0000 (command elements, and the reader's empty-item marker)", () => {
    expect(toDicomJson({ "00000000": { vr: "UL", Value: [0] }, "00100020": { vr: "LO", Value: ["X"] } })).toEqual({ "00100020": { vr: "LO", Value: ["X"] } });
  });

  it("has small accessors", () => {
    const ds = sortDicomJson({ "00280010": { vr: "US", Value: [8] }, "00100020": { vr: "LO", Value: ["P"] } });
    expect(Object.keys(ds)).toEqual(["00100020", "00280010"]);
    expect(firstString(ds, "00100020")).toBe("P");
    expect(firstNumber(ds, "00280010")).toBe(8);
    expect(firstNumber(ds, "00100020")).toBeUndefined();
  });
});

describe("chooseCharset", () => {
  it("maps single values to the decoder dcmjs understands", () => {
    expect(chooseCharset(["GB18030"])).toMatchObject({ decoder: "gb18030", dcmjsTerm: "GB18030", iso2022: false, unsupported: [] });
    expect(chooseCharset(["GBK"])).toMatchObject({ decoder: "gbk", dcmjsTerm: "GBK" });
    expect(chooseCharset(["ISO_IR 192"])).toMatchObject({ decoder: "utf-8", dcmjsTerm: "ISO_IR 192" });
    expect(chooseCharset(["ISO_IR 100"])).toMatchObject({ decoder: "windows-1252", dcmjsTerm: "ISO_IR 100" });
    expect(chooseCharset([""])).toMatchObject({ decoder: "windows-1252" });
  });

  it("picks the extension set of a multi-valued value and notes ISO 2022", () => {
    expect(chooseCharset(["", "ISO 2022 IR 58"])).toMatchObject({ decoder: "gbk", iso2022: true, terms: ["", "ISO 2022 IR 58"] });
    expect(chooseCharset(["ISO 2022 IR 6", "ISO 2022 IR 149"])).toMatchObject({ decoder: "euc-kr", dcmjsTerm: "ISO 2022 IR 149" });
    expect(chooseCharset(["ISO 2022 IR 13", "ISO 2022 IR 87"])).toMatchObject({ decoder: "iso-2022-jp" });
  });

  it("falls back instead of failing on values it does not know", () => {
    expect(chooseCharset(["ISO_IR 999"])).toMatchObject({ decoder: "windows-1252", dcmjsTerm: "ISO_IR 100", unsupported: ["ISO_IR 999"] });
    expect(chooseCharset(["KLINGON", "GB18030"])).toMatchObject({ decoder: "gb18030", unsupported: ["KLINGON"] });
  });
});

describe("ISO 2022 IR 13 with code extensions (half-width katakana)", () => {
  it("decodes the PS3.5 H.3.1 example: JIS X 0201 katakana in GR, JIS X 0208 after ESC $ B, escapes removed", () => {
    expect(decodeJisX0201WithExtensions(H31_YAMADA)).toBe("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう");
    // the single decoder used before gives replacement characters for the katakana
    expect(new TextDecoder("iso-2022-jp").decode(H31_YAMADA)).toContain("\ufffd");
  });

  it("is used only for IR 13 beside a two-byte set", () => {
    expect(needsJisX0201(chooseCharset(["ISO 2022 IR 13", "ISO 2022 IR 87"]))).toBe(true);
    expect(needsJisX0201(chooseCharset(["ISO 2022 IR 13"]))).toBe(false);
    expect(needsJisX0201(chooseCharset(["", "ISO 2022 IR 87"]))).toBe(false);
  });
});

describe("textAttribute (raw text decoded in a character set)", () => {
  const ir13 = chooseCharset(["ISO 2022 IR 13", "ISO 2022 IR 87"]);
  it("decodes PN component groups of ISO 2022 IR 13 \\ IR 87 (katakana, kanji, hiragana)", () => {
    expect(textAttribute("PN", H31_YAMADA, ir13)).toEqual({ vr: "PN", Value: [{ Alphabetic: "ﾔﾏﾀﾞ^ﾀﾛｳ", Ideographic: "山田^太郎", Phonetic: "やまだ^たろう" }] });
  });
  it("splits multi-valued text on backslash, keeps LT whole, drops padding", () => {
    const katakana = Buffer.from("d4cfc0de5ec0dbb3", "hex"); // ﾔﾏﾀﾞ^ﾀﾛｳ
    expect(textAttribute("LO", Buffer.concat([katakana, Buffer.from("\\ AB ")]), ir13)).toEqual({ vr: "LO", Value: ["ﾔﾏﾀﾞ^ﾀﾛｳ", "AB"] });
    expect(textAttribute("ST", Buffer.from(" a "), ir13)).toEqual({ vr: "ST", Value: [" a"] }); // leading spaces count in ST
    expect(textAttribute("LT", Buffer.from("a\\b\0"), chooseCharset(["ISO_IR 192"]))).toEqual({ vr: "LT", Value: ["a\\b"] });
    // ISO_IR 13 alone: Shift_JIS reads the katakana; ISO 2022 IR 149: escapes removed
    expect(textAttribute("SH", katakana, chooseCharset(["ISO_IR 13"]))).toEqual({ vr: "SH", Value: ["ﾔﾏﾀﾞ^ﾀﾛｳ"] });
    const hangul = Buffer.concat([Buffer.from([0x1b, 0x24, 0x29, 0x43]), Buffer.from("c8abb1e6b5bf", "hex")]);
    expect(textAttribute("LO", hangul, chooseCharset(["", "ISO 2022 IR 149"]))).toEqual({ vr: "LO", Value: ["홍길동"] });
  });
});
