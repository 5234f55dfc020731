import type { RelayConfig } from "../config.ts";
import type { Index } from "./index.ts";
import { SqliteIndex } from "./sqlite.ts";
import { PostgresIndex } from "./postgres.ts";
import { ConfigError } from "../config.ts";

/** The index named by config.index.kind. Construction opens nothing: init() connects and migrates. */
export function createIndex(config: RelayConfig): Index {
  switch (config.index.kind) {
    case "sqlite":
      return new SqliteIndex({ path: config.index.sqlite.path });
    case "postgres":
      if (!config.index.postgres.url) {
        throw new ConfigError('index.kind is "postgres" but index.postgres.url (DICOM_RELAY_INDEX_POSTGRES_URL) is empty: set it to postgres://user:password@host:5432/database');
      }
      return new PostgresIndex({ url: config.index.postgres.url, poolSize: config.index.postgres.poolSize });
    default:
      throw new ConfigError(`index.kind "${String((config.index as { kind: unknown }).kind)}" is not available in this build (use sqlite or postgres)`);
  }
}
