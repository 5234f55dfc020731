/**
 * Reports and photos beside the images (issue 8): PDFs, JPEGs and PNGs found in the folder (--documents) or named
 * with --document are attached to the study through POST /api/studies/{study}/documents once the study's images are
 * all on the relay (the route needs the study to be visible).
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { CouldNotRun, errorText, type RelayApi } from "./http.ts";
import { documentUids } from "../../documents/wrap.ts";
import { UsageError, type DocumentSpec, type PushOptions } from "./args.ts";
import { formatDicomDate, type ScanResult, type StudySummary } from "./scan.ts";

export interface DocumentOutcome {
  file: string;
  kind: string;
  language: string;
  ok: boolean;
  /** stored | already-stored, or the reason it was refused */
  detail: string;
  sopInstanceUID?: string;
}

/** Originals before translations, so a translation can name its original's SOPInstanceUID. */
export function orderDocuments(specs: DocumentSpec[]): DocumentSpec[] {
  return [...specs.filter((s) => !s.translationOf), ...specs.filter((s) => s.translationOf)];
}

/** SHA-256 of a file, read as a stream. */
async function fileSha256(file: string): Promise<string> {
  const hash = crypto.createHash("sha256");
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * Attaches each document unless the relay already has it: the relay names a document by study, kind and the file's
 * SHA-256, so the CLI can tell without sending it (a second run, or another laptop, sends no document twice).
 */
export async function attachDocuments(api: RelayApi, studyInstanceUID: string, specs: DocumentSpec[]): Promise<DocumentOutcome[]> {
  const out: DocumentOutcome[] = [];
  const uidOf = new Map<string, string>();
  const listed = await api.request("GET", `/api/studies/${studyInstanceUID}/documents`);
  const held = new Set(listed.status === 200 ? listed.json<{ documents: { sopInstanceUID: string }[] }>().documents.map((d) => d.sopInstanceUID) : []);
  for (const d of orderDocuments(specs)) {
    const base = { file: d.file, kind: d.kind, language: d.language };
    const q = new URLSearchParams({ kind: d.kind, title: d.title, language: d.language });
    if (d.translationOf) {
      const original = uidOf.get(path.resolve(d.translationOf));
      if (!original) {
        out.push({ ...base, ok: false, detail: `its original ${d.translationOf} was not attached, so the translation cannot name it` });
        continue;
      }
      q.set("translationOf", original);
    }
    const expected = documentUids(studyInstanceUID, d.kind, await fileSha256(d.file)).sopInstanceUID;
    if (held.has(expected)) {
      uidOf.set(path.resolve(d.file), expected);
      out.push({ ...base, ok: true, detail: "was already attached (not sent again)", sopInstanceUID: expected });
      continue;
    }
    let r;
    try {
      r = await api.request("POST", `/api/studies/${studyInstanceUID}/documents?${q}`, {
        body: () => fs.createReadStream(d.file),
        // the length up front: a relay whose limit the file passes says so (413) before anything is sent
        headers: { "Content-Type": "application/octet-stream", "Content-Length": String(fs.statSync(d.file).size) },
        attempts: 6,
      });
    } catch (err) {
      // the images are on the relay by now: a document that cannot be sent is a failed item (exit 2), not "could not run"
      if (!(err instanceof CouldNotRun)) throw err;
      out.push({ ...base, ok: false, detail: `could not be sent: ${err.message}; run the same command again to retry it` });
      continue;
    }
    if (r.status === 200 || r.status === 201) {
      const j = r.json<{ status: string; sopInstanceUID?: string }>();
      if (j.sopInstanceUID) uidOf.set(path.resolve(d.file), j.sopInstanceUID);
      out.push({ ...base, ok: true, detail: j.status === "already-stored" ? "was already attached" : "attached", sopInstanceUID: j.sopInstanceUID });
    } else {
      out.push({ ...base, ok: false, detail: `refused by the relay (${r.status}): ${errorText(r.text)}` });
    }
  }
  return out;
}

/** Documents per study: the ones named on the command line, plus those found in the folder with --documents. */
export function documentsToAttach(result: ScanResult, studies: StudySummary[], opts: PushOptions): Map<string, DocumentSpec[]> {
  const map = new Map<string, DocumentSpec[]>();
  const found: DocumentSpec[] = opts.documents
    ? result.others.filter((o) => o.kind === "pdf" || o.kind === "jpeg" || o.kind === "png").map((o) => ({ file: o.path, kind: "other", language: opts.documentsLanguage, title: path.basename(o.path) }))
    : [];
  const named = new Set(opts.documentSpecs.map((d) => path.resolve(d.file)));
  const all = [...opts.documentSpecs, ...found.filter((f) => !named.has(path.resolve(f.file)))];
  if (!all.length) return map;
  let study: string;
  if (opts.documentStudy) {
    if (!studies.some((s) => s.studyInstanceUID === opts.documentStudy)) {
      throw new UsageError(`--study ${opts.documentStudy} is not one of the studies found (${studies.map((s) => s.studyInstanceUID).join(", ")})`);
    }
    study = opts.documentStudy;
  } else if (studies.length === 1) {
    study = studies[0]!.studyInstanceUID;
  } else {
    throw new UsageError(`the folder holds ${studies.length} studies; say which one the documents belong to with --study <StudyInstanceUID> (${studies.map((s) => `${s.studyInstanceUID} = ${formatDicomDate(s.studyDate)} ${s.studyDescription}`).join("; ")})`);
  }
  map.set(study, all);
  return map;
}
