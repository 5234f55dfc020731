import { describe, it, expect } from "vitest";
import { UidMap, applyProfile, burnedInRisk, cleanText, identityOf, isStandardUid, profileRules, shiftDate, type DcmjsDataset, type DeidentifyOptions } from "../../src/deidentify/profile.ts";
import { deidentifyRequestOf } from "../../src/deidentify/routes.ts";

const OPTS: DeidentifyOptions = { retainModifiedDates: false, retainPatientCharacteristics: false, cleanDescriptors: false, dateOffsetDays: 0, pseudonym: "P1", keepPrivateTags: [] };
const ds = (): DcmjsDataset => ({
  "00080016": { vr: "UI", Value: ["1.2.840.10008.5.1.4.1.1.2"] },
  "00080018": { vr: "UI", Value: ["1.2.3.4.5"] },
  "00080020": { vr: "DA", Value: ["20240301"] },
  "00080030": { vr: "TM", Value: ["101500"] },
  "00080060": { vr: "CS", Value: ["CT"] },
  "00080080": { vr: "LO", Value: ["Hospital"] },
  "00081030": { vr: "LO", Value: ["Chest of Doe for 123456"] },
  "00081140": { vr: "SQ", Value: [{ "00081150": { vr: "UI", Value: ["1.2.840.10008.5.1.4.1.1.2"] }, "00081155": { vr: "UI", Value: ["1.2.3.4.6"] }, "00100010": { vr: "PN", Value: [{ Alphabetic: "Doe^John" }] } }] },
  "00100010": { vr: "PN", Value: [{ Alphabetic: "Doe^John" }] },
  "00100020": { vr: "LO", Value: ["123456"] },
  "00100030": { vr: "DA", Value: ["19700101"] },
  "00100040": { vr: "CS", Value: ["F"] },
  "00101010": { vr: "AS", Value: ["054Y"] },
  "0020000D": { vr: "UI", Value: ["1.2.3"] },
  "60003000": { vr: "OW", Value: [new ArrayBuffer(8)] },
  "00090010": { vr: "LO", Value: ["ACME"] },
  "00091001": { vr: "LO", Value: ["secret"] },
});

describe("Basic Application Level Confidentiality Profile", () => {
  it("every keyword of the table names a dictionary attribute", () => {
    const rules = profileRules();
    expect(rules.size).toBeGreaterThan(150);
    expect(rules.get("00100010")).toMatchObject({ keyword: "PatientName", action: "D" });
    expect(rules.get("00080080")).toMatchObject({ keyword: "InstitutionName", action: "X" });
  });

  it("basic profile: removes, empties, replaces; no option keeps a characteristic or a date", () => {
    const uids = new UidMap();
    const { dataset: out } = applyProfile(ds(), OPTS, uids, identityOf(ds()));
    expect(out["00100010"]!.Value).toEqual([{ Alphabetic: "P1" }]);
    expect(out["00100020"]!.Value).toEqual(["P1"]);
    expect(out["00100030"]!.Value).toEqual([]);
    expect(out["00100040"]!.Value).toEqual([]);
    expect(out["00101010"]).toBeUndefined();
    expect(out["00080080"]).toBeUndefined();
    expect(out["00081030"]).toBeUndefined();
    expect(out["00080020"]!.Value).toEqual([]);
    expect(out["60003000"]).toBeUndefined();
    expect(out["00090010"]).toBeUndefined();
    expect(out["00091001"]).toBeUndefined();
    expect(out["00280303"]!.Value).toEqual(["REMOVED"]);
    // SOP class stays, instance UIDs are replaced the same way everywhere, names inside sequences are replaced too
    expect(out["00080016"]!.Value).toEqual(["1.2.840.10008.5.1.4.1.1.2"]);
    expect(out["00080018"]!.Value![0]).toBe(uids.map1("1.2.3.4.5"));
    const item = (out["00081140"]!.Value as DcmjsDataset[])[0]!;
    expect(item["00081150"]!.Value).toEqual(["1.2.840.10008.5.1.4.1.1.2"]);
    expect(item["00081155"]!.Value).toEqual([uids.map1("1.2.3.4.6")]);
    expect(item["00100010"]!.Value).toEqual([{ Alphabetic: "P1" }]);
  });

  it("options: modified dates, patient characteristics, clean descriptors, a kept private block", () => {
    const opts = { ...OPTS, retainModifiedDates: true, retainPatientCharacteristics: true, cleanDescriptors: true, dateOffsetDays: -31, keepPrivateTags: ["00091001"] };
    const { dataset: out } = applyProfile(ds(), opts, new UidMap(), identityOf(ds()));
    expect(out["00080020"]!.Value).toEqual(["20240130"]);
    expect(out["00080030"]!.Value).toEqual(["101500"]);
    expect(out["00100030"]!.Value).toEqual([]);
    expect(out["00100040"]!.Value).toEqual(["F"]);
    expect(out["00101010"]!.Value).toEqual(["054Y"]);
    expect(out["00081030"]!.Value).toEqual(["Chest of for"]);
    expect(out["00090010"]!.Value).toEqual(["ACME"]);
    expect(out["00091001"]!.Value).toEqual(["secret"]);
    expect(out["00280303"]!.Value).toEqual(["MODIFIED"]);
    expect((out["00120064"]!.Value as DcmjsDataset[]).map((c) => c["00080100"]!.Value![0])).toEqual(["113100", "113107", "113108", "113105", "113111"]);
  });

  it("UIDs: one-way, consistent within a map, different across maps, standard ones kept", () => {
    const a = new UidMap();
    const b = new UidMap();
    expect(a.map1("1.2.3")).toBe(a.map1("1.2.3 "));
    expect(a.map1("1.2.3")).not.toBe(b.map1("1.2.3"));
    expect(a.map1("1.2.3")).toMatch(/^2\.25\.\d{1,39}$/);
    expect(a.map1("1.2.840.10008.1.2.4.50")).toBe("1.2.840.10008.1.2.4.50");
    expect(isStandardUid("1.2.840.10008.5.1.4.1.1.4")).toBe(true);
    expect(isStandardUid("1.2.840.113619.2.1")).toBe(false);
  });

  it("dates shift across month and leap-year borders; text loses names, IDs and birth dates", () => {
    expect(shiftDate("20240301", -1)).toBe("20240229");
    expect(shiftDate("20230101", -1)).toBe("20221231");
    expect(shiftDate("not a date", 5)).toBe("");
    const who = { names: ["Doe^John=杜^约翰"], ids: ["MRN-9"], birthDates: ["19700101"] };
    expect(cleanText("John Doe (MRN-9), born 1970-01-01, CT 杜约翰", who)).toBe("(), born , CT");
  });

  it("burned-in annotation risk: YES, or known modalities and SOP classes when absent", () => {
    expect(burnedInRisk({ "00280301": { vr: "CS", Value: ["YES"] } })).toMatch(/YES/);
    expect(burnedInRisk({ "00280301": { vr: "CS", Value: ["NO"] }, "00080060": { vr: "CS", Value: ["US"] } })).toBeNull();
    expect(burnedInRisk({ "00080060": { vr: "CS", Value: ["US"] } })).toMatch(/US/);
    expect(burnedInRisk({ "00080060": { vr: "CS", Value: ["CT"] }, "00080016": { vr: "UI", Value: ["1.2.840.10008.5.1.4.1.1.7"] } })).toMatch(/secondary capture/);
    expect(burnedInRisk({ "00080060": { vr: "CS", Value: ["CT"] } })).toBeNull();
  });

  it("request options: defaults named, wrong types refused", () => {
    expect(deidentifyRequestOf("1.2", {})).toMatchObject({ retainModifiedDates: true, retainPatientCharacteristics: true, cleanDescriptors: true, includeBurnedIn: false, keepPrivateTags: [] });
    expect(() => deidentifyRequestOf("1.2", { includeBurnedIn: "yes" })).toThrow(/true or false/);
    expect(() => deidentifyRequestOf("1.2", { keepPrivateTags: "00091001" })).toThrow(/list of private tags/);
  });
});
