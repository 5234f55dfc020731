/**
 * The push's file hashing on worker threads: the same SHA-256 as node:crypto on the calling thread, whatever the
 * size; a file shorter than its size or missing is refused with a sentence; a folder read with it gives the same
 * fingerprints as without.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileHasher } from "../../src/cli/push/hashWorker.ts";
import { scanFolder } from "../../src/cli/push/scan.ts";
import { writeStudy } from "../../scripts/lib/synthetic.ts";

let dir: string;
const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-hash-"));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe("hashing files on worker threads", () => {
  it("the same SHA-256 as on this thread: empty, small, exactly 1 MiB, several MiB; two threads share the files", async () => {
    const sizes = [0, 1, 4095, 1024 * 1024, 1024 * 1024 + 1, 5 * 1024 * 1024 + 123];
    const files = sizes.map((n, i) => {
      const b = crypto.randomBytes(n);
      const f = path.join(dir, `f${i}`);
      fs.writeFileSync(f, b);
      return { f, b };
    });
    const h = new FileHasher(2);
    try {
      const got = await Promise.all(files.map(({ f, b }) => h.hash(f, b.length)));
      expect(got).toEqual(files.map(({ b }) => sha(b)));
      // a prefix when the size given is less than the file's (the size stat gave when the file was listed)
      expect(await h.hash(files[5]!.f, 1000)).toBe(sha(files[5]!.b.subarray(0, 1000)));
    } finally {
      await h.close();
    }
  });

  it("a file shorter than its size, or gone, is refused with a sentence; the next file is hashed all the same", async () => {
    const f = path.join(dir, "short");
    fs.writeFileSync(f, Buffer.alloc(100, 1));
    const h = new FileHasher(1);
    try {
      await expect(h.hash(f, 200)).rejects.toThrow(/became shorter while it was read/);
      await expect(h.hash(path.join(dir, "missing"), 10)).rejects.toThrow(/ENOENT/);
      expect(await h.hash(f, 100)).toBe(sha(Buffer.alloc(100, 1)));
    } finally {
      await h.close();
    }
  });

  it("a folder of 40 instances (read with hashing threads) lists the same fingerprints as the files' bytes", async () => {
    const src = path.join(dir, "study");
    const study = await writeStudy(src, { instances: 40, rows: 32, columns: 32, seed: 41 });
    const { result } = await scanFolder(src, { documents: false });
    expect(result.instances).toHaveLength(40);
    const byPath = new Map(result.instances.map((i) => [i.path, i.sha256]));
    for (const file of study.files) expect(byPath.get(file)).toBe(sha(fs.readFileSync(file)));
  });
});
