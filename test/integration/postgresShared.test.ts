/**
 * What several relay nodes share through PostgreSQL besides the index (real server, test/support/postgres.ts):
 * the TransferStore contract, the receipt signing key (one for every node), and the per-blob-key lock
 * held across processes (two PostgresIndex instances stand for two nodes: separate pools, separate sessions),
 * and access control (tokens, share links, one audit log) shared by two relays with authentication on.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { PostgresIndex } from "../../src/catalog/postgres.ts";
import { PostgresTransferStore, loadSharedReceiptSigner } from "../../src/transfers/postgresTransferStore.ts";
import { ReceiptSigner, verifyReceipt } from "../../src/transfers/receipts.ts";
import { transferStoreContract } from "../contracts/transferStore.ts";
import { deliveryStoreContract } from "../contracts/deliveryStore.ts";
import { PostgresDeliveryStore } from "../../src/retention/deliveryStore.ts";
import { startPostgres, runSql, type RunningPostgres } from "../support/postgres.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { runCli } from "../support/relayProcess.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";
import request from "supertest";

let server: RunningPostgres;
let sharedUrl: string;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pg-shared-"));
beforeAll(async () => {
  server = await startPostgres();
  sharedUrl = await server.createDatabase();
}, 120_000);
afterAll(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}, 30_000);

const opened: PostgresIndex[] = [];
async function node(url = sharedUrl): Promise<PostgresIndex> {
  const idx = new PostgresIndex({ url, poolSize: 3 });
  opened.push(idx);
  await idx.init();
  return idx;
}
afterEach(async () => {
  await Promise.all(opened.splice(0).map((i) => i.close()));
});

transferStoreContract("postgres", async () => {
  const store = new PostgresTransferStore((await node()).sharedPool);
  await store.init();
  return store;
});
deliveryStoreContract("postgres", async () => {
  const store = new PostgresDeliveryStore((await node()).sharedPool);
  await store.init();
  return store;
});

describe("PostgresTransferStore across nodes", () => {
  it("a transfer created through one node is read and completed through the other, once", async () => {
    const [a, b] = [await node(), await node()];
    const sa = new PostgresTransferStore(a.sharedPool);
    const sb = new PostgresTransferStore(b.sharedPool);
    await sa.init();
    await sb.init();
    const id = crypto.randomUUID();
    const now = new Date().toISOString();
    const item = (uid: string) => ({ sopInstanceUID: uid, sha256: "d".repeat(64), size: 5, studyInstanceUID: null, seriesInstanceUID: null, state: "missing" as const, reason: null, failureCode: null, updatedAt: now });
    await sa.createTransfer({ id, label: null, createdAt: now, createdBy: null }, [item("1.1"), item("1.2")]);
    await sb.updateItem(id, "1.1", { state: "received" });
    await sa.updateItem(id, "1.2", { state: "received" });
    expect(await sb.countItems(id)).toEqual({ present: 0, received: 2, missing: 0, failed: 0 });
    const wins = await Promise.all([sa.markComplete(id, now), sb.markComplete(id, now), sa.markComplete(id, now), sb.markComplete(id, now)]);
    expect(wins.filter(Boolean)).toHaveLength(1);
  });

  it("init says plainly when the index's migrations have not run", async () => {
    const url = await server.createDatabase();
    const raw = new PostgresTransferStore(new (await import("pg")).default.Pool({ connectionString: url, max: 1 }));
    await expect(raw.init()).rejects.toThrow(/no transfer tables.*migrations \(version 2\)/);
    await (raw as unknown as { pool: { end(): Promise<void> } }).pool.end();
  });
});

describe("receipt signing key shared through PostgreSQL", () => {
  it("nodes starting at once all get the same key; a receipt signed by one verifies with the key another publishes", async () => {
    const url = await server.createDatabase();
    const nodes = await Promise.all([node(url), node(url), node(url)]);
    const loaded = await Promise.all(nodes.map((n, i) => loadSharedReceiptSigner(n.sharedPool, path.join(dir, `absent-${i}.pem`))));
    expect(new Set(loaded.map((l) => l.signer.keyId)).size).toBe(1);
    expect(loaded.filter((l) => l.source === "new")).toHaveLength(1);
    expect(Number((await runSql(url, "SELECT COUNT(*) AS n FROM relay_keys")).rows[0]!.n)).toBe(1);
    const receipt = loaded[0]!.signer.sign({ transferId: "t", issuedAt: new Date().toISOString(), issuer: null, instances: [] });
    expect(verifyReceipt(receipt.jws, loaded[2]!.signer.publishedKey()).transferId).toBe("t");
    // a later start reads it back
    const again = await loadSharedReceiptSigner((await node(url)).sharedPool, path.join(dir, "absent-x.pem"));
    expect(again).toMatchObject({ source: "database" });
    expect(again.signer.keyId).toBe(loaded[0]!.signer.keyId);
  });

  it("a single node moved to PostgreSQL keeps its key file's key, so its earlier receipts still verify", async () => {
    const url = await server.createDatabase();
    const keyPath = path.join(dir, "old-node.pem");
    const old = await ReceiptSigner.loadOrCreate(keyPath);
    const earlier = old.sign({ transferId: "before", issuedAt: new Date().toISOString(), issuer: null, instances: [] });
    const shared = await loadSharedReceiptSigner((await node(url)).sharedPool, keyPath);
    expect(shared.source).toBe("key file");
    expect(shared.signer.keyId).toBe(old.keyId);
    expect(verifyReceipt(earlier.jws, shared.signer.publishedKey()).transferId).toBe("before");
  });

  it("refuses a key file that is not Ed25519 rather than sharing it", async () => {
    const url = await server.createDatabase();
    const keyPath = path.join(dir, "ec.pem");
    fs.writeFileSync(keyPath, crypto.generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }));
    await expect(loadSharedReceiptSigner((await node(url)).sharedPool, keyPath)).rejects.toThrow(/not an Ed25519 key/);
    expect(Number((await runSql(url, "SELECT COUNT(*) AS n FROM relay_keys")).rows[0]!.n)).toBe(0);
  });
});

// the index's lock itself is called here: the module's withBlobLock adds an in-process lock, which would
// serialise these two in-process "nodes" on its own and hide what PostgreSQL does
describe("per-blob-key lock across nodes (PostgreSQL advisory lock)", () => {
  it("two nodes never run inside the lock of the same blob key at once; other keys are not blocked", async () => {
    const [a, b] = [await node(), await node()];
    const key = `instances/${crypto.randomBytes(32).toString("hex")}`;
    const events: string[] = [];
    let inside = 0;
    let most = 0;
    const work = (who: string) => async () => {
      inside++;
      most = Math.max(most, inside);
      events.push(`${who} in`);
      await new Promise((r) => setTimeout(r, 300));
      events.push(`${who} out`);
      inside--;
      return who;
    };
    const other = `instances/${crypto.randomBytes(32).toString("hex")}`;
    let otherDoneWhileHeld = false;
    const results = await Promise.all([
      a.withBlobLock(key, work("a1")),
      b.withBlobLock(key, work("b1")),
      a.withBlobLock(key, work("a2")),
      b.withBlobLock(key, work("b2")),
      (async () => {
        await new Promise((r) => setTimeout(r, 50));
        await b.withBlobLock(other, async () => undefined);
        // before the last holder of the busy key left
        otherDoneWhileHeld = events.filter((e) => e.endsWith(" out")).length < 4;
      })(),
    ]);
    expect(results.slice(0, 4).sort()).toEqual(["a1", "a2", "b1", "b2"]);
    expect(most).toBe(1);
    expect(events).toHaveLength(8);
    for (let i = 0; i < 8; i += 2) expect(events[i]!.split(" ")[0]).toBe(events[i + 1]!.split(" ")[0]);
    expect(otherDoneWhileHeld).toBe(true);
  });

  it("a failing holder releases the lock; the server releases it when a node's session dies", async () => {
    const [a, b] = [await node(), await node()];
    const key = `instances/${crypto.randomBytes(32).toString("hex")}`;
    await expect(a.withBlobLock(key, async () => { throw new Error("put failed"); })).rejects.toThrow("put failed");
    expect(await b.withBlobLock(key, async () => "free")).toBe("free");

    // a node that dies while holding the lock: its backend is ended, the waiting node gets the lock
    let holding!: () => void;
    let finish!: () => void;
    const held = new Promise<void>((r) => (holding = r));
    const finished = new Promise<void>((r) => (finish = r));
    const dying = a.withBlobLock(key, async () => {
      holding();
      await finished;
    });
    await held;
    let got = false;
    const waiting = b.withBlobLock(key, async () => { got = true; });
    await new Promise((r) => setTimeout(r, 200));
    expect(got).toBe(false);
    await runSql(sharedUrl, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dicom-relay-locks' AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)");
    await waiting;
    expect(got).toBe(true);
    // the holder's own release then fails quietly (its connection is gone) instead of crashing the node
    finish();
    await dying;
    expect(await a.withBlobLock(key, async () => "again")).toBe("again");
  });
});

describe("access control shared through PostgreSQL: two relays, auth on", () => {
  let url: string;
  let a: TestRelay;
  let b: TestRelay;
  const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
  const study = newUid();

  beforeAll(async () => {
    url = await server.createDatabase();
    const over = { index: { kind: "postgres" as const, postgres: { url, poolSize: 3 } }, auth: { enabled: true } };
    // both start at once on an empty database: exactly one makes the initial admin token
    [a, b] = await Promise.all([startTestRelay(over), startTestRelay(over)]);
  });
  afterAll(async () => {
    await a?.dispose();
    await b?.dispose();
  });

  it("one initial admin token for the cluster, accepted by both nodes; a token made on one works on the other", async () => {
    const initial = [a.initialAdminToken, b.initialAdminToken].filter((t): t is string => t !== null);
    expect(initial).toHaveLength(1);
    const admin = initial[0]!;
    expect(a.services.access!.db).toBeNull();
    for (const n of [a, b]) expect((await request(n.url).get("/api/admin/tokens").set(bearer(admin))).status).toBe(200);

    const made = (await request(a.url).post("/api/admin/tokens").set(bearer(admin)).send({ scopes: ["read", "upload"] })).body as { id: string; token: string };
    const inst = makeInstance({ studyInstanceUID: study, rows: 8, columns: 8 });
    const stored = await request(b.url).post("/dicom-web/studies").set(bearer(made.token)).set("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=x")
      .send(Buffer.concat([Buffer.from("--x\r\nContent-Type: application/dicom\r\n\r\n"), inst, Buffer.from("\r\n--x--\r\n")]));
    expect(stored.status).toBe(200);
    expect((await request(a.url).get(`/dicom-web/studies?StudyInstanceUID=${study}`).set(bearer(made.token))).body).toHaveLength(1);

    // a share link made on B opens the study on A
    const share = (await request(b.url).post("/api/admin/shares").set(bearer(admin)).send({ studies: [study] })).body as { token: string };
    expect((await request(a.url).get(`/share/${share.token}/dicom-web/studies`)).body).toHaveLength(1);

    // revoked on B: refused on A at once
    expect((await request(b.url).delete(`/api/admin/tokens/${made.id}`).set(bearer(admin))).status).toBe(200);
    const refused = await request(a.url).get("/dicom-web/studies").set(bearer(made.token));
    expect(refused.status).toBe(401);
    expect(refused.body.error).toMatch(/revoked/);
  });

  it("both nodes write one audit log, one intact hash chain; UPDATE and DELETE are refused by the database", async () => {
    await Promise.all([a.services.access!.audit.flush(), b.services.access!.audit.flush()]);
    const audit = b.services.access!.audit;
    const rows = await audit.query({ study });
    const stores = rows.filter((r) => r.action === "instance.store");
    expect(stores).toHaveLength(1);
    const all = await audit.query({ limit: 10_000 });
    // what happened on A (token made, revoked token refused) and on B (revocation, STOW) is in the one log
    const actions = all.map((r) => `${r.action} ${r.outcome}`);
    expect(actions).toEqual(expect.arrayContaining(["token.create success", "token.revoke success", "auth failure", "dicomweb.stow success", "share.create success"]));
    expect(all.map((r) => r.seq)).toEqual([...all.map((r) => r.seq)].sort((x, y) => x - y));
    expect(await audit.verifyChain()).toMatchObject({ ok: true, checked: all.length });
    await expect(runSql(url, "UPDATE audit SET actor = 'someone else'")).rejects.toThrow(/append-only/);
    await expect(runSql(url, "DELETE FROM audit")).rejects.toThrow(/append-only/);

    // concurrent appends from both nodes still chain
    for (let i = 0; i < 20; i++) {
      (i % 2 ? a : b).services.access!.audit.record({ actor: "test", action: "test.append", outcome: "success", detail: String(i) });
    }
    await Promise.all([a.services.access!.audit.flush(), b.services.access!.audit.flush()]);
    expect((await audit.query({ action: "test.append" })).map((r) => r.detail).sort()).toEqual(Array.from({ length: 20 }, (_, i) => String(i)).sort());
    expect(await audit.verifyChain()).toMatchObject({ ok: true });
  });

  it("the token and audit CLI work on the shared database; a token it makes is accepted by both nodes", async () => {
    const env = { DICOM_RELAY_INDEX_KIND: "postgres", DICOM_RELAY_INDEX_POSTGRES_URL: url, DICOM_RELAY_DATA_DIR: fs.mkdtempSync(path.join(dir, "cli-")), DICOM_RELAY_LOG_LEVEL: "silent" };
    const created = await runCli(["token", "create", "--scope", "read", "--json"], env);
    expect(created.code, created.stderr).toBe(0);
    const { token } = JSON.parse(created.stdout) as { token: string };
    for (const n of [a, b]) expect((await request(n.url).get("/dicom-web/studies").set(bearer(token))).status).toBe(200);
    const verify = await runCli(["audit", "--verify"], env);
    expect(verify.stdout).toMatch(/intact: \d+ entries, hash chain verified/);
    const listed = await runCli(["audit", "--action", "token.create", "--json"], env);
    expect((JSON.parse(listed.stdout) as { actor: string }[]).some((r) => r.actor.startsWith("cli:"))).toBe(true);
  });

  it("PostgreSQL down: a request with a token gets 503 + Retry-After (the token cannot be checked), not 401; back up: accepted again", async () => {
    const made = await a.services.access!.tokens.create({ scopes: ["read"], createdBy: "test" });
    await server.halt();
    try {
      const res = await request(a.url).get("/dicom-web/studies").set(bearer(made.token));
      expect(res.status).toBe(503);
      expect(Number(res.headers["retry-after"])).toBeGreaterThan(0);
      expect(res.body.error).toMatch(/index database is unavailable/);
    } finally {
      await server.start();
    }
    expect((await request(b.url).get("/dicom-web/studies").set(bearer(made.token))).status).toBe(200);
  });
});
