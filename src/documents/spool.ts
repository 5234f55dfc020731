/**
 * An attached document lands in a local spool file, hashed, counted and checked on the way, so the relay never holds
 * a whole report in memory: what the checks need (the first bytes, the last KiB, whether "/Encrypt" appears) is
 * gathered in the same single pass.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { Transform, type Readable } from "node:stream";

export interface SpooledDocument {
  path: string;
  size: number;
  sha256: string;
  /** the first bytes (content is told by these, never by a file name) */
  head: Buffer;
  /** the last KiB (a PDF ends with %%EOF there) */
  tail: Buffer;
  /** whether a PDF encryption dictionary reference (/Encrypt n m R, or /Encrypt <<) appears anywhere */
  mentionsEncrypt: boolean;
}

/** The body passed the size limit; reading stopped there and nothing was kept. */
export class DocumentTooLarge extends Error {}

const HEAD = 64;
const TAIL = 1024;
// longer than any "/Encrypt 123 0 R" with ordinary white space, so a match split across two chunks is still seen
const OVERLAP = 256;
const ENCRYPT = /\/Encrypt\s*(\d+\s+\d+\s+R|<<)/;

/** Looks for an encryption reference in a stream of chunks, a match across chunk borders included. */
export class EncryptScanner {
  found = false;
  private carry = "";
  push(chunk: Buffer): void {
    if (this.found) return;
    const text = this.carry + chunk.toString("latin1");
    if (ENCRYPT.test(text)) this.found = true;
    this.carry = text.slice(-OVERLAP);
  }
}

/** Keeps the first HEAD and the last TAIL bytes of a stream without holding the rest. */
class Ends {
  head = Buffer.alloc(0);
  tail = Buffer.alloc(0);
  push(chunk: Buffer): void {
    if (this.head.length < HEAD) this.head = Buffer.concat([this.head, chunk.subarray(0, HEAD - this.head.length)]);
    this.tail = chunk.length >= TAIL ? Buffer.from(chunk.subarray(chunk.length - TAIL)) : Buffer.concat([this.tail, chunk]).subarray(-TAIL);
  }
}

/**
 * body -> meter -> file. Unlike stream.pipeline, a failure does not destroy body: when body is an HTTP request, its
 * connection must stay open for the answer (a 413 for a body over the limit); body is unpiped and drained instead.
 */
function pipeInto(body: Readable, meter: Transform, out: fs.WriteStream): Promise<void> {
  return new Promise((resolve, reject) => {
    let failed = false;
    const fail = (err: Error) => {
      if (failed) return;
      failed = true;
      body.unpipe(meter);
      body.resume();
      meter.destroy();
      out.destroy();
      reject(err);
    };
    body.once("error", fail);
    body.once("close", () => {
      if (!body.readableEnded) fail(new Error("the sender closed the connection before the end of the document"));
    });
    meter.once("error", fail);
    out.once("error", fail);
    out.once("close", () => {
      body.off("error", fail);
      if (!failed) resolve();
    });
    body.pipe(meter).pipe(out);
  });
}

/**
 * Writes body to a new file in dir (named *.spool, so the ingest pipeline's start-up sweep removes leftovers of a
 * crash). Over max bytes: stops reading, removes the file, throws DocumentTooLarge.
 */
export async function spoolDocument(body: Readable, dir: string, max: number): Promise<SpooledDocument> {
  await fsp.mkdir(dir, { recursive: true });
  const file = path.join(dir, `${Date.now()}-${crypto.randomBytes(8).toString("hex")}.document.spool`);
  const hash = crypto.createHash("sha256");
  const ends = new Ends();
  const encrypt = new EncryptScanner();
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      size += chunk.length;
      if (size > max) return done(new DocumentTooLarge(`over ${max} bytes`));
      hash.update(chunk);
      ends.push(chunk);
      encrypt.push(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeInto(body, meter, fs.createWriteStream(file, { flags: "wx" }));
  } catch (err) {
    await fsp.rm(file, { force: true });
    throw err;
  }
  return { path: file, size, sha256: hash.digest("hex"), head: ends.head, tail: ends.tail, mentionsEncrypt: encrypt.found };
}
