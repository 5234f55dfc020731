/**
 * What the relay changes in OHIF's static build to serve it under its own paths (no I/O here):
 * - index.html: OHIF's build assumes it lives at "/" (window.PUBLIC_URL="/", absolute "/..." links, "/app-config.js");
 *   the relay serves the files under viewer.assetsPath and each share link's page under /share/{link}/viewer.
 * - the JavaScript bundles: webpack's public path is compiled in as "/" (chunks, workers, wasm are fetched from it).
 * - app-config.js: generated, one DICOMweb data source on the share link's study-scoped root.
 */
import { Transform, type TransformCallback } from "node:stream";

export class OhifBuildError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OhifBuildError";
  }
}

/** Where OHIF's index.html should load things from. */
export interface OhifPagePaths {
  /** where the static build is served, with a trailing slash, e.g. /viewer/ */
  assetsPath: string;
  /** the generated app-config.js for this page */
  configSrc: string;
}

const PUBLIC_URL_RE = /window\.PUBLIC_URL\s*=\s*"\/"/g;
const CONFIG_SRC_RE = /src="\/app-config\.js"/;

/** Rewrites OHIF's index.html for the given paths; refuses a build whose index.html it does not recognise. */
export function rewriteOhifIndex(html: string, paths: OhifPagePaths): string {
  if (!PUBLIC_URL_RE.test(html) || !CONFIG_SRC_RE.test(html)) {
    throw new OhifBuildError('this OHIF build\'s index.html has no window.PUBLIC_URL="/" or no /app-config.js script; install a supported release with scripts/install-ohif.sh');
  }
  PUBLIC_URL_RE.lastIndex = 0;
  const assets = paths.assetsPath.endsWith("/") ? paths.assetsPath : paths.assetsPath + "/";
  return (
    html
      .replace(PUBLIC_URL_RE, `window.PUBLIC_URL=${JSON.stringify(assets)}`)
      // a service worker would cache the viewer (and share pages) in the browser; not wanted for medical data
      .replace(/<script[^>]*src="\/init-service-worker\.js"[^>]*><\/script>/g, "")
      // the configuration is the page's own; a placeholder keeps it out of the next replacement
      .replace(CONFIG_SRC_RE, 'src="\u0000config"')
      // every other absolute link of the build ("/assets/...", "/app.bundle...js") points into the assets path
      .replace(/(href|src)="\/(?!\/)/g, (_m, attr: string) => `${attr}="${assets}`)
      .replace('src="\u0000config"', `src="${escapeAttr(paths.configSrc)}"`)
      // share links carry their secret in the URL: never send it on as a Referer
      .replace(/<head>/i, '<head><meta name="referrer" content="no-referrer">')
  );
}

function escapeAttr(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;");
}

/** What changes in a static file of the build: webpack's public path in scripts, root-relative url(/...) in styles. */
export function publicPathPatch(assetsPath: string, file: string): { from: Buffer; to: Buffer } | null {
  const assets = assetsPath.endsWith("/") ? assetsPath : assetsPath + "/";
  if (file.endsWith(".js")) return { from: Buffer.from('__webpack_require__.p = "/"'), to: Buffer.from(`__webpack_require__.p = ${JSON.stringify(assets)}`) };
  if (file.endsWith(".css")) return { from: Buffer.from("url(/"), to: Buffer.from(`url(${assets}`) };
  return null;
}

/** A stream that replaces every occurrence of `from` with `to`, also across chunk boundaries. */
export function replaceStream(from: Buffer, to: Buffer): Transform {
  if (!from.length) throw new Error("replaceStream: empty pattern");
  let carry = Buffer.alloc(0);
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      const buf = carry.length ? Buffer.concat([carry, chunk]) : chunk;
      const parts: Buffer[] = [];
      let start = 0;
      for (let i = buf.indexOf(from, start); i !== -1; i = buf.indexOf(from, start)) {
        parts.push(buf.subarray(start, i), to);
        start = i + from.length;
      }
      // keep the tail that could be the beginning of a match split over two chunks
      const keep = Math.min(from.length - 1, buf.length - start);
      parts.push(buf.subarray(start, buf.length - keep));
      carry = Buffer.from(buf.subarray(buf.length - keep));
      cb(null, Buffer.concat(parts));
    },
    flush(cb: TransformCallback) {
      cb(null, carry);
    },
  });
}

export interface ViewerConfigOptions {
  /** OHIF's router base: the page's path without the route, e.g. /share/{link} */
  routerBasename: string;
  /** path of the DICOMweb root the viewer reads, e.g. /share/{link}/dicom-web (made absolute in the browser) */
  dicomwebPath: string;
}

/** OHIF's window.config: one DICOMweb data source on the relay, no study list, nothing fetched elsewhere. */
export function ohifAppConfig(opts: ViewerConfigOptions): Record<string, unknown> {
  return {
    name: "dicom-relay",
    routerBasename: opts.routerBasename,
    // the share link opens its studies only: OHIF's own study list stays off
    showStudyList: false,
    extensions: [],
    modes: [],
    // no onboarding tour over the images: a radiologist opens one study and reads it
    customizationService: { "ohif.tours": { $set: [] } },
    investigationalUseDialog: { option: "never" },
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
    showErrorDetails: "production",
    defaultDataSourceName: "relay",
    dataSources: [
      {
        namespace: "@ohif/extension-default.dataSourcesModule.dicomweb",
        sourceName: "relay",
        configuration: {
          friendlyName: "dicom-relay",
          name: "relay",
          wadoUriRoot: opts.dicomwebPath,
          qidoRoot: opts.dicomwebPath,
          wadoRoot: opts.dicomwebPath,
          qidoSupportsIncludeField: false,
          imageRendering: "wadors",
          // series thumbnails are the relay's own /thumbnail (PS3.18 10.4.1.1.4, a JPEG rendered on the server) fetched
          // with a plain GET (Accept: image/jpeg), so the browser decodes no frame for them; "wadors" would
          thumbnailRendering: "thumbnail",
          thumbnailRequestStrategy: "fetch",
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          supportsReject: false,
          staticWado: false,
          singlepart: "bulkdata,video,pdf",
          bulkDataURI: { enabled: true, relativeResolution: "studies" },
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
  };
}

/** app-config.js: the config above, its DICOMweb roots made absolute on the origin the page was opened from. */
export function ohifAppConfigScript(opts: ViewerConfigOptions): string {
  const config = JSON.stringify(ohifAppConfig(opts)).replace(/</g, "\\u003c");
  return [
    "/* generated by dicom-relay for this page; see docs/viewer.md */",
    "(function () {",
    `  var config = ${config};`,
    "  var c = config.dataSources[0].configuration;",
    "  c.wadoUriRoot = c.qidoRoot = c.wadoRoot = window.location.origin + c.qidoRoot;",
    "  window.config = config;",
    "})();",
    "",
  ].join("\n");
}
