/**
 * Signed delivery receipts: proof, kept by the sending hospital, that the relay stored these instances with these
 * hashes at this time. A receipt is a compact JWS (RFC 7515) with alg EdDSA (RFC 8037, Ed25519 via node:crypto),
 * so any JOSE library, or the few lines of verifyReceipt below, can check it with the relay's public key alone.
 */
import crypto, { type KeyObject } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";

/** Where the relay publishes its receipt key (public: anyone holding a receipt must be able to check it). */
export const RECEIPT_KEY_PATH = "/.well-known/dicom-relay/receipt-key";

export const RECEIPT_FORMAT = "dicom-relay-receipt/1";

export interface ReceiptInstance {
  sopInstanceUID: string;
  studyInstanceUID: string | null;
  seriesInstanceUID: string | null;
  sha256: string;
  size: number;
  /** received: sent in this transfer; already-held: the relay had identical bytes before the manifest arrived */
  state: "received" | "already-held";
}

/** What the relay signs. */
export interface ReceiptPayload {
  format: typeof RECEIPT_FORMAT;
  transferId: string;
  /** ISO time the receipt was issued (the transfer completed) */
  issuedAt: string;
  /** base URL of the relay that issued it (server.publicUrl), null when not configured */
  issuer: string | null;
  /** key id of the signing key (see the well-known route) */
  keyId: string;
  instances: ReceiptInstance[];
}

export interface SignedReceipt {
  /** the signed payload, decoded, for reading */
  payload: ReceiptPayload;
  /** compact JWS: base64url(header).base64url(payload).base64url(signature); the payload bytes are what count */
  jws: string;
}

/** The public key as a JWK (RFC 8037 OKP) plus PEM, as served at the well-known route. */
export interface PublishedKey {
  kty: "OKP";
  crv: "Ed25519";
  alg: "EdDSA";
  use: "sig";
  kid: string;
  x: string;
  pem: string;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString("base64url");

/** Key id: first 16 bytes of the SHA-256 of the public key's SPKI DER, base64url (stable across restarts). */
export function keyIdOf(publicKey: KeyObject): string {
  const der = publicKey.export({ type: "spki", format: "der" });
  return crypto.createHash("sha256").update(der).digest().subarray(0, 16).toString("base64url");
}

export class ReceiptSigner {
  readonly keyId: string;
  private constructor(private readonly privateKey: KeyObject, readonly publicKey: KeyObject) {
    this.keyId = keyIdOf(publicKey);
  }

  /** Loads the key at keyPath, or creates it (mode 0600) at first start. */
  static async loadOrCreate(keyPath: string): Promise<ReceiptSigner> {
    let pem: string;
    try {
      pem = await fsp.readFile(keyPath, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      await fsp.mkdir(path.dirname(keyPath), { recursive: true, mode: 0o700 });
      const { privateKey } = crypto.generateKeyPairSync("ed25519");
      pem = privateKey.export({ type: "pkcs8", format: "pem" }) as string;
      try {
        // wx: two relays starting on one data directory must not overwrite each other's key
        fs.writeFileSync(keyPath, pem, { flag: "wx", mode: 0o600 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        pem = await fsp.readFile(keyPath, "utf8");
      }
    }
    return ReceiptSigner.fromPem(pem, keyPath);
  }

  /** A signer from a PKCS#8 PEM private key (where: named in the error when it is not Ed25519). */
  static fromPem(pem: string, where = "in use"): ReceiptSigner {
    const privateKey = crypto.createPrivateKey(pem);
    if (privateKey.asymmetricKeyType !== "ed25519") {
      throw new Error(`the receipt key ${where} is not an Ed25519 key`);
    }
    return new ReceiptSigner(privateKey, crypto.createPublicKey(privateKey));
  }

  /** A new Ed25519 private key as PKCS#8 PEM. */
  static generatePem(): string {
    return crypto.generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  }

  publishedKey(): PublishedKey {
    const jwk = this.publicKey.export({ format: "jwk" }) as { x: string };
    return {
      kty: "OKP",
      crv: "Ed25519",
      alg: "EdDSA",
      use: "sig",
      kid: this.keyId,
      x: jwk.x,
      pem: this.publicKey.export({ type: "spki", format: "pem" }) as string,
    };
  }

  sign(payload: Omit<ReceiptPayload, "format" | "keyId">): SignedReceipt {
    const full: ReceiptPayload = {
      format: RECEIPT_FORMAT,
      transferId: payload.transferId,
      issuedAt: payload.issuedAt,
      issuer: payload.issuer,
      keyId: this.keyId,
      instances: payload.instances,
    };
    const header = b64url(JSON.stringify({ alg: "EdDSA", typ: "JWT", kid: this.keyId, cty: RECEIPT_FORMAT }));
    const body = b64url(JSON.stringify(full));
    const signature = crypto.sign(null, Buffer.from(`${header}.${body}`), this.privateKey);
    return { payload: full, jws: `${header}.${body}.${b64url(signature)}` };
  }
}

export class ReceiptVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReceiptVerificationError";
  }
}

/**
 * Checks a receipt's JWS against a public key (PEM, JWK {kty:"OKP",crv:"Ed25519",x}, or KeyObject) and returns the
 * signed payload. Throws ReceiptVerificationError with a sentence when anything does not hold.
 */
export function verifyReceipt(jws: string, key: string | { x: string } | KeyObject): ReceiptPayload {
  const publicKey =
    typeof key === "string"
      ? crypto.createPublicKey(key)
      : "x" in key
        ? crypto.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: key.x }, format: "jwk" })
        : key;
  const parts = jws.split(".");
  if (parts.length !== 3) throw new ReceiptVerificationError("the receipt is not a compact JWS (three dot-separated parts)");
  const [h, p, s] = parts as [string, string, string];
  let header: { alg?: string };
  try {
    header = JSON.parse(Buffer.from(h, "base64url").toString("utf8"));
  } catch {
    throw new ReceiptVerificationError("the receipt's JWS header is not base64url JSON");
  }
  if (header.alg !== "EdDSA") throw new ReceiptVerificationError(`the receipt is signed with ${header.alg}, expected EdDSA`);
  if (!crypto.verify(null, Buffer.from(`${h}.${p}`), publicKey, Buffer.from(s, "base64url"))) {
    throw new ReceiptVerificationError("the receipt's signature does not match this public key: it was altered or signed by another key");
  }
  const payload = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as ReceiptPayload;
  if (payload.format !== RECEIPT_FORMAT) throw new ReceiptVerificationError(`unknown receipt format ${String(payload.format)}`);
  return payload;
}
