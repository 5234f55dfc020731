/** Starts and stops a whole relay: services, HTTP server. Used by `dicom-relay serve` and by tests. */
import http from "node:http";
import https from "node:https";
import fs from "node:fs";
import path from "node:path";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { spoolDir, type RelayConfig } from "./config.ts";
import { createLogger } from "./logger.ts";
import { createIndex } from "./catalog/factory.ts";
import { createBlobStore } from "./storage/index.ts";
import { IngestPipeline } from "./ingest/pipeline.ts";
import { createApp, type RelayServices } from "./app.ts";
import { startTransfers } from "./transfers/index.ts";
import { openAccess } from "./access/index.ts";
import { auditingIngestor } from "./access/audit.ts";
import { tlsServerOptions } from "./access/tls.ts";
import { DimseServer } from "./dimse/server.ts";
import { ForwardingService } from "./forwarding/service.ts";

export interface RunningRelay {
  /** http://host:port */
  url: string;
  /** the DICOMweb root URL */
  dicomwebUrl: string;
  port: number;
  services: RelayServices;
  server: http.Server;
  /** the DICOM node (dimse.enabled) */
  dimse: DimseServer | null;
  /** its port (0 when not enabled) */
  dimsePort: number;
  /** the admin token created on the first start (null on later starts or with auth disabled); print it once */
  initialAdminToken: string | null;
  /** Stop listening; running requests get graceMs to finish before their connections are cut. */
  close(graceMs?: number): Promise<void>;
}

export async function buildServices(config: RelayConfig, log?: Logger): Promise<RelayServices> {
  const logger = log ?? createLogger(config.log.level);
  const store = createBlobStore(config, logger);
  await store.init();
  const index = createIndex(config);
  await index.init();
  const ingest = new IngestPipeline({
    index,
    store,
    config: config.ingest,
    tmpDir: spoolDir(config),
    log: logger,
  });
  await ingest.init();
  const access = await openAccess({ config, log: logger, index });
  // one audit row per instance stored, whichever way it came in, under the actor of the request behind it
  const audited = auditingIngestor(ingest, access.audit);
  const forwarding = new ForwardingService({ config, log: logger, index, store, audit: access.audit });
  const transfers = await startTransfers({
    config,
    log: logger,
    index,
    store,
    ingest: audited,
    audit: access.audit,
    onComplete: (id, items) => forwarding.enqueueTransfer(id, items),
  });
  forwarding.start();
  privateDataDir(config, logger);
  return { config, log: logger, index, store, ingest: audited, transfers, access, forwarding };
}

/**
 * The data directory holds patient data (index, transfers, blobs, uploads, spool): only the relay's user may read
 * it, as access.sqlite already was (directories 0700, the databases 0600). `serve` also sets umask 077.
 */
function privateDataDir(config: RelayConfig, log: Logger): void {
  const dirs = [config.dataDir, config.storage.fs.root, config.transfers.uploadDir, spoolDir(config)];
  const files = [config.index.sqlite.path, path.join(config.dataDir, "transfers.sqlite")].flatMap((f) => [f, `${f}-wal`, `${f}-shm`]);
  for (const [p, mode] of [...dirs.map((d) => [d, 0o700] as const), ...files.map((f) => [f, 0o600] as const)]) {
    try {
      if (p !== ":memory:" && fs.existsSync(p)) fs.chmodSync(p, mode);
    } catch (err) {
      log.warn({ err, path: p }, "could not restrict the permissions of a data file");
    }
  }
}

export async function startRelay(config: RelayConfig, opts: { log?: Logger } = {}): Promise<RunningRelay> {
  // certificate files are read first: a missing one stops the start before anything is opened
  const tls = config.tls.enabled ? tlsServerOptions(config.tls) : null;
  const services = await buildServices(config, opts.log);
  const app = createApp(services);
  const headersTimeout = Math.round(config.server.headersTimeoutSeconds * 1000);
  const serverOptions = {
    maxHeaderSize: config.server.maxHeaderBytes,
    headersTimeout,
    // uploads over slow cross-border links take long: no whole-request deadline; silent bodies end by the body
    // idle timeout (src/http/uploadLimits.ts), slow headers by headersTimeout
    requestTimeout: 0,
    // how often Node looks for connections past headersTimeout (its default, 30 s, would let them live that much longer)
    connectionsCheckingInterval: Math.max(250, Math.min(headersTimeout / 4, 30_000)),
  };
  const server = tls ? https.createServer({ ...tls, ...serverOptions }, app) : http.createServer(serverOptions, app);
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.server.port, config.server.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  // only now: a start that failed to listen leaves no admin token behind that nobody was shown
  const initialAdminToken = (await services.access?.createInitialAdminToken()) ?? null;
  let dimse: DimseServer | null = null;
  if (config.dimse.enabled) {
    dimse = new DimseServer({ ...services, audit: services.access?.audit, peerGrants: services.access?.peerGrants });
    try {
      await dimse.start();
    } catch (err) {
      server.close();
      throw err;
    }
  }
  const host = config.server.host.includes(":") ? `[${config.server.host}]` : config.server.host;
  const scheme = config.tls.enabled ? "https" : "http";
  const url = config.server.publicUrl ? config.server.publicUrl.replace(/\/$/, "") : `${scheme}://${host}:${port}`;
  return {
    url,
    dicomwebUrl: url + config.dicomweb.root,
    port,
    dimse,
    dimsePort: dimse?.port ?? 0,
    services,
    server,
    initialAdminToken,
    async close(graceMs = 0) {
      await dimse?.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        if (graceMs > 0) setTimeout(() => server.closeAllConnections(), graceMs).unref();
        else server.closeAllConnections();
      });
      await services.transfers?.close();
      await services.forwarding?.close();
      // pending audit rows (PostgreSQL) are written before the index's pool closes
      await services.access?.close();
      await services.index.close();
      await services.store.close();
    },
  };
}
