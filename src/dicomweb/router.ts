import { Router } from "express";
import type { DicomwebServices } from "./context.ts";
import { stowRoutes } from "./stow.ts";
import { qidoRoutes } from "./qido.ts";
import { wadoRoutes } from "./wado.ts";
import { renderedRoutes } from "./rendered.ts";
import { deleteRoutes } from "./delete.ts";

/** Everything under a DICOMweb root ({root}/studies ...). Mounted at /dicom-web and under share links. */
export function dicomwebRouter(svc: DicomwebServices): Router {
  const r = Router();
  r.use((_req, res, next) => {
    // clients and proxies must not cache patient data
    res.set("Cache-Control", "no-store");
    next();
  });
  r.use(stowRoutes(svc));
  r.use(qidoRoutes(svc));
  r.use(wadoRoutes(svc));
  r.use(renderedRoutes(svc));
  r.use(deleteRoutes(svc));
  return r;
}
