/**
 * DICOM Upper Layer protocol data units (PS3.8 9.3): encoding and decoding, pure (no I/O).
 *
 * Only what an association needs: A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT, with the
 * user information sub-items for maximum length, implementation class/version and SCP/SCU role selection
 * (C-GET needs it). Other sub-items (asynchronous operations, extended negotiation, user identity) are
 * read past and never answered, which PS3.7 allows.
 */

export const PduType = {
  AssociateRQ: 0x01,
  AssociateAC: 0x02,
  AssociateRJ: 0x03,
  PData: 0x04,
  ReleaseRQ: 0x05,
  ReleaseRP: 0x06,
  Abort: 0x07,
} as const;

export const APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1";

/** A-ASSOCIATE-RJ result / source / reason (PS3.8 9.3.4). */
export const Reject = {
  permanent: 1,
  transient: 2,
  /** source 1: DICOM UL service-user */
  user: { source: 1, noReason: 1, applicationContextNotSupported: 2, callingAeNotRecognized: 3, calledAeNotRecognized: 7 },
  /** source 2: service-provider (ACSE) */
  acse: { source: 2, noReason: 1, protocolVersionNotSupported: 2 },
  /** source 3: service-provider (presentation) */
  presentation: { source: 3, temporaryCongestion: 1, localLimitExceeded: 2 },
} as const;

/** Presentation context results in an A-ASSOCIATE-AC (PS3.8 9.3.3.2). */
export const PcResult = {
  acceptance: 0,
  userRejection: 1,
  noReason: 2,
  abstractSyntaxNotSupported: 3,
  transferSyntaxesNotSupported: 4,
} as const;

export interface ProposedContext {
  id: number;
  abstractSyntax: string;
  transferSyntaxes: string[];
}

export interface RoleSelection {
  sopClassUID: string;
  scuRole: boolean;
  scpRole: boolean;
}

export interface AssociateRQ {
  calledAE: string;
  callingAE: string;
  applicationContext: string;
  contexts: ProposedContext[];
  /** 0 = no limit */
  maxPduLength: number;
  implementationClassUID: string;
  implementationVersion: string;
  roles: RoleSelection[];
}

export interface AcceptedContext {
  id: number;
  result: number;
  /** the one transfer syntax accepted (empty when rejected) */
  transferSyntax: string;
  /** abstract syntax: not on the wire in an AC; filled in from the proposal */
  abstractSyntax?: string;
}

export interface AssociateAC {
  calledAE: string;
  callingAE: string;
  contexts: AcceptedContext[];
  maxPduLength: number;
  implementationClassUID: string;
  implementationVersion: string;
  roles: RoleSelection[];
}

export interface Pdv {
  contextId: number;
  command: boolean;
  last: boolean;
  data: Buffer;
}

export class PduError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PduError";
  }
}

const aeField = (ae: string) => Buffer.from(ae.padEnd(16, " ").slice(0, 16), "latin1");
const aeText = (b: Buffer) => b.toString("latin1").trim();
const uidText = (b: Buffer) => b.toString("latin1").replace(/[\0 ]+$/, "");

function item(type: number, value: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h[0] = type;
  h.writeUInt16BE(value.length, 2);
  return Buffer.concat([h, value]);
}

function pdu(type: number, body: Buffer): Buffer {
  const h = Buffer.alloc(6);
  h[0] = type;
  h.writeUInt32BE(body.length, 2);
  return Buffer.concat([h, body]);
}

function userInfo(maxPduLength: number, implementationClassUID: string, implementationVersion: string, roles: RoleSelection[]): Buffer {
  const max = Buffer.alloc(4);
  max.writeUInt32BE(maxPduLength >>> 0, 0);
  const sub = [item(0x51, max), item(0x52, Buffer.from(implementationClassUID, "latin1"))];
  for (const r of roles) {
    const uid = Buffer.from(r.sopClassUID, "latin1");
    const v = Buffer.alloc(2 + uid.length + 2);
    v.writeUInt16BE(uid.length, 0);
    uid.copy(v, 2);
    v[2 + uid.length] = r.scuRole ? 1 : 0;
    v[3 + uid.length] = r.scpRole ? 1 : 0;
    sub.push(item(0x54, v));
  }
  if (implementationVersion) sub.push(item(0x55, Buffer.from(implementationVersion.slice(0, 16), "latin1")));
  return item(0x50, Buffer.concat(sub));
}

function fixedPart(calledAE: string, callingAE: string): Buffer {
  const b = Buffer.alloc(68);
  b.writeUInt16BE(1, 0); // protocol version
  aeField(calledAE).copy(b, 4);
  aeField(callingAE).copy(b, 20);
  return b;
}

export function encodeAssociateRQ(rq: Omit<AssociateRQ, "applicationContext">): Buffer {
  const parts = [fixedPart(rq.calledAE, rq.callingAE), item(0x10, Buffer.from(APPLICATION_CONTEXT, "latin1"))];
  for (const pc of rq.contexts) {
    const sub = [item(0x30, Buffer.from(pc.abstractSyntax, "latin1")), ...pc.transferSyntaxes.map((ts) => item(0x40, Buffer.from(ts, "latin1")))];
    parts.push(item(0x20, Buffer.concat([Buffer.from([pc.id, 0, 0, 0]), ...sub])));
  }
  parts.push(userInfo(rq.maxPduLength, rq.implementationClassUID, rq.implementationVersion, rq.roles));
  return pdu(PduType.AssociateRQ, Buffer.concat(parts));
}

export function encodeAssociateAC(ac: AssociateAC): Buffer {
  const parts = [fixedPart(ac.calledAE, ac.callingAE), item(0x10, Buffer.from(APPLICATION_CONTEXT, "latin1"))];
  for (const pc of ac.contexts) {
    // a rejected context still carries a transfer syntax sub-item, whose value is not significant
    const ts = item(0x40, Buffer.from(pc.result === PcResult.acceptance ? pc.transferSyntax : "", "latin1"));
    parts.push(item(0x21, Buffer.concat([Buffer.from([pc.id, 0, pc.result, 0]), ts])));
  }
  parts.push(userInfo(ac.maxPduLength, ac.implementationClassUID, ac.implementationVersion, ac.roles));
  return pdu(PduType.AssociateAC, Buffer.concat(parts));
}

export function encodeAssociateRJ(result: number, source: number, reason: number): Buffer {
  return pdu(PduType.AssociateRJ, Buffer.from([0, result, source, reason]));
}

export function encodeReleaseRQ(): Buffer {
  return pdu(PduType.ReleaseRQ, Buffer.alloc(4));
}

export function encodeReleaseRP(): Buffer {
  return pdu(PduType.ReleaseRP, Buffer.alloc(4));
}

/** source 0 = service-user, 2 = service-provider; reason (provider only) 0 not specified, 1 unrecognized PDU, 2 unexpected PDU ... */
export function encodeAbort(source: number, reason = 0): Buffer {
  return pdu(PduType.Abort, Buffer.from([0, 0, source, reason]));
}

/** One P-DATA-TF PDU holding one PDV. */
export function encodePData(contextId: number, command: boolean, last: boolean, data: Buffer): Buffer {
  const h = Buffer.alloc(12);
  h[0] = PduType.PData;
  h.writeUInt32BE(6 + data.length, 2);
  h.writeUInt32BE(2 + data.length, 6);
  h[10] = contextId;
  h[11] = (command ? 1 : 0) | (last ? 2 : 0);
  return Buffer.concat([h, data]);
}

// ---- decoding ----

interface RawItem {
  type: number;
  value: Buffer;
}

function items(b: Buffer, start: number, what: string): RawItem[] {
  const out: RawItem[] = [];
  let p = start;
  while (p < b.length) {
    if (p + 4 > b.length) throw new PduError(`${what}: an item header is cut short`);
    const type = b[p]!;
    const len = b.readUInt16BE(p + 2);
    if (p + 4 + len > b.length) throw new PduError(`${what}: item 0x${type.toString(16)} claims ${len} bytes past the end`);
    out.push({ type, value: b.subarray(p + 4, p + 4 + len) });
    p += 4 + len;
  }
  return out;
}

function readUserInfo(value: Buffer, into: { maxPduLength: number; implementationClassUID: string; implementationVersion: string; roles: RoleSelection[] }): void {
  for (const sub of items(value, 0, "user information")) {
    if (sub.type === 0x51 && sub.value.length >= 4) into.maxPduLength = sub.value.readUInt32BE(0);
    else if (sub.type === 0x52) into.implementationClassUID = uidText(sub.value);
    else if (sub.type === 0x55) into.implementationVersion = aeText(sub.value);
    else if (sub.type === 0x54 && sub.value.length >= 4) {
      const n = sub.value.readUInt16BE(0);
      if (2 + n + 2 > sub.value.length) throw new PduError("a role selection item is cut short");
      into.roles.push({ sopClassUID: uidText(sub.value.subarray(2, 2 + n)), scuRole: sub.value[2 + n] === 1, scpRole: sub.value[3 + n] === 1 });
    }
  }
}

/** Decode the body (after the 6-byte header) of an A-ASSOCIATE-RQ. */
export function decodeAssociateRQ(body: Buffer): AssociateRQ & { protocolVersion: number } {
  if (body.length < 68) throw new PduError("the A-ASSOCIATE-RQ is shorter than its fixed part");
  const rq: AssociateRQ & { protocolVersion: number } = {
    protocolVersion: body.readUInt16BE(0),
    calledAE: aeText(body.subarray(4, 20)),
    callingAE: aeText(body.subarray(20, 36)),
    applicationContext: "",
    contexts: [],
    maxPduLength: 0,
    implementationClassUID: "",
    implementationVersion: "",
    roles: [],
  };
  for (const it of items(body, 68, "A-ASSOCIATE-RQ")) {
    if (it.type === 0x10) rq.applicationContext = uidText(it.value);
    else if (it.type === 0x20) {
      if (it.value.length < 4) throw new PduError("a presentation context item is cut short");
      const pc: ProposedContext = { id: it.value[0]!, abstractSyntax: "", transferSyntaxes: [] };
      for (const sub of items(it.value, 4, "presentation context")) {
        if (sub.type === 0x30) pc.abstractSyntax = uidText(sub.value);
        else if (sub.type === 0x40) pc.transferSyntaxes.push(uidText(sub.value));
      }
      rq.contexts.push(pc);
    } else if (it.type === 0x50) readUserInfo(it.value, rq);
  }
  return rq;
}

export function decodeAssociateAC(body: Buffer): AssociateAC {
  if (body.length < 68) throw new PduError("the A-ASSOCIATE-AC is shorter than its fixed part");
  const ac: AssociateAC = {
    calledAE: aeText(body.subarray(4, 20)),
    callingAE: aeText(body.subarray(20, 36)),
    contexts: [],
    maxPduLength: 0,
    implementationClassUID: "",
    implementationVersion: "",
    roles: [],
  };
  for (const it of items(body, 68, "A-ASSOCIATE-AC")) {
    if (it.type === 0x21) {
      if (it.value.length < 4) throw new PduError("a presentation context item is cut short");
      const pc: AcceptedContext = { id: it.value[0]!, result: it.value[2]!, transferSyntax: "" };
      for (const sub of items(it.value, 4, "presentation context")) if (sub.type === 0x40) pc.transferSyntax = uidText(sub.value);
      ac.contexts.push(pc);
    } else if (it.type === 0x50) readUserInfo(it.value, ac);
  }
  return ac;
}

/** The PDVs of a P-DATA-TF body. */
export function decodePData(body: Buffer): Pdv[] {
  const out: Pdv[] = [];
  let p = 0;
  while (p < body.length) {
    if (p + 6 > body.length) throw new PduError("a PDV header is cut short");
    const len = body.readUInt32BE(p);
    if (len < 2 || p + 4 + len > body.length) throw new PduError(`a PDV claims ${len} bytes, more than its P-DATA-TF holds`);
    const ctl = body[p + 5]!;
    out.push({ contextId: body[p + 4]!, command: (ctl & 1) === 1, last: (ctl & 2) === 2, data: body.subarray(p + 6, p + 4 + len) });
    p += 4 + len;
  }
  return out;
}

/**
 * Cuts a byte stream into PDUs. Holds at most one PDU (bounded by maxLength) plus one read chunk.
 */
export class PduFramer {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxLength: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** The next complete PDU (type, body), or null when more bytes are needed. Throws PduError when too long. */
  next(): { type: number; body: Buffer } | null {
    if (this.buffered < 6) return null;
    if (this.chunks[0]!.length < 6) this.chunks = [Buffer.concat(this.chunks)];
    const len = this.chunks[0]!.readUInt32BE(2);
    if (len > this.maxLength) {
      throw new PduError(`a PDU of ${len} bytes is longer than this relay accepts (${this.maxLength}); the peer ignored the maximum PDU length it was given`);
    }
    // join the chunks only once the whole PDU is there (no quadratic copying of a large PDU)
    if (this.buffered < 6 + len) return null;
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    const head = this.chunks[0]!;
    const type = head[0]!;
    const body = Buffer.from(head.subarray(6, 6 + len));
    const rest = head.subarray(6 + len);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return { type, body };
  }
}
