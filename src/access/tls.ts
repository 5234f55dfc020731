/**
 * HTTPS serving and client certificates (mTLS) for sending hospitals.
 *
 * The server asks for a client certificate only when uploads require one, and never fails the handshake
 * on its own (rejectUnauthorized false): reading routes stay usable with a token alone, and the upload
 * routes check the certificate per request (chains to the relay CA, in its validity period, serial not
 * in the revoked list), so a refusal is an HTTP answer with a sentence and an audit row, not a bare reset.
 */
import fs from "node:fs";
import type https from "node:https";
import type { TLSSocket, PeerCertificate } from "node:tls";
import type { Request } from "express";
import { ConfigError, type RelayConfig } from "../config.ts";
import { normalizeSerial, readRevoked } from "./pki.ts";

export function tlsServerOptions(tls: RelayConfig["tls"]): https.ServerOptions {
  const read = (file: string, what: string) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new ConfigError(`tls.enabled is set but the ${what} ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); run "dicom-relay pki init" or set the tls file keys`);
    }
  };
  const opts: https.ServerOptions = {
    cert: read(tls.certFile, "server certificate (tls.certFile)"),
    key: read(tls.keyFile, "server key (tls.keyFile)"),
    minVersion: "TLSv1.2",
  };
  if (tls.requireClientCertForUpload) {
    opts.ca = read(tls.clientCaFile, "client CA certificate (tls.clientCaFile)");
    opts.requestCert = true;
    opts.rejectUnauthorized = false;
  }
  return opts;
}

export interface ClientCertificate {
  subject: string;
  serial: string;
  /** chains to the relay CA and is in its validity period (checked by OpenSSL during the handshake) */
  authorized: boolean;
  authorizationError: string | null;
}

/** The certificate the client presented on this connection, or null (plain HTTP, or none sent). */
export function clientCertificate(req: Request): ClientCertificate | null {
  const socket = req.socket as TLSSocket;
  if (!socket.encrypted || typeof socket.getPeerCertificate !== "function") return null;
  const cert = socket.getPeerCertificate() as PeerCertificate | Record<string, never>;
  if (!cert || !("subject" in cert) || !cert.subject) return null;
  const subject = Object.entries(cert.subject)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("+") : String(v)}`)
    .join(",");
  const err = socket.authorizationError as unknown;
  return {
    subject,
    serial: normalizeSerial(cert.serialNumber ?? ""),
    authorized: socket.authorized === true,
    authorizationError: socket.authorized ? null : err instanceof Error ? err.message : err ? String(err) : "not verified",
  };
}

/** The revoked-serials file, re-read whenever it changes (pki revoke writes it while the relay runs). */
export class RevocationList {
  private serials = new Set<string>();
  private seen: string | null = null;

  constructor(private readonly file: string) {}

  has(serial: string): boolean {
    this.refresh();
    return this.serials.has(normalizeSerial(serial));
  }

  private refresh(): void {
    let stamp: string;
    try {
      const st = fs.statSync(this.file);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      stamp = "absent";
    }
    if (stamp === this.seen) return;
    // a broken list throws: uploads are refused rather than accepted with an unreadable revocation list
    const list = readRevoked(this.file);
    this.serials = new Set(list.revoked.map((r) => normalizeSerial(r.serial)));
    this.seen = stamp;
  }
}

export type ClientCertCheck = { ok: true; cert: ClientCertificate } | { ok: false; cert: ClientCertificate | null; message: string };

export function checkClientCertificate(req: Request, revoked: RevocationList): ClientCertCheck {
  const cert = clientCertificate(req);
  if (!cert) {
    const plain = !(req.socket as TLSSocket).encrypted;
    return {
      ok: false,
      cert: null,
      message: plain
        ? "uploads to this relay need HTTPS with a client certificate issued by the relay CA"
        : "uploads to this relay need a client certificate issued by the relay CA; none was presented",
    };
  }
  if (!cert.authorized) {
    return { ok: false, cert, message: `the client certificate ${cert.subject} was not accepted (${cert.authorizationError}); it must be issued by this relay's CA and be within its validity period` };
  }
  let isRevoked: boolean;
  try {
    isRevoked = revoked.has(cert.serial);
  } catch (err) {
    return { ok: false, cert, message: `the relay cannot read its revoked-certificate list (${(err as Error).message}); uploads are refused until it is fixed` };
  }
  if (isRevoked) return { ok: false, cert, message: `the client certificate ${cert.subject} (serial ${cert.serial}) has been revoked` };
  return { ok: true, cert };
}
