/**
 * WADO-RS (PS3.18 10.4): instances streamed from storage as multipart/related, metadata from the
 * index alone, frames and bulk data by ranged reads of the stored file (of a deflated data set: by inflating it
 * up to them, the stored file staying as received). A transfer syntax other than the
 * stored one is made a frame at a time (src/imaging/transcode.ts); one the relay cannot make is 406 with a
 * sentence naming what it can, never wrong bytes.
 */
import { Readable } from "node:stream";
import { Router, type Request, type Response } from "express";
import { noteAudit } from "../access/middleware.ts";
import type { InstanceBlob, InstanceLocation, InstanceScope } from "../catalog/index.ts";
import type { ByteRange } from "../dicom/types.ts";
import { multipartBoundary, writeMultipart, type OutgoingPart } from "../dicom/multipart.ts";
import { acceptsMediaType, multipartChoices, parseAccept, type PartNegotiation } from "../dicom/accept.ts";
import { LEGACY_FRAME_MEDIA_TYPES, transferSyntaxInfo } from "../dicom/transferSyntax.ts";
import { HttpError } from "../http/errors.ts";
import { readChunksByRange, type BlobStore } from "../storage/blobStore.ts";
import type { DicomJsonDataset } from "../dicom/types.ts";
import { pixelModuleOf, type PixelModule } from "../imaging/pixelModule.ts";
import { frameIn, storedRanges, transcodeInstance, transcodeTargetsSentence, whyNotTranscodable } from "../imaging/transcode.ts";
import { CodecError, canDecode, canEncode, UNCOMPRESSED } from "../imaging/codecs.ts";
import { readAhead } from "./readAhead.ts";
import { scopeOf, dicomwebRoot, recipientOf, withRoot, type DicomwebServices } from "./context.ts";

const ANY_TS = "*";

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

async function sendMultipart(res: Response, type: string, parts: AsyncIterable<OutgoingPart>, beforeEnd?: () => void): Promise<void> {
  const boundary = multipartBoundary();
  res.status(200);
  res.setHeader("Content-Type", `multipart/related; type="${type}"; boundary=${boundary}`);
  await writeMultipart(res, boundary, parts);
  beforeEnd?.();
  res.end();
}

/**
 * A stored instance's bytes, read whole (the index gives its size): as the chunks a remote store's response came in
 * (written out as they are), in one buffer from a store that reads files, else by one ranged read.
 */
function readWhole(store: BlobStore, inst: InstanceBlob): Promise<Buffer | readonly Buffer[]> {
  if (store.readChunks) return store.readChunks(inst.blobKey, inst.size);
  return store.readWhole ? store.readWhole(inst.blobKey, inst.size) : readChunksByRange(store, inst.blobKey, inst.size);
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
    // the stored bytes of every instance of the scope from one index query (no pixel / bulk data locations parsed)
    let instances: readonly InstanceBlob[] = await svc.index.listInstanceBlobs(scope);
    if (!instances.length) throw new HttpError(404, `no ${describe(scope)} on this relay`);
    let choice = choices.find((c) => servable(c, instances)) ?? null;
    // not all stored in the syntax asked for: the first one asked for that every instance can be transcoded to
    let modules = new Map<string, PixelModule | string | null>();
    let located: InstanceLocation[] | null = null;
    let refusal = "";
    if (!choice) {
      // transcoding needs the pixel data locations and pixel modules: of the whole scope, one query each
      located = await svc.index.listInstances(scope);
      instances = located;
      modules = await pixelModulesOf(svc, scope);
      for (const c of choices) {
        const target = c.transferSyntax!;
        const why = located.map((i) => (i.transferSyntaxUID === target ? null : whyNotTranscodable(i, modules.get(i.sopInstanceUID) ?? "the instance has no metadata", target))).find((w) => w !== null);
        if (!why) {
          choice = c;
          break;
        }
        refusal ||= `; for ${target.slice(0, 64)}: ${why}`;
      }
    }
    if (!choice) {
      const stored = [...new Set(instances.map((i) => i.transferSyntaxUID))].join(", ");
      throw new HttpError(406, `the ${describe(scope)} is stored in transfer syntax ${stored}${refusal}; ask with transfer-syntax=* for the stored bytes, or for one of ${transcodeTargetsSentence()}`);
    }
    const target = choice.transferSyntax;
    const store = svc.store;
    // instances transcoded a frame at a time read their own ranges; the others are read ahead (bounded, readAhead.ts)
    const passThrough = (i: number) => target === null || target === ANY_TS || target === instances[i]!.transferSyntaxUID;
    const parts = readAhead(instances, {
      skip: (i) => !passThrough(i),
      read: (inst, whole): Promise<Readable | Buffer | readonly Buffer[]> => (whole ? readWhole(store, inst) : store.get(inst.blobKey)),
      // a response cut short: close what was opened ahead and not sent; what was read whole is not referred to any more
      discard: (b) => {
        if (b instanceof Readable && !b.readableEnded) b.destroy();
        else if (Buffer.isBuffer(b)) store.releaseBuffer?.(b);
      },
    });
    // a body read whole into one buffer: its memory is read into again once its bytes are on the socket
    const releaseOf = (body: Readable | Buffer | readonly Buffer[]) => (Buffer.isBuffer(body) && store.releaseBuffer ? () => store.releaseBuffer!(body) : undefined);
    await sendMultipart(res, "application/dicom", (async function* () {
      for await (const { item: inst, index: i, body } of parts) {
        if (body !== null) {
          yield { contentType: `application/dicom; transfer-syntax=${inst.transferSyntaxUID}`, headers: { "Content-Length": String(inst.size) }, body, release: releaseOf(body) };
          continue;
        }
        // transcoded a frame at a time: the length is not known in advance (located is set whenever transcoding is)
        const pm = modules.get(inst.sopInstanceUID);
        yield {
          contentType: `application/dicom; transfer-syntax=${target}`,
          body: Readable.from(transcodeInstance(store, located![i]!, typeof pm === "object" ? pm : null, target!, { part10: true }), { objectMode: false }),
        };
      }
    })(), () => noteAudit(res, { addDetail: `${instances.length} instance(s) sent` }));
    // delivery tracking: one batch for the whole response, written after its last byte left
    const recipient = recipientOf(res);
    if (recipient && svc.retention) svc.retention.noteDelivered(instances, recipient, "wado");
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
    const pm = await pixelModuleFor(svc, inst!);
    // an inflated frame of a deflated data set is native pixels: Explicit VR Little Endian (PS3.18 8.7.3.5.2)
    const frameSyntax = px.inflatedFrom !== undefined ? TS_ELE : inst!.transferSyntaxUID;
    const { partType, transferSyntax } = negotiateFrames(req, frameSyntax, px.encapsulated, typeof pm === "object" ? pm : null);
    const store = svc.store;
    const tsParam = `; transfer-syntax=${transferSyntax}`;
    if (transferSyntax !== frameSyntax) {
      const why = whyNotTranscodable(inst!, pm, transferSyntax);
      if (why) throw new HttpError(406, `frames of instance ${scope.sopInstanceUID} cannot be sent in ${transferSyntax}: ${why}`);
      // the first frame is made before the status line, so a frame that cannot be decoded is an error, not a cut response
      let pending: Buffer | null = await transcodedFrame(store, inst!, pm as PixelModule, numbers[0]!, transferSyntax);
      await sendMultipart(res, partType, (async function* () {
        for (const n of numbers) {
          const body = pending ?? (await transcodedFrame(store, inst!, pm as PixelModule, n, transferSyntax));
          pending = null;
          yield { contentType: partType + tsParam, headers: { "Content-Length": String(body.length) }, body: Readable.from([body]) };
        }
      })());
      return;
    }
    await sendMultipart(res, partType, (async function* () {
      for (const n of numbers) {
        const ranges = px.frames[n - 1]!;
        yield {
          contentType: partType + tsParam,
          headers: { "Content-Length": String(ranges.reduce((a, b) => a + b.length, 0)) },
          body: storedRanges(store, inst!.blobKey, ranges, { inflatedFrom: px.inflatedFrom, size: inst!.size }),
        };
      }
    })());
  });

  // ---- bulk data ----
  // a top-level tag (.../bulkdata/7FE00010) or a path into sequence items (.../bulkdata/54000100/0/54001010)
  r.get("/studies/:study/series/:series/instances/:instance/bulkdata/*path", async (req, res) => {
    const scope = scopeOf(req, res);
    const raw = (req.params as unknown as { path: string[] }).path;
    const tag = (Array.isArray(raw) ? raw.join("/") : String(raw)).toUpperCase();
    if (!/^[0-9A-F]{8}(\/[0-9]{1,9}\/[0-9A-F]{8}){0,64}$/.test(tag)) {
      throw new HttpError(400, `bulk data "${tag.slice(0, 80)}" must be a tag of 8 hexadecimal digits, or a path of sequence tag / item index / tag (e.g. 54000100/0/54001010)`);
    }
    const [inst] = await instancesOrNotFound(svc, scope);
    const store = svc.store;
    const accept = parseAccept(req.get("accept"));
    if (tag === "7FE00010" && inst!.pixelData?.encapsulated) {
      const px = inst!.pixelData;
      const { partType, transferSyntax } = negotiateFrames(req, inst!.transferSyntaxUID, true, null);
      if (transferSyntax !== inst!.transferSyntaxUID) {
        throw new HttpError(406, `the pixel data bulk data is served as stored (${inst!.transferSyntaxUID}); for decoded pixels ask for the frames (.../frames/1,2,...) with transfer-syntax=${transferSyntax}`);
      }
      await sendMultipart(res, partType, (async function* () {
        for (const ranges of px.frames) {
          yield { contentType: `${partType}; transfer-syntax=${inst!.transferSyntaxUID}`, body: storedRanges(store, inst!.blobKey, ranges, { inflatedFrom: px.inflatedFrom, size: inst!.size }) };
        }
      })());
      return;
    }
    let range: (ByteRange & { inflatedFrom?: number }) | undefined =
      tag === "7FE00010" && inst!.pixelData ? { offset: inst!.pixelData.offset, length: inst!.pixelData.length, inflatedFrom: inst!.pixelData.inflatedFrom } : inst!.bulkData.find((b) => b.tag === tag);
    if (!range) throw new HttpError(404, `instance ${scope.sopInstanceUID} has no bulk data element ${tag}`);
    if (tag === "00420011") range = await trimToDocumentLength(svc, scope, range);
    const mediaType = bulkMediaType(inst!, tag);
    const single = accept.find((a) => a.mediaType === mediaType || (a.mediaType === "application/octet-stream"));
    if (single && accept[0] === single) {
      res.status(200).type(single.mediaType).setHeader("Content-Length", String(range.length));
      if (!range.length) return void res.end();
      const body = storedRanges(store, inst!.blobKey, [range], { inflatedFrom: range.inflatedFrom, size: inst!.size });
      body.pipe(res);
      await new Promise<void>((resolve, reject) => { body.on("end", resolve); body.on("error", reject); });
      return;
    }
    const choices = multipartChoices(accept, mediaType);
    if (!choices.some((c) => c.partType === mediaType || c.partType === "application/octet-stream" || c.partType === "*/*")) {
      throw new HttpError(406, `bulk data ${tag} is available as ${mediaType}`);
    }
    await sendMultipart(res, mediaType, (async function* () {
      yield { contentType: mediaType, headers: { "Content-Length": String(range.length) }, body: storedRanges(store, inst!.blobKey, [range], { inflatedFrom: range.inflatedFrom, size: inst!.size }) };
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
  return typeof declared === "number" && declared >= 0 && declared < range.length ? { ...range, length: declared } : range;
}

/** The stored transfer syntax can satisfy this choice (no transcoding). */
function servable(choice: PartNegotiation, instances: readonly InstanceBlob[]): boolean {
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

const TS_ELE = "1.2.840.10008.1.2.1";

/** Default transfer syntax of a frame media type (PS3.18 Table 8.7.3-5). */
const DEFAULT_TS_OF_MEDIA_TYPE: Record<string, string> = {
  "application/octet-stream": TS_ELE,
  "image/jpeg": "1.2.840.10008.1.2.4.50",
  "image/jls": "1.2.840.10008.1.2.4.80",
  "image/jp2": "1.2.840.10008.1.2.4.90",
  "image/jphc": "1.2.840.10008.1.2.4.201",
  "image/dicom-rle": "1.2.840.10008.1.2.5",
};

/** The pixel modules of every instance of a scope, by SOP Instance UID, from one index query. */
async function pixelModulesOf(svc: DicomwebServices, scope: InstanceScope): Promise<Map<string, PixelModule | string>> {
  const out = new Map<string, PixelModule | string>();
  for (const json of await svc.index.listMetadata(scope)) {
    const ds = JSON.parse(json) as DicomJsonDataset;
    const sop = (ds["00080018"]?.Value as unknown[] | undefined)?.[0];
    if (typeof sop === "string") out.set(sop, pixelModuleOf(ds));
  }
  return out;
}

/** The instance's pixel module from its stored metadata (a sentence when it has none). */
export async function pixelModuleFor(svc: DicomwebServices, inst: InstanceLocation): Promise<PixelModule | string> {
  const [json] = await svc.index.listMetadata({ studyInstanceUID: inst.studyInstanceUID, seriesInstanceUID: inst.seriesInstanceUID, sopInstanceUID: inst.sopInstanceUID });
  if (!json) return "the instance has no metadata";
  return pixelModuleOf(JSON.parse(json) as DicomJsonDataset);
}

async function transcodedFrame(store: BlobStore, inst: InstanceLocation, pm: PixelModule, n: number, target: string): Promise<Buffer> {
  try {
    return await frameIn(store, inst, pm, n, target);
  } catch (err) {
    if (err instanceof CodecError) throw new HttpError(500, `frame ${n} of instance ${inst.sopInstanceUID} cannot be transcoded: ${err.message}`);
    throw err;
  }
}

/**
 * The part media type and transfer syntax for frames. No Accept, "*\/*" or transfer-syntax=* give the stored
 * bytes; application/octet-stream without a transfer syntax means Explicit VR Little Endian, i.e. decoded pixels
 * (PS3.18 8.7.3.5.2); a compressed media type asks for its default transfer syntax unless it names one. What
 * cannot be decoded or encoded here is 406 with a sentence naming what can.
 */
function negotiateFrames(req: Request, stored: string, encapsulated: boolean, pm: PixelModule | null): { partType: string; transferSyntax: string } {
  const info = transferSyntaxInfo(stored);
  const native = "application/octet-stream";
  const storedType = encapsulated ? (info?.mediaType ?? native) : native;
  const ranges = parseAccept(req.get("accept"));
  // "*\/*", no Accept, or multipart/related without a type: whatever is stored, in its own media type
  const open = ranges[0];
  if (open && (open.mediaType === "*/*" || open.mediaType === "multipart/related" || open.mediaType === "multipart/*") && !open.params.type && (!open.params["transfer-syntax"] || open.params["transfer-syntax"] === ANY_TS)) {
    return { partType: storedType, transferSyntax: stored };
  }
  const choices = multipartChoices(ranges, native).map((c) => ({
    ...c,
    // older clients still ask for the pre-2021 names (image/x-dicom-rle, image/x-jls)
    partType: LEGACY_FRAME_MEDIA_TYPES[c.partType] ?? c.partType,
  }));
  const possible = (ts: string) => {
    if (ts === stored) return true;
    if (!canDecode(stored)) return false;
    if (UNCOMPRESSED.includes(ts)) return true;
    return pm !== null && canEncode(ts, pm);
  };
  for (const c of choices) {
    if (c.partType === "*/*" && (c.transferSyntax === null || c.transferSyntax === ANY_TS)) return { partType: storedType, transferSyntax: stored };
    if (c.transferSyntax === ANY_TS) {
      if (c.partType === storedType || c.partType === native) return { partType: c.partType, transferSyntax: stored };
      continue;
    }
    const ts = c.transferSyntax ?? (c.partType === storedType && encapsulated ? stored : DEFAULT_TS_OF_MEDIA_TYPE[c.partType]);
    if (!ts) continue;
    const mediaType = transferSyntaxInfo(ts)?.mediaType;
    const partFits = c.partType === "*/*" || c.partType === mediaType || (c.partType === native && ts === stored);
    if (partFits && possible(ts)) return { partType: c.partType === "*/*" ? (mediaType ?? native) : c.partType, transferSyntax: ts };
  }
  const what = encapsulated ? `compressed (${info?.name ?? stored}, ${storedType})` : "uncompressed (application/octet-stream)";
  const can = canDecode(stored) ? `; the relay can send them as application/octet-stream (Explicit VR Little Endian) or transcode to ${transcodeTargetsSentence()}` : `; the relay has no decoder for ${info?.name ?? stored}, so accept ${storedType} or transfer-syntax=*`;
  throw new HttpError(406, `the frames are stored ${what}${can}`);
}
