import type { RelayConfig } from "../config.ts";
import type { Index } from "./index.ts";
import { SqliteIndex } from "./sqlite.ts";
import { ConfigError } from "../config.ts";

/** The index named by config.index.kind. */
export function createIndex(config: RelayConfig): Index {
  switch (config.index.kind) {
    case "sqlite":
      return new SqliteIndex({ path: config.index.sqlite.path });
    default:
      throw new ConfigError(`index.kind "${config.index.kind}" is not available in this build (use sqlite)`);
  }
}
