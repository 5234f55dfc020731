import type { ByteRange, BulkDataLocation, DicomJsonDataset, PixelDataLocation } from "../dicom/types.ts";
import type { QidoQuery } from "../dicom/qidoQuery.ts";

/** One stored instance as the index keeps it: every attribute QIDO needs plus where the bytes are. */
export interface InstanceRecord {
  studyInstanceUID: string;
  seriesInstanceUID: string;
  sopInstanceUID: string;
  sopClassUID: string;
  transferSyntaxUID: string;
  /** bytes of the Part-10 file as stored */
  size: number;
  /** SHA-256 of the stored bytes, lower-case hex */
  sha256: string;
  /** opaque BlobStore key */
  blobKey: string;
  /** full data set as DICOM JSON (bulk data as BulkDataURI with BULK_ROOT_PLACEHOLDER) */
  metadata: DicomJsonDataset;
  pixelData: PixelDataLocation | null;
  bulkData: BulkDataLocation[];
  /**
   * Set while the instance belongs to an unfinished transfer: such instances are invisible to
   * readers until the transfer completes or is released (see the transfers issue). null = visible.
   */
  pendingTransferId?: string | null;
  /** ISO time the index row was written (set by the index) */
  storedAt?: string;
}

/** Light reference used for retrieval and deletion. */
export interface InstanceLocation {
  studyInstanceUID: string;
  seriesInstanceUID: string;
  sopInstanceUID: string;
  sopClassUID: string;
  transferSyntaxUID: string;
  size: number;
  sha256: string;
  blobKey: string;
  pixelData: PixelDataLocation | null;
  bulkData: BulkDataLocation[];
}

/** What a whole-instance retrieve needs of each instance: where its bytes are, how many, in which transfer syntax. */
export interface InstanceBlob {
  studyInstanceUID: string;
  sopInstanceUID: string;
  transferSyntaxUID: string;
  size: number;
  blobKey: string;
}

/** Scope of a read: which UIDs, and whether instances of unfinished transfers are included. */
export interface InstanceScope {
  studyInstanceUID: string;
  seriesInstanceUID?: string;
  sopInstanceUID?: string;
  /** default false: readers never see instances of unfinished transfers */
  includePending?: boolean;
  /** when set, only these studies may be seen (share links); others behave as absent */
  allowedStudies?: readonly string[] | null;
}

export type InsertOutcome =
  | { outcome: "inserted" }
  /** same SOPInstanceUID with the same bytes (sha256): nothing written */
  | { outcome: "duplicate"; existing: InstanceLocation }
  /** same SOPInstanceUID with other bytes */
  | { outcome: "conflict"; existing: InstanceLocation };

export interface QidoResult {
  /** one DICOM JSON data set per matched entity, already reduced to the returned attributes */
  matches: DicomJsonDataset[];
}

/**
 * The metadata index: one extension point (SQLite embedded, PostgreSQL at scale).
 * Contract: test/contracts/index.ts runs against every implementation.
 */
export interface Index {
  readonly kind: string;
  /** Apply pending migrations. Idempotent. */
  init(): Promise<void>;
  /**
   * Insert one instance. Race-free de-duplication: a unique constraint on SOPInstanceUID decides;
   * the caller learns whether it was new, an identical duplicate, or a conflict.
   */
  insertInstance(record: InstanceRecord): Promise<InsertOutcome>;
  /** Replace an existing instance row (conflict policy "replace"); returns the old location. */
  replaceInstance(record: InstanceRecord): Promise<InstanceLocation | null>;
  /** pendingOf: only an instance still pending under that transfer (a cancelled transfer removes what it stored). */
  getInstance(sopInstanceUID: string, opts?: { includePending?: boolean; pendingOf?: string }): Promise<InstanceLocation | null>;
  /** Instances in a study / series / single instance, ordered by series then InstanceNumber. */
  listInstances(scope: InstanceScope): Promise<InstanceLocation[]>;
  /**
   * listInstances without the pixel / bulk data locations (no JSON parsed per row): what a WADO-RS study retrieve
   * of stored bytes needs, in one query, same order.
   */
  listInstanceBlobs(scope: InstanceScope): Promise<InstanceBlob[]>;
  /** DICOM JSON metadata strings (each a serialized data set) for the scope, same order. */
  listMetadata(scope: InstanceScope): Promise<string[]>;
  /** QIDO-RS search. allowedStudies restricts to a set of studies (share links). */
  search(query: QidoQuery, opts?: { allowedStudies?: readonly string[] | null }): Promise<QidoResult>;
  /** Delete index rows for the scope; returns the removed locations (for blob deletion). */
  deleteInstances(scope: InstanceScope): Promise<InstanceLocation[]>;
  /** Is any other instance row pointing to this blob key (content-addressed sharing)? */
  isBlobReferenced(blobKey: string): Promise<boolean>;
  /** Every instance location (for fsck), in pages. */
  iterateInstances(): AsyncIterable<InstanceLocation>;
  /** Make instances of a transfer visible (pendingTransferId -> null). Returns how many. */
  releaseTransfer(transferId: string): Promise<number>;
  /**
   * Hold a lock on a blob key across every relay process sharing this index while fn runs (see
   * storage/blobLocks.ts). Absent for an index only one process opens (SQLite): the in-process lock suffices.
   */
  withBlobLock?<T>(blobKey: string, fn: () => Promise<T>): Promise<T>;
  /** Liveness probe for /readyz. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** The index database cannot be reached right now (down, restarting, unreachable): HTTP layers answer 503 with Retry-After. */
export class IndexUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "IndexUnavailableError";
  }
}

/**
 * The database cannot be reached or is going away, as opposed to a bad request: connecting failed (refused,
 * unreachable, timed out, name not resolved), the connection dropped (pg: "Connection terminated ..."), or
 * PostgreSQL said so (class 08 connection exceptions, 57P01..57P03 admin/crash shutdown and "cannot connect
 * now", 53300 too many connections). Socket errors of other origins (a client that hung up: ECONNRESET
 * without a connect/getaddrinfo syscall) are not counted.
 */
const CONNECT_CODES = new Set(["ECONNREFUSED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN"]);
const SERVER_CODES = new Set(["57P01", "57P02", "57P03", "53300"]);
const UNAVAILABLE_MESSAGE = /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection closed)|the database system is (starting up|shutting down)/i;

export function isIndexUnavailable(err: unknown): boolean {
  if (err instanceof IndexUnavailableError) return true;
  if (!err || typeof err !== "object") return false;
  const e = err as { code?: unknown; message?: unknown; errors?: unknown; syscall?: unknown };
  if (typeof e.code === "string") {
    if (SERVER_CODES.has(e.code) || /^08[0-9A-Z]{3}$/.test(e.code)) return true;
    if (CONNECT_CODES.has(e.code) && (e.syscall === "connect" || e.syscall === "getaddrinfo")) return true;
  }
  if (typeof e.message === "string" && UNAVAILABLE_MESSAGE.test(e.message)) return true;
  // AggregateError from a dual-stack connect
  return Array.isArray(e.errors) && e.errors.some(isIndexUnavailable);
}
