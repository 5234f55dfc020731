import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { ohifAppConfig, ohifAppConfigScript, OhifBuildError, publicPathPatch, replaceStream, rewriteOhifIndex } from "../../src/console/ohif.ts";
import { ConfigError, loadConfig } from "../../src/config.ts";

// the shape of OHIF 3.13.2's dist/index.html, shortened
const OHIF_INDEX =
  '<!doctype html><html lang="en"><head><meta charset="UTF-8"><script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>' +
  '<link rel="manifest" href="/manifest.json"><link rel="icon" href="/assets/favicon.ico"><script rel="preload" as="script" src="/app-config.js"></script>' +
  '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>' +
  '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script><script defer="defer" src="/app.bundle.0f6159c501addfe9.js"></script>' +
  '<link href="/app.bundle.css" rel="stylesheet"><a href="//example.org/x">x</a></head><body></body></html>';

async function through(chunks: string[], from: string, to: string): Promise<string> {
  const out: Buffer[] = [];
  for await (const c of Readable.from(chunks.map((s) => Buffer.from(s))).pipe(replaceStream(Buffer.from(from), Buffer.from(to)))) out.push(c as Buffer);
  return Buffer.concat(out).toString();
}

describe("OHIF's build served under the relay's paths", () => {
  it("rewrites index.html: public URL, links into the assets path, the page's own config, no service worker, no referrer", () => {
    const html = rewriteOhifIndex(OHIF_INDEX, { assetsPath: "/viewer/", configSrc: "/share/drs_abc/app-config.js" });
    expect(html.match(/window\.PUBLIC_URL="\/viewer\/"/g)).toHaveLength(2);
    expect(html).not.toContain('window.PUBLIC_URL="/"');
    expect(html).toContain('src="/share/drs_abc/app-config.js"');
    expect(html).toContain('src="/viewer/app.bundle.0f6159c501addfe9.js"');
    expect(html).toContain('href="/viewer/assets/favicon.ico"');
    expect(html).toContain('href="/viewer/app.bundle.css"');
    expect(html).toContain('href="//example.org/x"');
    expect(html).not.toContain("init-service-worker");
    expect(html).toContain('<meta name="referrer" content="no-referrer">');
  });

  it("refuses an index.html it does not recognise", () => {
    expect(() => rewriteOhifIndex("<html><head></head></html>", { assetsPath: "/viewer/", configSrc: "/c.js" })).toThrow(OhifBuildError);
  });

  it("replaces a pattern in a stream, also when it is split across chunks", async () => {
    const { from, to } = publicPathPatch("/viewer", "app.bundle.js")!;
    const src = `a;__webpack_require__.p = "/";b;__webpack_require__.p = "/";`;
    const want = src.split(from.toString()).join(to.toString());
    expect(want).toContain('__webpack_require__.p = "/viewer/"');
    for (let cut = 1; cut < src.length; cut += 3) {
      expect(await through([src.slice(0, cut), src.slice(cut)], from.toString(), to.toString())).toBe(want);
    }
    expect(await through(src.split(""), from.toString(), to.toString())).toBe(want);
    expect(await through(["no match here"], from.toString(), to.toString())).toBe("no match here");
    expect(publicPathPatch("/viewer", "x.css")).toEqual({ from: Buffer.from("url(/"), to: Buffer.from("url(/viewer/") });
    expect(publicPathPatch("/viewer", "x.wasm")).toBeNull();
  });

  it("configures one DICOMweb data source on the share link's scoped root, without a study list", () => {
    const c = ohifAppConfig({ routerBasename: "/share/drs_x", dicomwebPath: "/share/drs_x/dicom-web" }) as {
      routerBasename: string; showStudyList: boolean; dataSources: Array<{ configuration: Record<string, unknown> }>;
    };
    expect(c.routerBasename).toBe("/share/drs_x");
    expect(c.showStudyList).toBe(false);
    expect((c as unknown as { customizationService: unknown }).customizationService).toEqual({ "ohif.tours": { $set: [] } });
    expect(c.dataSources).toHaveLength(1);
    expect(c.dataSources[0]!.configuration).toMatchObject({
      qidoRoot: "/share/drs_x/dicom-web", wadoRoot: "/share/drs_x/dicom-web", wadoUriRoot: "/share/drs_x/dicom-web",
      imageRendering: "wadors", thumbnailRendering: "thumbnail", thumbnailRequestStrategy: "fetch", supportsFuzzyMatching: false,
    });
    const script = ohifAppConfigScript({ routerBasename: "/share/</script>", dicomwebPath: "/d" });
    expect(script).not.toContain("</script>");
    expect(script).toContain("window.location.origin + c.qidoRoot");
  });

  it("refuses console or viewer paths that would open a guarded route without a token", () => {
    expect(() => loadConfig({ env: {}, overrides: { console: { path: "/dicom-web" } } })).toThrow(ConfigError);
    expect(() => loadConfig({ env: {}, overrides: { viewer: { assetsPath: "/api/viewer" } } })).toThrow(/overlaps \/api/);
    expect(() => loadConfig({ env: {}, overrides: { viewer: { assetsPath: "/console" } } })).toThrow(/different paths/);
    const c = loadConfig({ env: {} });
    expect(c.console).toEqual({ enabled: true, path: "/console" });
    expect(c.viewer.ohifDir).toMatch(/ohif-3\.13\.2$/);
  });
});
