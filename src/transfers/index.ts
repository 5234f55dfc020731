/** Wires transfers from the relay's services: transfer store, receipt key, tus server, service, routes. */
import path from "node:path";
import type { Router } from "express";
import type { Server } from "@tus/server";
import type { Logger } from "pino";
import type { RelayConfig } from "../config.ts";
import type { Index } from "../catalog/index.ts";
import type { BlobStore } from "../storage/blobStore.ts";
import type { Ingestor } from "../ingest/types.ts";
import { ReceiptSigner } from "./receipts.ts";
import { SqliteTransferStore } from "./sqliteTransferStore.ts";
import { PostgresTransferStore, loadSharedReceiptSigner } from "./postgresTransferStore.ts";
import { PostgresIndex } from "../catalog/postgres.ts";
import type { TransferStore } from "./transferStore.ts";
import { TransferService, type TransferServiceDeps } from "./transferService.ts";
import { createTusServer, type RelayUploadStore } from "./tusServer.ts";
import type { RelayS3Store } from "./s3UploadStore.ts";
import { PgLocker } from "./pgLocker.ts";
import { MemoryLocker, type Locker } from "@tus/server";
import { transfersRouter, type TransferRoutesOptions } from "./routes.ts";

export interface Transfers {
  service: TransferService;
  tus: Server;
  /** local files (storage.kind=fs) or the storage bucket (s3) */
  uploads: RelayUploadStore;
  router(opts?: TransferRoutesOptions): Router;
  close(): Promise<void>;
}

export async function startTransfers(deps: {
  config: RelayConfig;
  log: Logger;
  index: Index;
  store: BlobStore;
  ingest: Ingestor;
  /** completed transfers (auto-forwarding) */
  onComplete?: TransferServiceDeps["onComplete"];
  /** a manifest named a retention policy for its studies */
  onRetention?: TransferServiceDeps["onRetention"];
  audit?: TransferServiceDeps["audit"];
}): Promise<Transfers> {
  const { config } = deps;
  let transfers: TransferStore;
  let signer: ReceiptSigner;
  if (deps.index instanceof PostgresIndex) {
    // several nodes: transfers and the receipt key live in the shared database (docs/operations.md)
    transfers = new PostgresTransferStore(deps.index.sharedPool);
    await transfers.init();
    const shared = await loadSharedReceiptSigner(deps.index.sharedPool, config.transfers.receiptKeyPath);
    signer = shared.signer;
    if (shared.source !== "database") deps.log.info({ keyId: signer.keyId, from: shared.source }, "receipt signing key stored in PostgreSQL for every node");
  } else {
    transfers = new SqliteTransferStore(path.join(config.dataDir, "transfers.sqlite"));
    await transfers.init();
    signer = await ReceiptSigner.loadOrCreate(config.transfers.receiptKeyPath);
  }
  const service = new TransferService({ ...deps, transfers, signer });
  const locker = createTusLocker(config, deps.log);
  const { server: tus, store: uploads } = await createTusServer({ config, log: deps.log, hooks: service.tusHooks(), locker });
  // on S3 an upload's result lives beside it, so the node that continues an upload (or any other) can read it
  const s3Uploads = config.storage.kind === "s3" ? (uploads as RelayS3Store) : null;
  await service.start(uploads, s3Uploads ?? transfers, locker);
  return {
    service,
    tus,
    uploads,
    router: (opts) => transfersRouter({ config, service, tus }, opts),
    async close() {
      await service.close();
      if (s3Uploads) await s3Uploads.close();
      if (locker instanceof PgLocker) await locker.close();
    },
  };
}

/**
 * Who may write an upload at a time. memory: @tus/server's MemoryLocker, one process (SQLite sites have one node).
 * postgres: advisory locks in the shared index database, so any node may take any request of an upload.
 */
export function createTusLocker(config: RelayConfig, log: Logger): Locker {
  const { kind, acquireTimeoutSeconds } = config.transfers.locker;
  const resolved = kind === "auto" ? (config.index.kind === "postgres" ? "postgres" : "memory") : kind;
  if (resolved === "postgres") {
    return new PgLocker({ url: config.index.postgres.url, acquireTimeoutMs: acquireTimeoutSeconds * 1000, log });
  }
  return new MemoryLocker({ acquireLockTimeout: acquireTimeoutSeconds * 1000 });
}
