/** Starts a real relay on 127.0.0.1 (random port) over a temporary data directory. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadConfig, type DeepPartial, type RelayConfig } from "../../src/config.ts";
import { startRelay, type RunningRelay } from "../../src/relay.ts";
import { createLogger } from "../../src/logger.ts";
import type { AccessControl } from "../../src/access/index.ts";
import type { TokenStore } from "../../src/access/tokens.ts";
import type { AuditLog } from "../../src/access/audit.ts";

/** The access control of a relay on the embedded stores (access.sqlite: synchronous tokens and audit log). */
export function sqliteAccess(relay: { services: { access?: AccessControl } }): AccessControl<TokenStore, AuditLog> & { db: NonNullable<AccessControl["db"]> } {
  const access = relay.services.access;
  if (!access?.db) throw new Error("this relay keeps tokens and audit in PostgreSQL, not in access.sqlite");
  return access as AccessControl<TokenStore, AuditLog> & { db: NonNullable<AccessControl["db"]> };
}

export interface TestRelay extends RunningRelay {
  dataDir: string;
  config: RelayConfig;
  /** close and remove the data directory */
  dispose(): Promise<void>;
}

export async function startTestRelay(overrides: DeepPartial<RelayConfig> = {}, opts: { dataDir?: string } = {}): Promise<TestRelay> {
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "relay-test-"));
  const config = loadConfig({
    env: {},
    overrides: {
      ...overrides,
      // tests written before access control assume an open relay; tests of access control pass their own auth
      auth: overrides.auth ?? { enabled: false },
      dataDir,
      server: { host: "127.0.0.1", port: 0, ...(overrides.server ?? {}) },
      log: { level: process.env.TEST_LOG_LEVEL ?? "silent", ...(overrides.log ?? {}) },
    } as DeepPartial<RelayConfig>,
  });
  const relay = await startRelay(config, { log: createLogger(config.log.level) });
  return {
    ...relay,
    dataDir,
    config,
    async dispose() {
      await relay.close();
      if (!opts.dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
