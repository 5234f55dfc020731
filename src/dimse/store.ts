/**
 * C-STORE SCP: the data set arrives fragment by fragment and goes, behind a file meta header built from
 * the command (SOP class, SOP instance, accepted transfer syntax, calling AE), into the same ingest
 * pipeline as STOW-RS: spooled to local disk (never whole in memory), parsed, validated, de-duplicated,
 * stored, indexed. One ingest result per instance becomes one DIMSE status.
 */
import { PassThrough } from "node:stream";
import { drainOrClose } from "./association.ts";
import type { IngestResult, Ingestor } from "../ingest/types.ts";
import { FailureReason } from "../dicom/failureReasons.ts";
import { Status } from "./command.ts";
import { encodeFileMeta } from "./dataset.ts";
import type { DatasetSink } from "./association.ts";

export interface StoreOutcome {
  status: number;
  errorComment?: string;
  result?: IngestResult;
}

/** DIMSE C-STORE status for an ingest result (PS3.4 B.2.3). */
export function storeStatus(result: IngestResult): StoreOutcome {
  // 0xB007 Data Set does not match SOP Class (warning): stored under the data set's UIDs, as STOW-RS says
  if (result.status !== "failed" && result.warnings?.length) return { status: 0xb007, errorComment: result.warnings[0]!.split(": ")[0], result };
  if (result.status === "stored" || result.status === "replaced") return { status: Status.Success, result };
  if (result.status === "already-stored") {
    // keep-first: other bytes under a stored SOPInstanceUID were ignored; the sender should know (LO: 64 characters)
    if (result.keptOther) return { status: Status.StoreWarning, errorComment: "different bytes were stored before; kept those (keep-first)", result };
    return { status: Status.Success, result };
  }
  if (result.status !== "failed") return { status: Status.Success, result };
  if (result.retryable) return { status: Status.OutOfResources, errorComment: result.message, result };
  switch (result.reason) {
    case FailureReason.OutOfResources: return { status: Status.OutOfResources, errorComment: result.message, result };
    case FailureReason.DataSetDoesNotMatchSOPClass: return { status: Status.IdentifierDoesNotMatchSOPClass, errorComment: result.message, result };
    case FailureReason.DuplicateSOPInstance: return { status: 0x0111, errorComment: result.message, result };
    case FailureReason.ProcessingFailure: return { status: Status.ProcessingFailure, errorComment: result.message, result };
    default: return { status: Status.UnableToProcess, errorComment: result.message, result };
  }
}

/**
 * A sink that feeds one C-STORE data set to the ingest pipeline; `done` settles with the outcome once the
 * last fragment was written and the instance went through the pipeline (or with a failure status when the
 * association ended first: nothing is stored from a partial data set).
 */
export function storeSink(opts: {
  ingest: Ingestor;
  sopClassUID: string;
  sopInstanceUID: string;
  transferSyntaxUID: string;
  callingAE: string;
  source: string;
}): { sink: DatasetSink; done: Promise<StoreOutcome> } {
  const body = new PassThrough({ highWaterMark: 1 << 20 });
  body.write(encodeFileMeta({ sopClassUID: opts.sopClassUID, sopInstanceUID: opts.sopInstanceUID, transferSyntaxUID: opts.transferSyntaxUID, sourceAE: opts.callingAE }));
  let aborted = false;
  const spooled = opts.ingest.spool(body, { source: opts.source });
  const done = (async (): Promise<StoreOutcome> => {
    const s = await spooled;
    if ("status" in s) return storeStatus(s);
    if (aborted) {
      // never reached in practice (an aborted body makes spool reject), kept as a guard
      return { status: Status.ProcessingFailure, errorComment: "the association ended before the data set was complete" };
    }
    const result = await opts.ingest.ingestSpool(s, { source: opts.source });
    return storeStatus(result);
  })().catch((err: Error): StoreOutcome => ({ status: Status.ProcessingFailure, errorComment: `not stored: ${err.message}` }));
  const sink: DatasetSink = {
    async write(chunk) {
      if (!body.write(chunk)) await drainOrClose(body);
    },
    end() {
      body.end();
    },
    abort(err) {
      aborted = true;
      body.destroy(err);
    },
  };
  return { sink, done };
}
