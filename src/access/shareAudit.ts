/**
 * /share/{link}/... requests whose URL cannot be decoded (a % not followed by two hex digits, bytes that are not
 * UTF-8) would be answered 400 by Express's routing before any guard ran, leaving no audit row: a probe of share
 * links that the log never saw. They are refused here first, with a row (URL redacted: no link secret is written).
 * Other refusals under /share leave their rows where they happen: the viewer's link check (src/console/viewer.ts)
 * and authentication (middleware.ts).
 */
import type { RequestHandler } from "express";
import { HttpError } from "../http/errors.ts";
import type { AuditTrail } from "./audit.ts";
import { redactedUrl } from "./middleware.ts";

const BROKEN =
  "the URL's percent-encoding is broken (a % must be followed by two hexadecimal digits that spell UTF-8); the share link was not looked up";

export function shareUrlAudit(audit: AuditTrail): RequestHandler {
  return (req, _res, next) => {
    try {
      decodeURIComponent(req.path);
      return next();
    } catch {
      // refused below
    }
    req.originalUrl = redactedUrl(req.originalUrl);
    audit.record({
      actor: "unauthenticated",
      action: "auth",
      method: req.method,
      route: req.originalUrl,
      remoteAddr: req.socket.remoteAddress ?? null,
      outcome: "failure",
      status: 400,
      detail: BROKEN,
    });
    next(new HttpError(400, BROKEN));
  };
}
