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
import { RelayMetrics } from "./metrics/metrics.ts";
import { observingIngestor } from "./ingest/observe.ts";
import { RetentionService } from "./retention/service.ts";
import { PostgresDeliveryStore, SqliteDeliveryStore } from "./retention/deliveryStore.ts";
import { PostgresIndex } from "./catalog/postgres.ts";
import { startMetricsListener } from "./metrics/http.ts";
import { DeidentifyService } from "./deidentify/service.ts";
import { checkDataDir, checkTlsPair, listenError } from "./startErrors.ts";

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
  /** the metrics-only listener's port (metrics.port; 0 when not enabled) */
  metricsPort: number;
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
  const metrics = new RelayMetrics();
  // several nodes: deliveries are recorded in the shared database, so any node's sweep sees every node's retrieves
  const deliveries = index instanceof PostgresIndex ? new PostgresDeliveryStore(index.sharedPool) : new SqliteDeliveryStore(path.join(config.dataDir, "retention.sqlite"));
  await deliveries.init();
  const retention = new RetentionService({
    config, log: logger, index, store, deliveries, audit: access.audit, tokens: access.tokens,
    // the transfer service starts below; retention sweeps only after start()
    uploads: { removeUnfinishedUploadsOf: (study) => transfers.service.removeUnfinishedUploadsOf(study) },
  });
  // every instance stored, whichever way it came in: counted, its study's arrival clock set, and one audit row
  // under the actor of the request behind it
  const observed = observingIngestor(ingest, (result, opts) => {
    metrics.noteIngest(result, opts);
    if (result.status === "stored" || result.status === "replaced") retention.noteArrival(result.studyInstanceUID);
  });
  const audited = auditingIngestor(observed, access.audit);
  const forwarding = new ForwardingService({ config, log: logger, index, store, audit: access.audit, retention });
  const transfers = await startTransfers({
    config,
    log: logger,
    index,
    store,
    ingest: audited,
    audit: access.audit,
    onComplete: (id, items) => forwarding.enqueueTransfer(id, items),
    onRetention: (study, policy) => retention.setPolicy(study, policy),
  });
  forwarding.start();
  retention.start();
  metrics.setSources({
    transfersByState: () => transfers.service.countByState(),
    forwardingByState: () => forwarding.queue.stateCounts(),
    storageDir: config.storage.kind === "fs" ? config.storage.fs.root : null,
  });
  const deidentify = new DeidentifyService({ index, store, ingest: audited, log: logger, dataDir: config.dataDir, maxHeaderBytes: config.ingest.maxHeaderBytes });
  privateDataDir(config, logger);
  return { config, log: logger, index, store, ingest: audited, transfers, access, forwarding, metrics, deidentify, retention };
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
  if (tls) checkTlsPair(tls, config);
  checkDataDir(config);
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
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(config.server.port, config.server.host, () => resolve());
    });
  } catch (err) {
    // nothing listens: what was opened is closed again, and the reason is one sentence
    for (const close of [() => services.transfers?.close(), () => services.forwarding?.close(), () => services.access?.close(), () => services.index.close(), () => services.store.close()]) {
      await Promise.resolve().then(close).catch(() => undefined);
    }
    throw listenError(err, config.server.host, config.server.port, "server.port", "server.host") ?? err;
  }
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
      throw listenError(err, config.dimse.host, config.dimse.port, "dimse.port", "dimse.host") ?? err;
    }
  }
  let metricsListener: Awaited<ReturnType<typeof startMetricsListener>> | null = null;
  if (config.metrics.port > 0 && services.metrics) {
    try {
      metricsListener = await startMetricsListener(services.metrics, config.metrics.host, config.metrics.port, services.log);
    } catch (err) {
      await dimse?.close();
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
    metricsPort: metricsListener?.port ?? 0,
    services,
    server,
    initialAdminToken,
    async close(graceMs = 0) {
      await dimse?.close();
      if (metricsListener) {
        metricsListener.server.closeAllConnections();
        await new Promise<void>((resolve) => metricsListener!.server.close(() => resolve()));
      }
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        if (graceMs > 0) setTimeout(() => server.closeAllConnections(), graceMs).unref();
        else server.closeAllConnections();
      });
      await services.transfers?.close();
      await services.forwarding?.close();
      services.deidentify?.close();
      await services.retention?.close();
      // pending audit rows (PostgreSQL) are written before the index's pool closes
      await services.access?.close();
      await services.index.close();
      await services.store.close();
    },
  };
}
