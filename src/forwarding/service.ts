/**
 * Auto-forwarding: when a transfer becomes complete, every rule gets one job per study of it; a worker sends
 * the jobs' instances to the rules' peers, retrying with exponential backoff while a peer is down, and
 * resuming with the instances the peer has not confirmed yet. Nothing is queued before a transfer is complete.
 */
import path from "node:path";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import type { Index, InstanceLocation } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import type { AuditTrail } from "../access/audit.ts";
import { ForwardingStore, type ForwardJob } from "./store.ts";
import { createSender, type SendSession } from "./senders.ts";
import type { RetentionService } from "../retention/service.ts";
import { forEachBounded } from "../bounded.ts";

export interface ForwardingDeps {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  audit?: AuditTrail;
  /** delivery tracking for retention: a forwarded instance counts as delivered */
  retention?: Pick<RetentionService, "noteDelivered">;
}

/** Wait before attempt n+1 after n failed attempts: retrySeconds doubling, capped, with up to 10 % jitter. */
export function backoffMs(attempts: number, retrySeconds: number, maxRetrySeconds: number, random = Math.random): number {
  const base = Math.min(maxRetrySeconds, retrySeconds * 2 ** Math.max(0, attempts));
  return Math.round(base * 1000 * (1 + 0.1 * random()));
}

export class ForwardingService {
  readonly queue: ForwardingStore;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private closed = false;

  constructor(private readonly deps: ForwardingDeps) {
    this.queue = new ForwardingStore(path.join(deps.config.dataDir, "forwarding.sqlite"));
  }

  private get cfg() {
    return this.deps.config.forwarding;
  }

  start(): void {
    if (!this.cfg.enabled) return;
    this.schedule(0);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    // the send in flight is given a moment; what it did not finish is sent again after the restart
    if (this.running) await Promise.race([this.running.catch(() => {}), new Promise((r) => setTimeout(r, 10_000).unref())]);
    this.queue.close();
  }

  /** The transfer completion hook: one job per rule and study; idempotent. */
  async enqueueTransfer(transferId: string, items: ReadonlyArray<{ sopInstanceUID: string; studyInstanceUID: string | null }>): Promise<void> {
    if (!this.cfg.enabled || !this.cfg.rules.length) return;
    const instances: Array<{ studyInstanceUID: string; sopInstanceUID: string }> = [];
    for (const i of items) {
      const study = i.studyInstanceUID ?? (await this.deps.index.getInstance(i.sopInstanceUID, { includePending: true }))?.studyInstanceUID;
      if (study) instances.push({ studyInstanceUID: study, sopInstanceUID: i.sopInstanceUID });
    }
    const created = this.queue.enqueue(this.cfg.rules.map((r) => r.name), transferId, instances);
    if (created.length) {
      this.deps.log.info({ transferId, jobs: created.length, rules: this.cfg.rules.map((r) => r.name) }, "transfer complete: queued for forwarding");
      this.schedule(0);
    }
  }

  /** An administrator's retry of a failed job. */
  retry(jobId: number): ForwardJob | null {
    const job = this.queue.retry(jobId);
    if (job) this.schedule(0);
    return job;
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.running) {
        // a pass is running: look again right after it
        void this.running.then(() => this.schedule(0));
        return;
      }
      this.running = this.pass().catch((err) => {
        if (!this.closed) this.deps.log.error({ err }, "forwarding pass failed");
      }).finally(() => {
        this.running = null;
        this.scheduleNext();
      });
    }, Math.max(0, ms));
    this.timer.unref();
  }

  private scheduleNext(): void {
    if (this.closed) return;
    const next = this.queue.nextAttemptAt();
    const poll = this.cfg.pollSeconds * 1000;
    const due = next ? Math.max(0, new Date(next).getTime() - Date.now()) : poll;
    this.schedule(Math.min(due, poll));
  }

  /** Runs every due job once; a job that fails is rescheduled, so the loop ends. */
  private async pass(): Promise<void> {
    for (let n = 0; n < 10_000 && !this.closed; n++) {
      const job = this.queue.nextDue();
      if (!job) return;
      try {
        await this.runJob(job);
      } catch (err) {
        this.deps.log.error({ err, jobId: job.id }, "forwarding job failed unexpectedly");
        this.queue.scheduleRetry(job.id, new Date(Date.now() + backoffMs(job.attempts, this.cfg.retrySeconds, this.cfg.maxRetrySeconds)), (err as Error).message);
      }
    }
  }

  private async runJob(job: ForwardJob): Promise<void> {
    const { log } = this.deps;
    const rule = this.cfg.rules.find((r) => r.name === job.rule);
    const retryLater = (error: string) => {
      const wait = backoffMs(job.attempts, this.cfg.retrySeconds, this.cfg.maxRetrySeconds);
      this.queue.scheduleRetry(job.id, new Date(Date.now() + wait), error);
      log.warn({ jobId: job.id, rule: job.rule, study: job.studyInstanceUID, attempt: job.attempts + 1, retryInMs: wait, error }, "forwarding will be retried");
    };
    const pending = this.queue.items(job.id, "pending");
    if (!rule) {
      for (const i of pending) this.queue.markItemFailed(job.id, i.sopInstanceUID, null, `rule ${job.rule} is no longer configured`);
      this.finished(this.queue.finish(job.id));
      return;
    }
    const locations: InstanceLocation[] = [];
    for (const i of pending) {
      const loc = await this.deps.index.getInstance(i.sopInstanceUID);
      if (loc) locations.push(loc);
      else this.queue.markItemFailed(job.id, i.sopInstanceUID, null, "the instance is no longer stored (deleted)");
    }
    if (locations.length) {
      let session: SendSession;
      try {
        session = await createSender(rule, this.deps).open(locations);
      } catch (err) {
        retryLater((err as Error).message);
        return;
      }
      let retryError: string | null = null;
      // STOW-RS: several requests at once (one flow gets a small share of a long, lossy link); a DIMSE association
      // carries one C-STORE at a time. After a retryable failure no new send starts; those running finish.
      const width = rule.kind === "stow" ? this.cfg.concurrency : 1;
      try {
        await forEachBounded(
          locations,
          width,
          async (loc) => {
            this.queue.noteSending(job.id, loc.sopInstanceUID);
            const r = await session.send(loc);
            if (r.kind === "sent") {
              this.queue.markSent(job.id, loc.sopInstanceUID, r.status);
              this.deps.retention?.noteDelivered([loc], `rule:${job.rule}`, "forward");
            } else if (r.kind === "refused") this.queue.markItemFailed(job.id, loc.sopInstanceUID, r.status, r.error);
            else {
              this.queue.noteItemError(job.id, loc.sopInstanceUID, r.status, r.error);
              retryError ??= r.error;
            }
          },
          () => {
            if (this.closed) retryError ??= "the relay is stopping";
            return retryError !== null;
          },
        );
      } finally {
        await session.close().catch(() => {});
      }
      if (retryError) {
        retryLater(retryError);
        return;
      }
    }
    this.finished(this.queue.finish(job.id));
  }

  private finished(job: ForwardJob): void {
    const ok = job.state === "done";
    this.deps.log[ok ? "info" : "warn"]({ jobId: job.id, rule: job.rule, study: job.studyInstanceUID, counts: job.counts }, ok ? "study forwarded" : "study forwarded with refusals");
    this.deps.audit?.record({
      actor: "system",
      action: "forward.study",
      outcome: ok ? "success" : "failure",
      studyInstanceUID: job.studyInstanceUID,
      detail: `rule ${job.rule}; transfer ${job.transferId}; ${job.counts.sent} sent, ${job.counts.failed} refused; ${job.attempts} attempt(s)`,
    });
  }
}
