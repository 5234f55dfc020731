/** /api/studies/{study}/documents and /completeness: attach reports to a study, list them, show what is missing. */
import fsp from "node:fs/promises";
import { Readable } from "node:stream";
import express, { type Request, type RequestHandler, type Response, type Router } from "express";
import { accessOf } from "../dicomweb/context.ts";
import type { Index } from "../catalog/index.ts";
import type { IngestResult, Ingestor } from "../ingest/types.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { isValidUid } from "../dicom/uids.ts";
import { HttpError } from "../http/errors.ts";
import { discardRestOfBody } from "../http/drain.ts";
import { DOCUMENT_KINDS, DocumentRefused, buildWrapper, detectContent, documentSeries, documentUids, isDocumentKind, readDocumentContent, wrappedInstance, type DocumentKind } from "./wrap.ts";
import { DocumentTooLarge, spoolDocument } from "./spool.ts";

export interface DocumentDeps {
  index: Index;
  ingest: Ingestor;
  /** local directory for the spooled document and decoded pixels (the ingest pipeline's spool directory) */
  tmpDir: string;
  /** ingest.maxDocumentBytes */
  maxDocumentBytes: number;
}

/** The rest of the body is read and discarded (bounded) so the sender sees the 413, not a reset connection. */
const tooLarge = (req: Request, res: Response, max: number) => {
  discardRestOfBody(req, res);
  return new HttpError(413, `the document is larger than the relay accepts for documents (${max} bytes)`);
};

function field(req: Request, name: string): string | undefined {
  const q = req.query[name];
  if (typeof q === "string" && q) return q;
  const h = req.headers[`x-document-${name.toLowerCase()}`];
  if (typeof h !== "string" || !h) return undefined;
  try {
    return decodeURIComponent(h);
  } catch {
    throw new HttpError(400, `the X-Document-${name[0]!.toUpperCase()}${name.slice(1)} header is not valid percent-encoding (UTF-8, e.g. %E6%8A%A5%E5%91%8A)`);
  }
}

const str = (ds: DicomJsonDataset, tag: string): string | undefined => {
  const v = ds[tag]?.Value?.[0];
  return typeof v === "string" ? v : undefined;
};

interface DocumentEntry { sopInstanceUID: string; seriesInstanceUID: string; kind: string; title?: string; language?: string; original: boolean; translationOf?: string; sopClassUID?: string; modality?: string }

function documentEntry(ds: DicomJsonDataset, kind: DocumentKind): DocumentEntry {
  const lang = ds["00080006"]?.Value?.[0] as DicomJsonDataset | undefined;
  // Source Instance Sequence; documents wrapped before 2026-12 named the original in Referenced Instance Sequence
  const ref = (ds["00420013"]?.Value?.[0] as DicomJsonDataset | undefined) ?? (ds["0008114A"]?.Value?.[0] as DicomJsonDataset | undefined);
  const translationOf = ref ? str(ref, "00081155") : undefined;
  return {
    sopInstanceUID: str(ds, "00080018")!, seriesInstanceUID: str(ds, "0020000E")!, kind, title: str(ds, "00420010"),
    language: lang ? str(lang, "00080100") : undefined, original: !translationOf, ...(translationOf ? { translationOf } : {}),
    sopClassUID: str(ds, "00080016"), modality: str(ds, "00080060"),
  };
}

/** The documents of a study (null: no such study). Only the series the relay gives documents are read. */
async function listDocuments(index: Index, study: string): Promise<DocumentEntry[] | null> {
  const instances = await index.listInstances({ studyInstanceUID: study });
  if (!instances.length) return null;
  const kinds = documentSeries(study);
  const out: DocumentEntry[] = [];
  for (const series of new Set(instances.map((i) => i.seriesInstanceUID).filter((s) => kinds.has(s)))) {
    for (const row of await index.listMetadata({ studyInstanceUID: study, seriesInstanceUID: series })) {
      out.push(documentEntry(JSON.parse(row) as DicomJsonDataset, kinds.get(series)!));
    }
  }
  return out;
}

/**
 * guard.write: attaching (upload scope); guard.read: listing (read scope; a share link only for its studies).
 * Without guards (no access control) both are open.
 */
export function documentsRouter(deps: DocumentDeps, guard: { write?: RequestHandler; read?: RequestHandler } = {}): Router {
  const router = express.Router();
  const max = deps.maxDocumentBytes;
  const guards = guard.write ? [guard.write] : [];
  const readGuards = guard.read ? [guard.read] : [];
  /** a credential limited to some studies (a share link) sees no other: 404 as for a study not here */
  const readable = (res: Response, study: string) => {
    const allowed = accessOf(res).allowedStudies;
    return !allowed || allowed.includes(study);
  };

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
    const first = (await deps.index.listInstances({ studyInstanceUID: study }))[0];
    if (!first) throw new HttpError(404, `study ${study} is not on this relay: send its images first, then attach documents`);
    let translationOfClassUID: string | undefined;
    if (translationOf) {
      const original = await deps.index.getInstance(translationOf);
      if (!original || original.studyInstanceUID !== study || !documentSeries(study).has(original.seriesInstanceUID)) {
        throw new HttpError(404, `translationOf ${translationOf} is not a document of study ${study}`);
      }
      translationOfClassUID = original.sopClassUID;
    }
    if (Number(req.headers["content-length"] ?? "0") > max) throw tooLarge(req, res, max);
    let doc;
    try {
      doc = await spoolDocument(req, deps.tmpDir, max);
    } catch (err) {
      if (err instanceof DocumentTooLarge) throw tooLarge(req, res, max);
      throw err;
    }
    const pixelPath = doc.path.replace(/\.document\.spool$/, ".pixels.spool");
    try {
      if (!doc.size) throw new HttpError(400, "the request body is empty: send the PDF, JPEG or PNG file as the body");
      // the same file attached again as the same kind is the same instance (its UID is derived from study, kind and
      // SHA-256); its wrapper carries the time it was made, so re-wrapping would differ in bytes and read as a
      // conflict: answer with the stored one, as it was stored
      const held = await deps.index.getInstance(documentUids(study, kind, doc.sha256).sopInstanceUID, { includePending: true });
      if (held && held.studyInstanceUID === study) {
        const [row] = await deps.index.listMetadata({ studyInstanceUID: study, seriesInstanceUID: held.seriesInstanceUID, sopInstanceUID: held.sopInstanceUID, includePending: true });
        const stored = row ? documentEntry(JSON.parse(row) as DicomJsonDataset, kind) : undefined;
        res.status(200).json({
          status: "already-stored", studyInstanceUID: study, seriesInstanceUID: held.seriesInstanceUID, sopInstanceUID: held.sopInstanceUID,
          // no sha256: the stored wrapper's hash is not the sender's to learn (docs/security.md)
          sopClassUID: held.sopClassUID, size: held.size, contentType: detectContent(doc.head),
          kind, title: stored?.title ?? title, language: stored?.language ?? language, original: stored?.original ?? !translationOf,
          ...(stored?.translationOf ? { translationOf: stored.translationOf } : {}),
        });
        return;
      }
      let content, wrapper;
      try {
        content = await readDocumentContent(doc, pixelPath);
        const [studyRow] = await deps.index.listMetadata({ studyInstanceUID: study, seriesInstanceUID: first.seriesInstanceUID, sopInstanceUID: first.sopInstanceUID });
        wrapper = buildWrapper(content, doc.sha256, { studyInstanceUID: study, kind, title, language, translationOf, translationOfClassUID }, JSON.parse(studyRow ?? "{}") as DicomJsonDataset);
      } catch (err) {
        if (err instanceof DocumentRefused) throw new HttpError(422, err.message);
        throw err;
      }
      const result: IngestResult = await deps.ingest.ingestStream(Readable.from(wrappedInstance(wrapper, content.bulkPath)), { expectedStudyInstanceUID: study, source: `document:${kind}` });
      if (result.status === "failed") {
        if (result.retryable) res.set("Retry-After", "10");
        throw new HttpError(result.retryable ? 503 : 422, result.message);
      }
      const { sha256: _stored, ...shown } = result;
      res.status(result.status === "stored" ? 201 : 200).json({ ...shown, kind, title, language, contentType: wrapper.contentType, original: !translationOf, ...(translationOf ? { translationOf } : {}) });
    } finally {
      await fsp.rm(doc.path, { force: true });
      await fsp.rm(pixelPath, { force: true });
    }
  });

  router.get("/api/studies/:study/documents", ...readGuards, async (req, res) => {
    const docs = readable(res, String(req.params.study)) ? await listDocuments(deps.index, String(req.params.study)) : null;
    if (!docs) throw new HttpError(404, `study ${req.params.study} is not on this relay`);
    res.json({ studyInstanceUID: req.params.study, documents: docs });
  });

  router.get("/api/studies/:study/completeness", ...readGuards, async (req, res) => {
    const docs = readable(res, String(req.params.study)) ? await listDocuments(deps.index, String(req.params.study)) : null;
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
