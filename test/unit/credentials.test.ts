import { describe, it, expect } from "vitest";
import { parseAuthorization } from "../../src/access/credentials.ts";

const basic = (s: string) => `Basic ${Buffer.from(s, "utf8").toString("base64")}`;
const TOKEN = "drt_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

describe("parseAuthorization", () => {
  it("Bearer: the token as given, scheme name in any case", () => {
    expect(parseAuthorization(`Bearer ${TOKEN}`)).toEqual({ ok: true, scheme: "bearer", token: TOKEN });
    expect(parseAuthorization(`bearer   ${TOKEN} `)).toEqual({ ok: true, scheme: "bearer", token: TOKEN });
  });

  it("Basic: the password is the token, any user name (even empty, even with colons in the password)", () => {
    for (const user of ["orthanc", "", "dcm4chee-arc", "Ünïcode"]) {
      expect(parseAuthorization(basic(`${user}:${TOKEN}`))).toEqual({ ok: true, scheme: "basic", token: TOKEN });
    }
    expect(parseAuthorization(basic("u:a:b"))).toEqual({ ok: true, scheme: "basic", token: "a:b" });
    // padding is optional; a pasted token's trailing newline is dropped
    expect(parseAuthorization(basic(`x:${TOKEN}`).replace(/=+$/, ""))).toMatchObject({ ok: true, token: TOKEN });
    expect(parseAuthorization(basic(`x:${TOKEN}\n`))).toMatchObject({ ok: true, token: TOKEN });
    expect(parseAuthorization(`BASIC ${Buffer.from(`x:${TOKEN}`).toString("base64")}`)).toMatchObject({ ok: true, scheme: "basic" });
  });

  it("bad Basic credentials are refused with a sentence that says what to send", () => {
    const cases: [string, RegExp][] = [
      ["Basic", /not base64/],
      ["Basic !!!notbase64", /not base64/],
      ["Basic dXNlcjpwYXNz extra", /not base64/],
      ["Basic A", /not base64/],
      [basic("no-colon-here"), /no colon/],
      [basic("user:"), /empty password/],
      [basic("user:  "), /empty password/],
    ];
    for (const [header, why] of cases) {
      const r = parseAuthorization(header);
      expect(r.ok, header).toBe(false);
      if (!r.ok) {
        expect(r.scheme).toBe("basic");
        expect(r.message, header).toMatch(why);
      }
    }
  });

  it("no header, an empty Bearer or another scheme: refused, naming both schemes", () => {
    for (const header of [undefined, "", "  "]) {
      const r = parseAuthorization(header);
      expect(r).toMatchObject({ ok: false, scheme: null });
      if (!r.ok) expect(r.message).toMatch(/Bearer <token>, or Basic with the token as the password/);
    }
    expect(parseAuthorization("Bearer")).toMatchObject({ ok: false, scheme: "bearer" });
    expect(parseAuthorization("Bearer a b")).toMatchObject({ ok: false, scheme: "bearer" });
    const digest = parseAuthorization('Digest username="x"');
    expect(digest).toMatchObject({ ok: false, scheme: null });
    if (!digest.ok) expect(digest.message).toMatch(/Digest authorization scheme is not accepted/);
  });

  it("messages never echo the credential", () => {
    for (const header of [basic(`u${TOKEN}`), `Bearer ${TOKEN} x`, `Token ${TOKEN}`]) {
      const r = parseAuthorization(header);
      if (!r.ok) expect(r.message).not.toContain(TOKEN.slice(21));
    }
  });
});
