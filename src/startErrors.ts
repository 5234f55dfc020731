/**
 * Why a relay could not start, as one sentence naming the setting to change (and its environment variable), for
 * the failures a newcomer meets: the port is taken, the data directory cannot be written, the TLS files are not a
 * certificate and key that belong together. Each is a ConfigError: `dicom-relay serve` prints it without a stack.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type https from "node:https";
import { ConfigError, envName, type RelayConfig } from "./config.ts";

const setting = (key: string) => `${key} (${envName(key.split("."))})`;

/** A listen() failure as a sentence, or null when it is not one of the known causes. */
export function listenError(err: unknown, host: string, port: number, portKey: string, hostKey: string): ConfigError | null {
  const code = (err as NodeJS.ErrnoException)?.code;
  const where = `${host}:${port}`;
  switch (code) {
    case "EADDRINUSE":
      return new ConfigError(`port ${port} on ${host} is already in use (another dicom-relay or another program listens there): stop it, or choose another port with ${setting(portKey)}`);
    case "EACCES":
      return new ConfigError(`this user may not listen on ${where}${port < 1024 ? " (ports below 1024 need administrator rights)" : ""}: choose a port from 1024 up with ${setting(portKey)}`);
    case "EADDRNOTAVAIL":
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return new ConfigError(`${host} is not an address of this machine, so nothing can listen on ${where}: set ${setting(hostKey)} to one of its addresses (127.0.0.1, 0.0.0.0 for all)`);
    default:
      return null;
  }
}

/** The data directory exists (or is created) and this user may write it; else one sentence. */
export function checkDataDir(config: Pick<RelayConfig, "dataDir">): void {
  const dir = config.dataDir;
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.R_OK | fs.constants.X_OK);
    // accessSync trusts the mode bits; a read-only mount only shows on a real write
    const probe = path.join(dir, `.write-test-${process.pid}`);
    fs.writeFileSync(probe, "");
    fs.rmSync(probe, { force: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    const why = code === "EACCES" || code === "EPERM" ? "permission denied" : code === "EROFS" ? "read-only file system" : code === "ENOTDIR" || code === "EEXIST" ? "a file, not a folder, is in the way" : code;
    throw new ConfigError(`the data directory ${dir} cannot be used (${why}): set ${setting("dataDir")} to a folder this user may write, or fix its permissions`);
  }
}

/** The certificate and key parse and belong together (checked before anything opens; OpenSSL's own errors are cryptic). */
export function checkTlsPair(tls: https.ServerOptions, config: Pick<RelayConfig, "tls">): void {
  let cert: crypto.X509Certificate;
  try {
    cert = new crypto.X509Certificate(tls.cert as Buffer);
  } catch {
    throw new ConfigError(`${setting("tls.certFile")} ${config.tls.certFile} is not a PEM certificate: give the server certificate ("dicom-relay pki server" makes one)`);
  }
  let key: crypto.KeyObject;
  try {
    key = crypto.createPrivateKey(tls.key as Buffer);
  } catch (err) {
    const encrypted = /passphrase|encrypted/i.test((err as Error).message);
    throw new ConfigError(`${setting("tls.keyFile")} ${config.tls.keyFile} is not ${encrypted ? "an unencrypted" : "a"} PEM private key: give the server certificate's key${encrypted ? " without a passphrase" : ""}`);
  }
  if (!cert.checkPrivateKey(key)) {
    throw new ConfigError(`the TLS key ${config.tls.keyFile} does not belong to the certificate ${config.tls.certFile}: give the key the certificate was made for (${setting("tls.keyFile")})`);
  }
  if (tls.ca) {
    try {
      new crypto.X509Certificate(tls.ca as Buffer);
    } catch {
      throw new ConfigError(`${setting("tls.clientCaFile")} ${config.tls.clientCaFile} is not a PEM certificate: give the relay CA's certificate ("dicom-relay pki init" makes one)`);
    }
  }
}
