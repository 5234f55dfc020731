/**
 * DIMSE command sets (PS3.7 E.1): group 0000, always Implicit VR Little Endian. Pure.
 */

export const CommandField = {
  CStoreRQ: 0x0001,
  CStoreRSP: 0x8001,
  CGetRQ: 0x0010,
  CGetRSP: 0x8010,
  CFindRQ: 0x0020,
  CFindRSP: 0x8020,
  CMoveRQ: 0x0021,
  CMoveRSP: 0x8021,
  CEchoRQ: 0x0030,
  CEchoRSP: 0x8030,
  CCancelRQ: 0x0fff,
  NEventReportRQ: 0x0100,
  NEventReportRSP: 0x8100,
  NActionRQ: 0x0130,
  NActionRSP: 0x8130,
} as const;

/** Status codes the relay answers with (PS3.4 Annex B, C, PS3.7 C). */
export const Status = {
  Success: 0x0000,
  Pending: 0xff00,
  Cancel: 0xfe00,
  /** sub-operations complete, one or more failures or warnings (C-MOVE / C-GET) */
  SubOperationsWarning: 0xb000,
  /** C-STORE: stored, but something was coerced or ignored */
  StoreWarning: 0xb000,
  OutOfResources: 0xa700,
  /** C-MOVE/C-GET: unable to calculate number of matches */
  OutOfResourcesMatches: 0xa701,
  /** C-MOVE/C-GET: unable to perform sub-operations */
  OutOfResourcesSubOperations: 0xa702,
  MoveDestinationUnknown: 0xa801,
  IdentifierDoesNotMatchSOPClass: 0xa900,
  UnableToProcess: 0xc000,
  ProcessingFailure: 0x0110,
  NoSuchSOPClass: 0x0118,
  SOPClassNotSupported: 0x0122,
  NotAuthorized: 0x0124,
  UnrecognizedOperation: 0x0211,
  /** N-EVENT-REPORT: no such event type */
  NoSuchEventType: 0x0113,
  /** N-EVENT-REPORT / N-ACTION: invalid argument value */
  InvalidArgumentValue: 0x0115,
} as const;

export const NO_DATASET = 0x0101;

/** A decoded command: the fields the relay reads or writes, by name. */
export interface Command {
  commandField: number;
  messageId?: number;
  messageIdBeingRespondedTo?: number;
  affectedSOPClassUID?: string;
  requestedSOPClassUID?: string;
  affectedSOPInstanceUID?: string;
  requestedSOPInstanceUID?: string;
  /** N-EVENT-REPORT */
  eventTypeId?: number;
  /** N-ACTION */
  actionTypeId?: number;
  moveDestination?: string;
  priority?: number;
  hasDataset: boolean;
  status?: number;
  errorComment?: string;
  remaining?: number;
  completed?: number;
  failed?: number;
  warning?: number;
  moveOriginatorAE?: string;
  moveOriginatorMessageId?: number;
}

type Kind = "UI" | "US" | "AE" | "LO" | "UL";
const FIELDS: Array<[tag: number, key: keyof Command, kind: Kind]> = [
  [0x00000002, "affectedSOPClassUID", "UI"],
  [0x00000003, "requestedSOPClassUID", "UI"],
  [0x00000100, "commandField", "US"],
  [0x00000110, "messageId", "US"],
  [0x00000120, "messageIdBeingRespondedTo", "US"],
  [0x00000600, "moveDestination", "AE"],
  [0x00000700, "priority", "US"],
  [0x00000900, "status", "US"],
  [0x00000902, "errorComment", "LO"],
  [0x00001000, "affectedSOPInstanceUID", "UI"],
  [0x00001001, "requestedSOPInstanceUID", "UI"],
  [0x00001002, "eventTypeId", "US"],
  [0x00001008, "actionTypeId", "US"],
  [0x00001020, "remaining", "US"],
  [0x00001021, "completed", "US"],
  [0x00001022, "failed", "US"],
  [0x00001023, "warning", "US"],
  [0x00001030, "moveOriginatorAE", "AE"],
  [0x00001031, "moveOriginatorMessageId", "US"],
];
const DATASET_TYPE = 0x00000800;

function element(tag: number, value: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16LE(tag >>> 16, 0);
  h.writeUInt16LE(tag & 0xffff, 2);
  h.writeUInt32LE(value.length, 4);
  return Buffer.concat([h, value]);
}

function text(v: string, pad: string): Buffer {
  const b = Buffer.from(v, "latin1");
  return b.length % 2 ? Buffer.concat([b, Buffer.from(pad, "latin1")]) : b;
}

export function encodeCommand(c: Command): Buffer {
  const els: Array<[number, Buffer]> = [];
  for (const [tag, key, kind] of FIELDS) {
    const v = c[key];
    if (v === undefined || v === null) continue;
    if (kind === "US") {
      const b = Buffer.alloc(2);
      b.writeUInt16LE(Number(v) & 0xffff, 0);
      els.push([tag, b]);
    } else if (kind === "UI") els.push([tag, text(String(v), "\0")]);
    else if (kind === "AE") els.push([tag, text(String(v).slice(0, 16), " ")]);
    else els.push([tag, text(String(v).replace(/[\\\r\n]/g, " ").slice(0, 64), " ")]);
  }
  const ds = Buffer.alloc(2);
  ds.writeUInt16LE(c.hasDataset ? 0x0000 : NO_DATASET, 0);
  els.push([DATASET_TYPE, ds]);
  els.sort((a, b) => a[0] - b[0]);
  const body = Buffer.concat(els.map(([t, v]) => element(t, v)));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(body.length, 0);
  return Buffer.concat([element(0x00000000, len), body]);
}

export class CommandError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CommandError";
  }
}

export function decodeCommand(b: Buffer): Command {
  const byTag = new Map(FIELDS.map(([t, k, kind]) => [t, { k, kind }]));
  const c: Partial<Command> & { hasDataset: boolean } = { hasDataset: false };
  let p = 0;
  let sawType = false;
  while (p + 8 <= b.length) {
    const tag = ((b.readUInt16LE(p) << 16) | b.readUInt16LE(p + 2)) >>> 0;
    const len = b.readUInt32LE(p + 4);
    if (p + 8 + len > b.length) throw new CommandError(`command element (${(tag >>> 16).toString(16)},${(tag & 0xffff).toString(16)}) runs past the end of the command`);
    const v = b.subarray(p + 8, p + 8 + len);
    p += 8 + len;
    if (tag === DATASET_TYPE) {
      sawType = true;
      c.hasDataset = len >= 2 && v.readUInt16LE(0) !== NO_DATASET;
      continue;
    }
    const f = byTag.get(tag);
    if (!f) continue;
    if (f.kind === "US") {
      if (len >= 2) (c as Record<string, unknown>)[f.k] = v.readUInt16LE(0);
    } else {
      (c as Record<string, unknown>)[f.k] = v.toString("latin1").replace(/[\0 ]+$/, "").trim();
    }
  }
  if (c.commandField === undefined) throw new CommandError("the command has no CommandField (0000,0100)");
  if (!sawType) throw new CommandError("the command has no CommandDataSetType (0000,0800)");
  return c as Command;
}
