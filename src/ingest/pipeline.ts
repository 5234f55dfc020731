/**
 * The one ingest pipeline: spool -> parse -> validate -> hash -> de-duplicate -> store -> index.
 * Every way in (STOW-RS, tus upload, bundle entry, CLI, later DIMSE) ends here and gets one IngestResult.
 *
 * Order matters for crash safety: the blob is durably stored before its index row is written, so a
 * crash leaves at worst an orphan blob (fsck removes it), never an index row without its bytes.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { once } from "node:events";
import { Readable } from "node:stream";
import { finished } from "node:stream/promises";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import { isIndexUnavailable, type Index, type InstanceRecord } from "../catalog/index.ts";
import { instanceBlobKey, StorageUnavailableError, type BlobStore } from "../storage/blobStore.ts";
import { deleteBlobIfUnreferenced, withBlobLock } from "../storage/blobLocks.ts";
import { FailureReason, InstanceRejectedError, type FailureReasonCode } from "../dicom/failureReasons.ts";
import { chunksSource, fileSource, readPart10 } from "../dicom/part10.ts";
import type { ParsedInstance } from "../dicom/types.ts";
import type { IngestOptions, IngestResult, Ingestor, SpooledInstance } from "./types.ts";

// short enough for a DICOM Error Comment (LO, 64 characters)
const INDEX_UNAVAILABLE = "index database is unavailable; nothing was stored; retry later";

/**
 * An instance up to this size is held in memory between arrival and storage instead of going through a spool
 * file (a CT slice is ~0.5 MB; most instances of a study are smaller): no spool file to create, read back and
 * remove. All instances so held take at most IN_MEMORY_BUDGET_BYTES together; past it they are spooled as before,
 * so memory stays bounded whatever the number of requests.
 */
const IN_MEMORY_INSTANCE_BYTES = 1024 * 1024;
const IN_MEMORY_BUDGET_BYTES = 32 * 1024 * 1024;

export interface IngestDeps {
  index: Index;
  store: BlobStore;
  config: RelayConfig["ingest"];
  /** directory for spooled uploads; must be on local disk */
  tmpDir: string;
  log: Logger;
  /** instances held in memory instead of a spool file (defaults: up to 1 MiB each, 32 MiB together) */
  inMemory?: { instanceBytes: number; budgetBytes: number };
}

export class IngestPipeline implements Ingestor {
  constructor(private readonly deps: IngestDeps) {}

  async init(): Promise<void> {
    await fsp.mkdir(this.deps.tmpDir, { recursive: true });
    for (const name of await fsp.readdir(this.deps.tmpDir)) {
      if (name.endsWith(".spool")) await fsp.rm(path.join(this.deps.tmpDir, name), { force: true });
    }
  }

  async ingestStream(body: Readable, opts: IngestOptions = {}): Promise<IngestResult> {
    const spooled = await this.spool(body, opts);
    return "status" in spooled ? spooled : this.ingestSpool(spooled, opts);
  }

  /** bytes of instances held in memory right now (at most IN_MEMORY_BUDGET_BYTES) */
  private inMemoryBytes = 0;

  /** Bytes held in memory now, for tests and metrics. */
  get heldInMemoryBytes(): number {
    return this.inMemoryBytes;
  }

  /**
   * First half of ingestStream: the stream is hashed and counted, kept in memory when small (within the budget),
   * else written to a local spool file. Split out so a multipart reader can read part N+1 while part N is stored.
   */
  async spool(body: Readable, opts: IngestOptions = {}): Promise<SpooledInstance | IngestResult> {
    const hash = crypto.createHash("sha256");
    let size = 0;
    let tooLarge = false;
    const max = this.deps.config.maxInstanceBytes;
    // in memory while it fits; the first chunk that does not fit opens the spool file and everything goes there
    const limits = this.deps.inMemory ?? { instanceBytes: IN_MEMORY_INSTANCE_BYTES, budgetBytes: IN_MEMORY_BUDGET_BYTES };
    let held: Buffer[] = [];
    let heldBytes = 0;
    let spool: string | null = null;
    let out: fs.WriteStream | null = null;
    let written: Promise<void> | null = null;
    const write = async (chunk: Buffer) => {
      if (!out!.write(chunk)) await Promise.race([once(out!, "drain"), written]);
    };
    const dropHeld = () => {
      this.inMemoryBytes -= heldBytes;
      held = [];
      heldBytes = 0;
    };
    try {
      // a plain loop, not stream.pipeline with a function stage: that costs an AbortController and an abort (a
      // DOMException with its stack) per instance
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        // past the limit, keep reading (so a multipart body can move on to its next part) but keep nothing
        if (size > max) tooLarge = true;
        if (tooLarge) continue;
        hash.update(chunk);
        if (!out) {
          if (heldBytes + chunk.length <= limits.instanceBytes && this.inMemoryBytes + chunk.length <= limits.budgetBytes) {
            held.push(chunk);
            heldBytes += chunk.length;
            this.inMemoryBytes += chunk.length;
            continue;
          }
          spool = path.join(this.deps.tmpDir, `${Date.now()}-${crypto.randomBytes(8).toString("hex")}.spool`);
          out = fs.createWriteStream(spool, { flags: "wx" });
          written = finished(out);
          written.catch(() => undefined); // awaited below; never an unhandled rejection
          const earlier = held;
          dropHeld();
          for (const c of earlier) await write(c);
        }
        await write(chunk);
      }
      if (out) {
        (out as fs.WriteStream).end();
        await written;
      }
    } catch (err) {
      dropHeld();
      (out as fs.WriteStream | null)?.destroy();
      if (spool) await fsp.rm(spool, { force: true });
      throw err;
    }
    if (tooLarge) {
      // the spool file (if any) was written and closed above
      dropHeld();
      if (spool) await fsp.rm(spool, { force: true });
      return this.fail(opts, FailureReason.OutOfResources,
        `the instance is larger than the relay accepts (${max} bytes); ask the administrator to raise ingest.maxInstanceBytes`);
    }
    if (spool) return { path: spool, sha256: hash.digest("hex"), size };
    // the chunks as they arrived (views into the socket's reads: no copy); the budget counts them until ingestSpool
    return { path: null, chunks: held, sha256: hash.digest("hex"), size };
  }

  /** Second half of ingestStream: parse, validate, de-duplicate, store, index; the spool file or memory is freed. */
  async ingestSpool(spooled: SpooledInstance, opts: IngestOptions = {}): Promise<IngestResult> {
    if (spooled.path === null) {
      try {
        return await this.ingestSpooled({ chunks: spooled.chunks! }, spooled.sha256, spooled.size, opts);
      } finally {
        this.inMemoryBytes -= spooled.size;
      }
    }
    const moved = { intoStorage: false };
    try {
      return await this.ingestSpooled({ path: spooled.path, moved }, spooled.sha256, spooled.size, opts);
    } finally {
      // a spool file renamed into storage is gone already: no lstat and unlink for nothing
      if (!moved.intoStorage) await fsp.rm(spooled.path, { force: true });
    }
  }

  async discard(spooled: SpooledInstance): Promise<void> {
    if (spooled.path === null) this.inMemoryBytes -= spooled.size;
    else await fsp.rm(spooled.path, { force: true });
  }

  /**
   * The instance is complete and hashed: in memory, or in a spool file (moved into storage when stored, and then
   * moved.intoStorage says so).
   */
  private async ingestSpooled(
    from: { chunks: Buffer[] } | { path: string; moved: { intoStorage: boolean } },
    sha256: string,
    size: number,
    opts: IngestOptions,
  ): Promise<IngestResult> {
    const { index, store, log } = this.deps;
    if (opts.expectedSha256 && opts.expectedSha256.toLowerCase() !== sha256) {
      return this.fail(opts, FailureReason.ProcessingFailure,
        `the instance's bytes do not match the SHA-256 declared in the transfer manifest (got ${sha256}); it was damaged in transit or the manifest is wrong`,
        { sha256, size });
    }

    let parsed: ParsedInstance;
    const handle = "chunks" in from ? null : await fsp.open(from.path, "r");
    try {
      parsed = await readPart10(handle ? fileSource(handle, size) : chunksSource((from as { chunks: Buffer[] }).chunks), {
        maxHeaderBytes: this.deps.config.maxHeaderBytes,
        bulkDataThreshold: this.deps.config.bulkDataThreshold,
        // a deflated data set may inflate to no more than an instance may be
        maxInflatedBytes: this.deps.config.maxInstanceBytes,
      });
    } catch (err) {
      if (err instanceof InstanceRejectedError) return this.fail(opts, err.reason, err.message, { ...err.ids, sha256, size });
      log.error({ err, source: opts.source }, "unexpected error while reading an instance");
      return this.fail(opts, FailureReason.CannotUnderstand, `the file could not be read as DICOM: ${(err as Error).message}`, { sha256, size });
    } finally {
      await handle?.close();
    }

    const ids = {
      studyInstanceUID: parsed.studyInstanceUID,
      seriesInstanceUID: parsed.seriesInstanceUID,
      sopInstanceUID: parsed.sopInstanceUID,
      sopClassUID: parsed.sopClassUID,
    };
    const warned = parsed.warnings.length ? { warnings: parsed.warnings } : {};
    for (const w of parsed.warnings) log.warn({ source: opts.source, sopInstanceUID: parsed.sopInstanceUID, warning: w }, "instance accepted with a warning");
    if (opts.expectedStudyInstanceUID && opts.expectedStudyInstanceUID !== parsed.studyInstanceUID) {
      return this.fail(opts, FailureReason.StudyInstanceUIDMismatch,
        `the instance belongs to study ${parsed.studyInstanceUID}, not to study ${opts.expectedStudyInstanceUID} named in the request URL`,
        { ...ids, sha256, size });
    }

    // de-duplicate before writing anything: identical bytes are stored once
    let existing;
    try {
      existing = await index.getInstance(parsed.sopInstanceUID, { includePending: true });
    } catch (err) {
      if (!isIndexUnavailable(err)) throw err;
      log.error({ err, sopInstanceUID: parsed.sopInstanceUID }, "the index is unavailable");
      return this.fail(opts, FailureReason.OutOfResources, INDEX_UNAVAILABLE, { ...ids, sha256, size, retryable: true });
    }
    if (existing && existing.sha256 === sha256) {
      return { status: "already-stored", ...ids, sha256, size, ...warned };
    }
    if (existing && this.deps.config.conflictPolicy !== "replace") {
      return this.conflict(opts, ids, sha256, size, existing);
    }

    const blobKey = instanceBlobKey(sha256);
    // the blob and its row are written under the blob's lock, so a concurrent "delete if unreferenced"
    // of the same content-addressed key cannot remove the blob between the put and the insert
    const locked = withBlobLock(blobKey, async (): Promise<IngestResult> => {
      try {
        // the hash is the one computed while spooling: S3 checks the bytes against it instead of hashing again
        if ("chunks" in from) await (store.putBuffers ? store.putBuffers(blobKey, from.chunks, { size, sha256 }) : store.put(blobKey, Readable.from(from.chunks), { size, sha256 }));
        else {
          await store.putFile(blobKey, from.path, { sha256 });
          from.moved.intoStorage = true;
        }
      } catch (err) {
        log.error({ err, sopInstanceUID: parsed.sopInstanceUID }, "storing an instance failed");
        const unavailable = err instanceof StorageUnavailableError;
        return this.fail(opts, unavailable ? FailureReason.OutOfResources : FailureReason.ProcessingFailure,
          unavailable
            ? "storage is unavailable; nothing was stored; retry later"
            : "the relay could not store the instance; nothing was stored, please retry",
          { ...ids, sha256, size, retryable: unavailable });
      }

      const record: InstanceRecord = {
        ...ids,
        transferSyntaxUID: parsed.transferSyntaxUID,
        size,
        sha256,
        blobKey,
        metadata: parsed.dataset,
        pixelData: parsed.pixelData,
        bulkData: parsed.bulkData,
        pendingTransferId: opts.transferId ?? null,
      };
      try {
        if (existing) {
          // conflict policy "replace": the new bytes win; the old blob goes once no row points at it
          const old = await index.replaceInstance(record);
          if (old && old.blobKey !== blobKey) {
            await deleteBlobIfUnreferenced(index, store, old.blobKey).catch((err) => log.warn({ err, key: old.blobKey }, "old blob not removed; fsck will"));
          }
          log.warn({ sopInstanceUID: parsed.sopInstanceUID, old: existing.sha256, new: sha256 }, "instance replaced by different bytes (conflict policy replace)");
          return { status: "replaced", ...ids, sha256, size, ...warned };
        }
        const outcome = await index.insertInstance(record);
        if (outcome.outcome === "inserted") return { status: "stored", ...ids, sha256, size, ...warned };
        // lost a race with a concurrent ingest of the same SOPInstanceUID: the unique constraint decided
        if (outcome.outcome === "duplicate") return { status: "already-stored", ...ids, sha256, size, ...warned };
        await this.removeUnreferenced(blobKey);
        return this.conflict(opts, ids, sha256, size, outcome.existing);
      } catch (err) {
        log.error({ err, sopInstanceUID: parsed.sopInstanceUID }, "indexing an instance failed");
        await this.removeUnreferenced(blobKey);
        const unavailable = isIndexUnavailable(err);
        return this.fail(opts, unavailable ? FailureReason.OutOfResources : FailureReason.ProcessingFailure,
          unavailable ? INDEX_UNAVAILABLE : "the relay could not index the instance; nothing was stored, please retry",
          { ...ids, sha256, size, retryable: true });
      }
    }, index);
    // the shared (cross-node) lock lives in the index database: when that is down, nothing was written
    return locked.catch((err: unknown) => {
      if (!isIndexUnavailable(err)) throw err;
      log.error({ err, sopInstanceUID: parsed.sopInstanceUID }, "the index is unavailable");
      return this.fail(opts, FailureReason.OutOfResources, INDEX_UNAVAILABLE, { ...ids, sha256, size, retryable: true });
    });
  }

  /** Only called while holding blobKey's lock. */
  private async removeUnreferenced(blobKey: string): Promise<void> {
    try {
      if (!(await this.deps.index.isBlobReferenced(blobKey))) await this.deps.store.delete(blobKey);
    } catch (err) {
      this.deps.log.warn({ err, key: blobKey }, "could not remove an unreferenced blob; fsck will");
    }
  }

  private conflict(
    opts: IngestOptions,
    ids: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string; sopClassUID: string },
    sha256: string,
    size: number,
    existing: { sha256: string; size: number },
  ): IngestResult {
    if (this.deps.config.conflictPolicy === "keep-first") {
      this.deps.log.warn({ ...ids, existing: existing.sha256, offered: sha256, source: opts.source }, "different bytes for a stored SOPInstanceUID ignored (conflict policy keep-first)");
      // what is stored: the kept bytes' hash and size
      return { status: "already-stored", ...ids, sha256: existing.sha256, size: existing.size, keptOther: true };
    }
    return this.fail(opts, FailureReason.DuplicateSOPInstance,
      `an instance with SOPInstanceUID ${ids.sopInstanceUID} is already stored with different content; it was not overwritten (conflict policy "reject")`,
      { ...ids, sha256, size });
  }

  private fail(
    opts: IngestOptions,
    reason: FailureReasonCode,
    message: string,
    extra: Partial<Extract<IngestResult, { status: "failed" }>> = {},
  ): IngestResult {
    this.deps.log.warn({ reason: `0x${reason.toString(16).toUpperCase()}`, message, source: opts.source, sopInstanceUID: extra.sopInstanceUID }, "instance refused");
    return { ...extra, status: "failed", reason, message };
  }
}
