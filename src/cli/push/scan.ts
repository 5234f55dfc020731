/**
 * Finding the DICOM instances of a CD/DVD/USB export by their content, not their names (IM00001 without an
 * extension, nested folders), and saying plainly what everything else is. Headers are read with the project's
 * Part-10 reader by positional reads (bulk data is never read); the SHA-256 of each instance is streamed.
 */
import { forEachBounded } from "../../bounded.ts";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { fileSource, readPart10 } from "../../dicom/part10.ts";
import { InstanceRejectedError } from "../../dicom/failureReasons.ts";
import { FileHasher, sha256Open } from "./hashWorker.ts";
import type { DicomJsonDataset } from "../../dicom/types.ts";

/** MediaStorageSOPClassUID of a DICOMDIR (Media Storage Directory Storage, PS3.10) */
export const MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10";

export interface FoundInstance {
  path: string;
  size: number;
  mtimeMs: number;
  sha256: string;
  sopInstanceUID: string;
  sopClassUID: string;
  /** absent in scan results cached by older versions */
  transferSyntaxUID?: string;
  studyInstanceUID: string;
  seriesInstanceUID: string;
  patientName: string;
  patientID: string;
  studyDate: string;
  studyDescription: string;
  modality: string;
}

export type OtherKind = "pdf" | "jpeg" | "png" | "text" | "empty" | "bare-dataset" | "other";

export interface OtherFile {
  path: string;
  size: number;
  kind: OtherKind;
  /** what it is and what happens to it, for a person */
  sentence: string;
}

export interface BrokenFile {
  path: string;
  size: number;
  reason: string;
}

export interface ScanResult {
  root: string;
  instances: FoundInstance[];
  /** DICOMDIR files (media directories, not instances) */
  dicomdirs: string[];
  /** files a DICOMDIR lists that are not on the medium */
  missingFromDicomdir: string[];
  others: OtherFile[];
  broken: BrokenFile[];
  /** second copies of an instance (same SOPInstanceUID, same bytes): sent once */
  duplicates: { path: string; sameAs: string }[];
  /** hidden files and system folders skipped without reading (.DS_Store, __MACOSX ...) */
  hiddenSkipped: number;
}

/** Per-file results of an earlier run, reused when path, size and mtime are unchanged. */
export type ScanCache = Record<string, { size: number; mtimeMs: number; instance?: FoundInstance; other?: OtherFile; broken?: BrokenFile; dicomdir?: boolean }>;

// ---------------------------------------------------------------- pure classification

export type HeadKind = { kind: "part10" } | { kind: "dicomdir" } | { kind: OtherKind };

/**
 * What a file is from its first bytes (at least 512 when the file has them): a Part-10 file ("DICM" at 128; a
 * DICOMDIR by its MediaStorageSOPClassUID), a PDF, a JPEG, a PNG, text, or something else.
 */
export function classifyHead(head: Buffer, size: number): HeadKind {
  if (size === 0) return { kind: "empty" };
  if (head.length >= 132 && head.toString("latin1", 128, 132) === "DICM") {
    return mediaStorageSopClass(head) === MEDIA_DIRECTORY_SOP_CLASS ? { kind: "dicomdir" } : { kind: "part10" };
  }
  if (head.toString("latin1", 0, 5) === "%PDF-") return { kind: "pdf" };
  if (head.length >= 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return { kind: "jpeg" };
  if (head.length >= 8 && head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return { kind: "png" };
  // a data set without preamble and "DICM" (old media): starts with a group 0008 element in little endian
  if (head.length >= 8 && head.readUInt16LE(0) === 0x0008 && head.readUInt16LE(2) <= 0x0020) return { kind: "bare-dataset" };
  if (looksLikeText(head)) return { kind: "text" };
  return { kind: "other" };
}

function looksLikeText(head: Buffer): boolean {
  const s = head.subarray(0, 512);
  let bad = 0;
  for (const b of s) if (b === 0 || (b < 9) || (b > 13 && b < 32 && b !== 27)) bad++;
  return bad === 0 && Buffer.from(s.toString("utf8"), "utf8").length > 0;
}

/** (0002,0002) from the file meta group (explicit VR little endian, right after "DICM"); "" when absent. */
export function mediaStorageSopClass(head: Buffer): string {
  let at = 132;
  // each turn moves past one element; the meta group is small and the buffer bounds the loop
  while (at + 8 <= head.length) {
    const group = head.readUInt16LE(at);
    if (group !== 0x0002) return "";
    const element = head.readUInt16LE(at + 2);
    const vr = head.toString("latin1", at + 4, at + 6);
    let length: number;
    let valueAt: number;
    if (["OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV"].includes(vr)) {
      if (at + 12 > head.length) return "";
      length = head.readUInt32LE(at + 8);
      valueAt = at + 12;
    } else {
      length = head.readUInt16LE(at + 6);
      valueAt = at + 8;
    }
    if (element === 0x0002) return head.toString("latin1", valueAt, Math.min(head.length, valueAt + length)).replace(/[\0 ]+$/, "");
    if (length === 0xffffffff) return "";
    at = valueAt + length;
  }
  return "";
}

/** The sentence shown for a file that is not a DICOM instance. */
export function otherSentence(kind: OtherKind, documents: boolean): string {
  const attach = documents ? "it will be attached to the study as a document" : "add --documents to attach it to the study as a document";
  switch (kind) {
    case "pdf":
      return `a PDF document, not DICOM imaging: a radiologist cannot use it as images (${attach})`;
    case "jpeg":
      return `a JPEG picture, not DICOM imaging: a radiologist cannot use it as images (${attach})`;
    case "png":
      return `a PNG picture, not DICOM imaging: a radiologist cannot use it as images (${attach})`;
    case "text":
      return "a text file, not DICOM: not sent";
    case "empty":
      return "an empty file: not sent";
    case "bare-dataset":
      return "looks like DICOM data without the standard file header (old media format): the relay accepts DICOM Part-10 files only; ask for a new export";
    default:
      return "not a DICOM file: not sent (viewer programs, autorun files and other content of the disc are not needed)";
  }
}

/** The files a DICOMDIR lists: every ReferencedFileID (0004,1500), components joined with "/". */
export function referencedFiles(dicomdir: Buffer): string[] {
  const out: string[] = [];
  const needle = Buffer.from([0x04, 0x00, 0x00, 0x15, 0x43, 0x53]); // (0004,1500) CS, explicit VR little endian
  let at = dicomdir.indexOf(needle, 132);
  // each turn moves past one match; indexOf bounds the loop
  while (at >= 0 && at + 8 <= dicomdir.length) {
    const length = dicomdir.readUInt16LE(at + 6);
    const value = dicomdir.toString("latin1", at + 8, Math.min(dicomdir.length, at + 8 + length)).replace(/[\0 ]+$/, "");
    if (value) out.push(value.split("\\").join("/"));
    at = dicomdir.indexOf(needle, at + 8 + length);
  }
  return out;
}

// ---------------------------------------------------------------- reading files

const str = (ds: DicomJsonDataset, tag: string): string => {
  const v = ds[tag]?.Value?.[0];
  if (typeof v === "string") return v;
  if (typeof v === "number") return String(v);
  if (v && typeof v === "object") {
    // PN: "Alphabetic=Ideographic" as written in DICOM, so 王^小东 shows beside Wang^XiaoDong
    const pn = v as { Alphabetic?: string; Ideographic?: string };
    return [pn.Alphabetic, pn.Ideographic].filter(Boolean).join("=");
  }
  return "";
};

const HEADER_OPTS = { maxHeaderBytes: 64 * 1024 * 1024, bulkDataThreshold: 1024 };

/** Files examined at once: reads wait on the disk, hashing and parsing on the CPU; several overlap the two. */
const SCAN_CONCURRENCY = 4;
/** folders of at least this many files hash on worker threads (hashWorker.ts) */
const HASH_THREAD_FROM_FILES = 32;
type FileVerdict = { instance: FoundInstance } | { other: OtherFile } | { broken: BrokenFile } | { dicomdir: true };

async function examine(file: string, st: fs.Stats, documents: boolean, hasher: FileHasher | null): Promise<FileVerdict> {
  const fd = await fsp.open(file, "r");
  try {
    const head = Buffer.alloc(Math.min(st.size, 4096));
    await fd.read(head, 0, head.length, 0);
    const c = classifyHead(head, st.size);
    if (c.kind === "dicomdir") return { dicomdir: true };
    if (c.kind !== "part10") return { other: { path: file, size: st.size, kind: c.kind, sentence: otherSentence(c.kind, documents) } };
    // the whole file's hash on a worker thread while this one parses the header
    const hashing = hasher ? hasher.hash(file, st.size) : null;
    hashing?.catch(() => undefined); // awaited below, or not needed (a broken header)
    let parsed;
    try {
      parsed = await readPart10(fileSource(fd, st.size), HEADER_OPTS);
    } catch (err) {
      if (err instanceof InstanceRejectedError) return { broken: { path: file, size: st.size, reason: err.message } };
      return { broken: { path: file, size: st.size, reason: `could not be read: ${(err as Error).message}` } };
    }
    const ds = parsed.dataset;
    return {
      instance: {
        path: file,
        size: st.size,
        mtimeMs: st.mtimeMs,
        sha256: await (hashing ?? sha256Open(fd, st.size)),
        sopInstanceUID: parsed.sopInstanceUID,
        sopClassUID: parsed.sopClassUID,
        transferSyntaxUID: parsed.transferSyntaxUID,
        studyInstanceUID: parsed.studyInstanceUID,
        seriesInstanceUID: parsed.seriesInstanceUID,
        patientName: str(ds, "00100010"),
        patientID: str(ds, "00100020"),
        studyDate: str(ds, "00080020"),
        studyDescription: str(ds, "00081030"),
        modality: str(ds, "00080060"),
      },
    };
  } finally {
    await fd.close();
  }
}

const HIDDEN_DIRS = new Set(["__MACOSX", "$RECYCLE.BIN", "System Volume Information"]);
const MAX_FILES = 2_000_000;

/** Every regular file under root, in a stable order (sorted names), hidden ones counted and left out. */
async function listFiles(root: string): Promise<{ files: string[]; hidden: number }> {
  const files: string[] = [];
  let hidden = 0;
  // a single file given on the command line
  if ((await fsp.stat(root)).isFile()) return { files: [root], hidden: 0 };
  const stack = [root];
  // each turn reads one directory; MAX_FILES bounds the walk
  while (stack.length) {
    const dir = stack.pop()!;
    const entries = (await fsp.readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const subdirs: string[] = [];
    for (const e of entries) {
      if (e.name.startsWith(".") || HIDDEN_DIRS.has(e.name) || /^(Thumbs\.db|desktop\.ini)$/i.test(e.name)) {
        hidden++;
        continue;
      }
      const p = path.join(dir, e.name);
      if (e.isDirectory()) subdirs.push(p);
      else if (e.isFile()) files.push(p);
      if (files.length > MAX_FILES) throw new Error(`more than ${MAX_FILES} files under ${root}; send one study folder at a time`);
    }
    stack.push(...subdirs.reverse());
  }
  return { files, hidden };
}

export interface ScanOptions {
  documents: boolean;
  cache?: ScanCache;
  /** called after each file (for a progress line) */
  onFile?: (done: number, total: number) => void;
  /** stops the reading (its reason is thrown): the relay check running beside it failed */
  signal?: AbortSignal;
}

/** One file's verdict: from the cache of an earlier run when size and mtime are unchanged, else read. */
async function examineCached(file: string, opts: ScanOptions, hasher: FileHasher | null): Promise<{ st: fs.Stats; verdict: FileVerdict } | { unreadable: string }> {
  let st: fs.Stats;
  try {
    st = await fsp.stat(file);
  } catch (err) {
    return { unreadable: `could not be read: ${(err as Error).message}` };
  }
  const old = opts.cache?.[file];
  if (old && old.size === st.size && old.mtimeMs === st.mtimeMs && (old.instance || old.other || old.broken || old.dicomdir)) {
    return { st, verdict: old.instance ? { instance: old.instance } : old.other ? { other: { ...old.other, sentence: otherSentence(old.other.kind, opts.documents) } } : old.broken ? { broken: old.broken } : { dicomdir: true } };
  }
  try {
    return { st, verdict: await examine(file, st, opts.documents, hasher) };
  } catch (err) {
    return { st, verdict: { broken: { path: file, size: st.size, reason: `could not be read: ${(err as Error).message}` } } };
  }
}

/** Reads a folder (or the folder of a DICOMDIR). Never throws for a bad file: it is listed with its reason. */
export async function scanFolder(root: string, opts: ScanOptions): Promise<{ result: ScanResult; cache: ScanCache }> {
  const { files, hidden } = await listFiles(root);
  const cache: ScanCache = {};
  const result: ScanResult = { root, instances: [], dicomdirs: [], missingFromDicomdir: [], others: [], broken: [], duplicates: [], hiddenSkipped: hidden };
  const bySop = new Map<string, FoundInstance>();
  // examined several at a time; the verdicts are then taken in the files' order (the first of two copies wins)
  const examined: Array<{ st: fs.Stats; verdict: FileVerdict } | { unreadable: string }> = new Array(files.length);
  let done = 0;
  const indexes = files.map((_, i) => i);
  // a worker thread costs a few tens of ms to start: worth it for a folder, not for a handful of files
  const hasher = files.length >= HASH_THREAD_FROM_FILES ? new FileHasher() : null;
  try {
    await forEachBounded(indexes, SCAN_CONCURRENCY, async (i) => {
      const file = files[i]!;
      examined[i] = await examineCached(file, opts, hasher);
      opts.onFile?.(++done, files.length);
    }, () => !!opts.signal?.aborted);
  } finally {
    await hasher?.close();
  }
  opts.signal?.throwIfAborted();
  for (const [i, file] of files.entries()) {
    const e = examined[i]!;
    if ("unreadable" in e) {
      result.broken.push({ path: file, size: 0, reason: e.unreadable });
      continue;
    }
    const { st, verdict } = e;
    cache[file] = { size: st.size, mtimeMs: st.mtimeMs, ...verdict };
    if ("dicomdir" in verdict) result.dicomdirs.push(file);
    else if ("other" in verdict) result.others.push(verdict.other);
    else if ("broken" in verdict) result.broken.push(verdict.broken);
    else {
      const inst = verdict.instance;
      const first = bySop.get(inst.sopInstanceUID);
      if (!first) {
        bySop.set(inst.sopInstanceUID, inst);
        result.instances.push(inst);
      } else if (first.sha256 === inst.sha256) {
        result.duplicates.push({ path: file, sameAs: first.path });
      } else {
        result.broken.push({ path: file, size: st.size, reason: `has the same SOPInstanceUID as ${path.relative(root, first.path)} but different content; only the first is sent` });
      }
    }
  }
  // the DICOMDIR is a table of contents: check it against what is on the medium
  for (const dd of result.dicomdirs) {
    const st = await fsp.stat(dd);
    if (st.size > 256 * 1024 * 1024) continue;
    const listed = referencedFiles(await fsp.readFile(dd));
    const base = path.dirname(dd);
    // ISO 9660 names may show in lower case or with a ";1" version suffix depending on how the disc is mounted
    const norm = (p: string) => p.toUpperCase().replace(/;\d+$/, "");
    const present = new Set(files.map(norm));
    for (const ref of listed) {
      const full = path.join(base, ref);
      if (!present.has(norm(full)) && !fs.existsSync(full)) result.missingFromDicomdir.push(path.relative(root, full));
    }
  }
  return { result, cache };
}

// ---------------------------------------------------------------- grouping

export interface StudySummary {
  studyInstanceUID: string;
  patientName: string;
  patientID: string;
  studyDate: string;
  studyDescription: string;
  modalities: string[];
  series: number;
  instances: FoundInstance[];
  bytes: number;
}

/** Instances grouped by study (patient name and ID, date, description from the first instance), in a stable order. */
export function groupStudies(instances: FoundInstance[]): StudySummary[] {
  const by = new Map<string, StudySummary>();
  const series = new Map<string, Set<string>>();
  for (const i of instances) {
    let s = by.get(i.studyInstanceUID);
    if (!s) {
      s = { studyInstanceUID: i.studyInstanceUID, patientName: i.patientName, patientID: i.patientID, studyDate: i.studyDate, studyDescription: i.studyDescription, modalities: [], series: 0, instances: [], bytes: 0 };
      by.set(i.studyInstanceUID, s);
      series.set(i.studyInstanceUID, new Set());
    }
    s.instances.push(i);
    s.bytes += i.size;
    if (i.modality && !s.modalities.includes(i.modality)) s.modalities.push(i.modality);
    series.get(i.studyInstanceUID)!.add(i.seriesInstanceUID);
    s.series = series.get(i.studyInstanceUID)!.size;
  }
  return [...by.values()].sort((a, b) => (a.patientName + a.studyDate + a.studyInstanceUID).localeCompare(b.patientName + b.studyDate + b.studyInstanceUID));
}

/** YYYYMMDD -> YYYY-MM-DD (anything else as it is). */
export function formatDicomDate(d: string): string {
  return /^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}` : d || "unknown date";
}
