/**
 * The DICOM node's guards against bad input on the wire, driven by the relay's own association code as the
 * client (for requests dcmtk will not send) and by raw sockets (for broken PDUs).
 */
import net from "node:net";
import { once } from "node:events";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { Association, AssociationError } from "../../src/dimse/association.ts";
import { CommandField } from "../../src/dimse/command.ts";
import { encodeAssociateRQ, encodePData, PduType, Reject } from "../../src/dimse/pdu.ts";
import { encodeDataset } from "../../src/dimse/dataset.ts";
import { SopClassUID } from "../../src/dimse/peers.ts";
import { generateStudy, makeInstance } from "../../scripts/lib/synthetic.ts";
import { Readable } from "node:stream";
import type { Command } from "../../src/dimse/command.ts";
import { createLogger } from "../../src/logger.ts";

const CT = "1.2.840.10008.5.1.4.1.1.2";
const MR = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT = "1.2.840.10008.1.2.1";
const log = createLogger("silent");
const OPTS = { maxPduLength: 64 * 1024, maxInMemoryDataset: 1 << 20, idleTimeoutMs: 30_000, connectTimeoutMs: 10_000, log };

/** Bytes read from a raw socket until it closes (bounded). */
async function readUntilClose(s: net.Socket, timeoutMs = 10_000): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on("data", (c: Buffer) => chunks.push(c));
  const timer = setTimeout(() => s.destroy(), timeoutMs);
  await once(s, "close");
  clearTimeout(timer);
  return Buffer.concat(chunks);
}

describe("DIMSE protocol guards", () => {
  let relay: TestRelay;
  const target = () => ({ host: "127.0.0.1", port: relay.dimsePort, calledAE: "DICOM_RELAY", callingAE: "HOSPITAL" });

  beforeAll(async () => {
    relay = await startTestRelay({
      dimse: { enabled: true, port: 0, maxAssociations: 2, maxIdentifierBytes: 4096, peers: [{ aeTitle: "HOSPITAL", host: "127.0.0.1", studies: "all", store: true }] },
    } as never);
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("answers a C-STORE whose SOP class differs from its presentation context with 0x0122, storing nothing", async () => {
    const a = await Association.connect(target(), [{ id: 1, abstractSyntax: CT, transferSyntaxes: [EXPLICIT] }], OPTS);
    try {
      const bytes = makeInstance({ sopClassUID: MR, seed: 3 });
      const sop = "1.2.826.0.1.3680043.10.1.424242";
      const rsp = await a.request(1, { commandField: CommandField.CStoreRQ, affectedSOPClassUID: MR, affectedSOPInstanceUID: sop, priority: 0 }, bytes.subarray(bytes.indexOf("DICM") + 4 + 200));
      expect(rsp.status).toBe(0x0122);
      expect(rsp.errorComment).toMatch(/presentation context/);
      expect(await relay.services.index.getInstance(sop)).toBeNull();
    } finally {
      await a.release();
    }
  });

  it("answers a C-FIND without QueryRetrieveLevel, or with a bad date, with 0xA900 and a sentence", async () => {
    const a = await Association.connect(target(), [{ id: 1, abstractSyntax: SopClassUID.StudyRootFind, transferSyntaxes: [EXPLICIT] }], OPTS);
    try {
      const noLevel = await a.request(1, { commandField: CommandField.CFindRQ, affectedSOPClassUID: SopClassUID.StudyRootFind, priority: 0 }, encodeDataset({ "00100010": { vr: "PN", Value: [{ Alphabetic: "X*" }] } }, { explicit: true }));
      expect(noLevel.status).toBe(0xa900);
      expect(noLevel.errorComment).toMatch(/QueryRetrieveLevel/);
      const badDate = await a.request(1, { commandField: CommandField.CFindRQ, affectedSOPClassUID: SopClassUID.StudyRootFind, priority: 0 }, encodeDataset({ "00080052": { vr: "CS", Value: ["STUDY"] }, "00080020": { vr: "DA", Value: ["2024-13-99"] } }, { explicit: true }));
      expect(badDate.status).toBe(0xa900);
      expect(badDate.errorComment).toMatch(/StudyDate/);
    } finally {
      await a.release();
    }
  });

  it("aborts an association whose identifier is larger than dimse.maxIdentifierBytes", async () => {
    const a = await Association.connect(target(), [{ id: 1, abstractSyntax: SopClassUID.StudyRootFind, transferSyntaxes: [EXPLICIT] }], OPTS);
    const big = encodeDataset({ "00080052": { vr: "CS", Value: ["STUDY"] }, "00081030": { vr: "LO", Value: ["x".repeat(9000)] } }, { explicit: true });
    await expect(a.request(1, { commandField: CommandField.CFindRQ, affectedSOPClassUID: SopClassUID.StudyRootFind, priority: 0 }, big)).rejects.toThrow(AssociationError);
  });

  it("refuses more associations than dimse.maxAssociations (transient, local limit exceeded)", async () => {
    const open = [
      await Association.connect(target(), [{ id: 1, abstractSyntax: SopClassUID.Verification, transferSyntaxes: [EXPLICIT] }], OPTS),
      await Association.connect(target(), [{ id: 1, abstractSyntax: SopClassUID.Verification, transferSyntaxes: [EXPLICIT] }], OPTS),
    ];
    try {
      const err = await Association.connect(target(), [{ id: 1, abstractSyntax: SopClassUID.Verification, transferSyntaxes: [EXPLICIT] }], OPTS).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AssociationError);
      expect((err as AssociationError).rejection).toEqual({ result: Reject.transient, source: Reject.presentation.source, reason: Reject.presentation.localLimitExceeded });
    } finally {
      for (const a of open) await a.release();
    }
    // once released, a new association is accepted again
    const again = await Association.connect(target(), [{ id: 1, abstractSyntax: SopClassUID.Verification, transferSyntaxes: [EXPLICIT] }], OPTS);
    const echo = await again.request(1, { commandField: CommandField.CEchoRQ, affectedSOPClassUID: SopClassUID.Verification });
    expect(echo.status).toBe(0);
    await again.release();
  });

  it("aborts on P-DATA before association, on a PDU longer than announced, and on garbage", async () => {
    for (const bytes of [
      encodePData(1, true, true, Buffer.alloc(20)),
      Buffer.concat([Buffer.from([PduType.AssociateRQ, 0]), Buffer.from([0x7f, 0xff, 0xff, 0xff])]),
      Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]) {
      const s = net.connect({ host: "127.0.0.1", port: relay.dimsePort });
      await once(s, "connect");
      s.write(bytes);
      const answer = await readUntilClose(s);
      // an A-ABORT (type 7) or, for an unknown PDU type, at least a closed connection; never an accept
      expect(answer[0] === undefined || answer[0] === PduType.Abort).toBe(true);
    }
  });

  it("refuses a non-DICOM application context", async () => {
    const rq = encodeAssociateRQ({ calledAE: "DICOM_RELAY", callingAE: "HOSPITAL", contexts: [{ id: 1, abstractSyntax: SopClassUID.Verification, transferSyntaxes: [EXPLICIT] }], maxPduLength: 16384, implementationClassUID: "1.2.3", implementationVersion: "X", roles: [] });
    // rewrite the application context UID in place (same length)
    const at = rq.indexOf("1.2.840.10008.3.1.1.1");
    rq.write("1.2.840.10008.3.1.1.9", at, "latin1");
    const s = net.connect({ host: "127.0.0.1", port: relay.dimsePort });
    await once(s, "connect");
    s.write(rq);
    const answer = await readUntilClose(s);
    expect([...answer.subarray(0, 10)]).toEqual([PduType.AssociateRJ, 0, 0, 0, 0, 4, 0, Reject.permanent, 1, Reject.user.applicationContextNotSupported]);
  });
  it("stops a C-GET on C-CANCEL: 0xFE00 after the sub-operation in flight", async () => {
    const series = [...generateStudy({ instances: 4, seriesCount: 1, modality: "CT", seed: 77 })];
    for (const i of series) {
      const r = await relay.services.ingest.ingestStream(Readable.from([i.bytes]));
      expect(r.status).toBe("stored");
    }
    let received = 0;
    let releaseFirst!: () => void;
    const firstHeld = new Promise<void>((r) => (releaseFirst = r));
    const a = await Association.connect(
      target(),
      [{ id: 1, abstractSyntax: SopClassUID.StudyRootGet, transferSyntaxes: [EXPLICIT] }, { id: 3, abstractSyntax: CT, transferSyntaxes: [EXPLICIT] }],
      { ...OPTS, roles: [{ sopClassUID: CT, scuRole: false, scpRole: true }] },
      {
        // the C-GET SCU side: take each instance, answer the first one only once the cancel was sent
        datasetSink: (assoc, contextId, command) => ({
          write() {},
          abort() {},
          end() {
            received++;
            const answer = () => void assoc.send(contextId, { commandField: CommandField.CStoreRSP, messageIdBeingRespondedTo: command.messageId, affectedSOPClassUID: command.affectedSOPClassUID, affectedSOPInstanceUID: command.affectedSOPInstanceUID, status: 0, hasDataset: false });
            if (received === 1) void firstHeld.then(answer);
            else answer();
          },
        }),
      },
    );
    try {
      const identifier = encodeDataset({ "00080052": { vr: "CS", Value: ["SERIES"] }, "0020000D": { vr: "UI", Value: [series[0]!.studyInstanceUID] }, "0020000E": { vr: "UI", Value: [series[0]!.seriesInstanceUID] } }, { explicit: true });
      const final: Promise<Command> = a.request(1, { commandField: CommandField.CGetRQ, affectedSOPClassUID: SopClassUID.StudyRootGet, priority: 0 }, identifier);
      // a fresh association numbers its first request 1
      await new Promise((r) => setTimeout(r, 200));
      await a.send(1, { commandField: CommandField.CCancelRQ, messageIdBeingRespondedTo: 1, hasDataset: false });
      await new Promise((r) => setTimeout(r, 200));
      releaseFirst();
      const rsp = await final;
      expect(rsp.status).toBe(0xfe00);
      expect(rsp.completed).toBe(1);
      expect(received).toBe(1);
    } finally {
      await a.release();
    }
    const audit = await relay.services.access!.audit.query({ action: "dimse.get" });
    expect(audit.at(-1)!.detail).toMatch(/1 completed, 0 warning, 0 failed of 4; cancelled/);
  });
  it("C-GET with a stored object gone missing: that sub-operation fails, the others complete, final 0xB000", async () => {
    const series = [...generateStudy({ instances: 3, seriesCount: 1, modality: "CT", seed: 88 })];
    for (const i of series) expect((await relay.services.ingest.ingestStream(Readable.from([i.bytes]))).status).toBe("stored");
    const lost = (await relay.services.index.getInstance(series[1]!.sopInstanceUID))!;
    await relay.services.store.delete(lost.blobKey);
    let received = 0;
    const a = await Association.connect(
      target(),
      [{ id: 1, abstractSyntax: SopClassUID.StudyRootGet, transferSyntaxes: [EXPLICIT] }, { id: 3, abstractSyntax: CT, transferSyntaxes: [EXPLICIT] }],
      { ...OPTS, roles: [{ sopClassUID: CT, scuRole: false, scpRole: true }] },
      {
        datasetSink: (assoc, contextId, command) => ({
          write() {},
          abort() {},
          end() {
            received++;
            void assoc.send(contextId, { commandField: CommandField.CStoreRSP, messageIdBeingRespondedTo: command.messageId, affectedSOPClassUID: command.affectedSOPClassUID, affectedSOPInstanceUID: command.affectedSOPInstanceUID, status: 0, hasDataset: false });
          },
        }),
      },
    );
    try {
      const identifier = encodeDataset({ "00080052": { vr: "CS", Value: ["SERIES"] }, "0020000D": { vr: "UI", Value: [series[0]!.studyInstanceUID] }, "0020000E": { vr: "UI", Value: [series[0]!.seriesInstanceUID] } }, { explicit: true });
      const rsp = await a.request(1, { commandField: CommandField.CGetRQ, affectedSOPClassUID: SopClassUID.StudyRootGet, priority: 0 }, identifier);
      expect(rsp).toMatchObject({ status: 0xb000, completed: 2, failed: 1, warning: 0 });
      expect(received).toBe(2);
    } finally {
      await a.release();
    }
  });
});
