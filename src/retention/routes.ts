/**
 * GET /api/studies/{study}/delivery: who pulled what and when, the policy in force and when the study will go.
 * PUT /api/studies/{study}/retention: the study's own policy. POST /api/admin/retention/sweep: the sweep now
 * ({"dryRun": true} by default: lists what would go). All admin. Thin: the service does the work.
 */
import express, { Router, type Request, type RequestHandler } from "express";
import { HttpError } from "../http/errors.ts";
import { actorOf, noteAudit } from "../access/middleware.ts";
import { isValidUid } from "../dicom/uids.ts";
import type { RetentionService } from "./service.ts";
import type { RetentionPolicy } from "./deliveryStore.ts";

const days = (v: unknown, key: string): number | null => {
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 36_500) throw new HttpError(400, `${key} is a whole number of days from 0 to 36500 (0: not by this rule), or null for the relay's setting`);
  return v;
};

/** A policy from JSON ({"afterDeliveryDays": 7, "afterArrivalDays": null}); the same shape a manifest's "retention" has. */
export function policyOf(b: unknown): RetentionPolicy {
  if (!b || typeof b !== "object" || Array.isArray(b)) throw new HttpError(400, 'the policy is a JSON object, e.g. {"afterDeliveryDays": 7, "afterArrivalDays": 30}');
  const o = b as Record<string, unknown>;
  for (const k of Object.keys(o)) if (k !== "afterDeliveryDays" && k !== "afterArrivalDays") throw new HttpError(400, `unknown field "${k}" in the retention policy: use afterDeliveryDays and afterArrivalDays`);
  return { afterDeliveryDays: days(o.afterDeliveryDays, "afterDeliveryDays"), afterArrivalDays: days(o.afterArrivalDays, "afterArrivalDays") };
}

export function retentionRouter(deps: { service: RetentionService; admin: RequestHandler }): Router {
  const { service, admin } = deps;
  const r = Router();
  const json = express.json({ limit: "16kb", type: ["application/json", "application/*+json"] });
  const study = (req: Request) => {
    const s = String(req.params.study);
    if (!isValidUid(s)) throw new HttpError(400, "the study is not a valid UID");
    return s;
  };
  r.get("/api/studies/:study/delivery", admin, async (req, res) => {
    noteAudit(res, { action: "study.delivery", studyInstanceUID: study(req) });
    const report = await service.delivery(study(req));
    if (!report) throw new HttpError(404, `the relay holds no study ${study(req)}`);
    res.set("Cache-Control", "no-store").json(report);
  });
  r.put("/api/studies/:study/retention", admin, json, async (req, res) => {
    const policy = policyOf(req.body);
    noteAudit(res, { action: "study.retention", studyInstanceUID: study(req), detail: `afterDeliveryDays ${policy.afterDeliveryDays ?? "relay"}, afterArrivalDays ${policy.afterArrivalDays ?? "relay"}` });
    if (!(await service.delivery(study(req)))) throw new HttpError(404, `the relay holds no study ${study(req)}`);
    await service.setPolicy(study(req), policy);
    res.json(await service.delivery(study(req)));
  });
  r.post("/api/admin/retention/sweep", admin, json, async (req, res) => {
    const b = (req.body ?? {}) as { dryRun?: unknown };
    if (b.dryRun !== undefined && typeof b.dryRun !== "boolean") throw new HttpError(400, "dryRun is true or false");
    const dryRun = b.dryRun !== false;
    noteAudit(res, { action: dryRun ? "retention.dry-run" : "retention.sweep" });
    const result = await service.sweep({ dryRun, actor: actorOf(res) });
    noteAudit(res, { detail: `${result.studies.length} study(ies) ${dryRun ? "would be deleted" : "deleted"}` });
    res.json(result);
  });
  return r;
}
