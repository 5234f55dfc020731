/**
 * Resume state of one push, keyed by source folder + relay: the per-file scan results, each study's transfer id,
 * the bundle plan, tus upload URLs and what already arrived. Written atomically (temp file + rename) after every
 * step, so a crash, a closed laptop or a cut link loses at most the step in progress.
 *
 *   <cacheDir>/<key>/state.json      this file, without the per-file scan results
 *   <cacheDir>/<key>/files.json      the per-file scan results (written once per run: it can be large)
 *   <cacheDir>/<key>/finished.jsonl  a line per bundle the relay has read (its record, taken out of state.json)
 *   <cacheDir>/<key>/bundles/        bundles being sent (deleted once the relay has them)
 *   <cacheDir>/<key>/zip/            a .zip source, unpacked
 *   <cacheDir>/<key>/lock            pid of the push running now
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { ScanCache } from "./scan.ts";

export const STATE_VERSION = 1;

export interface BundleState {
  /** file name in the bundles folder, also the tus filename */
  name: string;
  members: string[];
  rawBytes: number;
  /** set once built: size and SHA-256 of the bundle's bytes (a rebuild must match to resume its upload) */
  size?: number;
  sha256?: string;
  /** gzip level it is built with (0: stored, for members already compressed); absent: 6, as before this was recorded */
  level?: number;
  uploadUrl?: string;
  /**
   * the bundle split over several connections (tus Concatenation): byte ranges, each a partial upload; every URL is
   * saved here before its bytes flow
   */
  parts?: Array<{ start: number; end: number; uploadUrl?: string; done?: boolean }>;
  /** the final (concatenated) upload of the parts, once created */
  finalUrl?: string;
  /** the relay has read the bundle (result below) */
  done?: boolean;
  result?: { stored: number; alreadyStored: number; failed: number; failures: Array<{ name: string; sopInstanceUID?: string; reason?: string; message?: string }>; error: string | null };
}

export interface StudyState {
  manifestKey: string;
  transferId: string;
  /** bundles not read by the relay yet (a bundle leaves this list once its result is in: the state stays small) */
  bundles: BundleState[];
  /** the number of the next bundle (names never repeat within a transfer) */
  nextBundle?: number;
  /** what this run's finished bundles carried (the summary's "stored now") */
  sent?: { bundles: number; stored: number; alreadyStored: number; failed: number };
  receiptFile?: string;
  /** documents attached: file path -> SOPInstanceUID of the document on the relay */
  documents: Record<string, string>;
}

export interface PushState {
  version: number;
  source: string;
  relay: string;
  createdAt: string;
  updatedAt: string;
  /** a .zip source was unpacked completely into zip/ */
  zipExtracted?: boolean;
  files: ScanCache;
  studies: Record<string, StudyState>;
}

/** The state folder of this source + relay (the token is not part of it: a new token resumes the same push). */
export function stateDirFor(cacheDir: string, source: string, relay: string): string {
  const key = crypto.createHash("sha256").update(`${path.resolve(source)}\n${relay}`).digest("hex").slice(0, 24);
  return path.join(cacheDir, key);
}

export function loadState(dir: string, source: string, relay: string): PushState {
  const file = path.join(dir, "state.json");
  const state = loadStudies(file, source, relay);
  try {
    state.files = JSON.parse(fs.readFileSync(path.join(dir, "files.json"), "utf8")) as ScanCache;
  } catch {
    // no scan results yet (or damaged): every file is read again
    state.files = {};
  }
  return state;
}

function loadStudies(file: string, source: string, relay: string): PushState {
  const fresh = (): PushState => {
    const now = new Date().toISOString();
    return { version: STATE_VERSION, source: path.resolve(source), relay, createdAt: now, updatedAt: now, files: {}, studies: {} };
  };
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return fresh();
  }
  try {
    const s = JSON.parse(text) as PushState;
    if (s.version !== STATE_VERSION || s.source !== path.resolve(source) || s.relay !== relay) return fresh();
    return s;
  } catch {
    // a damaged state file (disk full at the wrong moment): start over; the relay's manifest check skips what it has
    return fresh();
  }
}

/** Saves the studies' state (after every step); with files: true also the per-file scan results. */
export function saveState(dir: string, state: PushState, opts: { files?: boolean } = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  state.updatedAt = new Date().toISOString();
  const { files, ...rest } = state;
  writeAtomic(path.join(dir, "state.json"), JSON.stringify({ ...rest, files: {} }));
  if (opts.files) writeAtomic(path.join(dir, "files.json"), JSON.stringify(files));
}

/**
 * Written whole to a temporary file, then renamed over the old one: a push killed at any moment leaves the old
 * state or the new one, never a torn file. Not fsynced: the state is saved several times per bundle, and an fsync
 * each time held the push's only thread for 2.4 s of a 15 s push (profiled on a busy disk), stalling every
 * connection. What a power cut could lose (the last saves) costs bytes sent again, never correctness: the relay's
 * manifest says what it holds, and an upload URL that was not saved is made again.
 */
/**
 * A finished bundle's record, appended once (state.json no longer carries it): what was sent, over which uploads,
 * with the relay's counts. Read by nothing in the push; kept for whoever looks into a transfer later.
 */
export function recordFinishedBundle(dir: string, study: string, transferId: string, bundle: BundleState): void {
  fs.appendFileSync(path.join(dir, "finished.jsonl"), JSON.stringify({ at: new Date().toISOString(), study, transferId, ...bundle }) + "\n", { mode: 0o600 });
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

export class LockedError extends Error {}

/** One push per source + relay at a time; a lock left by a killed process (its pid is gone) is taken over. */
export function acquireLock(dir: string): () => void {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, "lock");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: "wx" });
      return () => fs.rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const pid = Number(fs.readFileSync(file, "utf8"));
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new LockedError(`another dicom-relay push of this folder to this relay is running (process ${pid}); wait for it to finish`);
      }
      fs.rmSync(file, { force: true });
    }
  }
  throw new LockedError("could not take the push lock; try again");
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
