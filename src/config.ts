/**
 * One typed configuration: built-in defaults <- config file (JSON) <- environment (DICOM_RELAY_*).
 * Every key can be set from the environment: the path storage.s3.accessKey is DICOM_RELAY_STORAGE_S3_ACCESS_KEY.
 * Invalid configuration fails at start with a sentence naming the key.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";

/** the OHIF release scripts/install-ohif.sh installs by default (docs/viewer.md) */
export const OHIF_VERSION = "3.13.2";

const conflictPolicy = z.enum(["reject", "keep-first", "replace"]);
/** PS3.5 AE: 1 to 16 characters, no backslash or control characters, not only spaces */
const aeTitle = z.string().regex(/^(?! *$)[\x20-\x5b\x5d-\x7e]{1,16}$/, "an AE title is 1 to 16 printable characters, no backslash").refine((s) => s === s.trim(), "an AE title has no leading or trailing spaces");
const peerSchema = z
  .object({
    aeTitle,
    /** IP address the peer connects from and is reached at (or "localhost") */
    host: z.string().min(1),
    /** the peer's own DICOM port, for C-MOVE destinations and forwarding; 0 = the relay never calls it */
    port: z.number().int().min(0).max(65535).default(0),
    /** "all": every study; "granted": only studies shared with this AE (dicom-relay token share --peer) */
    studies: z.enum(["all", "granted"]).default("granted"),
    /** may send instances in with C-STORE */
    store: z.boolean().default(false),
    /** the relay calls this peer (C-MOVE, forwarding) over DICOM TLS, presenting its own certificate */
    tls: z.boolean().default(false),
    /**
     * after sending this peer instances (C-MOVE destination, forwarding by C-STORE) ask it to commit to storing them
     * (Storage Commitment Push Model, N-ACTION); its N-EVENT-REPORT counts as delivery for retention
     */
    storageCommitment: z.boolean().default(false),
  })
  .strict();
export type DimsePeerConfig = z.infer<typeof peerSchema>;
const forwardRuleSchema = z
  .object({
    /** names the rule in the API and the logs */
    name: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/),
    kind: z.enum(["dimse", "stow"]),
    /** dimse: the peer's AE title, configured in dimse.peers with host and port */
    aeTitle: z.string().default(""),
    /** stow: the peer's DICOMweb root (STOW-RS goes to {url}/studies) */
    url: z.string().default(""),
    /** stow: bearer token sent to the peer (empty: none) */
    token: z.string().default(""),
  })
  .strict();
export type ForwardRuleConfig = z.infer<typeof forwardRuleSchema>;

export const configSchema = z
  .object({
    server: z
      .object({
        host: z.string().min(1),
        port: z.number().int().min(0).max(65535),
        /** externally visible base URL (behind a proxy); default http://host:port */
        publicUrl: z.string().url().or(z.literal("")),
        /** largest accepted HTTP header block, bytes */
        maxHeaderBytes: z.number().int().min(1024),
        /** a request's headers must all arrive within this time, else the connection is closed */
        headersTimeoutSeconds: z.number().min(0.5),
        /** a request body that sends no byte this long ends its request (tus uploads keep what arrived) */
        bodyIdleTimeoutSeconds: z.number().min(0.5),
        /** uploads (STOW-RS, tus PATCH/POST with a body, documents) running at once; more get 503 + Retry-After */
        maxConcurrentUploads: z.number().int().min(1),
        /** the same, per token (or client certificate, or anonymous without auth) */
        maxConcurrentUploadsPerToken: z.number().int().min(1),
        /** "lean": V8 sized for memory (peak RSS ~half under load, src/memoryProfile.ts); "node-defaults": V8 as Node starts it */
        memoryProfile: z.enum(["lean", "node-defaults"]),
      })
      .strict(),
    /** where the embedded defaults keep everything (blobs, SQLite, tus uploads, temp files) */
    dataDir: z.string().min(1),
    log: z.object({ level: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]) }).strict(),
    storage: z
      .object({
        kind: z.enum(["fs", "s3"]),
        fs: z.object({ root: z.string() }).strict(),
        s3: z
          .object({
            endpoint: z.string(),
            region: z.string(),
            accessKey: z.string(),
            secretKey: z.string(),
            bucket: z.string(),
            prefix: z.string(),
            pathStyle: z.boolean(),
            createBucket: z.boolean(),
            /** part size for multipart uploads, bytes */
            partSize: z.number().int().min(5 * 1024 * 1024),
            /** kept-alive connections to the backend per pool (object downloads; everything else), at most */
            maxConnections: z.number().int().min(1).max(4096),
            readCacheBytes: z.number().int().min(0).optional(),
          })
          .strict(),
      })
      .strict(),
    index: z
      .object({
        kind: z.enum(["sqlite", "postgres"]),
        sqlite: z.object({ path: z.string() }).strict(),
        postgres: z.object({ url: z.string(), poolSize: z.number().int().min(1) }).strict(),
      })
      .strict(),
    ingest: z
      .object({
        /** what to do when a known SOPInstanceUID arrives with different bytes */
        conflictPolicy,
        /** largest single instance accepted, bytes */
        maxInstanceBytes: z.number().int().min(1024),
        /** largest header (everything but bulk data) parsed into memory, bytes */
        maxHeaderBytes: z.number().int().min(4096),
        /** binary values at least this long are bulk data (BulkDataURI), not inline */
        bulkDataThreshold: z.number().int().min(0),
        /** largest report (PDF, JPEG, PNG) attached through /api/studies/{study}/documents, bytes */
        maxDocumentBytes: z.number().int().min(1024),
      })
      .strict(),
    dicomweb: z
      .object({
        /** path prefix of the DICOMweb root */
        root: z.string().regex(/^\/[A-Za-z0-9/_-]*[A-Za-z0-9_-]$/),
        /** QIDO limit when the client gives none, and the most it may ask for */
        defaultLimit: z.number().int().min(1),
        maxLimit: z.number().int().min(1),
        /** most distinct frames one WADO-RS frames request may name (a frame named twice is sent once) */
        maxFramesPerRequest: z.number().int().min(1),
      })
      .strict(),
    admin: z
      .object({
        /** enable DELETE routes and other admin routes (guarded by the admin scope once tokens exist) */
        enableDelete: z.boolean(),
      })
      .strict(),
    transfers: z
      .object({
        /** path of the tus 1.0 endpoint; GET {tusPath}/{id} answers the upload's result */
        tusPath: z.string().regex(/^\/[A-Za-z0-9/_-]*[A-Za-z0-9_-]$/),
        /** where unfinished tus uploads are kept (local disk); default dataDir/uploads */
        uploadDir: z.string(),
        /** largest tus upload (a single file or a whole bundle), bytes; larger is refused with 413 */
        maxUploadBytes: z.number().int().min(1024),
        /** with storage.kind=s3: tus uploads (bytes, .info, results) live in the storage bucket, not in uploadDir */
        s3: z
          .object({
            /** key prefix of tus uploads, under storage.s3.prefix; kept apart from instances/ */
            prefix: z
              .string()
              .regex(/^([A-Za-z0-9._-]+\/)*[A-Za-z0-9._-]+\/?$/, "slash-separated letters, digits, '.', '_' or '-', e.g. uploads/")
              .refine((p) => !p.split("/").some((seg) => seg === "." || seg === ".."), "no '.' or '..' segments"),
            /** preferred S3 part size of an upload, bytes (S3: at least 5 MiB except the last part) */
            partSize: z.number().int().min(5 * 1024 * 1024).max(5 * 1024 * 1024 * 1024),
          })
          .strict(),
        /** who may write one upload at a time: memory (one node) or PostgreSQL advisory locks (several nodes) */
        locker: z
          .object({
            /** auto: postgres when index.kind=postgres, else memory */
            kind: z.enum(["auto", "memory", "postgres"]),
            /** a request waits this long for an upload held by another request (which is asked to let go) */
            acquireTimeoutSeconds: z.number().int().min(1),
          })
          .strict(),
        /** an upload not finished this long after its creation is removed and its disk space freed */
        expirationSeconds: z.number().int().min(1),
        /** how often abandoned uploads are looked for */
        cleanupIntervalSeconds: z.number().int().min(1),
        /** the final PATCH waits this long for the ingest result; then the client reads GET {tusPath}/{id} */
        finishWaitSeconds: z.number().int().min(0),
        /** tus concatenation: most partial uploads one final upload may join */
        maxPartialUploads: z.number().int().min(1).max(10_000),
        /** most instances one transfer manifest may list */
        maxManifestInstances: z.number().int().min(1),
        /** Ed25519 key that signs receipts (PKCS#8 PEM, created at first start); default dataDir/keys/receipt-ed25519.pem */
        receiptKeyPath: z.string(),
        bundle: z
          .object({
            /** most entries in one bundle */
            maxEntries: z.number().int().min(1),
            /** most bytes all entries of one bundle may expand to */
            maxTotalBytes: z.number().int().min(1024),
            /** largest expanded/compressed ratio accepted (gzip / zip bomb guard) */
            maxCompressionRatio: z.number().min(1),
            /** entries refused (not DICOM, damaged ...) before the whole bundle is refused */
            maxFailedEntries: z.number().int().min(0),
          })
          .strict(),
      })
      .strict(),
    auth: z
      .object({
        /** false = no authentication at all (explicit choice; a warning is logged at every start) */
        enabled: z.boolean(),
        /** realm named in WWW-Authenticate */
        realm: z.string().regex(/^[A-Za-z0-9 ._-]+$/),
        /** lifetime of a share link when none is given: 90m, 12h, 7d ... */
        shareDefaultExpiry: z.string().regex(/^[1-9][0-9]*[smhd]$/),
        /** live share links (viewer links included) one token may have minted; more are refused (429) */
        maxShareLinksPerToken: z.number().int().min(1),
      })
      .strict(),
    tls: z
      .object({
        /** serve HTTPS with certFile/keyFile */
        enabled: z.boolean(),
        /** where `dicom-relay pki` keeps the relay CA, server certificate and client list; default dataDir/pki */
        pkiDir: z.string(),
        /** server certificate / key (PEM); default pkiDir/server-cert.pem, pkiDir/server-key.pem */
        certFile: z.string(),
        keyFile: z.string(),
        /** CA that issues hospital client certificates (PEM); default pkiDir/ca-cert.pem */
        clientCaFile: z.string(),
        /** revoked client certificate serials, checked at each upload; default pkiDir/revoked.json */
        revokedFile: z.string(),
        /** upload routes (STOW-RS, tus, transfers) also need a valid, unrevoked client certificate */
        requireClientCertForUpload: z.boolean(),
      })
      .strict(),
    dimse: z
      .object({
        /** run the DICOM node (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) beside the HTTP server */
        enabled: z.boolean(),
        host: z.string().min(1),
        port: z.number().int().min(0).max(65535),
        /** the relay's own AE title: associations calling another title are refused */
        aeTitle: aeTitle,
        /** largest PDU the relay accepts (announced to peers): bounds what one read holds in memory, bytes */
        maxPduLength: z.number().int().min(4096).max(16 * 1024 * 1024),
        /** associations open at once; more are refused (transient, local limit exceeded) */
        maxAssociations: z.number().int().min(1),
        /** an association silent this long is aborted */
        idleTimeoutSeconds: z.number().int().min(1),
        /** how long to wait for a peer when the relay opens an association (C-MOVE, forwarding) */
        connectTimeoutSeconds: z.number().int().min(1),
        /** largest C-FIND identifier, bytes */
        maxIdentifierBytes: z.number().int().min(1024),
        /** most C-FIND matches answered; beyond, the search ends with 0xA700 (narrow the query) */
        maxFindResults: z.number().int().min(1),
        /** DICOM TLS with the relay PKI (tls.certFile/keyFile, peers' certificates issued by tls.clientCaFile) */
        tls: z.boolean(),
        /** the only AEs allowed to associate (a JSON array in DICOM_RELAY_DIMSE_PEERS) */
        peers: z.preprocess((v) => {
          if (typeof v !== "string") return v;
          try {
            return JSON.parse(v);
          } catch {
            return v;
          }
        }, z.array(peerSchema)),
      })
      .strict()
      .superRefine((d, ctx) => {
        const seen = new Set<string>();
        d.peers.forEach((p, i) => {
          if (seen.has(p.aeTitle)) ctx.addIssue({ code: "custom", path: ["peers", i, "aeTitle"], message: `AE title "${p.aeTitle}" is configured twice` });
          seen.add(p.aeTitle);
        });
      }),
    forwarding: z
      .object({
        /** send completed transfers on to the peers of the rules below, by themselves */
        enabled: z.boolean(),
        /** one rule per peer (a JSON array in DICOM_RELAY_FORWARDING_RULES) */
        rules: z.preprocess((v) => {
          if (typeof v !== "string") return v;
          try {
            return JSON.parse(v);
          } catch {
            return v;
          }
        }, z.array(forwardRuleSchema)),
        /** first wait after a failed attempt; doubles up to maxRetrySeconds */
        retrySeconds: z.number().min(0.05),
        maxRetrySeconds: z.number().min(0.05),
        /** how often due work is looked for (also woken at once when a transfer completes) */
        pollSeconds: z.number().min(0.05),
        /** how long one STOW-RS request or DIMSE association may take before it counts as failed */
        requestTimeoutSeconds: z.number().int().min(1),
        /** STOW-RS requests (connections) in flight at once per job: several flows fill a long, lossy link */
        concurrency: z.number().int().min(1).max(64),
      })
      .strict()
      .superRefine((f, ctx) => {
        const seen = new Set<string>();
        f.rules.forEach((r, i) => {
          if (seen.has(r.name)) ctx.addIssue({ code: "custom", path: ["rules", i, "name"], message: `rule name "${r.name}" is used twice` });
          seen.add(r.name);
          if (r.kind === "dimse" && !r.aeTitle) ctx.addIssue({ code: "custom", path: ["rules", i, "aeTitle"], message: "a dimse rule names the peer's AE title (one of dimse.peers, with a port)" });
          if (r.kind === "stow" && !r.url) ctx.addIssue({ code: "custom", path: ["rules", i, "url"], message: "a stow rule needs the peer's DICOMweb root URL" });
        });
      }),
    console: z
      .object({
        /** serve the web console (sign in with a token, send a study, list studies, share links, documents) */
        enabled: z.boolean(),
        /** path the console is served under */
        path: z.string().regex(/^\/[A-Za-z0-9/_-]*[A-Za-z0-9_-]$/),
      })
      .strict(),
    viewer: z
      .object({
        /** folder holding OHIF's static build (scripts/install-ohif.sh); default ~/.cache/dicom-relay/ohif-3.13.2 */
        ohifDir: z.string(),
        /** path OHIF's static files are served under (the share viewer pages load them from here) */
        assetsPath: z.string().regex(/^\/[A-Za-z0-9/_-]*[A-Za-z0-9_-]$/),
        /** lifetime of the short share link the console creates to open a study in the viewer */
        linkExpiry: z.string().regex(/^[1-9][0-9]*[smhd]$/),
      })
      .strict(),
    retention: z
      .object({
        /** delete studies by the policy below (per study overrides: a transfer's manifest, PUT /api/studies/{study}/retention) */
        enabled: z.boolean(),
        /** days after every instance of a study was delivered (WADO-RS retrieve, C-MOVE/C-GET, forwarding, storage commitment); 0 = not by delivery */
        afterDeliveryDays: z.number().int().min(0),
        /** days after a study last received an instance, delivered or not; 0 = not by age */
        afterArrivalDays: z.number().int().min(0),
        /** how often the sweep looks for studies due */
        sweepIntervalMinutes: z.number().int().min(1),
      })
      .strict(),
    metrics: z
      .object({
        /** GET /metrics (Prometheus text format) on the main listener, for tokens with the metrics or admin scope */
        enabled: z.boolean(),
        /** a separate listener that serves only GET /metrics without a token; 0 = none. Bind it to a private address */
        port: z.number().int().min(0).max(65535),
        host: z.string().min(1),
      })
      .strict(),
    encryption: z
      .object({
        /** encrypt blobs at rest (AES-256-GCM in 64 KiB chunks) */
        enabled: z.boolean(),
        /** file holding the current 256-bit key (base64 or hex); preferred over key */
        keyFile: z.string(),
        /** the current key itself (base64 or hex), e.g. from a secret store via the environment */
        key: z.string(),
        /** older keys still needed to read objects written before a rotation: key files, comma separated */
        previousKeyFiles: z.string(),
      })
      .strict(),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.tls.requireClientCertForUpload && !c.tls.enabled) {
      ctx.addIssue({ code: "custom", path: ["tls", "requireClientCertForUpload"], message: "client certificates need HTTPS: set tls.enabled too" });
    }
    c.forwarding.rules.forEach((r, i) => {
      if (r.kind === "dimse" && r.aeTitle && !c.dimse.peers.some((p) => p.aeTitle === r.aeTitle && p.port > 0)) {
        ctx.addIssue({ code: "custom", path: ["forwarding", "rules", i, "aeTitle"], message: `"${r.aeTitle}" is not in dimse.peers with a port` });
      }
    });
    if (c.transfers.locker.kind === "postgres" && c.index.kind !== "postgres") {
      ctx.addIssue({ code: "custom", path: ["transfers", "locker", "kind"], message: "the postgres locker uses the index database: set index.kind=postgres too (or locker kind auto/memory)" });
    }
    // the console and the viewer's files are served without a token: their paths must not shadow a guarded route
    const guarded = [c.dicomweb.root, c.transfers.tusPath, "/api", "/share", "/.well-known", "/healthz", "/readyz"];
    for (const [key, p] of [["console", c.console.path], ["viewer", c.viewer.assetsPath]] as const) {
      const clash = guarded.find((g) => { const a = p.toLowerCase(), b = g.toLowerCase(); return a === b || a.startsWith(b + "/") || b.startsWith(a + "/"); });
      if (clash) ctx.addIssue({ code: "custom", path: [key, key === "console" ? "path" : "assetsPath"], message: `${p} overlaps ${clash}, which needs a token; choose another path` });
    }
    if (c.console.path.toLowerCase() === c.viewer.assetsPath.toLowerCase()) {
      ctx.addIssue({ code: "custom", path: ["viewer", "assetsPath"], message: "the viewer and the console need different paths" });
    }
    if (c.encryption.enabled && !c.encryption.keyFile && !c.encryption.key) {
      ctx.addIssue({ code: "custom", path: ["encryption", "keyFile"], message: "encryption is enabled but no key is configured (encryption.keyFile or encryption.key)" });
    }
  });

export type RelayConfig = z.infer<typeof configSchema>;

/** The local directory for spooled uploads, documents and other files on their way into storage (swept at start). */
export const spoolDir = (config: Pick<RelayConfig, "dataDir">): string => path.join(config.dataDir, "tmp");

export function defaultConfig(): RelayConfig {
  return {
    server: {
      host: "127.0.0.1",
      port: 8042,
      publicUrl: "",
      maxHeaderBytes: 16 * 1024,
      headersTimeoutSeconds: 30,
      bodyIdleTimeoutSeconds: 60,
      maxConcurrentUploads: 256,
      maxConcurrentUploadsPerToken: 64,
      memoryProfile: "lean",
    },
    dataDir: "./data",
    log: { level: "info" },
    storage: {
      kind: "fs",
      fs: { root: "" },
      s3: {
        endpoint: "",
        region: "us-east-1",
        accessKey: "",
        secretKey: "",
        bucket: "dicom-relay",
        prefix: "",
        pathStyle: true,
        createBucket: true,
        partSize: 16 * 1024 * 1024,
        maxConnections: 256,
        readCacheBytes: 64 * 1024 * 1024,
      },
    },
    index: { kind: "sqlite", sqlite: { path: "" }, postgres: { url: "", poolSize: 10 } },
    ingest: {
      conflictPolicy: "reject",
      maxInstanceBytes: 4 * 1024 * 1024 * 1024,
      maxHeaderBytes: 64 * 1024 * 1024,
      bulkDataThreshold: 1024,
      maxDocumentBytes: 100 * 1024 * 1024,
    },
    dicomweb: { root: "/dicom-web", defaultLimit: 1000, maxLimit: 10000, maxFramesPerRequest: 1000 },
    admin: { enableDelete: true },
    transfers: {
      tusPath: "/api/uploads",
      uploadDir: "",
      s3: { prefix: "uploads/", partSize: 8 * 1024 * 1024 },
      locker: { kind: "auto", acquireTimeoutSeconds: 30 },
      maxUploadBytes: 64 * 1024 * 1024 * 1024,
      expirationSeconds: 3 * 24 * 3600,
      cleanupIntervalSeconds: 3600,
      finishWaitSeconds: 60,
      maxPartialUploads: 256,
      maxManifestInstances: 100_000,
      receiptKeyPath: "",
      bundle: { maxEntries: 100_000, maxTotalBytes: 256 * 1024 * 1024 * 1024, maxCompressionRatio: 200, maxFailedEntries: 200 },
    },
    auth: { enabled: true, realm: "dicom-relay", shareDefaultExpiry: "7d", maxShareLinksPerToken: 200 },
    tls: {
      enabled: false,
      pkiDir: "",
      certFile: "",
      keyFile: "",
      clientCaFile: "",
      revokedFile: "",
      requireClientCertForUpload: false,
    },
    dimse: {
      enabled: false,
      host: "127.0.0.1",
      port: 11112,
      aeTitle: "DICOM_RELAY",
      maxPduLength: 256 * 1024,
      maxAssociations: 32,
      idleTimeoutSeconds: 120,
      connectTimeoutSeconds: 15,
      maxIdentifierBytes: 1024 * 1024,
      maxFindResults: 10_000,
      tls: false,
      peers: [],
    },
    forwarding: { enabled: false, rules: [], retrySeconds: 5, maxRetrySeconds: 600, pollSeconds: 5, requestTimeoutSeconds: 300, concurrency: 4 },
    encryption: { enabled: false, keyFile: "", key: "", previousKeyFiles: "" },
    console: { enabled: true, path: "/console" },
    viewer: { ohifDir: "", assetsPath: "/viewer", linkExpiry: "2h" },
    metrics: { enabled: true, port: 0, host: "127.0.0.1" },
    retention: { enabled: false, afterDeliveryDays: 30, afterArrivalDays: 0, sweepIntervalMinutes: 60 },
  };
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

type Plain = Record<string, unknown>;
const isPlain = (v: unknown): v is Plain => typeof v === "object" && v !== null && !Array.isArray(v);

/** Edit distance with adjacent transpositions counted as one edit (optimal string alignment): "prot" is 1 from "port". */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The known key closest to a typo (case-insensitive), when it is close enough to be what was meant. */
export function closestKey(typo: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(typo.toLowerCase(), k.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== null && bestD <= Math.max(1, Math.floor(best.length / 3)) ? best : null;
}

function deepMerge(base: Plain, over: Plain, at: string[] = []): Plain {
  const out: Plain = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (!(k in base)) {
      const near = closestKey(k, Object.keys(base));
      throw new ConfigError(`unknown configuration key "${[...at, k].join(".")}"${near ? `; did you mean ${[...at, near].join(".")}?` : ` (known keys${at.length ? ` of ${at.join(".")}` : ""}: ${Object.keys(base).join(", ")})`}`);
    }
    out[k] = isPlain(base[k]) && isPlain(v) ? deepMerge(base[k] as Plain, v, [...at, k]) : v;
  }
  return out;
}

export function envName(keyPath: string[]): string {
  return "DICOM_RELAY_" + keyPath.map((k) => k.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase()).join("_");
}

/** Reads every DICOM_RELAY_* variable that names a key of the defaults, coerced to that key's type. */
function fromEnvironment(defaults: Plain, env: NodeJS.ProcessEnv, at: string[] = []): Plain {
  const out: Plain = {};
  for (const [k, def] of Object.entries(defaults)) {
    const keyPath = [...at, k];
    if (isPlain(def)) {
      const nested = fromEnvironment(def, env, keyPath);
      if (Object.keys(nested).length) out[k] = nested;
      continue;
    }
    const name = envName(keyPath);
    const raw = env[name];
    if (raw === undefined) continue;
    if (typeof def === "number") {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n)) {
        throw new ConfigError(`configuration key "${keyPath.join(".")}" (${name}) must be a number, got "${raw}"`);
      }
      out[k] = n;
    } else if (typeof def === "boolean") {
      if (!/^(true|false|1|0|yes|no)$/i.test(raw)) {
        throw new ConfigError(`configuration key "${keyPath.join(".")}" (${name}) must be true or false, got "${raw}"`);
      }
      out[k] = /^(true|1|yes)$/i.test(raw);
    } else {
      out[k] = raw;
    }
  }
  return out;
}

/** "line 3, column 14: expected ',' or '}' after property value" for a JSON text JSON.parse refused. */
export function jsonErrorAt(text: string, message: string): string {
  const offset = jsonErrorOffset(text);
  const before = text.slice(0, offset);
  const line = before.split("\n").length;
  const column = offset - before.lastIndexOf("\n");
  // V8's wording without its position and without the quoted document
  const why = message.replace(/ at position \d+.*$/s, "").replace(/ in JSON$/, "").replace(/, ".*" is not valid JSON$/s, "").replace(/^Unexpected token/, "unexpected");
  return `line ${line}, column ${column}: ${why.charAt(0).toLowerCase()}${why.slice(1)}`;
}

/** Where a JSON text stops being valid (a small recursive-descent check: V8 does not always give a position). */
export function jsonErrorOffset(text: string): number {
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\r\n".includes(text[i]!)) i++;
  };
  const fail = (): never => {
    throw i;
  };
  const str = () => {
    if (text[i] !== '"') fail();
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === "\\") i++;
      else if (text.charCodeAt(i) < 0x20) fail();
      i++;
    }
    if (i >= text.length) fail();
    i++;
  };
  const value = (depth: number): void => {
    if (depth > 200) fail();
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      ws();
      if (text[i] === "}") return void i++;
      for (;;) {
        ws();
        str();
        ws();
        if (text[i] !== ":") fail();
        i++;
        value(depth + 1);
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") return void i++;
        fail();
      }
    }
    if (c === "[") {
      i++;
      ws();
      if (text[i] === "]") return void i++;
      for (;;) {
        value(depth + 1);
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "]") return void i++;
        fail();
      }
    }
    if (c === '"') return str();
    const m = /^(-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400));
    if (!m) fail();
    i += m![0].length;
  };
  try {
    value(0);
    ws();
    return i < text.length ? i : text.length;
  } catch (at) {
    return typeof at === "number" ? Math.min(at, text.length) : 0;
  }
}

export interface LoadConfigOptions {
  /** path of a JSON config file; default: $DICOM_RELAY_CONFIG, else none */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** programmatic overrides applied last (tests) */
  overrides?: DeepPartial<RelayConfig>;
}

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

export function loadConfig(opts: LoadConfigOptions = {}): RelayConfig {
  const env = opts.env ?? process.env;
  let merged: Plain = defaultConfig() as unknown as Plain;
  const file = opts.file ?? env.DICOM_RELAY_CONFIG;
  if (file) {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      throw new ConfigError(`cannot read the configuration file ${file}: ${(err as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(`the configuration file ${file} is not valid JSON: ${jsonErrorAt(text, (err as Error).message)}`);
    }
    if (!isPlain(parsed)) throw new ConfigError(`the configuration file ${file} must hold a JSON object`);
    merged = deepMerge(merged, parsed);
  }
  merged = deepMerge(merged, fromEnvironment(merged, env));
  if (opts.overrides) merged = deepMerge(merged, opts.overrides as Plain);
  const result = configSchema.safeParse(merged);
  if (!result.success) {
    const first = result.error.issues[0]!;
    const keyPath = first.path.map(String);
    throw new ConfigError(
      `invalid configuration key "${keyPath.join(".")}" (${envName(keyPath)}): ${first.message}`,
    );
  }
  return resolvePaths(result.data);
}

/** Fill derived defaults (paths under dataDir) and make paths absolute. */
function resolvePaths(cfg: RelayConfig): RelayConfig {
  const dataDir = path.resolve(cfg.dataDir);
  return {
    ...cfg,
    dataDir,
    storage: { ...cfg.storage, fs: { root: path.resolve(cfg.storage.fs.root || path.join(dataDir, "blobs")) } },
    index: {
      ...cfg.index,
      sqlite: { path: cfg.index.sqlite.path === ":memory:" ? ":memory:" : path.resolve(cfg.index.sqlite.path || path.join(dataDir, "index.sqlite")) },
    },
    transfers: {
      ...cfg.transfers,
      uploadDir: path.resolve(cfg.transfers.uploadDir || path.join(dataDir, "uploads")),
      receiptKeyPath: path.resolve(cfg.transfers.receiptKeyPath || path.join(dataDir, "keys", "receipt-ed25519.pem")),
    },
    tls: resolveTlsPaths(cfg.tls, dataDir),
    viewer: { ...cfg.viewer, ohifDir: path.resolve(cfg.viewer.ohifDir || path.join(os.homedir(), ".cache", "dicom-relay", `ohif-${OHIF_VERSION}`)) },
    encryption: {
      ...cfg.encryption,
      keyFile: cfg.encryption.keyFile ? path.resolve(cfg.encryption.keyFile) : "",
      previousKeyFiles: cfg.encryption.previousKeyFiles
        .split(",").map((f) => f.trim()).filter(Boolean).map((f) => path.resolve(f)).join(","),
    },
  };
}

function resolveTlsPaths(tls: RelayConfig["tls"], dataDir: string): RelayConfig["tls"] {
  const pkiDir = path.resolve(tls.pkiDir || path.join(dataDir, "pki"));
  const inPki = (value: string, name: string) => path.resolve(value || path.join(pkiDir, name));
  return {
    ...tls,
    pkiDir,
    certFile: inPki(tls.certFile, "server-cert.pem"),
    keyFile: inPki(tls.keyFile, "server-key.pem"),
    clientCaFile: inPki(tls.clientCaFile, "ca-cert.pem"),
    revokedFile: inPki(tls.revokedFile, "revoked.json"),
  };
}
