/**
 * The relay's DICOM node: a TCP (or DICOM TLS) listener on dimse.host:dimse.port that accepts associations
 * from configured peers only and answers C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET (Study Root and Patient Root) from the
 * same ingest pipeline, index and blob store as DICOMweb. Every association and operation is audited.
 */
import net from "node:net";
import tls from "node:tls";
import fs from "node:fs";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import type { RelayConfig, DimsePeerConfig } from "../config.ts";
import type { Index, InstanceLocation, InstanceScope } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import type { Ingestor } from "../ingest/types.ts";
import { auditContext, type AuditEntry, type AuditTrail } from "../access/audit.ts";
import type { PeerGrants } from "../access/peerGrants.ts";
import { readBareDataset } from "../dicom/part10.ts";
import { InstanceRejectedError } from "../dicom/failureReasons.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { Association, AssociationError, peerTlsOptions, type IncomingMessage } from "./association.ts";
import { CommandField, Status, type Command } from "./command.ts";
import { encodeDataset, isExplicit } from "./dataset.ts";
import { decideAssociation, hostIsAddress, isStorageSopClass, QUERY_RETRIEVE, SopClassUID } from "./peers.ts";
import { isUid } from "../dicom/qido.ts";
import { IdentifierError, PatientAnswers, planFind, responseIdentifier, type FindPlan } from "./find.ts";
import { storeSink } from "./store.ts";
import { planRetrieve, storageContexts, storeInstance, SubOperations } from "./retrieve.ts";
import { Reject } from "./pdu.ts";
import { RevocationList } from "../access/tls.ts";
import type { RelayMetrics } from "../metrics/metrics.ts";
import type { RetentionService } from "../retention/service.ts";
import { StorageCommitments } from "./commitment.ts";
import { pixelModuleOf, type PixelModule } from "../imaging/pixelModule.ts";

export interface DimseDeps {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  ingest: Ingestor;
  audit?: AuditTrail;
  peerGrants?: PeerGrants;
  metrics?: Pick<RelayMetrics, "noteDimse">;
  /** delivery tracking for retention: an instance a peer received whole */
  retention?: Pick<RetentionService, "noteDelivered">;
}

interface Session {
  peer: DimsePeerConfig;
  /** message ids of running C-FIND / C-MOVE / C-GET that were cancelled */
  cancelled: Set<number>;
}

export class DimseServer {
  private server: net.Server | null = null;
  private readonly open = new Set<Association>();
  private readonly sessions = new WeakMap<Association, Session>();
  private readonly certSubjects = new WeakMap<Association, string>();
  private revoked: RevocationList | null = null;
  port = 0;
  /** storage commitment requests the relay made, and the reports peers send back */
  readonly commitments: StorageCommitments;

  constructor(private readonly deps: DimseDeps) {
    this.commitments = new StorageCommitments({ config: deps.config, log: deps.log, retention: deps.retention });
    for (const p of deps.config.dimse.peers) {
      if (!hostIsAddress(p.host)) throw new Error(`dimse.peers: host "${p.host}" of ${p.aeTitle} must be an IP address or localhost`);
    }
  }

  private get cfg() {
    return this.deps.config.dimse;
  }

  async start(): Promise<number> {
    const onSocket = (socket: net.Socket) => this.onConnection(socket);
    if (this.cfg.tls) {
      const t = this.deps.config.tls;
      this.revoked = new RevocationList(t.revokedFile);
      this.server = tls.createServer({
        cert: fs.readFileSync(t.certFile),
        key: fs.readFileSync(t.keyFile),
        ca: fs.readFileSync(t.clientCaFile),
        requestCert: true,
        rejectUnauthorized: true,
        minVersion: "TLSv1.2",
      }, onSocket);
    } else {
      this.server = net.createServer(onSocket);
    }
    // connections that never associate are bounded too (they end at the idle timeout); a few spare ones let
    // the over-limit association hear its A-ASSOCIATE-RJ instead of a reset
    this.server.maxConnections = this.cfg.maxAssociations + 8;
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(this.cfg.port, this.cfg.host, () => resolve());
    });
    this.port = (this.server.address() as AddressInfo).port;
    this.deps.log.info({ host: this.cfg.host, port: this.port, aeTitle: this.cfg.aeTitle, tls: this.cfg.tls }, "DICOM node listening");
    return this.port;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const a of this.open) a.abort("the relay is stopping");
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private audit(e: Omit<AuditEntry, "actor"> & { actor?: string }, assoc: Association): void {
    this.deps.audit?.record({
      actor: `ae:${assoc.callingAE || "unknown"}`,
      certSubject: this.certSubjects.get(assoc) ?? null,
      remoteAddr: assoc.remoteAddress,
      route: `dimse${this.cfg.tls ? "s" : ""}://${this.cfg.aeTitle}`,
      ...e,
    });
  }

  /** DICOM TLS: the peer certificate was verified against the relay CA by the handshake; here: not revoked. */
  private certificateCheck(socket: net.Socket): { subject: string | null; refusal: string | null } {
    if (!(socket instanceof tls.TLSSocket)) return { subject: null, refusal: null };
    const cert = socket.getPeerCertificate();
    const subject = cert?.subject ? Object.entries(cert.subject).map(([k, v]) => `${k}=${String(v)}`).join(",") : "unknown";
    try {
      if (cert?.serialNumber && this.revoked?.has(cert.serialNumber)) return { subject, refusal: `the client certificate ${subject} (serial ${cert.serialNumber}) has been revoked` };
    } catch (err) {
      return { subject, refusal: `the revoked-certificate list cannot be read: ${(err as Error).message}` };
    }
    return { subject, refusal: null };
  }

  private allowedStudies(peer: DimsePeerConfig): string[] | null {
    if (peer.studies === "all") return null;
    return this.deps.peerGrants?.studiesFor(peer.aeTitle) ?? [];
  }

  private onConnection(socket: net.Socket): void {
    const log = this.deps.log;
    const assoc = Association.accept(socket, {
      maxPduLength: this.cfg.maxPduLength,
      maxInMemoryDataset: this.cfg.maxIdentifierBytes,
      idleTimeoutMs: this.cfg.idleTimeoutSeconds * 1000,
      log,
    }, {
      onRequest: (a, msg) => {
        const started = process.hrtime.bigint();
        const command = commandName(msg.command.commandField);
        const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
        void this.onRequest(a, msg).then(
          () => this.deps.metrics?.noteDimse(command, "completed", seconds()),
          (err) => {
            this.deps.metrics?.noteDimse(command, "error", seconds());
            log.error({ err }, "DIMSE request failed");
            a.abort(`internal error: ${(err as Error).message}`);
          },
        );
      },
      datasetSink: (a, contextId, command) => this.storeSinkFor(a, contextId, command),
      onCancel: (a, messageId) => this.sessions.get(a)?.cancelled.add(messageId),
      onClose: (a, reason) => {
        this.open.delete(a);
        if (this.sessions.has(a)) this.audit({ action: "dimse.release", outcome: "success", detail: reason }, a);
      },
    }, async (a, rq) => {
      a.callingAE = rq.callingAE;
      const cert = this.certificateCheck(socket);
      if (cert.subject) this.certSubjects.set(a, cert.subject);
      if (cert.refusal) {
        log.warn({ callingAE: rq.callingAE, remote: socket.remoteAddress, reason: cert.refusal }, "DICOM association refused");
        this.audit({ action: "dimse.associate", outcome: "failure", detail: `refused: ${cert.refusal}` }, a);
        a.sendReject(Reject.permanent, Reject.user.source, Reject.user.noReason);
        return;
      }
      const d = decideAssociation(rq, socket.remoteAddress ?? "", this.cfg);
      if (!d.ok) {
        log.warn({ callingAE: rq.callingAE, calledAE: rq.calledAE, remote: socket.remoteAddress, reason: d.message }, "DICOM association refused");
        this.audit({ action: "dimse.associate", outcome: "failure", detail: `refused: ${d.message}` }, a);
        a.sendReject(d.result, d.source, d.reason);
        return;
      }
      if (this.open.size >= this.cfg.maxAssociations) {
        this.audit({ action: "dimse.associate", outcome: "failure", detail: `refused: ${this.cfg.maxAssociations} associations already open` }, a);
        a.sendReject(Reject.transient, Reject.presentation.source, Reject.presentation.localLimitExceeded);
        return;
      }
      this.open.add(a);
      this.sessions.set(a, { peer: d.peer, cancelled: new Set() });
      a.sendAccept(rq, d.contexts, d.roles);
      const accepted = d.contexts.filter((c) => c.result === 0).length;
      this.audit({ action: "dimse.associate", outcome: "success", detail: `called ${rq.calledAE}; ${accepted}/${rq.contexts.length} presentation contexts accepted` }, a);
    });
    socket.on("error", () => {});
  }

  private storeSinkFor(a: Association, contextId: number, command: Command) {
    const session = this.sessions.get(a);
    const ctx = a.contexts.get(contextId)!;
    const sop = command.affectedSOPInstanceUID ?? "";
    const sopClass = command.affectedSOPClassUID ?? ctx.abstractSyntax;
    const respond = (status: number, errorComment?: string) =>
      a.send(contextId, {
        commandField: CommandField.CStoreRSP,
        messageIdBeingRespondedTo: command.messageId,
        affectedSOPClassUID: sopClass,
        affectedSOPInstanceUID: sop,
        status,
        errorComment,
        hasDataset: false,
      }).catch(() => {});
    // refused before anything is spooled: the data set is read and dropped, then answered
    const drop = (status: number, comment: string, why = comment) => {
      this.deps.metrics?.noteDimse("C-STORE", "failure", 0);
      this.audit({ action: "dimse.store", outcome: "failure", sopInstanceUID: isUid(sop) ? sop : null, detail: why }, a);
      this.deps.log.warn({ callingAE: a.callingAE, sopInstanceUID: sop.slice(0, 64), status: status.toString(16), why }, "C-STORE refused");
      return { write() {}, end: () => void respond(status, comment.slice(0, 64)), abort() {} };
    };
    if (!session?.peer.store) {
      // a C-GET destination context used to push instances
      return drop(Status.NotAuthorized, "this AE may not store instances", "this peer may not store instances (dimse.peers[].store is false)");
    }
    if (!isStorageSopClass(ctx.abstractSyntax) || sopClass !== ctx.abstractSyntax) {
      return drop(Status.SOPClassNotSupported, "SOP class differs from its presentation context", `SOP class ${sopClass.slice(0, 64)} sent on a presentation context for ${ctx.abstractSyntax}`);
    }
    if (!isUid(sop)) return drop(Status.IdentifierDoesNotMatchSOPClass, "no valid AffectedSOPInstanceUID", "the C-STORE request has no valid AffectedSOPInstanceUID");
    const auditCtx = { actor: `ae:${a.callingAE}`, certSubject: null, remoteAddr: a.remoteAddress, method: "C-STORE", route: `dimse://${this.cfg.aeTitle}` };
    const { sink, done } = auditContext.run(auditCtx, () =>
      storeSink({ ingest: this.deps.ingest, sopClassUID: sopClass, sopInstanceUID: sop, transferSyntaxUID: ctx.transferSyntax, callingAE: a.callingAE, source: `dimse:${a.callingAE}` }),
    );
    const started = process.hrtime.bigint();
    void done.then((o) => {
      this.deps.metrics?.noteDimse("C-STORE", dimseOutcome(o.status), Number(process.hrtime.bigint() - started) / 1e9);
      if (a.closed) return;
      if (o.status !== Status.Success) this.deps.log.warn({ callingAE: a.callingAE, sopInstanceUID: sop, status: o.status.toString(16), comment: o.errorComment }, "C-STORE not successful");
      return respond(o.status, o.errorComment?.slice(0, 64));
    });
    return sink;
  }

  private async onRequest(a: Association, msg: IncomingMessage): Promise<void> {
    const session = this.sessions.get(a);
    if (!session) return;
    const ctx = a.contexts.get(msg.contextId)!;
    const c = msg.command;
    switch (c.commandField) {
      case CommandField.CEchoRQ:
        this.audit({ action: "dimse.echo", outcome: "success" }, a);
        await a.send(msg.contextId, { commandField: CommandField.CEchoRSP, messageIdBeingRespondedTo: c.messageId, affectedSOPClassUID: SopClassUID.Verification, status: Status.Success, hasDataset: false });
        return;
      case CommandField.CFindRQ:
        if (QUERY_RETRIEVE.get(ctx.abstractSyntax)?.op !== "find") return this.refuse(a, msg, CommandField.CFindRSP);
        return this.find(a, session, msg);
      case CommandField.CMoveRQ:
        if (QUERY_RETRIEVE.get(ctx.abstractSyntax)?.op !== "move") return this.refuse(a, msg, CommandField.CMoveRSP);
        return this.retrieve(a, session, msg, "move");
      case CommandField.CGetRQ:
        if (QUERY_RETRIEVE.get(ctx.abstractSyntax)?.op !== "get") return this.refuse(a, msg, CommandField.CGetRSP);
        return this.retrieve(a, session, msg, "get");
      case CommandField.NEventReportRQ:
        if (ctx.abstractSyntax !== SopClassUID.StorageCommitmentPushModel) return this.refuse(a, msg, CommandField.NEventReportRSP);
        return this.commitments.onEventReport(a, msg);
      case CommandField.CStoreRQ:
        // a C-STORE without a data set
        await a.send(msg.contextId, { commandField: CommandField.CStoreRSP, messageIdBeingRespondedTo: c.messageId, affectedSOPClassUID: c.affectedSOPClassUID, affectedSOPInstanceUID: c.affectedSOPInstanceUID, status: Status.UnableToProcess, errorComment: "C-STORE without a data set", hasDataset: false });
        return;
      default:
        this.audit({ action: "dimse.unsupported", outcome: "failure", detail: `command field 0x${c.commandField.toString(16)}` }, a);
        await a.send(msg.contextId, { commandField: c.commandField | 0x8000, messageIdBeingRespondedTo: c.messageId, affectedSOPClassUID: ctx.abstractSyntax, status: Status.UnrecognizedOperation, hasDataset: false });
    }
  }

  private async refuse(a: Association, msg: IncomingMessage, rsp: number): Promise<void> {
    await a.send(msg.contextId, { commandField: rsp, messageIdBeingRespondedTo: msg.command.messageId, affectedSOPClassUID: a.contexts.get(msg.contextId)!.abstractSyntax, status: Status.SOPClassNotSupported, errorComment: "this presentation context is for another service", hasDataset: false });
  }

  private async pixelModule(loc: InstanceLocation): Promise<PixelModule | string> {
    const [json] = await this.deps.index.listMetadata({ studyInstanceUID: loc.studyInstanceUID, seriesInstanceUID: loc.seriesInstanceUID, sopInstanceUID: loc.sopInstanceUID });
    return json ? pixelModuleOf(JSON.parse(json) as DicomJsonDataset) : "the instance has no metadata";
  }

  private async identifier(a: Association, msg: IncomingMessage): Promise<DicomJsonDataset> {
    const ts = a.contexts.get(msg.contextId)!.transferSyntax;
    try {
      return await readBareDataset(msg.dataset ?? Buffer.alloc(0), ts, { maxHeaderBytes: this.cfg.maxIdentifierBytes, bulkDataThreshold: this.cfg.maxIdentifierBytes });
    } catch (err) {
      if (err instanceof InstanceRejectedError) throw new IdentifierError(`the identifier cannot be read: ${err.message}`);
      throw err;
    }
  }

  private async find(a: Association, session: Session, msg: IncomingMessage): Promise<void> {
    const c = msg.command;
    const ctx = a.contexts.get(msg.contextId)!;
    const model = QUERY_RETRIEVE.get(ctx.abstractSyntax)!.model;
    const base = { commandField: CommandField.CFindRSP, messageIdBeingRespondedTo: c.messageId, affectedSOPClassUID: ctx.abstractSyntax };
    const final = (status: number, errorComment?: string) => a.send(msg.contextId, { ...base, status, errorComment: errorComment?.slice(0, 64), hasDataset: false });
    let plan: FindPlan;
    let identifier: DicomJsonDataset;
    try {
      identifier = await this.identifier(a, msg);
      plan = planFind(identifier, { defaultLimit: this.deps.config.dicomweb.maxLimit, maxLimit: this.deps.config.dicomweb.maxLimit }, model);
    } catch (err) {
      if (!(err instanceof IdentifierError)) throw err;
      this.audit({ action: "dimse.find", outcome: "failure", detail: err.message }, a);
      await final(Status.IdentifierDoesNotMatchSOPClass, err.message);
      return;
    }
    const pageSize = Math.min(1000, this.deps.config.dicomweb.maxLimit);
    const allowedStudies = this.allowedStudies(session.peer);
    const explicit = isExplicit(ctx.transferSyntax);
    const cancelled = () => session.cancelled.has(c.messageId ?? -1);
    let sent = 0;
    let status: number = Status.Success;
    let comment: string | undefined;
    const tooMany = () => {
      status = Status.OutOfResources;
      comment = `more than ${this.cfg.maxFindResults} matches; narrow the query`;
    };
    // PATIENT level: every matching study is read (the counts need them all) before the first patient is answered
    const patients = plan.level === "patient" ? new PatientAnswers(this.cfg.maxFindResults) : null;
    outer: for (let offset = 0; ; offset += pageSize) {
      const page = await this.deps.index.search({ ...plan.query, limit: pageSize, offset }, { allowedStudies });
      for (const m of page.matches) {
        if (cancelled()) {
          status = Status.Cancel;
          break outer;
        }
        if (patients) {
          if (!patients.add(m)) {
            tooMany();
            break outer;
          }
          continue;
        }
        if (sent >= this.cfg.maxFindResults) {
          tooMany();
          break outer;
        }
        await a.send(msg.contextId, { ...base, status: Status.Pending, hasDataset: true }, encodeDataset(responseIdentifier(plan, m, this.cfg.aeTitle), { explicit }));
        sent++;
      }
      if (page.matches.length < pageSize) break;
    }
    if (patients && status === Status.Success) {
      for (const rsp of patients.responses(plan, this.cfg.aeTitle)) {
        if (cancelled()) {
          status = Status.Cancel;
          break;
        }
        await a.send(msg.contextId, { ...base, status: Status.Pending, hasDataset: true }, encodeDataset(rsp, { explicit }));
        sent++;
      }
    }
    session.cancelled.delete(c.messageId ?? -1);
    // a peer that sees only granted studies and finds nothing is told why in the log and the audit (issue 16)
    let hidden = "";
    if (sent === 0 && allowedStudies !== null) {
      hidden = allowedStudies.length === 0
        ? `; ${session.peer.aeTitle} sees only studies granted to it (dimse.peers[].studies = "granted") and none is granted: dicom-relay token share --study UID --peer ${session.peer.aeTitle}`
        : `; ${session.peer.aeTitle} sees only the ${allowedStudies.length} study(ies) granted to it, and none of them matches`;
      this.deps.log.info({ callingAE: a.callingAE, level: plan.level }, `C-FIND found nothing${hidden}`);
    }
    const study = plan.query.filters.find((f) => f.tag === "0020000D" && f.match.kind === "single");
    this.audit({
      action: "dimse.find",
      outcome: status === Status.Success || status === Status.Cancel ? "success" : "failure",
      studyInstanceUID: study && study.match.kind === "single" ? study.match.value : null,
      detail: `${model === "patient" ? "Patient Root, " : ""}level ${plan.level}; keys ${plan.query.filters.map((f) => f.keyword).join(",") || "(none)"}; ${sent} match(es)${status === Status.Cancel ? "; cancelled" : ""}${hidden}`,
    }, a);
    await final(status, comment);
  }

  /**
   * The studies of the one patient a Patient Root PATIENT level retrieve names, that this peer may see. A
   * PatientID shared by patients the catalogue keeps apart (another issuer or name) is refused: a retrieve
   * never mixes patients.
   */
  private async patientStudies(p: { patientID: string; query: FindPlan["query"] }, allowedStudies: readonly string[] | null): Promise<InstanceScope[]> {
    const pageSize = Math.min(1000, this.deps.config.dicomweb.maxLimit);
    const keys = new Set<string>();
    const scopes: InstanceScope[] = [];
    for (let offset = 0; ; offset += pageSize) {
      const page = await this.deps.index.search({ ...p.query, limit: pageSize, offset }, { allowedStudies });
      for (const m of page.matches) {
        keys.add(PatientAnswers.keyOf(m));
        const uid = m["0020000D"]?.Value?.[0];
        if (typeof uid === "string") scopes.push({ studyInstanceUID: uid, allowedStudies });
      }
      if (page.matches.length < pageSize) break;
    }
    if (keys.size > 1) {
      throw new IdentifierError(`PatientID ${p.patientID.slice(0, 16)} names ${keys.size} patients (other issuer or name): retrieve by study`);
    }
    return scopes;
  }

  private async retrieve(a: Association, session: Session, msg: IncomingMessage, kind: "move" | "get"): Promise<void> {
    const c = msg.command;
    const sopClass = a.contexts.get(msg.contextId)!.abstractSyntax;
    const model = QUERY_RETRIEVE.get(sopClass)!.model;
    const rspField = kind === "move" ? CommandField.CMoveRSP : CommandField.CGetRSP;
    const respond = (status: number, ops?: SubOperations, errorComment?: string) =>
      a.send(msg.contextId, {
        commandField: rspField,
        messageIdBeingRespondedTo: c.messageId,
        affectedSOPClassUID: sopClass,
        status,
        errorComment: errorComment?.slice(0, 64),
        ...(ops ? (status === Status.Pending ? ops.counts() : { ...ops.counts(), remaining: undefined }) : {}),
        hasDataset: false,
      });
    const action = `dimse.${kind}`;
    let instances: InstanceLocation[] = [];
    let studyUid: string | null = null;
    try {
      const identifier = await this.identifier(a, msg);
      const allowedStudies = this.allowedStudies(session.peer);
      const plan = planRetrieve(identifier, allowedStudies, model, { defaultLimit: this.deps.config.dicomweb.maxLimit, maxLimit: this.deps.config.dicomweb.maxLimit });
      const scopes = "scopes" in plan ? plan.scopes : await this.patientStudies(plan.patient, allowedStudies);
      studyUid = scopes[0]?.studyInstanceUID ?? null;
      for (const s of scopes) instances.push(...(await this.deps.index.listInstances(s)));
    } catch (err) {
      if (!(err instanceof IdentifierError)) throw err;
      this.audit({ action, outcome: "failure", detail: err.message }, a);
      await respond(Status.IdentifierDoesNotMatchSOPClass, undefined, err.message);
      return;
    }
    // the same instance named twice (overlapping UID lists) is sent once
    instances = [...new Map(instances.map((i) => [i.sopInstanceUID, i])).values()];
    if (!instances.length) {
      this.audit({ action, outcome: "failure", studyInstanceUID: studyUid, detail: "no stored instance matches (or the study is not shared with this peer)" }, a);
      await respond(Status.UnableToProcess, undefined, "no stored instance matches, or not shared with this AE");
      return;
    }

    let target: Association = a;
    let destination = "";
    let commitFrom: DimsePeerConfig | null = null;
    const delivered: InstanceLocation[] = [];
    if (kind === "move") {
      destination = c.moveDestination ?? "";
      const dest = this.cfg.peers.find((p) => p.aeTitle === destination && p.port > 0);
      if (dest?.storageCommitment) commitFrom = dest;
      if (!dest) {
        this.audit({ action, outcome: "failure", studyInstanceUID: studyUid, detail: `move destination "${destination}" is not a configured peer with a port` }, a);
        await respond(Status.MoveDestinationUnknown, undefined, `move destination ${destination} unknown`);
        return;
      }
      try {
        target = await Association.connect(
          { host: dest.host, port: dest.port, calledAE: dest.aeTitle, callingAE: this.cfg.aeTitle, ...(dest.tls ? { tls: peerTlsOptions(this.deps.config.tls) } : {}) },
          storageContexts(instances),
          { maxPduLength: this.cfg.maxPduLength, maxInMemoryDataset: this.cfg.maxIdentifierBytes, idleTimeoutMs: this.cfg.idleTimeoutSeconds * 1000, connectTimeoutMs: this.cfg.connectTimeoutSeconds * 1000, log: this.deps.log },
        );
      } catch (err) {
        this.audit({ action, outcome: "failure", studyInstanceUID: studyUid, detail: `cannot associate with ${destination}: ${(err as Error).message}` }, a);
        await respond(Status.OutOfResourcesSubOperations, undefined, `cannot reach ${destination}`);
        return;
      }
    }

    const ops = new SubOperations(instances.length);
    let cancelled = false;
    try {
      for (const loc of instances) {
        if (session.cancelled.has(c.messageId ?? -1)) {
          cancelled = true;
          break;
        }
        if (a.closed) break;
        let r;
        try {
          r = await storeInstance(target, this.deps.store, loc, kind === "move" ? { aeTitle: a.callingAE, messageId: c.messageId ?? 0 } : undefined, (l) => this.pixelModule(l));
        } catch (err) {
          if (err instanceof AssociationError && target !== a && target.closed) {
            r = { status: Status.OutOfResourcesSubOperations, errorComment: err.message };
          } else if (err instanceof AssociationError) {
            throw err;
          } else {
            this.deps.log.error({ err, sopInstanceUID: loc.sopInstanceUID }, "reading a stored instance for a sub-operation failed");
            r = { status: Status.ProcessingFailure, errorComment: (err as Error).message };
          }
        }
        ops.add(loc.sopInstanceUID, r);
        // delivered to the AE that receives it: the destination of a C-MOVE, the caller of a C-GET
        if (r.status === 0) {
          this.deps.retention?.noteDelivered([loc], `ae:${kind === "move" ? destination : a.callingAE}`, kind === "move" ? "c-move" : "c-get");
          delivered.push(loc);
        }
        if (r.status !== 0) this.deps.log.warn({ kind, sopInstanceUID: loc.sopInstanceUID, status: r.status.toString(16), comment: r.errorComment }, "sub-operation not successful");
        if (ops.remaining > 0) await respond(Status.Pending, ops);
      }
    } finally {
      if (target !== a) await target.release().catch(() => target.abort("release failed"));
    }
    session.cancelled.delete(c.messageId ?? -1);
    if (commitFrom && delivered.length) {
      // ask the destination to confirm it keeps what it received; its report (later) counts as delivery
      void this.commitments.request(commitFrom, delivered).catch((err: unknown) => this.deps.log.warn({ peer: commitFrom!.aeTitle, err: (err as Error).message }, "storage commitment not requested"));
    }
    const status = cancelled ? Status.Cancel : ops.finalStatus();
    this.audit({
      action,
      outcome: ops.failed === 0 && !cancelled ? "success" : "failure",
      studyInstanceUID: studyUid,
      detail: `${kind === "move" ? `to ${destination}; ` : ""}${ops.completed} completed, ${ops.warning} warning, ${ops.failed} failed of ${instances.length}${cancelled ? "; cancelled" : ""}`,
    }, a);
    if (!a.closed) await respond(status, ops, ops.failed ? `${ops.failed} sub-operation(s) failed` : undefined);
  }
}

/** C-ECHO, C-FIND ... for the metrics' command label (a fixed set: unknown fields are "other"). */
function commandName(field: number): string {
  switch (field) {
    case CommandField.CEchoRQ:
      return "C-ECHO";
    case CommandField.CFindRQ:
      return "C-FIND";
    case CommandField.CMoveRQ:
      return "C-MOVE";
    case CommandField.CGetRQ:
      return "C-GET";
    case CommandField.CStoreRQ:
      return "C-STORE";
    default:
      return "other";
  }
}

/** PS3.7 C.1: 0x0000 success, 0x0001 and 0xBxxx warnings, anything else a failure. */
export function dimseOutcome(status: number): "success" | "warning" | "failure" {
  if (status === 0) return "success";
  if (status === 0x0001 || (status & 0xf000) === 0xb000) return "warning";
  return "failure";
}
