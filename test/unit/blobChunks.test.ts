import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { chunksLength, firstBytes, joinChunks, readChunksByRange } from "../../src/storage/blobStore.ts";

describe("chunked bytes (a remote store's response, kept as it arrived)", () => {
  const chunks = [Buffer.from("abc"), Buffer.from(""), Buffer.from("defg"), Buffer.from("hi")];

  it("firstBytes: the first bytes as views into the chunks, cut inside a chunk where the size falls", () => {
    expect(joinChunks(firstBytes(chunks, 5)).toString()).toBe("abcde");
    expect(joinChunks(firstBytes(chunks, 3)).toString()).toBe("abc");
    expect(firstBytes(chunks, 0)).toEqual([]);
    expect(joinChunks(firstBytes(chunks, 99)).toString()).toBe("abcdefghi");
    // views, not copies: the same memory
    const view = firstBytes(chunks, 5);
    expect(view[view.length - 1]!.buffer).toBe(chunks[2]!.buffer);
    expect(chunksLength(chunks)).toBe(9);
    expect(joinChunks([chunks[0]!])).toBe(chunks[0]);
  });

  it("readChunksByRange asks for the first `size` bytes and keeps the chunks; a shorter object is an error, not short bytes", async () => {
    const asked: Array<{ start: number; end: number } | undefined> = [];
    const store = {
      get: async (_key: string, range?: { start: number; end: number }) => {
        asked.push(range);
        const all = Buffer.from("abcdefghi");
        const bytes = range ? all.subarray(range.start, range.end + 1) : all;
        return Readable.from([bytes.subarray(0, 2), bytes.subarray(2)]);
      },
    };
    const got = await readChunksByRange(store, "k", 7);
    expect(got).toHaveLength(2);
    expect(joinChunks(got).toString()).toBe("abcdefg");
    expect(asked).toEqual([{ start: 0, end: 6 }]);
    expect(await readChunksByRange(store, "k", 0)).toEqual([]);
    expect(joinChunks(await readChunksByRange(store, "k", 9)).toString()).toBe("abcdefghi");
    expect(joinChunks([]).length).toBe(0);
    await expect(readChunksByRange(store, "k", 10)).rejects.toThrow(/has 9 bytes, fewer than the 10 expected/);
  });
});
