/** The BlobStore named by config.storage.kind. */
import type { Logger } from "pino";
import { ConfigError, type RelayConfig } from "../config.ts";
import type { BlobStore } from "./blobStore.ts";
import { FsBlobStore } from "./fs.ts";
import { S3BlobStore } from "./s3.ts";
import { EncryptedBlobStore, loadKeyring } from "./encrypted.ts";

export function createBlobStore(config: RelayConfig, log?: Logger): BlobStore {
  const store = backend(config, log);
  // encryption at rest wraps whichever backend: every reader and writer (relay, fsck) sees plaintext
  return config.encryption.enabled ? new EncryptedBlobStore(store, loadKeyring(config.encryption, (msg) => log?.warn(msg))) : store;
}

function backend(config: RelayConfig, log?: Logger): BlobStore {
  switch (config.storage.kind) {
    case "fs":
      return new FsBlobStore(config.storage.fs.root);
    case "s3":
      return new S3BlobStore(config.storage.s3, { log });
    default:
      throw new ConfigError(`storage.kind "${String(config.storage.kind)}" is not known (use fs or s3)`);
  }
}
