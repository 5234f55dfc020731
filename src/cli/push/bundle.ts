/**
 * Writes one bundle (a tar.gz of instance files, one gzip member per instance: entries.ts) to the cache,
 * deterministically: a fixed mtime and the gzip level given, so a bundle rebuilt after a crash has the same bytes and
 * its tus upload resumes at the old offset. Members compressed ahead are taken from the AheadCompressor; the others are
 * streamed from the source one after the other; nothing larger than one compressed instance is held in memory.
 */
import crypto from "node:crypto";
import { writeMembers, type AheadCompressor, type CompressionMeter } from "./entries.ts";

export interface BundleMember {
  name: string;
  path: string;
  size: number;
  /** the key the ahead compressor knows it by (the SOPInstanceUID); default: the name */
  key?: string;
}

export interface BuiltBundle {
  file: string;
  size: number;
  sha256: string;
}

export async function writeBundle(file: string, members: BundleMember[], level = 6, o: { ahead?: AheadCompressor; meter?: CompressionMeter } = {}): Promise<BuiltBundle> {
  const hash = crypto.createHash("sha256");
  let size = 0;
  // the level is the bundle's (saved in the state before it is built), so a rebuild gives the same bytes
  await writeMembers(
    file,
    members.map((m) => ({ key: m.key ?? m.name, source: { name: m.name, path: m.path, size: m.size } })),
    level,
    {
      ...o,
      onChunk: (c) => {
        hash.update(c);
        size += c.length;
      },
    },
  );
  return { file, size, sha256: hash.digest("hex") };
}
