/**
 * Retention: a relay is a waypoint, not an archive. A study is deleted N days after every one of its instances was
 * delivered (retrieved whole by WADO-RS with a token, sent by C-MOVE/C-GET, forwarded, or confirmed by storage
 * commitment), or N days after it last received an instance, delivered or not; per study (a transfer's manifest, or
 * an administrator) or for the whole relay (retention.*). The sweep runs on a timer, and on request as a dry run.
 * Deleting removes index rows first, then blobs no other row points to, then the study's share links and the
 * unfinished uploads of its transfers; it is audited.
 */
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import type { Index } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import { deleteBlobIfUnreferenced } from "../storage/blobLocks.ts";
import type { AuditTrail } from "../access/audit.ts";
import type { TokenRegistry } from "../access/tokens.ts";
import type { Delivery, DeliveryStore, DeliveryVia, RetentionPolicy, StudyArrival } from "./deliveryStore.ts";

const DAY_MS = 86_400_000;

export interface StudyDelivery {
  studyInstanceUID: string;
  instances: number;
  arrival: StudyArrival | null;
  /** when the last of the study's instances was first delivered; null while some instance was never delivered */
  deliveredAt: string | null;
  recipients: Array<{ recipient: string; via: DeliveryVia; instances: number; first: string; last: string }>;
  policy: RetentionPolicy & { source: "study" | "relay" };
  /** when the sweep will delete the study (null: never under the current policy) and why */
  deleteAt: string | null;
  reason: string | null;
}

/**
 * When a study is due (pure): the earlier of deliveredAt + afterDeliveryDays and lastArrivedAt + afterArrivalDays,
 * each only when set (> 0) and known.
 */
export function dueDate(f: { deliveredAt: string | null; lastArrivedAt: string | null }, p: RetentionPolicy): { at: string; reason: string } | null {
  const options: Array<{ at: number; reason: string }> = [];
  if (p.afterDeliveryDays && f.deliveredAt) options.push({ at: Date.parse(f.deliveredAt) + p.afterDeliveryDays * DAY_MS, reason: `${p.afterDeliveryDays} day(s) after every instance was delivered (${f.deliveredAt})` });
  if (p.afterArrivalDays && f.lastArrivedAt) options.push({ at: Date.parse(f.lastArrivedAt) + p.afterArrivalDays * DAY_MS, reason: `${p.afterArrivalDays} day(s) after it arrived (${f.lastArrivedAt})` });
  if (!options.length) return null;
  const first = options.reduce((a, b) => (b.at < a.at ? b : a));
  return { at: new Date(first.at).toISOString(), reason: first.reason };
}

/** Every current instance delivered at least once: when the last of them first was (pure). */
export function deliveredAt(instances: readonly string[], deliveries: readonly Delivery[]): string | null {
  if (!instances.length) return null;
  const first = new Map<string, string>();
  for (const d of deliveries) {
    const t = first.get(d.sopInstanceUID);
    if (!t || d.at < t) first.set(d.sopInstanceUID, d.at);
  }
  let latest = "";
  for (const sop of instances) {
    const t = first.get(sop);
    if (!t) return null;
    if (t > latest) latest = t;
  }
  return latest;
}

export interface RetentionDeps {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  deliveries: DeliveryStore;
  audit?: Pick<AuditTrail, "record">;
  tokens?: Pick<TokenRegistry, "list" | "revoke">;
  /** unfinished tus uploads of the transfers naming a study (the transfer service, started after retention) */
  uploads?: { removeUnfinishedUploadsOf(studyInstanceUID: string): Promise<number> };
}

export interface SweepResult {
  dryRun: boolean;
  now: string;
  studies: Array<{ studyInstanceUID: string; reason: string; dueAt: string; instances: number; deletedBlobs?: number; revokedShareLinks?: number; removedUploads?: number }>;
}

export class RetentionService {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<unknown> | null = null;
  private closed = false;

  constructor(private readonly deps: RetentionDeps) {}

  /** arrivals noted in this turn of the event loop, newest time per study: a STOW of many instances writes once per study */
  private arrivalsDue = new Map<string, string>();
  private arrivalsFlush: NodeJS.Immediate | null = null;

  /** An instance was stored: the study's arrival clock. */
  noteArrival(studyInstanceUID: string, at = new Date()): void {
    const iso = at.toISOString();
    const known = this.arrivalsDue.get(studyInstanceUID);
    if (!known || known < iso) this.arrivalsDue.set(studyInstanceUID, iso);
    this.arrivalsFlush ??= setImmediate(() => void this.writeArrivals());
  }

  /** Writes the arrivals noted so far (also before anything reads them). */
  private async writeArrivals(): Promise<void> {
    if (this.arrivalsFlush) clearImmediate(this.arrivalsFlush);
    this.arrivalsFlush = null;
    const due = [...this.arrivalsDue];
    this.arrivalsDue.clear();
    await Promise.all(due.map(([study, iso]) =>
      this.deps.deliveries.recordArrival(study, iso).catch((err: unknown) => this.deps.log.error({ err }, "retention: arrival not recorded"))));
  }

  /** Instances left the relay whole for a recipient. Never throws: delivery tracking must not fail a retrieve. */
  noteDelivered(items: ReadonlyArray<{ studyInstanceUID: string; sopInstanceUID: string }>, recipient: string, via: DeliveryVia, at = new Date()): void {
    if (!items.length) return;
    const iso = at.toISOString();
    void this.deps.deliveries
      .recordDeliveries(items.map((i) => ({ studyInstanceUID: i.studyInstanceUID, sopInstanceUID: i.sopInstanceUID, recipient, via, at: iso })))
      .catch((err: unknown) => this.deps.log.error({ err }, "retention: delivery not recorded"));
  }

  /** The policy in force for a study: its own, else the relay's. */
  async policyFor(studyInstanceUID: string): Promise<RetentionPolicy & { source: "study" | "relay" }> {
    const own = await this.deps.deliveries.policyOf(studyInstanceUID);
    const r = this.deps.config.retention;
    if (own) return { afterDeliveryDays: own.afterDeliveryDays ?? r.afterDeliveryDays, afterArrivalDays: own.afterArrivalDays ?? r.afterArrivalDays, source: "study" };
    return { afterDeliveryDays: r.afterDeliveryDays, afterArrivalDays: r.afterArrivalDays, source: "relay" };
  }

  setPolicy(studyInstanceUID: string, policy: RetentionPolicy): Promise<void> {
    return this.deps.deliveries.setPolicy(studyInstanceUID, policy);
  }

  /** Who pulled what and when, the policy, and when the study will go. Null when the relay holds no such study. */
  async delivery(studyInstanceUID: string): Promise<StudyDelivery | null> {
    const instances = await this.deps.index.listInstances({ studyInstanceUID, includePending: true });
    if (!instances.length) return null;
    const rows = await this.deps.deliveries.deliveriesOf(studyInstanceUID);
    await this.writeArrivals();
    const arrival = await this.deps.deliveries.arrivalOf(studyInstanceUID);
    const done = deliveredAt(instances.map((i) => i.sopInstanceUID), rows);
    const byRecipient = new Map<string, StudyDelivery["recipients"][number]>();
    for (const d of rows) {
      const key = `${d.recipient}\u0000${d.via}`;
      const e = byRecipient.get(key) ?? { recipient: d.recipient, via: d.via, instances: 0, first: d.at, last: d.at };
      e.instances++;
      if (d.at < e.first) e.first = d.at;
      if (d.at > e.last) e.last = d.at;
      byRecipient.set(key, e);
    }
    const policy = await this.policyFor(studyInstanceUID);
    const due = this.deps.config.retention.enabled ? dueDate({ deliveredAt: done, lastArrivedAt: arrival?.lastArrivedAt ?? null }, policy) : null;
    return {
      studyInstanceUID,
      instances: instances.length,
      arrival,
      deliveredAt: done,
      recipients: [...byRecipient.values()],
      policy,
      deleteAt: due?.at ?? null,
      reason: due?.reason ?? (this.deps.config.retention.enabled ? null : "retention is off on this relay (retention.enabled)"),
    };
  }

  /** Finds the studies due at `now` and deletes them (dryRun: only lists them). One sweep at a time. */
  async sweep(opts: { dryRun: boolean; now?: Date; actor?: string }): Promise<SweepResult> {
    while (this.running) await this.running.catch(() => {});
    const p = this.sweepOnce(opts);
    this.running = p;
    try {
      return await p;
    } finally {
      this.running = null;
    }
  }

  private async sweepOnce(opts: { dryRun: boolean; now?: Date; actor?: string }): Promise<SweepResult> {
    const now = opts.now ?? new Date();
    const result: SweepResult = { dryRun: opts.dryRun, now: now.toISOString(), studies: [] };
    await this.writeArrivals();
    for (const arrival of await this.deps.deliveries.arrivals()) {
      const report = await this.delivery(arrival.studyInstanceUID);
      if (!report) {
        // deleted by other means (DELETE, fsck): nothing left to hold
        if (!opts.dryRun) await this.deps.deliveries.forget(arrival.studyInstanceUID);
        continue;
      }
      if (!report.deleteAt || Date.parse(report.deleteAt) > now.getTime()) continue;
      const entry: SweepResult["studies"][number] = { studyInstanceUID: report.studyInstanceUID, reason: report.reason ?? "", dueAt: report.deleteAt, instances: report.instances };
      if (!opts.dryRun) Object.assign(entry, await this.deleteStudy(report.studyInstanceUID, report.reason ?? "", opts.actor ?? "system"));
      result.studies.push(entry);
    }
    if (!opts.dryRun && result.studies.length) this.deps.log.info({ deleted: result.studies.length }, "retention: studies deleted");
    return result;
  }

  private async deleteStudy(studyInstanceUID: string, reason: string, actor: string): Promise<{ deletedBlobs: number; revokedShareLinks: number; removedUploads: number }> {
    const { index, store, log } = this.deps;
    const removed = await index.deleteInstances({ studyInstanceUID, includePending: true });
    let deletedBlobs = 0;
    for (const loc of removed) {
      try {
        if (await deleteBlobIfUnreferenced(index, store, loc.blobKey)) deletedBlobs++;
      } catch (err) {
        log.warn({ err, key: loc.blobKey }, "retention: blob not removed (fsck --repair removes orphans)");
      }
    }
    // share links that open only this study have nothing left to open
    let revokedShareLinks = 0;
    if (this.deps.tokens) {
      for (const t of await this.deps.tokens.list({ kind: "share" })) {
        if (t.studies.length && t.studies.every((s) => s === studyInstanceUID)) {
          if (await this.deps.tokens.revoke(t.id, "retention")) revokedShareLinks++;
        }
      }
    }
    let removedUploads = 0;
    try {
      removedUploads = (await this.deps.uploads?.removeUnfinishedUploadsOf(studyInstanceUID)) ?? 0;
    } catch (err) {
      log.warn({ err, studyInstanceUID }, "retention: unfinished uploads of the study not removed (they expire)");
    }
    await this.deps.deliveries.forget(studyInstanceUID);
    this.deps.audit?.record({
      actor,
      action: "retention.delete",
      outcome: "success",
      studyInstanceUID,
      detail: `${reason}; ${removed.length} instance(s), ${deletedBlobs} blob(s) removed, ${revokedShareLinks} share link(s) revoked, ${removedUploads} unfinished upload(s) removed`,
    });
    return { deletedBlobs, revokedShareLinks, removedUploads };
  }

  start(): void {
    const r = this.deps.config.retention;
    if (!r.enabled || this.closed) return;
    const tick = () => {
      this.timer = setTimeout(() => {
        void this.sweep({ dryRun: false })
          .catch((err: unknown) => this.deps.log.error({ err }, "retention sweep failed"))
          .finally(() => {
            if (!this.closed) tick();
          });
      }, r.sweepIntervalMinutes * 60_000);
      this.timer.unref();
    };
    tick();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.running) await this.running.catch(() => {});
    await this.writeArrivals();
    await this.deps.deliveries.close();
  }
}
