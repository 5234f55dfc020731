/**
 * Storage Commitment Push Model (PS3.4 Annex J), the relay as the SCU: after it sent a peer instances (C-MOVE
 * destination, forwarding by C-STORE), it asks the peer to commit to storing them (N-ACTION-RQ, action type 1, a
 * Transaction UID and the Referenced SOP Sequence). The peer answers with an N-EVENT-REPORT-RQ, on the same
 * association while it is open or on one it opens to the relay's DICOM port; the instances it lists as committed
 * count as delivered to that AE (retention). Reports for a transaction the relay did not ask, or naming instances
 * it did not ask about, change nothing (a peer cannot make the relay delete what it never received).
 */
import crypto from "node:crypto";
import type { Logger } from "pino";
import type { RelayConfig, DimsePeerConfig } from "../config.ts";
import type { InstanceLocation } from "../catalog/index.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { TransferSyntaxUID } from "../dicom/uids.ts";
import { readBareDataset } from "../dicom/part10.ts";
import type { RetentionService } from "../retention/service.ts";
import { Association, peerTlsOptions, type IncomingMessage } from "./association.ts";
import { CommandField, Status } from "./command.ts";
import { encodeDataset, isExplicit } from "./dataset.ts";
import { SopClassUID } from "./peers.ts";

interface Pending {
  peerAE: string;
  /** SOP Instance UID -> its study, for the instances the relay asked about */
  items: Map<string, { studyInstanceUID: string; sopClassUID: string }>;
  askedAt: number;
}

/** a transaction the peer never answers is forgotten after this long */
const PENDING_TTL_MS = 7 * 24 * 3600_000;
const MAX_PENDING = 10_000;

export interface CommitmentReport {
  transactionUID: string;
  committed: string[];
  failed: string[];
}

/** The N-ACTION data set (pure). */
export function actionDataset(transactionUID: string, items: ReadonlyArray<{ sopClassUID: string; sopInstanceUID: string }>): DicomJsonDataset {
  return {
    "00081195": { vr: "UI", Value: [transactionUID] },
    "00081199": {
      vr: "SQ",
      Value: items.map((i) => ({ "00081150": { vr: "UI", Value: [i.sopClassUID] }, "00081155": { vr: "UI", Value: [i.sopInstanceUID] } })),
    },
  };
}

/** What an N-EVENT-REPORT data set says (pure): the transaction, committed and failed SOP Instance UIDs. */
export function readReport(ds: DicomJsonDataset): CommitmentReport {
  const sops = (tag: string) =>
    ((ds[tag]?.Value ?? []) as DicomJsonDataset[]).map((item) => item["00081155"]?.Value?.[0]).filter((u): u is string => typeof u === "string");
  return { transactionUID: String(ds["00081195"]?.Value?.[0] ?? ""), committed: sops("00081199"), failed: sops("00081198") };
}

export class StorageCommitments {
  private readonly pending = new Map<string, Pending>();

  constructor(private readonly deps: { config: RelayConfig; log: Logger; retention?: Pick<RetentionService, "noteDelivered"> }) {}

  /** Transactions asked and not answered yet (for tests and /metrics). */
  get outstanding(): number {
    return this.pending.size;
  }

  /**
   * Asks the peer to commit to the instances; resolves once it accepted the request (N-ACTION-RSP success). The
   * report may arrive on this association within `waitMs`, or later on one the peer opens.
   */
  async request(peer: DimsePeerConfig, instances: readonly InstanceLocation[], waitMs = 5000): Promise<string> {
    const { config, log } = this.deps;
    if (!instances.length) throw new Error("nothing to ask the peer to commit to");
    this.expire();
    const transactionUID = `2.25.${BigInt("0x" + crypto.randomBytes(16).toString("hex")).toString(10)}`;
    this.pending.set(transactionUID, { peerAE: peer.aeTitle, items: new Map(instances.map((i) => [i.sopInstanceUID, { studyInstanceUID: i.studyInstanceUID, sopClassUID: i.sopClassUID }])), askedAt: Date.now() });
    let reported: () => void = () => {};
    const reportedHere = new Promise<void>((resolve) => (reported = resolve));
    const assoc = await Association.connect(
      { host: peer.host, port: peer.port, calledAE: peer.aeTitle, callingAE: config.dimse.aeTitle, ...(peer.tls ? { tls: peerTlsOptions(config.tls) } : {}) },
      [{ id: 1, abstractSyntax: SopClassUID.StorageCommitmentPushModel, transferSyntaxes: [TransferSyntaxUID.ExplicitVRLittleEndian, TransferSyntaxUID.ImplicitVRLittleEndian] }],
      { maxPduLength: config.dimse.maxPduLength, maxInMemoryDataset: config.dimse.maxIdentifierBytes, idleTimeoutMs: config.dimse.idleTimeoutSeconds * 1000, connectTimeoutMs: config.dimse.connectTimeoutSeconds * 1000, log },
      {
        // the report on the same association (the peer takes the SCU role of N-EVENT-REPORT here)
        onRequest: (a, msg) => {
          void this.onEventReport(a, msg).then(() => reported());
        },
      },
    );
    try {
      const ctx = assoc.findContext(SopClassUID.StorageCommitmentPushModel);
      if (!ctx) throw new Error(`${peer.aeTitle} does not accept Storage Commitment (Push Model)`);
      const body = encodeDataset(actionDataset(transactionUID, instances), { explicit: isExplicit(ctx.transferSyntax) });
      const rsp = await assoc.request(ctx.id, {
        commandField: CommandField.NActionRQ,
        requestedSOPClassUID: SopClassUID.StorageCommitmentPushModel,
        requestedSOPInstanceUID: SopClassUID.StorageCommitmentPushModelInstance,
        actionTypeId: 1,
      }, body);
      if (rsp.status !== Status.Success) {
        this.pending.delete(transactionUID);
        throw new Error(`${peer.aeTitle} refused the storage commitment request (N-ACTION status 0x${(rsp.status ?? 0xffff).toString(16).padStart(4, "0")}${rsp.errorComment ? `: ${rsp.errorComment}` : ""})`);
      }
      log.info({ peer: peer.aeTitle, transactionUID, instances: instances.length }, "storage commitment requested");
      await Promise.race([reportedHere, new Promise((r) => setTimeout(r, waitMs).unref())]);
      return transactionUID;
    } finally {
      if (!assoc.closed) await assoc.release().catch(() => assoc.abort("release failed"));
    }
  }

  /** An N-EVENT-REPORT-RQ on any association (the server routes those of its own associations here). */
  async onEventReport(a: Association, msg: IncomingMessage): Promise<void> {
    const c = msg.command;
    const respond = (status: number, errorComment?: string) =>
      a.send(msg.contextId, {
        commandField: CommandField.NEventReportRSP,
        messageIdBeingRespondedTo: c.messageId,
        affectedSOPClassUID: SopClassUID.StorageCommitmentPushModel,
        affectedSOPInstanceUID: c.affectedSOPInstanceUID ?? SopClassUID.StorageCommitmentPushModelInstance,
        eventTypeId: c.eventTypeId,
        status,
        errorComment,
        hasDataset: false,
      }).catch(() => {});
    if (c.commandField !== CommandField.NEventReportRQ) return void (await respond(Status.UnrecognizedOperation, "only N-EVENT-REPORT is expected here"));
    if (c.eventTypeId !== 1 && c.eventTypeId !== 2) return void (await respond(Status.NoSuchEventType, "event type 1 or 2 expected"));
    let report: CommitmentReport;
    try {
      const ts = a.contexts.get(msg.contextId)?.transferSyntax ?? TransferSyntaxUID.ImplicitVRLittleEndian;
      report = readReport(await readBareDataset(msg.dataset ?? Buffer.alloc(0), ts, { maxHeaderBytes: this.deps.config.dimse.maxIdentifierBytes, bulkDataThreshold: this.deps.config.dimse.maxIdentifierBytes }));
    } catch (err) {
      return void (await respond(Status.InvalidArgumentValue, `the event report cannot be read: ${(err as Error).message}`.slice(0, 64)));
    }
    this.handleReport(a.callingAE === this.deps.config.dimse.aeTitle ? a.calledAE : a.callingAE, report);
    await respond(Status.Success);
  }

  /** Records what the peer committed to, of what the relay asked it; returns how many counted. */
  handleReport(peerAE: string, report: CommitmentReport): number {
    const { log } = this.deps;
    const p = this.pending.get(report.transactionUID);
    if (!p || p.peerAE !== peerAE) {
      log.warn({ peer: peerAE, transactionUID: report.transactionUID.slice(0, 64) }, "storage commitment report for a transaction the relay did not ask this peer: ignored");
      return 0;
    }
    const counted = report.committed.filter((sop) => p.items.has(sop)).map((sop) => ({ sopInstanceUID: sop, studyInstanceUID: p.items.get(sop)!.studyInstanceUID }));
    this.deps.retention?.noteDelivered(counted, `ae:${peerAE}`, "commitment");
    this.pending.delete(report.transactionUID);
    log.info({ peer: peerAE, transactionUID: report.transactionUID, committed: counted.length, failed: report.failed.length }, "storage commitment reported");
    return counted.length;
  }

  private expire(): void {
    const now = Date.now();
    for (const [k, v] of this.pending) if (now - v.askedAt > PENDING_TTL_MS) this.pending.delete(k);
    // never an unbounded map: the oldest questions go first
    while (this.pending.size >= MAX_PENDING) this.pending.delete(this.pending.keys().next().value!);
  }
}
