/**
 * Transfers: manifests (what the sender will send, what the relay already has), finished tus uploads turned into
 * ingested instances (a single file or each entry of a bundle), completion, release and signed receipts.
 *
 * Visibility: every instance ingested by an upload is pending (invisible to readers) until the end:
 *  - with a transfer (tus metadata transferId): until every manifest instance is there, or an admin releases it;
 *  - without one: until the whole upload is read, so a bundle refused midway (bomb, corrupt archive) leaves
 *    nothing of itself visible; its newly stored instances are removed again.
 */
import { deleteBlobIfUnreferenced } from "../storage/blobLocks.ts";
import crypto from "node:crypto";
import fsp from "node:fs/promises";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import { ERRORS, Upload, type Locker } from "@tus/server";
import type { RelayConfig } from "../config.ts";
import type { Index } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import type { IngestResult, Ingestor, SpooledInstance } from "../ingest/types.ts";
import { FailureReason, InstanceRejectedError, type FailureReasonCode } from "../dicom/failureReasons.ts";
import { chunksSource, fileSource, readPart10 } from "../dicom/part10.ts";
import { BundleError, readBundleEntries } from "./bundle.ts";
import { initialItems, parseManifest, progressOf, type HeldInstance, type TransferProgress } from "./manifest.ts";
import { RECEIPT_KEY_PATH, type ReceiptInstance, type ReceiptSigner, type SignedReceipt } from "./receipts.ts";
import type { ItemState, TransferItem, TransferListQuery, TransferRecord, TransferStore, UploadEntryResult, UploadResult, UploadResultStore } from "./transferStore.ts";
import { tusError, type RelayUploadStore, type TusHooks } from "./tusServer.ts";
import { StorageUnavailableError } from "../storage/blobStore.ts";
import { ownedBy, type Sender } from "../access/sender.ts";
import { auditContext, type AuditEntry, type AuditTrail } from "../access/audit.ts";
import { UPLOAD_OWNER_KEY } from "./tusServer.ts";
import { CONCAT_KEY, ConcatError, FINAL_KEY, OWNER_KEY, PARTS_KEY, assertPartialBelongsToFinal, finalUploadId, isFinal, isPartial, partsOf } from "./concat.ts";

export interface TransferServiceDeps {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  ingest: Ingestor;
  transfers: TransferStore;
  signer: ReceiptSigner;
  /**
   * Called once a transfer is complete, before its receipt is written: after a crash between the two, the
   * receipt is issued again at start and the hook runs again, so hooks must be idempotent (forwarding is).
   */
  onComplete?: (transferId: string, items: TransferItem[]) => Promise<void>;
  /** a manifest named a retention policy for its studies */
  onRetention?: (studyInstanceUID: string, policy: { afterDeliveryDays: number | null; afterArrivalDays: number | null }) => Promise<void>;
  /** the audit log: one row per ingested upload (bundle) with its counts */
  audit?: Pick<AuditTrail, "record">;
}

/** who the audit row names: the request behind the ingest (its PATCH), else the relay itself (recovery at start) */
function auditFields(): Pick<AuditEntry, "actor" | "certSubject" | "method" | "route" | "remoteAddr"> {
  const ctx = auditContext.getStore();
  return { actor: ctx?.actor ?? "system", certSubject: ctx?.certSubject ?? null, method: ctx?.method ?? null, route: ctx?.route ?? null, remoteAddr: ctx?.remoteAddr ?? null };
}

export interface TransferView extends TransferProgress {
  id: string;
  label: string | null;
  state: TransferRecord["state"];
  createdAt: string;
  completedAt: string | null;
  releasedAt: string | null;
  cancelledAt: string | null;
  /** the token id that created it (null: before owners were recorded, or auth disabled) */
  createdBy: string | null;
  /** the studies its manifest names (when the sender gave them) */
  studies: string[];
  /** put this in every tus upload's metadata of this transfer */
  uploadMetadata: { transferId: string };
  instances?: TransferItem[];
  /** SOPInstanceUIDs still to send (missing or failed) */
  needed?: string[];
  /** SOPInstanceUIDs the relay already had with identical bytes (nothing to send) */
  alreadyHeld?: string[];
  /** where the signed receipt is, once issued (kept out of this view: it lists every instance) */
  receiptUrl: string | null;
}

/** A finished upload's result with its transfer's state, and the receipt once the transfer is complete. */
export interface UploadAnswer extends UploadResult {
  transfer?: TransferProgress & { id: string; state: TransferRecord["state"] };
  /** the compact JWS alone (its payload is inside): GET receiptUrl gives it with the payload decoded beside it */
  receipt?: Pick<SignedReceipt, "jws"> & { keyUrl: string };
  /** where the receipt is, once issued */
  receiptUrl?: string;
}

/**
 * Transfers up to this many instances have their receipt in the answer of the upload that completed them whatever the
 * client; larger ones only when the client takes gzip (a receipt is ~470 bytes of JWS per instance, a sixth of that
 * gzipped: 6,120 instances sent whole were 5 MB, 20 s on one 2 Mbit/s flow at the end of a push), else the answer
 * says where it is (receiptUrl, gzipped for whoever asks with Accept-Encoding: gzip)
 */
export const RECEIPT_INLINE_INSTANCES = 200;

/** where a complete transfer's receipt is read (routes.ts) */
const receiptUrlOf = (transferId: string) => `/api/transfers/${transferId}/receipt`;

export class TransferNotFoundError extends Error {
  constructor(id: string) {
    super(`no transfer with id ${id}`);
    this.name = "TransferNotFoundError";
  }
}

/** The transfer is in a state that does not allow the request (release a cancelled one, cancel a complete one). */
export class TransferStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TransferStateError";
  }
}

/** Storage went away, possibly seen through a bundle reader that wrapped the read error (e.g. "gzip data cut short"). */
function isStorageOutage(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; e && depth < 5; depth++, e = (e as { cause?: unknown }).cause) {
    if (e instanceof StorageUnavailableError) return true;
  }
  return false;
}

/** A running ingest re-saves its result this often ... */
const RESULT_HEARTBEAT_MS = 20_000;
/** ... so a "processing" result older than this has no one working on it (its node stopped). */
const RESULT_STALE_MS = 120_000;
/** After a storage failure midway, this node tries the same upload again this many times, this far apart. */
const INGEST_RETRIES = 20;
const INGEST_RETRY_MS = 5_000;

/** Entries of a result written to the store per batch (and at every progress save): each entry is written once. */
const ENTRY_BATCH = 500;

/**
 * A result's entries on their way to the store: appended in batches, never held whole (a bundle may have
 * 100,000 entries; rewriting the growing list cost O(entries^2) bytes and its memory grew with it).
 */
class EntryLog {
  private pending: UploadEntryResult[] = [];
  /** entries already in the store (numbered 0 .. written-1) */
  written = 0;
  constructor(private readonly store: UploadResultStore, private readonly uploadId: string) {}

  /** true when a batch is due */
  add(entry: UploadEntryResult): boolean {
    this.pending.push(entry);
    return this.pending.length >= ENTRY_BATCH;
  }

  async flush(): Promise<void> {
    if (!this.pending.length) return;
    const batch = this.pending;
    await this.store.putUploadEntries(this.uploadId, this.written, batch);
    this.pending = [];
    this.written += batch.length;
  }
}

const hex = (code: number) => `0x${code.toString(16).toUpperCase().padStart(4, "0")}`;

export class TransferService {
  /** uploads being ingested now: a repeated finish waits for the same work instead of doing it twice */
  private readonly inFlight = new Map<string, Promise<UploadResult>>();
  /** where a transfer stood right after an upload of it was ingested (its answer says so; a few hundred at most) */
  private readonly progressAfter = new Map<string, TransferProgress>();
  private cleanupTimer: NodeJS.Timeout | null = null;
  private uploads: RelayUploadStore | null = null;
  /** where upload results are kept: the transfer store, or the S3 upload store (shared by nodes) */
  private results: UploadResultStore;
  private closed = false;
  /** the tus server's locker: a final upload is made while its partials are held */
  private locker: Locker | null = null;
  constructor(private readonly deps: TransferServiceDeps) {
    this.results = deps.transfers;
  }

  get signer(): ReceiptSigner {
    return this.deps.signer;
  }

  /** Finishes what a stop interrupted: receipts of completed transfers, ingest of complete uploads. */
  /** Transfers by state, for the metrics. */
  countByState(): Promise<Record<string, number>> {
    return this.deps.transfers.countTransfersByState();
  }

  async start(tus: RelayUploadStore, results: UploadResultStore = this.deps.transfers, locker: Locker | null = null): Promise<void> {
    this.uploads = tus;
    this.locker = locker;
    this.results = results;
    for (const id of await this.deps.transfers.listCompleteWithoutReceipt()) await this.issueReceipt(id);
    await this.recoverUploads("at start");
    const every = this.deps.config.transfers.cleanupIntervalSeconds * 1000;
    const sweep = async () => {
      try {
        const removed = await tus.deleteExpired();
        const before = new Date(Date.now() - this.deps.config.transfers.expirationSeconds * 1000).toISOString();
        const forgotten = await this.results.deleteUploadResultsBefore(before);
        if (removed || forgotten) this.deps.log.info({ removed, forgotten }, "expired uploads cleaned up");
        // complete uploads nobody ingests (a node died mid-ingest, an ingest gave up while storage was down)
        await this.recoverUploads("in the periodic sweep");
      } catch (err) {
        this.deps.log.warn({ err }, "cleaning up expired uploads failed; will retry");
      }
    };
    this.cleanupTimer = setInterval(() => void sweep(), every);
    this.cleanupTimer.unref();
  }

  /** Ingests complete uploads without a final result that no one (here or, on S3, on another node) is working on. */
  private async recoverUploads(when: string): Promise<void> {
    for (const upload of await this.uploads!.listComplete()) {
      if (this.closed) return;
      if (isPartial(upload)) continue;
      if (this.inFlight.has(upload.id)) continue;
      const done = await this.results.getUploadResult(upload.id, { entries: false });
      if (done?.state === "done" || (done && (await this.ingestedElsewhere(upload.id)))) continue;
      this.deps.log.info({ uploadId: upload.id }, `ingesting a complete upload nobody is ingesting (${when})`);
      void this.processUpload(upload).catch((err) => this.deps.log.error({ err, uploadId: upload.id }, "recovered upload failed"));
    }
  }

  /**
   * Is another node ingesting this upload now? Only results kept in S3 can say (their heartbeat keeps them fresh);
   * with results in the local transfer store there is one node, and inFlight already knows.
   */
  private async ingestedElsewhere(id: string): Promise<boolean> {
    if (this.inFlight.has(id) || !this.results.resultAgeMs) return false;
    const age = await this.results.resultAgeMs(id);
    return age !== null && age < RESULT_STALE_MS;
  }

  /** Stops the cleanup timer and waits (bounded) for running ingests so their results are recorded. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.cleanupTimer) clearInterval(this.cleanupTimer);
    const running = [...this.inFlight.values()].map((p) => p.catch(() => undefined));
    if (running.length) {
      await Promise.race([Promise.all(running), new Promise((r) => setTimeout(r, 10_000).unref())]);
    }
    await this.deps.transfers.close();
  }

  // ---------------------------------------------------------------- transfers

  /** createdBy: the token id (or cert:<subject>) that creates it; only it (and admins) will see it */
  async createTransfer(body: unknown, createdBy: string | null = null): Promise<TransferView> {
    const manifest = parseManifest(body, this.deps.config.transfers.maxManifestInstances);
    const held = new Map<string, HeldInstance>();
    for (const m of manifest.instances) {
      // pending instances count: they are stored and verified, only not yet visible
      const have = await this.deps.index.getInstance(m.sopInstanceUID, { includePending: true });
      if (have) held.set(m.sopInstanceUID, { sha256: have.sha256 });
    }
    const id = crypto.randomUUID();
    const now = new Date().toISOString();
    await this.deps.transfers.createTransfer({ id, label: manifest.label ?? null, createdAt: now, createdBy }, initialItems(manifest, held, now));
    if (manifest.retention && this.deps.onRetention) {
      const policy = { afterDeliveryDays: manifest.retention.afterDeliveryDays ?? null, afterArrivalDays: manifest.retention.afterArrivalDays ?? null };
      // the manifest names each instance's study when the sender knows it (dicom-relay push does)
      for (const study of new Set(manifest.instances.map((i) => i.studyInstanceUID).filter((u): u is string => !!u))) await this.deps.onRetention(study, policy);
    }
    this.deps.log.info({ transferId: id, instances: manifest.instances.length, present: held.size }, "transfer created");
    await this.checkComplete(id);
    return (await this.view(id, { instances: "all" }))!;
  }

  async transferRecord(id: string): Promise<TransferRecord | null> {
    return this.deps.transfers.getTransfer(id);
  }

  async view(id: string, opts: { instances?: "all" | ItemState | "none" } = {}): Promise<TransferView | null> {
    const t = await this.deps.transfers.getTransfer(id);
    if (!t) return null;
    const progress = progressOf(await this.deps.transfers.countItems(id));
    const out: TransferView = {
      id: t.id,
      label: t.label,
      state: t.state,
      ...progress,
      createdAt: t.createdAt,
      completedAt: t.completedAt,
      releasedAt: t.releasedAt,
      cancelledAt: t.cancelledAt,
      createdBy: t.createdBy,
      studies: [],
      uploadMetadata: { transferId: t.id },
      receiptUrl: t.receipt ? receiptUrlOf(t.id) : null,
    };
    // a query, not the item list: a manifest may hold 100,000 instances and list() shows many transfers
    out.studies = await this.deps.transfers.studiesOf(id, 20);
    if ((opts.instances ?? "all") !== "none") {
      const items = await this.deps.transfers.listItems(id);
      out.needed = items.filter((i) => i.state === "missing" || i.state === "failed").map((i) => i.sopInstanceUID);
      out.alreadyHeld = items.filter((i) => i.state === "present").map((i) => i.sopInstanceUID);
      out.instances = opts.instances === "all" || !opts.instances ? items : items.filter((i) => i.state === opts.instances);
    }
    return out;
  }

  /** The signed receipt, null while the transfer is not complete; null overall when there is no such transfer. */
  async receipt(id: string): Promise<{ transfer: TransferView; receipt: SignedReceipt | null } | null> {
    const t = await this.deps.transfers.getTransfer(id);
    if (!t) return null;
    return { transfer: (await this.view(id, { instances: "none" }))!, receipt: t.receipt };
  }

  /** Transfers newest first, with their counts (no instance lists): all of them, or those one actor created. */
  async list(query: TransferListQuery): Promise<TransferView[]> {
    const records = await this.deps.transfers.listTransfers(query);
    const out: TransferView[] = [];
    for (const r of records) {
      const v = await this.view(r.id, { instances: "none" });
      if (v) out.push(v);
    }
    return out;
  }

  /**
   * Give a transfer up (its sender or an admin): later uploads to it are refused, and what it stored that is still
   * pending under it (never visible) is removed. A complete transfer cannot be cancelled (delete the study instead).
   */
  async cancel(id: string): Promise<{ transfer: TransferView; removed: number }> {
    const t = await this.deps.transfers.getTransfer(id);
    if (!t) throw new TransferNotFoundError(id);
    if (t.state === "complete") throw new TransferStateError(`transfer ${id} is complete: its study is visible and its receipt issued; delete the study instead if it must go`);
    let removed = 0;
    if (await this.deps.transfers.markCancelled(id, new Date().toISOString())) {
      if (t.state === "open") {
        for (const item of await this.deps.transfers.listItems(id)) {
          if (item.state !== "received") continue;
          // only what is still pending under this transfer: never an instance another transfer or sender made visible
          const own = await this.deps.index.getInstance(item.sopInstanceUID, { pendingOf: id });
          if (!own) continue;
          const gone = await this.deps.index.deleteInstances({ studyInstanceUID: own.studyInstanceUID, seriesInstanceUID: own.seriesInstanceUID, sopInstanceUID: own.sopInstanceUID, includePending: true });
          for (const loc of gone) await deleteBlobIfUnreferenced(this.deps.index, this.deps.store, loc.blobKey);
          removed += gone.length;
        }
      }
      this.deps.log.warn({ transferId: id, removed }, "transfer cancelled");
    }
    return { transfer: (await this.view(id, { instances: "none" }))!, removed };
  }

  /** Admin: make a partial transfer visible on purpose. Instances that arrive later are visible at once. */
  async release(id: string): Promise<{ transfer: TransferView; released: number }> {
    const t = await this.deps.transfers.getTransfer(id);
    if (!t) throw new TransferNotFoundError(id);
    if (t.state === "cancelled") throw new TransferStateError(`transfer ${id} was cancelled; what it stored was removed, so there is nothing to release (send the study again)`);
    let released = 0;
    if (t.state === "open") {
      await this.deps.transfers.markReleased(id, new Date().toISOString());
      released = await this.deps.index.releaseTransfer(id);
      this.deps.log.warn({ transferId: id, released }, "partial transfer released by an admin");
    }
    return { transfer: (await this.view(id, { instances: "none" }))!, released };
  }

  private async checkComplete(id: string): Promise<TransferProgress> {
    const progress = progressOf(await this.deps.transfers.countItems(id));
    if (!progress.complete) return progress;
    // only one caller wins the state change, so the receipt is issued once
    if (!(await this.deps.transfers.markComplete(id, new Date().toISOString()))) return progress;
    await this.issueReceipt(id);
    return progress;
  }

  private async issueReceipt(id: string): Promise<void> {
    const t = (await this.deps.transfers.getTransfer(id))!;
    const released = await this.deps.index.releaseTransfer(id);
    const items = await this.deps.transfers.listItems(id);
    if (this.deps.onComplete) {
      await this.deps.onComplete(id, items).catch((err) => this.deps.log.error({ err, transferId: id }, "a transfer completion hook failed"));
    }
    const receipt = this.deps.signer.sign({
      transferId: id,
      issuedAt: t.completedAt ?? new Date().toISOString(),
      issuer: this.deps.config.server.publicUrl || null,
      instances: await this.verifiedInstances(id, items),
    });
    await this.deps.transfers.setReceipt(id, receipt);
    this.deps.log.info({ transferId: id, instances: items.length, released }, "transfer complete; receipt issued");
  }

  /**
   * What a receipt may attest: UIDs, size and SHA-256 as the index holds them for the stored instance (read and
   * hashed by the relay itself), never the manifest's claims. An instance not held with the declared bytes (gone
   * since, or other bytes) is left out and logged.
   */
  private async verifiedInstances(id: string, items: TransferItem[]): Promise<ReceiptInstance[]> {
    const out: ReceiptInstance[] = [];
    for (const i of items) {
      const held = await this.deps.index.getInstance(i.sopInstanceUID, { includePending: true });
      if (!held || held.sha256 !== i.sha256) {
        this.deps.log.warn({ transferId: id, sopInstanceUID: i.sopInstanceUID }, "an instance of a complete transfer is not held with its declared bytes; left out of the receipt");
        continue;
      }
      out.push({
        sopInstanceUID: held.sopInstanceUID,
        studyInstanceUID: held.studyInstanceUID,
        seriesInstanceUID: held.seriesInstanceUID,
        sha256: held.sha256,
        size: held.size,
        state: i.state === "present" ? "already-held" : "received",
      });
    }
    return out;
  }

  // ---------------------------------------------------------------- tus hooks

  tusHooks(): TusHooks {
    return {
      validateCreate: async (metadata, sender) => {
        if (this.closed) throw tusError(503, "the relay is shutting down; retry in a moment");
        const transferId = metadata.transferId;
        if (transferId === undefined || transferId === null || transferId === "") return;
        const t = await this.deps.transfers.getTransfer(transferId);
        // another sender's transfer is answered like one that does not exist
        if (!t || !ownedBy(sender, t.createdBy)) throw tusError(404, `no transfer with id ${transferId}; create it first with POST /api/transfers`);
        if (t.state === "complete") throw tusError(409, `transfer ${transferId} is already complete; nothing more is needed`);
        if (t.state === "cancelled") throw tusError(409, `transfer ${transferId} was cancelled; start a new transfer to send these images`);
      },
      onFinish: async (upload, client) => {
        const resultUrl = `${this.deps.config.transfers.tusPath}/${upload.id}`;
        const result = await this.finishWithin(this.processUpload(upload));
        return { body: result ? JSON.stringify(await this.answerFor(result, client)) : null, resultUrl };
      },
      isProcessed: async (id) => (await this.results.getUploadResult(id, { entries: false }))?.state === "done",
      isProcessing: (id) => this.inFlight.has(id),
      completedLate: (upload) => {
        if (isPartial(upload)) return;
        void this.processUpload(upload).catch((err) => this.deps.log.error({ err, uploadId: upload.id }, "ingest of a late-completed upload failed"));
      },
    };
  }

  async uploadResult(id: string): Promise<UploadResult | null> {
    return this.results.getUploadResult(id);
  }

  /**
   * A finished upload's result as its sender is answered: with where its transfer stands, and once that is complete
   * its signed receipt (what the sender would ask next: the last upload's answer saves it a round trip).
   */
  async answerFor(result: UploadResult, client: { acceptsGzip: boolean }): Promise<UploadAnswer> {
    if (result.state !== "done" || !result.transferId) return result;
    const t = await this.deps.transfers.getTransfer(result.transferId);
    if (!t) return result;
    const progress = this.progressAfter.get(result.uploadId) ?? progressOf(await this.deps.transfers.countItems(t.id));
    this.progressAfter.delete(result.uploadId);
    const inline = t.receipt && (client.acceptsGzip || t.receipt.payload.instances.length <= RECEIPT_INLINE_INSTANCES);
    return {
      ...result,
      transfer: { id: t.id, state: t.state, ...progress },
      ...(t.receipt ? { receiptUrl: receiptUrlOf(t.id) } : {}),
      ...(inline ? { receipt: { jws: t.receipt!.jws, keyUrl: RECEIPT_KEY_PATH } } : {}),
    };
  }

  /** The result if the work ends within transfers.finishWaitSeconds, else null (the client reads it later). */
  private async finishWithin(work: Promise<UploadResult>): Promise<UploadResult | null> {
    const waitMs = this.deps.config.transfers.finishWaitSeconds * 1000;
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      work,
      new Promise<null>((r) => {
        timer = setTimeout(() => r(null), waitMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  // ---------------------------------------------------------------- tus concatenation (concat.ts)

  /**
   * POST with Upload-Concat: final;<partials>: checks the partials, records the final (its id follows from owner +
   * partials, so a retried POST finds the same final instead of making a second one) and ingests it like a finished
   * upload. Throws ConcatError (or a tusError from validateCreate) with the sentence for the sender.
   */
  async createFinalUpload(req: { partIds: string[]; metadata: Record<string, string | null>; sender: Sender; acceptsGzip: boolean }): Promise<{ id: string; result: UploadAnswer | null }> {
    const uploads = this.uploads;
    if (!uploads || !this.locker) throw new Error("the transfer service is not started");
    const { partIds, metadata, sender } = req;
    const owner = sender.owner;
    const transferId = metadata.transferId || null;
    const id = finalUploadId(owner, partIds);
    // partials in a fixed order, so two finals racing for the same partials cannot deadlock
    const held: Awaited<ReturnType<typeof this.lockUploads>> = await this.lockUploads([id, ...[...partIds].sort()]);
    try {
      const existing = await this.findUpload(id);
      if (existing) {
        if (!isFinal(existing) || partsOf(existing).join(" ") !== partIds.join(" ")) throw new ConcatError(409, `upload ${id} exists and is not this final upload`);
      } else {
        // the partials first: another sender's partials answer like unknown ones, whatever else is wrong
        const parts: Upload[] = [];
        for (const pid of partIds) {
          const p = await this.findUpload(pid);
          assertPartialBelongsToFinal(pid, p, { id, owner, transferId });
          parts.push(p!);
        }
        await this.tusHooks().validateCreate(metadata, sender);
        const size = parts.reduce((a, p) => a + (p.size ?? 0), 0);
        const max = this.deps.config.transfers.maxUploadBytes;
        if (size > max) throw new ConcatError(413, `the partial uploads add up to ${size} bytes, more than the relay accepts in one upload (${max} bytes, transfers.maxUploadBytes); split the study into several bundles`);
        // claimed first, the final second: a crash between leaves claims naming a final that does not exist,
        // which the same POST (same id) takes over and no other final can steal
        for (const p of parts) if (p.metadata?.[FINAL_KEY] !== id) await uploads.updateMetadata(p.id, { ...p.metadata, [FINAL_KEY]: id });
        await uploads.createFinal(
          new Upload({ id, size, offset: size, metadata: { ...metadata, [CONCAT_KEY]: "final", [OWNER_KEY]: owner, [PARTS_KEY]: partIds.join(" ") }, creation_date: new Date().toISOString() }),
        );
        this.deps.log.info({ uploadId: id, partials: partIds.length, size, transferId }, "final upload created from partial uploads");
      }
    } finally {
      await Promise.all(held.map((l) => l.unlock().catch(() => undefined)));
    }
    const final = await uploads.getUpload(id);
    const result = await this.finishWithin(this.processUpload(final));
    return { id, result: result && (await this.answerFor(result, { acceptsGzip: req.acceptsGzip })) };
  }

  private async findUpload(id: string): Promise<Upload | null> {
    try {
      return await this.uploads!.getUpload(id);
    } catch (err) {
      if (err === ERRORS.FILE_NOT_FOUND || err === ERRORS.FILE_NO_LONGER_EXISTS) return null;
      throw err;
    }
  }

  private async lockUploads(ids: string[]): Promise<{ unlock(): Promise<void> }[]> {
    const held: { unlock(): Promise<void> }[] = [];
    try {
      for (const id of ids) {
        const lock = this.locker!.newLock(id);
        // a holder of a complete partial has nothing left to write: it is asked to let go and does
        await lock.lock(new AbortController().signal, () => undefined);
        held.push(lock);
      }
    } catch (err) {
      await Promise.all(held.map((l) => l.unlock().catch(() => undefined)));
      throw err;
    }
    return held;
  }

  // ---------------------------------------------------------------- uploads

  /**
   * Retention deleted a study: the unfinished uploads of the transfers naming it go too (their bytes are that
   * study's images; left alone they would sit in upload staging until expiry). Returns how many were removed.
   */
  async removeUnfinishedUploadsOf(studyInstanceUID: string): Promise<number> {
    if (!this.uploads) return 0;
    const transfers = new Set(await this.deps.transfers.transfersNaming(studyInstanceUID, 10_000));
    if (!transfers.size) return 0;
    let removed = 0;
    for (const upload of await this.uploads.listUnfinished()) {
      const transferId = upload.metadata?.transferId;
      if (!transferId || !transfers.has(transferId)) continue;
      try {
        await this.uploads.remove(upload.id);
        removed++;
      } catch (err) {
        this.deps.log.warn({ err, uploadId: upload.id, transferId }, "retention: an unfinished upload of a deleted study was not removed (it expires)");
      }
    }
    return removed;
  }

  /**
   * Ingest a complete upload once; concurrent or repeated calls share the work; a done upload returns its result,
   * and so does one another node is ingesting now (its result is "processing"). When storage fails midway, the
   * caller gets the error and this node tries again by itself a few times; then the periodic sweep takes over.
   */
  processUpload(upload: Upload, attempt = 1): Promise<UploadResult> {
    // a partial upload is only ever ingested as part of its final upload
    if (isPartial(upload)) return Promise.reject(new Error(`upload ${upload.id} is a partial upload; it is ingested with its final upload`));
    const running = this.inFlight.get(upload.id);
    if (running) return running;
    const work = (async () => {
      const done = await this.results.getUploadResult(upload.id);
      if (done?.state === "done") return done;
      if (done && attempt === 1 && (await this.ingestedElsewhere(upload.id))) return done;
      return this.ingestUpload(upload);
    })();
    work.catch((err: unknown) => {
      if (!(err instanceof StorageUnavailableError) || this.closed || attempt >= INGEST_RETRIES) return;
      setTimeout(() => {
        if (this.closed) return;
        this.processUpload(upload, attempt + 1).catch(() => undefined);
      }, INGEST_RETRY_MS).unref();
    });
    const tracked = work.finally(() => this.inFlight.delete(upload.id));
    tracked.catch(() => undefined);
    this.inFlight.set(upload.id, tracked);
    return tracked;
  }

  private async ingestUpload(upload: Upload): Promise<UploadResult> {
    const results = this.results;
    if (!this.uploads) throw new Error("the transfer service is not started");
    const meta = upload.metadata ?? {};
    const transferId = meta.transferId || null;
    const result: UploadResult = {
      uploadId: upload.id,
      transferId,
      owner: meta[UPLOAD_OWNER_KEY] ?? null,
      state: "processing",
      kind: null,
      filename: meta.filename ?? meta.name ?? null,
      size: upload.size ?? upload.offset,
      finishedAt: null,
      counts: { entries: 0, stored: 0, alreadyStored: 0, failed: 0 },
      entries: [],
      error: null,
    };
    await results.saveUploadResult(result);
    // heartbeat: other nodes tell a running ingest from an abandoned one by the age of its result
    let beat: Promise<void> = Promise.resolve();
    const heartbeat = setInterval(() => {
      beat = results.saveUploadResult({ ...result, entries: [] }).catch(() => undefined);
    }, RESULT_HEARTBEAT_MS);
    heartbeat.unref();
    try {
      const done = await this.ingestUploadEntries(upload, result, new EntryLog(results, upload.id), heartbeat, () => beat);
      // the client's answer (the tus final response, GET {tusPath}/{id}) is put together from what was stored
      return (await results.getUploadResult(upload.id)) ?? done;
    } finally {
      clearInterval(heartbeat);
    }
  }

  private async ingestUploadEntries(upload: Upload, result: UploadResult, entryLog: EntryLog, heartbeat: NodeJS.Timeout, lastBeat: () => Promise<void>): Promise<UploadResult> {
    const { log, transfers } = this.deps;
    const results = this.results;
    const uploads = this.uploads!;
    const transferId = result.transferId;

    const transfer = transferId ? await transfers.getTransfer(transferId) : null;
    if (transferId && !transfer) {
      result.error = `transfer ${transferId} no longer exists; nothing was ingested`;
    } else if (transfer?.state === "cancelled") {
      result.error = `transfer ${transferId} was cancelled; nothing was ingested (start a new transfer to send these images)`;
    } else {
      // without a transfer, the upload is its own unit of visibility
      const pendingId = transfer ? (transfer.state === "open" ? transfer.id : undefined) : `upload:${upload.id}`;
      // a local file (fs) or a stream from S3; zip bundles need random access and are spooled by the reader
      const entries = readBundleEntries(await uploads.openUpload(upload), {
        maxEntries: this.deps.config.transfers.bundle.maxEntries,
        maxTotalBytes: this.deps.config.transfers.bundle.maxTotalBytes,
        maxCompressionRatio: this.deps.config.transfers.bundle.maxCompressionRatio,
        maxEntryBytes: this.deps.config.ingest.maxInstanceBytes,
        name: result.filename ?? undefined,
      });
      let savedAt = Date.now();
      try {
        for await (const entry of entries) {
          const name = entry.name || result.filename || upload.id;
          const source = `tus:${upload.id}:${name}`;
          const r = transfer
            ? await this.ingestForTransfer(transfer.id, entry.body, { pendingId, source })
            : await this.deps.ingest.ingestStream(entry.body, { transferId: pendingId, source, bundleEntry: true });
          if (r.status === "failed" && r.retryable && r.reason === FailureReason.OutOfResources) {
            // the blob store is down: the entry is fine, the moment is not
            throw new StorageUnavailableError(r.message);
          }
          if (this.addEntry(result, entryLog, name, r)) await entryLog.flush();
          const maxFailed = this.deps.config.transfers.bundle.maxFailedEntries;
          if (result.counts.failed > maxFailed) {
            // a bundle of junk costs a spool file, a parse and a result line per entry: stop as soon as it is clear
            throw new BundleError(`more than ${maxFailed} of its entries were refused (the last: ${r.status === "failed" ? r.message : "?"}); it was refused as a whole (transfers.bundle.maxFailedEntries)`);
          }
          // a big bundle takes minutes: let GET {tusPath}/{id} show progress (counts; the entries are appended apart)
          if (Date.now() - savedAt > 2000) {
            await entryLog.flush();
            await results.saveUploadResult(result);
            savedAt = Date.now();
          }
        }
      } catch (err) {
        if (isStorageOutage(err)) {
          // S3 (upload bytes or blob store) went away midway: not a verdict on the upload. What was stored stays
          // pending; the same upload is ingested again when it is finished again (a retried final PATCH) or at start.
          await entries.return?.(undefined).catch(() => undefined);
          log.warn({ err: (err as Error).message, uploadId: upload.id }, "ingest of a tus upload interrupted: storage unavailable");
          throw err instanceof StorageUnavailableError ? err : new StorageUnavailableError((err as Error).message, { cause: err });
        }
        if (err instanceof BundleError) {
          result.error = `the upload was refused as a whole: ${err.message}`;
        } else {
          log.error({ err, uploadId: upload.id }, "reading an upload failed");
          result.error = `the relay could not read the upload: ${(err as Error).message}`;
        }
      }
      result.kind = entries.kind;
      await entryLog.flush();
      if (!transfer) {
        if (result.error) await this.undoUpload(result, entryLog.written);
        else await this.deps.index.releaseTransfer(`upload:${upload.id}`);
      } else {
        // counted once: the upload's answer says the same (answerFor)
        this.progressAfter.set(upload.id, await this.checkComplete(transfer.id));
        if (this.progressAfter.size > 1024) this.progressAfter.delete(this.progressAfter.keys().next().value!);
        // released (or completed) while this upload was being ingested: what it stored must not stay pending
        const now = await transfers.getTransfer(transfer.id);
        if (pendingId && now && now.state !== "open") await this.deps.index.releaseTransfer(transfer.id);
      }
    }
    result.state = "done";
    result.finishedAt = new Date().toISOString();
    // no heartbeat copy ("processing") may land after the final one
    clearInterval(heartbeat);
    await lastBeat();
    await entryLog.flush();
    await results.saveUploadResult(result);
    // the bytes are ingested (or refused): give the space back now, keep the small info file/object for HEAD
    await uploads.removeData(upload.id);
    log.info({ uploadId: upload.id, transferId, ...result.counts, error: result.error }, "tus upload ingested");
    // one audit row for the upload as a whole, with its counts (entries refused or already held have no row of their own)
    this.deps.audit?.record({
      ...auditFields(),
      action: "tus.ingest",
      outcome: result.error || result.counts.failed ? "failure" : "success",
      detail: `upload ${upload.id}${transferId ? ` transfer ${transferId}` : ""} ${result.kind ?? "?"}: ${result.counts.entries} entries, ${result.counts.stored} stored, ${result.counts.alreadyStored} already stored, ${result.counts.failed} failed${result.error ? `; ${result.error}` : ""}`.slice(0, 2000),
    });
    return result;
  }

  /** Counts the entry and hands it to the log; true when the log has a batch to write. */
  private addEntry(result: UploadResult, entryLog: EntryLog, name: string, r: IngestResult): boolean {
    const e: UploadEntryResult =
      r.status === "failed"
          ? { name, status: "failed", sopInstanceUID: r.sopInstanceUID, studyInstanceUID: r.studyInstanceUID, seriesInstanceUID: r.seriesInstanceUID, sha256: r.sha256, size: r.size, reason: hex(r.reason), message: r.message }
          : r.keptOther
            ? // keep-first kept another sender's bytes: their hash and size are not this sender's to learn
              { name, status: r.status, sopInstanceUID: r.sopInstanceUID, studyInstanceUID: r.studyInstanceUID, seriesInstanceUID: r.seriesInstanceUID, message: "the relay keeps other bytes for this SOPInstanceUID (conflict policy keep-first); these were not stored" }
            : { name, status: r.status, sopInstanceUID: r.sopInstanceUID, studyInstanceUID: r.studyInstanceUID, seriesInstanceUID: r.seriesInstanceUID, sha256: r.sha256, size: r.size };
    result.counts.entries++;
    if (e.status === "failed") result.counts.failed++;
    else if (e.status === "already-stored") result.counts.alreadyStored++;
    else result.counts.stored++;
    return entryLog.add(e);
  }

  /** A bundle refused midway: what it newly stored goes again, so nothing partial of it is ever visible. */
  private async undoUpload(result: UploadResult, written: number): Promise<void> {
    // page through the stored entries (never all in memory) and rewrite the pages whose entries were undone
    for (let first = 0; first < written; first += ENTRY_BATCH) {
      const page = await this.results.listUploadEntries(result.uploadId, first, Math.min(ENTRY_BATCH, written - first));
      let changed = false;
      for (const [i, e] of page.entries()) {
        if ((e.status !== "stored" && e.status !== "replaced") || !e.sopInstanceUID || !e.studyInstanceUID) continue;
        try {
          const removed = await this.deps.index.deleteInstances({
            studyInstanceUID: e.studyInstanceUID,
            seriesInstanceUID: e.seriesInstanceUID,
            sopInstanceUID: e.sopInstanceUID,
            includePending: true,
          });
          for (const loc of removed) {
            await deleteBlobIfUnreferenced(this.deps.index, this.deps.store, loc.blobKey);
          }
        } catch (err) {
          this.deps.log.warn({ err, sopInstanceUID: e.sopInstanceUID }, "could not remove an instance of a refused bundle; it stays invisible");
        }
        page[i] = { ...e, status: "failed", reason: hex(FailureReason.ProcessingFailure), message: "not kept: the bundle it came in was refused as a whole (see error)" };
        changed = true;
        result.counts.stored--;
        result.counts.failed++;
      }
      if (changed) await this.results.putUploadEntries(result.uploadId, first, page);
    }
  }

  /**
   * One entry of an upload that belongs to a transfer: spooled and hashed first (by the ingest pipeline: in memory
   * when small, else a spool file; one pass over the bytes), so it can be matched to its manifest instance by hash;
   * a copy matching no hash is matched by the SOPInstanceUID in its header and refused by the ingest pipeline
   * (expectedSha256), which marks that instance failed with the reason.
   */
  private async ingestForTransfer(transferId: string, body: Readable, opts: { pendingId: string | undefined; source: string }): Promise<IngestResult> {
    const { transfers, ingest } = this.deps;
    const ingestOpts = { transferId: opts.pendingId, source: opts.source, bundleEntry: true as const };
    const spooled = await ingest.spool(body, ingestOpts);
    // refused while reading (larger than the relay accepts)
    if ("status" in spooled) return spooled;
    const { sha256, size } = spooled;
    let handedOn = false;
    try {
      const bySha = await transfers.findItemsBySha256(transferId, sha256);
      let result: IngestResult;
      if (bySha.length > 0) {
        handedOn = true;
        result = await ingest.ingestSpool(spooled, { ...ingestOpts, expectedSha256: sha256 });
        // bytes declared in the manifest but refused before their header was read (e.g. truncated on the sender's
        // disk): the item they were declared as is failed, with the reason, rather than left missing
        if (result.status === "failed" && !result.sopInstanceUID && bySha.length === 1) result = { ...result, sopInstanceUID: bySha[0]!.sopInstanceUID };
      } else {
        const header = await this.readSopInstanceUID(spooled);
        if ("failed" in header) return { status: "failed", reason: header.reason, message: header.message, sha256, size };
        const item = await transfers.getItem(transferId, header.sopInstanceUID);
        if (!item) {
          return {
            status: "failed",
            reason: FailureReason.ProcessingFailure,
            message: `SOPInstanceUID ${header.sopInstanceUID} is not in the manifest of transfer ${transferId}; it was not stored (send it in another transfer, or without one)`,
            sopInstanceUID: header.sopInstanceUID,
            sha256,
            size,
          };
        }
        // the pipeline refuses it: the bytes do not match the manifest hash
        handedOn = true;
        result = await ingest.ingestSpool(spooled, { ...ingestOpts, expectedSha256: item.sha256 });
        if (result.status === "failed") result = { ...result, sopInstanceUID: result.sopInstanceUID ?? header.sopInstanceUID };
      }
      await this.recordItem(transferId, result);
      return result;
    } finally {
      if (!handedOn) await ingest.discard(spooled);
    }
  }

  private async recordItem(transferId: string, r: IngestResult): Promise<void> {
    if (!r.sopInstanceUID) return;
    const item = await this.deps.transfers.getItem(transferId, r.sopInstanceUID);
    if (!item) return;
    if (r.status === "failed") {
      await this.deps.transfers.updateItem(transferId, r.sopInstanceUID, { state: "failed", reason: r.message, failureCode: r.reason });
    } else if (r.sha256 === item.sha256) {
      await this.deps.transfers.updateItem(transferId, r.sopInstanceUID, { state: "received" });
    } else {
      // conflict policy keep-first answered "already stored" with the other bytes it keeps
      await this.deps.transfers.updateItem(transferId, r.sopInstanceUID, {
        state: "failed",
        // never the stored hash: knowing it would let a manifest claim the instance as "already held"
        reason: "the relay keeps other bytes for this SOPInstanceUID than the manifest declares (conflict policy keep-first)",
        failureCode: FailureReason.DuplicateSOPInstance,
      });
    }
  }

  private async readSopInstanceUID(spooled: SpooledInstance): Promise<{ sopInstanceUID: string } | { failed: true; reason: FailureReasonCode; message: string }> {
    const handle = spooled.path === null ? null : await fsp.open(spooled.path, "r");
    try {
      const parsed = await readPart10(handle ? fileSource(handle, spooled.size) : chunksSource(spooled.chunks ?? []), {
        maxHeaderBytes: this.deps.config.ingest.maxHeaderBytes,
        bulkDataThreshold: this.deps.config.ingest.bulkDataThreshold,
        maxInflatedBytes: this.deps.config.ingest.maxInstanceBytes,
      });
      return { sopInstanceUID: parsed.sopInstanceUID };
    } catch (err) {
      if (err instanceof InstanceRejectedError) return { failed: true, reason: err.reason, message: err.message };
      return { failed: true, reason: FailureReason.CannotUnderstand, message: `the file could not be read as DICOM: ${(err as Error).message}` };
    } finally {
      await handle?.close();
    }
  }
}
