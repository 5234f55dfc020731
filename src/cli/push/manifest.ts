/**
 * What is declared to the relay for one study (the manifest: SOPInstanceUID, SHA-256, size per instance) and how
 * the instances still needed are packed into bundles. Pure: the same inputs always give the same plan, so a run
 * after a crash rebuilds the same bundles byte for byte.
 */
import crypto from "node:crypto";
import type { FoundInstance } from "./scan.ts";

export interface ManifestBody {
  label: string;
  instances: Array<{ sopInstanceUID: string; sha256: string; size: number; studyInstanceUID: string; seriesInstanceUID: string }>;
}

export function buildManifest(instances: FoundInstance[], label: string): ManifestBody {
  const sorted = [...instances].sort((a, b) => (a.sopInstanceUID < b.sopInstanceUID ? -1 : a.sopInstanceUID > b.sopInstanceUID ? 1 : 0));
  return {
    label: label.slice(0, 200),
    instances: sorted.map((i) => ({ sopInstanceUID: i.sopInstanceUID, sha256: i.sha256, size: i.size, studyInstanceUID: i.studyInstanceUID, seriesInstanceUID: i.seriesInstanceUID })),
  };
}

/** Identifies a manifest's content (not its label): a changed folder gets a new transfer. */
export function manifestKey(m: ManifestBody): string {
  const h = crypto.createHash("sha256");
  for (const i of m.instances) h.update(`${i.sopInstanceUID} ${i.sha256} ${i.size}\n`);
  return h.digest("hex");
}

export interface PlannedBundle {
  /** SOPInstanceUIDs in the order they are written */
  members: string[];
  /** sum of the members' sizes (before compression) */
  rawBytes: number;
}

/**
 * Packs the needed instances, in path order (series stay together), into bundles of at most maxBytes before
 * compression; an instance larger than maxBytes gets a bundle of its own.
 */
export function planBundles(needed: FoundInstance[], maxBytes: number): PlannedBundle[] {
  const ordered = [...needed].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const out: PlannedBundle[] = [];
  let cur: PlannedBundle | null = null;
  for (const i of ordered) {
    if (!cur || (cur.members.length > 0 && cur.rawBytes + i.size > maxBytes)) {
      cur = { members: [], rawBytes: 0 };
      out.push(cur);
    }
    cur.members.push(i.sopInstanceUID);
    cur.rawBytes += i.size;
  }
  return out;
}

/** The entry name of an instance inside a bundle: a label the relay shows in results, never a path. */
export const entryName = (sopInstanceUID: string) => `${sopInstanceUID}.dcm`;
