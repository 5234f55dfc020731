/**
 * Sending stored instances over DIMSE (C-MOVE and C-GET sub-operations, DIMSE forwarding): the data set
 * part of the stored Part-10 file is streamed from the BlobStore as it is, in its stored transfer syntax,
 * on a presentation context accepted for exactly that SOP class and transfer syntax. When the peer took
 * only uncompressed syntaxes for it, the instance is decoded a frame at a time (src/imaging/transcode.ts)
 * and sent in Explicit or Implicit VR Little Endian. No instance is held in memory.
 */
import { Readable } from "node:stream";
import type { BlobStore } from "../storage/blobStore.ts";
import type { InstanceLocation, InstanceScope } from "../catalog/index.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { isUid, parseQidoQuery, QidoQueryError, type QidoLimits } from "../dicom/qido.ts";
import type { QidoQuery } from "../dicom/qidoQuery.ts";
import { CommandField, Status, type Command } from "./command.ts";
import { datasetOffset } from "./dataset.ts";
import type { Association } from "./association.ts";
import { IdentifierError } from "./find.ts";
import type { ProposedContext } from "./pdu.ts";
import { canDecode, UNCOMPRESSED } from "../imaging/codecs.ts";
import { transcodeInstance, whyNotTranscodable } from "../imaging/transcode.ts";
import type { PixelModule } from "../imaging/pixelModule.ts";

/** The instance's pixel module, looked up only when it must be decoded. */
export type PixelModuleLookup = (loc: InstanceLocation) => Promise<PixelModule | string>;

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
  pixelModule?: PixelModuleLookup,
): Promise<SubOperationResult> {
  let ctx = assoc.findContext(loc.sopClassUID, loc.transferSyntaxUID);
  let data: Readable;
  if (ctx) {
    data = await openDataset(store, loc);
  } else {
    // the peer took this SOP class only in other syntaxes: decode to the uncompressed one it accepted
    const alt = UNCOMPRESSED.map((ts) => assoc.findContext(loc.sopClassUID, ts)).find((c) => c !== undefined);
    const pm = alt && pixelModule && loc.pixelData ? await pixelModule(loc) : null;
    const why = alt ? whyNotTranscodable(loc, pm, alt.transferSyntax) : null;
    if (!alt || why) {
      return {
        status: Status.SOPClassNotSupported,
        errorComment: (alt ? `cannot decode: ${why}` : `no presentation context for ${loc.sopClassUID} in ${loc.transferSyntaxUID}`).slice(0, 64),
      };
    }
    ctx = alt;
    data = Readable.from(transcodeInstance(store, loc, typeof pm === "object" ? pm : null, alt.transferSyntax, { part10: false }));
  }
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

/**
 * The presentation contexts to propose for sending these instances: one per SOP class and stored transfer syntax,
 * and, for a SOP class stored compressed in a syntax the relay decodes, one more offering Explicit and Implicit VR
 * Little Endian, so a peer that takes only uncompressed data still gets every instance (decoded).
 */
export function storageContexts(instances: Iterable<Pick<InstanceLocation, "sopClassUID" | "transferSyntaxUID">>): ProposedContext[] {
  const pairs = new Map<string, ProposedContext>();
  let id = 1;
  const add = (key: string, abstractSyntax: string, transferSyntaxes: string[]) => {
    if (pairs.has(key) || id > 255) return; // 128 contexts at most; instances beyond fail their sub-operation with a clear comment
    pairs.set(key, { id, abstractSyntax, transferSyntaxes });
    id += 2;
  };
  const fallbacks: string[] = [];
  for (const i of instances) {
    add(`${i.sopClassUID}|${i.transferSyntaxUID}`, i.sopClassUID, [i.transferSyntaxUID]);
    if (!UNCOMPRESSED.includes(i.transferSyntaxUID) && canDecode(i.transferSyntaxUID)) fallbacks.push(i.sopClassUID);
  }
  // after every stored syntax, so the fallbacks never take the place of a stored one
  for (const sopClass of fallbacks) add(`${sopClass}|uncompressed`, sopClass, [...UNCOMPRESSED]);
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
      throw new IdentifierError(level ? `QueryRetrieveLevel "${level.slice(0, 16)}" is not supported: use STUDY, SERIES or IMAGE${level === "PATIENT" ? " (PATIENT is Patient Root's)" : ""}` : "the identifier has no QueryRetrieveLevel (0008,0052)");
  }
}

export type RetrievePlan =
  | { scopes: InstanceScope[] }
  /** Patient Root, PATIENT level: the studies of one patient, found by this study search (grouped by the caller) */
  | { patient: { patientID: string; query: QidoQuery } };

const textOf = (ds: DicomJsonDataset, tag: string): string => String(ds[tag]?.Value?.[0] ?? "").trim();

/**
 * What a C-MOVE / C-GET identifier names under its information model. STUDY / SERIES / IMAGE are the same
 * under both (the Patient Root's PatientID is an upper-level key; the study UIDs name the instances). PATIENT
 * (Patient Root only) names one patient by PatientID, with IssuerOfPatientID when given: a single value, never
 * a wildcard, since a retrieve must not reach further than the one patient it names.
 */
export function planRetrieve(identifier: DicomJsonDataset, allowedStudies: readonly string[] | null, model: "study" | "patient", limits: QidoLimits): RetrievePlan {
  const level = textOf(identifier, "00080052").toUpperCase();
  if (level !== "PATIENT" || model !== "patient") return { scopes: retrieveScopes(identifier, allowedStudies) };
  const patientID = textOf(identifier, "00100020");
  const issuer = textOf(identifier, "00100021");
  if (!patientID) throw new IdentifierError("a PATIENT level retrieve needs PatientID (0010,0020)");
  if (/[*?\\]/.test(patientID + issuer) || (identifier["00100020"]?.Value?.length ?? 0) > 1) throw new IdentifierError("a PATIENT level retrieve names one patient: PatientID without wildcards or lists");
  const params = new URLSearchParams({ PatientID: patientID });
  if (issuer) params.set("IssuerOfPatientID", issuer);
  params.set("includefield", "PatientID,IssuerOfPatientID,PatientName");
  try {
    return { patient: { patientID, query: parseQidoQuery("study", {}, params, limits) } };
  } catch (err) {
    if (err instanceof QidoQueryError) throw new IdentifierError(err.message);
    throw err;
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
