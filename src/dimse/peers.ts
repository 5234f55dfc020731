/**
 * Who may associate and what is accepted: the relay's negotiation policy, pure.
 *
 * Only configured peers associate: the calling AE title must be configured, the connection must come
 * from that peer's host, and the called AE title must be the relay's. Presentation contexts: Verification,
 * Study Root and Patient Root Query/Retrieve FIND/MOVE/GET (Implicit or Explicit VR Little Endian), and storage SOP classes
 * in any transfer syntax the ingest pipeline stores (ingestAccepts; stored as received): to be stored when the
 * peer may store, or as the destination of a C-GET when the peer proposes the SCP role for them.
 */
import { isIP } from "node:net";
import type { DimsePeerConfig } from "../config.ts";
import { ingestAccepts } from "../dicom/transferSyntax.ts";
import { TransferSyntaxUID } from "../dicom/uids.ts";
import { APPLICATION_CONTEXT, PcResult, Reject, type AcceptedContext, type AssociateRQ, type RoleSelection } from "./pdu.ts";

export const SopClassUID = {
  Verification: "1.2.840.10008.1.1",
  StudyRootFind: "1.2.840.10008.5.1.4.1.2.2.1",
  StudyRootMove: "1.2.840.10008.5.1.4.1.2.2.2",
  StudyRootGet: "1.2.840.10008.5.1.4.1.2.2.3",
  PatientRootFind: "1.2.840.10008.5.1.4.1.2.1.1",
  PatientRootMove: "1.2.840.10008.5.1.4.1.2.1.2",
  PatientRootGet: "1.2.840.10008.5.1.4.1.2.1.3",
  /** PS3.4 J: Storage Commitment Push Model SOP Class, and its one well-known SOP instance */
  StorageCommitmentPushModel: "1.2.840.10008.1.20.1",
  StorageCommitmentPushModelInstance: "1.2.840.10008.1.20.1.1",
} as const;

/** Query/Retrieve SOP classes: the operation and the information model of each */
export const QUERY_RETRIEVE: ReadonlyMap<string, { op: "find" | "move" | "get"; model: "study" | "patient" }> = new Map([
  [SopClassUID.StudyRootFind, { op: "find", model: "study" }],
  [SopClassUID.StudyRootMove, { op: "move", model: "study" }],
  [SopClassUID.StudyRootGet, { op: "get", model: "study" }],
  [SopClassUID.PatientRootFind, { op: "find", model: "patient" }],
  [SopClassUID.PatientRootMove, { op: "move", model: "patient" }],
  [SopClassUID.PatientRootGet, { op: "get", model: "patient" }],
] as const);
const UNCOMPRESSED_LE: ReadonlySet<string> = new Set([TransferSyntaxUID.ImplicitVRLittleEndian, TransferSyntaxUID.ExplicitVRLittleEndian]);

/** Storage SOP classes (PS3.4 B.5): 1.2.840.10008.5.1.4.1.1.x, and the few outside that arc. */
export function isStorageSopClass(uid: string): boolean {
  return uid.startsWith("1.2.840.10008.5.1.4.1.1.") || uid.startsWith("1.2.840.10008.5.1.4.34.") || uid === "1.2.840.10008.5.1.4.38.1";
}

/** "::ffff:127.0.0.1" and "127.0.0.1" are one address; "localhost" is either loopback. */
export function sameHost(configured: string, remote: string): boolean {
  const norm = (h: string) => h.trim().toLowerCase().replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, "");
  const r = norm(remote);
  const c = norm(configured);
  if (c === "localhost") return r === "127.0.0.1" || r === "::1";
  return c === r;
}

export function hostIsAddress(h: string): boolean {
  return h === "localhost" || isIP(h) !== 0;
}

export type AssociationDecision =
  | { ok: true; peer: DimsePeerConfig; contexts: AcceptedContext[]; roles: RoleSelection[] }
  | { ok: false; result: number; source: number; reason: number; message: string };

export function decideAssociation(
  rq: AssociateRQ & { protocolVersion: number },
  remoteAddress: string,
  cfg: { aeTitle: string; peers: readonly DimsePeerConfig[] },
): AssociationDecision {
  const refuse = (source: number, reason: number, message: string): AssociationDecision => ({ ok: false, result: Reject.permanent, source, reason, message });
  if ((rq.protocolVersion & 1) === 0) return refuse(Reject.acse.source, Reject.acse.protocolVersionNotSupported, `protocol version ${rq.protocolVersion} is not supported`);
  if (rq.applicationContext !== APPLICATION_CONTEXT) {
    return refuse(Reject.user.source, Reject.user.applicationContextNotSupported, `application context "${rq.applicationContext.slice(0, 64)}" is not the DICOM one`);
  }
  if (rq.calledAE !== cfg.aeTitle) {
    return refuse(Reject.user.source, Reject.user.calledAeNotRecognized, `called AE title "${rq.calledAE}" is not this relay's ("${cfg.aeTitle}")`);
  }
  const peer = cfg.peers.find((p) => p.aeTitle === rq.callingAE);
  if (!peer) return refuse(Reject.user.source, Reject.user.callingAeNotRecognized, `calling AE title "${rq.callingAE}" is not a configured peer`);
  if (!sameHost(peer.host, remoteAddress)) {
    return refuse(Reject.user.source, Reject.user.callingAeNotRecognized, `calling AE title "${rq.callingAE}" is configured for host ${peer.host}, but the association came from ${remoteAddress}`);
  }

  const roleFor = new Map(rq.roles.map((r) => [r.sopClassUID, r]));
  const roles: RoleSelection[] = [];
  const contexts: AcceptedContext[] = rq.contexts.map((pc) => {
    const reject = (result: number): AcceptedContext => ({ id: pc.id, result, transferSyntax: "", abstractSyntax: pc.abstractSyntax });
    const accept = (ts: string): AcceptedContext => ({ id: pc.id, result: PcResult.acceptance, transferSyntax: ts, abstractSyntax: pc.abstractSyntax });
    if (pc.abstractSyntax === SopClassUID.Verification || QUERY_RETRIEVE.has(pc.abstractSyntax)) {
      const ts = pc.transferSyntaxes.find((t) => UNCOMPRESSED_LE.has(t));
      return ts ? accept(ts) : reject(PcResult.transferSyntaxesNotSupported);
    }
    if (pc.abstractSyntax === SopClassUID.StorageCommitmentPushModel) {
      // a peer the relay asked to commit sends its N-EVENT-REPORT on an association of its own (PS3.4 J.3.3)
      if (!peer.storageCommitment) return reject(PcResult.userRejection);
      const ts = pc.transferSyntaxes.find((t) => UNCOMPRESSED_LE.has(t));
      if (!ts) return reject(PcResult.transferSyntaxesNotSupported);
      const role = roleFor.get(pc.abstractSyntax);
      if (role && !roles.some((r) => r.sopClassUID === role.sopClassUID)) roles.push({ sopClassUID: role.sopClassUID, scuRole: role.scuRole, scpRole: role.scpRole });
      return accept(ts);
    }
    if (isStorageSopClass(pc.abstractSyntax)) {
      const role = roleFor.get(pc.abstractSyntax);
      const asGetDestination = role?.scpRole === true;
      if (!peer.store && !asGetDestination) return reject(PcResult.userRejection);
      // the proposer's order is its preference; any transfer syntax the ingest pipeline stores is kept as sent
      const ts = pc.transferSyntaxes.find((t) => ingestAccepts(t));
      if (!ts) return reject(PcResult.transferSyntaxesNotSupported);
      if (role && !roles.some((r) => r.sopClassUID === role.sopClassUID)) {
        roles.push({ sopClassUID: role.sopClassUID, scuRole: role.scuRole && peer.store, scpRole: role.scpRole });
      }
      return accept(ts);
    }
    return reject(PcResult.abstractSyntaxNotSupported);
  });
  return { ok: true, peer, contexts, roles };
}
