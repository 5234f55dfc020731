/**
 * The web console and the OHIF viewer in a real headless Chromium against a real relay (auth on):
 * sign in, send a study through the page (folder chooser, then the folder dragged onto the page) over a link that is
 * cut once and a page reload mid-way, the study list
 * (non-Latin names), documents, a share link opened in a fresh browser context where OHIF draws the study through
 * the study-scoped root and cannot list other studies, the console's own "open in viewer", revoking the link.
 * Screenshots of every page go to test-artifacts/.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { startFaultProxy, type FaultProxy } from "../support/faultProxy.ts";
import { artifactPath, chromiumMissing, launchChromium, ohifDir, type TestBrowser } from "../support/browser.ts";
import { makeInstance, writeStudy } from "../../scripts/lib/synthetic.ts";

const missing = chromiumMissing();
const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
if (missing) console.warn(`skipping the browser tests: ${missing}`);

/**
 * Pixels that are not (near) black in each element the selector finds (a canvas, or an image once loaded; 0 for one
 * not drawn yet), counted by copying it onto a 2D canvas in the page. Canvases smaller than minSize are skipped.
 */
async function litPixelsOf(page: Page, selector: string, minSize = 0): Promise<number[]> {
  return page.evaluate(async ({ selector, minSize }) => {
    const counts: number[] = [];
    for (const el of Array.from(document.querySelectorAll(selector))) {
      let source: CanvasImageSource;
      let width: number;
      let height: number;
      if (el instanceof HTMLCanvasElement) {
        if (el.width < minSize || el.height < minSize) continue;
        // a WebGL canvas is read through an image of it
        const img = new Image();
        img.src = el.toDataURL("image/png");
        await img.decode();
        [source, width, height] = [img, el.width, el.height];
      } else {
        const img = el instanceof HTMLImageElement ? el : el.querySelector("img");
        if (!img || !img.complete || img.naturalWidth === 0) {
          counts.push(0);
          continue;
        }
        [source, width, height] = [img, img.naturalWidth, img.naturalHeight];
      }
      const copy = document.createElement("canvas");
      copy.width = width;
      copy.height = height;
      const ctx = copy.getContext("2d")!;
      ctx.drawImage(source, 0, 0);
      const data = ctx.getImageData(0, 0, width, height).data;
      let lit = 0;
      for (let i = 0; i < data.length; i += 4) if (data[i]! + data[i + 1]! + data[i + 2]! > 30) lit++;
      counts.push(lit);
    }
    return counts;
  }, { selector, minSize });
}

/** Lit pixels of the best-drawn viewport canvas. */
const litPixels = async (page: Page): Promise<number> => Math.max(0, ...(await litPixelsOf(page, "canvas", 64)));
/** Lit pixels of each of OHIF's series thumbnails (its study browser), as drawn: 0 for one without a loaded image. */
const thumbnailLitPixels = (page: Page): Promise<number[]> => litPixelsOf(page, '[data-cy="study-browser-thumbnail"]');

/** Drags a folder from the disk onto an element, as a person does from a file manager (Chromium DevTools protocol). */
async function dropFolder(page: Page, selector: string, dir: string): Promise<void> {
  const target = page.locator(selector);
  await target.scrollIntoViewIfNeeded();
  const box = (await target.boundingBox())!;
  const cdp = await page.context().newCDPSession(page);
  const data = { items: [], files: [dir], dragOperationsMask: 1 };
  for (const type of ["dragEnter", "dragOver", "drop"] as const) {
    await cdp.send("Input.dispatchDragEvent", { type, x: box.x + box.width / 2, y: box.y + box.height / 2, data });
  }
  await cdp.detach();
}

describe.skipIf(missing)("web console and viewer in Chromium", () => {
  let relay: TestRelay;
  let home: TestRelay;
  let proxy: FaultProxy;
  let tb: TestBrowser;
  let admin: string;
  let workDir: string;
  let files: string[];
  let studyUID: string;
  let otherStudyUID: string;
  let shareViewerUrl: string;

  beforeAll(async () => {
    const ohif = ohifDir();
    // the patient's home PACS: another relay, which gets the completed transfer by STOW-RS on its own
    home = await startTestRelay();
    relay = await startTestRelay({
      auth: { enabled: true, realm: "dicom-relay", shareDefaultExpiry: "7d" },
      viewer: { ohifDir: ohif },
      forwarding: { enabled: true, rules: [{ name: "home-pacs", kind: "stow", url: home.dicomwebUrl }], retrySeconds: 1, pollSeconds: 1 },
    });
    admin = relay.initialAdminToken!;
    proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: relay.port } });
    tb = await launchChromium({ webgl: true });
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-console-"));
    const written = await writeStudy(path.join(workDir, "DICOM"), {
      instances: 6,
      seriesCount: 2,
      modality: "CT",
      patientName: "Wang^XiaoDong=王^小东",
      patientID: "CN-0002",
      charset: "GB18030",
      studyDescription: "CT CHEST",
      studyDate: "20240315",
      seed: 7,
    });
    studyUID = written.studyInstanceUID;
    // a CD export also carries things that are not DICOM
    fs.writeFileSync(path.join(workDir, "README.TXT"), "Viewer for Windows: run VIEWER.EXE\r\n");
    files = [...written.files, path.join(workDir, "README.TXT")];
    // another patient's study on the relay: the share link must never show it
    const other = makeInstance({ patientName: "Garcia^Lucia", patientID: "ES-1234", modality: "MR", seed: 3 });
    const stored = await relay.services.ingest.ingestStream(Readable.from([other]), { source: "test" });
    expect(stored.status).toBe("stored");
    otherStudyUID = stored.studyInstanceUID!;
  }, 300_000);

  afterAll(async () => {
    await tb?.close();
    await proxy?.close();
    await relay?.dispose();
    await home?.dispose();
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
  });

  async function signIn(page: Page, token: string): Promise<void> {
    // BROWSER_LOG=1 shows what the page logs and which requests failed (for debugging the pages)
    if (process.env.BROWSER_LOG) {
      page.on("console", (m) => console.log(`[page ${m.type()}] ${m.text().slice(0, 300)}`));
      page.on("response", (r) => r.status() >= 400 && console.log(`[page response ${r.status()}] ${r.request().method()} ${r.url().replace(/drs_[^/]+/, "drs_X")}`));
      page.on("requestfailed", (r) => console.log(`[page request failed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    }
    await page.goto(`${proxy.url}/console/`);
    await page.getByLabel("Access token").fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
  }

  it("refuses a wrong token with a sentence and keeps the sign-in page", async () => {
    const page = await tb.browser.newPage();
    await signIn(page, "drt_0000000000000000_" + "x".repeat(43));
    await expect.poll(() => page.locator("#message").textContent()).toContain("did not accept the access token");
    expect(await page.locator("#signin").isVisible()).toBe(true);
    expect(await page.locator("#nav").isVisible()).toBe(false);
    await page.screenshot({ path: artifactPath("console-signin-refused.png"), fullPage: true });
    await page.close();
  });

  it("a drop of files that are not DICOM gets a sentence, nothing is sent", async () => {
    const page = await tb.browser.newPage();
    await signIn(page, admin);
    await page.getByRole("link", { name: "Send a study" }).click();
    // the send view shows once the link's hashchange was handled; that handler clears the message, so a drop before
    // it had its sentence wiped (a flaky run)
    await expect.poll(() => page.locator("#send").isVisible()).toBe(true);
    await page.locator("#drop").evaluate((drop) => {
      const data = new DataTransfer();
      data.items.add(new File(["MZ this is VIEWER.EXE"], "VIEWER.EXE"));
      data.items.add(new File(["autorun"], "AUTORUN.INF"));
      drop.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    });
    await expect.poll(() => page.locator("#message").textContent(), { timeout: 10_000 }).toContain("None of these files is a DICOM image");
    expect(await page.locator("#file-rows").textContent()).toContain("left out: not a DICOM file");
    expect(await page.evaluate(() => localStorage.getItem("dicom-relay.transfer"))).toBeNull();
    await page.close();
  });

  it("sends a study through the page: cut once, paused and resumed, reloaded mid-way, then complete with a receipt", async () => {
    const context = await tb.browser.newContext({ viewport: { width: 1366, height: 768 } });
    const page = await context.newPage();
    await signIn(page, admin);
    await page.getByRole("link", { name: "Send a study" }).click();
    await expect.poll(() => page.locator("#send").isVisible()).toBe(true);

    // a slow link, and one cut after 1.2 MB
    proxy.setFaults({ bandwidthBytesPerSec: 300_000, resetEveryBytes: 1_200_000 });
    const upAtStart = proxy.stats().bytesUp;
    // the first time the whole folder through "Choose a folder", after the reload the same folder dropped on the page
    await page.locator("#pick-folder").setInputFiles(workDir);
    // the per-study summary asks first
    await page.locator("#plan-send").click();
    await expect.poll(() => proxy.stats().resets, { timeout: 60_000 }).toBeGreaterThanOrEqual(1);
    proxy.setFaults({ resetEveryBytes: 0 });
    expect(await page.locator("#file-rows").textContent()).toContain("left out: not a DICOM file");
    expect(await page.locator("#file-rows").textContent()).toContain("S001/I00001.dcm");

    // pause: nothing moves until resumed
    const progress = () => page.locator("#total-progress").evaluate((e) => (e as HTMLProgressElement).value);
    await page.getByRole("button", { name: "Pause" }).click();
    await expect.poll(() => page.locator("#upload-status").textContent()).toContain("Paused");
    expect(await page.getByRole("button", { name: "Pause" }).isVisible()).toBe(false);
    const paused = await progress();
    // per file: some sent or under way, some not begun; the total is their size-weighted sum
    const perFile = await page.locator("#file-rows tr").evaluateAll((rows) => rows
      .filter((r) => r.querySelector("td")?.textContent?.endsWith(".dcm"))
      .map((r) => r.querySelector("progress")?.value ?? -1));
    expect(perFile).toHaveLength(6);
    expect(perFile.some((v) => v > 0)).toBe(true);
    expect(perFile.some((v) => v < 1)).toBe(true);
    expect(await page.locator("#total-text").textContent()).toMatch(/ of .* sent$/);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await progress()).toBe(paused);
    await page.getByRole("button", { name: "Resume" }).click();
    await expect.poll(progress, { timeout: 60_000 }).toBeGreaterThan(paused);
    await expect.poll(() => page.locator("#total-progress").evaluate((e) => (e as HTMLProgressElement).value), { timeout: 60_000 })
      .toBeGreaterThan(0.5);
    const saved = JSON.parse((await page.evaluate(() => localStorage.getItem("dicom-relay.transfer"))) ?? "null") as { id: string } | null;
    expect(saved?.id).toMatch(/\w+/);
    const before = await (await fetch(`${relay.url}/api/transfers/${saved!.id}?instances=none`, { headers: { Authorization: `Bearer ${admin}` } })).json() as { complete: boolean };
    expect(before.complete).toBe(false);

    // the page is reloaded mid-way: it still knows the transfer and asks for the same folder again
    await page.reload();
    // the link drops with the reload: what the old page had handed to it (its progress counts bytes still queued on
    // the way, up to the whole study) never arrives, so the relay has part of the study, not all of it
    proxy.cutUnfinishedUploads();
    const deliveredBeforeReload = proxy.stats().bytesUp - upAtStart;
    const afterCut = await (await fetch(`${relay.url}/api/transfers/${saved!.id}?instances=none`, { headers: { Authorization: `Bearer ${admin}` } })).json() as { complete: boolean };
    expect(afterCut.complete).toBe(false);
    await expect.poll(() => page.locator("#resume-banner").textContent()).toContain("A transfer was interrupted");
    await page.screenshot({ path: artifactPath("console-send-interrupted.png"), fullPage: true });
    proxy.setFaults({ bandwidthBytesPerSec: 2_000_000 });
    const upBeforeResume = proxy.stats().bytesUp;
    // this time the folder is dragged onto the page, as from a file manager (a real drag through DevTools: the drop
    // carries directory entries that the page walks)
    await dropFolder(page, "#drop", workDir);
    await page.locator("#plan-send").click();
    await expect.poll(() => page.locator("#file-rows").textContent()).toContain("S001/I00001.dcm");
    await expect.poll(() => page.locator("#transfer-summary").getAttribute("data-complete"), { timeout: 120_000 }).not.toBeNull();
    // what had arrived before the reload is not sent again: after it, at most the rest plus one instance in flight
    const studyBytes = files.filter((f) => f.endsWith(".dcm")).reduce((n, f) => n + fs.statSync(f).size, 0);
    const oneInstance = fs.statSync(files[0]!).size;
    const sentAfterReload = proxy.stats().bytesUp - upBeforeResume;
    expect(sentAfterReload).toBeLessThan(studyBytes - deliveredBeforeReload + oneInstance + 128 * 1024);
    const summary = await page.locator("#transfer-summary").textContent();
    expect({ summary, problems: await page.locator("#transfer-problems").textContent(), files: await page.locator("#file-rows").textContent() })
      .toMatchObject({ summary: expect.stringContaining("Complete"), problems: "" });
    expect(summary).toContain(`Transfer ${saved!.id}`);
    expect(summary).toContain("0 missing, 0 failed");
    await expect.poll(() => page.locator("#receipt").isVisible()).toBe(true);
    expect(await page.getByRole("button", { name: /Pause|Resume/ }).count()).toBe(0);
    expect(await page.locator("#receipt-text").textContent()).toContain("signed a receipt");
    await page.screenshot({ path: artifactPath("console-send-complete.png"), fullPage: true });

    // the relay agrees: one transfer, complete, every instance of the study visible
    const t = await (await fetch(`${relay.url}/api/transfers/${saved!.id}?instances=none`, { headers: { Authorization: `Bearer ${admin}` } })).json() as { complete: boolean; total: number; received: number };
    expect(t).toMatchObject({ complete: true, total: 6 });
    const q = await (await fetch(`${relay.url}/dicom-web/studies/${studyUID}/instances`, { headers: { Authorization: `Bearer ${admin}` } })).json() as unknown[];
    expect(q).toHaveLength(6);
    expect(await page.evaluate(() => localStorage.getItem("dicom-relay.transfer"))).toBeNull();
    await context.close();
  }, 300_000);

  it("a transfer that completed while the page was away is shown complete when the folder comes again, not opened twice", async () => {
    const list = async () => ((await (await fetch(`${relay.url}/api/transfers?limit=1000`, { headers: { Authorization: `Bearer ${admin}` } })).json()) as { transfers: Array<{ id: string; state: string }> }).transfers;
    const before = await list();
    const done = before.find((t) => t.state === "complete");
    expect(done).toBeDefined();
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(page, admin);
    await page.getByRole("link", { name: "Send a study" }).click();
    await expect.poll(() => page.locator("#send").isVisible()).toBe(true);
    // the page had said "interrupted"; the last bytes, still on the link, then arrived and the transfer completed
    await page.evaluate((id) => localStorage.setItem("dicom-relay.transfer", JSON.stringify({ id, ids: [id], files: 6, at: new Date().toISOString() })), done!.id);
    await page.locator("#pick-folder").setInputFiles(workDir);
    await page.locator("#plan-send").click();
    await expect.poll(() => page.locator("#transfer-summary").getAttribute("data-complete"), { timeout: 60_000 }).not.toBeNull();
    const summary = await page.locator("#transfer-summary").textContent();
    expect(summary).toContain(`Transfer ${done!.id}`);
    expect(summary).toContain("Complete");
    expect((await list()).map((t) => t.id).sort()).toEqual(before.map((t) => t.id).sort());
    await page.close();
  }, 120_000);

  it("lists studies with non-Latin names, filters them, shows documents and attaches one", async () => {
    proxy.setFaults({ bandwidthBytesPerSec: 0 });
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(page, admin);
    const row = page.locator(`#study-rows tr[data-study="${studyUID}"]`);
    await expect.poll(() => row.count()).toBe(1);
    const text = (await row.textContent()) ?? "";
    expect(text).toContain("王小东");
    expect(text).toContain("Wang, XiaoDong");
    // cells: patient, date, modalities, description, series, instances
    const cells = (await row.locator("td").allTextContents()).map((c) => c.trim());
    expect(cells.slice(1, 6)).toEqual(["2024-03-15", "CT", "CT CHEST", "2", "6"]);
    await page.screenshot({ path: artifactPath("console-studies.png"), fullPage: true });

    await page.getByLabel("Patient name").fill("Wang");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.locator("#studies-status").textContent()).toBe("1 study found.");
    await page.getByLabel("Modality").selectOption("MR");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.locator("#studies-status").textContent()).toBe("No study matches these filters.");
    await page.getByLabel("Patient name").fill("");
    await page.getByLabel("Modality").selectOption("");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.locator("#study-rows tr").count()).toBe(2);

    await row.getByRole("button", { name: "Details" }).click();
    // a plain imaging study: one calm line, not a red "missing" per kind
    await expect.poll(() => page.locator("#completeness").textContent()).toContain("No reports attached");
    // the completed transfer went to the home PACS by itself; the study's page says so
    await expect
      .poll(async () => ((await (await fetch(`${home.dicomwebUrl}/studies/${studyUID}/instances`)).json().catch(() => [])) as unknown[]).length, { timeout: 30_000 })
      .toBe(6);
    const forwarded = page.locator('#forward-rows tr[data-rule="home-pacs"]');
    await expect
      .poll(async () => {
        // the page reads the forwarding state when a study is opened: open it again until the job is done
        await row.getByRole("button", { name: "Details" }).click();
        await page.waitForTimeout(300);
        return (await forwarded.count()) ? await forwarded.textContent() : "";
      }, { timeout: 30_000 })
      .toMatch(/home-pacs.*delivered.*6.*0.*0/);
    // and the delivery part says who pulled what: the forwarding rule, all six instances (recorded as they went)
    const pulled = page.locator('#delivery-rows tr[data-recipient="rule:home-pacs"]');
    await expect
      .poll(async () => {
        await row.getByRole("button", { name: "Details" }).click();
        await page.waitForTimeout(300);
        return (await pulled.count()) ? (await pulled.locator("td").allTextContents()).slice(0, 3) : [];
      }, { timeout: 30_000 })
      .toEqual(["rule:home-pacs", "forwarded by the relay", "6"]);
    expect(await page.locator("#delivery-summary").textContent()).toMatch(/Every one of its 6 instance\(s\) was delivered by \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\./);
    await page.getByLabel("Kind").selectOption("pathology-report");
    await page.getByLabel("Title").fill("病理报告");
    await page.getByLabel("Language (e.g. zh, en, de)").fill("zh");
    await page.getByLabel("Document file").setInputFiles({ name: "report.pdf", mimeType: "application/pdf", buffer: Buffer.from("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n") });
    await page.getByRole("button", { name: "Attach" }).click();
    await expect.poll(() => page.locator("#attach-status").textContent()).toBe("Attached.");
    await expect.poll(() => page.locator("#completeness").textContent()).toContain("Pathology report: present (1, zh)");
    expect(await page.locator("#document-rows").textContent()).toContain("病理报告");

    // a file that is not a document: the relay's refusal in a sentence
    await page.getByLabel("Title").fill("scan");
    await page.getByLabel("Language (e.g. zh, en, de)").fill("en");
    await page.getByLabel("Document file").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("just text") });
    await page.getByRole("button", { name: "Attach" }).click();
    await expect.poll(() => page.locator("#attach-status").textContent()).toMatch(/not a PDF, JPEG or PNG/i);
    await page.screenshot({ path: artifactPath("console-study-detail.png"), fullPage: true });
    await page.close();
  }, 120_000);

  it("creates a share link; a fresh browser opens it in OHIF, which draws the study through the scoped root only", async () => {
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(page, admin);
    await page.locator(`#study-rows tr[data-study="${studyUID}"]`).getByRole("button", { name: "Details" }).click();
    await page.getByLabel("Valid for").selectOption("1d");
    await page.getByLabel("For whom (optional)").fill("second opinion Dr Li");
    await page.getByRole("button", { name: "Create share link" }).click();
    await expect.poll(() => page.locator("#share-url").count()).toBe(1);
    shareViewerUrl = (await page.locator("#share-url").getAttribute("href"))!;
    expect(shareViewerUrl).toMatch(/\/share\/drs_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\/viewer$/);
    await expect.poll(() => page.locator("#share-rows").textContent()).toContain("second opinion Dr Li");
    // "Valid for 1 day": the row shows an expiry on tomorrow's date, in the browser's own format
    const tomorrow = await page.evaluate(() => new Date(Date.now() + 86_400_000).toLocaleDateString());
    const shareRow = page.locator("#share-rows tr", { hasText: "second opinion Dr Li" });
    expect((await shareRow.locator("td").allTextContents())[2]).toContain(tomorrow);
    await expect.poll(() => page.locator("#audit-rows").textContent()).toContain("created a share link");
    await page.screenshot({ path: artifactPath("console-share-created.png"), fullPage: true });
    await page.close();

    // the radiologist: a fresh context (no token, no storage), only the link
    const token = /\/share\/([^/]+)\/viewer/.exec(shareViewerUrl)![1]!;
    const context = await tb.browser.newContext({ viewport: { width: 1280, height: 800 } });
    const viewer = await context.newPage();
    const requests: string[] = [];
    const thumbnailStatuses: number[] = [];
    viewer.on("request", (r) => requests.push(new URL(r.url()).pathname));
    viewer.on("response", (r) => new URL(r.url()).pathname.endsWith("/thumbnail") && thumbnailStatuses.push(r.status()));
    await viewer.goto(shareViewerUrl);
    expect(new URL(viewer.url()).searchParams.get("StudyInstanceUIDs")).toBe(studyUID);
    await expect.poll(() => litPixels(viewer), { timeout: 120_000, interval: 2000 }).toBeGreaterThan(1000);
    // OHIF's own series thumbnails: one per series (2), each an image with lit pixels, rendered by the relay
    // (/thumbnail, a JPEG) rather than decoded from frames in the browser
    await expect.poll(async () => (await thumbnailLitPixels(viewer)).filter((n) => n > 100).length, { timeout: 30_000, interval: 1000 }).toBe(2);
    await viewer.screenshot({ path: artifactPath("viewer-share.png") });

    const scoped = `/share/${token}/dicom-web/`;
    const dataRequests = requests.filter((p) => p.includes("/dicom-web/"));
    expect(dataRequests.length).toBeGreaterThan(0);
    expect(dataRequests.every((p) => p.startsWith(scoped))).toBe(true);
    expect(dataRequests.some((p) => p.startsWith(`${scoped}studies/${studyUID}/series`))).toBe(true);
    expect(dataRequests.some((p) => /\/frames\/|\/metadata$/.test(p))).toBe(true);
    const thumbnails = dataRequests.filter((p) => p.endsWith("/thumbnail"));
    expect(new Set(thumbnails.map((p) => /\/series\/([^/]+)\//.exec(p)?.[1])).size).toBe(2);
    expect(thumbnailStatuses.length).toBe(thumbnails.length);
    expect(thumbnailStatuses.every((s) => s === 200)).toBe(true);

    // from the shared page: the scoped root lists the shared study only; the other study and the plain root are closed
    const probe = await viewer.evaluate(async ({ scoped, other }) => {
      const list = await fetch(`${scoped}studies`, { headers: { Accept: "application/dicom+json" } });
      const studies = (await list.json()) as Array<Record<string, { Value?: string[] }>>;
      const otherMeta = await fetch(`${scoped}studies/${other}/metadata`);
      const plain = await fetch("/dicom-web/studies");
      return { uids: studies.map((s) => s["0020000D"]?.Value?.[0]), other: otherMeta.status, plain: plain.status };
    }, { scoped, other: otherStudyUID });
    expect(probe).toEqual({ uids: [studyUID], other: 404, plain: 401 });
    await context.close();
  }, 240_000);

  it("opens a study from the console with a short-lived viewer link, and a revoked share link shows a sentence", async () => {
    const context = await tb.browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await signIn(page, admin);
    await page.locator(`#study-rows tr[data-study="${studyUID}"]`).getByRole("button", { name: "Details" }).click();
    const [tab] = await Promise.all([context.waitForEvent("page"), page.getByRole("button", { name: "Open in viewer" }).click()]);
    await expect.poll(() => tab.url(), { timeout: 30_000 }).toMatch(new RegExp(`/share/drs_[^/]+/viewer\\?StudyInstanceUIDs=${studyUID.replace(/\./g, "\\.")}`));
    await expect.poll(() => litPixels(tab), { timeout: 120_000, interval: 2000 }).toBeGreaterThan(1000);
    await tab.screenshot({ path: artifactPath("viewer-console.png") });
    await tab.close();

    // revoke the share link made for the radiologist: the link now explains itself
    await expect.poll(() => page.locator("#share-rows").textContent()).toContain("second opinion Dr Li");
    await page.getByRole("button", { name: "Revoke the share link for second opinion Dr Li" }).click();
    await expect.poll(() => page.locator("#share-rows").textContent()).toContain("revoked");
    const gone = await context.newPage();
    const res = await gone.goto(shareViewerUrl);
    expect(res?.status()).toBe(401);
    expect(await gone.locator("main").textContent()).toContain("withdrawn");
    await gone.screenshot({ path: artifactPath("viewer-share-revoked.png") });
    await context.close();
  }, 240_000);
  it("a damaged file is reported failed with the relay's reason; the transfer stays open", async () => {
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(page, admin);
    await page.getByRole("link", { name: "Send a study" }).click();
    const good = makeInstance({ modality: "MR", seed: 11 });
    const broken = makeInstance({ modality: "MR", seed: 12 });
    await page.locator("#pick-files").setInputFiles([
      { name: "GOOD.dcm", mimeType: "application/dicom", buffer: good },
      // the file meta is intact (the browser can declare it), the data set is cut short
      { name: "BROKEN.dcm", mimeType: "application/dicom", buffer: broken.subarray(0, Math.floor(broken.length * 0.6)) },
    ]);
    await page.locator("#plan-send").click();
    await expect.poll(() => page.locator("#transfer-summary").getAttribute("data-complete"), { timeout: 120_000 }).toBe("false");
    expect(await page.locator("#transfer-summary").textContent()).toContain("1 received, 0 already on the relay, 0 missing, 1 failed");
    expect(await page.locator("#transfer-problems").textContent()).toMatch(/^BROKEN\.dcm: failed \(the file is truncated.*\)$/);
    expect(await page.locator("#file-rows").textContent()).toContain("refused by the relay: the file is truncated");
    expect(await page.locator("#upload-status").textContent()).toContain("did not arrive intact");
    expect(await page.locator("#receipt").isVisible()).toBe(false);
    await page.screenshot({ path: artifactPath("console-send-failed.png"), fullPage: true });
    await page.close();
  }, 180_000);

  it("every console page passes an automated accessibility check (axe-core, WCAG 2.1 A/AA) and fits a laptop screen", async () => {
    // bypassCSP: the console's Content-Security-Policy (script-src 'self') would refuse the injected axe-core
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 }, bypassCSP: true });
    /** axe-core's WCAG 2.1 A and AA rules on the page as it is now; and whether anything forces sideways scrolling */
    const check = async (name: string) => {
      await page.addScriptTag({ path: axePath });
      const violations = await page.evaluate(async () => {
        const axe = (window as unknown as { axe: { run(ctx: Document, o: unknown): Promise<{ violations: { id: string; impact: string; help: string; nodes: { target: string[] }[] }[] }> } }).axe;
        const r = await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
        return r.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
      });
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      return { name, violations, overflow };
    };
    const results = [];
    await page.goto(`${proxy.url}/console/`);
    results.push(await check("sign-in"));
    await page.getByLabel("Access token").fill(admin);
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect.poll(() => page.locator(`#study-rows tr[data-study="${studyUID}"]`).count()).toBe(1);
    results.push(await check("studies"));
    await page.locator(`#study-rows tr[data-study="${studyUID}"]`).getByRole("button", { name: "Details" }).click();
    await expect.poll(() => page.locator("#completeness").textContent()).toContain("Pathology report");
    results.push(await check("study detail"));
    await page.getByRole("link", { name: "Send a study" }).click();
    await expect.poll(() => page.locator("#send").isVisible()).toBe(true);
    results.push(await check("send"));
    expect(results).toEqual(results.map((r) => ({ name: r.name, violations: [], overflow: 0 })));
    // the check itself can fail: an image without a text alternative and a too-wide block are found
    await page.evaluate(() => {
      const img = document.createElement("img");
      img.src = "data:image/gif;base64,R0lGODlhAQABAAAAACw=";
      const wide = document.createElement("div");
      wide.style.width = "3000px";
      wide.style.height = "1px";
      document.querySelector("main")!.append(img, wide);
    });
    const control = await check("control");
    expect(control.violations.some((v) => v.startsWith("image-alt"))).toBe(true);
    expect(control.overflow).toBeGreaterThan(0);
    await page.close();
  }, 120_000);

  it("makes a de-identified copy for a second opinion from the study page; its share link opens the copy only", async () => {
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 }, bypassCSP: true });
    await signIn(page, admin);
    await page.locator(`#study-rows tr[data-study="${studyUID}"]`).getByRole("button", { name: "Details" }).click();
    await page.getByLabel("Pseudonym for the copy (empty: one is generated)").fill("SECOND-OPINION-7");
    await page.getByLabel("Keep age, sex, size and weight (Retain Patient Characteristics)").uncheck();
    await page.getByLabel("The copy's link expires after").selectOption("1d");
    await page.getByRole("button", { name: "Make de-identified copy" }).click();
    const created = page.locator("#deid-created");
    await expect.poll(() => created.isVisible(), { timeout: 30_000 }).toBe(true);
    const text = (await created.textContent()) ?? "";
    expect(text).toContain("“SECOND-OPINION-7”: 6 instance(s) copied");
    expect(text).toContain("retainModifiedDates");
    expect(text).not.toContain("retainPatientCharacteristics");
    const copyUID = /Study ([0-9.]+)\./.exec(text)![1]!;
    expect(copyUID).not.toBe(studyUID);
    const viewerUrl = (await page.locator("#deid-share-url").getAttribute("href"))!;
    const token = /\/share\/([^/]+)\/viewer$/.exec(viewerUrl)![1]!;
    // through the link: the copy, under its pseudonym, and nothing else (the original is 404 as if absent)
    const studies = (await (await fetch(`${relay.url}/share/${token}/dicom-web/studies`)).json()) as Record<string, { Value?: unknown[] }>[];
    expect(studies.map((st) => st["0020000D"]!.Value![0])).toEqual([copyUID]);
    expect(JSON.stringify(studies[0]!["00100010"]!.Value![0])).toContain("SECOND-OPINION-7");
    expect(JSON.stringify(studies)).not.toMatch(/Wang|王|CN-0002/);
    expect((await fetch(`${relay.url}/share/${token}/dicom-web/studies/${studyUID}/metadata`)).status).toBe(404);
    // the options chosen were applied and audited
    const audit = (await (await fetch(`${relay.url}/api/admin/audit?study=${studyUID}&action=study.deidentify`, { headers: { Authorization: `Bearer ${admin}` } })).json()) as { entries: { detail: string }[] };
    expect(audit.entries.at(-1)!.detail).toMatch(new RegExp(`de-identified copy ${copyUID.replace(/\./g, "\\.")}.*6 instance\\(s\\) copied`));
    expect(audit.entries.at(-1)!.detail).not.toMatch(/RetainPatientCharacteristics/i);
    // the new parts pass the same accessibility rules as the rest of the console
    await page.addScriptTag({ path: axePath });
    const violations = await page.evaluate(async () => {
      const axe = (window as unknown as { axe: { run(ctx: Document, o: unknown): Promise<{ violations: { id: string; nodes: { target: string[] }[] }[] }> } }).axe;
      const r = await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
      return r.violations.map((v) => `${v.id} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    });
    expect(violations).toEqual([]);
    await page.screenshot({ path: artifactPath("console-deidentified-copy.png"), fullPage: true });
    await page.close();
  }, 120_000);

  it("sends a large file as partial uploads over several connections (tus concatenation), resumed after a reload", async () => {
    const bigDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-console-big-"));
    try {
      // one 12.6 MB instance: above the page's 8 MiB split size, so 4 partials of ~3 MB
      const big = makeInstance({ rows: 2048, columns: 3072, bitsAllocated: 16, modality: "CT", seed: 21 });
      fs.mkdirSync(path.join(bigDir, "BIG"));
      fs.writeFileSync(path.join(bigDir, "BIG", "I1.dcm"), big);
      const context = await tb.browser.newContext({ viewport: { width: 1366, height: 768 } });
      const page = await context.newPage();
      await signIn(page, admin);
      await page.getByRole("link", { name: "Send a study" }).click();
      await expect.poll(() => page.locator("#send").isVisible()).toBe(true);
      // each connection is slow (a lossy path): only several at once make the file go faster
      proxy.setFaults({ bandwidthBytesPerSec: 600_000, resetEveryBytes: 0 });
      const upAtStart = proxy.stats().bytesUp;
      const connectionsAtStart = proxy.stats().connections;
      await page.locator("#pick-folder").setInputFiles(bigDir);
      await page.locator("#plan-send").click();
      const progress = () => page.locator("#total-progress").evaluate((e) => (e as HTMLProgressElement).value);
      await expect.poll(progress, { timeout: 60_000 }).toBeGreaterThan(0.2);
      // the page's progress also counts bytes queued in socket buffers: wait for what the link really carried
      await expect.poll(() => proxy.stats().bytesUp - upAtStart, { timeout: 60_000 }).toBeGreaterThan(big.length * 0.4);
      const saved = JSON.parse((await page.evaluate(() => localStorage.getItem("dicom-relay.transfer"))) ?? "null") as { id: string };

      // reloaded mid-way: the page resumes the partial uploads it had (their URLs are in localStorage)
      await page.reload();
      const deliveredBeforeReload = proxy.stats().bytesUp - upAtStart;
      await expect.poll(() => page.locator("#resume-banner").textContent()).toContain("A transfer was interrupted");
      proxy.setFaults({ bandwidthBytesPerSec: 2_000_000 });
      const upBeforeResume = proxy.stats().bytesUp;
      await dropFolder(page, "#drop", bigDir);
      await page.locator("#plan-send").click();
      await expect.poll(() => page.locator("#transfer-summary").getAttribute("data-complete"), { timeout: 120_000 }).toBe("true");
      expect(proxy.stats().connections - connectionsAtStart).toBeGreaterThan(2);
      // what reached the relay before the reload was not sent again (a few in-flight chunks at most)
      expect(deliveredBeforeReload).toBeGreaterThan(big.length * 0.2);
      expect(proxy.stats().bytesUp - upBeforeResume).toBeLessThan(big.length - deliveredBeforeReload + 1024 * 1024);

      // at the relay: partial uploads of this transfer, joined by one final upload naming them
      const dir = relay.config.transfers.uploadDir;
      const infos = fs.readdirSync(dir).filter((n) => n.endsWith(".json")).map((n) => JSON.parse(fs.readFileSync(path.join(dir, n), "utf8")) as { id: string; size: number; metadata?: Record<string, string> });
      const partials = infos.filter((u) => u.metadata?.["relay-concat"] === "partial" && u.metadata?.transferId === saved.id);
      const finals = infos.filter((u) => u.metadata?.["relay-concat"] === "final" && u.metadata?.transferId === saved.id);
      expect(partials.length).toBe(4);
      expect(finals).toHaveLength(1);
      expect(finals[0]!.metadata!["relay-parts"]!.split(" ").sort()).toEqual(partials.map((p) => p.id).sort());
      expect(finals[0]!.size).toBe(big.length);
      // the study arrived whole, byte-exact
      const t = await (await fetch(`${relay.url}/api/transfers/${saved.id}?instances=all`, { headers: { Authorization: `Bearer ${admin}` } })).json() as { complete: boolean; instances: { sopInstanceUID: string; state: string }[] };
      expect(t.complete).toBe(true);
      const loc = await relay.services.index.getInstance(t.instances[0]!.sopInstanceUID);
      expect(loc?.sha256).toBe(crypto.createHash("sha256").update(big).digest("hex"));
      await context.close();
    } finally {
      proxy.setFaults({ bandwidthBytesPerSec: 0 });
      fs.rmSync(bigDir, { recursive: true, force: true });
    }
  }, 240_000);

  it("on a relay without authentication the console opens without a token and says so", async () => {
    const open = await startTestRelay({ viewer: { ohifDir: path.join(workDir, "no-ohif") } });
    try {
      const page = await tb.browser.newPage();
      await page.goto(`${open.url}/console/`);
      await expect.poll(() => page.locator("#who").textContent()).toContain("without authentication");
      await expect.poll(() => page.locator("#studies-status").textContent()).toBe("No study matches these filters.");
      expect(await page.locator("#signin").isVisible()).toBe(false);
      expect(await open.services.access!.audit.query({ outcome: "failure" })).toEqual([]);
      await page.close();
    } finally {
      await open.dispose();
    }
  });
});
