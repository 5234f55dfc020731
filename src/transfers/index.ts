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
import { TransferService } from "./transferService.ts";
import { createTusServer, type RelayUploadStore } from "./tusServer.ts";
import { RelayS3Store } from "./s3UploadStore.ts";
import { transfersRouter, type TransferRoutesOptions } from "./routes.ts";

export interface Transfers {
  service: TransferService;
  tus: Server;
  /** local files (storage.kind=fs) or the storage bucket (s3) */
  uploads: RelayUploadStore;
  router(opts?: TransferRoutesOptions): Router;
  close(): Promise<void>;
}

export async function startTransfers(deps: { config: RelayConfig; log: Logger; index: Index; store: BlobStore; ingest: Ingestor }): Promise<Transfers> {
  const { config } = deps;
  const transfers = new SqliteTransferStore(path.join(config.dataDir, "transfers.sqlite"));
  await transfers.init();
  const signer = await ReceiptSigner.loadOrCreate(config.transfers.receiptKeyPath);
  const service = new TransferService({ ...deps, transfers, signer });
  const { server: tus, store: uploads } = createTusServer({ config, log: deps.log, hooks: service.tusHooks() });
  // on S3 an upload's result lives beside it, so the node that continues an upload (or any other) can read it
  await service.start(uploads, uploads instanceof RelayS3Store ? uploads : transfers);
  return {
    service,
    tus,
    uploads,
    router: (opts) => transfersRouter({ config, service, tus }, opts),
    async close() {
      await service.close();
      if (uploads instanceof RelayS3Store) await uploads.close();
    },
  };
}
