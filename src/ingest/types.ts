import type { Readable } from "node:stream";
import type { FailureReasonCode } from "../dicom/failureReasons.ts";

/** One result per instance, whatever way it came in (STOW-RS, tus upload, bundle entry, CLI, DIMSE). */
export type IngestResult =
  | {
      status: "stored" | "already-stored" | "replaced";
      studyInstanceUID: string;
      seriesInstanceUID: string;
      sopInstanceUID: string;
      sopClassUID: string;
      /** of the bytes stored (with keptOther: those kept, not those sent) */
      sha256: string;
      size: number;
      /** already-stored under conflict policy keep-first: the sender's bytes differed and were not kept */
      keptOther?: true;
      /** stored, but the sender should know: sentences (STOW-RS Warning Reason 0xB007, C-STORE status 0xB007) */
      warnings?: string[];
    }
  | {
      status: "failed";
      reason: FailureReasonCode;
      /** a sentence a person can act on */
      message: string;
      /** what could be read of the instance, when anything could */
      studyInstanceUID?: string;
      seriesInstanceUID?: string;
      sopInstanceUID?: string;
      sopClassUID?: string;
      sha256?: string;
      size?: number;
      /** true when the failure is temporary (storage down): callers answer 503 + Retry-After */
      retryable?: boolean;
    };

export interface IngestOptions {
  /** STOW-RS /studies/{study}: every instance must belong to this study (else 0xC409) */
  expectedStudyInstanceUID?: string;
  /** instance belongs to an unfinished transfer: invisible to readers until released */
  transferId?: string;
  /** the sender's declared SHA-256 (from a transfer manifest): refuse on mismatch */
  expectedSha256?: string;
  /** a label for logs and audit (e.g. "stow", "tus", "bundle:IM0001") */
  source?: string;
  /**
   * an entry of a bundle: only instances stored (or replaced) get their own audit row; refused and already-held
   * entries are counted in the bundle's one row (a bundle of 100,000 junk entries must not write 100,000 rows)
   */
  bundleEntry?: boolean;
}

/**
 * An instance's bytes, hashed and counted, not yet parsed or stored: in a local spool file, or (a small instance,
 * within the relay's in-memory budget) in memory. Whoever gets one must hand it to ingestSpool, which frees it, or to discard.
 */
export interface SpooledInstance {
  /** the spool file, or null when the bytes are in memory */
  path: string | null;
  /** the bytes in memory, as they arrived (not joined into one buffer: no copy) */
  chunks?: Buffer[];
  sha256: string;
  size: number;
}

/** The one ingest function every way in calls. */
export interface Ingestor {
  /** Ingest one Part-10 instance read from a stream. Never throws for bad input: returns failed. */
  ingestStream(body: Readable, opts?: IngestOptions): Promise<IngestResult>;
  /** ingestStream in two halves, so a reader can overlap reading the next instance with storing this one */
  spool(body: Readable, opts?: IngestOptions): Promise<SpooledInstance | IngestResult>;
  ingestSpool(spooled: SpooledInstance, opts?: IngestOptions): Promise<IngestResult>;
  /** Frees a spooled instance that will not be ingested (its memory, or its spool file). */
  discard(spooled: SpooledInstance): Promise<void>;
}
