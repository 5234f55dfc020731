/**
 * multipart/related (RFC 2387 on RFC 2046 5.1) for STOW-RS in and WADO-RS out, as streams:
 * a part's body flows through with a few kilobytes of look-behind, never held whole (an instance can be 500 MB).
 * No express here: the routes map MultipartError.status to the HTTP answer.
 */
import { randomBytes } from "node:crypto";
import { Readable, type Writable } from "node:stream";

/** A request whose multipart framing or Content-Type the relay cannot accept; status is the HTTP answer (400/415). */
export class MultipartError extends Error {
  constructor(readonly status: 400 | 415, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MultipartError";
  }
}

// ---------------------------------------------------------------- Content-Type

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Parse a Content-Type value (RFC 9110 8.3): media type and parameters, names lower-cased, quoted values unquoted.
 * A parameter without "=" is ignored rather than refused: some clients send a trailing ";".
 */
export function parseContentType(header: string): { mediaType: string; params: Record<string, string> } {
  const s = header ?? "";
  let i = s.indexOf(";");
  const mediaType = (i < 0 ? s : s.slice(0, i)).trim().toLowerCase();
  const slash = mediaType.indexOf("/");
  if (slash <= 0 || slash === mediaType.length - 1 || !TOKEN.test(mediaType.slice(0, slash)) || !TOKEN.test(mediaType.slice(slash + 1))) {
    throw new MultipartError(400, `the Content-Type "${s.slice(0, 100)}" is not a media type of the form type/subtype`);
  }
  const params: Record<string, string> = {};
  // every step moves i forward by at least one character, so the loop ends
  while (i >= 0 && i < s.length) {
    i++; // past ";"
    while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
    const eq = s.indexOf("=", i);
    const semi = s.indexOf(";", i);
    if (eq < 0 || (semi >= 0 && semi < eq)) {
      i = semi;
      continue;
    }
    const name = s.slice(i, eq).trim().toLowerCase();
    let j = eq + 1;
    while (j < s.length && (s[j] === " " || s[j] === "\t")) j++;
    let value = "";
    if (s[j] === '"') {
      j++;
      for (; j < s.length && s[j] !== '"'; j++) {
        if (s[j] === "\\" && j + 1 < s.length) j++;
        value += s[j];
      }
      if (j >= s.length) throw new MultipartError(400, `the Content-Type parameter "${name}" has an unterminated quoted value`);
      j++; // closing quote
      i = s.indexOf(";", j);
    } else {
      const end = s.indexOf(";", j);
      value = (end < 0 ? s.slice(j) : s.slice(j, end)).trim();
      i = end;
    }
    if (name && !(name in params)) params[name] = value;
  }
  return { mediaType, params };
}

/** The boundary and root type of a STOW-RS request body. */
export interface MultipartRelatedType {
  boundary: string;
  /** the type= parameter's media type, lower case (application/dicom when the client left it out) */
  type: string;
  start?: string;
}

/**
 * Check a STOW-RS Content-Type (PS3.18 10.5.1.1). Only application/dicom parts are taken for now; the
 * metadata + bulk data form (application/dicom+json or +xml) is answered with 415 and a sentence.
 */
export function parseMultipartRelatedContentType(header: string): MultipartRelatedType {
  if (!header || !header.trim()) {
    throw new MultipartError(415, 'the request has no Content-Type; STOW-RS takes multipart/related; type="application/dicom"; boundary=...');
  }
  let ct: ReturnType<typeof parseContentType>;
  try {
    ct = parseContentType(header);
  } catch (err) {
    throw new MultipartError(415, `${(err as Error).message}; STOW-RS takes multipart/related; type="application/dicom"`);
  }
  if (ct.mediaType !== "multipart/related") {
    throw new MultipartError(415, `the request is ${ct.mediaType}; STOW-RS takes multipart/related; type="application/dicom" with one Part-10 file per part`);
  }
  // RFC 2387 makes type= required, but several clients leave it out; each part carries its own Content-Type anyway
  const type = (ct.params.type ?? "application/dicom").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/dicom") {
    throw new MultipartError(
      415,
      type === "application/dicom+json" || type === "application/dicom+xml"
        ? `STOW-RS with ${type} metadata and bulk data parts is not supported by this relay; send the instances as Part-10 files with type="application/dicom"`
        : `multipart/related of type ${type} is not accepted; STOW-RS here takes type="application/dicom"`,
    );
  }
  const boundary = ct.params.boundary;
  if (!boundary) throw new MultipartError(400, "the multipart/related Content-Type has no boundary parameter");
  // RFC 2046 allows 1 to 70 characters; a little slack for clients that go past it, but bounded
  if (boundary.length > 200) throw new MultipartError(400, "the multipart boundary is longer than 200 characters");
  if (/[\r\n]/.test(boundary)) throw new MultipartError(400, "the multipart boundary contains a line break");
  const out: MultipartRelatedType = { boundary, type };
  if (ct.params.start) out.start = ct.params.start;
  return out;
}

// ---------------------------------------------------------------- reading

const CRLF = Buffer.from("\r\n");
const HEADER_END = Buffer.from("\r\n\r\n");

/**
 * Pulls chunks from a Readable without taking it over: no async iterator (whose return() would destroy the
 * caller's request), so the caller still owns the stream once parsing stops.
 */
class ChunkPuller {
  constructor(private readonly s: Readable) {}

  async next(): Promise<Buffer | null> {
    // each turn either returns or waits for an event that changes the stream's state; a stream ends or errors
    for (;;) {
      const c = this.s.read() as Buffer | string | null;
      if (c !== null) return typeof c === "string" ? Buffer.from(c) : c;
      if (this.s.readableEnded) return null;
      if (this.s.errored) throw this.s.errored;
      if (this.s.destroyed) throw new Error("the stream was closed before its end");
      await new Promise<void>((resolve) => {
        const done = () => {
          this.s.off("readable", done);
          this.s.off("end", done);
          this.s.off("error", done);
          this.s.off("close", done);
          resolve();
        };
        this.s.on("readable", done);
        this.s.on("end", done);
        this.s.on("error", done);
        this.s.on("close", done);
      });
    }
  }
}

/** The bytes not yet parsed, refilled from the source on demand. */
class Scanner {
  buf: Buffer;
  private eof = false;
  constructor(private readonly puller: ChunkPuller, initial: Buffer) {
    this.buf = initial;
  }

  /** The next chunk of the source, not yet appended; null at its end. */
  async pull(): Promise<Buffer | null> {
    if (this.eof) return null;
    let c: Buffer | null;
    try {
      c = await this.puller.next();
    } catch (err) {
      if (err instanceof MultipartError || typeof (err as { status?: unknown }).status === "number") throw err;
      throw new MultipartError(400, `the request body could not be read to its end (${(err as Error).message})`, { cause: err });
    }
    if (c === null) this.eof = true;
    return c;
  }

  append(c: Buffer): void {
    if (c.length) this.buf = this.buf.length ? Buffer.concat([this.buf, c]) : c;
  }

  /** Append the next chunk of the source; false at its end. */
  async more(): Promise<boolean> {
    const c = await this.pull();
    if (c === null) return false;
    this.append(c);
    return true;
  }

  /** Make at least n bytes available; false if the source ends first. */
  async ensure(n: number): Promise<boolean> {
    while (this.buf.length < n) if (!(await this.more())) return false;
    return true;
  }

  consume(n: number): void {
    this.buf = this.buf.subarray(n);
  }
}

export interface ReadMultipartOptions {
  /** largest header block of one part, bytes (default 16 KiB) */
  maxPartHeaderBytes?: number;
  /** most bytes before the first boundary (default 64 KiB): a body that is not multipart fails fast */
  maxPreambleBytes?: number;
  /** epilogue bytes read and ignored after the close delimiter (default 64 KiB); past that the rest is left unread */
  maxEpilogueBytes?: number;
}

export interface MultipartPart {
  /** header names in lower case */
  headers: Record<string, string>;
  /** the part's bytes; read it to its end (or leave it: asking for the next part discards the rest) */
  body: Readable;
}

/**
 * Read the parts of a multipart body one at a time. Each part's body streams from the source as it is read; asking
 * for the next part first discards whatever the caller left of the previous one. Framing errors (no first boundary,
 * no close delimiter, a truncated body, an oversized header block) throw MultipartError(400); the current part's body
 * is destroyed with the same error. The source stream is read but never destroyed here.
 */
export async function* readMultipartParts(
  body: Readable,
  boundary: string,
  opts: ReadMultipartOptions = {},
): AsyncGenerator<MultipartPart> {
  if (!boundary) throw new MultipartError(400, "the multipart boundary is empty");
  const maxHeader = opts.maxPartHeaderBytes ?? 16 * 1024;
  const maxPreamble = opts.maxPreambleBytes ?? 64 * 1024;
  const maxEpilogue = opts.maxEpilogueBytes ?? 64 * 1024;
  // every delimiter is CRLF "--" boundary; a leading CRLF is assumed so that a body starting with "--boundary" matches
  const delim = Buffer.from(`\r\n--${boundary}`, "latin1");
  const sc = new Scanner(new ChunkPuller(body), Buffer.from(CRLF));
  let open: PulledPart | null = null;

  try {
    // ---- preamble: skip to the first delimiter, keeping only delim.length - 1 bytes of look-behind
    let skipped = 0;
    for (;;) {
      const i = sc.buf.indexOf(delim);
      if (i >= 0) {
        sc.consume(i);
        break;
      }
      const drop = Math.max(0, sc.buf.length - (delim.length - 1));
      sc.consume(drop);
      skipped += drop;
      if (skipped > maxPreamble) {
        throw new MultipartError(400, `no multipart boundary "--${boundary}" in the first ${maxPreamble} bytes of the body; is the body really multipart/related with that boundary?`);
      }
      if (!(await sc.more())) {
        throw new MultipartError(400, `the body holds no multipart boundary "--${boundary}"; is the body really multipart/related with that boundary?`);
      }
    }

    // ---- one part per turn; each turn consumes at least one delimiter from a finite source
    for (;;) {
      // sc.buf starts with the delimiter
      sc.consume(delim.length);
      if (!(await sc.ensure(2))) throw truncated("after a boundary");
      if (sc.buf[0] === 0x2d && sc.buf[1] === 0x2d) {
        // close delimiter: the rest is the epilogue, to be ignored (RFC 2046)
        sc.consume(2);
        let seen = sc.buf.length;
        while (seen <= maxEpilogue && (await sc.more())) {
          seen += sc.buf.length;
          sc.consume(sc.buf.length);
        }
        return;
      }
      await skipDelimiterLineEnd(sc);
      const headers = await readPartHeaders(sc, maxHeader);
      open = new PulledPart(() => bodyChunk(sc, delim));
      yield { headers, body: open.body };
      await open.finish();
      open = null;
    }
  } finally {
    // the caller stopped early (break, throw): leave nothing half-open behind
    if (open && !open.body.destroyed) open.body.destroy();
  }
}

function truncated(where: string): MultipartError {
  return new MultipartError(400, `the multipart body ended ${where}, before the close delimiter "--boundary--"; the request looks cut off`);
}

/** After "--boundary": optional transport padding (spaces, tabs), then CRLF. */
async function skipDelimiterLineEnd(sc: Scanner): Promise<void> {
  // padding is bounded so a stream of spaces cannot keep us here
  for (let n = 0; n <= 1024; n++) {
    if (!(await sc.ensure(2))) throw truncated("after a boundary");
    const c = sc.buf[0];
    if (c === 0x20 || c === 0x09) {
      sc.consume(1);
      continue;
    }
    if (c === 0x0d && sc.buf[1] === 0x0a) {
      sc.consume(2);
      return;
    }
    throw new MultipartError(400, "a multipart boundary line is followed by unexpected characters (the boundary may also occur inside a part)");
  }
  throw new MultipartError(400, "a multipart boundary line has more than 1024 characters of padding");
}

async function readPartHeaders(sc: Scanner, maxHeader: number): Promise<Record<string, string>> {
  if (!(await sc.ensure(2))) throw truncated("in a part's headers");
  if (sc.buf[0] === 0x0d && sc.buf[1] === 0x0a) {
    // no headers at all: the part is text/plain by RFC 2046, and the caller decides what that means
    sc.consume(2);
    return {};
  }
  let end: number;
  for (;;) {
    end = sc.buf.indexOf(HEADER_END);
    if (end >= 0) break;
    if (sc.buf.length > maxHeader) break;
    if (!(await sc.more())) throw truncated("in a part's headers");
  }
  if (end < 0 || end > maxHeader) {
    throw new MultipartError(400, `a part's header block is larger than ${maxHeader} bytes`);
  }
  const text = sc.buf.subarray(0, end).toString("latin1");
  sc.consume(end + HEADER_END.length);
  const headers: Record<string, string> = {};
  let last: string | null = null;
  for (const line of text.split("\r\n")) {
    if ((line[0] === " " || line[0] === "\t") && last) {
      // obsolete line folding: continues the previous header's value
      headers[last] += ` ${line.trim()}`;
      continue;
    }
    const colon = line.indexOf(":");
    if (colon <= 0) throw new MultipartError(400, `a part header line is not of the form "Name: value": "${line.slice(0, 80)}"`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    last = name;
  }
  return headers;
}

/** The next bytes of the current part, or null when the delimiter is next (left in sc.buf). */
async function bodyChunk(sc: Scanner, delim: Buffer): Promise<Buffer | null> {
  // each turn returns or reads more of a finite source
  for (;;) {
    const i = sc.buf.indexOf(delim);
    if (i === 0) return null;
    if (i > 0) {
      const out = sc.buf.subarray(0, i);
      sc.consume(i);
      return out;
    }
    // no delimiter here: everything but a possible delimiter prefix at the end is body
    const keep = Math.min(sc.buf.length, delim.length - 1);
    if (sc.buf.length > keep) {
      const out = sc.buf.subarray(0, sc.buf.length - keep);
      sc.consume(out.length);
      return out;
    }
    const c = await sc.pull();
    if (c === null) throw truncated("inside a part");
    if (sc.buf.length && c.length >= delim.length - 1) {
      // Only the kept bytes (less than a delimiter) are left. Whether a delimiter starts in them shows in the seam
      // (they and the new chunk's first bytes); if none does, they are body and the new chunk is taken as it is.
      // Appending would copy every chunk of every part once more (165 ms of a 2.8 s CT STOW, profiled).
      const at = Buffer.concat([sc.buf, c.subarray(0, delim.length - 1)]).indexOf(delim);
      if (at < 0 || at >= sc.buf.length) {
        const out = sc.buf;
        sc.buf = c;
        return out;
      }
    }
    sc.append(c);
  }
}

const noop = () => {};

/**
 * A Readable fed by pulling step() as the reader asks for data (so backpressure reaches the source), and finish()
 * to discard what the reader left. step() returns null at the end of the part. An error thrown by step() destroys
 * the body with it and is thrown again by finish(). Also used for bundle entries (src/transfers/bundle.ts).
 */
export class PulledPart {
  readonly body: Readable;
  private ended = false;
  private pushedEnd = false;
  private draining = false;
  private wanted = false;
  private active = false;
  private running: Promise<void> = Promise.resolve();
  private failure: unknown = null;

  constructor(private readonly step: () => Promise<Buffer | null>) {
    this.body = new Readable({ highWaterMark: 64 * 1024, read: () => this.kick() });
  }

  private kick(): void {
    this.wanted = true;
    if (!this.active && !this.ended && this.failure === null) this.running = this.loop();
  }

  private async loop(): Promise<void> {
    this.active = true;
    try {
      while (!this.ended && (this.wanted || this.draining)) {
        const chunk = await this.step();
        if (chunk === null) {
          this.ended = true;
          if (!this.body.destroyed) {
            this.body.push(null);
            this.pushedEnd = true;
          }
          break;
        }
        if (this.draining) continue;
        // the reader destroyed the body: stop here, finish() discards the rest when the next part is asked for
        if (this.body.destroyed) break;
        this.wanted = false;
        if (this.body.push(chunk)) this.wanted = true;
      }
    } catch (err) {
      this.failure = err;
      if (!this.body.destroyed) {
        if (this.draining) this.body.destroy();
        else {
          // a reader that only resume()d the body has no error listener: the error must not crash the process
          // (it is thrown again by finish() when the next part is asked for)
          if (this.body.listenerCount("error") === 0) this.body.on("error", noop);
          this.body.destroy(err as Error);
        }
      }
    } finally {
      this.active = false;
    }
  }

  /** Discard the rest of the part (what the reader did not take); throws the framing error if there is one. */
  async finish(): Promise<void> {
    this.draining = true;
    // the reader is done with the body: an error on it now has nobody to hear it
    this.body.on("error", noop);
    // each turn runs the loop, which only stops at the part's end or a failure
    for (;;) {
      if (this.failure !== null) throw this.failure;
      if (this.ended) break;
      if (!this.active) this.running = this.loop();
      await this.running;
    }
    // a body the reader left midway gets "close" without "end", so nobody mistakes it for complete
    if (!this.pushedEnd && !this.body.destroyed) this.body.destroy();
  }
}

// ---------------------------------------------------------------- writing

/** A fresh boundary for a WADO-RS response: random, so it cannot occur in the instances it frames. */
export function multipartBoundary(): string {
  return `dicomrelay-${randomBytes(16).toString("hex")}`;
}

export interface OutgoingPart {
  contentType: string;
  headers?: Record<string, string>;
  /**
   * a stream, or the bytes of a small part already read (a WADO-RS instance of a few kilobytes): one buffer, or the
   * chunks they were read in (written as they are, not joined first)
   */
  body: Readable | Buffer | readonly Buffer[];
  /**
   * Called once the bytes of a body already read were written out (the socket's write finished: nothing refers to
   * them any more), so their memory can be used again. Not called when the write failed or the response was cut.
   */
  release?: () => void;
}

/** small parts are gathered up to this many bytes and written together: one socket write, not two per part */
const COALESCE_BYTES = 256 * 1024;

/**
 * Write parts as multipart/related to out, honouring backpressure, ending with the close delimiter. out is not ended
 * (the caller ends it; an HTTP response may want trailers or logging first). If a part's body or the iterable fails,
 * or out is closed early, the part stream is destroyed, the error is thrown and no close delimiter is written: the
 * caller should then destroy out, so the client cannot take a cut response for a complete one.
 */
export async function writeMultipart(out: Writable, boundary: string, parts: AsyncIterable<OutgoingPart>): Promise<void> {
  let first = true;
  // part heads and Buffer bodies not yet written (at most COALESCE_BYTES plus one part)
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  // releases of the bodies in pending: called when the write of the last of them finishes
  let releases: Array<() => void> = [];
  const flush = async () => {
    if (!pending.length) return;
    const chunks = pending;
    const done = releases;
    pending = [];
    pendingBytes = 0;
    releases = [];
    await writeAll(out, chunks, done.length ? () => done.forEach((f) => f()) : undefined);
  };
  for await (const part of parts) {
    const body = part.body;
    try {
      let head = `${first ? "" : "\r\n"}--${boundary}\r\nContent-Type: ${headerValue(part.contentType)}\r\n`;
      for (const [name, value] of Object.entries(part.headers ?? {})) {
        if (!TOKEN.test(name)) throw new Error(`invalid part header name "${name}"`);
        if (name.toLowerCase() === "content-type") continue;
        head += `${name}: ${headerValue(value)}\r\n`;
      }
      first = false;
      const headBytes = Buffer.from(`${head}\r\n`, "latin1");
      pending.push(headBytes);
      pendingBytes += headBytes.length;
      if (!(body instanceof Readable)) {
        // bytes already read: gathered with the heads (one buffer, or the chunks they were read in)
        for (const chunk of Buffer.isBuffer(body) ? [body] : body) {
          pending.push(chunk);
          pendingBytes += chunk.length;
        }
        if (part.release) releases.push(part.release);
        if (pendingBytes >= COALESCE_BYTES) await flush();
        continue;
      }
      await flush();
      for await (const chunk of body) await write(out, chunk as Buffer);
    } finally {
      if (body instanceof Readable && !body.destroyed && !body.readableEnded) body.destroy();
    }
  }
  pending.push(Buffer.from(`${first ? "" : "\r\n"}--${boundary}--\r\n`, "latin1"));
  await flush();
}

/**
 * Several chunks in one socket write (corked), then wait for drain if the socket buffer is full. `written` runs when
 * the write of the last chunk finished without error (a stream's writes finish in order: all of them are done).
 */
async function writeAll(out: Writable, chunks: Buffer[], written?: () => void): Promise<void> {
  if (out.destroyed || out.writableEnded) throw new Error("the response was closed before all parts were written");
  const cb = written ? (err?: Error | null) => { if (!err) written(); } : undefined;
  if (chunks.length === 1) {
    if (!out.write(chunks[0]!, cb)) await drained(out);
    return;
  }
  out.cork();
  let ok = true;
  for (let i = 0; i < chunks.length; i++) ok = i === chunks.length - 1 ? out.write(chunks[i]!, cb) : out.write(chunks[i]!);
  out.uncork();
  if (!ok) await drained(out);
}

function headerValue(v: string): string {
  if (/[\r\n]/.test(v)) throw new Error("a part header value contains a line break");
  return v;
}

async function write(out: Writable, chunk: Buffer): Promise<void> {
  if (out.destroyed || out.writableEnded) throw new Error("the response was closed before all parts were written");
  if (out.write(chunk)) return;
  await drained(out);
}

function drained(out: Writable): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const cleanup = () => {
      out.off("drain", onDrain);
      out.off("close", onClose);
      out.off("error", onError);
    };
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onClose = () => {
      cleanup();
      reject(new Error("the response was closed before all parts were written"));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    out.on("drain", onDrain);
    out.on("close", onClose);
    out.on("error", onError);
  });
}
