/**
 * Sending stored instances over DIMSE (C-MOVE and C-GET sub-operations, DIMSE forwarding): the data set
 * part of the stored Part-10 file is streamed from the BlobStore as it is, in its stored transfer syntax,
 * on a presentation context accepted for exactly that SOP class and transfer syntax. Nothing is
 * transcoded and no instance is held in memory.
 */
import type { Readable } from "node:stream";
import type { BlobStore } from "../storage/blobStore.ts";
import type { InstanceLocation, InstanceScope } from "../catalog/index.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { isUid } from "../dicom/qido.ts";
import { CommandField, Status, type Command } from "./command.ts";
import { datasetOffset } from "./dataset.ts";
import type { Association } from "./association.ts";
import { IdentifierError } from "./find.ts";
import type { ProposedContext } from "./pdu.ts";

const HEAD_BYTES = 64 * 1024;

/** A readable of the data set (file meta left out) of a stored instance. */
export async function openDataset(store: BlobStore, loc: Pick<InstanceLocation, "blobKey" | "size">): Promise<Readable> {
  const head = await store.get(loc.blobKey, { start: 0, end: Math.min(loc.size, HEAD_BYTES) - 1 });
  const chunks: Buffer[] = [];
  for await (const c of head) chunks.push(c as Buffer);
  const offset = datasetOffset(Buffer.concat(chunks));
  if (offset === null) throw new Error(`the file meta of the stored object ${loc.blobKey} is longer than ${HEAD_BYTES} bytes`);
  if (offset >= loc.size) throw new Error(`the stored object ${loc.blobKey} has no data set`);
  return store.get(loc.blobKey, { start: offset, end: loc.size - 1 });
}

export interface SubOperationResult {
  status: number;
  errorComment?: string;
}

/** One C-STORE sub-operation on an open association. */
export async function storeInstance(
  assoc: Association,
  store: BlobStore,
  loc: InstanceLocation,
  moveOriginator?: { aeTitle: string; messageId: number },
): Promise<SubOperationResult> {
  const ctx = assoc.findContext(loc.sopClassUID, loc.transferSyntaxUID);
  if (!ctx) {
    return {
      status: Status.SOPClassNotSupported,
      errorComment: `no presentation context for ${loc.sopClassUID} in ${loc.transferSyntaxUID} (the relay does not transcode)`,
    };
  }
  const data = await openDataset(store, loc);
  const rsp = await assoc.request(ctx.id, {
    commandField: CommandField.CStoreRQ,
    affectedSOPClassUID: loc.sopClassUID,
    affectedSOPInstanceUID: loc.sopInstanceUID,
    priority: 0,
    ...(moveOriginator ? { moveOriginatorAE: moveOriginator.aeTitle, moveOriginatorMessageId: moveOriginator.messageId } : {}),
  }, data);
  return { status: rsp.status ?? Status.ProcessingFailure, errorComment: rsp.errorComment };
}

/** Outcome class of a C-STORE status: 0x0000 success; 0xB000, 0xB006, 0xB007 warning; else failure. */
export function statusClass(status: number): "success" | "warning" | "failure" {
  if (status === 0) return "success";
  if ((status & 0xf000) === 0xb000) return "warning";
  return "failure";
}

/** The presentation contexts to propose for sending these instances: one per SOP class and transfer syntax. */
export function storageContexts(instances: Iterable<Pick<InstanceLocation, "sopClassUID" | "transferSyntaxUID">>): ProposedContext[] {
  const pairs = new Map<string, ProposedContext>();
  let id = 1;
  for (const i of instances) {
    const key = `${i.sopClassUID}|${i.transferSyntaxUID}`;
    if (pairs.has(key)) continue;
    if (id > 255) break; // 128 contexts at most; instances beyond fail their sub-operation with a clear comment
    pairs.set(key, { id, abstractSyntax: i.sopClassUID, transferSyntaxes: [i.transferSyntaxUID] });
    id += 2;
  }
  return [...pairs.values()];
}

const uidsOf = (ds: DicomJsonDataset, tag: string): string[] =>
  ((ds[tag]?.Value ?? []) as unknown[]).flatMap((v) => String(v ?? "").split("\\")).map((s) => s.trim()).filter(Boolean);

/**
 * The instance scopes a C-MOVE / C-GET identifier names (Study Root): STUDY with StudyInstanceUID(s),
 * SERIES with one StudyInstanceUID and SeriesInstanceUID(s), IMAGE with study, series and SOPInstanceUID(s).
 */
export function retrieveScopes(identifier: DicomJsonDataset, allowedStudies: readonly string[] | null): InstanceScope[] {
  const level = String(identifier["00080052"]?.Value?.[0] ?? "").trim().toUpperCase();
  const studies = uidsOf(identifier, "0020000D");
  const series = uidsOf(identifier, "0020000E");
  const sops = uidsOf(identifier, "00080018");
  for (const u of [...studies, ...series, ...sops]) if (!isUid(u)) throw new IdentifierError(`"${u.slice(0, 64)}" is not a DICOM UID`);
  const base = { allowedStudies };
  switch (level) {
    case "STUDY":
      if (!studies.length) throw new IdentifierError("a STUDY level retrieve needs StudyInstanceUID (0020,000D)");
      return studies.map((s) => ({ ...base, studyInstanceUID: s }));
    case "SERIES":
      if (studies.length !== 1 || !series.length) throw new IdentifierError("a SERIES level retrieve needs one StudyInstanceUID and SeriesInstanceUID(s)");
      return series.map((s) => ({ ...base, studyInstanceUID: studies[0]!, seriesInstanceUID: s }));
    case "IMAGE":
      if (studies.length !== 1 || series.length !== 1 || !sops.length) throw new IdentifierError("an IMAGE level retrieve needs one StudyInstanceUID, one SeriesInstanceUID and SOPInstanceUID(s)");
      return sops.map((s) => ({ ...base, studyInstanceUID: studies[0]!, seriesInstanceUID: series[0]!, sopInstanceUID: s }));
    default:
      throw new IdentifierError(level ? `QueryRetrieveLevel "${level.slice(0, 16)}" is not supported: use STUDY, SERIES or IMAGE` : "the identifier has no QueryRetrieveLevel (0008,0052)");
  }
}

/** Counters of a C-MOVE / C-GET, as its responses carry them. */
export class SubOperations {
  completed = 0;
  failed = 0;
  warning = 0;
  failedUids: string[] = [];
  constructor(readonly total: number) {}

  get remaining(): number {
    return Math.max(0, this.total - this.completed - this.failed - this.warning);
  }

  add(sop: string, r: SubOperationResult): void {
    const c = statusClass(r.status);
    if (c === "success") this.completed++;
    else if (c === "warning") this.warning++;
    else {
      this.failed++;
      this.failedUids.push(sop);
    }
  }

  counts(): Pick<Command, "remaining" | "completed" | "failed" | "warning"> {
    return { remaining: this.remaining, completed: this.completed, failed: this.failed, warning: this.warning };
  }

  /** Final status: success, or B000 when any sub-operation failed or warned. */
  finalStatus(): number {
    return this.failed || this.warning ? Status.SubOperationsWarning : Status.Success;
  }
}
