/**
 * Rendered resources (PS3.18 8.3.5, 10.4.1.1.3) and thumbnails (10.4.1.1.4): a frame decoded, windowed and encoded
 * as image/jpeg (default) or image/png by src/imaging/render.ts. Instance: its first frame. Frames: one image, or
 * multipart/related of images for a list. Series and study: multipart/related with the first frame of each image
 * instance, rendered one at a time. Thumbnail: a small JPEG of the representative frame (the middle image of the
 * series; for a study, of its first series; for an instance, its first frame).
 */
import { Readable } from "node:stream";
import { Router, type Request, type Response } from "express";
import type { InstanceLocation, InstanceScope } from "../catalog/index.ts";
import { parseAccept } from "../dicom/accept.ts";
import { multipartBoundary, writeMultipart } from "../dicom/multipart.ts";
import { HttpError } from "../http/errors.ts";
import { CodecError } from "../imaging/codecs.ts";
import type { PixelModule } from "../imaging/pixelModule.ts";
import { parseQuality, parseViewport, parseWindow, renderFrame, RenderError, type RenderParams } from "../imaging/render.ts";
import { decodedFrame } from "../imaging/transcode.ts";
import { scopeOf, type DicomwebServices } from "./context.ts";
import { parseFrameList, pixelModuleFor } from "./wado.ts";

const THUMBNAIL_SIZE = 128;

function mediaTypeOf(req: Request): "image/jpeg" | "image/png" {
  const ranges = parseAccept(req.get("accept"));
  for (const r of ranges) {
    if (r.mediaType === "image/jpeg" || r.mediaType === "image/*" || r.mediaType === "*/*") return "image/jpeg";
    if (r.mediaType === "image/png") return "image/png";
    // multipart/related; type=... for lists
    if (r.mediaType === "multipart/related" && (r.params.type === "image/png" || r.params.type === "image/jpeg")) return r.params.type;
  }
  throw new HttpError(406, "rendered images are available as image/jpeg (the default) or image/png");
}

function paramsOf(req: Request, thumbnail: boolean): RenderParams {
  const q = (name: string): string | undefined => {
    const v = req.query[name];
    return typeof v === "string" ? v : Array.isArray(v) && typeof v[0] === "string" ? v[0] : undefined;
  };
  try {
    const window = q("window");
    const viewport = q("viewport");
    const quality = q("quality");
    return {
      mediaType: mediaTypeOf(req),
      ...(window ? { window: parseWindow(window) } : {}),
      viewport: viewport ? parseViewport(viewport) : thumbnail ? { vw: THUMBNAIL_SIZE, vh: THUMBNAIL_SIZE } : undefined,
      ...(quality ? { quality: parseQuality(quality) } : {}),
    };
  } catch (err) {
    if (err instanceof RenderError) throw new HttpError(400, err.message);
    throw err;
  }
}


async function render(svc: DicomwebServices, inst: InstanceLocation, n: number, params: RenderParams): Promise<Buffer> {
  const px = inst.pixelData;
  if (!px) throw new HttpError(404, `instance ${inst.sopInstanceUID} has no pixel data to render`);
  if (n > px.frames.length) throw new HttpError(404, `frame ${n} does not exist: instance ${inst.sopInstanceUID} has ${px.frames.length} frame(s)`);
  const pm = await pixelModuleFor(svc, inst);
  if (typeof pm === "string") throw new HttpError(404, `instance ${inst.sopInstanceUID} cannot be rendered: ${pm}`);
  try {
    const d = await decodedFrame(svc.store, inst, pm as PixelModule, n);
    return renderFrame(d.pixels, pm, d.photometricInterpretation, d.planarConfiguration, params).body;
  } catch (err) {
    if (err instanceof RenderError) throw new HttpError(406, `instance ${inst.sopInstanceUID} cannot be rendered: ${err.message}`);
    if (err instanceof CodecError) throw new HttpError(406, `instance ${inst.sopInstanceUID} cannot be rendered: ${err.message}`);
    throw err;
  }
}

const isImage = (i: InstanceLocation) => i.pixelData !== null && i.pixelData.frames.length > 0;

function sendImage(res: Response, type: string, body: Buffer): void {
  res.status(200).type(type).setHeader("Content-Length", String(body.length));
  res.end(body);
}

async function sendImages(res: Response, type: string, images: AsyncIterable<Buffer>): Promise<void> {
  const boundary = multipartBoundary();
  // the first image is made before the status line, so an image that cannot be rendered is an error, not a cut response
  const it = images[Symbol.asyncIterator]();
  const first = await it.next();
  res.status(200).setHeader("Content-Type", `multipart/related; type="${type}"; boundary=${boundary}`);
  await writeMultipart(res, boundary, (async function* () {
    let r = first;
    while (!r.done) {
      yield { contentType: type, headers: { "Content-Length": String(r.value.length) }, body: Readable.from([r.value]) };
      r = await it.next();
    }
  })());
  res.end();
}

export function renderedRoutes(svc: DicomwebServices): Router {
  const r = Router();

  const list = async (scope: InstanceScope): Promise<InstanceLocation[]> => {
    const all = await svc.index.listInstances(scope);
    const what = scope.sopInstanceUID ? `instance ${scope.sopInstanceUID}` : scope.seriesInstanceUID ? `series ${scope.seriesInstanceUID}` : `study ${scope.studyInstanceUID}`;
    if (!all.length) throw new HttpError(404, `no ${what} on this relay`);
    return all;
  };

  // ---- rendered ----
  const many = async (req: Request, res: Response) => {
    const params = paramsOf(req, false);
    const images = (await list(scopeOf(req, res))).filter(isImage);
    if (!images.length) throw new HttpError(404, "none of these instances has pixel data to render");
    await sendImages(res, params.mediaType, (async function* () {
      for (const inst of images) yield await render(svc, inst, 1, params);
    })());
  };
  r.get("/studies/:study/rendered", many);
  r.get("/studies/:study/series/:series/rendered", many);
  r.get("/studies/:study/series/:series/instances/:instance/rendered", async (req, res) => {
    const params = paramsOf(req, false);
    const [inst] = await list(scopeOf(req, res));
    sendImage(res, params.mediaType, await render(svc, inst!, 1, params));
  });
  r.get("/studies/:study/series/:series/instances/:instance/frames/:frames/rendered", async (req, res) => {
    const params = paramsOf(req, false);
    const numbers = parseFrameList(String(req.params.frames));
    const [inst] = await list(scopeOf(req, res));
    if (numbers.length === 1) return sendImage(res, params.mediaType, await render(svc, inst!, numbers[0]!, params));
    await sendImages(res, params.mediaType, (async function* () {
      for (const n of numbers) yield await render(svc, inst!, n, params);
    })());
  });

  // ---- thumbnails ----
  const middle = (images: InstanceLocation[]) => images[Math.floor((images.length - 1) / 2)]!;
  r.get("/studies/:study/thumbnail", async (req, res) => {
    const params = paramsOf(req, true);
    const images = (await list(scopeOf(req, res))).filter(isImage);
    if (!images.length) throw new HttpError(404, "the study has no image to make a thumbnail of");
    const firstSeries = images[0]!.seriesInstanceUID;
    sendImage(res, params.mediaType, await render(svc, middle(images.filter((i) => i.seriesInstanceUID === firstSeries)), 1, params));
  });
  r.get("/studies/:study/series/:series/thumbnail", async (req, res) => {
    const params = paramsOf(req, true);
    const images = (await list(scopeOf(req, res))).filter(isImage);
    if (!images.length) throw new HttpError(404, "the series has no image to make a thumbnail of");
    sendImage(res, params.mediaType, await render(svc, middle(images), 1, params));
  });
  r.get("/studies/:study/series/:series/instances/:instance/thumbnail", async (req, res) => {
    const params = paramsOf(req, true);
    const [inst] = await list(scopeOf(req, res));
    sendImage(res, params.mediaType, await render(svc, inst!, 1, params));
  });
  r.get("/studies/:study/series/:series/instances/:instance/frames/:frames/thumbnail", async (req, res) => {
    const params = paramsOf(req, true);
    const numbers = parseFrameList(String(req.params.frames));
    const [inst] = await list(scopeOf(req, res));
    sendImage(res, params.mediaType, await render(svc, inst!, numbers[0]!, params));
  });
  return r;
}
