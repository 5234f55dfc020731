/**
 * The relay's small PKI: a relay CA, the HTTPS server certificate, client certificates for sending hospitals
 * (delivered as password-protected PKCS#12 files) and their revocation.
 *
 * node-forge builds the X.509 certificates and the PKCS#12 files (node:crypto cannot); keys, random serials
 * and passwords come from node:crypto. Files in the PKI directory:
 *   ca-key.pem (0600)  ca-cert.pem  server-key.pem (0600)  server-cert.pem
 *   issued.json   every client certificate issued (serial, subject, validity, revocation)
 *   revoked.json  the revoked serials the relay checks at each upload (written atomically)
 * The CA key is only needed to issue certificates: it can live on another machine (pki --dir there) as
 * long as the relay gets ca-cert.pem, its server certificate and revoked.json.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { createRequire } from "node:module";
import type Forge from "node-forge";

// node-forge (~12 MB resident) is needed only to make certificates and PKCS#12 files (the CLI), not by a running relay
let forgeModule: typeof Forge | undefined;
const forgeLib = (): typeof Forge => (forgeModule ??= createRequire(import.meta.url)("node-forge") as typeof Forge);

export interface PkiPaths {
  dir: string;
  caKey: string;
  caCert: string;
  serverKey: string;
  serverCert: string;
  issued: string;
  revoked: string;
}

export function pkiPaths(dir: string, overrides: Partial<Omit<PkiPaths, "dir">> = {}): PkiPaths {
  const d = path.resolve(dir);
  return {
    dir: d,
    caKey: path.join(d, "ca-key.pem"),
    caCert: path.join(d, "ca-cert.pem"),
    serverKey: path.join(d, "server-key.pem"),
    serverCert: path.join(d, "server-cert.pem"),
    issued: path.join(d, "issued.json"),
    revoked: path.join(d, "revoked.json"),
    ...overrides,
  };
}

export interface IssuedCert {
  serial: string;
  subject: string;
  name: string;
  organization: string | null;
  issuedAt: string;
  notAfter: string;
  revokedAt: string | null;
  revocationReason: string | null;
}

export interface RevokedList {
  /** lower-case hex, no leading zeros */
  revoked: { serial: string; subject: string | null; revokedAt: string; reason: string | null }[];
}

export class PkiError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PkiError";
  }
}

/** Serials compare as lower-case hex without leading zeros (Node prints upper case, some tools pad). */
export function normalizeSerial(serial: string): string {
  const s = serial.replace(/[:\s]/g, "").toLowerCase().replace(/^0+/, "");
  return s || "0";
}

/** 128 random bits, positive as DER INTEGER requires (top bit clear, never zero-led). */
function randomSerial(): string {
  const b = crypto.randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x10;
  return b.toString("hex");
}

function rsaKeyPair(bits: number): { forgeKey: Forge.pki.rsa.PrivateKey; forgePublic: Forge.pki.rsa.PublicKey; pem: string } {
  const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: bits, publicExponent: 0x10001 });
  const pem = privateKey.export({ type: "pkcs1", format: "pem" }) as string;
  const forgeKey = forgeLib().pki.privateKeyFromPem(pem) as Forge.pki.rsa.PrivateKey;
  return { forgeKey, forgePublic: forgeLib().pki.setRsaPublicKey(forgeKey.n, forgeKey.e), pem };
}

function writeFileAtomic(file: string, data: string | Buffer, mode = 0o644): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString("hex")}.tmp`;
  fs.writeFileSync(tmp, data, { mode, flag: "wx" });
  fs.renameSync(tmp, file);
}

function validity(cert: Forge.pki.Certificate, days: number): void {
  const now = new Date();
  // a little slack for clocks that are slightly behind
  cert.validity.notBefore = new Date(now.getTime() - 5 * 60 * 1000);
  cert.validity.notAfter = new Date(now.getTime() + days * 86400 * 1000);
}

export function subjectString(attrs: { shortName?: string; value?: unknown }[]): string {
  return attrs.map((a) => `${a.shortName}=${String(a.value)}`).join(",");
}

function loadCa(p: PkiPaths): { key: Forge.pki.rsa.PrivateKey; cert: Forge.pki.Certificate } {
  if (!fs.existsSync(p.caKey) || !fs.existsSync(p.caCert)) {
    throw new PkiError(`no relay CA in ${p.dir}: run "dicom-relay pki init" first (or give --dir where the CA key is)`);
  }
  return {
    key: forgeLib().pki.privateKeyFromPem(fs.readFileSync(p.caKey, "utf8")) as Forge.pki.rsa.PrivateKey,
    cert: forgeLib().pki.certificateFromPem(fs.readFileSync(p.caCert, "utf8")),
  };
}

export interface InitOptions {
  /** names the server certificate is valid for (DNS names and IP addresses) */
  hosts?: string[];
  caName?: string;
  caDays?: number;
  serverDays?: number;
  /** replace an existing CA (every client certificate it issued stops working) */
  force?: boolean;
}

/** Create the relay CA and a server certificate signed by it. */
export function initPki(p: PkiPaths, opts: InitOptions = {}): { caSubject: string; serverSubject: string; hosts: string[] } {
  if (fs.existsSync(p.caCert) && !opts.force) {
    throw new PkiError(`a relay CA already exists in ${p.dir}; use "pki server" to re-issue the server certificate, or --force to replace the CA (every client certificate it issued then stops working)`);
  }
  fs.mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  const ca = rsaKeyPair(3072);
  const caCert = forgeLib().pki.createCertificate();
  caCert.publicKey = ca.forgePublic;
  caCert.serialNumber = randomSerial();
  validity(caCert, opts.caDays ?? 3650);
  const caAttrs = [{ shortName: "CN", value: opts.caName ?? "dicom-relay CA" }, { shortName: "O", value: "dicom-relay" }];
  caCert.setSubject(caAttrs);
  caCert.setIssuer(caAttrs);
  caCert.setExtensions([
    { name: "basicConstraints", cA: true, pathLenConstraint: 0, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, critical: true },
    { name: "subjectKeyIdentifier" },
  ]);
  caCert.sign(ca.forgeKey, forgeLib().md.sha256.create());
  writeFileAtomic(p.caKey, ca.pem, 0o600);
  writeFileAtomic(p.caCert, forgeLib().pki.certificateToPem(caCert));
  if (opts.force) {
    // a new CA: certificates of the old one no longer chain, and their serials mean nothing
    writeFileAtomic(p.issued, "[]\n");
    writeFileAtomic(p.revoked, JSON.stringify({ revoked: [] }, null, 2) + "\n");
  }
  const server = issueServerCert(p, { hosts: opts.hosts, days: opts.serverDays });
  return { caSubject: subjectString(caCert.subject.attributes), serverSubject: server.subject, hosts: server.hosts };
}

/** (Re-)issue the HTTPS server certificate from the relay CA. */
export function issueServerCert(p: PkiPaths, opts: { hosts?: string[]; days?: number } = {}): { subject: string; hosts: string[]; serial: string } {
  const ca = loadCa(p);
  const hosts = [...new Set((opts.hosts?.length ? opts.hosts : ["localhost", "127.0.0.1", "::1"]).map((h) => h.trim()).filter(Boolean))];
  const key = rsaKeyPair(2048);
  const cert = forgeLib().pki.createCertificate();
  cert.publicKey = key.forgePublic;
  cert.serialNumber = randomSerial();
  // public TLS clients refuse server certificates valid for more than ~398 days
  validity(cert, opts.days ?? 397);
  cert.setSubject([{ shortName: "CN", value: hosts[0]! }, { shortName: "O", value: "dicom-relay" }]);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    // clientAuth too: the relay presents this certificate when it calls a DICOM peer over TLS
    { name: "extKeyUsage", serverAuth: true, clientAuth: true },
    { name: "subjectAltName", altNames: hosts.map((h) => (net.isIP(h) ? { type: 7, ip: h } : { type: 2, value: h })) },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(ca.key, forgeLib().md.sha256.create());
  writeFileAtomic(p.serverKey, key.pem, 0o600);
  writeFileAtomic(p.serverCert, forgeLib().pki.certificateToPem(cert));
  return { subject: subjectString(cert.subject.attributes), hosts, serial: cert.serialNumber };
}

export interface IssueOptions {
  /** the sending hospital or system, e.g. "Ruijin Hospital PACS gateway" (the certificate's CN) */
  name: string;
  organization?: string;
  days?: number;
  /** protects the PKCS#12 file; give a strong one or let the caller generate it */
  password: string;
  /** PBKDF2 / PKCS#12 MAC iterations (forge supports < 65536) */
  iterations?: number;
}

/** Issue a client certificate and return it as a PKCS#12 file (key + certificate + CA certificate). */
export function issueClientCert(p: PkiPaths, opts: IssueOptions): { p12: Buffer; cert: IssuedCert; certPem: string } {
  const name = opts.name.trim();
  if (!name || name.length > 64) throw new PkiError("the client certificate needs a name (CN) of 1 to 64 characters");
  if (opts.password.length < 8) throw new PkiError("the PKCS#12 password must be at least 8 characters");
  const ca = loadCa(p);
  const key = rsaKeyPair(2048);
  const cert = forgeLib().pki.createCertificate();
  cert.publicKey = key.forgePublic;
  cert.serialNumber = randomSerial();
  validity(cert, opts.days ?? 825);
  const subject = [{ shortName: "CN", value: name }, ...(opts.organization ? [{ shortName: "O", value: opts.organization }] : [])];
  cert.setSubject(subject);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", clientAuth: true },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(ca.key, forgeLib().md.sha256.create());
  const asn1 = forgeLib().pkcs12.toPkcs12Asn1(key.forgeKey, [cert, ca.cert], opts.password, {
    algorithm: "aes256",
    count: Math.min(opts.iterations ?? 50_000, 65_535),
    friendlyName: name,
  });
  const p12 = Buffer.from(forgeLib().asn1.toDer(asn1).getBytes(), "binary");
  const issued: IssuedCert = {
    serial: normalizeSerial(cert.serialNumber),
    subject: subjectString(cert.subject.attributes),
    name,
    organization: opts.organization ?? null,
    issuedAt: new Date().toISOString(),
    notAfter: cert.validity.notAfter.toISOString(),
    revokedAt: null,
    revocationReason: null,
  };
  writeFileAtomic(p.issued, JSON.stringify([...listIssued(p), issued], null, 2) + "\n");
  return { p12, cert: issued, certPem: forgeLib().pki.certificateToPem(cert) };
}

export function listIssued(p: PkiPaths): IssuedCert[] {
  if (!fs.existsSync(p.issued)) return [];
  const list = JSON.parse(fs.readFileSync(p.issued, "utf8")) as IssuedCert[];
  if (!Array.isArray(list)) throw new PkiError(`${p.issued} is not a list of issued certificates`);
  return list;
}

export function readRevoked(file: string): RevokedList {
  if (!fs.existsSync(file)) return { revoked: [] };
  const parsed = JSON.parse(fs.readFileSync(file, "utf8")) as RevokedList;
  if (!parsed || !Array.isArray(parsed.revoked)) throw new PkiError(`${file} is not a revoked-certificate list ({"revoked": [...]})`);
  return parsed;
}

/** Revoke a client certificate by serial (hex) or by its exact name (CN; must be unique among unrevoked). */
export function revokeClientCert(p: PkiPaths, serialOrName: string, reason?: string): IssuedCert {
  const issued = listIssued(p);
  const wanted = /^[0-9a-fA-F:]+$/.test(serialOrName) ? normalizeSerial(serialOrName) : null;
  let matches = issued.filter((c) => (wanted !== null && c.serial === wanted));
  if (!matches.length) matches = issued.filter((c) => c.name === serialOrName && !c.revokedAt);
  if (!matches.length) throw new PkiError(`no client certificate with serial or name "${serialOrName}" was issued from ${p.dir} (see pki list)`);
  if (matches.length > 1) throw new PkiError(`${matches.length} certificates are named "${serialOrName}": revoke by serial (see pki list)`);
  const target = matches[0]!;
  const now = new Date().toISOString();
  const list = readRevoked(p.revoked);
  if (!list.revoked.some((r) => normalizeSerial(r.serial) === target.serial)) {
    list.revoked.push({ serial: target.serial, subject: target.subject, revokedAt: now, reason: reason ?? null });
    writeFileAtomic(p.revoked, JSON.stringify(list, null, 2) + "\n");
  }
  if (!target.revokedAt) {
    target.revokedAt = now;
    target.revocationReason = reason ?? null;
    writeFileAtomic(p.issued, JSON.stringify(issued, null, 2) + "\n");
  }
  return target;
}

/** A password for a PKCS#12 file: 144 random bits, typed or pasted easily (base64url). */
export function generatePassword(): string {
  return crypto.randomBytes(18).toString("base64url");
}
