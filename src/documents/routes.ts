/** /api/studies/{study}/documents and /completeness: attach reports to a study, list them, show what is missing. */
import { Readable } from "node:stream";
import express, { type Request, type RequestHandler, type Router } from "express";
import type { Index } from "../catalog/index.ts";
import type { IngestResult, Ingestor } from "../ingest/types.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { SOPClass, isValidUid } from "../dicom/uids.ts";
import { HttpError } from "../http/errors.ts";
import { DOCUMENT_KINDS, DocumentRefused, isDocumentKind, wrapDocument, documentUids } from "./wrap.ts";

export interface DocumentDeps { index: Index; ingest: Ingestor; maxDocumentBytes?: number }

const DEFAULT_MAX = 100 * 1024 * 1024;

/** Reads the raw body, refusing (413) once it passes the limit instead of buffering without bound. */
async function readLimited(req: Request, max: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > max) throw new HttpError(413, `the document is larger than the relay accepts for documents (${max} bytes)`);
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > max) {
      req.destroy();
      throw new HttpError(413, `the document is larger than the relay accepts for documents (${max} bytes)`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

function field(req: Request, name: string): string | undefined {
  const q = req.query[name];
  if (typeof q === "string" && q) return q;
  const h = req.headers[`x-document-${name.toLowerCase()}`];
  return typeof h === "string" && h ? decodeURIComponent(h) : undefined;
}

const str = (ds: DicomJsonDataset, tag: string): string | undefined => {
  const v = ds[tag]?.Value?.[0];
  return typeof v === "string" ? v : undefined;
};

interface DocumentEntry { sopInstanceUID: string; seriesInstanceUID: string; kind: string; title?: string; language?: string; original: boolean; translationOf?: string; sopClassUID?: string; modality?: string }

async function listDocuments(index: Index, study: string): Promise<DocumentEntry[] | null> {
  const rows = await index.listMetadata({ studyInstanceUID: study });
  if (!rows.length) return null;
  const out: DocumentEntry[] = [];
  for (const row of rows) {
    const ds = JSON.parse(row) as DicomJsonDataset;
    const cls = str(ds, "00080016");
    if (cls !== SOPClass.EncapsulatedPDFStorage && cls !== SOPClass.SecondaryCaptureImageStorage) continue;
    const kind = str(ds, "0008103E");
    const series = str(ds, "0020000E");
    // only documents this relay wrapped: their series UID is the one derived from study + kind
    if (!kind || !isDocumentKind(kind) || documentUids(study, kind, "").seriesInstanceUID !== series) continue;
    const lang = (ds["00080006"]?.Value?.[0] as DicomJsonDataset | undefined);
    const ref = (ds["00081140"]?.Value?.[0] as DicomJsonDataset | undefined) ?? (ds["0008114A"]?.Value?.[0] as DicomJsonDataset | undefined);
    const translationOf = ref ? str(ref, "00081155") : undefined;
    out.push({
      sopInstanceUID: str(ds, "00080018")!, seriesInstanceUID: series!, kind, title: str(ds, "00420010"),
      language: lang ? str(lang, "00080100") : undefined, original: !translationOf, ...(translationOf ? { translationOf } : {}),
      sopClassUID: cls, modality: str(ds, "00080060"),
    });
  }
  return out;
}

export function documentsRouter(deps: DocumentDeps, guard?: RequestHandler): Router {
  const router = express.Router();
  const max = deps.maxDocumentBytes ?? DEFAULT_MAX;
  const guards = guard ? [guard] : [];

  router.post("/api/studies/:study/documents", ...guards, async (req, res) => {
    const study = String(req.params.study);
    if (!isValidUid(study)) throw new HttpError(400, `"${study.slice(0, 70)}" is not a StudyInstanceUID`);
    const kind = field(req, "kind") ?? "";
    if (!isDocumentKind(kind)) throw new HttpError(400, `kind must be one of ${Object.keys(DOCUMENT_KINDS).join(", ")}`);
    const title = field(req, "title") ?? "";
    if (!title || title.length > 1024) throw new HttpError(400, "title is required (at most 1024 characters)");
    const language = field(req, "language") ?? "";
    if (!/^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$/.test(language)) throw new HttpError(400, "language must be a BCP 47 tag such as zh, en or zh-Hans");
    const translationOf = field(req, "translationOf");
    if (translationOf !== undefined && !isValidUid(translationOf)) throw new HttpError(400, "translationOf must be the SOPInstanceUID of the original document");
    const ct = String(req.headers["content-type"] ?? "");
    if (ct.startsWith("multipart/")) throw new HttpError(415, "send the document as the raw request body with kind, title and language as query parameters");
    const metadata = await deps.index.listMetadata({ studyInstanceUID: study });
    if (!metadata.length) throw new HttpError(404, `study ${study} is not on this relay: send its images first, then attach documents`);
    let translationOfClassUID: string | undefined;
    if (translationOf) {
      const original = await deps.index.getInstance(translationOf);
      if (!original || original.studyInstanceUID !== study) throw new HttpError(404, `translationOf ${translationOf} is not a document of study ${study}`);
      translationOfClassUID = original.sopClassUID;
    }
    const bytes = await readLimited(req, max);
    if (!bytes.length) throw new HttpError(400, "the request body is empty: send the PDF, JPEG or PNG file as the body");
    let wrapped;
    try {
      wrapped = wrapDocument(bytes, { studyInstanceUID: study, kind, title, language, translationOf, translationOfClassUID }, JSON.parse(metadata[0]!) as DicomJsonDataset);
    } catch (err) {
      if (err instanceof DocumentRefused) throw new HttpError(422, err.message);
      throw err;
    }
    // the same file attached again as the same kind is the same instance (deterministic UID); its wrapper carries
    // the time it was made, so re-wrapping would differ in bytes and read as a conflict: answer with the stored one
    const held = await deps.index.getInstance(wrapped.sopInstanceUID, { includePending: true });
    const result: IngestResult = held && held.studyInstanceUID === study
      ? { status: "already-stored", studyInstanceUID: held.studyInstanceUID, seriesInstanceUID: held.seriesInstanceUID, sopInstanceUID: held.sopInstanceUID, sopClassUID: held.sopClassUID, sha256: held.sha256, size: held.size }
      : await deps.ingest.ingestStream(Readable.from([wrapped.part10]), { expectedStudyInstanceUID: study, source: `document:${kind}` });
    if (result.status === "failed") {
      if (result.retryable) res.set("Retry-After", "10");
      throw new HttpError(result.retryable ? 503 : 422, result.message);
    }
    res.status(result.status === "stored" ? 201 : 200).json({ ...result, kind, title, language, contentType: wrapped.contentType, original: !translationOf, ...(translationOf ? { translationOf } : {}) });
  });

  router.get("/api/studies/:study/documents", ...guards, async (req, res) => {
    const docs = await listDocuments(deps.index, String(req.params.study));
    if (!docs) throw new HttpError(404, `study ${req.params.study} is not on this relay`);
    res.json({ studyInstanceUID: req.params.study, documents: docs });
  });

  router.get("/api/studies/:study/completeness", ...guards, async (req, res) => {
    const docs = await listDocuments(deps.index, String(req.params.study));
    if (!docs) throw new HttpError(404, `study ${req.params.study} is not on this relay`);
    // counts only what was attached: no clinical interpretation
    const kinds = Object.keys(DOCUMENT_KINDS).map((kind) => {
      const of = docs.filter((d) => d.kind === kind);
      return { kind, status: of.length ? "present" : "missing", count: of.length, languages: [...new Set(of.map((d) => d.language).filter(Boolean))] };
    });
    res.json({ studyInstanceUID: req.params.study, kinds, present: kinds.filter((k) => k.status === "present").map((k) => k.kind), missing: kinds.filter((k) => k.status === "missing").map((k) => k.kind) });
  });
  return router;
}
