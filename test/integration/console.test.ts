/**
 * The console's and the viewer's HTTP routes on a real relay (auth on), without a browser: what is open without a
 * token, what is guarded, the viewer link route, share-link viewer pages and their refusals, the 503 without OHIF.
 * OHIF itself is a tiny stand-in build here (same file shapes); test/e2e/console.test.ts runs the real one.
 */
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sqliteAccess, startTestRelay, type TestRelay } from "../support/relay.ts";
import { makeInstance } from "../../scripts/lib/synthetic.ts";

const FAKE_INDEX =
  '<!doctype html><html lang="en"><head><script>window.PUBLIC_URL="/"</script><script src="/app-config.js"></script>' +
  '<script type="module" src="/init-service-worker.js"></script><script defer src="/app.bundle.abc.js"></script><link href="/app.bundle.css" rel="stylesheet"></head><body></body></html>';

function fakeOhif(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fake-ohif-"));
  fs.writeFileSync(path.join(dir, "index.html"), FAKE_INDEX);
  fs.writeFileSync(path.join(dir, "app-config.js"), "window.config = {dataSources: [{configuration: {qidoRoot: 'https://demo.example'}}]};");
  fs.writeFileSync(path.join(dir, "app.bundle.abc.js"), 'var x = 1;\n__webpack_require__.p = "/";\n');
  fs.writeFileSync(path.join(dir, "app.bundle.css"), "@font-face{src:url(/a.woff2)}");
  fs.writeFileSync(path.join(dir, "a.woff2"), "font");
  return dir;
}

describe("console and viewer routes", () => {
  let relay: TestRelay;
  let bare: TestRelay;
  let ohif: string;
  let admin: string;
  let reader: string;
  let uploader: string;
  let study: string;
  const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
  const get = (r: TestRelay, p: string, headers: Record<string, string> = {}) => fetch(r.url + p, { headers, redirect: "manual" });

  beforeAll(async () => {
    ohif = fakeOhif();
    relay = await startTestRelay({ auth: { enabled: true, realm: "dicom-relay", shareDefaultExpiry: "7d" }, viewer: { ohifDir: ohif } });
    bare = await startTestRelay({ auth: { enabled: true, realm: "dicom-relay", shareDefaultExpiry: "7d" }, viewer: { ohifDir: path.join(ohif, "missing") } });
    admin = relay.initialAdminToken!;
    const tokens = sqliteAccess(relay).tokens;
    reader = tokens.create({ scopes: "read", createdBy: "test" }).token;
    uploader = tokens.create({ scopes: "upload", createdBy: "test" }).token;
    const stored = await relay.services.ingest.ingestStream(Readable.from([makeInstance({ patientName: "Wang^XiaoDong=王^小东", charset: "GB18030", seed: 1 })]), { source: "test" });
    study = stored.studyInstanceUID!;
  });

  afterAll(async () => {
    await relay?.dispose();
    await bare?.dispose();
    fs.rmSync(ohif, { recursive: true, force: true });
  });

  it("serves the console without a token (no data in it), with a strict Content-Security-Policy", async () => {
    const page = await get(relay, "/console/");
    expect(page.status).toBe(200);
    expect(page.headers.get("content-security-policy")).toContain("default-src 'self'");
    expect(await page.text()).toContain("Access token");
    expect((await get(relay, "/console")).headers.get("location")).toBe("/console/");
    expect((await get(relay, "/")).headers.get("location")).toBe("/console/");
    const tus = await get(relay, "/console/vendor/tus.min.js");
    expect(tus.status).toBe(200);
    expect(await tus.text()).toContain("tus");
    expect(await (await get(relay, "/console/settings.json")).json()).toEqual({ authEnabled: true });
    for (const f of ["app.js", "api.js", "upload.js", "studies.js", "dicom.js", "style.css"]) expect((await get(relay, `/console/${f}`)).status).toBe(200);
  });

  it("GET /api/session says who the token is, and refuses without one", async () => {
    const none = await get(relay, "/api/session");
    expect(none.status).toBe(401);
    expect(none.headers.get("www-authenticate")).toContain("Bearer");
    const bad = await get(relay, "/api/session", bearer("drt_0000000000000000_" + "a".repeat(43)));
    expect(bad.status).toBe(401);
    const ok = await get(relay, "/api/session", bearer(reader));
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ kind: "token", scopes: ["read"], authEnabled: true, dicomwebRoot: "/dicom-web", tusPath: "/api/uploads" });
  });

  it("POST /api/viewer-links: read scope, a known study, a short share link that opens the viewer", async () => {
    const post = (token: string, body: unknown, type = "application/json") =>
      fetch(`${relay.url}/api/viewer-links`, { method: "POST", headers: { ...bearer(token), "Content-Type": type }, body: JSON.stringify(body) });
    expect((await post(uploader, { studyInstanceUID: study })).status).toBe(403);
    const bad = await post(reader, { studyInstanceUID: "1.2.abc" });
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toContain("DICOM UID");
    expect((await post(reader, { studyInstanceUID: "1.2.3.4" })).status).toBe(404);
    expect((await post(reader, { studyInstanceUID: study }, "text/plain")).status).toBe(415);
    const res = await post(reader, { studyInstanceUID: study });
    expect(res.status).toBe(201);
    const link = (await res.json()) as { url: string; expiresAt: string; shareId: string };
    expect(link.url).toMatch(new RegExp(`^/share/drs_${link.shareId}_[A-Za-z0-9_-]{43}/viewer\\?StudyInstanceUIDs=${study}$`));
    const hours = (Date.parse(link.expiresAt) - Date.now()) / 3_600_000;
    expect(hours).toBeGreaterThan(1.9);
    expect(hours).toBeLessThanOrEqual(2);
    const page = await get(relay, link.url);
    expect(page.status).toBe(200);
    expect(page.headers.get("referrer-policy")).toBe("no-referrer");
    const html = await page.text();
    expect(html).toContain('window.PUBLIC_URL="/viewer/"');
    expect(html).toContain(`src="${link.url.split("/viewer?")[0]}/app-config.js"`);
    const audit = sqliteAccess(relay).audit.query({ action: "viewer.link" });
    expect(audit.at(-1)).toMatchObject({ outcome: "success", studyInstanceUID: study });
  });

  it("share link pages: redirect to the link's studies, a config on the scoped root, sentences for bad links, secrets kept out of the audit", async () => {
    const tokens = sqliteAccess(relay).tokens;
    const share = tokens.createShare({ studies: [study], createdBy: "test" });
    const base = `/share/${share.token}`;
    const first = await get(relay, `${base}/viewer`);
    expect(first.status).toBe(302);
    expect(first.headers.get("location")).toBe(`${base}/viewer?StudyInstanceUIDs=${study}`);
    expect((await get(relay, base)).headers.get("location")).toBe(`${base}/viewer`);
    const config = await get(relay, `${base}/app-config.js`);
    expect(config.status).toBe(200);
    const js = await config.text();
    expect(js).toContain(`"qidoRoot":"${base}/dicom-web"`);
    expect(js).toContain(`"routerBasename":"${base}"`);
    expect(js).not.toContain("demo.example");
    // the data routes under the link still work, and other paths under it stay closed
    expect((await get(relay, `${base}/dicom-web/studies`)).status).toBe(200);
    expect((await get(relay, `${base}/anything`)).status).toBe(404);

    const unknown = await get(relay, `/share/drs_0000000000000000_${"b".repeat(43)}/viewer`);
    expect(unknown.status).toBe(401);
    expect(await unknown.text()).toContain("not a valid share link");
    const notShare = await get(relay, `/share/${admin}/viewer`);
    expect(notShare.status).toBe(401);
    const expired = tokens.createShare({ studies: [study], createdBy: "test", expiresAt: new Date(Date.now() - 1000).toISOString() });
    const old = await get(relay, `/share/${expired.token}/app-config.js`);
    expect(old.status).toBe(401);
    expect(await old.text()).toContain("This share link has expired");

    const rows = sqliteAccess(relay).audit.query({ action: "share.viewer" });
    expect(rows.some((r) => r.outcome === "success" && r.studyInstanceUID === study)).toBe(true);
    expect(rows.some((r) => r.outcome === "failure")).toBe(true);
    for (const r of sqliteAccess(relay).audit.query({})) expect(r.route ?? "").not.toContain(share.token);
  });

  it("serves OHIF's files without a token, with their root paths rewritten, and nothing outside the build", async () => {
    const bundle = await get(relay, "/viewer/app.bundle.abc.js");
    expect(bundle.status).toBe(200);
    expect(bundle.headers.get("content-type")).toContain("javascript");
    expect(await bundle.text()).toBe('var x = 1;\n__webpack_require__.p = "/viewer/";\n');
    expect(await (await get(relay, "/viewer/app.bundle.css")).text()).toBe("@font-face{src:url(/viewer/a.woff2)}");
    expect(await (await get(relay, "/viewer/a.woff2")).text()).toBe("font");
    expect((await get(relay, "/viewer/app-config.js")).status).toBe(404);
    expect((await get(relay, "/viewer/..%2f..%2f..%2fetc%2fpasswd")).status).toBe(404);
    // sent raw: fetch would resolve the dots before sending
    for (const raw of ["/viewer/%2e%2e/%2e%2e/%2e%2e/etc/hostname.js", "/viewer/../../etc/hostname.js", "/viewer/..%5c..%5cpackage.json"]) {
      const status = await new Promise<number>((resolve, reject) => {
        http.get({ host: "127.0.0.1", port: relay.port, path: raw }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        }).on("error", reject);
      });
      expect([404, 401]).toContain(status);
    }
    const index = await get(relay, "/viewer/");
    expect(index.status).toBe(200);
    expect(await index.text()).toContain("share link");
  });

  it("without an OHIF build, viewer routes answer 503 with how to install it", async () => {
    const assets = await get(bare, "/viewer/app.bundle.abc.js");
    expect(assets.status).toBe(503);
    expect(await assets.text()).toContain("scripts/install-ohif.sh");
    const share = await bare.services.access!.tokens.createShare({ studies: ["1.2.3"], createdBy: "test" });
    const page = await get(bare, `/share/${share.token}/viewer?StudyInstanceUIDs=1.2.3`);
    expect(page.status).toBe(503);
    expect(await page.text()).toContain("viewer.ohifDir");
  });
});
