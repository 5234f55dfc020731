/**
 * tus 1.0 endpoint against a real relay: single files and bundles with tus-js-client, protocol extensions with
 * raw requests (creation-with-upload, termination, expiration, size limit), per-entry results.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import zlib from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as tus from "tus-js-client";
import tar from "tar-stream";
import { tarOf } from "../support/streams.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { generateStudy, makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import { Readable } from "node:stream";
import { createTarGzBundle } from "../../src/transfers/bundle.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

/** A tar.gz bundle of in-memory entries (createTarGzBundle streams; tests want the bytes). */
async function tgz(entries: { name: string; body: Buffer }[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const src = (async function* () {
    for (const e of entries) yield { name: e.name, size: e.body.length, body: Readable.from([e.body]) };
  })();
  for await (const c of createTarGzBundle(src)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** One tus upload with tus-js-client; resolves with the upload URL and the final response. */
function tusUpload(endpoint: string, input: Buffer, opts: { metadata?: Record<string, string>; chunkSize?: number } = {}): Promise<{ url: string; status: number; body: string; headers: (h: string) => string | undefined }> {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(input, {
      endpoint,
      metadata: opts.metadata ?? {},
      chunkSize: opts.chunkSize ?? Number.POSITIVE_INFINITY,
      retryDelays: [0, 100, 300],
      storeFingerprintForResuming: false,
      onSuccess: ({ lastResponse }) =>
        resolve({ url: upload.url!, status: lastResponse.getStatus(), body: lastResponse.getBody(), headers: (h) => lastResponse.getHeader(h) }),
      onError: reject,
    });
    upload.start();
  });
}


/** A minimal zip writer (stored or deflated entries, no data descriptors), enough for browser-like folder zips. */
function zipOf(entries: { name: string; body: Buffer; deflate?: boolean }[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const data = e.deflate ? zlib.deflateRawSync(e.body) : e.body;
    const name = Buffer.from(e.name);
    const crc = zlib.crc32(e.body);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(e.deflate ? 8 : 0, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(e.body.length, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(e.deflate ? 8 : 0, 10);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(e.body.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, name, data);
    centrals.push(central, name);
    offset += 30 + name.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}

describe("tus uploads", () => {
  let relay: TestRelay;
  let endpoint: string;
  const tusHeaders = { "Tus-Resumable": "1.0.0" };

  beforeAll(async () => {
    relay = await startTestRelay({ transfers: { maxUploadBytes: 8 * 1024 * 1024 } });
    endpoint = `${relay.url}/api/uploads`;
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  const visible = (uid: string) => relay.services.index.getInstance(uid);
  const held = (uid: string) => relay.services.index.getInstance(uid, { includePending: true });

  it("advertises tus 1.0 with creation, creation-with-upload, termination and expiration (no checksum)", async () => {
    const res = await fetch(endpoint, { method: "OPTIONS" });
    expect(res.status).toBe(204);
    expect(res.headers.get("tus-version")).toContain("1.0.0");
    const ext = (res.headers.get("tus-extension") ?? "").split(",");
    expect(ext).toEqual(expect.arrayContaining(["creation", "creation-with-upload", "termination", "expiration"]));
    expect(ext).not.toContain("checksum");
    expect(Number(res.headers.get("tus-max-size"))).toBe(8 * 1024 * 1024);
  });

  it("stores a single Part-10 file uploaded in chunks, visible at once, result in the final response", async () => {
    const bytes = makeInstance({ rows: 64, columns: 64 });
    const up = await tusUpload(endpoint, bytes, { chunkSize: 4096, metadata: { filename: "one.dcm" } });
    expect(up.status).toBe(200);
    const result = JSON.parse(up.body) as UploadResult;
    expect(result).toMatchObject({ state: "done", filename: "one.dcm", counts: { entries: 1, stored: 1, failed: 0 }, error: null });
    expect(result.entries[0]).toMatchObject({ status: "stored", sha256: sha(bytes), size: bytes.length });
    const loc = await visible(result.entries[0]!.sopInstanceUID!);
    expect(loc?.sha256).toBe(sha(bytes));
    // the upload URL answers GET with the same result, and its bytes are gone from the upload directory
    expect(up.headers("upload-result")).toBe(new URL(up.url).pathname);
    const again = (await (await fetch(up.url)).json()) as UploadResult;
    expect(again).toEqual(result);
    const id = path.basename(new URL(up.url).pathname);
    expect(fs.existsSync(path.join(relay.config.transfers.uploadDir, id))).toBe(false);
    // a client whose final response was lost still learns by HEAD that the upload is complete
    const head = await fetch(up.url, { method: "HEAD", headers: tusHeaders });
    expect(head.status).toBe(200);
    expect(head.headers.get("upload-offset")).toBe(String(bytes.length));
    expect(head.headers.get("upload-length")).toBe(String(bytes.length));
    // and a repeated final PATCH (empty, at the end) is harmless
    const patch = await fetch(up.url, { method: "PATCH", headers: { ...tusHeaders, "Upload-Offset": String(bytes.length), "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(0) });
    expect(patch.status).toBe(200);
    expect(((await patch.json()) as UploadResult).counts.stored).toBe(1);
  });

  it("supports creation-with-upload: one POST carries the whole file (201 + Location + result)", async () => {
    const bytes = makeInstance({ rows: 8, columns: 8 });
    const res = await fetch(endpoint, {
      method: "POST",
      headers: { ...tusHeaders, "Upload-Length": String(bytes.length), "Content-Type": "application/offset+octet-stream" },
      body: new Uint8Array(bytes),
    });
    expect(res.status).toBe(201);
    expect(res.headers.get("location")).toMatch(/\/api\/uploads\/[0-9a-f]+$/);
    const result = (await res.json()) as UploadResult;
    expect(result.counts).toEqual({ entries: 1, stored: 1, alreadyStored: 0, failed: 0 });
  });

  it("takes an upload id proposed by the uploader: bytes on the creating POST, cut, resumed at the known URL; a taken or malformed id is refused", async () => {
    const offer = await fetch(endpoint, { method: "OPTIONS" });
    expect(offer.headers.get("x-dicom-relay-client-upload-ids")).toBe("1");
    const bytes = makeInstance({ rows: 256, columns: 256 });
    const id = crypto.randomBytes(16).toString("hex");
    const url = `${endpoint}/${id}`;
    // a creating POST carrying the bytes, cut after the first half: its answer (and Location) never arrives
    const half = Math.floor(bytes.length / 2);
    await new Promise<void>((resolve) => {
      const req = http.request(endpoint, {
        method: "POST",
        headers: { ...tusHeaders, "Upload-Length": String(bytes.length), "Content-Type": "application/offset+octet-stream", "Content-Length": String(bytes.length), "X-Dicom-Relay-Upload-Id": id },
      });
      req.on("error", () => resolve());
      req.write(bytes.subarray(0, half), () => setTimeout(() => {
        req.destroy();
        resolve();
      }, 300));
    });
    // the uploader knew the URL before the answer: HEAD gives what arrived
    let offset = -1;
    for (let i = 0; i < 50 && offset !== half; i++) {
      const head = await fetch(url, { method: "HEAD", headers: tusHeaders });
      expect(head.status).toBe(200);
      offset = Number(head.headers.get("upload-offset"));
      if (offset !== half) await new Promise((r) => setTimeout(r, 100));
    }
    expect(offset).toBe(half);
    // the same id again is refused, and the upload keeps its bytes (never truncated or taken over)
    const again = await fetch(endpoint, { method: "POST", headers: { ...tusHeaders, "Upload-Length": "10", "X-Dicom-Relay-Upload-Id": id } });
    expect(again.status).toBe(409);
    expect(await again.text()).toMatch(new RegExp(`an upload with id ${id} exists already; resume it`));
    const still = await fetch(url, { method: "HEAD", headers: tusHeaders });
    expect(still.headers.get("upload-offset")).toBe(String(half));
    expect(still.headers.get("upload-length")).toBe(String(bytes.length));
    // the rest by PATCH from that offset: stored whole
    const patch = await fetch(url, {
      method: "PATCH",
      headers: { ...tusHeaders, "Upload-Offset": String(half), "Content-Type": "application/offset+octet-stream" },
      body: new Uint8Array(bytes.subarray(half)),
    });
    expect(patch.status).toBe(200);
    const result = (await patch.json()) as UploadResult;
    expect(result.entries[0]).toMatchObject({ status: "stored", sha256: sha(bytes), size: bytes.length });
    // not 32 lowercase hex digits: refused with a sentence, nothing created
    for (const bad of ["../../etc/passwd", "ABCDEF0123456789ABCDEF0123456789", "abc"]) {
      const r = await fetch(endpoint, { method: "POST", headers: { ...tusHeaders, "Upload-Length": "10", "X-Dicom-Relay-Upload-Id": bad } });
      expect(r.status).toBe(400);
      expect(await r.text()).toMatch(/X-Dicom-Relay-Upload-Id must be 32 lowercase hexadecimal digits/);
    }
  });

  it("refuses an upload larger than transfers.maxUploadBytes with 413 and a sentence", async () => {
    const res = await fetch(endpoint, { method: "POST", headers: { ...tusHeaders, "Upload-Length": String(8 * 1024 * 1024 + 1) } });
    expect(res.status).toBe(413);
    expect(await res.text()).toMatch(/larger than the relay accepts \(8388608 bytes, transfers.maxUploadBytes\)/);
  });

  it("refuses a deferred-length upload once it passes the limit (413)", async () => {
    const create = await fetch(endpoint, { method: "POST", headers: { ...tusHeaders, "Upload-Defer-Length": "1" } });
    expect(create.status).toBe(201);
    const res = await fetch(create.headers.get("location")!, {
      method: "PATCH",
      headers: { ...tusHeaders, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream", "Upload-Length": String(9 * 1024 * 1024) },
      body: new Uint8Array(16),
    });
    expect(res.status).toBe(413);
    expect(await res.text()).toMatch(/transfers.maxUploadBytes/);
  });

  it("terminates an upload: DELETE frees its bytes and later requests get 404/410", async () => {
    const create = await fetch(endpoint, { method: "POST", headers: { ...tusHeaders, "Upload-Length": "100000" } });
    const url = create.headers.get("location")!;
    const patch = await fetch(url, { method: "PATCH", headers: { ...tusHeaders, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(5000) });
    expect(patch.headers.get("upload-offset")).toBe("5000");
    const id = path.basename(url);
    expect(fs.statSync(path.join(relay.config.transfers.uploadDir, id)).size).toBe(5000);
    const del = await fetch(url, { method: "DELETE", headers: tusHeaders });
    expect(del.status).toBe(204);
    expect(fs.existsSync(path.join(relay.config.transfers.uploadDir, id))).toBe(false);
    expect([404, 410]).toContain((await fetch(url, { method: "HEAD", headers: tusHeaders })).status);
  });

  it("stores every entry of a tar.gz bundle; bad entries (not DICOM, truncated) fail alone", async () => {
    const study = newUid();
    const good = [...generateStudy({ instances: 5, seriesCount: 2, rows: 16, columns: 16, studyInstanceUID: study })];
    const truncated = good[0]!.bytes.subarray(0, 200);
    const bundle = await tgz([
      ...good.slice(0, 3).map((g, i) => ({ name: `study/IM${i}`, body: g.bytes })),
      { name: "README.txt", body: Buffer.from("not a DICOM file at all") },
      { name: "../../etc/cut.dcm", body: truncated },
      ...good.slice(3).map((g, i) => ({ name: `study/IM${i + 3}`, body: g.bytes })),
    ]);
    const up = await tusUpload(endpoint, bundle, { metadata: { filename: "study.tar.gz" } });
    const result = JSON.parse(up.body) as UploadResult;
    expect(result.counts).toEqual({ entries: 7, stored: 5, alreadyStored: 0, failed: 2 });
    const byName = new Map(result.entries.map((e) => [e.name, e]));
    expect(byName.get("README.txt")).toMatchObject({ status: "failed", reason: "0xC000" });
    expect(byName.get("../../etc/cut.dcm")).toMatchObject({ status: "failed" });
    expect(byName.get("../../etc/cut.dcm")!.message).toBeTruthy();
    for (const g of good) expect((await visible(g.sopInstanceUID))?.sha256).toBe(sha(g.bytes));
    // the entry name was a label only: nothing was written outside the data directory
    expect(fs.existsSync(path.resolve(relay.config.transfers.uploadDir, "../../etc/cut.dcm"))).toBe(false);
  });

  it("reads plain tar and zip bundles (stored and deflated entries)", async () => {
    const a = [...generateStudy({ instances: 2, rows: 8, columns: 8 })];
    const b = [...generateStudy({ instances: 2, rows: 8, columns: 8 })];
    const tarUp = JSON.parse((await tusUpload(endpoint, await tarOf(a.map((g, i) => ({ name: `a${i}.dcm`, body: g.bytes }))))).body) as UploadResult;
    expect(tarUp.counts).toMatchObject({ entries: 2, stored: 2, failed: 0 });
    const zipUp = JSON.parse((await tusUpload(endpoint, zipOf(b.map((g, i) => ({ name: `folder/b${i}.dcm`, body: g.bytes, deflate: i === 1 }))))).body) as UploadResult;
    expect(zipUp.counts).toMatchObject({ entries: 2, stored: 2, failed: 0 });
    for (const g of [...a, ...b]) expect((await visible(g.sopInstanceUID))?.sha256).toBe(sha(g.bytes));
  });

  it("refuses a gzip bomb as a whole and leaves nothing of the bundle visible", async () => {
    const good = [...generateStudy({ instances: 3, rows: 8, columns: 8 })];
    // good instances first, then an entry that expands ~1000x: the bomb is found after they were ingested
    const bundle = await tgz([
      ...good.map((g, i) => ({ name: `IM${i}`, body: g.bytes })),
      { name: "zeros.dcm", body: Buffer.alloc(6 * 1024 * 1024) },
    ]);
    expect(bundle.length).toBeLessThan(1024 * 1024);
    const result = JSON.parse((await tusUpload(endpoint, bundle)).body) as UploadResult;
    expect(result.error).toMatch(/refused as a whole/);
    for (const g of good) {
      expect(await visible(g.sopInstanceUID)).toBeNull();
      expect(await held(g.sopInstanceUID)).toBeNull();
    }
    for (const e of result.entries.filter((x) => good.some((g) => g.sopInstanceUID === x.sopInstanceUID))) {
      expect(e).toMatchObject({ status: "failed", message: expect.stringMatching(/not kept/) });
    }
  });

  it("refuses a zip bomb as a whole", async () => {
    const bomb = zipOf([{ name: "bomb.dcm", body: Buffer.alloc(6 * 1024 * 1024), deflate: true }]);
    const result = JSON.parse((await tusUpload(endpoint, bomb)).body) as UploadResult;
    expect(result.error).toMatch(/refused as a whole/);
    expect(result.counts.stored).toBe(0);
  });

  it("answers 404 for the result of an unknown upload", async () => {
    const res = await fetch(`${endpoint}/0123456789abcdef`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: string }).error).toMatch(/no finished upload/);
  });
});

describe("tus expiration and slow ingest", () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay({ transfers: { expirationSeconds: 1, cleanupIntervalSeconds: 1, finishWaitSeconds: 0 } });
  });
  afterAll(async () => {
    await relay?.dispose();
  });

  it("removes an abandoned upload after the expiration and gives its disk space back", async () => {
    const headers = { "Tus-Resumable": "1.0.0" };
    const create = await fetch(`${relay.url}/api/uploads`, { method: "POST", headers: { ...headers, "Upload-Length": "1000000" } });
    expect(create.headers.get("upload-expires")).toBeTruthy();
    const url = create.headers.get("location")!;
    await fetch(url, { method: "PATCH", headers: { ...headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(300_000) });
    const file = path.join(relay.config.transfers.uploadDir, path.basename(url));
    expect(fs.statSync(file).size).toBe(300_000);
    // bounded wait: expiry 1 s + sweep every 1 s
    for (let i = 0; i < 50 && fs.existsSync(file); i++) await new Promise((r) => setTimeout(r, 100));
    expect(fs.existsSync(file)).toBe(false);
    expect(fs.existsSync(file + ".json")).toBe(false);
    expect([404, 410]).toContain((await fetch(url, { method: "HEAD", headers })).status);
  });

  it("answers the final PATCH before ingest ends when it takes longer than finishWaitSeconds; the result follows at GET", async () => {
    const headers = { "Tus-Resumable": "1.0.0" };
    const bytes = makeInstance({ rows: 8, columns: 8 });
    const create = await fetch(`${relay.url}/api/uploads`, { method: "POST", headers: { ...headers, "Upload-Length": String(bytes.length) } });
    const url = create.headers.get("location")!;
    const patch = await fetch(url, { method: "PATCH", headers: { ...headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream" }, body: new Uint8Array(bytes) });
    expect(patch.status).toBe(204);
    expect(patch.headers.get("upload-result")).toBe(new URL(url).pathname);
    let result: UploadResult | null = null;
    for (let i = 0; i < 50; i++) {
      const r = await fetch(url);
      if (r.status === 200) {
        result = (await r.json()) as UploadResult;
        if (result.state === "done") break;
      }
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(result).toMatchObject({ state: "done", counts: { stored: 1 } });
  });
});

describe("tus recovery at start", () => {
  it("ingests an upload whose bytes were complete when the relay stopped", async () => {
    const dataDir = fs.mkdtempSync(path.join((await import("node:os")).tmpdir(), "relay-recover-"));
    try {
      // what a crash between the last PATCH byte and the ingest leaves behind: data file + info file, no result
      const bytes = makeInstance({ rows: 8, columns: 8 });
      const uploadDir = path.join(dataDir, "uploads");
      fs.mkdirSync(uploadDir, { recursive: true });
      const id = crypto.randomBytes(16).toString("hex");
      fs.writeFileSync(path.join(uploadDir, id), bytes);
      fs.writeFileSync(path.join(uploadDir, `${id}.json`), JSON.stringify({ id, size: bytes.length, offset: 0, metadata: { filename: "left.dcm" }, creation_date: new Date().toISOString() }));
      const relay = await startTestRelay({}, { dataDir });
      try {
        let result: UploadResult | null = null;
        for (let i = 0; i < 50 && result?.state !== "done"; i++) {
          const r = await fetch(`${relay.url}/api/uploads/${id}`);
          if (r.status === 200) result = (await r.json()) as UploadResult;
          if (result?.state !== "done") await new Promise((res) => setTimeout(res, 50));
        }
        expect(result).toMatchObject({ state: "done", filename: "left.dcm", counts: { stored: 1 } });
        expect(await relay.services.index.getInstance(result!.entries[0]!.sopInstanceUID!)).not.toBeNull();
        // the result is saved as done first, then the data file is removed: wait (bounded) for the removal
        for (let i = 0; i < 50 && fs.existsSync(path.join(uploadDir, id)); i++) await new Promise((res) => setTimeout(res, 20));
        expect(fs.existsSync(path.join(uploadDir, id))).toBe(false);
      } finally {
        await relay.close();
      }
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
