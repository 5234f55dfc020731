import { describe, expect, it } from "vitest";
import { ReadCache } from "../../src/storage/readCache.ts";

describe("ReadCache", () => {
  // an entry is the chunks an object arrived in: two of them here, so a length counts all of them
  const buf = (n: number, fill = 1) => [Buffer.alloc(n - Math.floor(n / 2), fill), Buffer.alloc(Math.floor(n / 2), fill)];
  const len = (chunks: readonly Buffer[] | undefined) => chunks?.reduce((a, c) => a + c.length, 0);

  it("keeps entries up to its byte bound, dropping the least recently used first", () => {
    const c = new ReadCache(100, 60);
    c.set("a", buf(40));
    c.set("b", buf(40));
    // a used again: b is now the oldest
    expect(len(c.get("a"))).toBe(40);
    c.set("c", buf(40));
    expect(c.get("b")).toBeUndefined();
    expect(c.get("a")).toBeDefined();
    expect(c.get("c")).toBeDefined();
    expect(c.size).toEqual({ entries: 2, bytes: 80 });
  });

  it("never keeps an object over the entry bound, and keeps nothing with a bound of 0", () => {
    const c = new ReadCache(100, 60);
    c.set("big", buf(61));
    expect(c.get("big")).toBeUndefined();
    const off = new ReadCache(0, 60);
    off.set("a", buf(1));
    expect(off.size).toEqual({ entries: 0, bytes: 0 });
  });

  it("a set of a key replaces its entry and its bytes; delete drops it", () => {
    const c = new ReadCache(100, 100);
    c.set("a", buf(30, 1));
    c.set("a", buf(50, 2));
    expect(c.size).toEqual({ entries: 1, bytes: 50 });
    expect(c.get("a")![0]![0]).toBe(2);
    expect(len(c.get("a"))).toBe(50);
    c.delete("a");
    c.delete("missing");
    expect(c.size).toEqual({ entries: 0, bytes: 0 });
  });
});
