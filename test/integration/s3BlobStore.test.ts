/**
 * S3BlobStore against a real MinIO (scripts/install-minio.sh builds it): the shared BlobStore contract
 * with and without a key prefix, then what only S3 has: bucket handling, multipart clean-up, timeouts,
 * a backend that goes away and comes back, and memory for a large put.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as Minio from "minio";
import { blobStoreContract } from "../contracts/blobStore.ts";
import { startMinio, type RunningMinio } from "../support/minio.ts";
import { S3BlobStore, S3_MAX_SOCKETS, type S3Settings, type S3BlobStoreOptions } from "../../src/storage/s3.ts";
import { StorageUnavailableError, BlobNotFoundError } from "../../src/storage/blobStore.ts";
import { ConfigError, defaultConfig } from "../../src/config.ts";
import { createBlobStore } from "../../src/storage/index.ts";
import { readAll } from "../support/streams.ts";

const MiB = 1024 * 1024;
let minio: RunningMinio;

beforeAll(async () => {
  minio = await startMinio();
});
afterAll(async () => {
  await minio?.destroy();
});

function settings(m: RunningMinio, over: Partial<S3Settings> = {}): S3Settings {
  return {
    endpoint: m.endpoint,
    region: "us-east-1",
    accessKey: m.accessKey,
    secretKey: m.secretKey,
    bucket: "relay-test",
    prefix: "",
    pathStyle: true,
    createBucket: true,
    partSize: 5 * MiB,
    maxConnections: S3_MAX_SOCKETS,
    ...over,
  };
}

function rawClient(m: RunningMinio): Minio.Client {
  return new Minio.Client({ endPoint: "127.0.0.1", port: m.port, useSSL: false, accessKey: m.accessKey, secretKey: m.secretKey, pathStyle: true });
}

/** `size` deterministic bytes, 1 MiB at a time. */
function patternStream(size: number, seed = 3): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= size) return this.push(null);
      const n = Math.min(MiB, size - sent);
      const buf = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i += 4) buf.writeUInt32LE(((sent + i) * 2654435761 + seed) >>> 0, i);
      sent += n;
      this.push(buf);
    },
  });
}

async function sha256(r: Readable): Promise<string> {
  const h = crypto.createHash("sha256");
  for await (const c of r) h.update(c);
  return h.digest("hex");
}

async function within<T>(ms: number, p: Promise<T>): Promise<{ value?: T; error?: unknown; elapsed: number }> {
  const t0 = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms);
  });
  try {
    return { value: await Promise.race([p, deadline]), elapsed: Date.now() - t0 };
  } catch (error) {
    return { error, elapsed: Date.now() - t0 };
  } finally {
    clearTimeout(timer);
  }
}

blobStoreContract("s3 (MinIO)", async () => new S3BlobStore(settings(minio)));
blobStoreContract("s3 (MinIO) with a key prefix", async () => new S3BlobStore(settings(minio, { prefix: "tenant-a/relay/" })));

describe("S3BlobStore specifics", () => {
  it("keeps objects under the configured prefix and lists keys without it", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "prefixed", prefix: "/site-1/" }));
    await store.init();
    await store.put("instances/ab/cd/x.dcm", Readable.from([Buffer.from("abc")]));
    const names: string[] = [];
    for await (const o of rawClient(minio).listObjectsV2("prefixed", "", true)) names.push((o as { name: string }).name);
    expect(names).toEqual(["site-1/instances/ab/cd/x.dcm"]);
    const listed: string[] = [];
    for await (const b of store.list("instances/")) listed.push(b.key);
    expect(listed).toEqual(["instances/ab/cd/x.dcm"]);
    await store.close();
  });

  it("creates the bucket at init when createBucket is set, and init is idempotent", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "made-at-init" }));
    await store.init();
    await store.init();
    expect(await rawClient(minio).bucketExists("made-at-init")).toBe(true);
    await store.close();
  });

  it("refuses to start on a missing bucket when createBucket is off, naming the setting", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "never-created", createBucket: false }));
    await expect(store.init()).rejects.toThrow(/bucket "never-created" does not exist.*DICOM_RELAY_STORAGE_S3_CREATE_BUCKET/);
    await expect(store.ping()).rejects.toBeInstanceOf(StorageUnavailableError);
    expect(await rawClient(minio).bucketExists("never-created")).toBe(false);
    await store.close();
  });

  it("refuses unusable settings with a sentence naming the key", () => {
    expect(() => new S3BlobStore(settings(minio, { endpoint: "" }))).toThrow(ConfigError);
    expect(() => new S3BlobStore(settings(minio, { endpoint: "not a url" }))).toThrow(/storage.s3.endpoint/);
    expect(() => new S3BlobStore(settings(minio, { endpoint: "ftp://127.0.0.1:21" }))).toThrow(/http\(s\)/);
    expect(() => new S3BlobStore(settings(minio, { endpoint: "http://127.0.0.1:9000/some/path" }))).toThrow(/no path/);
    expect(() => new S3BlobStore(settings(minio, { secretKey: "" }))).toThrow(/secretKey/);
    expect(() => new S3BlobStore(settings(minio, { prefix: "a/../b" }))).toThrow(/storage.s3.prefix/);
  });

  it("createBlobStore picks fs or s3 from the config", async () => {
    const cfg = defaultConfig();
    cfg.storage.fs.root = fs.mkdtempSync(path.join(os.tmpdir(), "factory-"));
    expect(createBlobStore(cfg).kind).toBe("fs");
    cfg.storage.kind = "s3";
    cfg.storage.s3 = settings(minio, { bucket: "from-factory" });
    const s3 = createBlobStore(cfg);
    expect(s3.kind).toBe("s3");
    await s3.init();
    await s3.ping();
    await s3.close();
    fs.rmSync(cfg.storage.fs.root, { recursive: true, force: true });
  });

  it("a put whose stream fails after several parts aborts its multipart upload", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "aborts" }));
    await store.init();
    let sent = 0;
    const failing = new Readable({
      read() {
        if (sent >= 12 * MiB) return this.destroy(new Error("client went away"));
        sent += MiB;
        this.push(Buffer.alloc(MiB, 7));
      },
    });
    await expect(store.put("instances/aa/bb/partial.dcm", failing)).rejects.toThrow(/client went away/);
    expect(await store.stat("instances/aa/bb/partial.dcm")).toBeNull();
    const incomplete: unknown[] = [];
    for await (const u of rawClient(minio).listIncompleteUploads("aborts", "", true)) incomplete.push(u);
    expect(incomplete).toEqual([]);
    await store.close();
  });

  it("a stream of another length than announced stores nothing and keeps the object it would replace", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "sizes" }));
    await store.init();
    await expect(store.put("short", Readable.from([Buffer.alloc(100)]), { size: 101 })).rejects.toThrow(/expected 101 bytes, the stream gave 100/);
    expect(await store.stat("short")).toBeNull();
    await store.put("kept", Readable.from([Buffer.from("good bytes")]));
    // multipart: 12 MiB announced, 11 MiB sent
    await expect(store.put("kept", patternStream(11 * MiB), { size: 12 * MiB })).rejects.toThrow(/expected 12582912 bytes/);
    expect((await readAll(await store.get("kept"))).toString()).toBe("good bytes");
    const incomplete: unknown[] = [];
    for await (const u of rawClient(minio).listIncompleteUploads("sizes", "", true)) incomplete.push(u);
    expect(incomplete).toEqual([]);
    await store.close();
  });

  it("putFile removes the source file (the caller must not reuse it)", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "files" }));
    await store.init();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "s3put-"));
    const src = path.join(dir, "in.dcm");
    fs.writeFileSync(src, crypto.randomBytes(6 * MiB));
    const digest = crypto.createHash("sha256").update(fs.readFileSync(src)).digest("hex");
    expect((await store.putFile("f.dcm", src)).size).toBe(6 * MiB);
    expect(fs.existsSync(src)).toBe(false);
    expect(await sha256(await store.get("f.dcm"))).toBe(digest);
    fs.rmSync(dir, { recursive: true, force: true });
    await store.close();
  });

  it("ranged get refuses inverted or out-of-object ranges with RangeError", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "ranges" }));
    await store.init();
    await store.put("r", Readable.from([Buffer.from("0123456789")]));
    await expect(store.get("r", { start: 5, end: 4 })).rejects.toBeInstanceOf(RangeError);
    await expect(store.get("r", { start: -1, end: 4 })).rejects.toBeInstanceOf(RangeError);
    await expect(store.get("r", { start: 50, end: 60 })).rejects.toBeInstanceOf(RangeError);
    expect((await readAll(await store.get("r", { start: 8, end: 20 }))).toString()).toBe("89");
    await expect(store.get("nope", { start: 0, end: 1 })).rejects.toBeInstanceOf(BlobNotFoundError);
    await store.close();
  });

  it("a download paused longer than the idle timeout still completes (downstream backpressure is not a backend fault)", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "slow-reader" }), { idleTimeoutMs: 1000 });
    await store.init();
    const size = 24 * MiB;
    const expected = await sha256(patternStream(size, 9));
    await store.put("big", patternStream(size, 9), { size });
    const body = await store.get("big");
    const h = crypto.createHash("sha256");
    let paused = false;
    for await (const c of body) {
      h.update(c);
      if (!paused) {
        paused = true;
        await new Promise((r) => setTimeout(r, 2500));
      }
    }
    expect(h.digest("hex")).toBe(expected);
    await store.close();
  }, 60_000);

  it("a 200 MB put streams in bounded memory", async () => {
    const store = new S3BlobStore(settings(minio, { bucket: "memory", partSize: 16 * MiB }));
    await store.init();
    const size = 200 * MiB;
    // rss can hide growth in memory freed by earlier tests; Buffer memory alive (arrayBuffers) cannot
    const before = process.memoryUsage();
    let peakRss = before.rss;
    let peakBuffers = before.arrayBuffers;
    const sample = () => {
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakBuffers = Math.max(peakBuffers, m.arrayBuffers);
    };
    const sampler = setInterval(sample, 10);
    try {
      const st = await store.put("instances/00/00/large.dcm", patternStream(size, 5), { size });
      expect(st.size).toBe(size);
    } finally {
      clearInterval(sampler);
    }
    sample();
    expect(peakRss - before.rss).toBeLessThan(100 * MiB);
    // two parts of 16 MiB, the chunks in flight and source chunks not yet collected; a buffered put is 200+
    expect(peakBuffers - before.arrayBuffers).toBeLessThan(100 * MiB);
    expect((await store.stat("instances/00/00/large.dcm"))?.size).toBe(size);
    expect(await sha256(await store.get("instances/00/00/large.dcm"))).toBe(await sha256(patternStream(size, 5)));
    await store.delete("instances/00/00/large.dcm");
    await store.close();
  }, 180_000);
});

/**
 * A pass-through HTTP proxy in front of the real MinIO that records each request (method, sub-resource
 * query, body length) and counts TCP connections: what the store sends is seen, MinIO still answers.
 */
async function countingProxy(m: RunningMinio) {
  const requests: { method: string; query: string; bytes: number }[] = [];
  let connections = 0;
  const agent = new http.Agent({ keepAlive: true });
  const server = http.createServer((req, res) => {
    const query = [...new URL(req.url!, "http://x").searchParams.keys()].sort().join("&");
    const entry = { method: req.method!, query, bytes: 0 };
    requests.push(entry);
    req.on("data", (c: Buffer) => (entry.bytes += c.length));
    const up = http.request({ host: "127.0.0.1", port: m.port, path: req.url, method: req.method, headers: req.headers, agent }, (r) => {
      res.writeHead(r.statusCode!, r.headers);
      r.pipe(res);
    });
    up.on("error", (err) => res.destroy(err));
    req.pipe(up);
  });
  server.on("connection", () => connections++);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    connections: () => connections,
    reset() {
      requests.length = 0;
      connections = 0;
    },
    close: () => new Promise<void>((r) => { agent.destroy(); server.closeAllConnections(); server.close(() => r()); }),
  };
}

describe("S3BlobStore requests to the backend", () => {
  let proxy: Awaited<ReturnType<typeof countingProxy>>;
  let store: S3BlobStore;
  beforeAll(async () => {
    proxy = await countingProxy(minio);
    store = new S3BlobStore({ ...settings(minio, { bucket: "requests", partSize: 5 * MiB }), endpoint: proxy.endpoint });
    await store.init();
  });
  afterAll(async () => {
    await store.close();
    await proxy.close();
  });

  it("an object smaller than one part is one PUT of its own bytes (no multipart), over kept-alive connections", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "s3req-"));
    const data = crypto.randomBytes(70_000);
    proxy.reset();
    for (let i = 0; i < 20; i++) {
      const src = path.join(dir, `${i}.dcm`);
      fs.writeFileSync(src, data);
      await store.putFile(`small/${i}.dcm`, src, { sha256: crypto.createHash("sha256").update(data).digest("hex") });
    }
    await store.put("small/stream.dcm", Readable.from([data.subarray(0, 1000), data.subarray(1000)]), { size: data.length });
    await store.put("small/unsized.dcm", Readable.from([data]));
    expect(proxy.requests).toEqual(Array.from({ length: 22 }, () => ({ method: "PUT", query: "", bytes: data.length })));
    // one connection reused (a second may open if the first was still being released)
    expect(proxy.connections()).toBeLessThanOrEqual(2);
    expect(await readAll(await store.get("small/19.dcm"))).toEqual(data);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("readWhole and readChunks: a small object read again comes from the read cache (no request); a delete or put of the key drops it; readCacheBytes 0 keeps nothing", async () => {
    const data = crypto.randomBytes(50_000);
    await store.put("cache/a.dcm", Readable.from([data]));
    proxy.reset();
    expect((await store.readWhole("cache/a.dcm", data.length)).equals(data)).toBe(true);
    expect(proxy.requests.filter((r) => r.method === "GET")).toHaveLength(1);
    expect((await store.readWhole("cache/a.dcm", data.length)).equals(data)).toBe(true);
    expect((await store.readWhole("cache/a.dcm", 10)).equals(data.subarray(0, 10))).toBe(true);
    // the chunks the response came in (WADO-RS writes them as they are): the same bytes, from the same cache entry
    const chunks = await store.readChunks("cache/a.dcm", data.length);
    expect(Buffer.concat(chunks as Buffer[]).equals(data)).toBe(true);
    expect(Buffer.concat((await store.readChunks("cache/a.dcm", 30_000)) as Buffer[]).equals(data.subarray(0, 30_000))).toBe(true);
    expect(proxy.requests.filter((r) => r.method === "GET")).toHaveLength(1);
    // shorter than the index says: an error, not short bytes
    await expect(store.readWhole("cache/a.dcm", data.length + 1)).rejects.toThrow(/fewer than/);
    // a put of the same key is read from the backend again
    const other = crypto.randomBytes(40_000);
    await store.put("cache/a.dcm", Readable.from([other]));
    expect((await store.readWhole("cache/a.dcm", other.length)).equals(other)).toBe(true);
    // deleted: not served from memory
    expect(await store.delete("cache/a.dcm")).toBe(true);
    await expect(store.readWhole("cache/a.dcm", other.length)).rejects.toBeInstanceOf(BlobNotFoundError);
    // without a cache every read is a request
    const plain = new S3BlobStore({ ...settings(minio, { bucket: "requests", readCacheBytes: 0 }), endpoint: proxy.endpoint });
    await plain.put("cache/b.dcm", Readable.from([data]));
    proxy.reset();
    for (let i = 0; i < 3; i++) expect((await plain.readWhole("cache/b.dcm", data.length)).equals(data)).toBe(true);
    expect(proxy.requests.filter((r) => r.method === "GET")).toHaveLength(3);
    await plain.close();
  });

  it("an object of several parts is a multipart upload: initiate, one PUT per part, complete", async () => {
    proxy.reset();
    const size = 12 * MiB + 8;
    await store.put("large/obj", patternStream(size, 4), { size });
    expect(proxy.requests.map((r) => `${r.method} ${r.query}`)).toEqual([
      "POST uploads", "PUT partNumber&uploadId", "PUT partNumber&uploadId", "PUT partNumber&uploadId", "POST uploadId",
    ]);
    expect(proxy.requests.filter((r) => r.query.startsWith("partNumber")).map((r) => r.bytes)).toEqual([5 * MiB, 5 * MiB, 2 * MiB + 8]);
    expect(await sha256(await store.get("large/obj"))).toBe(await sha256(patternStream(size, 4)));
  });

  it("small puts hold buffers of their own size, not part-sized ones", async () => {
    const big = new S3BlobStore({ ...settings(minio, { bucket: "requests", partSize: 64 * MiB }), endpoint: proxy.endpoint });
    const before = process.memoryUsage().arrayBuffers;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 2);
    try {
      // 16 at once: two 64 MiB part buffers each would be 2 GiB
      await Promise.all(Array.from({ length: 16 }, (_, i) => big.put(`buffers/${i}`, Readable.from([crypto.randomBytes(10_000)]), { size: 10_000 })));
    } finally {
      clearInterval(sampler);
    }
    expect(peak - before).toBeLessThan(32 * MiB);
    await big.close();
  });

  it("downloads held open by slow readers use a pool of their own: uploads still get connections", async () => {
    const small = new S3BlobStore(settings(minio, { bucket: "requests", maxConnections: 2 }));
    const size = 8 * MiB;
    await small.put("held/big", patternStream(size, 6), { size });
    // two downloads nobody reads: each keeps its connection for as long as its reader waits
    const held = [await small.get("held/big"), await small.get("held/big")];
    const third = small.get("held/big");
    const put = await within(10_000, small.put("held/other", Readable.from([Buffer.from("stored meanwhile")])));
    expect(put.error).toBeUndefined();
    expect(await small.stat("held/other")).toEqual({ key: "held/other", size: 16 });
    // the third download waits for a download connection, and gets one when a reader lets go
    held[0]!.destroy();
    const body = await within(10_000, third);
    expect(body.error).toBeUndefined();
    expect(await sha256(body.value!)).toBe(await sha256(patternStream(size, 6)));
    held[1]!.destroy();
    await small.close();
  });

  it("a SHA-256 that does not match the bytes is refused by the backend: nothing stored, the old object kept", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "s3sha-"));
    const src = path.join(dir, "in.dcm");
    await store.put("sha/kept", Readable.from([Buffer.from("good bytes")]));
    fs.writeFileSync(src, "other bytes");
    const wrong = crypto.createHash("sha256").update("something else").digest("hex");
    await expect(store.putFile("sha/kept", src, { sha256: wrong })).rejects.toThrow(/SHA256|sha256|checksum/i);
    await expect(store.put("sha/new", Readable.from([Buffer.from("other bytes")]), { size: 11, sha256: wrong })).rejects.toThrow();
    expect((await readAll(await store.get("sha/kept"))).toString()).toBe("good bytes");
    expect(await store.stat("sha/new")).toBeNull();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe("S3BlobStore when the backend goes away", () => {
  let own: RunningMinio;
  beforeAll(async () => {
    own = await startMinio();
  });
  afterAll(async () => {
    await own?.destroy();
  });

  it("fails fast with StorageUnavailableError while MinIO is stopped, and the same store works again after a restart", async () => {
    const store = new S3BlobStore(settings(own, { bucket: "outage" }));
    await store.init();
    await store.put("kept", Readable.from([Buffer.from("before the outage")]));
    await own.stop();

    const calls: Array<() => Promise<unknown>> = [
      () => store.ping(),
      () => store.get("kept"),
      () => store.put("new", Readable.from([Buffer.from("x")])),
      () => store.stat("kept"),
      () => store.delete("kept"),
      async () => {
        for await (const _ of store.list("")) void _;
      },
    ];
    for (const call of calls) {
      const r = await within<unknown>(5_000, call());
      expect(r.error).toBeInstanceOf(StorageUnavailableError);
      expect(r.elapsed).toBeLessThan(5_000);
    }

    await own.restart();
    await store.ping();
    expect((await readAll(await store.get("kept"))).toString()).toBe("before the outage");
    await store.put("after", Readable.from([Buffer.from("after the outage")]));
    expect((await store.stat("after"))?.size).toBe(16);
    await store.close();
  }, 60_000);

  it("after a crash (SIGKILL) and restart, the same store works again", async () => {
    const store = new S3BlobStore(settings(own, { bucket: "crash" }));
    await store.init();
    await store.put("k", Readable.from([Buffer.from("durable")]));
    await own.kill();
    const r = await within(5_000, store.get("k"));
    expect(r.error).toBeInstanceOf(StorageUnavailableError);
    await own.restart();
    expect((await readAll(await store.get("k"))).toString()).toBe("durable");
    await store.close();
  }, 60_000);

  it("a hung MinIO (accepts connections, never answers) fails calls after the idle timeout", async () => {
    const store = new S3BlobStore(settings(own, { bucket: "hung" }), { idleTimeoutMs: 1500 });
    await store.init();
    await own.freeze();
    try {
      const ping = await within(6_000, store.ping());
      expect(ping.error).toBeInstanceOf(StorageUnavailableError);
      expect(ping.elapsed).toBeGreaterThanOrEqual(1_400);
      const put = await within(6_000, store.put("p", Readable.from([Buffer.from("x")])));
      expect(put.error).toBeInstanceOf(StorageUnavailableError);
    } finally {
      own.thaw();
    }
    await store.ping();
    await store.close();
  }, 60_000);
});

describe("S3BlobStore against a backend answering 5xx", () => {
  // a fault injector, not an S3 fake: it only answers 503 / 500 so the mapping of server errors is seen
  let server: http.Server;
  let status = 503;
  beforeAll(async () => {
    server = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(status, { "content-type": "application/xml" });
        res.end(req.method === "HEAD" ? undefined : `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${status === 503 ? "ServiceUnavailable" : "InternalError"}</Code><Message>down</Message></Error>`);
      });
    });
    // idle connections stay open (like a real S3 endpoint's): a pinned socket is not freed by the server
    server.keepAliveTimeout = 120_000;
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  for (const code of [503, 500]) {
    it(`maps ${code} to StorageUnavailableError`, async () => {
      status = code;
      const port = (server.address() as AddressInfo).port;
      const opts: S3BlobStoreOptions = { idleTimeoutMs: 2000 };
      const store = new S3BlobStore({ ...settings(minio), endpoint: `http://127.0.0.1:${port}` }, opts);
      await expect(store.ping()).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(store.get("x")).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(store.put("x", Readable.from([Buffer.from("x")]))).rejects.toBeInstanceOf(StorageUnavailableError);
      await store.close();
    });
  }

  it("drains 5xx answers, so failed downloads never pin the connection pool", async () => {
    status = 503;
    const port = (server.address() as AddressInfo).port;
    const store = new S3BlobStore({ ...settings(minio), endpoint: `http://127.0.0.1:${port}` }, { idleTimeoutMs: 60_000 });
    const r = await within(10_000, (async () => {
      for (let i = 0; i < S3_MAX_SOCKETS + 20; i++) await expect(store.get("x")).rejects.toBeInstanceOf(StorageUnavailableError);
    })());
    expect(r.error).toBeUndefined();
    await store.close();
  });
});
