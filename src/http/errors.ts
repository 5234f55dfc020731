import type { NextFunction, Request, Response } from "express";
import type { Logger } from "pino";
import { StorageUnavailableError } from "../storage/blobStore.ts";
import { isIndexUnavailable } from "../catalog/index.ts";
import type { RelayMetrics } from "../metrics/metrics.ts";

/** An error with an HTTP status and a sentence for the person on the other end. */
export class HttpError extends Error {
  /** a header given as an array is sent once per value (e.g. two WWW-Authenticate challenges) */
  constructor(readonly status: number, message: string, readonly headers: Record<string, string | string[]> = {}) {
    super(message);
    this.name = "HttpError";
  }
}

export const RETRY_AFTER_SECONDS = "30";

/** Answer every error as JSON {error, status}, log it, and never leak stack traces. */
export function errorHandler(log: Logger, metrics?: Pick<RelayMetrics, "backendErrors">) {
  return (err: unknown, req: Request, res: Response, _next: NextFunction) => {
    let status = 500;
    let message = "the relay hit an unexpected error; it was logged";
    let headers: Record<string, string | string[]> = {};
    const e = err as { status?: number; statusCode?: number; message?: string; type?: string };
    if (err instanceof HttpError) {
      status = err.status;
      message = err.message;
      headers = err.headers;
    } else if (err instanceof StorageUnavailableError) {
      metrics?.backendErrors.inc({ backend: "storage" });
      status = 503;
      message = "the relay's storage is unavailable right now; please retry later";
      headers = { "Retry-After": RETRY_AFTER_SECONDS };
    } else if (isIndexUnavailable(err)) {
      metrics?.backendErrors.inc({ backend: "index" });
      status = 503;
      message = "the relay's index database is unavailable right now; please retry later";
      headers = { "Retry-After": RETRY_AFTER_SECONDS };
    } else if (typeof (e.status ?? e.statusCode) === "number" && (e.status ?? e.statusCode)! >= 400 && (e.status ?? e.statusCode)! < 500) {
      status = (e.status ?? e.statusCode)!;
      message = e.message ?? "bad request";
    } else if (typeof e.status === "number" && e.status === 503) {
      status = 503;
      message = e.message ?? "service unavailable";
      headers = { "Retry-After": RETRY_AFTER_SECONDS };
    }
    const level = status >= 500 ? "error" : "warn";
    log[level]({ err: status >= 500 ? err : undefined, status, method: req.method, url: req.originalUrl, reason: message }, "request failed");
    if (res.headersSent) {
      // a streamed response already started: cut it so the client cannot mistake it for complete
      res.destroy();
      return;
    }
    // a streamed response may have set its own headers before failing: answer as plain JSON
    res.removeHeader("Content-Length");
    res.status(status).set(headers).type("application/json").send(JSON.stringify({ status, error: message }));
  };
}
