/**
 * STOW-RS (PS3.18 10.5): POST {root}/studies[/{study}], multipart/related; type="application/dicom".
 * Parts are streamed one by one into the ingest pipeline; nothing holds a whole part in memory.
 */
import { Router, type Request, type Response } from "express";
import { parseContentType, parseMultipartRelatedContentType, readMultipartParts, MultipartError } from "../dicom/multipart.ts";
import { FailureReason, errorComment } from "../dicom/failureReasons.ts";
import { acceptsMediaType, parseAccept } from "../dicom/accept.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import type { IngestResult } from "../ingest/types.ts";
import { HttpError, RETRY_AFTER_SECONDS } from "../http/errors.ts";
import { accessOf, dicomwebRoot, uidParam, type DicomwebServices } from "./context.ts";

/** instances of one STOW-RS request stored and indexed at the same time */
const STOW_CONCURRENCY = 4;

export function stowRoutes(svc: DicomwebServices): Router {
  const r = Router();
  const handler = async (req: Request, res: Response) => {
    const access = accessOf(res);
    if (!access.canStore) throw new HttpError(403, "this credential may read studies but not store them");
    const expectedStudy = req.params.study !== undefined ? uidParam(req, "study") : undefined;
    const accept = parseAccept(req.get("accept"));
    if (!acceptsMediaType(accept, "application/dicom+json") && !acceptsMediaType(accept, "application/json")) {
      throw new HttpError(406, "the STOW-RS response is available as application/dicom+json only");
    }
    let boundary: string;
    try {
      const ct = parseMultipartRelatedContentType(req.get("content-type") ?? "");
      boundary = ct.boundary;
    } catch (err) {
      if (err instanceof MultipartError) throw new HttpError(err.status, err.message);
      throw err;
    }

    // parts are read one after the other (a stream), but storing and indexing a spooled part overlaps
    // with reading the next: fsyncs dominate ingest time, and they run in parallel on the thread pool
    const pending: Promise<IngestResult>[] = [];
    const inflight = new Set<Promise<unknown>>();
    const opts = { expectedStudyInstanceUID: expectedStudy, source: "stow" };
    const results: IngestResult[] = [];
    try {
      for await (const part of readMultipartParts(req, boundary, {})) {
        const partType = parseContentType(part.headers["content-type"] ?? "application/dicom").mediaType;
        if (partType !== "application/dicom") {
          // the reader discards an unread part when the next one is asked for
          results.push({
            status: "failed",
            reason: FailureReason.CannotUnderstand,
            message: `a part of type ${partType} was sent; STOW-RS here takes application/dicom parts (Part-10 files)`,
          });
          continue;
        }
        const spooled = await svc.ingest.spool(part.body, opts);
        if ("status" in spooled) {
          pending.push(Promise.resolve(spooled));
          continue;
        }
        // never throws here: a spooled part must reach ingestSpool (which frees it); failures surface from pending
        while (inflight.size >= STOW_CONCURRENCY) await Promise.race(inflight).catch(() => undefined);
        const p = svc.ingest.ingestSpool(spooled, opts);
        const tracked = p.finally(() => inflight.delete(tracked));
        inflight.add(tracked);
        pending.push(p);
      }
      results.push(...(await Promise.all(pending)));
    } catch (err) {
      // let what was already spooled finish (or fail) before answering; nothing is left half-done
      results.push(...(await Promise.all(pending)));
      if (err instanceof MultipartError) {
        const stored = results.filter((x) => x.status !== "failed").length;
        throw new HttpError(err.status, `${err.message}${stored ? ` (${stored} instance(s) before the error were stored)` : ""}`);
      }
      throw err;
    }
    if (results.length === 0) throw new HttpError(400, "the request holds no DICOM parts");

    const root = dicomwebRoot(req, svc.config);
    const body = stowResponse(results, root, expectedStudy);
    const ok = results.filter((x) => x.status !== "failed").length;
    const failed = results.length - ok;
    const warned = results.filter((x) => x.status !== "failed" && x.warnings?.length);
    // PS3.18 10.5.3: 202 when some instances were stored with warnings or failed
    let status = failed === 0 && warned.length === 0 ? 200 : ok > 0 ? 202 : 409;
    if (ok === 0 && results.some((x) => x.status === "failed" && x.retryable)) {
      status = 503;
      res.set("Retry-After", RETRY_AFTER_SECONDS);
    }
    const warningHeaders: string[] = [];
    if (failed > 0) {
      const first = results.find((x) => x.status === "failed") as Extract<IngestResult, { status: "failed" }>;
      warningHeaders.push(`299 dicom-relay "${failed} of ${results.length} instance(s) failed; first: ${first.message.replace(/"/g, "'")}"`);
    }
    if (warned.length > 0) {
      const first = (warned[0] as { warnings: string[] }).warnings[0]!;
      warningHeaders.push(`299 dicom-relay "${warned.length} of ${results.length} instance(s) stored with a warning; first: ${first.replace(/"/g, "'")}"`);
    }
    if (warningHeaders.length) res.set("Warning", warningHeaders);
    svc.log.info({ stored: ok, failed, study: expectedStudy }, "STOW-RS request done");
    // the whole sentences: the response's Error Comments are cut to LO's 64 characters
    for (const x of results) if (x.status === "failed") svc.log.warn({ sopInstanceUID: x.sopInstanceUID ?? null, reason: `0x${x.reason.toString(16).toUpperCase().padStart(4, "0")}`, message: x.message }, "STOW-RS instance refused");
    res.status(status).type("application/dicom+json").send(JSON.stringify(body));
  };
  r.post("/studies", handler);
  r.post("/studies/:study", handler);
  return r;
}

/** The STOW-RS response data set (PS3.18 Table 10.5.3-1). */
export function stowResponse(results: IngestResult[], root: string, expectedStudy?: string): DicomJsonDataset {
  const ds: DicomJsonDataset = {};
  const studies = new Set(results.filter((x) => x.status !== "failed").map((x) => x.studyInstanceUID!));
  const study = expectedStudy ?? (studies.size === 1 ? [...studies][0] : undefined);
  if (study) ds["00081190"] = { vr: "UR", Value: [`${root}/studies/${study}`] };
  const referenced = results.filter((x) => x.status !== "failed");
  if (referenced.length) {
    ds["00081199"] = {
      vr: "SQ",
      Value: referenced.map((x) => {
        const item: DicomJsonDataset = {
          "00081150": { vr: "UI", Value: [x.sopClassUID] },
          "00081155": { vr: "UI", Value: [x.sopInstanceUID] },
          "00081190": { vr: "UR", Value: [`${root}/studies/${x.studyInstanceUID}/series/${x.seriesInstanceUID}/instances/${x.sopInstanceUID}`] },
        };
        if (x.warnings?.length) {
          // 0xB007: the warning form of 0xA900 (a file meta UID contradicting the data set was refused with 0xA900)
          item["00081196"] = { vr: "US", Value: [0xb007] };
          // a warning's words before the first ": " are its short form (LO holds 64 characters)
          item["00000902"] = { vr: "LO", Value: [errorComment(x.warnings[0]!.split(": ")[0]!)] };
        } else if (x.status === "already-stored") {
          // Warning Reason 0xB000 would mean coercion; an identical duplicate is plain success, noted in a comment
          // keep-first with other bytes: still success (the policy), but the sender learns its bytes were not kept
          item["00000902"] = { vr: "LO", Value: [x.keptOther ? "different bytes were stored before; kept those (keep-first)" : "already stored: identical bytes, nothing written"] };
        }
        return item;
      }),
    };
  }
  const failed = results.filter((x): x is Extract<IngestResult, { status: "failed" }> => x.status === "failed");
  if (failed.length) {
    ds["00081198"] = {
      vr: "SQ",
      Value: failed.map((x) => {
        const item: DicomJsonDataset = {};
        if (x.sopClassUID) item["00081150"] = { vr: "UI", Value: [x.sopClassUID] };
        if (x.sopInstanceUID) item["00081155"] = { vr: "UI", Value: [x.sopInstanceUID] };
        item["00081197"] = { vr: "US", Value: [x.reason] };
        // Error Comment: the sentence a person can act on, as far as LO's 64 characters allow (the log has it whole)
        item["00000902"] = { vr: "LO", Value: [errorComment(x.message)] };
        return item;
      }),
    };
  }
  return ds;
}
