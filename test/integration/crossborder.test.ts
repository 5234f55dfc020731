/**
 * Resume under cuts on an emulated cross-border link: the real CLI (`dicom-relay push`, default options, a child
 * process) sends a few MB through the link emulator (a per-connection cap, the lossy-flow share; a link cap shared by
 * all connections; added round trip; a reset each time ~1 MB has passed, across connections) to a real relay.
 * The push completes in one run, every instance is stored byte for byte, and a rerun sends next to nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { startFaultProxy, type FaultProxy } from "../support/faultProxy.ts";
import { expectByteIdentical } from "../support/storedFiles.ts";
import { writeStudy } from "../../scripts/lib/synthetic.ts";

const BIN = path.resolve("bin/dicom-relay.js");

function push(args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return pushWith({}, args, timeoutMs);
}

function pushWith(env: Record<string, string>, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, "push", ...args], { env: { ...process.env, DICOM_RELAY_TOKEN: "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr.on("data", (d: Buffer) => (out += d.toString()));
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

describe("dicom-relay push across an emulated long, lossy link", () => {
  let relay: TestRelay;
  let proxy: FaultProxy;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "crossborder-it-"));

  beforeAll(async () => {
    relay = await startTestRelay();
  });
  afterAll(async () => {
    await proxy?.close();
    await relay?.dispose();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it("cut every ~1 MB at 2 Mbit/s per flow on a shared 8 Mbit/s link with 40 ms RTT: completes, byte-exact, a rerun sends ~0 bytes", async () => {
    const src = path.join(work, "cd");
    // 10 CT slices of 512x512 with realistic noise: ~5 MB in the folder, ~2.5 MB gzipped on the wire
    const study = await writeStudy(src, { instances: 10, seriesCount: 1, rows: 512, columns: 512, modality: "CT", seed: 31, realisticNoise: true });
    proxy = await startFaultProxy({
      target: { host: "127.0.0.1", port: Number(new URL(relay.url).port) },
      flowBytesPerSec: 250_000,
      linkBytesPerSec: 1_000_000,
      latencyMs: 20,
      resetEveryBytes: 1_000_000,
    });
    const cache = path.join(work, "cache");
    const receipts = path.join(work, "receipts");
    const r = await push([src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", receipts], 150_000);
    expect(r.code, r.out).toBe(0);
    const first = proxy.linkStats();
    expect(first.resets, "the link cut connections while the push ran").toBeGreaterThanOrEqual(2);
    expect(r.out).toMatch(/stored now: 10 +already on the relay: 0 +failed: 0/);
    // at most the folder plus what the cuts cost (each cut resends at most what was in flight)
    expect(first.bytesUp).toBeLessThan(study.totalBytes * 1.5);

    await expectByteIdentical(relay, study.files);

    proxy.resetCounters();
    const again = await push([src, "--to", proxy.url, "--cache-dir", cache, "--receipt-dir", receipts], 60_000);
    expect(again.code, again.out).toBe(0);
    expect(again.out).toMatch(/10 already on the relay, 0 to send/);
    expect(proxy.stats().bytesUp).toBeLessThan(40_000);
  }, 200_000);

  it("stays within the uploads the relay lets one token run (X-Dicom-Relay-Uploads-Per-Token): no refusals, nothing dropped", async () => {
    const capped = await startTestRelay({ server: { maxConcurrentUploadsPerToken: 2 } });
    const link = await startFaultProxy({ target: { host: "127.0.0.1", port: Number(new URL(capped.url).port) }, flowBytesPerSec: 150_000, latencyMs: 20 });
    try {
      const options = await fetch(`${capped.url}/api/uploads`, { method: "OPTIONS", headers: { "Tus-Resumable": "1.0.0" } });
      expect(options.headers.get("x-dicom-relay-uploads-per-token")).toBe("2");
      const src = path.join(work, "capped");
      // small pieces and a slow flow: the flow controller would open 8 connections at once, and more, on its own
      await writeStudy(src, { instances: 12, seriesCount: 1, rows: 256, columns: 256, modality: "CT", seed: 32, realisticNoise: true });
      const r = await push([src, "--to", link.url, "--cache-dir", path.join(work, "capped-cache"), "--receipt-dir", path.join(work, "capped-receipts")], 120_000);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(/stored now: 12 +already on the relay: 0 +failed: 0/);
      // a refused upload (503) closes its connection: either shows as a dropped connection in the log
      expect(r.out).not.toMatch(/connection dropped|HTTP 503/);
      // with more flows than that, the relay would have refused some
      expect(r.out).toMatch(/up to [12] connection\(s\) at once/);
    } finally {
      await link.close();
      await capped.dispose();
    }
  }, 150_000);

  it("compresses instances while the relay check and the manifest cross a 300 ms round trip, and what arrives is byte-exact", async () => {
    const link = await startFaultProxy({ target: { host: "127.0.0.1", port: Number(new URL(relay.url).port) }, latencyMs: 150 });
    try {
      const src = path.join(work, "ahead");
      const study = await writeStudy(src, { instances: 6, seriesCount: 1, rows: 512, columns: 512, modality: "CT", seed: 33, realisticNoise: true });
      const r = await pushWith({ DICOM_RELAY_PUSH_DEBUG: "1" }, [src, "--to", link.url, "--cache-dir", path.join(work, "ahead-cache"), "--receipt-dir", path.join(work, "ahead-receipts")], 120_000);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(/stored now: 6 +already on the relay: 0 +failed: 0/);
      // the phase line says how much was compressed when the manifest's answer came: two round trips of 300 ms
      // are time enough for some of 3 MB, even on a loaded machine
      const ahead = /manifests answered \(([\d.]+) (B|kB|MB) compressed ahead\)/.exec(r.out);
      expect(ahead, r.out).not.toBeNull();
      expect(Number(ahead![1]) * { B: 1, kB: 1024, MB: 1024 * 1024 }[ahead![2] as "B" | "kB" | "MB"]).toBeGreaterThan(0);
      // the bundles made of those entries are what the relay stored, byte for byte
      await expectByteIdentical(relay, study.files);
    } finally {
      await link.close();
    }
  }, 150_000);
});
