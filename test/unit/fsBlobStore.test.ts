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
