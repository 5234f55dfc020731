/**
 * Headless Chromium (Debian's package, installed by scripts/test-prereqs.sh) driven by playwright-core.
 * Browsers cannot be downloaded here, so the system binary is used; each launch gets a fresh profile directory.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { chromium, type Browser } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export function chromiumMissing(): string | null {
  return fs.existsSync(CHROMIUM) ? null : `Chromium is not installed at ${CHROMIUM} (scripts/test-prereqs.sh installs Debian's chromium package)`;
}

export interface TestBrowser {
  browser: Browser;
  close(): Promise<void>;
}

/** Launches Chromium; webgl adds SwiftShader so OHIF's WebGL viewports draw without a GPU. */
export async function launchChromium(opts: { webgl?: boolean } = {}): Promise<TestBrowser> {
  // a fresh profile per launch: playwright-core refuses --user-data-dir in args for launch(), so it is its own
  // temporary profile (removed at close); passing ours as the downloads/temp root keeps it out of the repo
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "relay-chromium-"));
  const args = [
    "--headless",
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    ...(opts.webgl ? ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"] : ["--disable-gpu"]),
  ];
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args, downloadsPath: profile });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** OHIF's static build for the viewer tests: installed (cached under ~/.cache/dicom-relay) by scripts/install-ohif.sh. */
export function ohifDir(): string {
  const out = execFileSync("bash", [path.join(import.meta.dirname, "../../scripts/install-ohif.sh")], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  return out.trim().split("\n").pop()!;
}

/** Where tests keep screenshots (ignored by git). */
export function artifactPath(name: string): string {
  const dir = path.join(import.meta.dirname, "../../test-artifacts");
  fs.mkdirSync(dir, { recursive: true });
  return path.join(dir, name);
}
