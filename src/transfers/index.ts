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
import { TransferService, type TransferServiceDeps } from "./transferService.ts";
import { createTusServer, type RelayFileStore } from "./tusServer.ts";
import { transfersRouter, type TransferRoutesOptions } from "./routes.ts";

export interface Transfers {
  service: TransferService;
  tus: Server;
  uploads: RelayFileStore;
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
}): Promise<Transfers> {
  const { config } = deps;
  const transfers = new SqliteTransferStore(path.join(config.dataDir, "transfers.sqlite"));
  await transfers.init();
  const signer = await ReceiptSigner.loadOrCreate(config.transfers.receiptKeyPath);
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
