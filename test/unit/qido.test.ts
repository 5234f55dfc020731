/**
 * The QIDO-RS query model (pure): parsing and validating query strings, value normalisation, and
 * what a match returns.
 */
import { describe, it, expect } from "vitest";
import {
  QidoQueryError, assembleQidoMatch, dateTimeBound, isDate, isDateTime, isTime, normalizeStoredDate, normalizeStoredTime, parseQidoQuery,
  qidoReturnPlan, timeBound, type QidoMatchValues, type QidoPathUids,
} from "../../src/dicom/qido.ts";
import { lookupKeyword, lookupTag, QIDO_ATTRIBUTES } from "../../src/dicom/attributes.ts";
import type { QidoLevel } from "../../src/dicom/qidoQuery.ts";
import { BULK_ROOT_PLACEHOLDER } from "../../src/dicom/types.ts";

const LIMITS = { defaultLimit: 100, maxLimit: 500 };
const parse = (q: string, level: QidoLevel = "study", path: QidoPathUids = {}) => parseQidoQuery(level, path, new URLSearchParams(q), LIMITS);
const fails = (q: string, pattern: RegExp, level: QidoLevel = "study") => {
  let err: unknown;
  try {
    parse(q, level);
  } catch (e) {
    err = e;
  }
  expect(err, q).toBeInstanceOf(QidoQueryError);
  expect((err as QidoQueryError).status).toBe(400);
  expect((err as Error).message, q).toMatch(pattern);
};
const matchOf = (q: string, level: QidoLevel = "study") => parse(q, level).filters[0]!.match;

describe("parseQidoQuery: keys", () => {
  it("accepts keywords and tags for the same attribute", () => {
    const byKeyword = parse("PatientID=X1");
    const byTag = parse("00100020=X1");
    expect(byKeyword.filters).toEqual([{ tag: "00100020", keyword: "PatientID", vr: "LO", match: { kind: "single", value: "X1" } }]);
    expect(byTag.filters).toEqual(byKeyword.filters);
    expect(parse("0020000d=1.2.3").filters[0]!.keyword).toBe("StudyInstanceUID");
  });

  it("defaults: no filters, default limit, offset 0, no fuzzy matching", () => {
    const q = parse("", "series", { studyInstanceUID: "1.2.3" });
    expect(q).toEqual({
      level: "series", studyInstanceUID: "1.2.3", filters: [], includeFields: [], includeAll: false, fuzzyMatching: false,
      limit: 100, offset: 0, unsupportedKeys: [], ignoredParameters: [],
    });
  });

  it("ignores parameters that are no attempt at a DICOM key (a cache-buster, a callback, a credential) and lists them", () => {
    const q = parse("_=1733412345678&PatientID=X1&callback=cb&access_token=abc&_=2");
    expect(q.filters.map((f) => f.keyword)).toEqual(["PatientID"]);
    expect(q.ignoredParameters).toEqual(["_", "callback", "access_token"]);
    // a capitalised name or a hex start is an attempt at a key: a typo would widen the search, so it stays an error
    fails("PatientNmae=x", /"PatientNmae" is not a DICOM attribute keyword/);
    fails("0010002=x", /"0010002"/);
  });

  it("refuses an unknown keyword with a sentence naming it", () => {
    fails("NoSuchKeyword=1", /"NoSuchKeyword" is not a DICOM attribute keyword/);
    fails("Patient Name=x", /"Patient Name"/);
  });

  it("a key repeated with the same value is fine, with another value (even as tag vs keyword) is an error", () => {
    expect(parse("PatientID=A&PatientID=A").filters).toHaveLength(1);
    fails("PatientID=A&PatientID=B", /PatientID is given twice/);
    fails("PatientID=A&00100020=B", /PatientID is given twice/);
    fails("limit=1&limit=2", /limit is given twice/);
  });

  it("puts valid DICOM keys it does not match on into unsupportedKeys", () => {
    const q = parse("InstitutionName=X&SOPInstanceUID=1.2&RequestAttributeSequence.RequestedProcedureID=7&00091001=x&NumberOfStudyRelatedInstances=3");
    expect(q.filters).toEqual([]);
    expect(q.unsupportedKeys).toEqual(["InstitutionName", "SOPInstanceUID", "RequestAttributeSequence.RequestedProcedureID", "00091001", "NumberOfStudyRelatedInstances"]);
    // a key of a lower level is matched at that level
    expect(parse("SOPInstanceUID=1.2", "instance").filters[0]!.keyword).toBe("SOPInstanceUID");
    // and a key of a higher level too (series across studies, by patient)
    expect(parse("PatientName=x*", "series").filters[0]!.keyword).toBe("PatientName");
    fails("RequestAttributeSequence.NoSuchThing=1", /"NoSuchThing"/);
  });

  it("limits the number of parameters and the length of values", () => {
    fails(Array.from({ length: 201 }, (_, i) => `includefield=${i % 2 ? "PatientAge" : "PatientSex"}`).join("&"), /more than 200 parameters/);
    fails(`PatientID=${"x".repeat(1025)}`, /longer than 1024/);
    fails("PatientID=a%00b", /control characters/);
  });

  it("refuses path UIDs that are not UIDs", () => {
    expect(() => parse("", "series", { studyInstanceUID: "1.2.x" })).toThrow(QidoQueryError);
    expect(() => parse("", "instance", { studyInstanceUID: "1.2", seriesInstanceUID: "01.2" })).toThrow(/SeriesInstanceUID/);
  });
});

describe("parseQidoQuery: includefield, limit, offset, fuzzymatching", () => {
  it("takes repeated and comma-separated includefield, by keyword or tag, and all", () => {
    const q = parse("includefield=PatientAge,00080080&includefield=StudyDescription&includefield=PatientAge&includefield=RequestAttributeSequence.RequestedProcedureID");
    expect(q.includeFields).toEqual(["00101010", "00080080", "00081030", "00400275"]);
    expect(q.includeAll).toBe(false);
    expect(parse("includefield=all").includeAll).toBe(true);
    expect(parse("includefield=00091001").includeFields).toEqual(["00091001"]);
    fails("includefield=Nope", /includefield "Nope"/);
  });

  it("limit is at least 1 and capped at maxLimit; offset is 0 or more", () => {
    expect(parse("limit=10&offset=20")).toMatchObject({ limit: 10, offset: 20 });
    expect(parse("limit=100000").limit).toBe(500);
    fails("limit=0", /limit "0" must be a whole number of at least 1/);
    fails("limit=-1", /limit/);
    fails("limit=ten", /limit/);
    fails("offset=-5", /offset/);
    fails("offset=1.5", /offset/);
  });

  it("fuzzymatching is true or false", () => {
    expect(parse("fuzzymatching=true").fuzzyMatching).toBe(true);
    expect(parse("fuzzymatching=false").fuzzyMatching).toBe(false);
    fails("fuzzymatching=yes", /fuzzymatching must be true or false/);
  });
});

describe("parseQidoQuery: values per VR", () => {
  it("dates: a value or a range with one or two bounds; anything else is refused", () => {
    expect(matchOf("StudyDate=20240115")).toEqual({ kind: "single", value: "20240115" });
    expect(matchOf("StudyDate=20240101-20240131")).toEqual({ kind: "range", from: "20240101", to: "20240131" });
    expect(matchOf("StudyDate=-20240131")).toEqual({ kind: "range", from: null, to: "20240131" });
    expect(matchOf("StudyDate=20240101-")).toEqual({ kind: "range", from: "20240101", to: null });
    expect(matchOf("StudyDate=")).toEqual({ kind: "universal" });
    fails("StudyDate=2024-01-01", /StudyDate "2024-01-01" is not a range/);
    fails("StudyDate=20240230", /StudyDate "20240230" is not valid/);
    fails("StudyDate=2024", /not valid/);
    fails("StudyDate=-", /give at least one bound/);
    fails("StudyDate=20240201-20240101", /ends before it starts/);
    fails("StudyDate=2024*", /does not accept wildcards/);
  });

  it("times: HH, HHMM, HHMMSS, fractions, and ranges", () => {
    expect(matchOf("StudyTime=0800-1200")).toEqual({ kind: "range", from: "0800", to: "1200" });
    expect(matchOf("StudyTime=123015.5")).toEqual({ kind: "single", value: "123015.5" });
    expect(matchOf("StudyTime=07-")).toEqual({ kind: "range", from: "07", to: null });
    fails("StudyTime=2500", /StudyTime "2500" is not valid/);
    fails("StudyTime=12:30", /not valid/);
    fails("StudyTime=1200-0800", /ends before it starts/);
  });

  it("date-times: a value (with a UTC offset) or a range whose dash is told apart from the offset's", () => {
    expect(matchOf("AcquisitionDateTime=20240101120000-0500", "instance")).toEqual({ kind: "single", value: "20240101120000-0500" });
    expect(matchOf("AcquisitionDateTime=20240101-20240102", "instance")).toEqual({ kind: "range", from: "20240101", to: "20240102" });
    expect(matchOf("AcquisitionDateTime=20240101120000%2B0800-", "instance")).toEqual({ kind: "range", from: "20240101120000+0800", to: null });
    // an unencoded "+" arrives as a space
    expect(matchOf("AcquisitionDateTime=20240101120000+0800", "instance")).toEqual({ kind: "single", value: "20240101120000+0800" });
    fails("AcquisitionDateTime=20241301", /AcquisitionDateTime "20241301" is not valid/, "instance");
  });

  it("UIDs: one, or a list with commas or backslashes; never wildcards", () => {
    expect(matchOf("StudyInstanceUID=1.2.3")).toEqual({ kind: "single", value: "1.2.3" });
    expect(matchOf("StudyInstanceUID=1.2.3,1.2.4")).toEqual({ kind: "uidList", values: ["1.2.3", "1.2.4"] });
    expect(matchOf("StudyInstanceUID=1.2\\3.4")).toEqual({ kind: "uidList", values: ["1.2", "3.4"] });
    fails("StudyInstanceUID=1.2.*", /does not accept wildcards/);
    fails("StudyInstanceUID=1.02", /"1.02" is not a DICOM UID/);
    fails("StudyInstanceUID=1.2,,1.3", /"" is not a DICOM UID/);
    fails(`StudyInstanceUID=${"1.".repeat(40)}1`, /not a DICOM UID/);
  });

  it("code strings are upper-cased; lists of them match any; bad characters are refused", () => {
    expect(matchOf("ModalitiesInStudy=ct")).toEqual({ kind: "single", value: "CT" });
    expect(matchOf("ModalitiesInStudy=CT\\mr")).toEqual({ kind: "uidList", values: ["CT", "MR"] });
    expect(matchOf("ModalitiesInStudy=CT,MR")).toEqual({ kind: "uidList", values: ["CT", "MR"] });
    expect(matchOf("ModalitiesInStudy=M?")).toEqual({ kind: "wildcard", pattern: "M?" });
    expect(matchOf("PatientSex=*")).toEqual({ kind: "universal" });
    fails("ModalitiesInStudy=C-T", /not a code string/);
    fails("ModalitiesInStudy=CT,M*", /cannot contain empty values or wildcards/);
  });

  it("names and other text: single, wildcard, universal; backslash lists refused", () => {
    expect(matchOf("PatientName=%20Zhang^San%20")).toEqual({ kind: "single", value: "Zhang^San" });
    expect(matchOf("PatientName=张*")).toEqual({ kind: "wildcard", pattern: "张*" });
    expect(matchOf("PatientName=*")).toEqual({ kind: "universal" });
    expect(matchOf("AccessionNumber=A?1")).toEqual({ kind: "wildcard", pattern: "A?1" });
    fails("PatientID=A\\B", /several values separated by/);
  });

  it("integers: SeriesNumber and InstanceNumber", () => {
    expect(matchOf("SeriesNumber=007", "series")).toEqual({ kind: "single", value: "7" });
    fails("SeriesNumber=x", /SeriesNumber "x" is not an integer/, "series");
    fails("InstanceNumber=1*", /does not accept wildcards/, "instance");
  });
});

describe("value normalisation", () => {
  it("validates DA, TM and DT", () => {
    expect(isDate("20240229")).toBe(true);
    expect(isDate("20230229")).toBe(false);
    expect(isTime("235960")).toBe(true);
    expect(isTime("2360")).toBe(false);
    expect(isTime("1230.5")).toBe(false);
    expect(isDateTime("2024")).toBe(true);
    expect(isDateTime("20240101120000.123456+0800")).toBe(true);
    expect(isDateTime("20240101120000+2500")).toBe(false);
  });

  it("pads times and date-times to comparable bounds", () => {
    expect(timeBound("12", "low")).toBe("120000.000000");
    expect(timeBound("12", "high")).toBe("125959.999999");
    expect(timeBound("1230", "high")).toBe("123059.999999");
    expect(timeBound("123015.5", "high")).toBe("123015.500000");
    expect(dateTimeBound("2024", "low")).toBe("20240101000000.000000");
    expect(dateTimeBound("202402", "high")).toBe("20240231235959.999999");
    expect(dateTimeBound("20240101120000-0500", "low")).toBe("20240101120000.000000");
  });

  it("accepts the old dotted date and colon time forms when storing", () => {
    expect(normalizeStoredDate("2024.01.15")).toBe("20240115");
    expect(normalizeStoredDate("garbage")).toBeNull();
    expect(normalizeStoredDate(undefined)).toBeNull();
    expect(normalizeStoredTime("10:15:30")).toBe("101530.000000");
    expect(normalizeStoredTime("1015")).toBe("101500.000000");
    expect(normalizeStoredTime(42)).toBeNull();
  });
});

describe("attribute catalogue", () => {
  it("knows the data dictionary by keyword (any case) and by tag", () => {
    expect(lookupKeyword("InstitutionName")).toEqual({ tag: "00080080", keyword: "InstitutionName", vr: "LO" });
    expect(lookupKeyword("institutionname")?.tag).toBe("00080080");
    expect(lookupKeyword("NotAKeyword")).toBeNull();
    expect(lookupKeyword("constructor")).toBeNull();
    expect(lookupTag("0008103e")?.keyword).toBe("SeriesDescription");
    expect(lookupTag("00091001")).toBeNull();
  });

  it("has the PS3.18 required matching keys of each level", () => {
    const matching = new Set(QIDO_ATTRIBUTES.filter((a) => a.matching).map((a) => a.keyword));
    for (const k of ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName", "PatientName", "PatientID", "StudyInstanceUID", "StudyID",
      "Modality", "SeriesInstanceUID", "SeriesNumber", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
      "SOPClassUID", "SOPInstanceUID", "InstanceNumber"]) {
      expect(matching.has(k), k).toBe(true);
    }
    for (const a of QIDO_ATTRIBUTES) expect(lookupTag(a.tag)?.keyword, a.tag).toBe(a.keyword);
  });
});

describe("what a match returns", () => {
  const values = (name: unknown): QidoMatchValues => ({
    study: {
      studyInstanceUID: "1.2",
      attrs: { "00100010": { vr: "PN", Value: [name] }, "00080020": { vr: "DA", Value: ["20240101"] }, "00101010": { vr: "AS", Value: ["045Y"] } },
      numberOfSeries: 2,
      numberOfInstances: 5,
      modalities: ["CT", "MR"],
    },
    series: { seriesInstanceUID: "1.2.3", attrs: { "00080060": { vr: "CS", Value: ["CT"] } }, numberOfInstances: 3 },
    instance: { sopInstanceUID: "1.2.3.4", attrs: { "00200013": { vr: "IS", Value: [4] } } },
    metadata: { "00080080": { vr: "LO", Value: ["Hospital"] }, "00180050": { vr: "DS", Value: [1] }, "00200013": { vr: "IS", Value: [4] } },
  });

  it("study level: defaults and computed attributes, sorted, with RetrieveURL under the placeholder root", () => {
    const q = parse("");
    const plan = qidoReturnPlan(q);
    expect(plan.needsMetadata).toBe(false);
    const m = assembleQidoMatch("study", plan, values({ Alphabetic: "Smith" }));
    expect(Object.keys(m)).toEqual(["00080020", "00080056", "00080061", "00081190", "00100010", "0020000D", "00201206", "00201208"]);
    expect(m["00081190"]).toEqual({ vr: "UR", Value: [`${BULK_ROOT_PLACEHOLDER}/studies/1.2`] });
    expect(m["00080061"]).toEqual({ vr: "CS", Value: ["CT", "MR"] });
    expect(m["00080005"]).toBeUndefined();
    expect(assembleQidoMatch("study", plan, values({ Alphabetic: "Zhang", Ideographic: "张" }))["00080005"]).toEqual({ vr: "CS", Value: ["ISO_IR 192"] });
  });

  it("includefield reads catalogued attributes from the entity and others from the metadata", () => {
    const plan = qidoReturnPlan(parse("includefield=PatientAge,InstitutionName"));
    expect(plan.needsMetadata).toBe(true);
    const m = assembleQidoMatch("study", plan, values({ Alphabetic: "Smith" }));
    expect(m["00101010"]).toEqual({ vr: "AS", Value: ["045Y"] });
    expect(m["00080080"]).toEqual({ vr: "LO", Value: ["Hospital"] });
  });

  it("series level: study attributes only when the path names no study", () => {
    const inStudy = assembleQidoMatch("series", qidoReturnPlan(parse("", "series", { studyInstanceUID: "1.2" })), values({ Alphabetic: "Smith" }));
    expect(inStudy["00100010"]).toBeUndefined();
    expect(inStudy["0020000D"]).toEqual({ vr: "UI", Value: ["1.2"] });
    expect(inStudy["00201209"]).toEqual({ vr: "IS", Value: [3] });
    expect(inStudy["00081190"]!.Value).toEqual([`${BULK_ROOT_PLACEHOLDER}/studies/1.2/series/1.2.3`]);
    const across = assembleQidoMatch("series", qidoReturnPlan(parse("", "series")), values({ Alphabetic: "Smith" }));
    expect(across["00100010"]).toBeDefined();
    expect(across["00201208"]).toEqual({ vr: "IS", Value: [5] });
  });

  it("instance level: series attributes unless the path names the series; includefield=all adds the whole data set", () => {
    const inSeries = assembleQidoMatch("instance", qidoReturnPlan(parse("", "instance", { studyInstanceUID: "1.2", seriesInstanceUID: "1.2.3" })), values("x"));
    expect(inSeries["00080060"]).toBeUndefined();
    expect(inSeries["00080018"]).toEqual({ vr: "UI", Value: ["1.2.3.4"] });
    expect(inSeries["00081190"]!.Value).toEqual([`${BULK_ROOT_PLACEHOLDER}/studies/1.2/series/1.2.3/instances/1.2.3.4`]);
    const inStudy = assembleQidoMatch("instance", qidoReturnPlan(parse("", "instance", { studyInstanceUID: "1.2" })), values("x"));
    expect(inStudy["00080060"]).toEqual({ vr: "CS", Value: ["CT"] });
    const allPlan = qidoReturnPlan(parse("includefield=all", "instance", { studyInstanceUID: "1.2" }));
    expect(allPlan.allInstanceAttributes).toBe(true);
    expect(assembleQidoMatch("instance", allPlan, values("x"))["00180050"]).toEqual({ vr: "DS", Value: [1] });
  });

  it("returns matching keys even without includefield", () => {
    const plan = qidoReturnPlan(parse("PatientAge=&IssuerOfPatientID=X"));
    expect(plan.tags.has("00100021")).toBe(true);
    // PatientAge is not a matching key: unsupported, so not returned unless includefield'ed
    expect(plan.tags.has("00101010")).toBe(false);
  });
});
