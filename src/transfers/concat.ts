/**
 * tus 1.0 Concatenation (https://tus.io/protocols/resumable-upload#concatenation), which @tus/server 2 does not
 * implement: a client splits one file into *partial* uploads sent over several connections at once, then creates a
 * *final* upload naming them in order. tus-js-client speaks it with `parallelUploads`.
 *
 * What the relay keeps about them travels in the upload's own info (its tus metadata, under reserved keys that
 * HEAD never shows), so both upload stores (fs, S3), recovery at start and every node over a bucket see it:
 *   relay-concat   "partial" or "final"
 *   relayOwner     who created it (every upload, not only partials) (token id, client certificate, or anonymous): a final may join only its own partials
 *   relay-parts    (final) the partial ids, space separated, in order
 *   relay-final    (partial) the final that joined it: a partial belongs to one final only
 *
 * The final keeps no bytes of its own: its bytes are its partials' bytes read one after the other (no copy; see
 * docs/transfers.md for the measured cost of a copy). It is complete from the moment it exists and is ingested like
 * any finished upload; a partial alone is never ingested.
 */
import crypto from "node:crypto";
import { Readable } from "node:stream";
import type { Upload } from "@tus/server";

export const CONCAT_KEY = "relay-concat";
export const OWNER_KEY = "relayOwner";
export const PARTS_KEY = "relay-parts";
export const FINAL_KEY = "relay-final";
/** metadata keys only the relay writes: refused from clients, hidden from HEAD */
export const RESERVED_METADATA_KEYS: readonly string[] = [CONCAT_KEY, OWNER_KEY, PARTS_KEY, FINAL_KEY];

export class ConcatError extends Error {
  constructor(
    readonly status: 400 | 403 | 404 | 409 | 413,
    message: string,
  ) {
    super(message);
    this.name = "ConcatError";
  }
}

export type UploadConcat = { kind: "partial" } | { kind: "final"; ids: string[] };

const ID = /^[A-Za-z0-9_-]{1,128}$/;

/**
 * The Upload-Concat request header: "partial", or "final;" + space-separated partial upload URLs (absolute or
 * relative, each ending in {tusPath}/{id}).
 */
export function parseUploadConcat(header: string, tusPath: string, maxPartials: number): UploadConcat {
  const value = header.trim();
  if (value === "partial") return { kind: "partial" };
  if (!value.startsWith("final;")) {
    throw new ConcatError(400, `Upload-Concat must be "partial" or "final;" followed by the partial upload URLs, not "${value.slice(0, 80)}"`);
  }
  const urls = value.slice("final;".length).trim().split(/ +/).filter(Boolean);
  if (urls.length === 0) throw new ConcatError(400, "Upload-Concat final names no partial upload; list their URLs after \"final;\", separated by spaces");
  if (urls.length > maxPartials) {
    throw new ConcatError(413, `a final upload may join at most ${maxPartials} partial uploads (transfers.maxPartialUploads), this one names ${urls.length}`);
  }
  const ids = urls.map((u) => {
    let p: string;
    try {
      p = new URL(u, "http://relay.invalid").pathname;
    } catch {
      throw new ConcatError(400, `"${u.slice(0, 200)}" in Upload-Concat is not a URL`);
    }
    const prefix = `${tusPath}/`;
    const at = p.lastIndexOf(prefix);
    const id = at >= 0 ? p.slice(at + prefix.length) : "";
    if (!ID.test(id) || !p.endsWith(prefix + id)) {
      throw new ConcatError(404, `"${u.slice(0, 200)}" in Upload-Concat is not an upload URL of this relay (${tusPath}/{id})`);
    }
    return id;
  });
  if (new Set(ids).size !== ids.length) throw new ConcatError(400, "Upload-Concat final names the same partial upload twice");
  return { kind: "final", ids };
}

export const isPartial = (u: Pick<Upload, "metadata">): boolean => u.metadata?.[CONCAT_KEY] === "partial";
export const isFinal = (u: Pick<Upload, "metadata">): boolean => u.metadata?.[CONCAT_KEY] === "final";
export const partsOf = (u: Pick<Upload, "metadata">): string[] => (u.metadata?.[PARTS_KEY] ?? "").split(" ").filter(Boolean);

/** Same owner and same list of partials: the same final id, so a retried final POST finds the final it created. */
export function finalUploadId(owner: string, partIds: readonly string[]): string {
  return crypto.createHash("sha256").update(`${owner}\n${partIds.join(" ")}`).digest("hex").slice(0, 32);
}

/**
 * May this final join this partial? The one place that decides it (the owner check of the hardening work belongs
 * here too): the partial must be a complete partial upload of the same owner, of the same transfer when it names
 * one, and joined by no other final. `partial` is null when no upload has that id.
 */
export function assertPartialBelongsToFinal(
  id: string,
  partial: Pick<Upload, "metadata" | "size" | "offset"> | null,
  final: { id: string; owner: string; transferId: string | null },
): void {
  // another owner's upload answers like an unknown one: its existence is none of this sender's business
  if (!partial || (isPartial(partial) && partial.metadata?.[OWNER_KEY] !== final.owner)) {
    throw new ConcatError(404, `no partial upload ${id} of yours on this relay (it may have expired); create it with Upload-Concat: partial`);
  }
  if (!isPartial(partial)) {
    throw new ConcatError(400, `upload ${id} is not a partial upload (it was created without Upload-Concat: partial), so it cannot be joined into a final upload`);
  }
  const partTransfer = partial.metadata?.transferId || null;
  if (partTransfer && partTransfer !== final.transferId) {
    throw new ConcatError(409, `partial upload ${id} belongs to transfer ${partTransfer}, not to ${final.transferId ?? "an upload without a transfer"}`);
  }
  if (partial.size === undefined || partial.offset !== partial.size) {
    throw new ConcatError(409, `partial upload ${id} is not complete (${partial.offset} of ${partial.size ?? "an undeclared number of"} bytes); finish it (HEAD gives its offset) before creating the final upload`);
  }
  const joined = partial.metadata?.[FINAL_KEY];
  if (joined && joined !== final.id) {
    throw new ConcatError(409, `partial upload ${id} is already joined into another final upload (${joined})`);
  }
}

/** Metadata as HEAD shows it: without the relay's reserved keys. */
export function publicMetadata(metadata: Record<string, string | null> | undefined): Record<string, string | null> | undefined {
  if (!metadata) return metadata;
  const out: Record<string, string | null> = {};
  for (const [k, v] of Object.entries(metadata)) if (!RESERVED_METADATA_KEYS.includes(k)) out[k] = v;
  return out;
}

/** The Upload-Concat response header for an upload, or null for a plain upload. */
export function uploadConcatHeader(metadata: Record<string, string | null> | undefined, tusPath: string): string | null {
  const kind = metadata?.[CONCAT_KEY];
  if (kind === "partial") return "partial";
  if (kind === "final") return `final;${partsOf({ metadata }).map((id) => `${tusPath}/${id}`).join(" ")}`;
  return null;
}

/** The partials' bytes one after another, each opened only when the previous one is read to its end. */
export function concatenated(open: ReadonlyArray<() => Promise<Readable>>): Readable {
  return Readable.from(
    (async function* () {
      for (const next of open) {
        const part = await next();
        try {
          for await (const chunk of part) yield chunk as Buffer;
        } finally {
          part.destroy();
        }
      }
    })(),
    { objectMode: false, highWaterMark: 1024 * 1024 },
  );
}
