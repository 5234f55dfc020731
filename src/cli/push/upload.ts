/**
 * One bundle through tus (tus-js-client, the real client): resumed from its saved upload URL when there is one,
 * retried with growing delays on resets, timeouts and 5xx, restarted when the connection stalls without an error,
 * then the relay's per-entry result read (from the final response or GET on the upload URL).
 */
import crypto from "node:crypto";
import fs from "node:fs";
import * as tus from "tus-js-client";
import { CLIENT_UPLOAD_ID, CLIENT_UPLOAD_ID_HEADER, CLIENT_UPLOAD_ID_OFFER } from "../../transfers/uploadIds.ts";
import { CouldNotRun, RelayError, errorText, retryAfterMs, type RelayApi } from "./http.ts";

export interface UploadEntry {
  name: string;
  status: "stored" | "already-stored" | "replaced" | "failed";
  sopInstanceUID?: string;
  reason?: string;
  message?: string;
}

export interface UploadOutcome {
  state: string;
  counts: { entries: number; stored: number; alreadyStored: number; failed: number };
  entries: UploadEntry[];
  error: string | null;
  /** where the upload's transfer stands after it (a relay of this version says so) */
  transfer?: { id: string; state: string; total: number; present: number; received: number; missing: number; failed: number; complete: boolean };
  /** the transfer's signed receipt, once it is complete */
  receipt?: { jws: string };
}

export interface BundleUploadOptions {
  api: RelayApi;
  endpoint: string;
  file: string;
  /** send only bytes [start, end) of the file (a partial upload of a split bundle) */
  range?: { start: number; end: number };
  /** a partial upload (tus Concatenation): Upload-Concat: partial; the relay does not read it on its own */
  partial?: boolean;
  filename: string;
  transferId: string;
  /** resume this upload (from the state file) */
  uploadUrl?: string;
  /**
   * the relay takes an id proposed by the uploader (X-Dicom-Relay-Upload-Id): the upload's URL is known before its
   * POST is answered, so the bytes go on the creating POST (tus creation-with-upload, a round trip less) and still
   * resume after a cut. uploadUrl then names the proposed URL; it may not exist yet (HEAD 404: created again).
   */
  clientUploadId?: boolean;
  /** with clientUploadId: the upload was never started (no HEAD first; created with the bytes on its POST) */
  fresh?: boolean;
  onUploadUrl(url: string): void;
  onProgress(sent: number, total: number): void;
  /**
   * every byte is on its way: the connection only waits for the relay's answer now (which comes after the relay has
   * read the bundle), so it no longer counts against the connections that send
   */
  onSent?(): void;
  /** a new upload was created (the old URL was gone): progress so far is void */
  onRestart(): void;
  log(line: string): void;
  stallMs: number;
  /** delays between tus retries; the counter starts over whenever bytes got through */
  retryDelays?: number[];
  /** a connection dropped or the relay answered a retryable error (the flow controller counts them) */
  onRetry?(): void;
}

/** 0 s, 1 s, 3 s, 5 s, 10 s, then every 20 s: about 15 minutes of a dead link before this bundle gives up. */
export const DEFAULT_RETRY_DELAYS = [0, 1000, 3000, 5000, 10_000, ...Array.from({ length: 45 }, () => 20_000)];

export function uploadBundle(o: BundleUploadOptions): Promise<UploadOutcome> {
  return uploadFile(o).then(({ url, body }) => bundleResult(o.api, url, body, o.filename));
}

/** The relay's per-entry result of a finished bundle upload: from its last response, else asked at its URL. */
export async function bundleResult(api: RelayApi, url: string, body: string | null, filename: string): Promise<UploadOutcome> {
  if (body) {
    const parsed = JSON.parse(body) as UploadOutcome;
    if (parsed.state === "done") return parsed;
  }
  return waitForResult(api, url, filename);
}

/**
 * The bytes of one upload through tus, resumed from o.uploadUrl when given; resolves when the relay has every byte
 * (with the body of its last answer when that is a JSON result).
 */
export function uploadFile(o: BundleUploadOptions): Promise<{ url: string; body: string | null }> {
  return new Promise<{ url: string; body: string | null }>((resolve, reject) => {
    let lastProgressAt = Date.now();
    let lastSent = -1;
    let lastTotal = 0;
    let url = o.uploadUrl;
    // the proposed id is the last segment of the URL saved for it; an upload not created yet is created with it
    const proposed = o.clientUploadId && o.uploadUrl ? proposedId(o.uploadUrl) : null;
    // the first attempt of an upload that does not exist yet: its bytes go on the creating POST
    const fresh = proposed !== null && o.fresh === true;
    // a ReadStream with start/end: tus-js-client reads that byte range of the file, and slices it again on resume
    const source = o.range ? fs.createReadStream(o.file, { start: o.range.start, end: o.range.end - 1 }) : fs.createReadStream(o.file);
    const upload = new tus.Upload(source, {
      endpoint: o.endpoint,
      uploadUrl: fresh ? null : (o.uploadUrl ?? null),
      metadata: { transferId: o.transferId, filename: o.filename },
      // Upload-Concat and the proposed id only matter on the POST that creates the upload; sent on every request,
      // they are ignored on the others
      headers: {
        ...o.api.authHeaders(),
        ...(o.partial ? { "Upload-Concat": "partial" } : {}),
        ...(proposed ? { [CLIENT_UPLOAD_ID_HEADER]: proposed } : {}),
      },
      // one PATCH (or the creating POST) streams the rest of the file; a reset costs only the bytes in flight
      chunkSize: Number.POSITIVE_INFINITY,
      // tus creation-with-upload only with an id of our own: a POST cut before its answer would otherwise leave an
      // upload whose URL the push never learnt, so its bytes could not be resumed
      uploadDataDuringCreation: proposed !== null,
      // a copy: a Retry-After answer lengthens one of its delays
      retryDelays: [...(o.retryDelays ?? DEFAULT_RETRY_DELAYS)],
      storeFingerprintForResuming: false,
      removeFingerprintOnSuccess: false,
      onShouldRetry(err, attempt, options) {
        const status = err.originalResponse?.getStatus() ?? 0;
        // 401/403/404/413 will not change by waiting
        if (status >= 400 && status < 500 && status !== 408 && status !== 409 && status !== 423 && status !== 429) return false;
        // a busy relay says how long to wait: tus-js-client reads the delay from retryDelays[attempt] right after this
        const wait = retryAfterMs(err.originalResponse?.getHeader("Retry-After") ?? null);
        if (wait !== null && options.retryDelays && attempt < options.retryDelays.length) {
          options.retryDelays[attempt] = Math.max(options.retryDelays[attempt] ?? 0, wait);
        }
        // a creating POST that got no answer: resume at the proposed URL (HEAD: its offset, or 404 and create it
        // again); a second POST with the same id would be refused as taken (409)
        if (proposed && upload.url === null) upload.url = o.uploadUrl!;
        o.onRetry?.();
        o.log(`${o.filename}: the connection dropped (${status ? `HTTP ${status}` : shortError(err)}); resuming${attempt ? ` (attempt ${attempt + 1})` : ""}`);
        return true;
      },
      onUploadUrlAvailable() {
        // the relay's Location may name another host than the endpoint (server.publicUrl): the same upload
        if (upload.url && url && lastSegment(upload.url) === lastSegment(url)) return;
        if (upload.url && upload.url !== url) {
          if (url) o.onRestart();
          url = upload.url;
          o.onUploadUrl(upload.url);
        }
      },
      onProgress(sent, total) {
        if (sent !== lastSent) {
          lastSent = sent;
          lastProgressAt = Date.now();
        }
        lastTotal = total ?? 0;
        o.onProgress(sent, total ?? 0);
        if (lastTotal > 0 && sent >= lastTotal) o.onSent?.();
      },
      onSuccess({ lastResponse }) {
        clearInterval(watchdog);
        const status = lastResponse.getStatus();
        const body = status === 200 || status === 201 ? lastResponse.getBody() : null;
        resolve({ url: upload.url!, body: body && body.trim().startsWith("{") ? body : null });
      },
      onError(err) {
        clearInterval(watchdog);
        const status = (err as tus.DetailedError).originalResponse?.getStatus() ?? 0;
        const text = (err as tus.DetailedError).originalResponse?.getBody() ?? "";
        if (status === 401 || status === 403) reject(new CouldNotRun(`the relay refused the token (${status}): ${errorText(text)}`));
        else if (status) reject(new RelayError(status, `the relay refused ${o.filename} (${status}): ${errorText(text)}`));
        else reject(new Error(`${o.filename} could not be sent: the link kept failing (${shortError(err)}); run the same command again to resume`));
      },
    });
    // A connection that hangs without an error (a response cut mid-body leaves tus-js-client waiting forever):
    // drop it and resume from the relay's offset. Once every byte is sent, waiting for the answer is cut shorter:
    // starting again only asks HEAD (complete) and then reads the result at the upload URL, which is harmless.
    // Kept referenced on purpose: it is what keeps the process alive while a request hangs.
    const watchdog = setInterval(() => {
      const limit = lastTotal > 0 && lastSent >= lastTotal ? Math.min(o.stallMs, 15_000) : o.stallMs;
      if (Date.now() - lastProgressAt < limit) return;
      lastProgressAt = Date.now();
      o.log(`${o.filename}: no progress for ${Math.round(limit / 1000)} s; reconnecting`);
      o.onRetry?.();
      // start again a moment later: the aborted request's own error must arrive while the upload is still marked
      // aborted (tus-js-client ignores it then), or it would start a second flow beside the new one
      void upload.abort(false).then(() => setTimeout(() => upload.start(), 1000));
    }, Math.min(2000, o.stallMs));
    upload.start();
  });
}

/**
 * The final upload of a split bundle (tus Concatenation): POST Upload-Concat: final;<partial> <partial> ... with the
 * metadata a bundle upload has. The relay reads it like a bundle; its result is read at its URL. Creating it a
 * second time (an answer lost on a cut) is harmless: the relay's ingest of the same instances is idempotent.
 */
export async function createFinal(api: RelayApi, endpoint: string, partUrls: string[], meta: { transferId: string; filename: string }): Promise<{ url: string; body: string | null }> {
  const b64 = (v: string) => Buffer.from(v, "utf8").toString("base64");
  // paths, as the tus specification's example has them: the same relay, whichever address reached it
  const parts = partUrls.map((u) => new URL(u, endpoint).pathname);
  const r = await api.request("POST", endpoint, {
    headers: {
      "Tus-Resumable": "1.0.0",
      "Upload-Concat": `final;${parts.join(" ")}`,
      "Upload-Metadata": `transferId ${b64(meta.transferId)},filename ${b64(meta.filename)}`,
    },
  });
  if (r.status === 401 || r.status === 403) throw new CouldNotRun(`the relay refused the token (${r.status}): ${errorText(r.text)}`);
  const location = r.headers.get("location");
  if ((r.status !== 201 && r.status !== 200) || !location) throw new RelayError(r.status, `the relay refused to join the parts of ${meta.filename} (${r.status}): ${errorText(r.text)}`);
  const body = r.text.trim().startsWith("{") ? r.text : null;
  return { url: new URL(location, endpoint).href, body };
}

const lastSegment = (u: string) => new URL(u, "http://x/").pathname.split("/").pop() ?? "";
/** the id proposed for an upload, from the URL saved for it (null: a URL the relay chose) */
function proposedId(u: string): string | null {
  const id = lastSegment(u);
  return CLIENT_UPLOAD_ID.test(id) ? id : null;
}

/** A new upload's URL with an id of the uploader's own (the relay takes it: TusOffer.clientUploadIds). */
export function proposedUploadUrl(endpoint: string): string {
  return `${endpoint.replace(/\/$/, "")}/${crypto.randomBytes(16).toString("hex")}`;
}

/** What the relay's tus endpoint offers this uploader (an OPTIONS request). */
export interface TusOffer {
  /** tus Concatenation: partial uploads and a final */
  concatenation: boolean;
  /** the relay takes an upload id proposed by the uploader (X-Dicom-Relay-Upload-Id) */
  clientUploadIds: boolean;
  /** uploads one token may run at once (X-Dicom-Relay-Uploads-Per-Token, server.maxConcurrentUploadsPerToken); null: not said */
  uploadsPerToken: number | null;
}

export async function tusOffer(api: RelayApi, endpoint: string): Promise<TusOffer> {
  try {
    const r = await api.request("OPTIONS", endpoint, { attempts: 2, timeoutMs: 30_000, headers: { "Tus-Resumable": "1.0.0" } });
    const slots = Number(r.headers.get("x-dicom-relay-uploads-per-token"));
    return {
      concatenation: (r.headers.get("tus-extension") ?? "").split(",").map((x) => x.trim()).includes("concatenation"),
      uploadsPerToken: Number.isInteger(slots) && slots > 0 ? slots : null,
      clientUploadIds: r.headers.get(CLIENT_UPLOAD_ID_OFFER) === "1",
    };
  } catch {
    return { concatenation: false, uploadsPerToken: null, clientUploadIds: false };
  }
}

function shortError(err: Error): string {
  const m = /caused by: ([^\n]+)/.exec(err.message)?.[1] ?? err.message;
  return m.replace(/^Error: /, "").slice(0, 120);
}

/** The relay reads a bundle after its last byte: ask for the result until it is done (bounded). */
export async function waitForResult(api: RelayApi, uploadUrl: string, filename: string, maxMs = 60 * 60_000): Promise<UploadOutcome> {
  const until = Date.now() + maxMs;
  let wait = 250;
  // each turn asks once; the time bound ends the loop
  while (Date.now() < until) {
    const r = await api.request("GET", uploadUrl);
    if (r.status === 200) {
      const j = r.json<UploadOutcome>();
      if (j.state === "done") return j;
    } else if (r.status !== 404) {
      throw new RelayError(r.status, `the relay could not give the result of ${filename} (${r.status}): ${errorText(r.text)}`);
    }
    await new Promise((res) => setTimeout(res, wait));
    wait = Math.min(5000, wait * 2);
  }
  throw new Error(`the relay did not finish reading ${filename} within ${Math.round(maxMs / 60000)} minutes; run the same command again later`);
}
