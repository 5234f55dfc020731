/**
 * The BlobStore contract: every implementation (fs, s3, encrypted wrappers) must pass it.
 * Usage: blobStoreContract("fs", async () => store, async (store) => cleanup)
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { BlobNotFoundError, type BlobStore } from "../../src/storage/blobStore.ts";
import { readAll } from "../support/streams.ts";

/** A deterministic stream of `size` bytes produced chunk by chunk (never one big buffer). */
function patternStream(size: number, seed = 1): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= size) return this.push(null);
      const n = Math.min(1 << 20, size - sent);
      const buf = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) buf[i] = (sent + i) * 31 + seed;
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

export function blobStoreContract(name: string, make: () => Promise<BlobStore>, dispose?: (s: BlobStore) => Promise<void>) {
  describe(`BlobStore contract: ${name}`, () => {
    let store: BlobStore;
    const prefix = `contract-${crypto.randomBytes(4).toString("hex")}`;
    beforeAll(async () => {
      store = await make();
      await store.init();
    });
    afterAll(async () => {
      if (dispose) await dispose(store);
      else await store.close();
    });

    it("put then get returns the same bytes, stat gives the size", async () => {
      const data = crypto.randomBytes(100_000);
      const st = await store.put(`${prefix}/a/one.dcm`, Readable.from([data]));
      expect(st).toEqual({ key: `${prefix}/a/one.dcm`, size: data.length });
      expect(await readAll(await store.get(`${prefix}/a/one.dcm`))).toEqual(data);
      expect(await store.stat(`${prefix}/a/one.dcm`)).toEqual({ key: `${prefix}/a/one.dcm`, size: data.length });
    });

    it("stores an empty object", async () => {
      await store.put(`${prefix}/empty`, Readable.from([]));
      expect((await store.stat(`${prefix}/empty`))?.size).toBe(0);
      expect((await readAll(await store.get(`${prefix}/empty`))).length).toBe(0);
    });

    it("ranged get returns exactly the inclusive range", async () => {
      const data = crypto.randomBytes(50_000);
      await store.put(`${prefix}/range`, Readable.from([data]));
      expect(await readAll(await store.get(`${prefix}/range`, { start: 0, end: 0 }))).toEqual(data.subarray(0, 1));
      expect(await readAll(await store.get(`${prefix}/range`, { start: 1234, end: 40_000 }))).toEqual(data.subarray(1234, 40_001));
      expect(await readAll(await store.get(`${prefix}/range`, { start: 49_999, end: 49_999 }))).toEqual(data.subarray(49_999));
    });

    it("overwrites an existing key", async () => {
      await store.put(`${prefix}/over`, Readable.from([Buffer.from("first")]));
      await store.put(`${prefix}/over`, Readable.from([Buffer.from("second!")]));
      expect((await readAll(await store.get(`${prefix}/over`))).toString()).toBe("second!");
    });

    it("putFile stores a local file, which is gone afterwards (the ingest pipeline does not remove it again)", async () => {
      const tmp = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "blob-")), "f.dcm");
      const data = crypto.randomBytes(70_000);
      fs.writeFileSync(tmp, data);
      const st = await store.putFile(`${prefix}/file.dcm`, tmp);
      expect(st.size).toBe(data.length);
      expect(fs.existsSync(tmp)).toBe(false);
      expect(await readAll(await store.get(`${prefix}/file.dcm`))).toEqual(data);
    });

    it("put and putFile with the body's SHA-256 (as the ingest pipeline calls them) store the bytes", async () => {
      const data = crypto.randomBytes(90_000);
      const digest = crypto.createHash("sha256").update(data).digest("hex");
      const tmp = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "blob-")), "f.dcm");
      fs.writeFileSync(tmp, data);
      expect(await store.putFile(`${prefix}/hashed-file.dcm`, tmp, { sha256: digest })).toEqual({ key: `${prefix}/hashed-file.dcm`, size: data.length });
      expect(await store.put(`${prefix}/hashed.dcm`, Readable.from([data]), { size: data.length, sha256: digest })).toEqual({ key: `${prefix}/hashed.dcm`, size: data.length });
      expect(await sha256(await store.get(`${prefix}/hashed-file.dcm`))).toBe(digest);
      expect(await sha256(await store.get(`${prefix}/hashed.dcm`))).toBe(digest);
    });

    it("putBuffers, where a store has it, stores chunks held in memory like put (the ingest pipeline's small instances)", async () => {
      const chunks = [crypto.randomBytes(1000), Buffer.alloc(0), crypto.randomBytes(65_536), crypto.randomBytes(7)];
      const data = Buffer.concat(chunks);
      const digest = crypto.createHash("sha256").update(data).digest("hex");
      const put = store.putBuffers ? store.putBuffers.bind(store) : (key: string, c: readonly Buffer[], o?: { size?: number; sha256?: string }) => store.put(key, Readable.from(c), o);
      expect(await put(`${prefix}/buffers.dcm`, chunks, { size: data.length, sha256: digest })).toEqual({ key: `${prefix}/buffers.dcm`, size: data.length });
      expect(await readAll(await store.get(`${prefix}/buffers.dcm`))).toEqual(data);
    });

    it("a large object streams in and out with the same digest", async () => {
      const size = 24 * 1024 * 1024 + 12345;
      const expected = await sha256(patternStream(size, 7));
      const st = await store.put(`${prefix}/large`, patternStream(size, 7), { size });
      expect(st.size).toBe(size);
      expect(await sha256(await store.get(`${prefix}/large`))).toBe(expected);
      const tail = await readAll(await store.get(`${prefix}/large`, { start: size - 10, end: size - 1 }));
      expect(tail.length).toBe(10);
    }, 120_000);

    it("a failed put leaves no object and keeps the old one", async () => {
      await store.put(`${prefix}/keep`, Readable.from([Buffer.from("original")]));
      const failing = new Readable({
        read() {
          this.push(Buffer.alloc(1024, 1));
          this.destroy(new Error("client went away"));
        },
      });
      await expect(store.put(`${prefix}/keep`, failing)).rejects.toThrow();
      await expect(store.put(`${prefix}/never`, new Readable({
        read() { this.destroy(new Error("boom")); },
      }))).rejects.toThrow();
      expect((await readAll(await store.get(`${prefix}/keep`))).toString()).toBe("original");
      expect(await store.stat(`${prefix}/never`)).toBeNull();
    });

    it("missing objects: get rejects with BlobNotFoundError, stat is null, delete is false", async () => {
      await expect(store.get(`${prefix}/missing`)).rejects.toBeInstanceOf(BlobNotFoundError);
      expect(await store.stat(`${prefix}/missing`)).toBeNull();
      expect(await store.delete(`${prefix}/missing`)).toBe(false);
    });

    it("delete removes the object", async () => {
      await store.put(`${prefix}/del`, Readable.from([Buffer.from("x")]));
      expect(await store.delete(`${prefix}/del`)).toBe(true);
      expect(await store.stat(`${prefix}/del`)).toBeNull();
    });

    it("list yields every object under a prefix with its size", async () => {
      await store.put(`${prefix}/list/x/1`, Readable.from([Buffer.from("1")]));
      await store.put(`${prefix}/list/x/2`, Readable.from([Buffer.from("22")]));
      await store.put(`${prefix}/list/y/3`, Readable.from([Buffer.from("333")]));
      const seen: Record<string, number> = {};
      for await (const b of store.list(`${prefix}/list/`)) seen[b.key] = b.size;
      expect(seen).toEqual({ [`${prefix}/list/x/1`]: 1, [`${prefix}/list/x/2`]: 2, [`${prefix}/list/y/3`]: 3 });
    });

    it("refuses unsafe keys", async () => {
      for (const bad of ["../etc/passwd", "/abs", "a/../../b", "a//b", "", "a/./b", "x\\y", "a\0b"]) {
        await expect(store.put(bad, Readable.from([Buffer.from("x")]))).rejects.toThrow(/unsafe storage key/);
        await expect(store.get(bad)).rejects.toThrow(/unsafe storage key/);
      }
    });

    it("ping succeeds while the backend is up", async () => {
      await expect(store.ping()).resolves.toBeUndefined();
    });
  });
}
