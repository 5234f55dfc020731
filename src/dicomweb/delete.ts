/**
 * DELETE of a study, series or instance (an admin route, not part of PS3.18's required services).
 * Index rows go first (readers stop seeing the data at once), then blobs no row points to.
 */
import { Router, type Request, type Response } from "express";
import { HttpError } from "../http/errors.ts";
import { deleteBlobIfUnreferenced } from "../storage/blobLocks.ts";
import { accessOf, assertStudyVisible, uidParam, type DicomwebServices } from "./context.ts";

export function deleteRoutes(svc: DicomwebServices): Router {
  const r = Router();
  const remove = async (req: Request, res: Response) => {
    if (!svc.config.admin.enableDelete) throw new HttpError(405, "deleting is disabled on this relay (admin.enableDelete)");
    const access = accessOf(res);
    if (!access.canDelete) throw new HttpError(403, "this credential may not delete studies (admin scope needed)");
    const studyInstanceUID = uidParam(req, "study");
    assertStudyVisible(access, studyInstanceUID);
    const scope = {
      studyInstanceUID,
      seriesInstanceUID: req.params.series !== undefined ? uidParam(req, "series") : undefined,
      sopInstanceUID: req.params.instance !== undefined ? uidParam(req, "instance") : undefined,
      includePending: true,
    };
    const removed = await svc.index.deleteInstances(scope);
    if (!removed.length) throw new HttpError(404, "nothing to delete: no such study, series or instance on this relay");
    let blobsRemoved = 0;
    for (const loc of removed) {
      try {
        if (await deleteBlobIfUnreferenced(svc.index, svc.store, loc.blobKey)) blobsRemoved++;
      } catch (err) {
        // the index no longer points at it: an orphan that fsck --repair removes
        svc.log.warn({ err, key: loc.blobKey }, "blob not removed after delete");
      }
    }
    svc.log.info({ ...scope, instances: removed.length, blobsRemoved }, "deleted");
    res.status(200).json({ deletedInstances: removed.length, deletedBlobs: blobsRemoved });
  };
  r.delete("/studies/:study", remove);
  r.delete("/studies/:study/series/:series", remove);
  r.delete("/studies/:study/series/:series/instances/:instance", remove);
  return r;
}
