/**
 * Bulk data nested in sequences (issue 16): pydicom's waveform_ecg.dcm (two WaveformSequence items, WaveformData OW)
 * is stored by STOW-RS; its metadata carries a BulkDataURI for each WaveformData instead of inline base64, and
 * dicomweb-client retrieves each as the bytes pydicom reads. Bad and unknown paths get 400 / 404 sentences.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import { dicomwebClient, type DicomwebClient } from "../support/dicomwebClient.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { PYDICOM_TEST_FILES, pydicomRead, toArrayBuffer } from "../support/pydicom.ts";

const FILE = `${PYDICOM_TEST_FILES}/waveform_ecg.dcm`;

interface Oracle { sop: string; study: string; series: string; channels: number[]; waves: string[] }

/** What pydicom reads from the file. */
const pydicomOracle = () =>
  pydicomRead<Oracle>(FILE, `{"sop": d.SOPInstanceUID, "study": d.StudyInstanceUID, "series": d.SeriesInstanceUID, "channels": [i.NumberOfWaveformChannels for i in d.WaveformSequence], "waves": [base64.b64encode(i.WaveformData).decode() for i in d.WaveformSequence]}`);

let relay: TestRelay;
let client: DicomwebClient;
let oracle: Oracle;

beforeAll(async () => {
  oracle = await pydicomOracle();
  relay = await startTestRelay();
  client = dicomwebClient(relay.dicomwebUrl);
}, 60_000);
afterAll(async () => {
  await relay?.dispose();
});

describe("bulk data nested in sequences", () => {
  it("waveform data: BulkDataURI in the metadata, retrieved as pydicom reads it", async () => {
    await client.storeInstances({ datasets: [toArrayBuffer(fs.readFileSync(FILE))] });
    const ids = { studyInstanceUID: oracle.study, seriesInstanceUID: oracle.series, sopInstanceUID: oracle.sop };
    const [meta] = (await client.retrieveInstanceMetadata(ids)) as Array<Record<string, { Value?: Array<Record<string, { Value?: unknown[]; BulkDataURI?: string; InlineBinary?: string }>> }>>;
    const items = meta!["54000100"]!.Value!;
    expect(items).toHaveLength(oracle.waves.length);
    for (let i = 0; i < items.length; i++) {
      const data = items[i]!["54001010"]!;
      expect(data.InlineBinary, `item ${i}`).toBeUndefined();
      expect(data.BulkDataURI, `item ${i}`).toBe(`${relay.dicomwebUrl}/studies/${oracle.study}/series/${oracle.series}/instances/${oracle.sop}/bulkdata/54000100/${i}/54001010`);
      expect(items[i]!["003A0005"]!.Value, `item ${i}`).toEqual([oracle.channels[i]]);
      const [bulk] = await client.retrieveBulkData({ BulkDataURI: data.BulkDataURI! });
      expect(Buffer.from(bulk!).equals(Buffer.from(oracle.waves[i]!, "base64")), `item ${i}`).toBe(true);
    }

    const base = `${relay.dicomwebUrl}/studies/${oracle.study}/series/${oracle.series}/instances/${oracle.sop}/bulkdata`;
    const single = await fetch(`${base}/54000100/1/54001010`, { headers: { accept: "application/octet-stream" } });
    expect(single.status).toBe(200);
    expect(Buffer.from(await single.arrayBuffer()).equals(Buffer.from(oracle.waves[1]!, "base64"))).toBe(true);
    const absent = await fetch(`${base}/54000100/7/54001010`);
    expect(absent.status).toBe(404);
    expect(await absent.text()).toMatch(/has no bulk data element 54000100\/7\/54001010/);
    const bad = await fetch(`${base}/54000100/x/54001010`);
    expect(bad.status).toBe(400);
    expect(await bad.text()).toMatch(/a path of sequence tag \/ item index \/ tag/);
  }, 60_000);
});
