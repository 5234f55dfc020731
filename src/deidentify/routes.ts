/**
 * POST /api/studies/{study}/deidentify (admin): a de-identified copy for a second opinion, and optionally a share
 * link for the copy in the same step. GET /api/studies/{study}/deidentified (admin): the copies made of a study.
 * Thin: options from JSON, the service does the work.
 */
import express, { Router, type Request, type RequestHandler } from "express";
import type { RelayConfig } from "../config.ts";
import { HttpError } from "../http/errors.ts";
import { actorOf, noteAudit } from "../access/middleware.ts";
import { shareUrl } from "../access/adminRoutes.ts";
import { expiryFrom, TokenError, type TokenRegistry } from "../access/tokens.ts";
import { isValidUid } from "../dicom/uids.ts";
import type { DeidentifyRequest, DeidentifyService } from "./service.ts";

const flag = (b: Record<string, unknown>, key: string, dflt: boolean): boolean => {
  const v = b[key];
  if (v === undefined) return dflt;
  if (typeof v !== "boolean") throw new HttpError(400, `${key} is true or false`);
  return v;
};

/** The request body as options; every option is named in the answer, so what was applied is explicit. */
export function deidentifyRequestOf(study: string, b: Record<string, unknown>): DeidentifyRequest {
  if (b.pseudonym !== undefined && typeof b.pseudonym !== "string") throw new HttpError(400, "pseudonym is a string");
  if (b.dateOffsetDays !== undefined && typeof b.dateOffsetDays !== "number") throw new HttpError(400, "dateOffsetDays is a number of days");
  if (b.keepPrivateTags !== undefined && (!Array.isArray(b.keepPrivateTags) || b.keepPrivateTags.some((t) => typeof t !== "string"))) {
    throw new HttpError(400, 'keepPrivateTags is a list of private tags, e.g. ["00291010"]');
  }
  return {
    studyInstanceUID: study,
    pseudonym: b.pseudonym as string | undefined,
    retainModifiedDates: flag(b, "retainModifiedDates", true),
    retainPatientCharacteristics: flag(b, "retainPatientCharacteristics", true),
    cleanDescriptors: flag(b, "cleanDescriptors", true),
    dateOffsetDays: b.dateOffsetDays as number | undefined,
    includeBurnedIn: flag(b, "includeBurnedIn", false),
    keepPrivateTags: (b.keepPrivateTags as string[] | undefined) ?? [],
  };
}

export function deidentifyRouter(deps: { config: RelayConfig; service: DeidentifyService; tokens: TokenRegistry; admin: RequestHandler }): Router {
  const { config, service, tokens, admin } = deps;
  const r = Router();
  const study = (req: Request) => {
    const s = String(req.params.study);
    if (!isValidUid(s)) throw new HttpError(400, "the study is not a valid UID");
    return s;
  };
  r.post("/api/studies/:study/deidentify", admin, express.json({ limit: "64kb", type: ["application/json", "application/*+json"] }), async (req, res) => {
    const original = study(req);
    const b = (req.body ?? {}) as Record<string, unknown>;
    if (typeof b !== "object" || Array.isArray(b)) throw new HttpError(400, "the body must be a JSON object");
    const share = b.share as { expires?: unknown; label?: unknown } | undefined | boolean;
    const request = deidentifyRequestOf(original, b);
    noteAudit(res, { action: "study.deidentify", studyInstanceUID: original });
    const outcome = await service.deidentify(request, actorOf(res));
    let link: { id: string; url: string; expiresAt: string | null } | undefined;
    if (share && outcome.copied > 0) {
      const opts = typeof share === "object" ? share : {};
      try {
        const created = await tokens.createShare({
          studies: [outcome.studyInstanceUID],
          label: typeof opts.label === "string" ? opts.label : `second opinion ${outcome.pseudonym}`,
          expiresAt: expiryFrom(typeof opts.expires === "string" ? opts.expires : config.auth.shareDefaultExpiry),
          createdBy: actorOf(res),
        });
        const base = config.server.publicUrl || `${req.protocol}://${req.get("host")}`;
        link = { id: created.info.id, url: shareUrl(base, created.token, config), expiresAt: created.info.expiresAt };
      } catch (err) {
        if (err instanceof TokenError) throw new HttpError(400, `the copy was made (${outcome.studyInstanceUID}) but the share link was not: ${err.message}`);
        throw err;
      }
    }
    noteAudit(res, {
      detail: `de-identified copy ${outcome.studyInstanceUID} (${outcome.id}): ${outcome.copied} instance(s) copied, ${outcome.leftOut.length} left out, ${outcome.failed.length} failed; options ${outcome.options.join(",") || "none"}${link ? `; share link ${link.id}` : ""}`,
    });
    res.status(201).json({ ...outcome, ...(link ? { share: link } : {}) });
  });
  r.get("/api/studies/:study/deidentified", admin, (req, res) => {
    noteAudit(res, { action: "study.deidentify.list", studyInstanceUID: study(req) });
    res.json(service.list(study(req)));
  });
  return r;
}
