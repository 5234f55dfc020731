/** The study retrieve's read-ahead: order kept, reads bounded in count, bytes and open streams, leftovers discarded. */
import { describe, it, expect } from "vitest";
import { readAhead, type ReadAheadLimits } from "../../src/dicomweb/readAhead.ts";

const LIMITS: ReadAheadLimits = { count: 8, bytes: 1000, streams: 2, wholeMax: 100 };

/** reads that finish on the next turn; tracks how many were started and not yet handed out */
function tracker() {
  const started: number[] = [];
  let outstanding = 0;
  let maxOutstanding = 0;
  let outstandingBytes = 0;
  let maxBytes = 0;
  let openStreams = 0;
  let maxStreams = 0;
  return {
    started,
    read: async (item: { id: number; size: number }, whole: boolean) => {
      started.push(item.id);
      outstanding++;
      maxOutstanding = Math.max(maxOutstanding, outstanding);
      if (whole) maxBytes = Math.max(maxBytes, (outstandingBytes += item.size));
      else maxStreams = Math.max(maxStreams, ++openStreams);
      await new Promise((r) => setImmediate(r));
      return { id: item.id, whole };
    },
    handedOut: (b: { whole: boolean }, size: number) => {
      outstanding--;
      if (b.whole) outstandingBytes -= size;
      else openStreams--;
    },
    max: () => ({ outstanding: maxOutstanding, bytes: maxBytes, streams: maxStreams }),
  };
}

describe("readAhead", () => {
  it("hands out every item in order, never more than the count ahead (a slow consumer)", async () => {
    const items = Array.from({ length: 100 }, (_, id) => ({ id, size: 10 }));
    const t = tracker();
    const seen: number[] = [];
    for await (const { item, body } of readAhead(items, { limits: LIMITS, read: t.read })) {
      expect(body).toEqual({ id: item.id, whole: true });
      t.handedOut(body!, item.size);
      seen.push(item.id);
      // the consumer is slower than the reads: whatever can be read ahead, is
      for (let k = 0; k < 3; k++) await new Promise((r) => setImmediate(r));
      expect(t.started.length - seen.length).toBeLessThanOrEqual(LIMITS.count);
    }
    expect(seen).toEqual(items.map((i) => i.id));
    expect(t.max().outstanding).toBeLessThanOrEqual(LIMITS.count + 1);
    // topped up in batches, so it did read ahead
    expect(t.max().outstanding).toBeGreaterThan(LIMITS.count / 2);
  });

  it("holds at most the byte limit (plus the item being sent) of whole reads, and at most `streams` large items open", async () => {
    const items = Array.from({ length: 60 }, (_, id) => ({ id, size: id % 3 === 0 ? 500 : 90 }));
    const t = tracker();
    for await (const { item, body } of readAhead(items, { limits: LIMITS, read: t.read })) {
      t.handedOut(body!, item.size);
      for (let k = 0; k < 3; k++) await new Promise((r) => setImmediate(r));
    }
    expect(t.started).toEqual(items.map((i) => i.id));
    expect(t.max().bytes).toBeLessThan(LIMITS.bytes + 100);
    expect(t.max().streams).toBeLessThanOrEqual(LIMITS.streams);
  });

  it("tops up whole reads in batches when half the bytes are used, not one read per item sent (items of 1/16 of the byte limit)", async () => {
    const limits: ReadAheadLimits = { count: 64, bytes: 1000, streams: 2, wholeMax: 100 };
    const items = Array.from({ length: 200 }, (_, id) => ({ id, size: 62 }));
    const t = tracker();
    // the reads started while each item was handed out: a batch is the reads started between two handouts
    let handedOut = 0;
    const batches = new Map<number, number>();
    const read = (item: { id: number; size: number }, whole: boolean) => {
      batches.set(handedOut, (batches.get(handedOut) ?? 0) + 1);
      return t.read(item, whole);
    };
    for await (const { item, body } of readAhead(items, { limits, read })) {
      t.handedOut(body!, item.size);
      handedOut++;
      for (let k = 0; k < 3; k++) await new Promise((r) => setImmediate(r));
    }
    expect(t.started).toEqual(items.map((i) => i.id));
    expect(t.max().bytes).toBeLessThan(limits.bytes + 62);
    // about 8 reads per batch (half the byte budget), so about 200 / 8 batches, not 200
    expect(batches.size).toBeLessThan(40);
    expect(Math.max(...batches.values())).toBeGreaterThanOrEqual(7);
  });

  it("skipped items come as null and are never read; an early stop discards what was read ahead", async () => {
    const items = Array.from({ length: 20 }, (_, id) => ({ id, size: 10 }));
    const t = tracker();
    const discarded: number[] = [];
    const got: Array<number | null> = [];
    for await (const { body } of readAhead(items, { limits: LIMITS, skip: (i) => i % 2 === 1, read: t.read, discard: (b) => discarded.push(b.id) })) {
      got.push(body ? body.id : null);
      if (got.length === 6) break;
    }
    expect(got).toEqual([0, null, 2, null, 4, null]);
    expect(t.started.every((id) => id % 2 === 0)).toBe(true);
    await new Promise((r) => setTimeout(r, 10));
    // read ahead and never handed out: given back
    expect(discarded.sort((a, b) => a - b)).toEqual(t.started.filter((id) => id > 4));
    expect(discarded.length).toBeGreaterThan(0);
  });
});
