/**
 * Durable state of transfers (manifests, per-instance progress, receipts) and of finished tus uploads' results.
 * One extension point like Index: SQLite embedded (sqliteTransferStore.ts); PostgreSQL can follow the same interface.
 */
import type { SignedReceipt } from "./receipts.ts";

/**
 * present: the relay already had identical bytes when the manifest arrived (nothing to send);
 * received: sent in this transfer and stored (or found identical); missing: still to send;
 * failed: sent but refused (reason says why); sending correct bytes again turns it into received.
 */
export type ItemState = "present" | "received" | "missing" | "failed";

/**
 * open: instances arriving stay invisible; complete: all present/received, released, receipt issued; released: an
 * admin made a partial transfer visible; cancelled: given up by its sender or an admin (what it stored is removed,
 * later uploads to it are refused).
 */
export type TransferState = "open" | "complete" | "released" | "cancelled";

export interface TransferItem {
  sopInstanceUID: string;
  sha256: string;
  size: number;
  studyInstanceUID: string | null;
  seriesInstanceUID: string | null;
  state: ItemState;
  /** why it failed, a sentence (state failed only) */
  reason: string | null;
  /** DICOM failure reason code, e.g. 0xC000 (state failed only) */
  failureCode: number | null;
  updatedAt: string;
}

export interface TransferRecord {
  id: string;
  label: string | null;
  createdAt: string;
  state: TransferState;
  completedAt: string | null;
  releasedAt: string | null;
  cancelledAt: string | null;
  /**
   * the token id (or cert:<subject>, or anonymous) that created it: only it and admins see the transfer; null:
   * created before owners were kept (admin only)
   */
  createdBy: string | null;
  receipt: SignedReceipt | null;
}

/** What GET /api/transfers lists: newest first, at most limit. */
export interface TransferListQuery {
  /** only transfers this actor created (uploaders see their own) */
  createdBy?: string;
  state?: TransferState;
  limit: number;
}

export type EntryStatus = "stored" | "already-stored" | "replaced" | "failed";

/** One entry of an upload (the file itself, or one member of a bundle). */
export interface UploadEntryResult {
  /** entry name inside the bundle (never used as a path), or the upload's filename */
  name: string;
  status: EntryStatus;
  sopInstanceUID?: string;
  studyInstanceUID?: string;
  seriesInstanceUID?: string;
  sha256?: string;
  size?: number;
  /** failure reason code as 0xHHHH (failed only) */
  reason?: string;
  /** a sentence a person can act on (failed only) */
  message?: string;
}

export interface UploadResult {
  uploadId: string;
  transferId: string | null;
  /** who created the upload (as its metadata relayOwner); null: before owners were kept */
  owner?: string | null;
  /** processing: the upload is complete and its entries are being ingested; done: entries below are final */
  state: "processing" | "done";
  /** what the bytes turned out to be */
  kind: string | null;
  filename: string | null;
  size: number;
  finishedAt: string | null;
  counts: { entries: number; stored: number; alreadyStored: number; failed: number };
  entries: UploadEntryResult[];
  /** set when the bundle as a whole was refused (bomb, corrupt archive): entries before it are listed */
  error: string | null;
}

/**
 * Where finished uploads' results are kept: the transfer store (fs), or beside the upload in S3 (every node reads it).
 * A result is stored in two parts so that a bundle of 100,000 entries costs each entry one write: the summary
 * (state, counts, error; small, re-saved as progress) and the entries, appended in batches as they are ingested
 * (rows numbered from 0; pages of objects in S3). The result a client reads is put together when read.
 */
export interface UploadResultStore {
  /**
   * The result with its entries 0 .. counts.entries-1 once it is done (numbers at or beyond counts.entries are
   * left-overs of an interrupted attempt and are not listed); a result still processing lists none.
   * opts.entries false: the summary only (entries []), for callers that need its state (no read of the list).
   */
  getUploadResult(uploadId: string, opts?: { entries?: boolean }): Promise<UploadResult | null>;
  /** Saves the summary; `entries` is not written here (putUploadEntries does). */
  saveUploadResult(result: UploadResult): Promise<void>;
  /** Stores entries numbered first, first+1, ..., replacing any stored under those numbers (a retried ingest, an undone bundle). */
  putUploadEntries(uploadId: string, first: number, entries: readonly UploadEntryResult[]): Promise<void>;
  /** Stored entries numbered from first, in order, at most limit. */
  listUploadEntries(uploadId: string, first: number, limit: number): Promise<UploadEntryResult[]>;
  /** Forget results (and their entries) of uploads finished before this ISO time; returns how many. */
  deleteUploadResultsBefore(iso: string): Promise<number>;
  /** How long ago the result was last saved (ms), null when there is none; stores shared by nodes implement it. */
  resultAgeMs?(uploadId: string): Promise<number | null>;
}

/** The summary as saved (its entries are kept apart). */
export const resultSummaryJson = (result: UploadResult): string => JSON.stringify({ ...result, entries: [] });

/**
 * A stored summary and its stored entries as the client reads them. A summary saved before entries were kept apart
 * carries its entries itself (legacy rows: no entry rows): those are kept.
 */
export async function assembleUploadResult(summaryJson: string, entries: ((count: number) => UploadEntryResult[] | Promise<UploadEntryResult[]>) | null): Promise<UploadResult> {
  const summary = JSON.parse(summaryJson) as UploadResult;
  if (!entries || summary.state !== "done" || summary.counts.entries === 0 || summary.entries?.length) return { ...summary, entries: entries ? (summary.entries ?? []) : [] };
  return { ...summary, entries: await entries(summary.counts.entries) };
}

export interface TransferStore extends UploadResultStore {
  init(): Promise<void>;
  close(): Promise<void>;

  createTransfer(transfer: { id: string; label: string | null; createdAt: string; createdBy: string | null }, items: TransferItem[]): Promise<void>;
  getTransfer(id: string): Promise<TransferRecord | null>;
  /** Newest first. */
  listTransfers(query: TransferListQuery): Promise<TransferRecord[]>;
  /** Atomically open|released -> cancelled; true when it changed. */
  markCancelled(transferId: string, at: string): Promise<boolean>;
  listItems(transferId: string): Promise<TransferItem[]>;
  getItem(transferId: string, sopInstanceUID: string): Promise<TransferItem | null>;
  findItemsBySha256(transferId: string, sha256: string): Promise<TransferItem[]>;
  /** Set an item's state; a present/received item never goes back to failed or missing (good bytes already stored). */
  updateItem(transferId: string, sopInstanceUID: string, update: { state: ItemState; reason?: string | null; failureCode?: number | null }): Promise<void>;
  /** The distinct StudyInstanceUIDs its manifest names (at most limit; a query, not a listing of every item). */
  studiesOf(transferId: string, limit: number): Promise<string[]>;
  /** The transfers whose manifest names this study (at most limit): retention removes their unfinished uploads. */
  transfersNaming(studyInstanceUID: string, limit: number): Promise<string[]>;
  /** Counts by state (cheaper than listing for big manifests). */
  countItems(transferId: string): Promise<Record<ItemState, number>>;
  /** Atomically open|released -> complete (never a cancelled one); true for the one caller that made the change. */
  markComplete(transferId: string, at: string): Promise<boolean>;
  /** Atomically open -> released; true when it changed. */
  markReleased(transferId: string, at: string): Promise<boolean>;
  setReceipt(transferId: string, receipt: SignedReceipt): Promise<void>;
  /** Complete transfers whose receipt was not written (a crash between the two): finished at start. */
  listCompleteWithoutReceipt(): Promise<string[]>;
  /** How many transfers are in each state (metrics). */
  countTransfersByState(): Promise<Record<TransferRecord["state"], number>>;
}

/** An item row as both stores keep it (PostgreSQL returns BIGINT sizes as strings). */
export interface TransferItemRow {
  sop_instance_uid: string;
  sha256: string;
  size: number | string;
  study_instance_uid: string | null;
  series_instance_uid: string | null;
  state: ItemState;
  reason: string | null;
  failure_code: number | null;
  updated_at: string;
}

export const itemFromRow = (r: TransferItemRow): TransferItem => ({
  sopInstanceUID: r.sop_instance_uid,
  sha256: r.sha256,
  size: Number(r.size),
  studyInstanceUID: r.study_instance_uid,
  seriesInstanceUID: r.series_instance_uid,
  state: r.state,
  reason: r.reason,
  failureCode: r.failure_code,
  updatedAt: r.updated_at,
});

/** A transfer row as both stores keep it. */
export interface TransferRow {
  id: string;
  label: string | null;
  created_at: string;
  state: TransferRecord["state"];
  completed_at: string | null;
  released_at: string | null;
  cancelled_at?: string | null;
  created_by?: string | null;
  receipt: string | null;
}

export const transferFromRow = (r: TransferRow): TransferRecord => ({
  id: r.id,
  label: r.label,
  createdAt: r.created_at,
  // the state column keeps its original CHECK (open/complete/released): cancellation is its own column
  state: r.cancelled_at ? "cancelled" : r.state,
  completedAt: r.completed_at,
  releasedAt: r.released_at,
  cancelledAt: r.cancelled_at ?? null,
  createdBy: r.created_by ?? null,
  receipt: r.receipt ? (JSON.parse(r.receipt) as SignedReceipt) : null,
});

/** Rows of `SELECT state, COUNT(*) AS n FROM transfers GROUP BY state` as counts for every state (PostgreSQL counts are strings). */
export function transferStateCounts(rows: ReadonlyArray<{ state: TransferRecord["state"]; n: number | string }>): Record<TransferRecord["state"], number> {
  const out: Record<TransferRecord["state"], number> = { open: 0, complete: 0, released: 0, cancelled: 0 };
  for (const r of rows) out[r.state] = Number(r.n);
  return out;
}
