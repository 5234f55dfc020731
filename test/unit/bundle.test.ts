import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { execFileSync } from "node:child_process";
import { promises as fsp, readdirSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { createDeflateRaw, createGzip, deflateRawSync, gzipSync } from "node:zlib";
import tar from "tar-stream";
import { BundleError, createTarGzBundle, readBundleEntries, type BundleOptions } from "../../src/transfers/bundle.ts";
import { readAll } from "../support/streams.ts";

const LIMITS: BundleOptions = {
  maxEntryBytes: 64 * 1024 * 1024,
  maxTotalUncompressedBytes: 256 * 1024 * 1024,
  maxEntries: 1000,
  maxCompressionRatio: 200,
};

/** Bytes that do not compress much, so ratio limits stay out of the way unless a test wants them. */
function noise(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    b[i] = s >>> 24;
  }
  return b;
}

async function list(source: Readable | string, opts: Partial<BundleOptions> = {}) {
  const it = readBundleEntries(source, { ...LIMITS, ...opts });
  const out: { name: string; size?: number; data: Buffer }[] = [];
  for await (const e of it) out.push({ name: e.name, size: e.size, data: await readAll(e.body) });
  return { kind: it.kind, entries: out };
}

async function refusal(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

type TarItem = { name: string; data?: Buffer; type?: "file" | "directory" | "symlink" | "fifo"; linkname?: string };

/** A plain tar written by tar-stream (ustar, pax headers for long names). */
async function makeTar(items: TarItem[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const it of items) {
    if (it.type && it.type !== "file") pack.entry({ name: it.name, type: it.type, linkname: it.linkname });
    else pack.entry({ name: it.name, size: it.data!.length }, it.data!);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** One 512-byte ustar or GNU header, for the cases tar-stream does not write. */
function tarHeader(name: string, size: number, type: string, gnu = false): Buffer {
  const h = Buffer.alloc(512);
  h.write(name.slice(0, 100), 0, "utf8");
  h.write("0000644\0", 100);
  h.write("0000000\0", 108);
  h.write("0000000\0", 116);
  h.write(size.toString(8).padStart(11, "0") + "\0", 124);
  h.write("00000000000\0", 136);
  h.write(type, 156);
  if (gnu) h.write("ustar  \0", 257, "latin1");
  else h.write("ustar\u000000", 257, "latin1");
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148, "latin1");
  return h;
}

function pad(b: Buffer): Buffer {
  return Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);
}

// ---- a small zip writer (stored and deflated entries, central directory), as no zip library is installed
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

type ZipItem = {
  name: string;
  data?: Buffer;
  /** already deflated data with its real size and crc (for large generated entries) */
  raw?: { deflated: Buffer; size: number; crc: number };
  deflate?: boolean;
  /** unix mode bits for the external attributes, e.g. 0o120777 for a symlink */
  mode?: number;
  /** lie about the uncompressed size in both headers */
  claimSize?: number;
};

function makeZip(items: ZipItem[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const it of items) {
    const name = Buffer.from(it.name, "utf8");
    const data = it.data ?? Buffer.alloc(0);
    const method = it.raw || it.deflate ? 8 : 0;
    const body = it.raw ? it.raw.deflated : it.deflate ? deflateRawSync(data) : data;
    const size = it.claimSize ?? (it.raw ? it.raw.size : data.length);
    const crc = it.raw ? it.raw.crc : crc32(data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(0x800, 6);
    lh.writeUInt16LE(method, 8);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(body.length, 18);
    lh.writeUInt32LE(size, 22);
    lh.writeUInt16LE(name.length, 26);
    locals.push(lh, name, body);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE((3 << 8) | 20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt16LE(0x800, 8);
    ch.writeUInt16LE(method, 10);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(body.length, 20);
    ch.writeUInt32LE(size, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(((it.mode ?? (it.name.endsWith("/") ? 0o40755 : 0o100644)) << 16) >>> 0, 38);
    ch.writeUInt32LE(offset, 42);
    centrals.push(ch, name);
    offset += lh.length + name.length + body.length;
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(items.length, 8);
  eocd.writeUInt16LE(items.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, eocd]);
}

/** n zero bytes as a stream, counting what was actually produced. */
function zeros(n: number, counter: { produced: number }, chunk = 64 * 1024): Readable {
  const z = Buffer.alloc(chunk);
  return new Readable({
    read() {
      if (counter.produced >= n) return void this.push(null);
      const k = Math.min(chunk, n - counter.produced);
      counter.produced += k;
      this.push(k === chunk ? z : z.subarray(0, k));
    },
  });
}

let dir: string;
beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), "bundle-test-"));
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

const files = [
  { name: "study/IM0001.dcm", data: noise(3000, 1) },
  { name: "study/IM0002.dcm", data: noise(70_000, 2) },
  { name: "empty.dcm", data: Buffer.alloc(0) },
];

describe("readBundleEntries: tar and tar.gz", () => {
  it("reads a tar, skipping directories, symlinks and FIFOs", async () => {
    const t = await makeTar([
      { name: "study/", type: "directory" },
      files[0]!,
      { name: "link", type: "symlink", linkname: "/etc/passwd" },
      { name: "pipe", type: "fifo" },
      files[1]!,
      files[2]!,
    ]);
    const r = await list(Readable.from([t]));
    expect(r.kind).toBe("tar");
    expect(r.entries.map((e) => [e.name, e.size, e.data.toString("hex")])).toEqual(files.map((f) => [f.name, f.data.length, f.data.toString("hex")]));
  });

  it("reads a tar.gz made by createTarGzBundle, long names included", async () => {
    const longName = `${"deep/".repeat(40)}IM0003.dcm`;
    const items = [...files, { name: longName, data: noise(1234, 3) }];
    const gz = createTarGzBundle(
      (async function* () {
        for (const f of items) yield { name: f.name, size: f.data.length, body: Readable.from([f.data]) };
      })(),
    );
    const bytes = await readAll(gz);
    expect(bytes[0]).toBe(0x1f);
    // chunked input, and from a file path
    const r = await list(Readable.from([bytes.subarray(0, 100), bytes.subarray(100, 5000), bytes.subarray(5000)]));
    expect(r.kind).toBe("tgz");
    expect(r.entries.map((e) => [e.name, e.data.toString("hex")])).toEqual(items.map((f) => [f.name, f.data.toString("hex")]));
    const p = join(dir, "b.tgz");
    await fsp.writeFile(p, bytes);
    expect((await list(p)).entries).toHaveLength(4);
  });

  it("reads GNU long names and pax paths", async () => {
    const longName = `${"x".repeat(150)}.dcm`;
    const nameBlock = Buffer.from(longName + "\0");
    const data = noise(600, 4);
    const t = Buffer.concat([
      tarHeader("././@LongLink", nameBlock.length, "L", true),
      pad(nameBlock),
      tarHeader("short", data.length, "0", true),
      pad(data),
      Buffer.alloc(1024),
    ]);
    const r = await list(Readable.from([t]));
    expect(r.entries.map((e) => e.name)).toEqual([longName]);
    expect(r.entries[0]!.data.equals(data)).toBe(true);
  });

  it("keeps path-traversal names as labels only", async () => {
    const names = ["../../etc/x", "/abs/olute.dcm", "..\\..\\win.dcm"];
    const t = await makeTar(names.map((name, i) => ({ name, data: noise(10, i) })));
    const before = readdirSync(join(dir));
    const r = await list(Readable.from([t]));
    expect(r.entries.map((e) => e.name)).toEqual(names);
    expect(readdirSync(join(dir))).toEqual(before);
  });

  it("discards entries the caller does not read", async () => {
    const t = await makeTar(files);
    const seen: string[] = [];
    for await (const e of readBundleEntries(Readable.from([t]), LIMITS)) {
      if (e.name === "empty.dcm") seen.push(`${e.name}:${(await readAll(e.body)).length}`);
      else seen.push(e.name); // left unread
    }
    expect(seen).toEqual(["study/IM0001.dcm", "study/IM0002.dcm", "empty.dcm:0"]);
  });

  it("refuses a truncated tar, failing the entry being read too", async () => {
    const t = await makeTar(files);
    let bodyError: unknown;
    const err = await refusal(
      (async () => {
        for await (const e of readBundleEntries(Readable.from([t.subarray(0, 512 + 3000 + 512 + 1000)]), LIMITS)) {
          await readAll(e.body).catch((x) => (bodyError = x));
        }
      })(),
    );
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/cut short/);
    expect(bodyError).toBe(err);
  });

  it("refuses a tar without its end-of-archive blocks", async () => {
    const t = await makeTar(files);
    const err = await refusal(list(Readable.from([t.subarray(0, t.length - 1024)])));
    expect(err).toBeInstanceOf(BundleError);
  });

  it("refuses a tar with a damaged header", async () => {
    const t = await makeTar(files);
    t[3] ^= 0x01; // a byte of the first member's name

    const err = await refusal(list(Readable.from([t])));
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/checksum/);
  });

  it("refuses a truncated tar.gz", async () => {
    const gz = gzipSync(await makeTar(files));
    const err = await refusal(list(Readable.from([gz.subarray(0, gz.length - 200)])));
    expect(err).toBeInstanceOf(BundleError);
  });

  it("refuses more entries than maxEntries, counting skipped members", async () => {
    const t = await makeTar([{ name: "d/", type: "directory" }, { name: "d2/", type: "directory" }, files[0]!, files[2]!]);
    const err = await refusal(list(Readable.from([t]), { maxEntries: 3 }));
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/more than 3 entries/);
    expect((await list(Readable.from([t]), { maxEntries: 4 })).entries).toHaveLength(2);
  });

  it("refuses an entry larger than maxEntryBytes before reading it", async () => {
    const t = await makeTar(files);
    const err = await refusal(list(Readable.from([t]), { maxEntryBytes: 10_000 }));
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/IM0002\.dcm" expands to 70000 bytes/);
  });

  it("refuses a bundle expanding past the total limit (both option names)", async () => {
    const t = await makeTar(files);
    for (const o of [{ maxTotalUncompressedBytes: 50_000 }, { maxTotalUncompressedBytes: undefined, maxTotalBytes: 50_000 }]) {
      const err = await refusal(list(Readable.from([t]), o));
      expect(err).toBeInstanceOf(BundleError);
      expect(err.message).toBe("the bundle expands to more than 50000 bytes; it was refused as a possible decompression bomb");
    }
  });

  it("refuses a 1 GB gzip bomb quickly and with bounded memory", async () => {
    for (const insideTar of [false, true]) {
      const counter = { produced: 0 };
      const size = 1024 * 1024 * 1024;
      const gz = createGzip();
      if (insideTar) {
        // a tar header announcing one 1 GB file, then the zeros
        gz.write(tarHeader("bomb.dcm", size, "0"));
      }
      zeros(size, counter).pipe(gz);
      const base = process.memoryUsage().rss;
      const t0 = Date.now();
      const err = await refusal(list(gz, { maxEntryBytes: 2 * size, maxTotalUncompressedBytes: 4 * size }));
      expect(err).toBeInstanceOf(BundleError);
      expect(err.message).toMatch(/more than 200 times .* decompression bomb/);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(counter.produced).toBeLessThan(64 * 1024 * 1024);
      expect(process.memoryUsage().rss - base).toBeLessThan(128 * 1024 * 1024);
    }
  });

  it("streams a 200 MB tar entry with bounded memory", async () => {
    const size = 200 * 1024 * 1024;
    const block = noise(64 * 1024, 13);
    const tarStream = Readable.from(
      (function* () {
        yield tarHeader("big.dcm", size, "0");
        for (let n = 0; n < size; n += block.length) yield block;
        yield Buffer.alloc(1024);
      })(),
    );
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    let got = 0;
    try {
      for await (const e of readBundleEntries(tarStream, { ...LIMITS, maxEntryBytes: size, maxTotalUncompressedBytes: 2 * size })) {
        for await (const c of e.body) got += (c as Buffer).length;
      }
    } finally {
      clearInterval(sampler);
    }
    expect(got).toBe(size);
    expect(peak - base).toBeLessThan(64 * 1024 * 1024);
  }, 60_000);

  it("reads a single file, and a single gzipped file", async () => {
    const dcm = Buffer.concat([Buffer.alloc(128), Buffer.from("DICM"), noise(5000, 9)]);
    const one = await list(Readable.from([dcm]), { name: "IM1.dcm" });
    expect(one.kind).toBe("single");
    expect(one.entries).toEqual([{ name: "IM1.dcm", size: undefined, data: dcm }]);
    const p = join(dir, "one.dcm");
    await fsp.writeFile(p, dcm);
    expect((await list(p)).entries[0]).toEqual({ name: "", size: dcm.length, data: dcm });
    const gz = await list(Readable.from([gzipSync(dcm)]));
    expect(gz.kind).toBe("gzip");
    expect(gz.entries[0]!.data.equals(dcm)).toBe(true);
  });

  it("refuses a single file larger than maxEntryBytes while streaming", async () => {
    const err = await refusal(list(Readable.from([noise(5000)]), { maxEntryBytes: 4096 }));
    expect(err).toBeInstanceOf(BundleError);
  });

  it("passes an error of the source itself through as it is", async () => {
    const src = new Readable({ read() {} });
    src.push((await makeTar(files)).subarray(0, 2048));
    setTimeout(() => src.destroy(new Error("disk went away")), 10);
    const err = await refusal(list(src));
    expect(err).not.toBeInstanceOf(BundleError);
    expect(err.message).toBe("disk went away");
  });

  it("createTarGzBundle fails when a body is not its announced size", async () => {
    const gz = createTarGzBundle(
      (async function* () {
        yield { name: "a", size: 10, body: Readable.from([Buffer.alloc(5)]) };
      })(),
    );
    await expect(readAll(gz)).rejects.toThrow();
  });
});


describe("readBundleEntries: archives made by the system's tar and zip (when installed)", () => {
  function tree(root: string) {
    const deep = join(root, "sub", "d".repeat(120));
    mkdirSync(deep, { recursive: true });
    writeFileSync(join(root, "a.dcm"), noise(3000, 11));
    writeFileSync(join(deep, "b.dcm"), noise(100_000, 12));
    symlinkSync("/etc/passwd", join(root, "link"));
    return [`a.dcm:3000`, `sub/${"d".repeat(120)}/b.dcm:100000`];
  }
  const summary = async (p: string) =>
    (await list(p)).entries.map((e) => `${e.name.replace(/^\.\//, "")}:${e.data.length}`).sort();

  it("reads GNU and pax tar, gzipped or not; refuses sparse members", async () => {
    const root = join(dir, "tree-tar");
    const want = tree(root);
    for (const [format, z] of [["gnu", "z"], ["pax", ""], ["ustar", "z"]] as const) {
      const p = join(dir, `sys-${format}.tar${z ? ".gz" : ""}`);
      // ustar cannot hold the 120-character directory: give it only the short file
      execFileSync("tar", [`--format=${format}`, `-c${z}f`, p, "-C", root, ...(format === "ustar" ? ["a.dcm"] : ["."])]);
      expect(await summary(p), format).toEqual(format === "ustar" ? [want[0]] : want);
    }
    writeFileSync(join(dir, "sparse.bin"), Buffer.alloc(0));
    await fsp.truncate(join(dir, "sparse.bin"), 1024 * 1024);
    const sp = join(dir, "sys-sparse.tar");
    execFileSync("tar", ["--format=gnu", "-S", "-cf", sp, "-C", dir, "sparse.bin"]);
    await expect(list(sp)).rejects.toThrow(/sparse/);
  });

  it("reads a zip made by Info-ZIP, symlinks stored as links skipped", async () => {
    const root = join(dir, "tree-zip");
    const want = tree(root);
    const p = join(dir, "sys.zip");
    execFileSync("zip", ["-qry", p, "."], { cwd: root });
    expect(await summary(p)).toEqual(want);
  });
});

describe("readBundleEntries: zip", () => {
  const zipItems: ZipItem[] = [
    { name: "series/", data: Buffer.alloc(0) },
    { name: "series/IM1.dcm", data: noise(4000, 5) },
    { name: "series/IM2.dcm", data: Buffer.concat([noise(2000, 6), Buffer.alloc(20_000)]), deflate: true },
    { name: "series/link", data: Buffer.from("/etc/passwd"), mode: 0o120777 },
    { name: "../../etc/x", data: noise(10, 7) },
  ];
  const expected = [zipItems[1]!, zipItems[2]!, zipItems[4]!].map((z) => [z.name, z.data!.toString("hex")]);

  it("reads stored and deflated entries from a file path, skipping directories and symlinks", async () => {
    const p = join(dir, "a.zip");
    await fsp.writeFile(p, makeZip(zipItems));
    const r = await list(p);
    expect(r.kind).toBe("zip");
    expect(r.entries.map((e) => [e.name, e.data.toString("hex")])).toEqual(expected);
    expect(r.entries[1]!.size).toBe(22_000);
  });

  it("reads a zip from a stream by spooling it to a temporary file it removes", async () => {
    const spools = () => readdirSync(tmpdir()).filter((n) => n.startsWith("dicom-relay-zip-")).length;
    const before = spools();
    const z = makeZip(zipItems);
    const r = await list(Readable.from([z.subarray(0, 10), z.subarray(10)]));
    expect(r.entries.map((e) => [e.name, e.data.toString("hex")])).toEqual(expected);
    expect(spools()).toBe(before);
    // with filePath given, the stream is only peeked at
    const p = join(dir, "b.zip");
    await fsp.writeFile(p, z);
    expect((await list(Readable.from([z]), { filePath: p })).entries).toHaveLength(3);
  });

  it("discards zip entries the caller does not read", async () => {
    const p = join(dir, "c.zip");
    await fsp.writeFile(p, makeZip(zipItems));
    const names: string[] = [];
    for await (const e of readBundleEntries(p, LIMITS)) names.push(e.name);
    expect(names).toEqual(expected.map((x) => x[0]));
  });

  it("refuses a truncated zip", async () => {
    const z = makeZip(zipItems);
    const p = join(dir, "cut.zip");
    await fsp.writeFile(p, z.subarray(0, z.length - 30));
    const err = await refusal(list(p));
    expect(err).toBeInstanceOf(BundleError);
  });

  it("refuses a zip entry whose data is longer than its recorded size", async () => {
    const p = join(dir, "liar.zip");
    await fsp.writeFile(p, makeZip([{ name: "a.dcm", data: noise(50_000, 8), deflate: true, claimSize: 1000 }]));
    const err = await refusal(list(p));
    expect(err).toBeInstanceOf(BundleError);
  });

  it("refuses a zip bomb by its ratio before inflating it", async () => {
    // 100 MB of zeros, deflated as a stream
    const counter = { produced: 0 };
    const size = 100 * 1024 * 1024;
    const deflated = await readAll(zeros(size, counter).pipe(createDeflateRaw()));
    const p = join(dir, "bomb.zip");
    await fsp.writeFile(p, makeZip([{ name: "bomb.dcm", raw: { deflated, size, crc: 0 } }]));
    const t0 = Date.now();
    const err = await refusal(list(p, { maxEntryBytes: 2 * size }));
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/decompression bomb/);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it("refuses overlapping-entry zips by total size against the file size", async () => {
    // many central directory records pointing at the same compressed data
    const data = Buffer.alloc(300_000);
    const one = makeZip([{ name: "a", data, deflate: true }]);
    const cdStart = one.readUInt32LE(one.length - 22 + 16);
    const cdRec = one.subarray(cdStart, one.length - 22);
    const n = 200;
    const eocd = Buffer.from(one.subarray(one.length - 22));
    eocd.writeUInt16LE(n, 8);
    eocd.writeUInt16LE(n, 10);
    eocd.writeUInt32LE(cdRec.length * n, 12);
    const p = join(dir, "overlap.zip");
    await fsp.writeFile(p, Buffer.concat([one.subarray(0, cdStart), ...Array(n).fill(cdRec), eocd]));
    const err = await refusal(list(p, { maxCompressionRatio: 1000 }));
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/decompression bomb/);
  });

  it("refuses a zip with more entries than maxEntries before reading any", async () => {
    const p = join(dir, "many.zip");
    await fsp.writeFile(p, makeZip(Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, data: noise(10, i) }))));
    const err = await refusal(list(p, { maxEntries: 4 }));
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/5 entries/);
  });
});
