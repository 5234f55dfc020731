/**
 * WADO-RS (PS3.18 10.4): instances streamed from storage as multipart/related, metadata from the
 * index alone, frames and bulk data by ranged reads of the stored file. The relay never transcodes:
 * a transfer syntax it does not hold is answered 406 with a sentence, never with wrong bytes.
 */
import { Readable } from "node:stream";
import { Router, type Request, type Response } from "express";
import type { InstanceLocation, InstanceScope } from "../catalog/index.ts";
import type { ByteRange } from "../dicom/types.ts";
import { multipartBoundary, writeMultipart } from "../dicom/multipart.ts";
import { acceptsMediaType, multipartChoices, parseAccept, type PartNegotiation } from "../dicom/accept.ts";
import { LEGACY_FRAME_MEDIA_TYPES, transferSyntaxInfo } from "../dicom/transferSyntax.ts";
import { HttpError } from "../http/errors.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import { accessOf, assertStudyVisible, dicomwebRoot, uidParam, withRoot, type DicomwebServices } from "./context.ts";

const ANY_TS = "*";

function scopeOf(req: Request, res: Response): InstanceScope {
  const access = accessOf(res);
  const studyInstanceUID = uidParam(req, "study");
  assertStudyVisible(access, studyInstanceUID);
  return {
    studyInstanceUID,
    seriesInstanceUID: req.params.series !== undefined ? uidParam(req, "series") : undefined,
    sopInstanceUID: req.params.instance !== undefined ? uidParam(req, "instance") : undefined,
    allowedStudies: access.allowedStudies,
  };
}

function describe(scope: InstanceScope): string {
  if (scope.sopInstanceUID) return `instance ${scope.sopInstanceUID}`;
  if (scope.seriesInstanceUID) return `series ${scope.seriesInstanceUID}`;
  return `study ${scope.studyInstanceUID}`;
}

async function instancesOrNotFound(svc: DicomwebServices, scope: InstanceScope): Promise<InstanceLocation[]> {
  const list = await svc.index.listInstances(scope);
  if (!list.length) throw new HttpError(404, `no ${describe(scope)} on this relay`);
  return list;
}

/** Bytes of several ranges of one blob, read one after the other (a frame split over fragments). */
function rangesStream(store: BlobStore, key: string, ranges: ByteRange[]): Readable {
  return Readable.from(
    (async function* () {
      for (const r of ranges) {
        if (r.length === 0) continue;
        const s = await store.get(key, { start: r.offset, end: r.offset + r.length - 1 });
        for await (const chunk of s) yield chunk as Buffer;
      }
    })(),
  );
}

async function sendMultipart(
  res: Response,
  type: string,
  parts: AsyncIterable<{ contentType: string; headers?: Record<string, string>; body: Readable }>,
  extraParams = "",
): Promise<void> {
  const boundary = multipartBoundary();
  res.status(200);
  res.setHeader("Content-Type", `multipart/related; type="${type}"; boundary=${boundary}${extraParams}`);
  await writeMultipart(res, boundary, parts);
  res.end();
}

export function wadoRoutes(svc: DicomwebServices): Router {
  const r = Router();

  // ---- instances (Part-10) ----
  const retrieve = async (req: Request, res: Response) => {
    const scope = scopeOf(req, res);
    const choices = multipartChoices(parseAccept(req.get("accept")), "application/dicom").filter(
      (c) => c.partType === "application/dicom" || c.partType === "*/*",
    );
    if (!choices.length) {
      throw new HttpError(406, 'instances are returned as multipart/related; type="application/dicom"');
    }
    const instances = await instancesOrNotFound(svc, scope);
    const choice = choices.find((c) => servable(c, instances)) ?? null;
    if (!choice) {
      const stored = [...new Set(instances.map((i) => i.transferSyntaxUID))].join(", ");
      throw new HttpError(406, `the ${describe(scope)} is stored in transfer syntax ${stored}; the relay returns stored bytes and does not transcode, so ask with transfer-syntax=* or one of those`);
    }
    const store = svc.store;
    await sendMultipart(res, "application/dicom", (async function* () {
      for (const inst of instances) {
        yield {
          contentType: `application/dicom; transfer-syntax=${inst.transferSyntaxUID}`,
          headers: { "Content-Length": String(inst.size) },
          body: await store.get(inst.blobKey),
        };
      }
    })());
  };
  r.get("/studies/:study", retrieve);
  r.get("/studies/:study/series/:series", retrieve);
  r.get("/studies/:study/series/:series/instances/:instance", retrieve);

  // ---- metadata (from the index, no file opened) ----
  const metadata = async (req: Request, res: Response) => {
    const accept = parseAccept(req.get("accept"));
    if (!acceptsMediaType(accept, "application/dicom+json") && !acceptsMediaType(accept, "application/json")) {
      throw new HttpError(406, "metadata is available as application/dicom+json only (XML is not supported)");
    }
    const scope = scopeOf(req, res);
    const items = await svc.index.listMetadata(scope);
    if (!items.length) throw new HttpError(404, `no ${describe(scope)} on this relay`);
    res.status(200).type("application/dicom+json").send(withRoot(`[${items.join(",")}]`, dicomwebRoot(req, svc.config)));
  };
  r.get("/studies/:study/metadata", metadata);
  r.get("/studies/:study/series/:series/metadata", metadata);
  r.get("/studies/:study/series/:series/instances/:instance/metadata", metadata);

  // ---- frames ----
  r.get("/studies/:study/series/:series/instances/:instance/frames/:frames", async (req, res) => {
    const scope = scopeOf(req, res);
    const numbers = parseFrameList(String(req.params.frames), svc.config.dicomweb.maxFramesPerRequest);
    const [inst] = await instancesOrNotFound(svc, scope);
    const px = inst!.pixelData;
    if (!px) throw new HttpError(404, `instance ${scope.sopInstanceUID} has no pixel data, so it has no frames`);
    for (const n of numbers) {
      if (n > px.frames.length) throw new HttpError(404, `frame ${n} does not exist: instance ${scope.sopInstanceUID} has ${px.frames.length} frame(s)`);
    }
    const partType = negotiateFramePartType(req, inst!.transferSyntaxUID, px.encapsulated);
    const store = svc.store;
    const tsParam = `; transfer-syntax=${inst!.transferSyntaxUID}`;
    await sendMultipart(res, partType, (async function* () {
      for (const n of numbers) {
        const ranges = px.frames[n - 1]!;
        yield {
          contentType: partType + tsParam,
          headers: { "Content-Length": String(ranges.reduce((a, b) => a + b.length, 0)) },
          body: rangesStream(store, inst!.blobKey, ranges),
        };
      }
    })());
  });

  // ---- bulk data ----
  r.get("/studies/:study/series/:series/instances/:instance/bulkdata/:tag", async (req, res) => {
    const scope = scopeOf(req, res);
    const tag = String(req.params.tag).toUpperCase();
    if (!/^[0-9A-F]{8}$/.test(tag)) throw new HttpError(400, `bulk data tag "${tag}" must be 8 hexadecimal digits`);
    const [inst] = await instancesOrNotFound(svc, scope);
    const store = svc.store;
    const accept = parseAccept(req.get("accept"));
    if (tag === "7FE00010" && inst!.pixelData?.encapsulated) {
      const px = inst!.pixelData;
      const partType = negotiateFramePartType(req, inst!.transferSyntaxUID, true);
      await sendMultipart(res, partType, (async function* () {
        for (const ranges of px.frames) {
          yield { contentType: `${partType}; transfer-syntax=${inst!.transferSyntaxUID}`, body: rangesStream(store, inst!.blobKey, ranges) };
        }
      })());
      return;
    }
    let range: ByteRange | undefined =
      tag === "7FE00010" && inst!.pixelData ? { offset: inst!.pixelData.offset, length: inst!.pixelData.length } : inst!.bulkData.find((b) => b.tag === tag);
    if (!range) throw new HttpError(404, `instance ${scope.sopInstanceUID} has no bulk data element ${tag}`);
    if (tag === "00420011") range = await trimToDocumentLength(svc, scope, range);
    const mediaType = bulkMediaType(inst!, tag);
    const single = accept.find((a) => a.mediaType === mediaType || (a.mediaType === "application/octet-stream"));
    if (single && accept[0] === single) {
      res.status(200).type(single.mediaType).setHeader("Content-Length", String(range.length));
      const body = await store.get(inst!.blobKey, range.length ? { start: range.offset, end: range.offset + range.length - 1 } : undefined);
      if (!range.length) return void res.end();
      body.pipe(res);
      await new Promise<void>((resolve, reject) => { body.on("end", resolve); body.on("error", reject); });
      return;
    }
    const choices = multipartChoices(accept, mediaType);
    if (!choices.some((c) => c.partType === mediaType || c.partType === "application/octet-stream" || c.partType === "*/*")) {
      throw new HttpError(406, `bulk data ${tag} is available as ${mediaType}`);
    }
    await sendMultipart(res, mediaType, (async function* () {
      yield { contentType: mediaType, headers: { "Content-Length": String(range.length) }, body: rangesStream(store, inst!.blobKey, [range]) };
    })());
  });

  return r;
}

/**
 * DICOM pads odd-length values with one byte; an encapsulated document's true length is
 * EncapsulatedDocumentLength (0042,0015), so the document comes back exactly as it was attached.
 */
async function trimToDocumentLength(svc: DicomwebServices, scope: InstanceScope, range: ByteRange): Promise<ByteRange> {
  const [json] = await svc.index.listMetadata(scope);
  const declared = json ? (JSON.parse(json) as Record<string, { Value?: unknown[] }>)["00420015"]?.Value?.[0] : undefined;
  return typeof declared === "number" && declared >= 0 && declared < range.length ? { offset: range.offset, length: declared } : range;
}

/** The stored transfer syntax can satisfy this choice (no transcoding). */
function servable(choice: PartNegotiation, instances: InstanceLocation[]): boolean {
  if (choice.transferSyntax === null || choice.transferSyntax === ANY_TS) return true;
  return instances.every((i) => i.transferSyntaxUID === choice.transferSyntax);
}

/** Media type of a bulk data element: the document's own type for an encapsulated document. */
function bulkMediaType(inst: InstanceLocation, tag: string): string {
  // Encapsulated PDF Storage fixes MIMETypeOfEncapsulatedDocument (0042,0012) to application/pdf (PS3.3 A.45.1)
  if (tag.toUpperCase() === "00420011" && inst.sopClassUID === "1.2.840.10008.5.1.4.1.1.104.1") return "application/pdf";
  return "application/octet-stream";
}

/**
 * "1,3,5" -> [1,3,5]; 1-based, positive. A frame asked for twice is sent once (1,1,1,... must not multiply the
 * answer); more than `max` distinct frames is refused (dicomweb.maxFramesPerRequest).
 */
export function parseFrameList(raw: string, max = 1000): number[] {
  let decoded: string;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    decoded = "";
  }
  const parts = decoded.split(",").map((s) => s.trim());
  if (!decoded || parts.some((p) => !/^[1-9][0-9]{0,8}$/.test(p))) {
    throw new HttpError(400, `"${raw.slice(0, 80)}" is not a frame list: give 1-based frame numbers separated by commas, e.g. 1,3,5`);
  }
  const frames = [...new Set(parts.map(Number))];
  if (frames.length > max) {
    throw new HttpError(400, `the request asks for ${frames.length} different frames; the relay answers at most ${max} in one request (dicomweb.maxFramesPerRequest): ask in several requests`);
  }
  return frames;
}

/**
 * The part media type for frames: native pixel data is application/octet-stream; encapsulated
 * frames keep their compressed form (image/jpeg, image/jls, ...) or go as application/octet-stream
 * when the client accepts any transfer syntax. Anything needing decompression is 406.
 */
function negotiateFramePartType(req: Request, transferSyntaxUID: string, encapsulated: boolean): string {
  const info = transferSyntaxInfo(transferSyntaxUID);
  const native = "application/octet-stream";
  const compressedType = encapsulated ? (info?.mediaType ?? native) : native;
  const choices = multipartChoices(parseAccept(req.get("accept")), native).map((c) => ({
    ...c,
    // older clients still ask for the pre-2021 names (image/x-dicom-rle, image/x-jls)
    partType: LEGACY_FRAME_MEDIA_TYPES[c.partType] ?? c.partType,
  }));
  for (const c of choices) {
    const tsOk = c.transferSyntax === null || c.transferSyntax === ANY_TS || c.transferSyntax === transferSyntaxUID;
    if (c.partType === "*/*") return compressedType;
    if (!encapsulated && c.partType === native && tsOk) return native;
    if (encapsulated && c.partType === compressedType && tsOk) return compressedType;
    if (encapsulated && c.partType === native && (c.transferSyntax === ANY_TS || c.transferSyntax === transferSyntaxUID)) return native;
  }
  const what = encapsulated ? `compressed (${info?.name ?? transferSyntaxUID}, ${compressedType})` : "uncompressed (application/octet-stream)";
  throw new HttpError(406, `the frames are stored ${what}; the relay does not transcode, so accept that media type or transfer-syntax=*`);
}
