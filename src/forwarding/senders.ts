/**
 * How one instance reaches a peer: DIMSE C-STORE on an association (stored bytes, stored transfer syntax) or
 * STOW-RS (one stored Part-10 file per request, streamed from the BlobStore). Each answer is classed:
 * sent (the peer confirmed), retry (the peer is down or busy: try again later) or refused (the peer said no
 * for good: it is not sent again unless an administrator asks).
 */
import http from "node:http";
import https from "node:https";
import crypto from "node:crypto";
import type { Logger } from "pino";
import type { RelayConfig, ForwardRuleConfig } from "../config.ts";
import type { InstanceLocation } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import { Association, AssociationError, peerTlsOptions } from "../dimse/association.ts";
import { statusClass, storageContexts, storeInstance } from "../dimse/retrieve.ts";

export type SendOutcome =
  | { kind: "sent"; status: number }
  | { kind: "retry"; status: number | null; error: string }
  | { kind: "refused"; status: number | null; error: string };

export interface SendSession {
  send(loc: InstanceLocation): Promise<SendOutcome>;
  close(): Promise<void>;
}

export interface Sender {
  /** open a session for these instances; throws when the peer cannot be reached (the job is retried) */
  open(instances: InstanceLocation[]): Promise<SendSession>;
}

export function createSender(rule: ForwardRuleConfig, deps: { config: RelayConfig; store: BlobStore; log: Logger }): Sender {
  return rule.kind === "dimse" ? dimseSender(rule, deps) : stowSender(rule, deps);
}

function dimseSender(rule: ForwardRuleConfig, deps: { config: RelayConfig; store: BlobStore; log: Logger }): Sender {
  const { config } = deps;
  return {
    async open(instances) {
      const peer = config.dimse.peers.find((p) => p.aeTitle === rule.aeTitle && p.port > 0);
      if (!peer) throw new Error(`peer ${rule.aeTitle} is not configured in dimse.peers with a port`);
      const timeoutMs = config.forwarding.requestTimeoutSeconds * 1000;
      const assoc = await Association.connect(
        { host: peer.host, port: peer.port, calledAE: peer.aeTitle, callingAE: config.dimse.aeTitle, ...(peer.tls ? { tls: peerTlsOptions(config.tls) } : {}) },
        storageContexts(instances),
        { maxPduLength: config.dimse.maxPduLength, maxInMemoryDataset: config.dimse.maxIdentifierBytes, idleTimeoutMs: timeoutMs, connectTimeoutMs: config.dimse.connectTimeoutSeconds * 1000, log: deps.log },
      );
      return {
        async send(loc) {
          try {
            const r = await storeInstance(assoc, deps.store, loc);
            const c = statusClass(r.status);
            if (c !== "failure") return { kind: "sent", status: r.status };
            // 0xA7xx: out of resources at the peer, worth another try later
            const transient = (r.status & 0xff00) === 0xa700;
            const error = `C-STORE status 0x${r.status.toString(16).padStart(4, "0")}${r.errorComment ? `: ${r.errorComment}` : ""}`;
            return transient ? { kind: "retry", status: r.status, error } : { kind: "refused", status: r.status, error };
          } catch (err) {
            if (err instanceof AssociationError) return { kind: "retry", status: null, error: err.message };
            throw err;
          }
        },
        async close() {
          if (!assoc.closed) await assoc.release().catch(() => assoc.abort("release failed"));
        },
      };
    },
  };
}

function stowSender(rule: ForwardRuleConfig, deps: { config: RelayConfig; store: BlobStore; log: Logger }): Sender {
  const target = new URL(rule.url.replace(/\/$/, "") + "/studies");
  const timeoutMs = deps.config.forwarding.requestTimeoutSeconds * 1000;
  const client = target.protocol === "https:" ? https : http;
  // one connection per concurrent request (forwarding.concurrency), kept alive between instances
  const agent = new client.Agent({ keepAlive: true, maxSockets: Math.max(1, deps.config.forwarding.concurrency) });
  return {
    async open() {
      return {
        async send(loc) {
          const boundary = `dicom-relay-${crypto.randomBytes(12).toString("hex")}`;
          const head = Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\nContent-Length: ${loc.size}\r\n\r\n`, "latin1");
          const tail = Buffer.from(`\r\n--${boundary}--\r\n`, "latin1");
          let blob;
          try {
            blob = await deps.store.get(loc.blobKey);
          } catch (err) {
            return { kind: "retry", status: null, error: `reading the stored instance failed: ${(err as Error).message}` };
          }
          return new Promise<SendOutcome>((resolve) => {
            const req = client.request(target, {
              method: "POST",
              agent,
              headers: {
                "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
                "Content-Length": String(head.length + loc.size + tail.length),
                Accept: "application/dicom+json",
                ...(rule.token ? { Authorization: `Bearer ${rule.token}` } : {}),
              },
            });
            req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
            req.on("error", (err) => {
              blob.destroy();
              resolve({ kind: "retry", status: null, error: `STOW-RS to ${target.origin} failed: ${err.message}` });
            });
            req.on("response", (res) => {
              let text = "";
              res.setEncoding("utf8");
              res.on("data", (d: string) => {
                if (text.length < 64 * 1024) text += d;
              });
              res.on("error", () => resolve({ kind: "retry", status: res.statusCode ?? null, error: "the response was cut" }));
              res.on("end", () => resolve(classifyStow(res.statusCode ?? 0, text, loc.sopInstanceUID)));
            });
            req.write(head);
            blob.on("error", (err) => req.destroy(err));
            blob.on("end", () => req.end(tail));
            blob.pipe(req, { end: false });
          });
        },
        async close() {},
      };
    },
  };
}

/** STOW-RS answer for one instance: 200/202 sent unless the instance is in FailedSOPSequence; 5xx, 429, 401, 403 retry; other 4xx refused. */
export function classifyStow(status: number, body: string, sopInstanceUID: string): SendOutcome {
  const short = body.replace(/\s+/g, " ").slice(0, 300);
  if (status === 200 || status === 202) {
    try {
      const json = JSON.parse(body) as Record<string, { Value?: Array<Record<string, { Value?: unknown[] }>> }>;
      const failed = json["00081198"]?.Value ?? [];
      const mine = failed.find((f) => f["00081155"]?.Value?.[0] === sopInstanceUID);
      if (mine) return { kind: "refused", status, error: `the peer refused the instance (FailureReason ${String(mine["00081197"]?.Value?.[0] ?? "?")})` };
    } catch {
      // a peer that answers 200 without a DICOM JSON body: taken as stored
    }
    return { kind: "sent", status };
  }
  if (status >= 500 || status === 429 || status === 401 || status === 403 || status === 408) {
    return { kind: "retry", status, error: `STOW-RS answered ${status}: ${short}` };
  }
  return { kind: "refused", status, error: `STOW-RS answered ${status}: ${short}` };
}
