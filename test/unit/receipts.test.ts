import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ReceiptSigner, ReceiptVerificationError, verifyReceipt, type ReceiptInstance } from "../../src/transfers/receipts.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "receipts-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const instances: ReceiptInstance[] = [
  { sopInstanceUID: "1.2.3.4", studyInstanceUID: "1.2.3", seriesInstanceUID: "1.2.3.1", sha256: "a".repeat(64), size: 1234, state: "received" },
  { sopInstanceUID: "1.2.3.5", studyInstanceUID: null, seriesInstanceUID: null, sha256: "b".repeat(64), size: 99, state: "already-held" },
];

describe("receipt signing key", () => {
  it("is created at first start with mode 0600 and reused afterwards", async () => {
    const keyPath = path.join(dir, "keys", "receipt.pem");
    const first = await ReceiptSigner.loadOrCreate(keyPath);
    expect(fs.statSync(keyPath).mode & 0o777).toBe(0o600);
    const second = await ReceiptSigner.loadOrCreate(keyPath);
    expect(second.keyId).toBe(first.keyId);
    expect(second.publishedKey().x).toBe(first.publishedKey().x);
  });

  it("refuses a key that is not Ed25519", async () => {
    const keyPath = path.join(dir, "rsa.pem");
    const { privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
    fs.writeFileSync(keyPath, privateKey.export({ type: "pkcs8", format: "pem" }));
    await expect(ReceiptSigner.loadOrCreate(keyPath)).rejects.toThrow(/not an Ed25519 key/);
  });

  it("publishes the public key as an OKP JWK and PEM, never the private part", async () => {
    const signer = await ReceiptSigner.loadOrCreate(path.join(dir, "pub.pem"));
    const pub = signer.publishedKey();
    expect(pub).toMatchObject({ kty: "OKP", crv: "Ed25519", alg: "EdDSA", kid: signer.keyId });
    expect(pub.pem).toContain("BEGIN PUBLIC KEY");
    expect(JSON.stringify(pub)).not.toMatch(/PRIVATE|"d":/);
  });
});

describe("receipt verification with only the public key", () => {
  it("accepts a receipt signed by the key, via PEM or JWK", async () => {
    const signer = await ReceiptSigner.loadOrCreate(path.join(dir, "sign.pem"));
    const receipt = signer.sign({ transferId: "t-1", issuedAt: "2024-05-01T10:00:00.000Z", issuer: null, instances });
    const pub = signer.publishedKey();
    const fromPem = verifyReceipt(receipt.jws, pub.pem);
    expect(fromPem).toEqual(receipt.payload);
    expect(fromPem.instances).toEqual(instances);
    expect(fromPem.keyId).toBe(pub.kid);
    expect(verifyReceipt(receipt.jws, { x: pub.x })).toEqual(receipt.payload);
  });

  it("is a standard compact JWS (EdDSA) that plain node:crypto can check", async () => {
    const signer = await ReceiptSigner.loadOrCreate(path.join(dir, "jws.pem"));
    const { jws } = signer.sign({ transferId: "t-2", issuedAt: new Date().toISOString(), issuer: "https://relay.example", instances });
    const [h, p, s] = jws.split(".");
    expect(JSON.parse(Buffer.from(h!, "base64url").toString())).toMatchObject({ alg: "EdDSA", kid: signer.keyId });
    const key = crypto.createPublicKey(signer.publishedKey().pem);
    expect(crypto.verify(null, Buffer.from(`${h}.${p}`), key, Buffer.from(s!, "base64url"))).toBe(true);
  });

  it("refuses an altered payload", async () => {
    const signer = await ReceiptSigner.loadOrCreate(path.join(dir, "alter.pem"));
    const { jws } = signer.sign({ transferId: "t-3", issuedAt: new Date().toISOString(), issuer: null, instances });
    const [h, p, s] = jws.split(".");
    const payload = JSON.parse(Buffer.from(p!, "base64url").toString());
    payload.instances[0].sha256 = "c".repeat(64);
    const forged = `${h}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}.${s}`;
    expect(() => verifyReceipt(forged, signer.publishedKey().pem)).toThrow(ReceiptVerificationError);
  });

  it("refuses a receipt signed by another key", async () => {
    const a = await ReceiptSigner.loadOrCreate(path.join(dir, "a.pem"));
    const b = await ReceiptSigner.loadOrCreate(path.join(dir, "b.pem"));
    const { jws } = a.sign({ transferId: "t-4", issuedAt: new Date().toISOString(), issuer: null, instances });
    expect(() => verifyReceipt(jws, b.publishedKey().pem)).toThrow(/does not match this public key/);
  });

  it("refuses what is not a compact JWS or not EdDSA", async () => {
    const signer = await ReceiptSigner.loadOrCreate(path.join(dir, "shape.pem"));
    expect(() => verifyReceipt("abc.def", signer.publishedKey().pem)).toThrow(/three dot-separated parts/);
    const none = `${Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url")}.e30.`;
    expect(() => verifyReceipt(none, signer.publishedKey().pem)).toThrow(/expected EdDSA/);
  });
});
