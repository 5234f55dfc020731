/**
 * Silent bodies and slow headers (issue 15, point 1): a relay started as its own process under a low descriptor
 * limit keeps serving valid clients while an attacker holds hundreds of stalled STOW-RS requests (with a valid
 * token and without one) and half-sent headers; the stalled connections are closed by the relay within its
 * timeouts and leave no spool files. In-process: a tus PATCH that goes silent keeps what arrived (the client
 * resumes), a refused request's connection is closed without its body being read, and the upload cap answers
 * 503 with Retry-After and a sentence.
 */
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCli, startRelayProcess, removeDataDir, type RelayProcess } from "../support/relayProcess.ts";
import { startTestRelay, type TestRelay } from "../support/relay.ts";
import { dicomwebClient } from "../support/dicomwebClient.ts";
import { makeInstance, newUid } from "../../scripts/lib/synthetic.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const toArrayBuffer = (b: Buffer): ArrayBuffer => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;

/** A connection that sends `head` (and optionally a few body bytes), then nothing; resolves `closed` when the relay closes it. */
function stalled(port: number, head: string, body = ""): { socket: net.Socket; closed: Promise<number>; response: () => string } {
  const socket = net.connect(port, "127.0.0.1");
  let text = "";
  const opened = Date.now();
  socket.on("data", (d: Buffer) => (text += d.toString("latin1")));
  socket.on("error", () => undefined);
  const closed = new Promise<number>((resolve) => socket.once("close", () => resolve(Date.now() - opened)));
  socket.once("connect", () => socket.write(head + body));
  return { socket, closed, response: () => text };
}

const stowHead = (port: number, token: string | null, length = 10_000_000) =>
  `POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
  (token ? `Authorization: Bearer ${token}\r\n` : "") +
  `Content-Type: multipart/related; type="application/dicom"; boundary=XyZ\r\nContent-Length: ${length}\r\n\r\n`;
const STOW_START = `--XyZ\r\nContent-Type: application/dicom\r\n\r\nDICM`;

function spoolFiles(dataDir: string): string[] {
  const dir = path.join(dataDir, "tmp");
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => n.endsWith(".spool")) : [];
}

describe("silent bodies under a low descriptor limit (relay process, ulimit -n 256)", () => {
  let node: RelayProcess | undefined;
  afterAll(async () => {
    if (node) {
      await node.stop();
      removeDataDir(node);
    }
  });

  it("valid clients are served while hundreds of stalled uploads and slow headers come and go; the relay closes them", async () => {
    const dataDir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? "/tmp", "relay-limits-"));
    const env = {
      DICOM_RELAY_DATA_DIR: dataDir,
      DICOM_RELAY_AUTH_ENABLED: "true",
      DICOM_RELAY_SERVER_BODY_IDLE_TIMEOUT_SECONDS: "2",
      DICOM_RELAY_SERVER_HEADERS_TIMEOUT_SECONDS: "2",
      DICOM_RELAY_SERVER_MAX_CONCURRENT_UPLOADS: "40",
      DICOM_RELAY_SERVER_MAX_CONCURRENT_UPLOADS_PER_TOKEN: "20",
    };
    const mk = async () => {
      const r = await runCli(["token", "create", "--scope", "read,upload", "--json"], env);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { token: string }).token;
    };
    const attackerToken = await mk();
    const validToken = await mk();
    node = await startRelayProcess({ env, maxOpenFiles: 256 });
    const port = node.port;

    // the attack: 300 connections at a time, a third each stalled STOWs with a token, without one, and half-sent
    // headers; every connection the relay closes is replaced, up to 1,500 connections in all
    const attack: { closed: Promise<number> }[] = [];
    let attacking = true;
    const kinds = [() => stalled(port, stowHead(port, attackerToken), STOW_START), () => stalled(port, stowHead(port, null), STOW_START), () => stalled(port, `POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n`)];
    let open = 0;
    const launch = () => {
      if (!attacking || attack.length >= 1500) return;
      const c = kinds[attack.length % 3]!();
      open++;
      attack.push(c);
      void c.closed.then(() => {
        open--;
        setTimeout(launch, 20);
      });
    };
    for (let i = 0; i < 300; i++) launch();
    await sleep(1000);

    // the valid sender: small STOWs and a QIDO, retrying on 503 or a refused connection (bounded)
    const client = dicomwebClient(node.dicomwebUrl, { Authorization: `Bearer ${validToken}` });
    const study = newUid();
    let stored = 0;
    let attempts = 0;
    const deadline = Date.now() + 40_000;
    while (stored < 3 && Date.now() < deadline && attempts < 200) {
      attempts++;
      try {
        await client.storeInstances({ datasets: [toArrayBuffer(makeInstance({ studyInstanceUID: study, rows: 8, columns: 8 }))] });
        stored++;
      } catch {
        await sleep(300);
      }
    }
    let found = 0;
    for (let i = 0; i < 50 && Date.now() < deadline + 10_000; i++) {
      try {
        found = (await client.searchForInstances({ studyInstanceUID: study })).length;
        break;
      } catch {
        await sleep(300);
      }
    }
    const stillOpenDuringAttack = open;
    attacking = false;
    expect(stored, `valid STOWs served during the attack (attempts ${attempts}); log: ${node.log(1500)}`).toBe(3);
    expect(found).toBe(3);
    expect(attack.length).toBeGreaterThan(300);

    // every attack connection is closed by the relay (body idle 2 s, headers 2 s), not held
    const results = await Promise.race([Promise.all(attack.map((a) => a.closed)), sleep(20_000).then(() => null)]);
    expect(results, `${open} of ${attack.length} attack connections were still open 20 s after the attack (${stillOpenDuringAttack} while it ran)`).not.toBeNull();
    // the aborted STOWs left no spool files behind
    for (let i = 0; i < 20 && spoolFiles(dataDir).length; i++) await sleep(250);
    expect(spoolFiles(dataDir)).toEqual([]);
    expect(node.exitCode).toBeNull();
  }, 120_000);
});

describe("body idle timeout, refused bodies and the upload cap (in process)", () => {
  let relay: TestRelay;
  let admin: string;
  afterAll(async () => {
    await relay?.dispose();
  });

  it("a silent STOW body ends its request and removes its spool; a silent tus PATCH keeps what arrived", async () => {
    relay = await startTestRelay({ auth: { enabled: true }, server: { bodyIdleTimeoutSeconds: 1, maxConcurrentUploadsPerToken: 2 } });
    admin = relay.initialAdminToken!;
    // more than the 1 MiB an instance may be held in memory: it is being spooled to a file when the sender goes silent
    const s = stalled(relay.port, stowHead(relay.port, admin, 3_000_000), STOW_START + "x".repeat(1_200_000));
    for (let i = 0; i < 20 && !spoolFiles(relay.dataDir).length; i++) await sleep(100);
    expect(spoolFiles(relay.dataDir).length).toBe(1);
    const ms = await Promise.race([s.closed, sleep(5000).then(() => -1)]);
    expect(ms).toBeGreaterThan(0);
    for (let i = 0; i < 20 && spoolFiles(relay.dataDir).length; i++) await sleep(100);
    expect(spoolFiles(relay.dataDir)).toEqual([]);

    // tus: create, then a PATCH that sends 3,000 of 10,000 bytes and goes silent
    const auth = { Authorization: `Bearer ${admin}`, "Tus-Resumable": "1.0.0" };
    const created = await fetch(`${relay.url}/api/uploads`, { method: "POST", headers: { ...auth, "Upload-Length": "10000" } });
    expect(created.status).toBe(201);
    const loc = new URL(created.headers.get("location")!, relay.url).pathname;
    const p = stalled(
      relay.port,
      `PATCH ${loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${admin}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 10000\r\n\r\n`,
      "a".repeat(3000),
    );
    expect(await Promise.race([p.closed, sleep(5000).then(() => -1)])).toBeGreaterThan(0);
    let offset = "";
    for (let i = 0; i < 20; i++) {
      const head = await fetch(`${relay.url}${loc}`, { method: "HEAD", headers: auth });
      offset = head.headers.get("upload-offset") ?? "";
      if (offset === "3000") break;
      await sleep(100);
    }
    expect(offset).toBe("3000");
  });

  it("a request refused before its body is answered with Connection: close and the connection is closed at once", async () => {
    for (const token of [null, "drt_0000000000000000_bad"]) {
      const s = stalled(relay.port, stowHead(relay.port, token, 50_000_000), "abc");
      const ms = await Promise.race([s.closed, sleep(3000).then(() => -1)]);
      expect(s.response()).toMatch(/^HTTP\/1\.1 401/);
      expect(s.response().toLowerCase()).toContain("connection: close");
      expect(ms).toBeGreaterThan(0);
      // closed right after the answer, long before the 1 s body idle timeout could have done it
      expect(ms).toBeLessThan(900);
    }
  });

  it("uploads beyond the per-token cap get 503 with Retry-After and a sentence; others still pass", async () => {
    const holders = [0, 1].map(() => stalled(relay.port, stowHead(relay.port, admin, 1_000_000), STOW_START));
    await sleep(300);
    const refused = await fetch(`${relay.dicomwebUrl}/studies`, {
      method: "POST",
      headers: { Authorization: `Bearer ${admin}`, "Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ' },
      body: `--XyZ--\r\n`,
    });
    expect(refused.status).toBe(503);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);
    expect((await refused.json()).error).toMatch(/maxConcurrentUploadsPerToken/);
    // reading is not an upload
    expect((await fetch(`${relay.dicomwebUrl}/studies`, { headers: { Authorization: `Bearer ${admin}` } })).status).toBe(200);
    for (const h of holders) h.socket.destroy();
    await Promise.all(holders.map((h) => h.closed));
    await sleep(100);
    const after = await fetch(`${relay.dicomwebUrl}/studies`, {
      method: "POST",
      headers: { Authorization: `Bearer ${admin}`, "Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ' },
      body: `--XyZ--\r\n`,
    });
    expect(after.status).not.toBe(503);
  });
});
