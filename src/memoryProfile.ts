/**
 * How much memory the relay server's JavaScript heap may take to go faster (server.memoryProfile).
 *
 * Measured with `npm run bench` (docs/operations.md, Memory): with V8's defaults the heap grows to ~95 MB during a
 * STOW-RS of many small instances (a young generation of up to 16 MB semi-spaces, the old generation grown in big
 * steps), and the relay's peak RSS reaches 200-250 MB; "lean" keeps it near 130 MB for the same work.
 * The flags are set at run time (node:v8 setFlagsFromString), so `npm start`, the CLI and the container start the
 * relay the same way, without a wrapper process. bin/dicom-relay.js sets the lean ones before it loads the relay (the
 * loading itself then grows the heap less); `serve` then applies the configured profile, either way.
 */
import v8 from "node:v8";

export type MemoryProfile = "lean" | "node-defaults";

/**
 * lean: a young generation that stays at its initial 1 MB semi-space instead of growing to 16 MB (the short-lived
 * objects of each instance are collected by small, frequent scavenges), and an old generation grown by half at a
 * time rather than by V8's factor of up to 4. Measured (relay CPU seconds of the same STOW-RS work, interleaved runs
 * on a shared machine): the CT the same as V8's defaults, the small instances 0-15 % more; growing the old
 * generation by 10-25 % saves another ~10 MB but costs 10-25 % more CPU, --optimize-for-size ~40 % more.
 * node-defaults: the same flags at the values Node starts with (V8 11 defaults; 0 = V8's own growth factors).
 */
export const MEMORY_PROFILE_FLAGS: Record<MemoryProfile, readonly string[]> = {
  lean: ["--semi-space-growth-factor=1", "--heap-growing-percent=50"],
  "node-defaults": ["--semi-space-growth-factor=2", "--heap-growing-percent=0"],
};

/** Sets the profile's V8 flags in this process; returns them (for the start-up log). */
export function applyMemoryProfile(profile: MemoryProfile): readonly string[] {
  const flags = MEMORY_PROFILE_FLAGS[profile];
  for (const f of flags) v8.setFlagsFromString(f);
  return flags;
}
