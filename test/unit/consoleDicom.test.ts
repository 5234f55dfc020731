// The console's browser-side DICOM helpers (src/console/public/dicom.js) run in Node too: File, crypto.subtle and
// TextDecoder are the same Web APIs.
import crypto from "node:crypto";
import { describe, expect, it } from "vitest";
import { makeInstance } from "../../scripts/lib/synthetic.ts";

const modulePath = "../../src/console/public/dicom.js";
// eslint-disable-next-line @typescript-eslint/no-explicit-any
/** a File of these bytes (copied into a plain ArrayBuffer, as a browser File holds them) */
const fileOf = (bytes: Uint8Array | string, name: string) => new File([typeof bytes === "string" ? bytes : new Uint8Array(bytes)], name);
const load = async (): Promise<any> => import(modulePath);

describe("console: what the browser reads from a file before sending it", () => {
  it("reads MediaStorageSOPInstanceUID and the SOP class from the file meta group", async () => {
    const { readFileMeta, DICOMDIR_CLASS } = await load();
    const bytes = makeInstance({ sopInstanceUID: "1.2.3.4.5", modality: "CT", seed: 2 });
    expect(await readFileMeta(fileOf(bytes, "I00001.dcm"))).toMatchObject({ sopInstanceUID: "1.2.3.4.5", transferSyntaxUID: "1.2.840.10008.1.2.1" });
    const dir = makeInstance({ sopInstanceUID: "1.2.3.9", sopClassUID: DICOMDIR_CLASS, noPixelData: true, seed: 2 });
    expect((await readFileMeta(fileOf(dir, "DICOMDIR"))).sopClassUID).toBe(DICOMDIR_CLASS);
  });

  it("says null for files that are not Part-10 (README, viewer program, a bare data set, a truncated file)", async () => {
    const { readFileMeta } = await load();
    expect(await readFileMeta(fileOf("Viewer for Windows: run VIEWER.EXE\r\n".repeat(20), "README.TXT"))).toBeNull();
    expect(await readFileMeta(fileOf(makeInstance({ noFileMeta: true, seed: 3 }), "bare"))).toBeNull();
    expect(await readFileMeta(fileOf(new Uint8Array(100), "tiny"))).toBeNull();
    const cut = makeInstance({ seed: 4 }).subarray(0, 150);
    expect(await readFileMeta(fileOf(cut, "cut.dcm"))).toBeNull();
  });

  it("hashes a file as the relay does (SHA-256, hex)", async () => {
    const { sha256Hex } = await load();
    const bytes = makeInstance({ seed: 5 });
    expect(await sha256Hex(fileOf(bytes, "x"))).toBe(crypto.createHash("sha256").update(bytes).digest("hex"));
  });

  it("shows person names with their ideographic group", async () => {
    const { personName, da } = await load();
    expect(personName({ vr: "PN", Value: [{ Alphabetic: "Wang^XiaoDong", Ideographic: "王^小东" }] })).toBe("Wang, XiaoDong · 王小东");
    expect(personName({ vr: "PN", Value: [{ Alphabetic: "Garcia^Lucia^^Dr" }] })).toBe("Dr Garcia, Lucia");
    expect(personName(undefined)).toBe("");
    expect(da("20240315")).toBe("2024-03-15");
  });
});
