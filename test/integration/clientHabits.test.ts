/**
 * Habits of real DICOMweb clients (issue 16): keys of attributes present with an empty value (PS3.18 F.2.5),
 * a browser's cache-buster and other non-DICOM query parameters (ignored with Warning: 299, not 400).
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import request from "supertest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
type Ds = Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string; InlineBinary?: string }>;

describe("what real DICOMweb clients rely on", () => {
  let relay: TestRelay;
  const study = newUid();
  const series = newUid();
  const sop = newUid();

  beforeAll(async () => {
    relay = await startTestRelay();
    // an anonymiser's output: sex, birth date, study ID, accession and referring physician present but empty
    const bytes = makeInstance({
      rows: 8, columns: 8, modality: "CT", studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, sex: "", birthDate: "",
      extra: { StudyID: "", AccessionNumber: "", ReferringPhysicianName: "", SeriesDescription: "" },
    });
    await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: [toArrayBuffer(bytes)] });
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("attributes present with an empty value keep their key as {vr} in metadata and in QIDO-RS at every level", async () => {
    const client = dicomwebClient(relay.dicomwebUrl);
    const [meta] = (await client.retrieveStudyMetadata({ studyInstanceUID: study })) as Ds[];
    const [st] = (await client.searchForStudies({ queryParams: { StudyInstanceUID: study, includefield: "PatientSex,PatientBirthDate" } })) as Ds[];
    const [se] = (await client.searchForSeries({ studyInstanceUID: study })) as Ds[];
    const [inst] = (await client.searchForInstances({ studyInstanceUID: study, queryParams: { includefield: "all" } })) as Ds[];
    const expectations: [Ds | undefined, string, Record<string, string>][] = [
      [meta, "metadata", { "00100040": "CS", "00100030": "DA", "00200010": "SH", "00080050": "SH", "00080090": "PN", "0008103E": "LO" }],
      [st, "study", { "00100040": "CS", "00100030": "DA", "00200010": "SH", "00080050": "SH", "00080090": "PN" }],
      [se, "series", { "0008103E": "LO" }],
      [inst, "instance", { "00100040": "CS", "00200010": "SH" }],
    ];
    for (const [ds, where, keys] of expectations) {
      expect(ds, where).toBeDefined();
      for (const [tag, vr] of Object.entries(keys)) expect(ds![tag], `${where} ${tag}`).toEqual({ vr });
    }
    // values that are there are still values
    expect(st!["0020000D"]).toEqual({ vr: "UI", Value: [study] });
  });

  it("a cache-buster (_=...) and other non-DICOM parameters are ignored with Warning: 299; a misspelt keyword is still 400", async () => {
    const r = request(relay.url);
    const busted = await r.get(`/dicom-web/studies?StudyInstanceUID=${study}&_=${Date.now()}&callback=x`).set("Accept", "application/dicom+json");
    expect(busted.status).toBe(200);
    expect((busted.body as Ds[]).map((s) => s["0020000D"]?.Value?.[0])).toEqual([study]);
    expect(busted.headers.warning).toMatch(/^299 dicom-relay "The following query parameters are not DICOM attributes or QIDO-RS parameters and were ignored: _, callback"$/);
    // dicomweb-client passes the cache-buster through like a browser page would
    expect(await dicomwebClient(relay.dicomwebUrl).searchForSeries({ studyInstanceUID: study, queryParams: { _: String(Date.now()) } })).toHaveLength(1);
    // both warnings at once: two Warning headers
    const both = await r.get(`/dicom-web/studies?InstitutionName=X&_=1`);
    expect(both.status).toBe(200);
    expect(both.headers.warning).toMatch(/not supported for matching and were ignored: InstitutionName.*299 dicom-relay "The following query parameters/);
    const typo = await r.get(`/dicom-web/studies?PatientNmae=Doe*`);
    expect(typo.status).toBe(400);
    expect(typo.body.error).toMatch(/"PatientNmae" is not a DICOM attribute keyword/);
  });
});
