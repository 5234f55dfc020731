import { describe, it, expect, beforeAll, afterAll } from "vitest";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { blobStoreContract } from "../contracts/blobStore.ts";
import { FsBlobStore } from "../../src/storage/fs.ts";
import {
  CHUNK_SIZE,
  EncryptedBlobError,
  EncryptedBlobStore,
  HEADER_SIZE,
  encryptedSize,
  keyring,
  loadKeyring,
  parseKey,
  plaintextSize,
} from "../../src/storage/encrypted.ts";
import type { BlobStore, ByteRangeRequest } from "../../src/storage/blobStore.ts";
import { ConfigError, loadConfig } from "../../src/config.ts";
import { createBlobStore } from "../../src/storage/index.ts";
import { readAll } from "../support/streams.ts";

const tmpRoots: string[] = [];
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "enc-blob-"));
  tmpRoots.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpRoots) fs.rmSync(d, { recursive: true, force: true });
});

const newKey = () => parseKey(crypto.randomBytes(32).toString("base64"), "test key");

blobStoreContract("encrypted over fs", async () => new EncryptedBlobStore(new FsBlobStore(tmpDir()), keyring(newKey())));

/** Counts the bytes the wrapped store hands out, to show ranged reads only fetch their chunks. */
class CountingStore extends FsBlobStore {
  bytesRead = 0;
  ranges: (ByteRangeRequest | undefined)[] = [];
  override async get(key: string, range?: ByteRangeRequest): Promise<Readable> {
    this.ranges.push(range);
    const s = await super.get(key, range);
    s.on("data", (c: Buffer) => (this.bytesRead += c.length));
    return s;
  }
}

describe("EncryptedBlobStore", () => {
  const key = newKey();
  let root: string;
  let inner: CountingStore;
  let store: EncryptedBlobStore;
  beforeAll(async () => {
    root = tmpDir();
    inner = new CountingStore(root);
    store = new EncryptedBlobStore(inner, keyring(key));
    await store.init();
  });

  it("sizes: plaintext <-> stored size round-trip at chunk boundaries", () => {
    for (const n of [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 10_000_019]) {
      expect(plaintextSize(encryptedSize(n))).toBe(n);
    }
    // sizes no encrypted object can have
    expect(plaintextSize(HEADER_SIZE + 15)).toBeNull();
    expect(plaintextSize(HEADER_SIZE + CHUNK_SIZE + 16)).toBeNull();
  });

  it("what lands on disk is ciphertext: no plaintext run survives, stat reports the plaintext size", async () => {
    const data = Buffer.alloc(200_000, "PATIENT^NAME=Zhang^San ");
    await store.put("t/plain", Readable.from([data]));
    const onDisk = fs.readFileSync(path.join(root, "t/plain"));
    expect(onDisk.length).toBe(encryptedSize(data.length));
    expect(onDisk.includes(Buffer.from("PATIENT^NAME"))).toBe(false);
    expect(onDisk.subarray(0, 4).toString()).toBe("DRLE");
    expect((await store.stat("t/plain"))?.size).toBe(data.length);
    const listed: Record<string, number> = {};
    for await (const b of store.list("t/")) listed[b.key] = b.size;
    expect(listed["t/plain"]).toBe(data.length);
  });

  it("the same bytes written twice give different ciphertexts (fresh salt per object)", async () => {
    const data = crypto.randomBytes(1000);
    await store.put("t/a1", Readable.from([data]));
    await store.put("t/a2", Readable.from([data]));
    expect(fs.readFileSync(path.join(root, "t/a1")).equals(fs.readFileSync(path.join(root, "t/a2")))).toBe(false);
  });

  it("a ranged read fetches only the chunks it touches", async () => {
    const data = crypto.randomBytes(40 * CHUNK_SIZE + 777);
    await store.put("t/big", Readable.from([data]));
    // first read of this object fetches its header once; later ones use the cached header
    await readAll(await store.get("t/big", { start: 0, end: 0 }));
    inner.bytesRead = 0;
    inner.ranges = [];
    const start = 17 * CHUNK_SIZE + 100;
    const end = 18 * CHUNK_SIZE + 50;
    const got = await readAll(await store.get("t/big", { start, end }));
    expect(got.equals(data.subarray(start, end + 1))).toBe(true);
    expect(inner.ranges).toHaveLength(1);
    expect(inner.bytesRead).toBe(2 * (CHUNK_SIZE + 16));
    // the tail, including the short last chunk
    const tail = await readAll(await store.get("t/big", { start: data.length - 1000, end: data.length - 1 }));
    expect(tail.equals(data.subarray(data.length - 1000))).toBe(true);
    // a range reaching past the end returns what exists
    const past = await readAll(await store.get("t/big", { start: data.length - 5, end: data.length + 5000 }));
    expect(past.equals(data.subarray(data.length - 5))).toBe(true);
  });

  it("a size that is an exact multiple of the chunk size round-trips (empty last chunk)", async () => {
    const data = crypto.randomBytes(2 * CHUNK_SIZE);
    await store.put("t/exact", Readable.from([data]), { size: data.length });
    expect((await readAll(await store.get("t/exact"))).equals(data)).toBe(true);
    expect((await readAll(await store.get("t/exact", { start: CHUNK_SIZE, end: 2 * CHUNK_SIZE - 1 }))).equals(data.subarray(CHUNK_SIZE))).toBe(true);
  });

  it("putFile encrypts and removes the plaintext source", async () => {
    const src = path.join(tmpDir(), "spool.dcm");
    const data = crypto.randomBytes(150_000);
    fs.writeFileSync(src, data);
    const st = await store.putFile("t/file", src);
    expect(st.size).toBe(data.length);
    expect(fs.existsSync(src)).toBe(false);
    expect((await readAll(await store.get("t/file"))).equals(data)).toBe(true);
  });

  it("a flipped bit is an error, never altered bytes", async () => {
    const data = crypto.randomBytes(3 * CHUNK_SIZE);
    await store.put("t/tamper", Readable.from([data]));
    const file = path.join(root, "t/tamper");
    const raw = fs.readFileSync(file);
    raw[HEADER_SIZE + CHUNK_SIZE + 16 + 10] ^= 0x01; // inside chunk 1
    fs.writeFileSync(file, raw);
    const fresh = new EncryptedBlobStore(new FsBlobStore(root), keyring(key));
    await expect(readAll(await fresh.get("t/tamper"))).rejects.toBeInstanceOf(EncryptedBlobError);
    await expect(readAll(await fresh.get("t/tamper", { start: CHUNK_SIZE + 5, end: CHUNK_SIZE + 10 }))).rejects.toThrow(/fails authentication/);
    // chunk 0 is untouched and still readable on its own
    expect((await readAll(await fresh.get("t/tamper", { start: 0, end: 99 }))).equals(data.subarray(0, 100))).toBe(true);
  });

  it("chunks cannot be reordered, dropped from the end, or moved to another object", async () => {
    const data = crypto.randomBytes(3 * CHUNK_SIZE + 10);
    await store.put("t/order", Readable.from([data]));
    await store.put("t/other", Readable.from([data]));
    const file = path.join(root, "t/order");
    const raw = fs.readFileSync(file);
    const rec = (i: number) => raw.subarray(HEADER_SIZE + i * (CHUNK_SIZE + 16), HEADER_SIZE + (i + 1) * (CHUNK_SIZE + 16));
    const fresh = () => new EncryptedBlobStore(new FsBlobStore(root), keyring(key));

    fs.writeFileSync(file, Buffer.concat([raw.subarray(0, HEADER_SIZE), rec(1), rec(0), raw.subarray(HEADER_SIZE + 2 * (CHUNK_SIZE + 16))]));
    await expect(readAll(await fresh().get("t/order"))).rejects.toThrow(/fails authentication/);

    // cut after two full chunks: a full chunk is never the last one
    fs.writeFileSync(file, raw.subarray(0, HEADER_SIZE + 2 * (CHUNK_SIZE + 16)));
    await expect(readAll(await fresh().get("t/order"))).rejects.toThrow(/truncated/);

    // the whole file under another key name: bound to its storage key
    fs.writeFileSync(file, raw);
    fs.copyFileSync(file, path.join(root, "t/moved"));
    await expect(readAll(await fresh().get("t/moved"))).rejects.toThrow(/fails authentication/);
    expect((await readAll(await fresh().get("t/order"))).equals(data)).toBe(true);
  });

  it("a wrong key is detected by its key id, with a sentence; a rotated-out key stays readable", async () => {
    const data = crypto.randomBytes(5000);
    await store.put("t/keyed", Readable.from([data]));
    const other = newKey();
    const wrong = new EncryptedBlobStore(new FsBlobStore(root), keyring(other));
    await expect(wrong.get("t/keyed")).resolves.toBeDefined();
    await expect(readAll(await wrong.get("t/keyed"))).rejects.toThrow(new RegExp(`encrypted with key ${key.id}, which is not configured`));
    await expect(wrong.get("t/keyed", { start: 0, end: 10 })).rejects.toThrow(/not configured/);
    // rotation: new current key, old key kept for reading
    const rotated = new EncryptedBlobStore(new FsBlobStore(root), keyring(other, [key]));
    expect((await readAll(await rotated.get("t/keyed"))).equals(data)).toBe(true);
    await rotated.put("t/new", Readable.from([data]));
    expect(fs.readFileSync(path.join(root, "t/new")).subarray(8, 16).toString("hex")).toBe(other.id);
  });

  it("a plaintext object (stored before encryption was enabled) is refused, not returned", async () => {
    fs.mkdirSync(path.join(root, "t"), { recursive: true });
    fs.writeFileSync(path.join(root, "t/legacy"), Buffer.alloc(500, 7));
    await expect(readAll(await store.get("t/legacy"))).rejects.toThrow(/not encrypted by dicom-relay/);
  });
});

describe("encryption keys and configuration", () => {
  it("parses hex, base64 and raw 32-byte keys; refuses anything else", () => {
    const raw = crypto.randomBytes(32);
    expect(parseKey(raw.toString("hex"), "k").key.equals(raw)).toBe(true);
    expect(parseKey(raw.toString("base64"), "k").key.equals(raw)).toBe(true);
    expect(parseKey(raw.toString("base64url"), "k").key.equals(raw)).toBe(true);
    expect(parseKey(Buffer.concat([Buffer.from([0xff]), raw.subarray(1)]), "k").key.length).toBe(32);
    expect(() => parseKey("too-short", "k")).toThrow(ConfigError);
    expect(() => parseKey(crypto.randomBytes(16).toString("hex"), "k")).toThrow(/256-bit key/);
  });

  it("is off by default; on, it needs a key, reads key files and wraps the configured store", async () => {
    expect(loadConfig({ env: {} }).encryption.enabled).toBe(false);
    expect(() => loadConfig({ env: { DICOM_RELAY_ENCRYPTION_ENABLED: "true" } })).toThrow(/encryption\.keyFile/);
    const dir = tmpDir();
    const keyFile = path.join(dir, "relay.key");
    const oldFile = path.join(dir, "old.key");
    fs.writeFileSync(keyFile, crypto.randomBytes(32).toString("base64") + "\n", { mode: 0o600 });
    fs.writeFileSync(oldFile, crypto.randomBytes(32).toString("hex"), { mode: 0o600 });
    const config = loadConfig({
      env: {},
      overrides: { dataDir: dir, encryption: { enabled: true, keyFile, previousKeyFiles: `${oldFile}` } },
    });
    const ring = loadKeyring(config.encryption);
    expect(ring.byId.size).toBe(2);
    const s: BlobStore = createBlobStore(config);
    expect(s).toBeInstanceOf(EncryptedBlobStore);
    expect(s.kind).toBe("encrypted-fs");
    await s.init();
    await s.put("x/y", Readable.from([Buffer.from("hello")]));
    expect((await readAll(await s.get("x/y"))).toString()).toBe("hello");
    expect(() => loadKeyring({ ...config.encryption, keyFile: path.join(dir, "missing.key") })).toThrow(/cannot read the encryption key file/);
  });
});

describe("a relay with encryption at rest", () => {
  it("stores ciphertext on disk and serves the same bytes and frames through WADO-RS", async () => {
    const { startTestRelay } = await import("../support/relay.ts");
    const { dicomwebClient } = await import("../support/dicomwebClient.ts");
    const { makeInstance, newUid } = await import("../../scripts/lib/synthetic.ts");
    const dir = tmpDir();
    const keyFile = path.join(dir, "relay.key");
    fs.writeFileSync(keyFile, crypto.randomBytes(32).toString("base64"), { mode: 0o600 });
    const relay = await startTestRelay({ encryption: { enabled: true, keyFile } });
    try {
      const ids = { studyInstanceUID: newUid(), seriesInstanceUID: newUid(), sopInstanceUID: newUid() };
      // 4 frames of 256x256x2 bytes: pixel data spans many 64 KiB chunks
      const bytes = makeInstance({ ...ids, rows: 256, columns: 256, frames: 4, modality: "CT", bitsAllocated: 16, patientName: "Secret^Patient" });
      const client = dicomwebClient(relay.dicomwebUrl);
      await client.storeInstances({ datasets: [bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer] });
      const back = Buffer.from(await client.retrieveInstance(ids));
      expect(back.equals(bytes)).toBe(true);
      const frames = await client.retrieveInstanceFrames({ ...ids, frameNumbers: [3] });
      const frame = Buffer.from(frames[0]!);
      expect(frame.length).toBe(256 * 256 * 2);
      expect(bytes.subarray(bytes.length - 2 * frame.length, bytes.length - frame.length).equals(frame)).toBe(true);
      const onDisk: Buffer[] = [];
      const walk = (d: string) => {
        for (const e of fs.readdirSync(d, { withFileTypes: true })) e.isDirectory() ? walk(path.join(d, e.name)) : onDisk.push(fs.readFileSync(path.join(d, e.name)));
      };
      walk(path.join(relay.dataDir, "blobs", "instances"));
      expect(onDisk).toHaveLength(1);
      expect(onDisk[0]!.subarray(0, 4).toString()).toBe("DRLE");
      expect(onDisk[0]!.includes(Buffer.from("Secret^Patient"))).toBe(false);
    } finally {
      await relay.dispose();
    }
  }, 60_000);
});
