/**
 * Refusing a request before its body is read. Closing the connection at once makes the sender's kernel reset it while
 * the sender is still writing, and most clients then report "connection reset" instead of the answer (RFC 9112
 * section 9.6: a server should read and discard the rest before closing). So the rest is read and thrown away, within
 * bounds: past maxBytes or maxMs the connection is cut (a sender that would not stop gets no free bandwidth).
 */
import type { IncomingMessage } from "node:http";
import type { Response } from "express";

export interface DrainLimits { maxBytes: number; maxMs: number }

export const DEFAULT_DRAIN: DrainLimits = { maxBytes: 128 * 1024 * 1024, maxMs: 30_000 };

/** Set on res.locals when the rest of the body is being discarded: closeUnreadBodies then keeps the connection. */
export const DISCARDING_BODY = "discardingBody";

/**
 * For an authenticated sender refused for what it sent (a document over the limit): it should read the answer.
 * Requests refused before authentication are closed at once instead (closeUnreadBodies): nothing is read for them.
 */
export function discardRestOfBody(req: IncomingMessage, res: Response, limits: DrainLimits = DEFAULT_DRAIN): void {
  if (req.readableEnded || req.destroyed) return;
  res.locals[DISCARDING_BODY] = true;
  let seen = 0;
  const cut = () => { cleanup(); req.socket?.destroy(); };
  const timer = setTimeout(cut, limits.maxMs);
  timer.unref();
  const onData = (chunk: Buffer) => { seen += chunk.length; if (seen > limits.maxBytes) cut(); };
  const cleanup = () => { clearTimeout(timer); req.off("data", onData); req.off("end", cleanup); req.off("close", cleanup); };
  req.on("data", onData);
  req.once("end", cleanup);
  req.once("close", cleanup);
  req.resume();
}
