/**
 * server.memoryProfile: "lean" (the default) sets V8's memory-saving flags in the relay process at start; the
 * young generation then stays small where V8's defaults let it grow to 16 MB semi-spaces.
 * Each profile runs in its own Node process (the flags are process-wide; the test runner's own heap is left alone).
 */
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.ts";
import { MEMORY_PROFILE_FLAGS } from "../../src/memoryProfile.ts";

const ROOT = path.resolve(import.meta.dirname, "../..");

/** The "dicom-relay listening" log line of `bin/dicom-relay.js serve` (JSON on standard error), then SIGTERM. */
async function listeningLine(env: Record<string, string>): Promise<{ memoryProfile?: string; v8Flags?: string[] }> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-memory-"));
  const p = spawn(process.execPath, [path.join(ROOT, "bin/dicom-relay.js"), "serve"], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: os.homedir(), DICOM_RELAY_DATA_DIR: dataDir, DICOM_RELAY_SERVER_HOST: "127.0.0.1", DICOM_RELAY_SERVER_PORT: "0", DICOM_RELAY_LOG_LEVEL: "info", DICOM_RELAY_AUTH_ENABLED: "false", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  try {
    return await new Promise((resolve, reject) => {
      let stderr = "";
      const timer = setTimeout(() => reject(new Error(`no "listening" log line in 60 s: ${stderr}`)), 60_000);
      p.stderr!.on("data", (d: Buffer) => {
        stderr += d.toString();
        const line = stderr.split("\n").find((l) => l.includes('"dicom-relay listening"'));
        if (line) {
          clearTimeout(timer);
          resolve(JSON.parse(line));
        }
      });
      p.once("exit", (code) => reject(new Error(`exited with ${code}: ${stderr}`)));
    });
  } finally {
    p.kill("SIGTERM");
    await new Promise((r) => (p.exitCode !== null ? r(null) : p.once("exit", r)));
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

/** new-space size (MB) after 2 million short-lived allocations, with the profiles applied first, in order */
function newSpaceAfterChurn(...profiles: string[]): number {
  const code = `
    import v8 from "node:v8";
    import { applyMemoryProfile } from "./src/memoryProfile.ts";
    for (const p of ${JSON.stringify(profiles)}) applyMemoryProfile(p);
    let keep = [];
    for (let i = 0; i < 2e6; i++) { const o = { i, s: "x" + i }; if (i % 10 === 0) keep.push(o); if (keep.length > 50000) keep = []; }
    const ns = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
    process.stdout.write(String(ns.space_size / 1048576));
  `;
  return Number(execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], { cwd: ROOT, encoding: "utf8", timeout: 60_000 }));
}

describe("server.memoryProfile", () => {
  it("is lean by default, node-defaults from the environment, anything else refused naming the key", () => {
    expect(loadConfig({ env: {} }).server.memoryProfile).toBe("lean");
    expect(loadConfig({ env: { DICOM_RELAY_SERVER_MEMORY_PROFILE: "node-defaults" } }).server.memoryProfile).toBe("node-defaults");
    expect(() => loadConfig({ env: { DICOM_RELAY_SERVER_MEMORY_PROFILE: "small" } })).toThrow(/server\.memoryProfile/);
  });

  it("lean keeps V8's young generation small; node-defaults (also after lean, as serve does) lets it grow", () => {
    const lean = newSpaceAfterChurn("lean");
    const defaults = newSpaceAfterChurn("lean", "node-defaults");
    // (the TypeScript loader's own start may have grown it once before the flags are set)
    expect(lean).toBeLessThanOrEqual(4);
    expect(defaults).toBeGreaterThan(lean * 4);
  }, 120_000);

  it("serve applies the configured profile and says so when it listens", async () => {
    const lean = await listeningLine({});
    expect(lean.memoryProfile).toBe("lean");
    expect(lean.v8Flags).toEqual(MEMORY_PROFILE_FLAGS.lean);
    const defaults = await listeningLine({ DICOM_RELAY_SERVER_MEMORY_PROFILE: "node-defaults" });
    expect(defaults.memoryProfile).toBe("node-defaults");
    expect(defaults.v8Flags).toEqual(MEMORY_PROFILE_FLAGS["node-defaults"]);
  }, 120_000);

  it("bin/dicom-relay.js sets the lean flags before it loads the relay, the same as src/memoryProfile.ts", () => {
    const bin = fs.readFileSync(path.join(ROOT, "bin/dicom-relay.js"), "utf8");
    const early = /for \(const flag of (\[[^\]]*\])\) v8\.setFlagsFromString/.exec(bin);
    expect(early).not.toBeNull();
    expect(JSON.parse(early![1]!)).toEqual(MEMORY_PROFILE_FLAGS.lean);
  });
});
