// The console reads each file's study before sending, so a folder of several studies becomes one transfer per study
// (src/console/public/dicom.js readStudyHeader); it runs in Node too (File, TextDecoder are the same Web APIs).
import { describe, expect, it } from "vitest";
import { makeInstance } from "../../scripts/lib/synthetic.ts";

const fileOf = (bytes: Uint8Array, name: string) => new File([new Uint8Array(bytes)], name);
const modulePath = "../../src/console/public/dicom.js";
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const load = async (): Promise<any> => import(modulePath);

describe("console: the study of a file, for the per-study summary", () => {
  it("reads study, series, patient, date, description and modality (explicit VR), past undefined-length sequences", async () => {
    const { readFileMeta, readStudyHeader, plainName } = await load();
    for (const undefinedLengthSequences of [false, true]) {
      const bytes = makeInstance({ studyInstanceUID: "1.2.3", seriesInstanceUID: "1.2.3.4", patientName: "Wang^XiaoDong", patientID: "CN-2", studyDate: "20240304", studyDescription: "CT CHEST", modality: "CT", seed: 3, undefinedLengthSequences });
      const f = fileOf(bytes, "I1");
      const meta = await readFileMeta(f);
      const h = await readStudyHeader(f, meta.transferSyntaxUID);
      expect(h).toEqual({ studyInstanceUID: "1.2.3", seriesInstanceUID: "1.2.3.4", patientName: "Wang^XiaoDong", patientID: "CN-2", studyDate: "20240304", studyDescription: "CT CHEST", modality: "CT" });
    }
    expect(plainName("Wang^XiaoDong=王^小东")).toBe("Wang XiaoDong = 王小东");
  });

  it("reads implicit VR little endian data sets, and a UTF-8 name", async () => {
    const { readFileMeta, readStudyHeader } = await load();
    const bytes = makeInstance({ studyInstanceUID: "1.2.9", patientName: "Müller^Jörg", charset: "ISO_IR 192", transferSyntaxUID: "1.2.840.10008.1.2", seed: 4 });
    const f = fileOf(bytes, "I2");
    const meta = await readFileMeta(f);
    expect(meta.transferSyntaxUID).toBe("1.2.840.10008.1.2");
    expect(await readStudyHeader(f, meta.transferSyntaxUID)).toMatchObject({ studyInstanceUID: "1.2.9", patientName: "Müller^Jörg" });
  });

  it("says null when the study cannot be read (cut before it, not Part-10)", async () => {
    const { readStudyHeader } = await load();
    const bytes = makeInstance({ seed: 5 });
    expect(await readStudyHeader(fileOf(bytes.subarray(0, 300), "cut"), "1.2.840.10008.1.2.1")).toBeNull();
    expect(await readStudyHeader(fileOf(new Uint8Array(400), "zeros"), "1.2.840.10008.1.2.1")).toBeNull();
  });
});
