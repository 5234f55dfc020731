/**
 * A tus Locker for several relay nodes: PostgreSQL advisory locks in the database the nodes already share
 * (index.kind=postgres). @tus/server's MemoryLocker only sees one process; with uploads in S3 any node may get the
 * next request of an upload, so "one writer per upload" has to be decided in the shared database.
 *
 * - One session per node holds that node's upload locks: `pg_try_advisory_lock(TUS_LOCK_CLASS, hash(id))`. Session
 *   locks are re-entrant, so a per-node map keeps one holder per upload id inside the process.
 * - "Request release" (a client reconnects while its old PATCH still hangs on a dead connection): a waiter asks the
 *   holder to let go, directly when the holder is in this process, by `NOTIFY dicom_relay_tus_release, '<id>'`
 *   when it is on another node (every node LISTENs on its lock session). The holder's request then ends (tus:
 *   context.cancel, which stops reading after lockDrainTimeout) and unlocks. The waiter polls with try-lock, asking
 *   again now and then, up to acquireTimeoutMs, then fails with ERR_LOCK_TIMEOUT (answered 423, clients retry).
 * - A lost session (database restart, network cut, pg_terminate_backend) frees its locks in PostgreSQL at once;
 *   the node then asks its own holders to stop, so two writers never go on for long, and reconnects on the next lock.
 */
import crypto from "node:crypto";
import type pg from "pg";
import { loadPg } from "../catalog/postgres.ts";
import type { Logger } from "pino";
import { ERRORS, type Lock, type Locker, type RequestRelease } from "@tus/server";

/** Advisory lock class of tus uploads ("DR" + 0x0010; see ADVISORY_LOCK in src/catalog/postgres.ts for the others). */
export const TUS_LOCK_CLASS = 0x44520010;
export const TUS_RELEASE_CHANNEL = "dicom_relay_tus_release";

/** PostgreSQL cannot be reached for a lock: answered 503 (the route adds Retry-After) like a storage outage. */
export class LockUnavailableError extends Error {
  readonly status_code = 503;
  readonly body = "the relay's database is unavailable right now, so the upload cannot be locked; retry in a moment\n";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "LockUnavailableError";
  }
}

export interface PgLockerOptions {
  /** postgres://... (index.postgres.url) */
  url: string;
  /** how long a request waits for an upload held elsewhere (ms, default 30 s) */
  acquireTimeoutMs?: number;
  /** try-lock interval while waiting (ms, default 100) */
  pollMs?: number;
  /** how often a waiter repeats its release request (ms, default 1000) */
  renotifyMs?: number;
  /** shows in pg_stat_activity */
  applicationName?: string;
  log?: Logger;
}

/** The advisory lock object of an upload: 32 bits of SHA-256 (a collision only makes two uploads wait for each other). */
export function tusLockKey(id: string): number {
  return crypto.createHash("sha256").update(id).digest().readInt32BE(0);
}

interface Held {
  /** releasing: the unlock is on its way to PostgreSQL, where a waiter may already have the lock */
  state: "acquiring" | "held" | "releasing";
  session: pg.Client;
  requestRelease?: RequestRelease;
}

export class PgLocker implements Locker {
  private session: pg.Client | null = null;
  private connecting: Promise<pg.Client> | null = null;
  private readonly held = new Map<string, Held>();
  private closed = false;
  readonly acquireTimeoutMs: number;
  private readonly pollMs: number;
  private readonly renotifyMs: number;

  constructor(private readonly options: PgLockerOptions) {
    if (!options.url) throw new Error("the PostgreSQL tus locker needs a connection URL (index.postgres.url)");
    this.acquireTimeoutMs = options.acquireTimeoutMs ?? 30_000;
    this.pollMs = options.pollMs ?? 100;
    this.renotifyMs = options.renotifyMs ?? 1_000;
  }

  newLock(id: string): Lock {
    return new PgLock(this, id);
  }

  /** Upload ids this node holds now (tests, diagnostics). */
  heldIds(): string[] {
    return [...this.held].filter(([, h]) => h.state === "held").map(([id]) => id);
  }

  private async connect(): Promise<pg.Client> {
    if (this.closed) throw new LockUnavailableError("the tus locker is closed");
    if (this.session) return this.session;
    this.connecting ??= (async () => {
      const { Client } = await loadPg();
      const client = new Client({
        connectionString: this.options.url,
        application_name: this.options.applicationName ?? "dicom-relay-tus-locks",
        connectionTimeoutMillis: 5_000,
        keepAlive: true,
      });
      client.on("error", (err) => this.lost(client, err));
      client.on("end", () => this.lost(client));
      client.on("notification", (msg) => {
        if (msg.channel !== TUS_RELEASE_CHANNEL || !msg.payload) return;
        const h = this.held.get(msg.payload);
        if (h?.state === "held" && h.session === client) void Promise.resolve(h.requestRelease?.()).catch(() => undefined);
      });
      try {
        await client.connect();
        await client.query(`LISTEN ${TUS_RELEASE_CHANNEL}`);
      } catch (err) {
        client.end().catch(() => undefined);
        throw new LockUnavailableError(`cannot reach PostgreSQL for tus locks: ${(err as Error).message}`, { cause: err });
      }
      if (this.closed) {
        await client.end().catch(() => undefined);
        throw new LockUnavailableError("the tus locker is closed");
      }
      this.session = client;
      return client;
    })().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  /** The session is gone and PostgreSQL has freed its locks: whoever held one here must stop writing. */
  private lost(client: pg.Client, err?: Error): void {
    if (this.session === client) this.session = null;
    let n = 0;
    for (const [id, h] of this.held) {
      if (h.session !== client) continue;
      this.held.delete(id);
      n++;
      if (h.state === "held") void Promise.resolve(h.requestRelease?.()).catch(() => undefined);
    }
    if (!this.closed) this.options.log?.warn({ err: err?.message, locks: n }, "PostgreSQL session of the tus locks lost; holders asked to stop");
  }

  private async query<T extends pg.QueryResultRow>(client: pg.Client, text: string, values: unknown[]): Promise<pg.QueryResult<T>> {
    try {
      return await client.query<T>(text, values);
    } catch (err) {
      throw new LockUnavailableError(`a tus lock query failed: ${(err as Error).message}`, { cause: err });
    }
  }

  async acquire(id: string, signal: AbortSignal, requestRelease: RequestRelease): Promise<void> {
    const deadline = Date.now() + this.acquireTimeoutMs;
    let asked = 0;
    for (;;) {
      if (signal.aborted) throw ERRORS.ERR_LOCK_TIMEOUT;
      const local = this.held.get(id);
      if (!local) {
        const session = await this.connect();
        const entry: Held = { state: "acquiring", session };
        this.held.set(id, entry);
        let ok = false;
        try {
          ok = (await this.query<{ ok: boolean }>(session, "SELECT pg_try_advisory_lock($1, $2) AS ok", [TUS_LOCK_CLASS, tusLockKey(id)])).rows[0]!.ok;
        } catch (err) {
          if (this.held.get(id) === entry) this.held.delete(id);
          throw err;
        }
        if (this.held.get(id) === entry) {
          if (ok) {
            entry.state = "held";
            entry.requestRelease = requestRelease;
            return;
          }
          this.held.delete(id);
        }
        // held on another node: ask it (through PostgreSQL) to let go
        if (!ok && Date.now() - asked >= this.renotifyMs) {
          asked = Date.now();
          await this.query(session, "SELECT pg_notify($1, $2)", [TUS_RELEASE_CHANNEL, id]);
        }
      } else if (local.state === "held" && Date.now() - asked >= this.renotifyMs) {
        // held in this process: ask directly
        asked = Date.now();
        void Promise.resolve(local.requestRelease?.()).catch(() => undefined);
      }
      if (Date.now() >= deadline) throw ERRORS.ERR_LOCK_TIMEOUT;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, this.pollMs);
        function done() {
          clearTimeout(t);
          signal.removeEventListener("abort", done);
          resolve();
        }
        signal.addEventListener("abort", done, { once: true });
      });
    }
  }

  async release(id: string): Promise<void> {
    const h = this.held.get(id);
    // gone with its session: PostgreSQL already freed it
    if (!h || h.state !== "held") return;
    // not held from here on: PostgreSQL may hand the lock to a waiter before this unlock's answer comes back
    h.state = "releasing";
    try {
      if (this.session === h.session) {
        await this.query(h.session, "SELECT pg_advisory_unlock($1, $2)", [TUS_LOCK_CLASS, tusLockKey(id)]);
      }
    } finally {
      if (this.held.get(id) === h) this.held.delete(id);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const s = this.session ?? (await this.connecting?.catch(() => null)) ?? null;
    this.session = null;
    this.held.clear();
    await s?.end().catch(() => undefined);
  }
}

class PgLock implements Lock {
  constructor(private readonly locker: PgLocker, private readonly id: string) {}

  lock(signal: AbortSignal, requestRelease: RequestRelease): Promise<void> {
    return this.locker.acquire(this.id, signal, requestRelease);
  }

  unlock(): Promise<void> {
    return this.locker.release(this.id);
  }
}
