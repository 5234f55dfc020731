/**
 * One DICOM association over one socket, for either side (the relay accepting a peer, or the relay
 * calling a peer for C-MOVE and forwarding). It frames PDUs, assembles DIMSE messages from PDVs and sends
 * messages cut into P-DATA-TF PDUs no longer than the peer accepts.
 *
 * Memory: a received PDU is at most the maximum length this side announced; a data set that is streamed
 * (C-STORE) goes fragment by fragment to its sink, with the socket paused while the sink is busy; other
 * data sets (C-FIND identifiers) are kept in memory up to a bound. A data set sent from a stream (a stored
 * instance) is read chunk by chunk, waiting for the socket to drain.
 */
import net from "node:net";
import tls from "node:tls";
import fs from "node:fs";
import { once } from "node:events";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import {
  decodeAssociateAC, decodeAssociateRQ, decodePData, encodeAbort, encodeAssociateAC, encodeAssociateRJ, encodeAssociateRQ,
  encodePData, encodeReleaseRP, encodeReleaseRQ, PcResult, PduError, PduFramer, PduType,
  type AcceptedContext, type AssociateAC, type AssociateRQ, type ProposedContext, type RoleSelection,
} from "./pdu.ts";
import { CommandError, decodeCommand, encodeCommand, type Command } from "./command.ts";
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME } from "../dicom/uids.ts";

/** A fragment sink for a data set that is not kept in memory (the data set of a C-STORE request). */
export interface DatasetSink {
  write(chunk: Buffer): Promise<void> | void;
  /** all fragments were written; the sink owner answers the request */
  end(): void;
  /** the association ended before the last fragment */
  abort(err: Error): void;
}

export interface IncomingMessage {
  contextId: number;
  command: Command;
  /** the data set, when it was kept in memory (identifiers) */
  dataset?: Buffer;
}

export interface AssociationHandlers {
  /** a request whose data set (if any) is complete; handled concurrently with further reading */
  onRequest?(assoc: Association, msg: IncomingMessage): void;
  /** a C-STORE request with a data set: return a sink to stream it to (else it is kept in memory, bounded) */
  datasetSink?(assoc: Association, contextId: number, command: Command): DatasetSink | null;
  /** C-CANCEL for the message id */
  onCancel?(assoc: Association, messageId: number): void;
  onClose?(assoc: Association, reason: string): void;
}

export interface ContextInfo {
  id: number;
  abstractSyntax: string;
  transferSyntax: string;
}

export interface AssociationOptions {
  /** largest PDU this side accepts (announced to the peer) */
  maxPduLength: number;
  /** largest data set kept in memory (identifiers) */
  maxInMemoryDataset: number;
  /** idle time after which the association is aborted */
  idleTimeoutMs: number;
  log: Logger;
}

/**
 * TLS options for calling a peer: the relay's own certificate and key (tls.certFile / keyFile, issued by its PKI
 * with clientAuth), and the relay CA (tls.clientCaFile) as the only trusted issuer of the peer's certificate.
 * DICOM TLS identifies a node by its certificate chain and AE title; the peer's host name is not checked
 * against the certificate (peers are configured by address).
 */
export function peerTlsOptions(t: { certFile: string; keyFile: string; clientCaFile: string }): tls.ConnectionOptions {
  return {
    cert: fs.readFileSync(t.certFile),
    key: fs.readFileSync(t.keyFile),
    ca: fs.readFileSync(t.clientCaFile),
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined,
    minVersion: "TLSv1.2",
  };
}

/** Wait until a writable drains or closes; the listeners are removed either way (no leak across many waits). */
export function drainOrClose(w: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      w.off("drain", done);
      w.off("close", done);
      resolve();
    };
    w.on("drain", done);
    w.on("close", done);
  });
}

/** Cap on the PDUs this side sends when the peer announces no limit (0). */
const SEND_CAP = 1 << 20;

export class AssociationError extends Error {
  constructor(message: string, readonly rejection?: { result: number; source: number; reason: number }) {
    super(message);
    this.name = "AssociationError";
  }
}

export class Association {
  readonly contexts = new Map<number, ContextInfo>();
  callingAE = "";
  calledAE = "";
  peerMaxPdu = 0;
  roles: RoleSelection[] = [];
  readonly remoteAddress: string;
  closed = false;
  private framer: PduFramer;
  private handlers: AssociationHandlers;
  private sending: Promise<void> = Promise.resolve();
  private nextMessageId = 1;
  private waiters = new Map<number, { onPending?: (c: Command, ds?: Buffer) => void; resolve: (c: Command) => void; reject: (e: Error) => void }>();
  private incoming: { contextId: number; cmd: Buffer[]; cmdBytes: number; command?: Command; sink?: DatasetSink | null; ds: Buffer[]; dsBytes: number } | null = null;
  private onAssociateRQ?: (rq: AssociateRQ & { protocolVersion: number }) => Promise<void>;
  private onAssociateReply?: (type: number, body: Buffer) => void;
  private releaseWaiter?: () => void;
  private processing = false;

  private constructor(readonly socket: net.Socket, readonly opts: AssociationOptions, handlers: AssociationHandlers) {
    this.handlers = handlers;
    this.remoteAddress = socket.remoteAddress ?? "";
    // PDU length field counts the body; the header is 6 more bytes
    this.framer = new PduFramer(Math.max(opts.maxPduLength, 64 * 1024));
    socket.setNoDelay(true);
    socket.setTimeout(opts.idleTimeoutMs, () => this.abort("the association was idle too long"));
    socket.on("data", (chunk: Buffer) => {
      this.framer.push(chunk);
      void this.pump();
    });
    socket.on("error", (err) => this.opts.log.debug({ err, peer: this.callingAE }, "DIMSE socket error"));
    socket.on("close", () => this.finish("the connection closed"));
  }

  /** Wrap an accepted socket; `decide` answers the A-ASSOCIATE-RQ (accept() or reject()). */
  static accept(socket: net.Socket, opts: AssociationOptions, handlers: AssociationHandlers, decide: (a: Association, rq: AssociateRQ & { protocolVersion: number }) => Promise<void>): Association {
    const a = new Association(socket, opts, handlers);
    a.onAssociateRQ = (rq) => decide(a, rq);
    return a;
  }

  /** Open an association to a peer; rejects with AssociationError when refused. */
  static async connect(
    target: { host: string; port: number; calledAE: string; callingAE: string; tls?: tls.ConnectionOptions },
    contexts: ProposedContext[],
    opts: AssociationOptions & { connectTimeoutMs: number; roles?: RoleSelection[] },
    handlers: AssociationHandlers = {},
  ): Promise<Association> {
    const socket = target.tls
      ? tls.connect({ ...target.tls, host: target.host, port: target.port })
      : net.connect({ host: target.host, port: target.port });
    const timer = setTimeout(() => socket.destroy(new Error(`no answer from ${target.host}:${target.port} within ${opts.connectTimeoutMs} ms`)), opts.connectTimeoutMs);
    try {
      await once(socket, target.tls ? "secureConnect" : "connect");
      socket.setNoDelay(true);
    } catch (err) {
      clearTimeout(timer);
      throw new AssociationError(`cannot connect to ${target.calledAE} at ${target.host}:${target.port}: ${(err as Error).message}`);
    }
    const a = new Association(socket, opts, handlers);
    a.callingAE = target.callingAE;
    a.calledAE = target.calledAE;
    const reply = new Promise<{ type: number; body: Buffer }>((resolve, reject) => {
      a.onAssociateReply = (type, body) => resolve({ type, body });
      socket.once("close", () => reject(new AssociationError(`${target.calledAE} at ${target.host}:${target.port} closed the connection during association`)));
    });
    socket.write(encodeAssociateRQ({
      calledAE: target.calledAE,
      callingAE: target.callingAE,
      contexts,
      maxPduLength: opts.maxPduLength,
      implementationClassUID: IMPLEMENTATION_CLASS_UID,
      implementationVersion: IMPLEMENTATION_VERSION_NAME,
      roles: opts.roles ?? [],
    }));
    let r: { type: number; body: Buffer };
    try {
      r = await reply;
    } finally {
      clearTimeout(timer);
    }
    if (r.type === PduType.AssociateRJ) {
      socket.destroy();
      const rejection = { result: r.body[1] ?? 0, source: r.body[2] ?? 0, reason: r.body[3] ?? 0 };
      throw new AssociationError(`${target.calledAE} rejected the association (result ${rejection.result}, source ${rejection.source}, reason ${rejection.reason})`, rejection);
    }
    if (r.type !== PduType.AssociateAC) {
      socket.destroy();
      throw new AssociationError(`${target.calledAE} answered the association request with PDU type ${r.type}`);
    }
    const ac = decodeAssociateAC(r.body);
    a.peerMaxPdu = ac.maxPduLength;
    a.roles = ac.roles;
    for (const pc of ac.contexts) {
      const proposed = contexts.find((c) => c.id === pc.id);
      if (pc.result === PcResult.acceptance && proposed) a.contexts.set(pc.id, { id: pc.id, abstractSyntax: proposed.abstractSyntax, transferSyntax: pc.transferSyntax });
    }
    return a;
  }

  /** Acceptor side: send the A-ASSOCIATE-AC. */
  sendAccept(rq: AssociateRQ, accepted: AcceptedContext[], roles: RoleSelection[]): void {
    this.callingAE = rq.callingAE;
    this.calledAE = rq.calledAE;
    this.peerMaxPdu = rq.maxPduLength;
    this.roles = roles;
    for (const pc of accepted) {
      if (pc.result === PcResult.acceptance) this.contexts.set(pc.id, { id: pc.id, abstractSyntax: pc.abstractSyntax ?? "", transferSyntax: pc.transferSyntax });
    }
    const ac: AssociateAC = {
      calledAE: rq.calledAE,
      callingAE: rq.callingAE,
      contexts: accepted,
      maxPduLength: this.opts.maxPduLength,
      implementationClassUID: IMPLEMENTATION_CLASS_UID,
      implementationVersion: IMPLEMENTATION_VERSION_NAME,
      roles,
    };
    this.socket.write(encodeAssociateAC(ac));
  }

  sendReject(result: number, source: number, reason: number): void {
    this.socket.end(encodeAssociateRJ(result, source, reason));
    this.closed = true;
  }

  /** A-ABORT and close. */
  abort(reason: string): void {
    if (this.closed) return;
    this.opts.log.warn({ peer: this.callingAE, remote: this.remoteAddress, reason }, "DIMSE association aborted");
    try {
      this.socket.end(encodeAbort(2, 0));
    } catch {
      // the socket is already gone
    }
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.finish(reason);
  }

  /** Requestor side: A-RELEASE-RQ, wait for the RP, close. */
  async release(timeoutMs = 10_000): Promise<void> {
    if (this.closed) return;
    await this.sending;
    const done = new Promise<void>((resolve) => {
      this.releaseWaiter = resolve;
      this.socket.once("close", () => resolve());
    });
    this.socket.write(encodeReleaseRQ());
    const timer = setTimeout(() => this.socket.destroy(), timeoutMs);
    await done;
    clearTimeout(timer);
    this.socket.end();
    this.finish("released");
  }

  get maxFragment(): number {
    const max = this.peerMaxPdu > 0 ? Math.min(this.peerMaxPdu, SEND_CAP) : SEND_CAP;
    return Math.max(max - 6, 256);
  }

  /** Send one message (command, then the data set from memory or a stream). Messages never interleave. */
  send(contextId: number, command: Command, dataset?: Buffer | Readable): Promise<void> {
    const run = async () => {
      if (this.closed) throw new AssociationError("the association is closed");
      await this.write(encodePData(contextId, true, true, encodeCommand({ ...command, hasDataset: dataset !== undefined })));
      if (dataset === undefined) return;
      const max = this.maxFragment;
      if (Buffer.isBuffer(dataset)) {
        for (let p = 0; p < dataset.length || p === 0; p += max) {
          const last = p + max >= dataset.length;
          await this.write(encodePData(contextId, false, last, dataset.subarray(p, p + max)));
          if (last) break;
        }
        return;
      }
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      try {
        for await (const chunk of dataset as AsyncIterable<Buffer>) {
          if (this.closed) throw new AssociationError("the association closed while an instance was being sent");
          pending.push(chunk);
          pendingBytes += chunk.length;
          // keep the tail back: the last fragment must carry the "last" flag
          while (pendingBytes > max) {
            const all = Buffer.concat(pending);
            await this.write(encodePData(contextId, false, false, all.subarray(0, max)));
            pending = [all.subarray(max)];
            pendingBytes = all.length - max;
          }
        }
      } catch (err) {
        dataset.destroy();
        // half a data set is on the wire: DIMSE has no way to take it back, only A-ABORT
        if (!(err instanceof AssociationError)) this.abort(`reading the data set being sent failed: ${(err as Error).message}`);
        throw err instanceof AssociationError ? err : new AssociationError(`sending stopped: ${(err as Error).message}`);
      }
      await this.write(encodePData(contextId, false, true, Buffer.concat(pending)));
    };
    const p = this.sending.then(run);
    this.sending = p.catch(() => {});
    return p;
  }

  /** Send a request and wait for its final response; pending responses go to onPending. */
  async request(contextId: number, command: Omit<Command, "messageId" | "hasDataset">, dataset?: Buffer | Readable, onPending?: (c: Command, ds?: Buffer) => void): Promise<Command> {
    const messageId = this.nextMessageId;
    this.nextMessageId = messageId >= 0xffff ? 1 : messageId + 1;
    const result = new Promise<Command>((resolve, reject) => this.waiters.set(messageId, { resolve, reject, onPending }));
    // when sending fails, the caller gets that error; the waiter's own rejection must not go unhandled
    result.catch(() => {});
    try {
      await this.send(contextId, { ...command, messageId, hasDataset: dataset !== undefined }, dataset);
    } catch (err) {
      this.waiters.delete(messageId);
      throw err;
    }
    return result;
  }

  /** First accepted context for an abstract syntax (and transfer syntax, when given). */
  findContext(abstractSyntax: string, transferSyntax?: string): ContextInfo | undefined {
    for (const c of this.contexts.values()) {
      if (c.abstractSyntax === abstractSyntax && (transferSyntax === undefined || c.transferSyntax === transferSyntax)) return c;
    }
    return undefined;
  }

  private async write(buf: Buffer): Promise<void> {
    if (this.closed || this.socket.destroyed) throw new AssociationError("the association is closed");
    if (!this.socket.write(buf)) {
      await drainOrClose(this.socket);
      if (this.socket.destroyed) throw new AssociationError("the connection closed while sending");
    }
  }

  private finish(reason: string): void {
    const first = !this.closed || this.waiters.size > 0 || this.incoming !== null;
    this.closed = true;
    for (const w of this.waiters.values()) w.reject(new AssociationError(`the association ended: ${reason}`));
    this.waiters.clear();
    if (this.incoming?.sink) this.incoming.sink.abort(new AssociationError(`the association ended before the data set was complete: ${reason}`));
    this.incoming = null;
    this.releaseWaiter?.();
    if (first && this.handlers.onClose) {
      const h = this.handlers.onClose;
      this.handlers = {};
      h(this, reason);
    }
  }

  /** Handle complete PDUs one at a time; the socket is paused while a PDU is being handled. */
  private async pump(): Promise<void> {
    if (this.processing) return;
    this.processing = true;
    this.socket.pause();
    try {
      for (;;) {
        if (this.closed && this.socket.destroyed) return;
        let pdu: { type: number; body: Buffer } | null;
        try {
          pdu = this.framer.next();
        } catch (err) {
          this.abort((err as Error).message);
          return;
        }
        if (!pdu) break;
        try {
          await this.handlePdu(pdu.type, pdu.body);
        } catch (err) {
          const known = err instanceof PduError || err instanceof CommandError || err instanceof AssociationError;
          if (!known) this.opts.log.error({ err }, "unexpected error while handling a DIMSE PDU");
          this.abort((err as Error).message);
          return;
        }
      }
    } finally {
      this.processing = false;
      if (!this.socket.destroyed) this.socket.resume();
    }
  }

  private async handlePdu(type: number, body: Buffer): Promise<void> {
    switch (type) {
      case PduType.AssociateRQ: {
        if (!this.onAssociateRQ) throw new PduError("unexpected A-ASSOCIATE-RQ");
        const h = this.onAssociateRQ;
        this.onAssociateRQ = undefined;
        await h(decodeAssociateRQ(body));
        return;
      }
      case PduType.AssociateAC:
      case PduType.AssociateRJ: {
        if (!this.onAssociateReply) throw new PduError("unexpected association answer");
        const h = this.onAssociateReply;
        this.onAssociateReply = undefined;
        h(type, body);
        return;
      }
      case PduType.PData:
        if (this.contexts.size === 0) throw new PduError("P-DATA before the association was accepted");
        for (const pdv of decodePData(body)) await this.handlePdv(pdv.contextId, pdv.command, pdv.last, pdv.data);
        return;
      case PduType.ReleaseRQ:
        await this.sending;
        this.socket.end(encodeReleaseRP());
        this.finish("released by the peer");
        return;
      case PduType.ReleaseRP:
        this.releaseWaiter?.();
        return;
      case PduType.Abort:
        this.socket.destroy();
        this.finish("aborted by the peer");
        return;
      default:
        throw new PduError(`unknown PDU type 0x${type.toString(16)}`);
    }
  }

  private async handlePdv(contextId: number, isCommand: boolean, last: boolean, data: Buffer): Promise<void> {
    if (!this.contexts.has(contextId)) throw new PduError(`a PDV names presentation context ${contextId}, which was not accepted`);
    if (isCommand) {
      if (this.incoming?.command) throw new PduError("a new command started before the data set of the previous one ended");
      this.incoming ??= { contextId, cmd: [], cmdBytes: 0, ds: [], dsBytes: 0 };
      this.incoming.cmd.push(data);
      this.incoming.cmdBytes += data.length;
      if (this.incoming.cmdBytes > 64 * 1024) throw new PduError("a command set longer than 64 KiB");
      if (!last) return;
      const command = decodeCommand(Buffer.concat(this.incoming.cmd));
      if (!command.hasDataset) {
        this.incoming = null;
        this.dispatch({ contextId, command });
        return;
      }
      this.incoming.command = command;
      this.incoming.sink = command.commandField === 0x0001 ? this.handlers.datasetSink?.(this, contextId, command) ?? null : null;
      return;
    }
    const cur = this.incoming;
    if (!cur?.command) throw new PduError("a data set fragment arrived without its command");
    if (cur.sink) {
      await cur.sink.write(data);
    } else {
      cur.dsBytes += data.length;
      if (cur.dsBytes > this.opts.maxInMemoryDataset) throw new PduError(`a data set larger than ${this.opts.maxInMemoryDataset} bytes where an identifier was expected`);
      cur.ds.push(data);
    }
    if (!last) return;
    this.incoming = null;
    if (cur.sink) cur.sink.end();
    else this.dispatch({ contextId: cur.contextId, command: cur.command, dataset: Buffer.concat(cur.ds) });
  }

  private dispatch(msg: IncomingMessage): void {
    const c = msg.command;
    if (c.commandField & 0x8000) {
      const w = this.waiters.get(c.messageIdBeingRespondedTo ?? -1);
      if (!w) {
        this.opts.log.warn({ peer: this.calledAE || this.callingAE, messageId: c.messageIdBeingRespondedTo }, "a DIMSE response to no outstanding request was ignored");
        return;
      }
      const pending = c.status === 0xff00 || c.status === 0xff01;
      if (pending) w.onPending?.(c, msg.dataset);
      else {
        this.waiters.delete(c.messageIdBeingRespondedTo!);
        w.resolve(c);
      }
      return;
    }
    if (c.commandField === 0x0fff) {
      this.handlers.onCancel?.(this, c.messageIdBeingRespondedTo ?? -1);
      return;
    }
    this.handlers.onRequest?.(this, msg);
  }
}
