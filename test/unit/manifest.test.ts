import { describe, expect, it } from "vitest";
import { initialItems, ManifestError, parseManifest, progressOf } from "../../src/transfers/manifest.ts";
import { SqliteTransferStore } from "../../src/transfers/sqliteTransferStore.ts";
import { transferStoreContract } from "../contracts/transferStore.ts";

const sha = (c: string) => c.repeat(64);
const item = (uid: string, c = "a", size = 10) => ({ sopInstanceUID: uid, sha256: sha(c), size });

describe("parseManifest", () => {
  it("accepts a valid manifest and lower-cases hashes", () => {
    const m = parseManifest({ label: "CT chest", instances: [{ ...item("1.2.3"), sha256: "A".repeat(64), studyInstanceUID: "1.2", seriesInstanceUID: "1.2.1" }] }, 10);
    expect(m.label).toBe("CT chest");
    expect(m.instances[0]).toEqual({ sopInstanceUID: "1.2.3", sha256: "a".repeat(64), size: 10, studyInstanceUID: "1.2", seriesInstanceUID: "1.2.1" });
  });

  it.each([
    ["not an object", [], /must be a JSON object/],
    ["no instances", { instances: [] }, /at least one instance/],
    ["a bad UID", { instances: [item("1.02.3")] }, /instances\[0\]\.sopInstanceUID: must be a DICOM UID/],
    ["a UID over 64 characters", { instances: [item("1." + "2".repeat(64))] }, /instances\[0\]\.sopInstanceUID/],
    ["a short hash", { instances: [{ ...item("1.2"), sha256: "abc" }] }, /instances\[0\]\.sha256: must be the SHA-256/],
    ["a negative size", { instances: [{ ...item("1.2"), size: -1 }] }, /instances\[0\]\.size/],
    ["an unknown field", { instances: [{ ...item("1.2"), path: "/etc/passwd" }] }, /instances\[0\]/],
    ["a bad study UID", { instances: [{ ...item("1.2"), studyInstanceUID: "x" }] }, /studyInstanceUID/],
  ])("refuses %s with a sentence naming the field", (_what, body, message) => {
    expect(() => parseManifest(body, 10)).toThrow(ManifestError);
    expect(() => parseManifest(body, 10)).toThrow(message);
  });

  it("refuses a SOPInstanceUID listed twice", () => {
    expect(() => parseManifest({ instances: [item("1.2"), item("1.3"), item("1.2", "b")] }, 10)).toThrow(/lists SOPInstanceUID 1.2 twice \(instances\[2\]\)/);
  });

  it("refuses more instances than the limit before validating them", () => {
    const instances = Array.from({ length: 6 }, () => ({ bogus: true }));
    expect(() => parseManifest({ instances }, 5)).toThrow(/lists 6 instances; the relay accepts at most 5/);
  });
});

describe("initialItems", () => {
  it("marks identical held bytes present, others (and conflicts) missing", () => {
    const m = parseManifest({ instances: [item("1.1", "a"), item("1.2", "b"), item("1.3", "c")] }, 10);
    const held = new Map([["1.1", { sha256: sha("a") }], ["1.3", { sha256: sha("d") }]]);
    const items = initialItems(m, held, "2024-01-01T00:00:00.000Z");
    expect(items.map((i) => i.state)).toEqual(["present", "missing", "missing"]);
    expect(items[1]!.reason).toBeNull();
    expect(items[2]!.reason).toMatch(/already holds SOPInstanceUID 1.3 with different bytes/);
    expect(items[0]).toMatchObject({ studyInstanceUID: null, seriesInstanceUID: null, updatedAt: "2024-01-01T00:00:00.000Z" });
  });
});

describe("progressOf", () => {
  it("is complete only when every instance is present or received", () => {
    expect(progressOf({ present: 1, received: 2, missing: 0, failed: 0 })).toMatchObject({ total: 3, complete: true });
    expect(progressOf({ present: 1, received: 2, missing: 1, failed: 0 }).complete).toBe(false);
    expect(progressOf({ present: 0, received: 2, missing: 0, failed: 1 }).complete).toBe(false);
    expect(progressOf({ present: 0, received: 0, missing: 0, failed: 0 }).complete).toBe(false);
  });
});

// the transfer state rules are in the TransferStore contract (test/contracts/transferStore.ts), run for SQLite and PostgreSQL
transferStoreContract("sqlite (in memory)", async () => {
  const store = new SqliteTransferStore(":memory:");
  await store.init();
  return store;
});
