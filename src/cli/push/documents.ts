/**
 * Reports and photos beside the images (issue 8): PDFs, JPEGs and PNGs found in the folder (--documents) or named
 * with --document are attached to the study through POST /api/studies/{study}/documents once the study's images are
 * all on the relay (the route needs the study to be visible).
 */
import fs from "node:fs";
import path from "node:path";
import { errorText, type RelayApi } from "./http.ts";
import type { DocumentSpec } from "./args.ts";

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

export async function attachDocuments(api: RelayApi, studyInstanceUID: string, specs: DocumentSpec[]): Promise<DocumentOutcome[]> {
  const out: DocumentOutcome[] = [];
  const uidOf = new Map<string, string>();
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
    const r = await api.request("POST", `/api/studies/${studyInstanceUID}/documents?${q}`, {
      body: () => fs.createReadStream(d.file),
      headers: { "Content-Type": "application/octet-stream" },
      attempts: 6,
    });
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
