import { describe, it, expect } from "vitest";
import { createHash } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough, Readable, Writable } from "node:stream";
import { startFaultProxy } from "../support/faultProxy.ts";
import { readAll } from "../support/streams.ts";
import {
  MultipartError,
  multipartBoundary,
  parseContentType,
  parseMultipartRelatedContentType,
  readMultipartParts,
  writeMultipart,
  type OutgoingPart,
} from "../../src/dicom/multipart.ts";

const B = "XbOuNdArY42";

/** A Readable giving `data` in chunks of the sizes `sizes()` returns. */
function chunked(data: Buffer, sizes: () => number): Readable {
  return Readable.from(
    (function* () {
      let off = 0;
      while (off < data.length) {
        const n = Math.max(1, sizes());
        yield data.subarray(off, off + n);
        off += n;
      }
    })(),
    { objectMode: false },
  );
}

/** A small seeded PRNG, so a failing random chunking can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

async function collect(body: Readable, boundary = B, opts = {}) {
  const out: { headers: Record<string, string>; data: Buffer }[] = [];
  for await (const p of readMultipartParts(body, boundary, opts)) out.push({ headers: p.headers, data: await readAll(p.body) });
  return out;
}

async function rejection(p: Promise<unknown>): Promise<MultipartError> {
  try {
    await p;
  } catch (err) {
    return err as MultipartError;
  }
  throw new Error("expected a rejection");
}

function build(parts: { headers?: string; body: Buffer | string }[], { preamble = "", epilogue = "", close = true } = {}): Buffer {
  const pieces: Buffer[] = [Buffer.from(preamble)];
  parts.forEach((p, i) => {
    pieces.push(Buffer.from(`${i === 0 && !preamble ? "" : "\r\n"}--${B}\r\n${p.headers ?? "Content-Type: application/dicom\r\n"}\r\n`));
    pieces.push(Buffer.isBuffer(p.body) ? p.body : Buffer.from(p.body));
  });
  if (close) pieces.push(Buffer.from(`\r\n--${B}--${epilogue}`));
  return Buffer.concat(pieces);
}

// bodies made to look like the delimiter as much as possible without being one
const tricky = [
  Buffer.from(`\r\n--${B.slice(0, -1)}`),
  Buffer.from(`--${B}`), // no CRLF before it: not a delimiter
  Buffer.from(`\r\n-${B}\r\n--\r\n\r\n--${B.slice(0, 5)}\r`),
  Buffer.alloc(0),
  Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7919) % 256)),
];

describe("parseContentType", () => {
  it("reads quoted parameters, escapes and case-insensitive names", () => {
    const ct = parseContentType('Multipart/Related; TYPE="application/dicom"; Boundary="a b\\"c;d"; start=<x@y>;');
    expect(ct.mediaType).toBe("multipart/related");
    expect(ct.params).toEqual({ type: "application/dicom", boundary: 'a b"c;d', start: "<x@y>" });
  });
  it("refuses a value that is not type/subtype", () => {
    expect(() => parseContentType("dicom")).toThrow(MultipartError);
    expect(() => parseContentType('a/b; x="unterminated')).toThrow(/unterminated/);
  });
});

describe("parseMultipartRelatedContentType", () => {
  it("returns boundary, type and start", () => {
    expect(parseMultipartRelatedContentType(`multipart/related; type="application/dicom"; boundary=${B}; start="<p1>"`)).toEqual({
      boundary: B,
      type: "application/dicom",
      start: "<p1>",
    });
  });
  it("takes a missing type= as application/dicom", () => {
    expect(parseMultipartRelatedContentType(`multipart/related; boundary="${B}"`).type).toBe("application/dicom");
  });
  it("answers 415 for another media type or part type, with a sentence", () => {
    for (const h of ["application/dicom", "multipart/form-data; boundary=x", 'multipart/related; type="application/dicom+json"; boundary=x', 'multipart/related; type="image/jpeg"; boundary=x', ""]) {
      let err: unknown;
      try {
        parseMultipartRelatedContentType(h);
      } catch (e) {
        err = e;
      }
      expect(err, h).toBeInstanceOf(MultipartError);
      expect((err as MultipartError).status, h).toBe(415);
      expect((err as MultipartError).message.length).toBeGreaterThan(30);
    }
    expect(() => parseMultipartRelatedContentType('multipart/related; type="application/dicom+xml"; boundary=x')).toThrow(/not supported/);
  });
  it("answers 400 when the boundary is missing or absurd", () => {
    for (const h of ['multipart/related; type="application/dicom"', `multipart/related; boundary=${"x".repeat(201)}`]) {
      try {
        parseMultipartRelatedContentType(h);
        expect.unreachable();
      } catch (e) {
        expect((e as MultipartError).status).toBe(400);
      }
    }
  });
});

describe("readMultipartParts", () => {
  it("reads parts with headers, preamble and epilogue", async () => {
    const body = build(
      [
        { headers: "Content-Type: application/dicom\r\nContent-ID: <a>\r\nX-Folded: one\r\n two\r\n", body: "first" },
        { headers: "content-type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n", body: "second part" },
      ],
      { preamble: "This is a preamble.\r\n", epilogue: "\r\nand an epilogue" },
    );
    const parts = await collect(Readable.from([body]));
    expect(parts.map((p) => p.data.toString())).toEqual(["first", "second part"]);
    expect(parts[0]!.headers).toEqual({ "content-type": "application/dicom", "content-id": "<a>", "x-folded": "one two" });
    expect(parts[1]!.headers["content-type"]).toContain("transfer-syntax");
  });

  it("finds delimiters split across any chunking (1-byte and random sizes)", async () => {
    const body = build(tricky.map((b) => ({ body: b })), { preamble: "pre\r\n--not-it\r\n" });
    const expected = tricky.map((b) => b.toString("hex"));
    const one = await collect(chunked(body, () => 1));
    expect(one.map((p) => p.data.toString("hex"))).toEqual(expected);
    for (let seed = 1; seed <= 25; seed++) {
      const r = prng(seed);
      const parts = await collect(chunked(body, () => 1 + Math.floor(r() * 40)));
      expect(parts.map((p) => p.data.toString("hex")), `seed ${seed}`).toEqual(expected);
      // chunks around a delimiter's length and longer: the kept bytes before a new chunk are judged by the seam
      const wide = await collect(chunked(body, () => 1 + Math.floor(r() * 200)));
      expect(wide.map((p) => p.data.toString("hex")), `seed ${seed}, wide`).toEqual(expected);
    }
  });

  it("accepts transport padding after boundaries and a part without headers", async () => {
    const body = Buffer.from(`--${B} \t\r\n\r\nno headers\r\n--${B}\t\r\nContent-Type: application/dicom\r\n\r\nx\r\n--${B}--  \r\n`);
    const parts = await collect(Readable.from([body]));
    expect(parts).toEqual([
      { headers: {}, data: Buffer.from("no headers") },
      { headers: { "content-type": "application/dicom" }, data: Buffer.from("x") },
    ]);
  });

  it("yields nothing for a body with only the close delimiter", async () => {
    expect(await collect(Readable.from([Buffer.from(`--${B}--\r\n`)]))).toEqual([]);
  });

  it("discards what the caller leaves of a part when the next one is asked for", async () => {
    const big = Buffer.alloc(300_000, 7);
    const body = build([{ body: big }, { body: big }, { body: "third" }]);
    const seen: string[] = [];
    let i = 0;
    for await (const p of readMultipartParts(chunked(body, () => 10_000), B)) {
      if (i === 0) {
        // read a little, then leave it
        const first = (await new Promise<Buffer>((resolve) => p.body.once("data", resolve))) as Buffer;
        expect(first[0]).toBe(7);
        p.body.pause();
        seen.push("partial");
      } else if (i === 1) {
        seen.push("untouched");
      } else {
        seen.push((await readAll(p.body)).toString());
      }
      i++;
    }
    expect(seen).toEqual(["partial", "untouched", "third"]);
  });

  it("moves on when the caller destroys a part's body", async () => {
    const body = build([{ body: Buffer.alloc(200_000, 1) }, { body: "next" }]);
    const out: string[] = [];
    for await (const p of readMultipartParts(chunked(body, () => 4096), B)) {
      if (!out.length) {
        p.body.destroy();
        out.push("destroyed");
      } else out.push((await readAll(p.body)).toString());
    }
    expect(out).toEqual(["destroyed", "next"]);
  });

  it("does not destroy the source when the caller stops early", async () => {
    const src = new PassThrough();
    // not ended: the request is still open when the caller stops
    src.write(build([{ body: "a" }, { body: "b" }]));
    for await (const p of readMultipartParts(src, B)) {
      expect((await readAll(p.body)).toString()).toBe("a");
      break;
    }
    expect(src.destroyed).toBe(false);
  });

  it("throws 400 when the close delimiter is missing", async () => {
    const err = await rejection(collect(Readable.from([build([{ body: "a" }], { close: false })])));
    expect(err).toBeInstanceOf(MultipartError);
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/cut off/);
  });

  it("fails the part body and the generator on a truncated body", async () => {
    const full = build([{ body: Buffer.alloc(100_000, 3) }]);
    const cut = full.subarray(0, 50_000);
    let bodyError: unknown;
    const gen = readMultipartParts(Readable.from([cut]), B);
    const err = await rejection(
      (async () => {
        for await (const p of gen) {
          try {
            await readAll(p.body);
          } catch (e) {
            bodyError = e;
          }
        }
      })(),
    );
    expect(bodyError).toBeInstanceOf(MultipartError);
    expect(err).toBe(bodyError);
    expect(err.status).toBe(400);
  });

  it("throws 400 when the body ends right after a boundary or inside headers", async () => {
    for (const text of [`--${B}`, `--${B}\r\nContent-Type: appl`]) {
      const err = await rejection(collect(Readable.from([Buffer.from(text)])));
      expect(err.status, text).toBe(400);
    }
  });

  it("throws 400 for a header block larger than maxPartHeaderBytes", async () => {
    const body = build([{ headers: `X-Big: ${"h".repeat(5000)}\r\n`, body: "a" }]);
    const err = await rejection(collect(chunked(body, () => 100), B, { maxPartHeaderBytes: 1024 }));
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/header block is larger than 1024/);
    // the same body passes with the default limit
    expect(await collect(Readable.from([body]))).toHaveLength(1);
  });

  it("throws 400 for a header line without a colon", async () => {
    const err = await rejection(collect(Readable.from([build([{ headers: "garbage\r\n", body: "a" }])])));
    expect(err.status).toBe(400);
  });

  it("throws 400 when the first boundary is missing", async () => {
    const none = await rejection(collect(Readable.from([Buffer.from("just some bytes, no boundary")])));
    expect(none.status).toBe(400);
    expect(none.message).toMatch(/no multipart boundary/);
    // a large body without a boundary is refused after maxPreambleBytes, not read to its end
    let produced = 0;
    const endless = Readable.from(
      (function* () {
        for (let i = 0; i < 10_000; i++) {
          produced += 1024;
          yield Buffer.alloc(1024, 0x41);
        }
      })(),
    );
    const err = await rejection(collect(endless, B, { maxPreambleBytes: 8192 }));
    expect(err.message).toMatch(/first 8192 bytes/);
    expect(produced).toBeLessThan(100_000);
  });

  it("throws 400 when a boundary line has other characters after it", async () => {
    const err = await rejection(collect(Readable.from([Buffer.from(`--${B}xyz\r\n\r\na\r\n--${B}--`)])));
    expect(err.status).toBe(400);
  });

  it("does not crash when a body that was only resume()d fails; the next part asked for throws", async () => {
    const cut = build([{ body: Buffer.alloc(100_000, 3) }]).subarray(0, 50_000);
    const err = await rejection(
      (async () => {
        for await (const p of readMultipartParts(chunked(cut, () => 4096), B)) {
          // no error listener, as a caller skipping a part might write it
          p.body.resume();
          await new Promise((resolve) => p.body.once("close", resolve));
        }
      })(),
    );
    expect(err.status).toBe(400);
  });

  it("reads a real HTTP request through a slow, high-latency link", async () => {
    const bodies = [Buffer.alloc(300_000, 1), Buffer.from("x"), Buffer.alloc(70_000, 2)];
    const seen: number[][] = [];
    const server = http.createServer(async (req, res) => {
      try {
        const { boundary } = parseMultipartRelatedContentType(req.headers["content-type"] ?? "");
        for await (const p of readMultipartParts(req, boundary)) {
          const b = await readAll(p.body);
          seen.push([b.length, b[0]!]);
        }
        res.end("ok");
      } catch (err) {
        res.statusCode = (err as MultipartError).status ?? 500;
        res.end((err as Error).message);
      }
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const proxy = await startFaultProxy({
      target: { host: "127.0.0.1", port: (server.address() as AddressInfo).port },
      latencyMs: 20,
      bandwidthBytesPerSec: 4 * 1024 * 1024,
    });
    try {
      const boundary = multipartBoundary();
      const answer = await new Promise<string>((resolve, reject) => {
        const req = http.request(`${proxy.url}/studies`, {
          method: "POST",
          headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}` },
        });
        req.on("error", reject);
        req.on("response", (res) => {
          let t = "";
          res.on("data", (c) => (t += c));
          res.on("end", () => resolve(`${res.statusCode} ${t}`));
        });
        writeMultipart(req, boundary, (async function* () {
          for (const b of bodies) yield { contentType: "application/dicom", body: Readable.from([b]) };
        })()).then(() => req.end(), reject);
      });
      expect(answer).toBe("200 ok");
      expect(seen).toEqual(bodies.map((b) => [b.length, b[0]]));
    } finally {
      await proxy.close();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("turns a source error into MultipartError 400", async () => {
    const src = new PassThrough();
    src.write(Buffer.from(`--${B}\r\n\r\nsome`));
    setTimeout(() => src.destroy(Object.assign(new Error("aborted"), { code: "ECONNRESET" })), 10);
    const err = await rejection(
      (async () => {
        for await (const p of readMultipartParts(src, B)) await readAll(p.body).catch(() => undefined);
      })(),
    );
    expect(err).toBeInstanceOf(MultipartError);
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/aborted/);
  });

  it("streams a 200 MB part with bounded memory", async () => {
    const size = 200 * 1024 * 1024;
    const chunk = Buffer.alloc(64 * 1024);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff;
    const expectHash = createHash("sha256");
    const src = new PassThrough({ highWaterMark: 64 * 1024 });
    const feed = (async () => {
      const write = (b: Buffer) => (src.write(b) ? Promise.resolve() : new Promise<void>((r) => src.once("drain", () => r())));
      await write(Buffer.from(`--${B}\r\nContent-Type: application/dicom\r\n\r\n`));
      for (let sent = 0; sent < size; sent += chunk.length) {
        expectHash.update(chunk);
        await write(chunk);
      }
      await write(Buffer.from(`\r\n--${B}\r\n\r\ntail\r\n--${B}--\r\n`));
      src.end();
    })();
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const got: { size: number; hash: string }[] = [];
    try {
      for await (const p of readMultipartParts(src, B)) {
        const h = createHash("sha256");
        let n = 0;
        for await (const c of p.body) {
          h.update(c as Buffer);
          n += (c as Buffer).length;
        }
        got.push({ size: n, hash: h.digest("hex") });
      }
      await feed;
    } finally {
      clearInterval(sampler);
    }
    expect(got[0]).toEqual({ size, hash: expectHash.digest("hex") });
    expect(got[1]!.size).toBe(4);
    expect(peak - base).toBeLessThan(64 * 1024 * 1024);
  }, 120_000);
});

describe("writeMultipart", () => {
  function sink(highWaterMark = 16 * 1024, delayMs = 0) {
    const chunks: Buffer[] = [];
    const w = new Writable({
      highWaterMark,
      write(c, _e, cb) {
        chunks.push(c as Buffer);
        if (delayMs) setTimeout(cb, delayMs);
        else cb();
      },
    });
    return { w, data: () => Buffer.concat(chunks) };
  }

  it("writes parts that readMultipartParts reads back", async () => {
    const boundary = multipartBoundary();
    expect(boundary).toMatch(/^[A-Za-z0-9-]{20,70}$/);
    expect(multipartBoundary()).not.toBe(boundary);
    const { w, data } = sink();
    const bodies = [...tricky, Buffer.alloc(100_000, 9)];
    await writeMultipart(
      w,
      boundary,
      (async function* () {
        for (const b of bodies) yield { contentType: "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", headers: { "Content-Length": String(b.length) }, body: Readable.from([b]) };
      })(),
    );
    const text = data();
    expect(text.subarray(0, boundary.length + 2).toString()).toBe(`--${boundary}`);
    expect(text.subarray(-(boundary.length + 6)).toString()).toBe(`--${boundary}--\r\n`);
    const parts = await collect(chunked(text, () => 777), boundary);
    expect(parts.map((p) => p.data.toString("hex"))).toEqual(bodies.map((b) => b.toString("hex")));
    expect(parts[5]!.headers).toEqual({ "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "content-length": "100000" });
  });

  it("writes a part given as the chunks it was read in, byte for byte as the same part in one buffer or a stream", async () => {
    const bodies = [...tricky, Buffer.alloc(300_000, 9)];
    // each body cut into uneven chunks (one of them empty), as a remote store's response arrives
    const cut = (b: Buffer) => [b.subarray(0, 3), b.subarray(3, 3), b.subarray(3, Math.floor(b.length / 2)), b.subarray(Math.floor(b.length / 2))];
    const written = async (as: "chunks" | "buffer" | "stream") => {
      const { w, data } = sink();
      await writeMultipart(w, "bb", (async function* () {
        for (const b of bodies) yield { contentType: "application/dicom", body: as === "chunks" ? cut(b) : as === "buffer" ? b : Readable.from([b]) };
      })());
      return data();
    };
    const fromChunks = await written("chunks");
    expect(fromChunks.equals(await written("buffer"))).toBe(true);
    expect(fromChunks.equals(await written("stream"))).toBe(true);
    const parts = await collect(chunked(fromChunks, () => 4093), "bb");
    expect(parts.map((p) => p.data.toString("hex"))).toEqual(bodies.map((b) => b.toString("hex")));
  });

  it("calls a part's release only once the write holding its bytes finished (a slow socket), never when the write failed", async () => {
    const bodies = Array.from({ length: 40 }, (_, i) => Buffer.alloc(30_000 + i * 1000, i + 1));
    // a socket that reads what it was given only when its write finishes (as the kernel copies it later)
    const got: Buffer[] = [];
    const slow = new Writable({
      highWaterMark: 64 * 1024,
      writev(chunks, cb) {
        setTimeout(() => {
          for (const { chunk } of chunks) got.push(Buffer.from(chunk as Buffer));
          cb();
        }, 1);
      },
    });
    const released: number[] = [];
    await writeMultipart(slow, "bb", (async function* () {
      for (const [i, b] of bodies.entries()) {
        yield {
          contentType: "application/dicom",
          body: b,
          // the memory is used again at once: a release before the bytes were taken would change what was sent
          release: () => {
            released.push(i);
            b.fill(0);
          },
        };
      }
    })());
    await new Promise<void>((resolve) => slow.end(resolve));
    expect(released).toEqual(bodies.map((_, i) => i));
    const parts = await collect(chunked(Buffer.concat(got), () => 8191), "bb");
    expect(parts.map((p) => p.data.equals(Buffer.alloc(30_000 + parts.indexOf(p) * 1000, parts.indexOf(p) + 1)))).toEqual(bodies.map(() => true));
    // a write that fails: the bytes may still be held, so they are not released
    let failedReleases = 0;
    const broken = new Writable({ write: (_c, _e, cb) => setTimeout(() => cb(new Error("connection reset")), 1) });
    const failed = new Promise<Error>((resolve) => broken.on("error", resolve));
    await writeMultipart(broken, "bb", (async function* () {
      for (let i = 0; i < 3; i++) yield { contentType: "application/dicom", body: Buffer.alloc(1000, 1), release: () => failedReleases++ };
    })()).catch(() => undefined);
    expect((await failed).message).toBe("connection reset");
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(failedReleases).toBe(0);
  });

  it("writes just the close delimiter for no parts", async () => {
    const { w, data } = sink();
    await writeMultipart(w, "bb", (async function* () {})());
    expect(data().toString()).toBe("--bb--\r\n");
  });

  it("honours backpressure: a part is not read far ahead of a slow writer", async () => {
    const { w } = sink(16 * 1024, 2);
    let produced = 0;
    let maxAhead = 0;
    let written = 0;
    const origWrite = w.write.bind(w);
    w.write = ((c: Buffer, ...rest: never[]) => {
      written += c.length;
      return origWrite(c, ...rest);
    }) as typeof w.write;
    const body = new Readable({
      highWaterMark: 16 * 1024,
      read() {
        if (produced >= 2 * 1024 * 1024) return void this.push(null);
        produced += 16 * 1024;
        maxAhead = Math.max(maxAhead, produced - written);
        this.push(Buffer.alloc(16 * 1024));
      },
    });
    await writeMultipart(w, "bb", (async function* () {
      yield { contentType: "application/dicom", body };
    })());
    expect(produced).toBe(2 * 1024 * 1024);
    expect(maxAhead).toBeLessThan(256 * 1024);
  });

  it("throws a part's error, stops the parts and writes no close delimiter", async () => {
    const { w, data } = sink();
    let laterStarted = false;
    let iterableClosed = false;
    const failing = new Readable({
      read() {
        this.destroy(new Error("disk read failed"));
      },
    });
    const parts = (async function* (): AsyncGenerator<OutgoingPart> {
      try {
        yield { contentType: "application/dicom", body: Readable.from([Buffer.from("ok")]) };
        yield { contentType: "application/dicom", body: failing };
        laterStarted = true;
        yield { contentType: "application/dicom", body: Readable.from([Buffer.from("never")]) };
      } finally {
        iterableClosed = true;
      }
    })();
    await expect(writeMultipart(w, "bb", parts)).rejects.toThrow(/disk read failed/);
    expect(laterStarted).toBe(false);
    expect(iterableClosed).toBe(true);
    expect(data().toString()).not.toContain("--bb--");
  });

  it("throws when the output is closed midway and destroys the part being written", async () => {
    const w = new Writable({ highWaterMark: 1024, write(_c, _e, cb) { setTimeout(cb, 5); } });
    const body = new Readable({ read() { this.push(Buffer.alloc(4096)); } });
    setTimeout(() => w.destroy(), 30);
    await expect(writeMultipart(w, "bb", (async function* () {
      yield { contentType: "application/dicom", body };
    })())).rejects.toThrow(/closed before all parts/);
    expect(body.destroyed).toBe(true);
  });

  it("refuses header values with line breaks", async () => {
    const { w } = sink();
    await expect(writeMultipart(w, "bb", (async function* () {
      yield { contentType: "application/dicom\r\nX-Evil: 1", body: Readable.from([Buffer.from("x")]) };
    })())).rejects.toThrow(/line break/);
  });
});
