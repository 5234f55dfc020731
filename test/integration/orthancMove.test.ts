/**
 * Orthanc (1.10, a real home PACS) asks the relay for a compressed study by C-MOVE into itself while its storage SCP
 * accepts only Explicit VR Little Endian: every instance arrives, decoded.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { startOrthanc, orthancAvailable, type Orthanc } from "../support/orthanc.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { freePort } from "../../scripts/lib/net.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";

const RELAY_AE = "DICOM_RELAY";
const ELE = "1.2.840.10008.1.2.1";
let relay: TestRelay;
let orthanc: Orthanc;
const study = newUid();
const sops: string[] = [];

beforeAll(async () => {
  if (!orthancAvailable()) throw new Error("Orthanc is not installed (scripts/test-prereqs.sh installs it)");
  const orthancPort = await freePort();
  const relayPort = await freePort();
  relay = await startTestRelay({
    dimse: { enabled: true, port: relayPort, aeTitle: RELAY_AE, peers: [{ aeTitle: "HOMEPACS", host: "127.0.0.1", port: orthancPort, studies: "all", store: false }] },
  } as never);
  orthanc = await startOrthanc({ aeTitle: "HOMEPACS", relayAE: RELAY_AE, relayPort, dicomPort: orthancPort, acceptedTransferSyntaxes: [ELE] });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "orthanc-move-"));
  const series = newUid();
  const files: ArrayBuffer[] = [];
  for (const [tool, args] of [["dcmcjpls", []], ["dcmcjpeg", ["+e1"]], ["dcmcrle", []]] as Array<[string, string[]]>) {
    const sop = newUid();
    sops.push(sop);
    const f = path.join(dir, sop);
    fs.writeFileSync(f, makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop, modality: "CT", rows: 32, columns: 32, seed: sops.length }));
    const r = await dcmtk(tool, [...args, f, `${f}.c`]);
    if (r.code !== 0) throw new Error(r.stderr);
    const b = fs.readFileSync(`${f}.c`);
    files.push(b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer);
  }
  await dicomwebClient(relay.dicomwebUrl).storeInstances({ datasets: files });
}, 120_000);

afterAll(async () => {
  await orthanc?.dispose();
  await relay?.dispose();
});

describe("Orthanc C-MOVE of a compressed study into an Explicit-VR-LE-only Orthanc", () => {
  it("every instance arrives, in Explicit VR Little Endian", async () => {
    const res = await fetch(`${orthanc.url}/modalities/relay/move`, {
      method: "POST",
      body: JSON.stringify({ Level: "Study", Resources: [{ StudyInstanceUID: study }], TargetAet: "HOMEPACS", Timeout: 60 }),
    });
    expect(res.status, await res.clone().text()).toBe(200);
    const got = await orthanc.studyInstances(study);
    expect(got.map((g) => g.sopInstanceUID).sort()).toEqual([...sops].sort());
    for (const g of got) {
      const ts = await (await fetch(`${orthanc.url}/instances/${g.id}/metadata/TransferSyntax`)).text();
      expect(ts).toBe(ELE);
    }
  }, 120_000);
});
