/**
 * Index vs storage consistency: every indexed instance must have its blob with the recorded size (and
 * SHA-256), and every blob under instances/ must be referenced by an index row.
 *
 * Repair makes the two agree: instances whose blob is missing or differs are un-indexed (the sender
 * must send them again), then blobs referenced by no row are deleted (this includes the bytes of an
 * instance just un-indexed for a mismatch: under content addressing they are the wrong bytes for
 * their key). Both are checked again right before acting, which narrows but cannot close the window
 * against an ingest running at the same time (it writes the blob first, then the row): repair with
 * the relay stopped, or at a quiet time.
 */
import { deleteBlobIfUnreferenced } from "../storage/blobLocks.ts";
import crypto from "node:crypto";
import { BlobNotFoundError, type BlobStore } from "../storage/blobStore.ts";
import type { Index, InstanceLocation } from "../catalog/index.ts";

export interface FsckOptions {
  repair: boolean;
  /** read every blob and compare its SHA-256 (slow: reads all bytes); otherwise sizes only */
  verifyHashes: boolean;
  log?: (line: string) => void;
}

export interface FsckInstanceProblem {
  studyInstanceUID: string;
  seriesInstanceUID: string;
  sopInstanceUID: string;
  blobKey: string;
  expectedSize: number;
  expectedSha256: string;
}

export interface FsckMismatch extends FsckInstanceProblem {
  /** what differs: the size (then the hash is not read) or, same size, the SHA-256 */
  reason: "size" | "sha256";
  actualSize: number;
  /** set when the bytes were hashed */
  actualSha256?: string;
}

export interface FsckReport {
  /** indexed instances looked at */
  checked: number;
  missingBlobs: FsckInstanceProblem[];
  hashMismatches: FsckMismatch[];
  /** blob keys under instances/ that no index row references */
  orphanBlobs: string[];
  repaired: {
    /** SOPInstanceUIDs removed from the index (missing or mismatched blob) */
    unindexed: string[];
    /** orphan blob keys deleted */
    deletedBlobs: string[];
  };
}

const INSTANCE_PREFIX = "instances/";
/** progress line every this many instances */
const PROGRESS_EVERY = 10_000;

function problemOf(loc: InstanceLocation): FsckInstanceProblem {
  return {
    studyInstanceUID: loc.studyInstanceUID,
    seriesInstanceUID: loc.seriesInstanceUID,
    sopInstanceUID: loc.sopInstanceUID,
    blobKey: loc.blobKey,
    expectedSize: loc.size,
    expectedSha256: loc.sha256,
  };
}

/** SHA-256 of a stored object, streamed; null when it vanished meanwhile. */
async function hashBlob(store: BlobStore, key: string): Promise<{ sha256: string; size: number } | null> {
  let body;
  try {
    body = await store.get(key);
  } catch (err) {
    if (err instanceof BlobNotFoundError) return null;
    throw err;
  }
  const h = crypto.createHash("sha256");
  let size = 0;
  for await (const chunk of body) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: h.digest("hex"), size };
}

/** Compares one instance with its blob: null when they agree. */
async function checkInstance(
  store: BlobStore,
  loc: InstanceLocation,
  verifyHashes: boolean,
): Promise<{ kind: "missing" } | { kind: "mismatch"; mismatch: FsckMismatch } | null> {
  const st = await store.stat(loc.blobKey);
  if (!st) return { kind: "missing" };
  if (st.size !== loc.size) {
    return { kind: "mismatch", mismatch: { ...problemOf(loc), reason: "size", actualSize: st.size } };
  }
  if (!verifyHashes) return null;
  const actual = await hashBlob(store, loc.blobKey);
  if (!actual) return { kind: "missing" };
  if (actual.size !== loc.size || actual.sha256 !== loc.sha256) {
    return {
      kind: "mismatch",
      mismatch: { ...problemOf(loc), reason: actual.size !== loc.size ? "size" : "sha256", actualSize: actual.size, actualSha256: actual.sha256 },
    };
  }
  return null;
}

/**
 * Storage errors (StorageUnavailableError ...) abort the run: a backend that cannot answer must never
 * make instances look missing.
 */
export async function fsck(index: Index, store: BlobStore, opts: FsckOptions): Promise<FsckReport> {
  const log = opts.log ?? (() => undefined);
  const report: FsckReport = { checked: 0, missingBlobs: [], hashMismatches: [], orphanBlobs: [], repaired: { unindexed: [], deletedBlobs: [] } };
  const broken: InstanceLocation[] = [];

  // 1. index -> storage
  for await (const loc of index.iterateInstances()) {
    report.checked++;
    const problem = await checkInstance(store, loc, opts.verifyHashes);
    if (problem?.kind === "missing") {
      report.missingBlobs.push(problemOf(loc));
      broken.push(loc);
      log(`missing blob ${loc.blobKey} of instance ${loc.sopInstanceUID} (study ${loc.studyInstanceUID})`);
    } else if (problem?.kind === "mismatch") {
      const m = problem.mismatch;
      report.hashMismatches.push(m);
      broken.push(loc);
      log(
        m.reason === "size"
          ? `size mismatch on ${loc.blobKey} of instance ${loc.sopInstanceUID}: indexed ${m.expectedSize} bytes, stored ${m.actualSize}`
          : `hash mismatch on ${loc.blobKey} of instance ${loc.sopInstanceUID}: indexed sha256 ${m.expectedSha256}, stored ${m.actualSha256}`,
      );
    }
    if (report.checked % PROGRESS_EVERY === 0) log(`checked ${report.checked} instances`);
  }

  // repair after the walk: an index is not asked to stay stable while rows are removed under its cursor
  if (opts.repair) {
    for (const loc of broken) {
      // still broken? (the blob may have been stored again meanwhile)
      if ((await checkInstance(store, loc, opts.verifyHashes)) === null) continue;
      const removed = await index.deleteInstances({
        studyInstanceUID: loc.studyInstanceUID,
        seriesInstanceUID: loc.seriesInstanceUID,
        sopInstanceUID: loc.sopInstanceUID,
        includePending: true,
      });
      for (const r of removed) {
        report.repaired.unindexed.push(r.sopInstanceUID);
        log(`repair: un-indexed instance ${r.sopInstanceUID} (blob ${r.blobKey})`);
      }
    }
  }

  // 2. storage -> index
  for await (const blob of store.list(INSTANCE_PREFIX)) {
    if (await index.isBlobReferenced(blob.key)) continue;
    report.orphanBlobs.push(blob.key);
    log(`orphan blob ${blob.key} (${blob.size} bytes): no instance references it`);
    // under the blob's lock (shared by every node with PostgreSQL): an ingest between its put and its insert keeps its blob
    if (opts.repair) {
      if (await deleteBlobIfUnreferenced(index, store, blob.key)) {
        report.repaired.deletedBlobs.push(blob.key);
        log(`repair: deleted orphan blob ${blob.key}`);
      }
    }
  }
  return report;
}
