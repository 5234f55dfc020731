/**
 * Storage commitment with a real peer: Orthanc (Debian) is the home PACS. A hospital workstation (dcmtk movescu)
 * moves a study from the relay to Orthanc; the relay then asks Orthanc to commit to it (N-ACTION), Orthanc answers
 * with an N-EVENT-REPORT on an association it opens to the relay, and the relay counts the committed instances as
 * delivered to ae:ORTHANC (retention). A report for a transaction the relay never asked changes nothing.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import request from "supertest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { dcmtk } from "../support/dcmtk.ts";
import { startOrthanc, type Orthanc } from "../support/orthanc.ts";
import { generateStudy } from "../../scripts/lib/synthetic.ts";
import { freePort } from "../../scripts/lib/net.ts";

const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });

describe("storage commitment (Orthanc as the home PACS)", () => {
  let relay: TestRelay;
  let orthanc: Orthanc;
  const study = [...generateStudy({ instances: 3, seriesCount: 1, rows: 16, columns: 16, modality: "CT" })];
  const studyUID = study[0]!.studyInstanceUID;

  beforeAll(async () => {
    const relayPort = await freePort();
    orthanc = await startOrthanc({ aeTitle: "ORTHANC", relayAE: "RELAY", relayPort, storageCommitment: true });
    relay = await startTestRelay({
      auth: { enabled: true },
      retention: { enabled: true, afterDeliveryDays: 3, afterArrivalDays: 0 },
      dimse: {
        enabled: true,
        port: relayPort,
        aeTitle: "RELAY",
        peers: [
          { aeTitle: "ORTHANC", host: "127.0.0.1", port: orthanc.dicomPort, studies: "all", store: false, storageCommitment: true },
          { aeTitle: "WORKSTATION", host: "127.0.0.1", port: 0, studies: "all", store: false },
        ],
      },
    });
    await dicomwebClient(relay.dicomwebUrl, bearer(relay.initialAdminToken!)).storeInstances({ datasets: study.map((i) => toArrayBuffer(i.bytes)) });
  });

  afterAll(async () => {
    await relay?.close();
    await orthanc?.dispose();
  });

  it("a C-MOVE to a committing peer is confirmed by its N-EVENT-REPORT: delivered via commitment", async () => {
    const moved = await dcmtk("movescu", ["-S", "-aet", "WORKSTATION", "-aec", "RELAY", "-aem", "ORTHANC", "-k", "QueryRetrieveLevel=STUDY", "-k", `StudyInstanceUID=${studyUID}`, "127.0.0.1", String(relay.dimsePort)], { timeoutMs: 120_000 });
    expect(moved.code, moved.stderr).toBe(0);
    expect((await orthanc.studyInstances(studyUID)).length).toBe(3);
    const admin = relay.initialAdminToken!;
    let report: { recipients: Array<{ recipient: string; via: string; instances: number }>; deliveredAt: string | null } | null = null;
    const until = Date.now() + 60_000;
    while (Date.now() < until) {
      report = (await request(relay.url).get(`/api/studies/${studyUID}/delivery`).set(bearer(admin))).body;
      if (report!.recipients.some((r) => r.via === "commitment")) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(report!.recipients).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ recipient: "ae:ORTHANC", via: "c-move", instances: 3 }),
        expect.objectContaining({ recipient: "ae:ORTHANC", via: "commitment", instances: 3 }),
      ]),
    );
    expect(report!.deliveredAt).not.toBeNull();
    expect(relay.dimse!.commitments.outstanding).toBe(0);
  });

  it("a report for a transaction the relay never asked is ignored", () => {
    const counted = relay.dimse!.commitments.handleReport("ORTHANC", { transactionUID: "2.25.1", committed: [study[0]!.sopInstanceUID], failed: [] });
    expect(counted).toBe(0);
  });
});
