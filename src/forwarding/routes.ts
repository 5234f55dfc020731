/**
 * Forwarding status (admin scope), mounted at /api/forwarding:
 *   GET  /api/forwarding[?study=&transfer=&state=&rule=&limit=]   jobs, newest first, with per-state counts
 *   GET  /api/forwarding/jobs/{id}                                 one job and its instances (state, sends, last answer)
 *   POST /api/forwarding/jobs/{id}/retry                           failed instances of a job sent again
 */
import { Router } from "express";
import { HttpError } from "../http/errors.ts";
import { noteAudit } from "../access/middleware.ts";
import type { ForwardingService } from "./service.ts";
import type { JobState } from "./store.ts";

const STATES: readonly JobState[] = ["pending", "done", "failed"];

export function forwardingRouter(svc: ForwardingService): Router {
  const r = Router();
  const one = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);
  const jobId = (raw: unknown): number => {
    const s = String(raw);
    if (!/^[1-9][0-9]{0,15}$/.test(s)) throw new HttpError(400, `"${s.slice(0, 40)}" is not a job id (a positive integer)`);
    return Number(s);
  };
  r.get("/", (req, res) => {
    const q = req.query as Record<string, unknown>;
    const state = one(q.state);
    if (state && !STATES.includes(state as JobState)) throw new HttpError(400, `state must be one of ${STATES.join(", ")}`);
    const limit = one(q.limit);
    if (limit && !/^[1-9][0-9]{0,4}$/.test(limit)) throw new HttpError(400, "limit must be a whole number from 1 to 99999");
    noteAudit(res, { action: "forwarding.list", studyInstanceUID: one(q.study) ?? null });
    res.json({ jobs: svc.queue.listJobs({ study: one(q.study), transfer: one(q.transfer), state: state as JobState | undefined, rule: one(q.rule), limit: limit ? Number(limit) : undefined }) });
  });
  r.get("/jobs/:id", (req, res) => {
    const id = jobId(req.params.id);
    const job = svc.queue.getJob(id);
    noteAudit(res, { action: "forwarding.job", detail: `job ${id}`, studyInstanceUID: job?.studyInstanceUID ?? null });
    if (!job) throw new HttpError(404, `no forwarding job ${id}`);
    res.json({ ...job, instances: svc.queue.items(id) });
  });
  r.post("/jobs/:id/retry", (req, res) => {
    const id = jobId(req.params.id);
    const before = svc.queue.getJob(id);
    noteAudit(res, { action: "forwarding.retry", detail: `job ${id}`, studyInstanceUID: before?.studyInstanceUID ?? null });
    if (!before) throw new HttpError(404, `no forwarding job ${id}`);
    if (before.state === "done") throw new HttpError(409, `job ${id} is done: every instance was confirmed by the peer`);
    res.status(202).json(svc.retry(id));
  });
  return r;
}
