/**
 * The relay's JSON API as the uploader sees it: every call retried with backoff on resets, timeouts, 429 and 5xx
 * (Retry-After honoured), and every way it can go wrong turned into a sentence for a person who is not an engineer.
 */
import zlib from "node:zlib";
import type { Readable } from "node:stream";

/** The push cannot run at all (exit code 1): wrong address, refused token, relay unreachable. */
export class CouldNotRun extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CouldNotRun";
  }
}

/** The relay answered with an error status that retrying will not change. */
export class RelayError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "RelayError";
  }
}

export interface ApiResponse {
  status: number;
  headers: Headers;
  text: string;
  json<T = unknown>(): T;
}

export interface RequestOptions {
  json?: unknown;
  /** a body made afresh for each attempt (a file stream cannot be sent twice) */
  body?: () => Readable;
  headers?: Record<string, string>;
  /** attempts in all (default 10) */
  attempts?: number;
  timeoutMs?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Seconds (or an HTTP date) of a Retry-After header, as milliseconds capped at max; null when absent or bad. */
export function retryAfterMs(value: string | null, now = Date.now(), max = 120_000): number | null {
  if (!value) return null;
  const s = Number(value);
  if (Number.isFinite(s) && s >= 0) return Math.min(max, s * 1000);
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : Math.min(max, Math.max(0, t - now));
}

/** Delay before retry n (0-based): 1 s, 2 s, 4 s ... capped at 30 s, with a little jitter so parallel calls spread. */
export function backoffMs(n: number, random = Math.random): number {
  return Math.min(30_000, 1000 * 2 ** n) * (0.8 + 0.4 * random());
}

/** Network error codes worth another try (the link, not the request, failed). */
const TRANSIENT = new Set(["ECONNRESET", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "ENETUNREACH", "EHOSTUNREACH", "EAI_AGAIN", "ECONNABORTED", "UND_ERR_SOCKET", "UND_ERR_CONNECT_TIMEOUT", "UND_ERR_HEADERS_TIMEOUT", "UND_ERR_BODY_TIMEOUT", "UND_ERR_CLOSED"]);

export function networkCode(err: unknown): string {
  let e = err as { code?: string; cause?: unknown; name?: string } | undefined;
  // the code sits on the cause chain of fetch's TypeError; a few levels at most
  for (let depth = 0; e && depth < 5; depth++) {
    if (e.name === "TimeoutError" || e.name === "AbortError") return "ETIMEDOUT";
    if (typeof e.code === "string") return e.code;
    e = e.cause as typeof e;
  }
  return "";
}

/** A sentence for a failed connection to the relay. */
export function unreachableSentence(base: string, code: string): string {
  const host = new URL(base).host;
  switch (code) {
    case "ENOTFOUND":
      return `there is no server called ${new URL(base).hostname}: check the relay address (--to ${base})`;
    case "ECONNREFUSED":
      return `nothing answers at ${host}: check the relay address and port (--to ${base}), or the relay is not running`;
    case "ETIMEDOUT":
    case "UND_ERR_CONNECT_TIMEOUT":
      return `the relay at ${host} does not answer (timed out): check the internet connection and the address`;
    case "ERR_SSL_WRONG_VERSION_NUMBER":
    case "ERR_SSL_PACKET_LENGTH_TOO_LONG":
    case "EPROTO":
      // https:// to a server that speaks plain HTTP
      return `the relay at ${host} answers plain HTTP, not HTTPS: give --to http://${host}${new URL(base).pathname.replace(/\/$/, "")} if that is intended (nothing is encrypted then), or ask its administrator to turn HTTPS on (tls.enabled)`;
    case "CERT_HAS_EXPIRED":
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
    case "SELF_SIGNED_CERT_IN_CHAIN":
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "ERR_TLS_CERT_ALTNAME_INVALID":
      return `the relay at ${host} presented a certificate that cannot be trusted (${code}); ask its administrator`;
    default:
      return `the relay at ${host} cannot be reached${code ? ` (${code})` : ""}: check the internet connection and the address`;
  }
}

/** JSON request bodies larger than this are sent gzipped */
const GZIP_REQUEST_FROM = 16 * 1024;

export class RelayApi {
  constructor(
    readonly base: string,
    private readonly token: string | null,
    private readonly log: (line: string) => void = () => {},
  ) {}

  authHeaders(): Record<string, string> {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  /**
   * One call, retried on network errors, 408, 429 and 5xx. Other statuses are returned to the caller as they are.
   * Throws CouldNotRun when the relay could not be reached at all within the attempts.
   */
  async request(method: string, pathOrUrl: string, opts: RequestOptions = {}): Promise<ApiResponse> {
    const url = new URL(pathOrUrl, this.base + "/").href;
    const attempts = opts.attempts ?? 10;
    let lastCode = "";
    for (let n = 0; n < attempts; n++) {
      let res: Response;
      let text: string;
      try {
        const headers: Record<string, string> = { ...this.authHeaders(), ...(opts.headers ?? {}) };
        let body: BodyInit | undefined;
        if (opts.json !== undefined) {
          headers["Content-Type"] = "application/json";
          const text = JSON.stringify(opts.json);
          if (text.length > GZIP_REQUEST_FROM) {
            // a 6,000-instance manifest is 1 MB of JSON, seconds on one flow of a lossy link: gzip halves it
            // (the relay's JSON parser inflates Content-Encoding: gzip)
            headers["Content-Encoding"] = "gzip";
            body = zlib.gzipSync(text, { level: 6 });
          } else {
            body = text;
          }
        } else if (opts.body) {
          const { Readable } = await import("node:stream");
          body = Readable.toWeb(opts.body()) as unknown as BodyInit;
        }
        res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(opts.timeoutMs ?? 120_000), ...(body && opts.body ? { duplex: "half" } : {}) } as RequestInit);
        // inside the try: a connection cut while the answer arrives ("terminated") is a network failure too
        text = await res.text();
      } catch (err) {
        lastCode = networkCode(err);
        if (lastCode === "ENOTFOUND" || (lastCode && !TRANSIENT.has(lastCode) && !lastCode.startsWith("UND_"))) throw new CouldNotRun(unreachableSentence(this.base, lastCode));
        if (n + 1 < attempts) {
          const wait = backoffMs(n);
          this.log(`the connection to the relay failed (${lastCode || (err as Error).message}); trying again in ${Math.round(wait / 1000)} s`);
          await sleep(wait);
        }
        continue;
      }
      const retryable = res.status === 408 || res.status === 429 || res.status >= 500;
      if (retryable && n + 1 < attempts) {
        const wait = retryAfterMs(res.headers.get("retry-after")) ?? backoffMs(n);
        this.log(`the relay answered ${res.status} (${errorText(text) || "busy"}); trying again in ${Math.round(wait / 1000)} s`);
        await sleep(wait);
        continue;
      }
      return {
        status: res.status,
        headers: res.headers,
        text,
        json<T>() {
          return JSON.parse(text) as T;
        },
      };
    }
    throw new CouldNotRun(unreachableSentence(this.base, lastCode));
  }
}

/** The "error" sentence of a relay JSON error body, or the text itself. */
export function errorText(text: string): string {
  try {
    const j = JSON.parse(text) as { error?: unknown };
    if (typeof j.error === "string") return j.error;
  } catch {
    // not JSON: the text as it is
  }
  return text.trim().slice(0, 300);
}
