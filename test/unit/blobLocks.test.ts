import { describe, it, expect } from "vitest";
import { withBlobLock } from "../../src/storage/blobLocks.ts";

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("per-blob lock", () => {
  it("serialises work on the same key, in arrival order, and releases after a failure", async () => {
    const log: string[] = [];
    const a = withBlobLock("k", async () => { log.push("a start"); await tick(20); log.push("a end"); });
    const b = withBlobLock("k", async () => { log.push("b start"); throw new Error("b failed"); });
    const c = withBlobLock("k", async () => { log.push("c start"); return 3; });
    await a;
    await expect(b).rejects.toThrow("b failed");
    expect(await c).toBe(3);
    expect(log).toEqual(["a start", "a end", "b start", "c start"]);
  });

  it("does not block other keys", async () => {
    const log: string[] = [];
    const slow = withBlobLock("x", async () => { await tick(30); log.push("x"); });
    await withBlobLock("y", async () => { log.push("y"); });
    await slow;
    expect(log).toEqual(["y", "x"]);
  });
});
