import { describe, expect, it } from "vitest";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import crypto from "node:crypto";
import { CoalesceChunks } from "../../src/transfers/coalesce.ts";

const collect = async (chunks: Buffer[], min: number) => {
  const out: Buffer[] = [];
  await pipeline(Readable.from(chunks), new CoalesceChunks(min), new Writable({ write(c: Buffer, _e, cb) { out.push(c); cb(); } }));
  return out;
};

describe("CoalesceChunks", () => {
  it("passes the same bytes in chunks of at least min (the last may be shorter), large chunks as they are", async () => {
    const small = Array.from({ length: 100 }, (_, i) => crypto.randomBytes(100 + i));
    const big = crypto.randomBytes(10_000);
    const input = [...small, big, crypto.randomBytes(7)];
    const out = await collect(input, 4096);
    expect(Buffer.concat(out).equals(Buffer.concat(input))).toBe(true);
    for (const c of out.slice(0, -1)) expect(c.length).toBeGreaterThanOrEqual(4096);
    // 100 packets of ~150 bytes became a handful of writes
    expect(out.length).toBeLessThan(10);
    // a large chunk with nothing held goes through as it is (no copy)
    const first = await collect([big, ...small], 4096);
    expect(first[0]).toBe(big);
  });

  it("an empty source gives nothing; a source that fails fails the pipeline and holds back what it had not passed", async () => {
    expect(await collect([], 10)).toEqual([]);
    const got: Buffer[] = [];
    const src = new Readable({ read() {} });
    const done = pipeline(src, new CoalesceChunks(1000), new Writable({ write(c: Buffer, _e, cb) { got.push(c); cb(); } }));
    src.push(Buffer.alloc(600));
    src.push(Buffer.alloc(600));
    src.push(Buffer.alloc(300));
    await new Promise((r) => setImmediate(r));
    src.destroy(new Error("connection reset"));
    await expect(done).rejects.toThrow(/connection reset/);
    // 1,200 bytes went on; the 300 held were not written (the client resumes from what was)
    expect(Buffer.concat(got).length).toBe(1200);
  });
});
