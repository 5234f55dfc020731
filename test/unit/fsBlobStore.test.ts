import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it, expect } from "vitest";
import { Readable } from "node:stream";
import { blobStoreContract } from "../contracts/blobStore.ts";
import { FsBlobStore } from "../../src/storage/fs.ts";
import { BlobNotFoundError } from "../../src/storage/blobStore.ts";

const roots: string[] = [];
blobStoreContract(
  "fs",
  async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "fsblob-"));
    roots.push(root);
    return new FsBlobStore(root);
  },
  async (s) => {
    await s.close();
    for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
  },
);

describe("FsBlobStore specifics", () => {
  it("clears temp files left by a crash at init and never lists them", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "fsblob-"));
    fs.mkdirSync(path.join(root, ".tmp"), { recursive: true });
    fs.writeFileSync(path.join(root, ".tmp", "half.part"), "partial");
    const store = new FsBlobStore(root);
    await store.init();
    expect(fs.readdirSync(path.join(root, ".tmp"))).toEqual([]);
    await store.put("instances/aa/x.dcm", Readable.from([Buffer.from("x")]));
    const keys: string[] = [];
    for await (const b of store.list()) keys.push(b.key);
    expect(keys).toEqual(["instances/aa/x.dcm"]);
    fs.rmSync(root, { recursive: true, force: true });
  });

  it("stays inside its root", async () => {
    // the root inside a fresh folder: nothing may appear beside it (a shared /tmp may hold anything)
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), "fsblob-"));
    const root = path.join(parent, "root");
    const store = new FsBlobStore(root);
    await store.init();
    await expect(store.put("..", Readable.from([Buffer.from("x")]))).rejects.toThrow(/unsafe/);
    expect(fs.readdirSync(parent)).toEqual(["root"]);
    fs.rmSync(parent, { recursive: true, force: true });
  });

  it("putBuffers stores chunks held in memory as one object (atomic: no temp file left), and refuses a wrong size or an unsafe key", async () => {
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), "fsblob-"));
    const store = new FsBlobStore(path.join(parent, "root"));
    await store.init();
    const chunks = [Buffer.from("DICM"), Buffer.alloc(0), Buffer.alloc(70_000, 7), Buffer.from("end")];
    const whole = Buffer.concat(chunks);
    expect(await store.putBuffers("instances/ab/c.dcm", chunks, { size: whole.length })).toEqual({ key: "instances/ab/c.dcm", size: whole.length });
    const back: Buffer[] = [];
    for await (const c of await store.get("instances/ab/c.dcm")) back.push(c as Buffer);
    expect(Buffer.concat(back).equals(whole)).toBe(true);
    // the same key again overwrites, as put() does
    await store.putBuffers("instances/ab/c.dcm", [Buffer.from("x")]);
    expect((await store.stat("instances/ab/c.dcm"))?.size).toBe(1);
    await expect(store.putBuffers("instances/ab/d.dcm", chunks, { size: whole.length + 1 })).rejects.toThrow(/not the .* announced/);
    expect(await store.stat("instances/ab/d.dcm")).toBeNull();
    await expect(store.putBuffers("../d.dcm", chunks)).rejects.toThrow(/unsafe/);
    // nothing but the stored objects and the empty temp folder
    const files: string[] = [];
    const walk = (d: string) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) e.isDirectory() ? walk(path.join(d, e.name)) : files.push(path.relative(parent, path.join(d, e.name))); };
    walk(parent);
    expect(files).toEqual([path.join("root", "instances", "ab", "c.dcm")]);
    fs.rmSync(parent, { recursive: true, force: true });
  });

  it("readWhole gives a small object's bytes in one buffer; a missing or shorter object is an error, not short bytes", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "fsblob-"));
    const store = new FsBlobStore(root);
    await store.init();
    const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7) & 0xff));
    await store.put("instances/ab/y.dcm", Readable.from([bytes]));
    expect((await store.readWhole("instances/ab/y.dcm", bytes.length)).equals(bytes)).toBe(true);
    expect((await store.readWhole("instances/ab/y.dcm", 10)).equals(bytes.subarray(0, 10))).toBe(true);
    await expect(store.readWhole("instances/ab/none.dcm", 10)).rejects.toBeInstanceOf(BlobNotFoundError);
    await expect(store.readWhole("instances/ab/y.dcm", bytes.length + 1)).rejects.toThrow(/70000 bytes, fewer than the 70001 expected/);
    await expect(store.readWhole("../y.dcm", 1)).rejects.toThrow(/unsafe/);
    fs.rmSync(root, { recursive: true, force: true });
  });

  it("releaseBuffer: the memory of a buffer given back is read into again, each read still gets its own object's bytes; a buffer given back twice, or not the store's, is never shared", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "fsblob-"));
    const store = new FsBlobStore(root);
    await store.init();
    const kept = () => (store as unknown as { reader: { keptMemory: number } }).reader.keptMemory;
    // sizes around the rounding steps (4 KiB under 64 KiB, 64 KiB above)
    const sizes = [1, 4095, 4096, 9_000, 65_535, 65_536, 70_000, 525_000, 600_000];
    const objects = sizes.flatMap((n, k) => [0, 1, 2].map((j) => ({ key: `instances/r${k}/o${j}.dcm`, bytes: crypto.randomBytes(n) })));
    for (const o of objects) await store.put(o.key, Readable.from([o.bytes]));
    const first = await Promise.all(objects.map((o) => store.readWhole(o.key, o.bytes.length)));
    first.forEach((b, i) => expect(b.equals(objects[i]!.bytes), `object ${i}`).toBe(true));
    expect(kept()).toBe(0);
    // given back (one of them twice): kept, once
    for (const b of first) store.releaseBuffer(b);
    const keptAfter = kept();
    store.releaseBuffer(first[0]!);
    expect(kept()).toBe(keptAfter);
    expect(keptAfter).toBeGreaterThanOrEqual(sizes.reduce((n, s) => n + 3 * s, 0));
    // a buffer the store did not read (a slice of Node's shared pool) is left alone
    store.releaseBuffer(Buffer.from("not read by the store"));
    store.releaseBuffer(Buffer.allocUnsafe(4096));
    expect(kept()).toBe(keptAfter);
    // read again, in another order, twice over at once: each read gets its own bytes, in memory used again
    const order = [...objects.keys()].reverse();
    const again = await Promise.all([...order, ...order].map((i) => store.readWhole(objects[i]!.key, objects[i]!.bytes.length)));
    again.forEach((b, j) => expect(b.equals(objects[order[j % order.length]!]!.bytes), `read ${j}`).toBe(true));
    expect(kept()).toBeLessThan(keptAfter);
    // no two live buffers share memory: each marked with its own byte keeps it
    again.forEach((b, j) => b.fill(j & 0xff));
    again.forEach((b, j) => expect(b.every((x) => x === (j & 0xff)), `read ${j} kept its own memory`).toBe(true));
    // memory used again never carries an earlier object's bytes past the new one's end (the same rounded size:
    // 600,000 and 590,000 bytes both take 640 KiB)
    const big = objects.find((o) => o.bytes.length === 600_000)!;
    const smaller = crypto.randomBytes(590_000);
    await store.put("instances/r9/smaller.dcm", Readable.from([smaller]));
    const b1 = await store.readWhole(big.key, big.bytes.length);
    store.releaseBuffer(b1);
    const b2 = await store.readWhole("instances/r9/smaller.dcm", smaller.length);
    expect(b2.equals(smaller)).toBe(true);
    const whole = Buffer.from(b2.buffer as ArrayBuffer);
    expect(whole.length).toBe(640 * 1024);
    expect(whole.subarray(smaller.length).every((x) => x === 0)).toBe(true);
    await store.close();
    expect(kept()).toBe(0);
    fs.rmSync(root, { recursive: true, force: true });
  });

  it("readWhole: reads asked for together (more than one batch) each come back to their caller; after close they are refused", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "fsblob-"));
    const store = new FsBlobStore(root);
    await store.init();
    const objects = Array.from({ length: 70 }, (_, i) => ({ key: `instances/${String(i % 7).padStart(2, "0")}/o${i}.dcm`, bytes: Buffer.alloc(100 + i, i) }));
    for (const o of objects) await store.put(o.key, Readable.from([o.bytes]));
    // one of them missing: only that one fails
    const got = await Promise.allSettled([...objects.map((o) => store.readWhole(o.key, o.bytes.length)), store.readWhole("instances/00/missing.dcm", 5)]);
    got.slice(0, 70).forEach((r, i) => expect(r.status === "fulfilled" && r.value.equals(objects[i]!.bytes), `object ${i}`).toBe(true));
    expect(got[70]).toMatchObject({ status: "rejected", reason: expect.any(BlobNotFoundError) });
    await store.close();
    await expect(store.readWhole(objects[0]!.key, 1)).rejects.toThrow(/closed/);
    fs.rmSync(root, { recursive: true, force: true });
  });
});
