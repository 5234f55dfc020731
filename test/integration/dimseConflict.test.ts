/**
 * ingest.conflictPolicy "keep-first" and "replace" end to end, C-STORE (dcmtk's storescu against the
 * relay's DIMSE port) beside STOW-RS on the same relay: an instance, then different bytes under the same
 * SOPInstanceUID. What each way reports for the second send, and which bytes WADO-RS serves afterwards
 * (SHA-256), must agree. (The default policy, reject -> 0x0111 / 409, is covered in dimse.test.ts.)
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
/** The data set part of a Part-10 file: what DIMSE carries (the relay writes its own file meta in front). */
const datasetOf = (file: Buffer): Buffer => file.subarray(datasetOffset(file.subarray(0, 64 * 1024))!);

type Outcome = "success" | "warning" | "failure";

/** The C-STORE response status storescu received, read from its debug dump of the C-STORE-RSP. */
function storescuStatus(out: string): number {
  const statuses = [...out.matchAll(/^D:\s+DIMSE Status\s*:\s*0x([0-9a-f]{4})/gim)].map((m) => parseInt(m[1]!, 16));
  if (statuses.length !== 1) throw new Error(`expected one C-STORE-RSP status in storescu's output, found ${statuses.length}:\n${out}`);
  return statuses[0]!;
}

/** The Error Comment (0000,0902) of the C-STORE-RSP, from storescu's dump of the status detail. */
function storescuErrorComment(out: string): string | undefined {
  return /^D:\s*\(0000,0902\) LO \[([^\]]*)\]/m.exec(out)?.[1];
}

/** PS3.4 C.4.2.1.4 / B.2.3: 0x0000 success, 0xB000-0xBFFF (and 0x0107, 0x0116) warning, anything else failure. */
function dimseOutcome(status: number): Outcome {
  if (status === 0) return "success";
  if ((status & 0xf000) === 0xb000 || status === 0x0107 || status === 0x0116) return "warning";
  return "failure";
}

interface Stow {
  http: number;
  body: DicomJsonDataset;
  /** the item for the one instance sent, and which sequence it is in */
  referenced?: DicomJsonDataset;
  failed?: DicomJsonDataset;
}

/** PS3.18 10.5.3: listed in FailedSOPSequence -> failure; WarningReason or 202 -> warning; else success. */
function stowOutcome(s: Stow): Outcome {
  if (s.failed || !s.referenced) return "failure";
  if (s.referenced["00081196"] || s.http === 202) return "warning";
  return "success";
}

async function stow(relay: TestRelay, file: Buffer, sopInstanceUID: string): Promise<Stow> {
  const boundary = `b-${crypto.randomBytes(8).toString("hex")}`;
  const body = Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
    file,
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  const res = await fetch(`${relay.dicomwebUrl}/studies`, {
    method: "POST",
    headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`, accept: "application/dicom+json" },
    body,
    signal: AbortSignal.timeout(30_000),
  });
  const json = (await res.json()) as DicomJsonDataset;
  const find = (tag: string) =>
    (json[tag]?.Value as DicomJsonDataset[] | undefined)?.find((i) => i["00081155"]?.Value?.[0] === sopInstanceUID);
  return { http: res.status, body: json, referenced: find("00081199"), failed: find("00081198") };
}

/** The Part-10 file WADO-RS serves for one instance. */
async function wado(relay: TestRelay, ids: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string }): Promise<Buffer> {
  return Buffer.from(await dicomwebClient(relay.dicomwebUrl).retrieveInstance(ids));
}

/** Two different Part-10 files under the same Study/Series/SOP Instance UIDs. */
function conflictingPair(label: string) {
  const ids = { studyInstanceUID: newUid(), seriesInstanceUID: newUid(), sopInstanceUID: newUid() };
  const first = makeInstance({ ...ids, patientName: `First^${label}`, patientID: "CONFLICT-1", seed: 11, rows: 16, columns: 16 });
  const second = makeInstance({ ...ids, patientName: `Second^${label}`, patientID: "CONFLICT-1", seed: 12, rows: 16, columns: 16 });
  return { ids, first, second };
}

/** Which of the two sends a served file is, by SHA-256. */
function sideOf(served: Buffer, first: Buffer, second: Buffer): "first" | "second" | "neither" {
  const h = sha(served);
  return h === sha(first) ? "first" : h === sha(second) ? "second" : "neither";
}

const EXPECTED = {
  // the other bytes are ignored; the sender is told so (C-STORE 0xB000, docs/dimse.md), STOW-RS answers 200
  "keep-first": { dimseStatus: 0xb000, keeps: "first" as const },
  // the new bytes win: plain success both ways
  replace: { dimseStatus: 0x0000, keeps: "second" as const },
};

for (const policy of ["keep-first", "replace"] as const) {
  describe(`conflict policy ${policy}: C-STORE (storescu) and STOW-RS agree`, () => {
    let relay: TestRelay;
    let work: string;
    const expected = EXPECTED[policy];
    const results: Partial<Record<"dimse" | "stow", { outcome: Outcome; kept: "first" | "second" | "neither"; comment?: string }>> = {};

    beforeAll(async () => {
      work = fs.mkdtempSync(path.join(os.tmpdir(), "dimse-conflict-"));
      relay = await startTestRelay({
        ingest: { conflictPolicy: policy },
        dimse: {
          enabled: true,
          port: 0,
          aeTitle: RELAY_AE,
          peers: [{ aeTitle: "HOSPITAL", host: "127.0.0.1", port: 0, studies: "all", store: true }],
        },
      } as never);
      expect(relay.config.ingest.conflictPolicy).toBe(policy);
      expect(relay.dimsePort).toBeGreaterThan(0);
    }, 60_000);

    afterAll(async () => {
      await relay?.dispose();
      if (work) fs.rmSync(work, { recursive: true, force: true });
    });

    const storescu = async (file: string) => {
      const r = await dcmtk("storescu", ["-d", "-aet", "HOSPITAL", "-aec", RELAY_AE, "127.0.0.1", String(relay.dimsePort), file], { timeoutMs: 30_000 });
      return { ...r, status: storescuStatus(r.stdout + r.stderr) };
    };

    it(`C-STORE: the second send with the same SOPInstanceUID answers 0x${expected.dimseStatus.toString(16).padStart(4, "0")}; WADO-RS serves the ${expected.keeps} bytes`, async () => {
      const { ids, first, second } = conflictingPair(`DIMSE ${policy}`);
      expect(sha(datasetOf(first))).not.toBe(sha(datasetOf(second)));
      const firstFile = path.join(work, "first.dcm");
      const secondFile = path.join(work, "second.dcm");
      await fsp.writeFile(firstFile, first);
      await fsp.writeFile(secondFile, second);

      const one = await storescu(firstFile);
      expect(one.code, one.stderr).toBe(0);
      expect(one.status).toBe(0x0000);
      expect(sha(datasetOf(await wado(relay, ids)))).toBe(sha(datasetOf(first)));

      const two = await storescu(secondFile);
      expect(two.code, two.stdout + two.stderr).toBe(0);
      expect(two.status).toBe(expected.dimseStatus);
      const dimseComment = storescuErrorComment(two.stdout + two.stderr);
      if (policy === "keep-first") expect(dimseComment).toMatch(/^different bytes were stored before; kept those \(keep-first\)$/);
      else expect(dimseComment).toBeUndefined();

      const served = await wado(relay, ids);
      const kept = expected.keeps === "first" ? first : second;
      const other = expected.keeps === "first" ? second : first;
      expect(sha(datasetOf(served))).toBe(sha(datasetOf(kept)));
      expect(sha(datasetOf(served))).not.toBe(sha(datasetOf(other)));
      // one instance under that SOPInstanceUID, and the index points at the bytes served
      expect((await relay.services.index.getInstance(ids.sopInstanceUID))!.sha256).toBe(sha(served));

      // sending the kept data set again is plain success and changes nothing
      const again = await storescu(expected.keeps === "first" ? firstFile : secondFile);
      expect(again.status).toBe(0x0000);
      expect(sha(await wado(relay, ids))).toBe(sha(served));

      results.dimse = { outcome: dimseOutcome(two.status), kept: sideOf(datasetOf(served), datasetOf(first), datasetOf(second)), comment: dimseComment };
    }, 60_000);

    it(`STOW-RS: the same situation is accepted (200, in ReferencedSOPSequence); WADO-RS serves the ${expected.keeps} bytes`, async () => {
      const { ids, first, second } = conflictingPair(`STOW ${policy}`);
      expect(sha(first)).not.toBe(sha(second));

      const one = await stow(relay, first, ids.sopInstanceUID);
      expect(one.http, JSON.stringify(one.body)).toBe(200);
      expect(stowOutcome(one)).toBe("success");
      expect(one.referenced!["00000902"]).toBeUndefined();

      const two = await stow(relay, second, ids.sopInstanceUID);
      expect(two.http, JSON.stringify(two.body)).toBe(200);
      expect(two.failed, JSON.stringify(two.body)).toBeUndefined();
      expect(two.referenced, JSON.stringify(two.body)).toBeDefined();
      expect(two.referenced!["00081190"]!.Value![0]).toBe(`${relay.dicomwebUrl}/studies/${ids.studyInstanceUID}/series/${ids.seriesInstanceUID}/instances/${ids.sopInstanceUID}`);
      const comment = two.referenced!["00000902"]?.Value?.[0] as string | undefined;
      if (policy === "keep-first") {
        // the sender learns its bytes were not kept, as storescu does from the C-STORE warning comment
        expect(comment).toMatch(/^different bytes were stored before; kept those \(keep-first\)$/);
        expect(comment).not.toMatch(/identical/);
      } else {
        expect(comment).toBeUndefined();
      }

      const served = await wado(relay, ids);
      const kept = expected.keeps === "first" ? first : second;
      // STOW-RS stores the Part-10 file as sent: whole-file hashes compare
      expect(sha(served)).toBe(sha(kept));
      expect(sha(served)).not.toBe(sha(expected.keeps === "first" ? second : first));
      expect((await relay.services.index.getInstance(ids.sopInstanceUID))!.sha256).toBe(sha(served));

      // sending the kept file again: identical bytes, plain success
      const again = await stow(relay, kept, ids.sopInstanceUID);
      expect(again.http).toBe(200);
      expect(again.referenced!["00000902"]!.Value![0]).toMatch(/identical bytes/);

      results.stow = { outcome: stowOutcome(two), kept: sideOf(served, first, second), comment };
    }, 60_000);

    it("both ways accepted the conflicting send and kept the same side of the conflict", () => {
      expect(results.dimse, "the C-STORE test did not finish").toBeDefined();
      expect(results.stow, "the STOW-RS test did not finish").toBeDefined();
      // neither way refuses under keep-first / replace; C-STORE's warning is its way of saying what STOW-RS
      // says in the Error Comment of the referenced instance (STOW-RS keeps 0xB000 for coercion)
      const { dimse, stow: web } = results as Required<typeof results>;
      expect(dimse.outcome).not.toBe("failure");
      expect(web.outcome).not.toBe("failure");
      expect(dimse.outcome).toBe(policy === "keep-first" ? "warning" : "success");
      expect(web.outcome).toBe("success");
      expect(dimse.kept).toBe(expected.keeps);
      expect(web.kept).toBe(dimse.kept);
      // and the sender reads the same sentence either way (C-STORE's Error Comment is cut at 64 characters, LO)
      if (policy === "keep-first") expect(web.comment!.startsWith(dimse.comment!.slice(0, 50))).toBe(true);
      else expect([dimse.comment, web.comment]).toEqual([undefined, undefined]);
    });
  });
}
