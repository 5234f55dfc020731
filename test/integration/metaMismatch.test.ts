/**
 * A file whose meta MediaStorageSOPInstanceUID differs from the data set's SOPInstanceUID (RT exports, anonymiser
 * output; Orthanc, dcmtk and pydicom read them): stored and indexed under the data set's UID with the bytes
 * unchanged, the sender told so; STOW-RS (202, Warning Reason 0xB007, Warning header) and C-STORE (storescu) both
 * store it (issue 16).
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { datasetOffset } from "../../src/dimse/dataset.ts";
import type { DicomJsonDataset } from "../../src/dicom/types.ts";

const RELAY_AE = "DICOM_RELAY";
const sha = (b: Buffer | ArrayBuffer) => crypto.createHash("sha256").update(Buffer.from(b as ArrayBuffer)).digest("hex");
const datasetOf = (file: Buffer): Buffer => file.subarray(datasetOffset(file.subarray(0, 64 * 1024))!);

describe("file meta SOPInstanceUID differing from the data set's", () => {
  let relay: TestRelay;
  let work: string;

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), "meta-mismatch-"));
    relay = await startTestRelay({
      dimse: { enabled: true, port: 0, aeTitle: RELAY_AE, peers: [{ aeTitle: "HOSPITAL", host: "127.0.0.1", port: 0, studies: "all", store: true }] },
    } as never);
  }, 60_000);
  afterAll(async () => {
    await relay?.dispose();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const mismatched = () => {
    const ids = { studyInstanceUID: newUid(), seriesInstanceUID: newUid(), sopInstanceUID: newUid() };
    const metaUid = newUid();
    return { ids, metaUid, file: makeInstance({ ...ids, rows: 16, columns: 16, modality: "CT", mediaStorageSOPInstanceUID: metaUid }) };
  };

  it("STOW-RS: 202, in ReferencedSOPSequence with Warning Reason 0xB007 and a sentence, Warning header; indexed by the data set, bytes unchanged", async () => {
    const { ids, metaUid, file } = mismatched();
    const boundary = "b-meta-mismatch";
    const res = await fetch(`${relay.dicomwebUrl}/studies`, {
      method: "POST",
      headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`, accept: "application/dicom+json" },
      body: Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`), file, Buffer.from(`\r\n--${boundary}--\r\n`)]),
    });
    const body = (await res.json()) as DicomJsonDataset;
    expect(res.status, JSON.stringify(body)).toBe(202);
    expect(body["00081198"]).toBeUndefined();
    const [item] = body["00081199"]!.Value as DicomJsonDataset[];
    expect(item!["00081155"]).toEqual({ vr: "UI", Value: [ids.sopInstanceUID] });
    expect(item!["00081196"]).toEqual({ vr: "US", Value: [0xb007] });
    expect(item!["00000902"]!.Value![0]).toBe("file meta SOPInstanceUID differs; stored as the data set's UID");
    expect(res.headers.get("warning")).toBe(`299 dicom-relay "1 of 1 instance(s) stored with a warning; first: file meta SOPInstanceUID differs; stored as the data set's UID: MediaStorageSOPInstanceUID (0002,0003) '${metaUid}', data set SOPInstanceUID ${ids.sopInstanceUID}; the bytes are stored unchanged"`);
    const client = dicomwebClient(relay.dicomwebUrl);
    expect(sha(await client.retrieveInstance(ids))).toBe(sha(file));
    expect(await client.searchForInstances({ queryParams: { SOPInstanceUID: metaUid } })).toEqual([]);
    expect((await client.searchForInstances({ queryParams: { SOPInstanceUID: ids.sopInstanceUID } })).length).toBe(1);
  });

  it("C-STORE (storescu) stores such a file too, under the data set's UID", async () => {
    const { ids, file } = mismatched();
    const f = path.join(work, "mismatched.dcm");
    await fsp.writeFile(f, file);
    const r = await dcmtk("storescu", ["-d", "-aet", "HOSPITAL", "-aec", RELAY_AE, "127.0.0.1", String(relay.dimsePort), f], { timeoutMs: 30_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const statuses = [...(r.stdout + r.stderr).matchAll(/^D:\s+DIMSE Status\s*:\s*0x([0-9a-f]{4})/gim)].map((m) => parseInt(m[1]!, 16));
    // storescu names the data set's UID in the command (success); a sender naming the meta's gets 0xB007 (warning)
    expect(statuses.length).toBe(1);
    expect([0x0000, 0xb007]).toContain(statuses[0]);
    const served = Buffer.from(await dicomwebClient(relay.dicomwebUrl).retrieveInstance(ids));
    expect(sha(datasetOf(served))).toBe(sha(datasetOf(file)));
  }, 60_000);
});
