/**
 * The console with a folder of several studies, one of which holds a damaged file, in a real headless Chromium
 * against a real relay (auth on): the per-study summary asks first; one transfer per study, so the good studies are
 * visible at once; the Transfers page shows the incomplete one with the failure reason, an uploader sees only its
 * own transfers and may cancel them, the admin releases one.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { artifactPath, chromiumMissing, launchChromium, type TestBrowser } from "../support/browser.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { createRequire } from "node:module";

const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

const missing = chromiumMissing();

describe.skipIf(missing)("console: one transfer per study and the Transfers page", () => {
  let relay: TestRelay;
  let tb: TestBrowser;
  let admin: string;
  let uploader: string;
  const studies = [newUid(), newUid(), newUid()];

  /** three studies of two files each; the second file of the third study is cut short (its header is intact) */
  function folder(): Array<{ name: string; mimeType: string; buffer: Buffer }> {
    const out: Array<{ name: string; mimeType: string; buffer: Buffer }> = [];
    studies.forEach((study, s) => {
      const series = newUid();
      for (let i = 0; i < 2; i++) {
        let buffer = makeInstance({ studyInstanceUID: study, seriesInstanceUID: series, patientName: `Patient^${"ABC"[s]}`, patientID: `P${s}`, studyDate: "20240301", studyDescription: `STUDY ${s + 1}`, modality: "CT", rows: 16, columns: 16, seed: 100 + s * 10 + i, instanceNumber: i + 1 });
        if (s === 2 && i === 1) buffer = buffer.subarray(0, Math.floor(buffer.length * 0.6));
        out.push({ name: `S${s + 1}I${i + 1}.dcm`, mimeType: "application/dicom", buffer });
      }
    });
    out.push({ name: "README.TXT", mimeType: "text/plain", buffer: Buffer.from("Viewer for Windows\r\n") });
    return out;
  }

  beforeAll(async () => {
    relay = await startTestRelay({ auth: { enabled: true, realm: "dicom-relay", shareDefaultExpiry: "7d" } });
    admin = relay.initialAdminToken!;
    const res = await fetch(`${relay.url}/api/admin/tokens`, { method: "POST", headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" }, body: JSON.stringify({ scopes: ["upload", "read"], label: "St. Mary coordinator" }) });
    uploader = ((await res.json()) as { token: string }).token;
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

  const visibleInstances = async (study: string) => {
    const r = await fetch(`${relay.url}/dicom-web/studies/${study}/instances`, { headers: { Authorization: `Bearer ${admin}` } });
    return r.status === 200 ? ((await r.json()) as unknown[]).length : 0;
  };

  it("asks first with the per-study summary; Cancel sends nothing", async () => {
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(page, uploader);
    await page.getByRole("link", { name: "Send a study" }).click();
    await page.locator("#pick-files").setInputFiles(folder());
    await expect.poll(() => page.locator("#plan").isVisible(), { timeout: 30_000 }).toBe(true);
    expect(await page.locator("#plan-title").textContent()).toContain("3 studies");
    const summary = (await page.locator("#plan-studies").textContent()) ?? "";
    expect(summary).toContain("Patient  Patient A  (ID P0)");
    expect(summary).toMatch(/Study\s+2024-03-01\s+STUDY 1\s+\[CT\]/);
    expect(summary).toMatch(/1 series, 2 instance\(s\)/);
    expect(await page.locator("#plan-left-out").textContent()).toContain("1 file(s) will not be sent");
    await page.screenshot({ path: artifactPath("console-send-plan.png"), fullPage: true });
    await page.getByRole("button", { name: "Cancel" }).click();
    await expect.poll(() => page.locator("#message").textContent()).toContain("Nothing was sent");
    const list = (await (await fetch(`${relay.url}/api/transfers`, { headers: { Authorization: `Bearer ${admin}` } })).json()) as { transfers: unknown[] };
    expect(list.transfers).toHaveLength(0);
    await page.close();
  }, 120_000);

  it("one transfer per study: the two good studies are visible; the Transfers page shows the third with the reason; the uploader cancels nothing of others; the admin releases it", async () => {
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(page, uploader);
    await page.getByRole("link", { name: "Send a study" }).click();
    await page.locator("#pick-files").setInputFiles(folder());
    await page.getByRole("button", { name: "Send 3 studies" }).click();
    await expect.poll(() => page.locator("#transfer-summary").getAttribute("data-complete"), { timeout: 120_000 }).toBe("false");
    const summary = (await page.locator("#transfer-summary").textContent()) ?? "";
    expect(summary).toContain("3 transfers, one per study: 5 received, 0 already on the relay, 0 missing, 1 failed");
    expect(summary).toContain("Patient A 2024-03-01 STUDY 1: complete, visible on the relay");
    expect(summary).toContain("Patient C 2024-03-01 STUDY 3: not complete (0 missing, 1 failed), kept hidden");
    expect(await page.locator("#transfers-link").isVisible()).toBe(true);
    expect(await visibleInstances(studies[0]!)).toBe(2);
    expect(await visibleInstances(studies[1]!)).toBe(2);
    expect(await visibleInstances(studies[2]!)).toBe(0);

    // the uploader's Transfers page: its three transfers; Retry and Cancel on the incomplete one, no Release
    await page.getByRole("link", { name: "Transfers" }).first().click();
    await expect.poll(() => page.locator("#transfer-rows tr").count()).toBe(3);
    expect(await page.locator("#transfers-scope").textContent()).toContain("sent with your access token");
    const open = page.locator("#transfer-rows tr", { hasText: "STUDY 3" });
    expect(await open.textContent()).toContain("not complete: images hidden");
    expect(await open.getByRole("button", { name: /^Release/ }).count()).toBe(0);
    expect(await open.getByRole("button", { name: /^Retry/ }).count()).toBe(1);
    await open.getByRole("button", { name: /^Details/ }).click();
    await expect.poll(() => page.locator("#td-problems").textContent()).toMatch(/failed \(the file is truncated/);
    await page.screenshot({ path: artifactPath("console-transfers-uploader.png"), fullPage: true });
    // Retry leads to the Send page, which explains what to do
    await open.getByRole("button", { name: /^Retry/ }).click();
    await expect.poll(() => page.locator("#resume-banner").textContent()).toContain("choose or drop the same folder again: only its 1 missing or failed file(s) are sent");
    await page.close();

    // another admin-made transfer is not the uploader's: it does not see it
    const other = await fetch(`${relay.url}/api/transfers`, { method: "POST", headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" }, body: JSON.stringify({ label: "admin's own", instances: [{ sopInstanceUID: newUid(), sha256: "a".repeat(64), size: 10 }] }) });
    expect(other.status).toBe(201);
    const up = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(up, uploader);
    await up.getByRole("link", { name: "Transfers" }).first().click();
    await expect.poll(() => up.locator("#transfer-rows tr").count()).toBe(3);
    expect(await up.locator("#transfer-rows").textContent()).not.toContain("admin's own");
    // the uploader cancels the admin-made one? it cannot even see it; it cancels nothing here
    await up.close();

    // the admin: every transfer, Release on the incomplete one
    const page2 = await tb.browser.newPage({ viewport: { width: 1366, height: 768 } });
    await signIn(page2, admin);
    await page2.getByRole("link", { name: "Transfers" }).first().click();
    await expect.poll(() => page2.locator("#transfer-rows tr").count()).toBe(4);
    expect(await page2.locator("#transfers-scope").textContent()).toContain("Every transfer");
    page2.on("dialog", (d) => void d.accept());
    const row3 = page2.locator("#transfer-rows tr", { hasText: "STUDY 3" });
    await row3.getByRole("button", { name: /^Release/ }).click();
    await expect.poll(() => page2.locator("#transfers-status").textContent()).toContain("1 image(s) made visible");
    expect(await visibleInstances(studies[2]!)).toBe(1);
    // and cancels the empty one it made
    const own = page2.locator("#transfer-rows tr", { hasText: "admin's own" });
    await own.getByRole("button", { name: /^Cancel/ }).click();
    await expect.poll(() => page2.locator("#transfers-status").textContent()).toContain("Cancelled");
    await expect.poll(() => page2.locator("#transfer-rows tr", { hasText: "admin's own" }).textContent()).toContain("cancelled");
    await page2.screenshot({ path: artifactPath("console-transfers-admin.png"), fullPage: true });
    await page2.close();
  }, 240_000);

  it("a read-only token sees neither Send nor Transfers in the navigation", async () => {
    const res = await fetch(`${relay.url}/api/admin/tokens`, { method: "POST", headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" }, body: JSON.stringify({ scopes: ["read"], label: "home PACS" }) });
    const reader = ((await res.json()) as { token: string }).token;
    const page = await tb.browser.newPage();
    await signIn(page, reader);
    expect(await page.getByRole("link", { name: "Studies" }).isVisible()).toBe(true);
    expect(await page.getByRole("link", { name: "Transfers" }).isVisible()).toBe(false);
    expect(await page.getByRole("link", { name: "Send a study" }).isVisible()).toBe(false);
    await page.close();
  }, 60_000);

  it("the summary and the Transfers page pass axe-core (WCAG 2.1 A/AA) and fit a laptop screen", async () => {
    // bypassCSP: the console's Content-Security-Policy (script-src 'self') would refuse the injected axe-core
    const page = await tb.browser.newPage({ viewport: { width: 1366, height: 768 }, bypassCSP: true });
    const check = async (name: string) => {
      await page.addScriptTag({ path: axePath });
      const violations = await page.evaluate(async () => {
        const axe = (window as unknown as { axe: { run(ctx: Document, o: unknown): Promise<{ violations: { id: string; nodes: { target: string[] }[] }[] }> } }).axe;
        const r = await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
        return r.violations.map((v) => `${v.id} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
      });
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      return { name, violations, overflow };
    };
    await signIn(page, admin);
    await page.getByRole("link", { name: "Send a study" }).click();
    await page.locator("#pick-files").setInputFiles(folder());
    await expect.poll(() => page.locator("#plan").isVisible(), { timeout: 30_000 }).toBe(true);
    const results = [await check("summary")];
    await page.getByRole("button", { name: "Cancel" }).click();
    await page.getByRole("link", { name: "Transfers" }).first().click();
    await expect.poll(() => page.locator("#transfer-rows tr").count()).toBeGreaterThan(0);
    await page.locator("#transfer-rows tr").first().getByRole("button", { name: /^Details/ }).click();
    await expect.poll(() => page.locator("#transfer-detail").isVisible()).toBe(true);
    results.push(await check("transfers"));
    expect(results).toEqual(results.map((r) => ({ name: r.name, violations: [], overflow: 0 })));
    await page.close();
  }, 90_000);
});
