import { describe, it, expect, beforeEach, afterEach } from "vitest";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { openAccessDb, type AccessDb } from "../../src/access/db.ts";
import { expiryFrom, hashToken, parseScopes, redactToken, tokenIdOf, TokenError, TokenStore } from "../../src/access/tokens.ts";
import { startAccess } from "../../src/access/index.ts";
import { loadConfig } from "../../src/config.ts";
import { createLogger } from "../../src/logger.ts";
import { newUid } from "../../scripts/lib/synthetic.ts";

describe("tokens", () => {
  let db: AccessDb;
  let tokens: TokenStore;
  beforeEach(() => {
    db = openAccessDb(":memory:");
    tokens = new TokenStore(db);
  });
  afterEach(() => db.close());

  it("a token is drt_<16 hex id>_<256-bit secret>, and only its SHA-256 is stored", () => {
    const { token, info } = tokens.create({ scopes: ["read", "upload"], label: "PACS export", createdBy: "test" });
    expect(token).toMatch(/^drt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    expect(Buffer.from(token.split("_").slice(2).join("_"), "base64url")).toHaveLength(32);
    expect(tokenIdOf(token)).toBe(info.id);
    expect(info.scopes).toEqual(["read", "upload"]);
    const row = db.prepare("SELECT * FROM tokens WHERE id = ?").get(info.id) as Record<string, string>;
    expect(row.hash).toBe(hashToken(token));
    // the secret appears nowhere in the database
    // drt_<id>_<secret>: the secret is base64url and may itself contain "_"
    const secret = token.split("_").slice(2).join("_");
    expect(secret).toHaveLength(43);
    expect(JSON.stringify(db.prepare("SELECT * FROM tokens").all())).not.toContain(secret);
    expect(redactToken(token)).toBe(`drt_${info.id}_…`);
    expect(redactToken(token)).not.toContain(secret);
  });

  it("verifies a valid token and refuses tampered, unknown and malformed ones", () => {
    const { token } = tokens.create({ scopes: ["read"], createdBy: "test" });
    const ok = tokens.verify(token);
    expect(ok.ok).toBe(true);
    // one character of the secret changed
    const last = token.at(-1) === "A" ? "B" : "A";
    const tampered = token.slice(0, -1) + last;
    expect(tokens.verify(tampered)).toMatchObject({ ok: false, reason: "unknown" });
    // the id of another token with this secret
    const other = tokens.create({ scopes: ["read"], createdBy: "test" });
    expect(tokens.verify(`drt_${other.info.id}_${token.slice(21)}`)).toMatchObject({ ok: false, reason: "unknown" });
    for (const bad of ["", "Bearer x", "drt_123_abc", token + "x", token.replace("drt_", "drs_"), "../../etc/passwd"]) {
      expect(tokens.verify(bad).ok).toBe(false);
    }
  });

  it("expired and revoked tokens are refused with the reason", () => {
    const past = tokens.create({ scopes: ["read"], expiresAt: new Date(Date.now() - 1000).toISOString(), createdBy: "test" });
    expect(tokens.verify(past.token)).toMatchObject({ ok: false, reason: "expired", tokenId: past.info.id });
    const soon = tokens.create({ scopes: ["read"], expiresAt: expiryFrom("1h"), createdBy: "test" });
    expect(tokens.verify(soon.token).ok).toBe(true);
    expect(tokens.verify(soon.token, new Date(Date.now() + 2 * 3600_000))).toMatchObject({ ok: false, reason: "expired" });
    const revoked = tokens.create({ scopes: ["admin"], createdBy: "test" });
    expect(tokens.revoke(revoked.info.id, "tester")?.revokedBy).toBe("tester");
    expect(tokens.verify(revoked.token)).toMatchObject({ ok: false, reason: "revoked" });
    expect(tokens.revoke("0000000000000000", "tester")).toBeNull();
    expect(tokens.list().map((t) => t.id)).not.toContain(revoked.info.id);
    expect(tokens.list({ includeRevoked: true }).map((t) => t.id)).toContain(revoked.info.id);
  });

  it("share links: drs_ tokens with their studies, no scopes; refuse bad UIDs", () => {
    const a = newUid();
    const b = newUid();
    const { token, info } = tokens.createShare({ studies: [a, b, a], label: "second opinion", createdBy: "test" });
    expect(token).toMatch(/^drs_/);
    expect(info.kind).toBe("share");
    expect(info.scopes).toEqual([]);
    expect(info.studies).toEqual([a, b].sort());
    const check = tokens.verify(token);
    expect(check.ok && check.token.studies).toEqual([a, b].sort());
    expect(() => tokens.createShare({ studies: [], createdBy: "t" })).toThrow(TokenError);
    expect(() => tokens.createShare({ studies: ["1.2.3/../4"], createdBy: "t" })).toThrow(/not a valid StudyInstanceUID/);
  });

  it("parses scopes and expiry specs, refusing anything else", () => {
    expect(parseScopes("upload, READ")).toEqual(["read", "upload"]);
    expect(() => parseScopes("read,write")).toThrow(/unknown scope "write"/);
    expect(() => parseScopes("")).toThrow(/at least one scope/);
    const now = new Date("2030-01-01T00:00:00Z");
    expect(expiryFrom("30d", now)).toBe("2030-01-31T00:00:00.000Z");
    expect(expiryFrom("12h", now)).toBe("2030-01-01T12:00:00.000Z");
    expect(expiryFrom("never", now)).toBeNull();
    expect(expiryFrom(undefined, now)).toBeNull();
    expect(expiryFrom("2030-02-01", now)).toBe("2030-02-01T00:00:00.000Z");
    expect(() => expiryFrom("2020-01-01", now)).toThrow(/already past/);
    expect(() => expiryFrom("tomorrow", now)).toThrow(/not an expiry/);
    expect(() => expiryFrom("0d", now)).toThrow(/not an expiry/);
  });
});

describe("first start and auth.enabled=false", () => {
  function capture() {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    return { lines, log: createLogger("info", stream) };
  }

  it("creates one admin token on the first start only (once the relay listens), never logs it, and keeps only its hash", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "access-first-"));
    try {
      const config = loadConfig({ env: {}, overrides: { dataDir } });
      expect(config.auth.enabled).toBe(true);
      const { lines, log } = capture();
      const first = startAccess({ config, log });
      // made only when the relay calls for it, after its listener is up (a start that cannot listen makes none)
      expect(first.initialAdminToken).toBeNull();
      const token = (await first.createInitialAdminToken())!;
      expect(first.initialAdminToken).toBe(token);
      expect(token).toMatch(/^drt_/);
      const check = first.tokens.verify(token);
      expect(check.ok && check.token.scopes).toEqual(["read", "upload", "admin", "metrics"]);
      expect(lines.join("")).not.toContain(token.slice(21));
      expect(lines.join("")).toContain("initial admin token");
      first.close();
      const second = startAccess({ config, log });
      expect(await second.createInitialAdminToken()).toBeNull();
      expect(second.tokens.list()).toHaveLength(1);
      second.close();
      const raw = fs.readFileSync(path.join(dataDir, "access.sqlite"));
      expect(raw.includes(Buffer.from(token.slice(21)))).toBe(false);
      expect(fs.statSync(path.join(dataDir, "access.sqlite")).mode & 0o077).toBe(0);
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it("running without auth is an explicit setting that logs a warning at every start and creates no token", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "access-off-"));
    try {
      const config = loadConfig({ env: { DICOM_RELAY_AUTH_ENABLED: "false" }, overrides: { dataDir } });
      for (let i = 0; i < 2; i++) {
        const { lines, log } = capture();
        const a = startAccess({ config, log });
        expect(await a.createInitialAdminToken()).toBeNull();
        const warning = lines.map((l) => JSON.parse(l) as { level: number; msg: string }).find((l) => /authentication is DISABLED/.test(l.msg));
        expect(warning?.level).toBe(40);
        a.close();
      }
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
