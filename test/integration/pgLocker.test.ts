/**
 * The PostgreSQL advisory-lock tus Locker against a real PostgreSQL: two lockers (two nodes) contend for one upload,
 * the holder is asked to let go (NOTIFY across nodes, directly within one), a lock dies with its session, waits are
 * bounded; and a relay on PostgreSQL + MinIO takes tus uploads with it.
 */
import crypto from "node:crypto";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as tus from "tus-js-client";
import { ERRORS } from "@tus/server";
import { startPostgres, runSql, type RunningPostgres } from "../support/postgres.ts";
import { startMinio, type RunningMinio } from "../support/minio.ts";
import { startTestRelay } from "../support/relay.ts";
import { LockUnavailableError, PgLocker } from "../../src/transfers/pgLocker.ts";
import { makeInstance } from "../../scripts/lib/synthetic.ts";
import type { UploadResult } from "../../src/transfers/transferStore.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const newId = () => crypto.randomBytes(16).toString("hex");
const TUS = { "Tus-Resumable": "1.0.0" };

let server: RunningPostgres;
let url: string;
const lockers: PgLocker[] = [];
const locker = (name: string, acquireTimeoutMs = 5_000) => {
  const l = new PgLocker({ url, acquireTimeoutMs, applicationName: name, renotifyMs: 200 });
  lockers.push(l);
  return l;
};

beforeAll(async () => {
  server = await startPostgres();
  url = await server.createDatabase();
}, 120_000);
afterAll(async () => {
  for (const l of lockers) await l.close();
  await server?.stop();
}, 30_000);

describe("PostgreSQL tus locker", () => {
  it("one holder per upload across two lockers; the waiter asks the holder (NOTIFY) and times out when it does not let go", async () => {
    const a = locker("node-a-1");
    const b = locker("node-b-1", 1_500);
    const id = newId();
    let asked = 0;
    const lockA = a.newLock(id);
    await lockA.lock(new AbortController().signal, () => {
      asked++;
    });
    const started = Date.now();
    await expect(b.newLock(id).lock(new AbortController().signal, () => {})).rejects.toBe(ERRORS.ERR_LOCK_TIMEOUT);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_400);
    expect(asked).toBeGreaterThanOrEqual(1);
    // other uploads are not held up
    const other = b.newLock(newId());
    await other.lock(new AbortController().signal, () => {});
    await other.unlock();
    // once A lets go, B gets it
    await lockA.unlock();
    const lockB = b.newLock(id);
    await lockB.lock(new AbortController().signal, () => {});
    expect(b.heldIds()).toContain(id);
    await lockB.unlock();
    expect(b.heldIds()).not.toContain(id);
  }, 30_000);

  it("honours a release request from another node: the holder unlocks and the waiter gets the lock", async () => {
    const a = locker("node-a-2");
    const b = locker("node-b-2");
    const id = newId();
    const lockA = a.newLock(id);
    let released = false;
    await lockA.lock(new AbortController().signal, async () => {
      // what tus does: the old request stops and unlocks
      if (!released) {
        released = true;
        await sleep(100);
        await lockA.unlock();
      }
    });
    const lockB = b.newLock(id);
    await lockB.lock(new AbortController().signal, () => {});
    expect(released).toBe(true);
    expect(a.heldIds()).not.toContain(id);
    expect(b.heldIds()).toContain(id);
    await lockB.unlock();
  }, 30_000);

  it("within one process: a second request for the same upload asks the first directly, and waits for it", async () => {
    const a = locker("node-a-3");
    const id = newId();
    const first = a.newLock(id);
    let asked = 0;
    await first.lock(new AbortController().signal, () => {
      asked++;
      setTimeout(() => void first.unlock(), 50);
    });
    const second = a.newLock(id);
    await second.lock(new AbortController().signal, () => {});
    expect(asked).toBe(1);
    await second.unlock();
  }, 30_000);

  it("frees the lock when the holding session dies, and tells the holder to stop", async () => {
    const a = locker("node-a-4");
    const b = locker("node-b-4");
    const id = newId();
    let told = 0;
    await a.newLock(id).lock(new AbortController().signal, () => {
      told++;
    });
    const killed = await runSql(url, "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = 'node-a-4'");
    expect(killed.rows).toEqual([{ ok: true }]);
    const lockB = b.newLock(id);
    await lockB.lock(new AbortController().signal, () => {});
    expect(b.heldIds()).toContain(id);
    for (let i = 0; i < 50 && told === 0; i++) await sleep(20);
    expect(told).toBeGreaterThanOrEqual(1);
    expect(a.heldIds()).toEqual([]);
    await lockB.unlock();
    // the dead node reconnects on its next lock
    const again = a.newLock(newId());
    await again.lock(new AbortController().signal, () => {});
    await again.unlock();
  }, 30_000);

  it("stops waiting when the request is aborted", async () => {
    const a = locker("node-a-5");
    const b = locker("node-b-5", 20_000);
    const id = newId();
    const held = a.newLock(id);
    await held.lock(new AbortController().signal, () => {});
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    const started = Date.now();
    await expect(b.newLock(id).lock(ac.signal, () => {})).rejects.toBe(ERRORS.ERR_LOCK_TIMEOUT);
    expect(Date.now() - started).toBeLessThan(10_000);
    await held.unlock();
  }, 30_000);

  it("answers 503 (LockUnavailableError) when PostgreSQL cannot be reached", async () => {
    const dead = new PgLocker({ url: "postgres://relay@127.0.0.1:1/none", acquireTimeoutMs: 1_000 });
    lockers.push(dead);
    const err = await dead.newLock(newId()).lock(new AbortController().signal, () => {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockUnavailableError);
    expect((err as LockUnavailableError).status_code).toBe(503);
  });
});

describe("relay on PostgreSQL + MinIO uses the PostgreSQL locker for tus", () => {
  let minio: RunningMinio;
  beforeAll(async () => {
    minio = await startMinio();
  }, 60_000);
  afterAll(async () => {
    await minio?.destroy();
  });

  it("takes a chunked tus upload with advisory locks and ingests it", async () => {
    const relay = await startTestRelay({
      index: { kind: "postgres", postgres: { url: await server.createDatabase(), poolSize: 4 } },
      storage: { kind: "s3", s3: { endpoint: minio.endpoint, accessKey: minio.accessKey, secretKey: minio.secretKey, bucket: "pg-lock-it" } },
    });
    try {
      const tusOptions = (relay.services.transfers!.tus as unknown as { options: { locker: unknown } }).options;
      expect(tusOptions.locker).toBeInstanceOf(PgLocker);
      const bytes = makeInstance({ rows: 256, columns: 256, bitsAllocated: 16, modality: "CT" });
      const result = await new Promise<UploadResult>((resolve, reject) => {
        const up = new tus.Upload(bytes, {
          endpoint: `${relay.url}/api/uploads`,
          chunkSize: 40_000,
          retryDelays: [0, 200],
          storeFingerprintForResuming: false,
          onSuccess: ({ lastResponse }) => resolve(JSON.parse(lastResponse.getBody()) as UploadResult),
          onError: reject,
        });
        up.start();
      });
      expect(result.counts).toMatchObject({ entries: 1, stored: 1, failed: 0 });
      const sessions = await runSql(server.adminUrl, "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'dicom-relay-tus-locks'");
      expect(sessions.rows[0].n).toBeGreaterThanOrEqual(1);
    } finally {
      await relay.dispose();
    }
  }, 60_000);

  it("a PATCH hanging on relay A is asked to let go by a HEAD on relay B; the client resumes on B, byte-identical", async () => {
    const db = await server.createDatabase();
    const overrides = {
      index: { kind: "postgres" as const, postgres: { url: db, poolSize: 4 } },
      storage: { kind: "s3" as const, s3: { endpoint: minio.endpoint, accessKey: minio.accessKey, secretKey: minio.secretKey, bucket: "pg-two-nodes" } },
      transfers: { locker: { kind: "postgres" as const, acquireTimeoutSeconds: 20 } },
    };
    const a = await startTestRelay(overrides);
    const b = await startTestRelay(overrides);
    let hanging: http.ClientRequest | null = null;
    try {
      const bytes = makeInstance({ rows: 1024, columns: 1024, bitsAllocated: 16, modality: "CT" }); // ~2 MB
      const create = await fetch(`${a.url}/api/uploads`, { method: "POST", headers: { ...TUS, "Upload-Length": String(bytes.length) } });
      const id = new URL(create.headers.get("location")!).pathname.split("/").pop()!;
      // a client whose link died mid-PATCH: A holds the upload's lock while it waits for the rest of the body
      const sent = 700_000;
      hanging = http.request(`${a.url}/api/uploads/${id}`, {
        method: "PATCH",
        headers: { ...TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream", "Content-Length": String(bytes.length) },
      });
      hanging.on("error", () => {});
      hanging.write(bytes.subarray(0, sent));
      await sleep(500);
      const started = Date.now();
      // the client comes back through another node: B asks A (NOTIFY) to let go, A keeps what arrived and unlocks
      const head = await fetch(`${b.url}/api/uploads/${id}`, { method: "HEAD", headers: TUS });
      expect(head.status).toBe(200);
      expect(Date.now() - started).toBeLessThan(15_000);
      const offset = Number(head.headers.get("upload-offset"));
      expect(offset).toBe(sent);
      const result = await new Promise<UploadResult>((resolve, reject) => {
        const up = new tus.Upload(bytes, {
          endpoint: `${b.url}/api/uploads`,
          uploadUrl: `${b.url}/api/uploads/${id}`,
          retryDelays: [0, 200, 500],
          storeFingerprintForResuming: false,
          onSuccess: ({ lastResponse }) => resolve(JSON.parse(lastResponse.getBody()) as UploadResult),
          onError: reject,
        });
        up.start();
      });
      expect(result.counts).toMatchObject({ entries: 1, stored: 1, failed: 0 });
      expect(result.entries[0]!.sha256).toBe(crypto.createHash("sha256").update(bytes).digest("hex"));
      // A sees the instance too: one index, one bucket
      expect(await a.services.index.getInstance(result.entries[0]!.sopInstanceUID!)).not.toBeNull();
    } finally {
      hanging?.destroy();
      await a.dispose();
      await b.dispose();
    }
  }, 90_000);
});
