/**
 * QIDO-RS (PS3.18 10.6): searches answered from the index alone (no DICOM file is opened).
 */
import { Router, type Request, type Response } from "express";
import { parseQidoQuery, QidoQueryError } from "../dicom/qido.ts";
import type { QidoLevel } from "../dicom/qidoQuery.ts";
import { acceptsMediaType, parseAccept } from "../dicom/accept.ts";
import { HttpError } from "../http/errors.ts";
import { accessOf, assertStudyVisible, dicomwebRoot, uidParam, withRoot, type DicomwebServices } from "./context.ts";

export function qidoRoutes(svc: DicomwebServices): Router {
  const r = Router();
  const search = (level: QidoLevel) => async (req: Request, res: Response) => {
    const accept = parseAccept(req.get("accept"));
    if (!acceptsMediaType(accept, "application/dicom+json") && !acceptsMediaType(accept, "application/json")) {
      throw new HttpError(406, "QIDO-RS results are available as application/dicom+json only (XML is not supported)");
    }
    const access = accessOf(res);
    const studyInstanceUID = req.params.study !== undefined ? uidParam(req, "study") : undefined;
    const seriesInstanceUID = req.params.series !== undefined ? uidParam(req, "series") : undefined;
    if (studyInstanceUID) assertStudyVisible(access, studyInstanceUID);
    const params = new URL(req.originalUrl, "http://x").searchParams;
    let query;
    try {
      query = parseQidoQuery(level, { studyInstanceUID, seriesInstanceUID }, params, {
        defaultLimit: svc.config.dicomweb.defaultLimit,
        maxLimit: svc.config.dicomweb.maxLimit,
      });
    } catch (err) {
      if (err instanceof QidoQueryError) throw new HttpError(400, err.message);
      throw err;
    }
    const result = await svc.index.search(query, { allowedStudies: access.allowedStudies });
    const warnings: string[] = [];
    if (query.unsupportedKeys.length) {
      warnings.push(`299 dicom-relay "The following attributes are not supported for matching and were ignored: ${query.unsupportedKeys.join(", ")}"`);
    }
    if (query.ignoredParameters.length) {
      const names = query.ignoredParameters.map((n) => n.replace(/["\\\x00-\x1f\x7f-\uffff]/g, "?")).join(", ");
      warnings.push(`299 dicom-relay "The following query parameters are not DICOM attributes or QIDO-RS parameters and were ignored: ${names}"`);
    }
    if (warnings.length) res.set("Warning", warnings);
    const root = dicomwebRoot(req, svc.config);
    res.status(200).type("application/dicom+json").send(withRoot(JSON.stringify(result.matches), root));
  };
  r.get("/studies", search("study"));
  r.get("/series", search("series"));
  r.get("/instances", search("instance"));
  r.get("/studies/:study/series", search("series"));
  r.get("/studies/:study/instances", search("instance"));
  r.get("/studies/:study/series/:series/instances", search("instance"));
  return r;
}
