import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import {
  initPki,
  issueClientCert,
  issueServerCert,
  listIssued,
  normalizeSerial,
  PkiError,
  pkiPaths,
  readRevoked,
  revokeClientCert,
  type PkiPaths,
} from "../../src/access/pki.ts";
import { RevocationList } from "../../src/access/tls.ts";

describe("relay PKI (node-forge certificates, PKCS#12)", () => {
  let dir: string;
  let p: PkiPaths;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "pki-"));
    p = pkiPaths(path.join(dir, "pki"));
    initPki(p, { hosts: ["relay.example.org", "127.0.0.1"] });
  }, 60_000);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("init creates a CA and a server certificate that chains to it, keys readable by the owner only", () => {
    const ca = new crypto.X509Certificate(fs.readFileSync(p.caCert));
    const server = new crypto.X509Certificate(fs.readFileSync(p.serverCert));
    expect(ca.ca).toBe(true);
    expect(ca.verify(ca.publicKey)).toBe(true);
    expect(server.ca).toBe(false);
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(server.checkIssued(ca)).toBe(true);
    expect(server.subjectAltName).toMatch(/DNS:relay\.example\.org/);
    expect(server.subjectAltName).toMatch(/IP Address:127\.0\.0\.1/);
    expect(server.checkHost("relay.example.org")).toBe("relay.example.org");
    expect(server.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(server.keyUsage).toContain("1.3.6.1.5.5.7.3.1"); // serverAuth
    for (const key of [p.caKey, p.serverKey]) expect(fs.statSync(key).mode & 0o077).toBe(0);
    // the private key matches the certificate
    const key = crypto.createPrivateKey(fs.readFileSync(p.serverKey));
    expect(crypto.createPublicKey(key).export({ format: "pem", type: "spki" })).toBe(server.publicKey.export({ format: "pem", type: "spki" }));
  });

  it("refuses a second init (it would orphan every client certificate) unless forced", () => {
    expect(() => initPki(p)).toThrow(PkiError);
    expect(() => initPki(p)).toThrow(/already exists/);
  });

  it("issues a client certificate as a password-protected PKCS#12 that Node's TLS loads only with the password", () => {
    const { p12, cert } = issueClientCert(p, { name: "Ruijin Hospital gateway", organization: "Ruijin", password: "correct horse battery", iterations: 2048 });
    expect(() => tls.createSecureContext({ pfx: p12, passphrase: "correct horse battery" })).not.toThrow();
    expect(() => tls.createSecureContext({ pfx: p12, passphrase: "wrong password!" })).toThrow();
    expect(() => tls.createSecureContext({ pfx: p12 })).toThrow();
    expect(cert.subject).toBe("CN=Ruijin Hospital gateway,O=Ruijin");
    expect(listIssued(p).map((c) => c.serial)).toContain(cert.serial);
    // the key is not stored in clear in the file
    expect(p12.includes(Buffer.from("BEGIN"))).toBe(false);
  });

  it("the issued certificate is a client-auth leaf signed by the relay CA", () => {
    const { certPem, cert } = issueClientCert(p, { name: "Hospital B", password: "another password", iterations: 2048 });
    const x = new crypto.X509Certificate(certPem);
    const ca = new crypto.X509Certificate(fs.readFileSync(p.caCert));
    expect(x.verify(ca.publicKey)).toBe(true);
    expect(x.ca).toBe(false);
    expect(x.keyUsage).toContain("1.3.6.1.5.5.7.3.2"); // clientAuth
    expect(normalizeSerial(x.serialNumber)).toBe(cert.serial);
    expect(Date.parse(x.validTo)).toBeGreaterThan(Date.now() + 800 * 86400_000);
  });

  it("revokes by serial or by unique name; the revoked list is what the relay reads", () => {
    const one = issueClientCert(p, { name: "To Revoke", password: "password123", iterations: 2048 }).cert;
    const two = issueClientCert(p, { name: "Revoke By Name", password: "password123", iterations: 2048 }).cert;
    const list = new RevocationList(p.revoked);
    expect(list.has(one.serial)).toBe(false);
    revokeClientCert(p, one.serial.toUpperCase(), "laptop stolen");
    revokeClientCert(p, "Revoke By Name");
    expect(readRevoked(p.revoked).revoked.map((r) => r.serial).sort()).toEqual([one.serial, two.serial].sort());
    // the list notices the file changed (the relay keeps running while pki revoke writes it)
    expect(list.has(one.serial)).toBe(true);
    expect(list.has("00" + two.serial.toUpperCase())).toBe(true);
    expect(listIssued(p).find((c) => c.serial === one.serial)?.revocationReason).toBe("laptop stolen");
    expect(() => revokeClientCert(p, "nobody")).toThrow(/no client certificate/);
  });

  it("refuses weak inputs and a missing CA with sentences", () => {
    expect(() => issueClientCert(p, { name: "x", password: "short" })).toThrow(/at least 8/);
    expect(() => issueClientCert(p, { name: "", password: "long enough" })).toThrow(/needs a name/);
    const empty = pkiPaths(path.join(dir, "nothing-here"));
    expect(() => issueServerCert(empty)).toThrow(/pki init/);
    expect(() => issueClientCert(empty, { name: "x", password: "long enough" })).toThrow(/pki init/);
    fs.writeFileSync(path.join(dir, "broken.json"), '{"oops": 1}');
    expect(() => new RevocationList(path.join(dir, "broken.json")).has("01")).toThrow(/revoked-certificate list/);
  });
});
