// Talks to the relay with the signed-in token; turns refusals into sentences a coordinator understands.
const TOKEN_KEY = "dicom-relay.token";

export const session = { token: sessionStorage.getItem(TOKEN_KEY), info: null };

export function setToken(token) {
  session.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function authHeaders() {
  return session.token ? { Authorization: `Bearer ${session.token}` } : {};
}

const upperFirst = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);
const sentence = (s) => (/[.!?]$/.test(s) ? s : s + ".");

/** A refusal of the relay as a sentence for a person (the relay's own reason included). */
export function explain(status, reason) {
  const why = reason ? sentence(upperFirst(reason)) : "";
  switch (status) {
    case 0: return "The relay could not be reached. Check the network connection and try again.";
    case 401: return `The relay did not accept the access token. ${why} Sign in again with a valid token.`;
    case 403: return `Your access token is not allowed to do this. ${why} Ask the relay's administrator for a token with the right permissions.`;
    case 413: return `The file is too large for the relay. ${why}`;
    case 503: return `The relay is busy or its storage is unavailable right now. ${why} Please try again in a minute.`;
    default:
      if (status >= 500) return `The relay ran into a problem (error ${status}). ${why} Please try again; if it keeps happening, tell the relay's administrator.`;
      return why || `The relay refused the request (error ${status}).`;
  }
}

async function reasonOf(res) {
  try {
    const body = await res.json();
    return typeof body?.error === "string" ? body.error : "";
  } catch {
    return "";
  }
}

/** fetch with the token; JSON in and out; throws ApiError with a sentence. */
export async function api(path, { method = "GET", json, body, headers = {}, accept } = {}) {
  const h = { ...authHeaders(), ...headers };
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  if (accept) h.Accept = accept;
  let res;
  try {
    res = await fetch(path, { method, headers: h, body, cache: "no-store" });
  } catch {
    throw new ApiError(0, explain(0));
  }
  if (!res.ok) {
    const err = new ApiError(res.status, explain(res.status, await reasonOf(res)));
    if (res.status === 401 && onUnauthorized) onUnauthorized(err);
    throw err;
  }
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

let onUnauthorized = null;
export function whenUnauthorized(f) {
  onUnauthorized = f;
}
