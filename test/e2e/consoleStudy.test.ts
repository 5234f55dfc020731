/**
 * The console's study view in a real headless Chromium against a real relay (auth on): series and instances,
 * thumbnails that are decoded images (never a broken one), "No reports attached" once for a plain imaging study,
 * the audit's Who column with token labels and a readable What, deleting a study (admin, confirmed, audited), and
 * the favicon served without a token.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Readable } from "node:stream";
import type { Page } from "playwright-core";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { artifactPath, chromiumMissing, launchChromium, type TestBrowser } from "../support/browser.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";

const missing = chromiumMissing();

describe.skipIf(missing)("console: the study view", () => {
  let relay: TestRelay;
  let tb: TestBrowser;
  let maria: string;
  const study = newUid();

  beforeAll(async () => {
    relay = await startTestRelay({ auth: { enabled: true, realm: "dicom-relay", shareDefaultExpiry: "7d" } });
    const admin = relay.initialAdminToken!;
    const res = await fetch(`${relay.url}/api/admin/tokens`, { method: "POST", headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" }, body: JSON.stringify({ scopes: ["admin", "read", "upload"], label: "Maria (relay admin)" }) });
    maria = ((await res.json()) as { token: string }).token;
    for (let s = 0; s < 2; s++) {
      const series = newUid();
      for (let i = 0; i < 2; i++) {
        const r = await relay.services.ingest.ingestStream(Readable.from([makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, seriesNumber: s + 1, instanceNumber: i + 1, patientName: "Okafor^Ada", modality: "MR", seriesDescription: `SERIES ${s + 1}`, rows: 16, columns: 16, seed: 300 + s * 10 + i })]), { source: "test" });
        expect(r.status).toBe("stored");
      }
    }
    tb = await launchChromium();
  }, 120_000);

  afterAll(async () => {
    await tb?.close();
    await relay?.dispose();
  });

  async function signIn(page: Page, token: string): Promise<void> {
    await page.goto(`${relay.url}/console/`);
    await page.getByLabel("Access token").fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect.poll(() => page.locator("#nav").isVisible()).toBe(true);
  }

  it("the favicon is served without a token (no 401 in the log for every page a browser opens)", async () => {
    const res = await fetch(`${relay.url}/favicon.ico`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^image\/svg\+xml/);
  });

  it("series and instances, no broken thumbnails, one calm 'no reports' line, audit with token labels, then delete (confirmed, audited)", async () => {
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 900 } });
    const failed: string[] = [];
    page.on("response", (r) => { if (r.status() === 401) failed.push(r.url()); });
    await signIn(page, maria);
    const row = page.locator(`#study-rows tr[data-study="${study}"]`);
    await expect.poll(() => row.count()).toBe(1);
    await row.getByRole("button", { name: "Details" }).click();
    await expect.poll(() => page.locator("#series-list details").count()).toBe(2);
    expect(await page.locator("#series-status").textContent()).toBe("2 series.");
    const first = page.locator("#series-list details").first();
    expect(await first.locator("summary").textContent()).toMatch(/Series 1 · MR · SERIES 1 · 2 instance\(s\)/);
    await first.locator("summary").click();
    await expect.poll(() => first.locator("li[data-instance]").count()).toBe(2);
    expect(await first.locator("li").first().textContent()).toMatch(/Instance 1/);
    // the relay serves /thumbnail: each listed instance shows one, decoded (a broken image would stay hidden or be
    // removed, never shown)
    await expect.poll(() => page.locator("#series-list details").first().locator("img.thumb:visible").count(), { timeout: 15_000 }).toBe(2);
    const widths = await first.locator("img.thumb").evaluateAll((imgs) => imgs.map((i) => (i as HTMLImageElement).naturalWidth));
    expect(widths).toHaveLength(2);
    for (const w of widths) expect(w).toBeGreaterThan(0);

    await expect.poll(() => page.locator("#completeness li").count()).toBe(1);
    expect(await page.locator("#completeness").textContent()).toMatch(/^No reports attached/);
    expect(await page.locator("#completeness li.missing").count()).toBe(0);

    await expect.poll(() => page.locator("#audit-rows").textContent()).toContain("Maria (relay admin) (token)");
    expect(await page.locator("#audit-rows").textContent()).toMatch(/searched|read images/);
    await page.screenshot({ path: artifactPath("console-study-view.png"), fullPage: true });

    let asked = "";
    page.once("dialog", (d) => { asked = d.message(); void d.accept(); });
    await page.getByRole("button", { name: "Delete study" }).click();
    await expect.poll(() => page.locator("#studies-status").textContent()).toContain("Deleted the study of Okafor, Ada");
    expect(asked).toMatch(/Delete the study of Okafor, Ada.*cannot be undone/);
    expect(await page.locator("#study-detail").isVisible()).toBe(false);
    const q = await fetch(`${relay.url}/dicom-web/studies?StudyInstanceUID=${study}`, { headers: { Authorization: `Bearer ${maria}` } });
    expect(q.status === 204 ? [] : await q.json()).toEqual([]);
    const audit = (await (await fetch(`${relay.url}/api/admin/audit?study=${study}&action=dicomweb.delete`, { headers: { Authorization: `Bearer ${maria}` } })).json()) as { entries: Array<{ actor: string; outcome: string }> };
    expect(audit.entries).toHaveLength(1);
    expect(audit.entries[0]).toMatchObject({ actor: maria.slice(4, 20), outcome: "success" });
    expect(failed).toEqual([]);
    await page.close();
  }, 120_000);
});
