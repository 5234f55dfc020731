/**
 * The credential in an `Authorization` header: `Bearer <token>` (RFC 6750) or `Basic base64(user:token)`
 * (RFC 7617), because many PACS DICOMweb clients (Orthanc's DicomWeb.Servers "Username"/"Password", dcm4chee's
 * web application with basic auth, most vendor PACS) can only send Basic. With Basic the token is the password;
 * the user name is free (it names nothing here and is never checked). Pure: the caller verifies the token.
 */

export type AuthScheme = "bearer" | "basic";

export type PresentedCredential =
  | { ok: true; scheme: AuthScheme; token: string }
  /** scheme null: no header, or a scheme this relay does not take */
  | { ok: false; scheme: AuthScheme | null; message: string };

/** token68 in the standard base64 alphabet (RFC 7617 uses RFC 4648 section 4), padding optional */
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const SEND = "send Authorization: Bearer <token>, or Basic with the token as the password (any user name)";

export function parseAuthorization(header: string | undefined): PresentedCredential {
  if (header === undefined || header.trim() === "") return { ok: false, scheme: null, message: `this relay needs a token: ${SEND}` };
  const m = /^\s*([A-Za-z]+)(?:[ ]+(.*?))?\s*$/.exec(header);
  const scheme = m?.[1]?.toLowerCase();
  const rest = m?.[2] ?? "";
  if (scheme === "bearer") {
    if (!/^[^\s]+$/.test(rest)) return { ok: false, scheme: "bearer", message: "the Bearer credential is empty or has spaces in it: send Authorization: Bearer <token>" };
    return { ok: true, scheme: "bearer", token: rest };
  }
  if (scheme === "basic") {
    if (!BASE64.test(rest) || rest.replace(/=+$/, "").length % 4 === 1) {
      return { ok: false, scheme: "basic", message: "the Basic credentials are not base64: send Authorization: Basic base64(user:token)" };
    }
    const decoded = Buffer.from(rest, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon < 0) return { ok: false, scheme: "basic", message: "the Basic credentials have no colon between user name and password: send base64(user:token)" };
    // the token never holds white space; a pasted token often carries a trailing newline
    const token = decoded.slice(colon + 1).trim();
    if (token === "") return { ok: false, scheme: "basic", message: "the Basic credentials have an empty password: the password must be the relay token (the user name can be anything)" };
    return { ok: true, scheme: "basic", token };
  }
  return { ok: false, scheme: null, message: `the ${m?.[1] ?? "given"} authorization scheme is not accepted: ${SEND}` };
}
