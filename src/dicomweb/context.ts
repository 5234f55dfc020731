import type { Request, Response } from "express";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import type { Index, InstanceScope } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import type { Ingestor } from "../ingest/types.ts";
import { BULK_ROOT_PLACEHOLDER } from "../dicom/types.ts";
import { isValidUid } from "../dicom/uids.ts";
import { HttpError } from "../http/errors.ts";
import type { RetentionService } from "../retention/service.ts";

/** What the DICOMweb routes need; built once in app.ts. */
export interface DicomwebServices {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  ingest: Ingestor;
  /** delivery tracking for retention: instances retrieved whole with a token */
  retention?: Pick<RetentionService, "noteDelivered">;
}

/**
 * Who is asking and what they may see: set by the access middleware (res.locals.access).
 * allowedStudies null = every study.
 */
export interface AccessScope {
  allowedStudies: readonly string[] | null;
  canStore: boolean;
  canDelete: boolean;
}

export const FULL_ACCESS: AccessScope = { allowedStudies: null, canStore: true, canDelete: true };

export function accessOf(res: Response): AccessScope {
  return (res.locals.access as AccessScope | undefined) ?? FULL_ACCESS;
}

/** The DICOMweb root this request came through (e.g. http://host/dicom-web or .../share/{t}/dicom-web). */
export function dicomwebRoot(req: Request, config: RelayConfig): string {
  const base = config.server.publicUrl ? config.server.publicUrl.replace(/\/$/, "") : `${req.protocol}://${req.get("host")}`;
  return base + req.baseUrl;
}

/** Complete stored relative URIs (BulkDataURI, RetrieveURL) for this request's root. */
export function withRoot(json: string, root: string): string {
  return json.includes(BULK_ROOT_PLACEHOLDER) ? json.split(BULK_ROOT_PLACEHOLDER).join(root) : json;
}

/** Path parameters are UIDs: refuse anything else before it reaches storage or SQL. */
export function uidParam(req: Request, name: string): string {
  const v = req.params[name];
  if (typeof v !== "string" || !isValidUid(v)) {
    throw new HttpError(400, `${name} "${String(v).slice(0, 80)}" is not a valid DICOM UID (digits and dots, at most 64 characters)`);
  }
  return v;
}

/** A study the caller may not see behaves exactly like a study that does not exist (404, not 403). */
export function assertStudyVisible(access: AccessScope, studyInstanceUID: string): void {
  if (access.allowedStudies && !access.allowedStudies.includes(studyInstanceUID)) {
    throw new HttpError(404, `no study ${studyInstanceUID} on this relay`);
  }
}

/** The study / series / instance a retrieve names, checked against what the caller may see. */
export function scopeOf(req: Request, res: Response): InstanceScope {
  const access = accessOf(res);
  const studyInstanceUID = uidParam(req, "study");
  assertStudyVisible(access, studyInstanceUID);
  return {
    studyInstanceUID,
    seriesInstanceUID: req.params.series !== undefined ? uidParam(req, "series") : undefined,
    sopInstanceUID: req.params.instance !== undefined ? uidParam(req, "instance") : undefined,
    allowedStudies: access.allowedStudies,
  };
}

/**
 * Who received instances retrieved whole by this request, for retention: the token's id; null for share links
 * (a radiologist viewing is not a delivery to the home PACS).
 */
export function recipientOf(res: Response): string | null {
  const p = res.locals.principal as { kind?: string; tokenId?: string | null } | undefined;
  if (p?.kind === "share") return null;
  return p?.tokenId ?? "anonymous";
}
