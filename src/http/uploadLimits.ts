/**
 * What a careless or hostile client can hold of the relay with request bodies (docs/security.md, "Limits and
 * timeouts"):
 *  - bodyIdleTimeout: a body that sends no byte for server.bodyIdleTimeoutSeconds ends its request (the socket is
 *    closed; a STOW spool file is removed by its reader, a tus PATCH keeps what arrived so the client resumes);
 *  - closeUnreadBodies: a request refused before its body was read (401, 403, 413 ...) gets Connection: close, so
 *    the relay neither reads the declared body nor keeps the socket afterwards (unless the route chose to read and
 *    discard the rest for a sender it knows: src/http/drain.ts);
 *  - UploadSlots: uploads (STOW-RS, tus PATCH and POST with a body, documents) running at once, per sender and in
 *    total; beyond, 503 with Retry-After and a sentence.
 */
import type { Request, RequestHandler, Response } from "express";
import type { Logger } from "pino";
import { HttpError } from "./errors.ts";
import { DISCARDING_BODY } from "./drain.ts";

/** The request declares a body (Content-Length > 0 or a chunked transfer coding). */
export function declaresBody(req: Request): boolean {
  const len = req.headers["content-length"];
  if (len !== undefined) return Number(len) > 0;
  return req.headers["transfer-encoding"] !== undefined;
}

/** First middleware of the app: arms the body idle timer while a declared body is being read. */
export function bodyIdleTimeout(seconds: number, log: Logger): RequestHandler {
  const ms = seconds * 1000;
  return (req, res, next) => {
    if (ms <= 0 || !declaresBody(req)) return next();
    const socket = req.socket;
    const onIdle = () => {
      log.warn({ method: req.method, url: req.originalUrl, seconds }, "request body idle too long; the request was ended and its connection closed");
      // the reader of the body sees an aborted request: spool files go, a tus upload keeps what arrived
      socket.destroy();
    };
    req.setTimeout(ms, onIdle);
    // the body is all here: back to no socket timeout (unless the response already ended: keep-alive owns the timer then)
    req.once("end", () => {
      req.removeListener("timeout", onIdle);
      if (!res.writableEnded && !socket.destroyed) socket.setTimeout(0);
    });
    next();
  };
}

/** Answers to requests whose body was not read to its end close the connection instead of draining the body. */
export const closeUnreadBodies: RequestHandler = (req, res, next) => {
  if (!declaresBody(req)) return next();
  const writeHead = res.writeHead;
  res.writeHead = function (this: Response, ...args: unknown[]) {
    if (!req.complete && !this.headersSent && !this.locals[DISCARDING_BODY]) this.setHeader("Connection", "close");
    return (writeHead as (...a: unknown[]) => Response).apply(this, args);
  } as typeof res.writeHead;
  res.once("finish", () => {
    // Node ends the socket after a Connection: close answer; unread bytes are not waited for
    if (!req.complete && !res.locals[DISCARDING_BODY]) setImmediate(() => req.socket.destroySoon?.());
  });
  next();
};

/** Response header on the tus endpoint: server.maxConcurrentUploadsPerToken, so uploaders stay within it. */
export const UPLOADS_PER_TOKEN_HEADER = "X-Dicom-Relay-Uploads-Per-Token";

export interface UploadSlotOptions {
  total: number;
  perSender: number;
  /** Retry-After for a refused upload: a slot frees within the body idle timeout at the latest */
  retryAfterSeconds: number;
}

/** Counts uploads running now, per sender (token id, client certificate, or anonymous) and in total. */
export class UploadSlots {
  private running = 0;
  private readonly bySender = new Map<string, number>();

  constructor(private readonly opts: UploadSlotOptions) {}

  get inUse(): number {
    return this.running;
  }

  /** Middleware for an upload route; `isUpload` tells which requests of the route take a slot. */
  guard(isUpload: (req: Request) => boolean, senderOf: (res: Response) => string): RequestHandler {
    return (req, res, next) => {
      if (!isUpload(req)) return next();
      const sender = senderOf(res);
      const mine = this.bySender.get(sender) ?? 0;
      const retry = { "Retry-After": String(this.opts.retryAfterSeconds) };
      if (this.running >= this.opts.total) {
        return next(new HttpError(503, `the relay is receiving ${this.running} uploads at once, its limit (server.maxConcurrentUploads); retry in ${this.opts.retryAfterSeconds} s`, retry));
      }
      if (mine >= this.opts.perSender) {
        return next(new HttpError(503, `this token (or client certificate) already has ${mine} uploads running, the limit per token (server.maxConcurrentUploadsPerToken); finish or retry them in ${this.opts.retryAfterSeconds} s`, retry));
      }
      this.running++;
      this.bySender.set(sender, mine + 1);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        this.running--;
        const n = (this.bySender.get(sender) ?? 1) - 1;
        if (n <= 0) this.bySender.delete(sender);
        else this.bySender.set(sender, n);
      };
      // the body read is what a slot guards (a socket, a spool file, a sender's bandwidth): what the relay does
      // with it afterwards (reading a bundle before the tus answer) no longer holds the sender's place
      req.once("end", release);
      res.once("close", release);
      res.once("finish", release);
      next();
    };
  }
}

/** a then b, as one handler (guards are passed to routers as one RequestHandler) */
export function chain(a: RequestHandler, b: RequestHandler): RequestHandler {
  return (req, res, next) => {
    void a(req, res, (err?: unknown) => (err ? next(err) : b(req, res, next)));
  };
}
