/**
 * Transfer manifests: what a sender declares before uploading (SOPInstanceUID, SHA-256, size per instance), and the
 * pure rules that follow from it (is the transfer complete, which manifest item an arriving entry belongs to).
 */
import { z } from "zod";
import type { ItemState, TransferItem } from "./transferStore.ts";

/** PS3.5 9.1: digits and dots, components without leading zeros, at most 64 characters. */
const UID = /^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$/;
const uid = z.string().max(64).regex(UID, "must be a DICOM UID (digits and dots, at most 64 characters)");

const manifestItem = z
  .object({
    sopInstanceUID: uid,
    sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, "must be the SHA-256 of the file's bytes as 64 hex digits"),
    size: z.number().int().min(0),
    studyInstanceUID: uid.optional(),
    seriesInstanceUID: uid.optional(),
  })
  .strict();

const retentionDays = z.number().int().min(0).max(36_500).nullable().optional();

export const manifestSchema = z
  .object({
    /** free text shown in GET (e.g. the sender's study description or ticket number); never interpreted */
    label: z.string().max(200).optional(),
    /** how long the relay keeps the studies of this transfer (days; null or absent: the relay's setting) */
    retention: z.object({ afterDeliveryDays: retentionDays, afterArrivalDays: retentionDays }).strict().optional(),
    instances: z.array(manifestItem).min(1, "must list at least one instance"),
  })
  .strict();

export type ManifestInstance = z.infer<typeof manifestItem>;
export interface Manifest {
  label?: string;
  retention?: { afterDeliveryDays?: number | null; afterArrivalDays?: number | null };
  instances: ManifestInstance[];
}

export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ManifestError";
  }
}

/** Validates a manifest body; throws ManifestError with a sentence naming the first bad field. */
export function parseManifest(body: unknown, maxInstances: number): Manifest {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ManifestError('the manifest must be a JSON object {"instances": [{"sopInstanceUID", "sha256", "size"}, ...]}');
  }
  const list = (body as { instances?: unknown }).instances;
  // checked before validation so a huge list is not walked item by item only to be refused
  if (Array.isArray(list) && list.length > maxInstances) {
    throw new ManifestError(`the manifest lists ${list.length} instances; the relay accepts at most ${maxInstances} per transfer (split it into several transfers)`);
  }
  const result = manifestSchema.safeParse(body);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const at = issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "");
    throw new ManifestError(`the manifest is invalid at ${at || "the top level"}: ${issue.message}`);
  }
  const seen = new Set<string>();
  for (const [i, it] of result.data.instances.entries()) {
    if (seen.has(it.sopInstanceUID)) {
      throw new ManifestError(`the manifest lists SOPInstanceUID ${it.sopInstanceUID} twice (instances[${i}]); each instance must appear once`);
    }
    seen.add(it.sopInstanceUID);
  }
  return {
    label: result.data.label,
    ...(result.data.retention ? { retention: result.data.retention } : {}),
    instances: result.data.instances.map((it) => ({ ...it, sha256: it.sha256.toLowerCase() })),
  };
}

/** What the relay already holds for a SOPInstanceUID (from Index.getInstance with includePending). */
export interface HeldInstance {
  sha256: string;
}

/** The initial state of each manifest item: present when identical bytes are already held, else missing. */
export function initialItems(manifest: Manifest, held: Map<string, HeldInstance>, now: string): TransferItem[] {
  return manifest.instances.map((m) => {
    const have = held.get(m.sopInstanceUID);
    const conflict = have !== undefined && have.sha256 !== m.sha256;
    return {
      sopInstanceUID: m.sopInstanceUID,
      sha256: m.sha256,
      size: m.size,
      studyInstanceUID: m.studyInstanceUID ?? null,
      seriesInstanceUID: m.seriesInstanceUID ?? null,
      state: have && !conflict ? "present" : "missing",
      // a conflict is not a failure yet: with conflict policy "replace" the upload will succeed
      // never the stored hash: a sender who learnt it could declare it and have the instance counted as already held
      reason: conflict ? `the relay already holds SOPInstanceUID ${m.sopInstanceUID} with different bytes than the manifest declares` : null,
      failureCode: null,
      updatedAt: now,
    };
  });
}

export interface TransferProgress {
  total: number;
  present: number;
  received: number;
  missing: number;
  failed: number;
  /** every instance is present or received */
  complete: boolean;
}

export function progressOf(counts: Record<ItemState, number>): TransferProgress {
  const total = counts.present + counts.received + counts.missing + counts.failed;
  return { total, ...counts, complete: total > 0 && counts.missing === 0 && counts.failed === 0 };
}
