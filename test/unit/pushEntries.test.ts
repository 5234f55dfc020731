/**
 * Bundles as one gzip member per instance (src/cli/push/entries.ts): the same bytes whether the members were
 * compressed ahead or while the bundle was written, read by the relay's reader and by GNU tar, and the ahead
 * compressor's budget, order and single compression of each instance.
 */
import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { gunzipSync } from "node:zlib";
import { writeBundle, type BundleMember } from "../../src/cli/push/bundle.ts";
import { AheadCompressor, CompressionMeter } from "../../src/cli/push/entries.ts";
import { readBundleEntries } from "../../src/transfers/bundle.ts";
import { makeInstance } from "../../scripts/lib/synthetic.ts";

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "push-entries-"));

function members(dir: string, n: number, rows = 64): BundleMember[] {
  return Array.from({ length: n }, (_, i) => {
    const f = path.join(dir, `i${i}.dcm`);
    fs.writeFileSync(f, makeInstance({ rows, columns: rows, seed: i + 1, modality: "CT", bitsAllocated: 16 }));
    return { name: `1.2.${i}.dcm`, key: `1.2.${i}`, path: f, size: fs.statSync(f).size };
  });
}

const plan = (ms: BundleMember[]) => ms.map((m) => ({ key: m.key!, source: { name: m.name, path: m.path, size: m.size } }));

/** Resolves when the compressor holds `n` finished entries (polled: it has no event for it). */
async function settle(meter: CompressionMeter, n: number): Promise<void> {
  for (let i = 0; i < 500 && meter.rawBytes < n; i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 20));
}

async function entriesOf(file: string): Promise<Array<{ name: string; sha256: string }>> {
  const out: Array<{ name: string; sha256: string }> = [];
  for await (const e of readBundleEntries(file, { maxEntryBytes: 1e9, maxTotalBytes: 1e9, maxEntries: 100, maxCompressionRatio: 1000 })) {
    const h = crypto.createHash("sha256");
    for await (const c of e.body) h.update(c as Buffer);
    out.push({ name: e.name, sha256: h.digest("hex") });
  }
  return out;
}

describe("bundles of gzip members", () => {
  it("has the same bytes compressed ahead, in part or not at all, and the relay's reader and GNU tar read every instance", async () => {
    const d = tmp();
    const ms = members(d, 5);
    const plain = await writeBundle(path.join(d, "plain.tgz"), ms, 1);

    const meter = new CompressionMeter();
    const all = new AheadCompressor({ level: 1, budgetBytes: 64 * 1024 * 1024, meter });
    all.plan(plan(ms));
    await settle(meter, ms.reduce((n, m) => n + m.size, 0));
    expect(all.heldBytes).toBeGreaterThan(0);
    const ahead = await writeBundle(path.join(d, "ahead.tgz"), ms, 1, { ahead: all, meter });
    expect(all.heldBytes).toBe(0);
    expect(ahead.sha256).toBe(plain.sha256);
    expect(ahead.size).toBe(plain.size);

    // only the first two compressed ahead, the rest while the bundle is written
    const meter2 = new CompressionMeter();
    const some = new AheadCompressor({ level: 1, budgetBytes: 64 * 1024 * 1024, meter: meter2 });
    some.plan(plan(ms.slice(0, 2)));
    const mixed = await writeBundle(path.join(d, "mixed.tgz"), ms, 1, { ahead: some, meter: meter2 });
    expect(mixed.sha256).toBe(plain.sha256);
    // every instance compressed once: ahead or in the bundle, counted by the meter either way
    expect(meter2.rawBytes).toBe(ms.reduce((n, m) => n + m.size, 0));

    const want = ms.map((m) => ({ name: m.name, sha256: crypto.createHash("sha256").update(fs.readFileSync(m.path)).digest("hex") }));
    expect(await entriesOf(path.join(d, "ahead.tgz"))).toEqual(want);
    // one gzip stream to any reader: the tar inside is whole (end-of-archive blocks included)
    const tarBytes = gunzipSync(fs.readFileSync(path.join(d, "ahead.tgz")));
    expect(tarBytes.length % 512).toBe(0);
    expect(tarBytes.subarray(tarBytes.length - 1024).every((b) => b === 0)).toBe(true);
    const listed = execFileSync("tar", ["-tzf", path.join(d, "ahead.tgz")], { encoding: "utf8" }).trim().split("\n");
    expect(listed).toEqual(ms.map((m) => m.name));
    fs.rmSync(d, { recursive: true, force: true });
  });

  it("a level-0 bundle (already compressed pixel data) is read the same, and drops what was compressed ahead at level 1", async () => {
    const d = tmp();
    const ms = members(d, 3);
    const meter = new CompressionMeter();
    const a = new AheadCompressor({ level: 1, budgetBytes: 64 * 1024 * 1024, meter });
    a.plan(plan(ms));
    await settle(meter, ms.reduce((n, m) => n + m.size, 0));
    const stored = await writeBundle(path.join(d, "stored.tgz"), ms, 0, { ahead: a, meter });
    // gzip level 0 stores: a little larger than the files
    expect(stored.size).toBeGreaterThan(ms.reduce((n, m) => n + m.size, 0));
    expect(a.heldBytes).toBe(0);
    expect((await entriesOf(stored.file)).map((e) => e.name)).toEqual(ms.map((m) => m.name));
    fs.rmSync(d, { recursive: true, force: true });
  });

  it("refuses a file changed since it was read, compressed ahead or not, and leaves no bundle behind", async () => {
    const d = tmp();
    const ms = members(d, 3);
    fs.appendFileSync(ms[1]!.path, "x");
    await expect(writeBundle(path.join(d, "a.tgz"), ms, 1)).rejects.toThrow(/changed since it was read/);
    const meter = new CompressionMeter();
    const a = new AheadCompressor({ level: 1, budgetBytes: 64 * 1024 * 1024, meter });
    a.plan(plan(ms));
    await settle(meter, ms[0]!.size + ms[2]!.size);
    await expect(writeBundle(path.join(d, "b.tgz"), ms, 1, { ahead: a, meter })).rejects.toThrow(/changed since it was read/);
    expect(fs.readdirSync(d).filter((f) => f.includes(".tgz"))).toEqual([]);
    fs.rmSync(d, { recursive: true, force: true });
  });
});

describe("AheadCompressor", () => {
  it("stays within its budget, in plan order, and goes on as bundles take entries", async () => {
    const d = tmp();
    // noise: compressed, an entry holds about its raw size (synthetic images would pack to almost nothing)
    const size = 256 * 1024;
    const ms: BundleMember[] = Array.from({ length: 8 }, (_, i) => {
      const f = path.join(d, `n${i}`);
      fs.writeFileSync(f, crypto.randomBytes(size));
      return { name: `n${i}.dcm`, key: `n${i}`, path: f, size };
    });
    const meter = new CompressionMeter();
    // room for about three raw instances: two running, and what the compressed ones hold
    const a = new AheadCompressor({ level: 1, budgetBytes: size * 3, concurrency: 2, meter });
    a.plan(plan(ms));
    await settle(meter, size * 3);
    await new Promise((r) => setTimeout(r, 100));
    const first = meter.rawBytes;
    expect(first).toBeGreaterThanOrEqual(size * 3);
    expect(first).toBeLessThan(size * 8);
    // held: compressed entries plus one in flight at most past the budget
    expect(a.heldBytes).toBeLessThanOrEqual(size * 4 + 4096);
    // taken in order, the compressor goes on to the next ones
    for (const m of ms.slice(0, 3)) expect(await a.take(m.key!)).toBeDefined();
    await settle(meter, first + size);
    expect(meter.rawBytes).toBeGreaterThan(first);
    a.close();
    // what is still being compressed leaves the count when it ends
    expect(a.heldBytes).toBeLessThanOrEqual(size * 2 + 4096);
    fs.rmSync(d, { recursive: true, force: true });
  });

  it("never compresses an entry a bundle took first, nor one a new plan leaves out; pause stops it", async () => {
    const d = tmp();
    const ms = members(d, 6);
    const meter = new CompressionMeter();
    const a = new AheadCompressor({ level: 1, budgetBytes: 64 * 1024 * 1024, concurrency: 1, meter });
    a.pause();
    a.plan(plan(ms));
    await new Promise((r) => setTimeout(r, 50));
    expect(meter.rawBytes).toBe(0);
    // taken before it was begun: the bundle compresses it, not the compressor
    expect(a.take(ms[0]!.key!)).toBeUndefined();
    // the manifest's answer: the relay has ms[5] already
    a.plan(plan(ms.slice(0, 5)));
    a.resume();
    await settle(meter, ms.slice(1, 5).reduce((n, m) => n + m.size, 0));
    expect(meter.rawBytes).toBe(ms.slice(1, 5).reduce((n, m) => n + m.size, 0));
    expect(a.take(ms[5]!.key!)).toBeUndefined();
    expect(await a.take(ms[1]!.key!)).toBeDefined();
    a.close();
    fs.rmSync(d, { recursive: true, force: true });
  });
});
