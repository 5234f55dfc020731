import { describe, expect, it } from "vitest";
import { isValidUid, newUid, SOPClass, TransferSyntaxUID, uidFromName, IMPLEMENTATION_CLASS_UID } from "../../src/dicom/uids.ts";

describe("isValidUid", () => {
  it("accepts dot-separated digit components", () => {
    for (const u of ["1.2.840.10008.1.2.1", "0", "1.0.2", "2.25.0", "2.25.329800735698586629295641978511506172918", "1." + "2".repeat(62)]) {
      expect(isValidUid(u), u).toBe(true);
    }
  });

  it("refuses empty components, leading zeros, other characters and more than 64 characters", () => {
    for (const u of ["", ".", "1.", ".1", "1..2", "1.02", "00", "1.2.abc", "1.2 ", " 1.2", "1,2", "1.2\0", "1." + "2".repeat(63), "-1.2"]) {
      expect(isValidUid(u), JSON.stringify(u)).toBe(false);
    }
  });
});

describe("newUid / uidFromName", () => {
  it("makes valid, distinct 2.25 UIDs of at most 64 characters", () => {
    const uids = Array.from({ length: 500 }, () => newUid());
    expect(uids.filter((u) => !isValidUid(u) || !u.startsWith("2.25.") || u.length > 44)).toEqual([]);
    expect(new Set(uids).size).toBe(500);
  });

  it("derives the same valid UID from the same name", () => {
    expect(uidFromName("a")).toBe(uidFromName("a"));
    expect(uidFromName("a")).not.toBe(uidFromName("b"));
    expect(isValidUid(uidFromName("a"))).toBe(true);
    expect(isValidUid(IMPLEMENTATION_CLASS_UID)).toBe(true);
  });

  it("names valid constants", () => {
    for (const u of [...Object.values(SOPClass), ...Object.values(TransferSyntaxUID)]) expect(isValidUid(u), u).toBe(true);
  });
});
