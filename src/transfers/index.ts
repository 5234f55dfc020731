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
import { TransferService } from "./transferService.ts";
import { createTusServer, type RelayFileStore } from "./tusServer.ts";
import { transfersRouter, type TransferRoutesOptions } from "./routes.ts";

export interface Transfers {
  service: TransferService;
  tus: Server;
  uploads: RelayFileStore;
  router(opts?: TransferRoutesOptions): Router;
  close(): Promise<void>;
}

export async function startTransfers(deps: { config: RelayConfig; log: Logger; index: Index; store: BlobStore; ingest: Ingestor }): Promise<Transfers> {
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
  const { server: tus, store: uploads } = createTusServer({ config, log: deps.log, hooks: service.tusHooks() });
  await service.start(uploads);
  return {
    service,
    tus,
    uploads,
    router: (opts) => transfersRouter({ config, service, tus }, opts),
    close: () => service.close(),
  };
}
