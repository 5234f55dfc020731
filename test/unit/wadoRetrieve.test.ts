/**
 * WADO-RS retrieve of a study of many small instances, on the real services (SQLite index, disk store, retention,
 * audit) behind the real HTTP app: every instance comes back, in order, byte for byte; the index is asked a bounded
 * number of times whatever the instance count (a counting wrapper around the real index, not a mock); one audit row
 * per request; every instance recorded as delivered.
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import type { AddressInfo } from "node:net";
import { loadConfig, type DeepPartial, type RelayConfig } from "../../src/config.ts";
import { buildServices } from "../../src/relay.ts";
import { createApp, type RelayServices } from "../../src/app.ts";
import { createLogger } from "../../src/logger.ts";
import type { Index } from "../../src/catalog/index.ts";
import { parseContentType, readMultipartParts } from "../../src/dicom/multipart.ts";
import { generateStudy, type SyntheticInstance } from "../../scripts/lib/synthetic.ts";

const INSTANCES = 240;

/** The real index, with every method call counted by name. */
function countingIndex(index: Index): { index: Index; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  const wrapped = new Proxy(index, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        calls.set(String(prop), (calls.get(String(prop)) ?? 0) + 1);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { index: wrapped, calls };
}

async function get(url: string, accept: string): Promise<{ status: number; contentType: string; parts: Array<{ headers: Record<string, string>; body: Buffer }> }> {
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => http.get(url, { headers: { Accept: accept } }, resolve).on("error", reject));
  const contentType = res.headers["content-type"] ?? "";
  if (res.statusCode !== 200) {
    res.resume();
    return { status: res.statusCode ?? 0, contentType, parts: [] };
  }
  const parts: Array<{ headers: Record<string, string>; body: Buffer }> = [];
  for await (const p of readMultipartParts(res, parseContentType(contentType).params.boundary!)) {
    const chunks: Buffer[] = [];
    for await (const c of p.body) chunks.push(c as Buffer);
    parts.push({ headers: p.headers, body: Buffer.concat(chunks) });
  }
  return { status: 200, contentType, parts };
}

describe("WADO-RS retrieve of a study of many small instances", () => {
  let dataDir: string;
  let services: RelayServices;
  let server: http.Server;
  let base: string;
  let counted: ReturnType<typeof countingIndex>;
  let study: SyntheticInstance[];

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "wado-retrieve-"));
    const config: RelayConfig = loadConfig({
      env: {},
      overrides: { auth: { enabled: false }, dataDir, server: { host: "127.0.0.1", port: 0 }, log: { level: "silent" } } as DeepPartial<RelayConfig>,
    });
    services = await buildServices(config, createLogger("silent"));
    counted = countingIndex(services.index);
    const app = createApp({ ...services, index: counted.index });
    server = await new Promise<http.Server>((resolve) => {
      const s = app.listen(0, "127.0.0.1", () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/dicom-web`;
    // 16x16 instances over 3 series, stored in shuffled order: the answer's order must come from the index
    study = [...generateStudy({ instances: INSTANCES, seriesCount: 3, rows: 16, columns: 16, modality: "MR", seed: 17 })];
    const shuffled = [...study].sort((a, b) => (a.sopInstanceUID.slice(-3) < b.sopInstanceUID.slice(-3) ? -1 : 1));
    for (let i = 0; i < shuffled.length; i += 16) {
      const results = await Promise.all(shuffled.slice(i, i + 16).map((inst) => services.ingest.ingestStream(Readable.from([inst.bytes]))));
      for (const r of results) expect(r.status).toBe("stored");
    }
  }, 60_000);

  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
    for (const close of [() => services?.transfers?.close(), () => services?.forwarding?.close(), () => services?.retention?.close(), () => services?.access?.close(), () => services?.index.close(), () => services?.store.close()]) {
      await close();
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it("comes back complete, in series / instance order, byte for byte, from one index query (no JSON parsed per row); one audit row; every instance delivered", async () => {
    const studyUID = study[0]!.studyInstanceUID;
    counted.calls.clear();
    const r = await get(`${base}/studies/${studyUID}`, 'multipart/related; type="application/dicom"; transfer-syntax=*');
    expect(r.status).toBe(200);
    expect(r.parts).toHaveLength(INSTANCES);
    // generateStudy yields series 1..3, instance numbers 1..n in each: the order the retrieve must answer in
    r.parts.forEach((p, i) => {
      expect(p.headers["content-length"]).toBe(String(study[i]!.bytes.length));
      expect(p.headers["content-type"]).toMatch(/^application\/dicom; transfer-syntax=1\.2\.840\.10008\.1\.2\.1$/);
      expect(p.body.equals(study[i]!.bytes), `part ${i} is instance ${study[i]!.sopInstanceUID}`).toBe(true);
    });
    // per-instance overhead out of the loop: the whole study from one index call
    expect(Object.fromEntries(counted.calls)).toEqual({ listInstanceBlobs: 1 });

    await services.access!.audit.flush();
    const rows = await services.access!.audit.query({ study: studyUID, action: "dicomweb.wado" });
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ outcome: "success", studyInstanceUID: studyUID, detail: `${INSTANCES} instance(s) sent` });

    // delivery tracking is written in one batch after the response; wait for it (bounded)
    let delivery = await services.retention!.delivery(studyUID);
    for (let i = 0; i < 50 && delivery?.recipients[0]?.instances !== INSTANCES; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      delivery = await services.retention!.delivery(studyUID);
    }
    expect(delivery?.recipients).toEqual([expect.objectContaining({ recipient: "anonymous", via: "wado", instances: INSTANCES })]);
    expect(delivery?.deliveredAt).not.toBeNull();
  });

  it("a series, and a transcoded study (Implicit VR Little Endian), still ask the index a bounded number of times", async () => {
    const studyUID = study[0]!.studyInstanceUID;
    const series = study.filter((s) => s.seriesInstanceUID === study[INSTANCES - 1]!.seriesInstanceUID);
    counted.calls.clear();
    const s = await get(`${base}/studies/${studyUID}/series/${series[0]!.seriesInstanceUID}`, 'multipart/related; type="application/dicom"; transfer-syntax=*');
    expect(s.parts.map((p) => p.body.equals(series[s.parts.indexOf(p)]!.bytes))).toEqual(series.map(() => true));
    expect(Object.fromEntries(counted.calls)).toEqual({ listInstanceBlobs: 1 });

    counted.calls.clear();
    const t = await get(`${base}/studies/${studyUID}`, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2');
    expect(t.status).toBe(200);
    expect(t.parts).toHaveLength(INSTANCES);
    for (const p of t.parts) expect(p.headers["content-type"]).toBe("application/dicom; transfer-syntax=1.2.840.10008.1.2");
    // the locations and pixel modules of the whole study in one more query each, not one per instance
    expect(Object.fromEntries(counted.calls)).toEqual({ listInstanceBlobs: 1, listInstances: 1, listMetadata: 1 });
  });

  it("instances over 1 MiB still stream (opened ahead, not read whole) and come back byte for byte", async () => {
    const large = [...generateStudy({ instances: 3, seriesCount: 1, rows: 800, columns: 800, modality: "CT", seed: 23 })];
    expect(large[0]!.bytes.length).toBeGreaterThan(1024 * 1024);
    for (const inst of large) expect((await services.ingest.ingestStream(Readable.from([inst.bytes]))).status).toBe("stored");
    const r = await get(`${base}/studies/${large[0]!.studyInstanceUID}`, 'multipart/related; type="application/dicom"; transfer-syntax=*');
    expect(r.parts.map((p, i) => p.body.equals(large[i]!.bytes))).toEqual([true, true, true]);
  });
});
