/**
 * SHA-256 of whole files on worker threads, while the push's own thread parses headers. Reading a folder is bound by
 * that one thread: a 3 GB CT folder is ~1.7 s of hashing and ~3 s of header parsing on it, one after the other per
 * file. A worker reads and hashes each file itself (its own descriptor, a reused 1 MiB buffer, synchronous reads on
 * its thread), so the two overlap on a second core.
 *
 * The worker's code is a string (an eval worker): the installable uploader is one bundled file, with no module file
 * beside it to start a worker from. Where a worker cannot be started, files are hashed on the calling thread.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import { Worker } from "node:worker_threads";

const WORKER_CODE = `
const { parentPort } = require("node:worker_threads");
const fs = require("node:fs");
const crypto = require("node:crypto");
const buf = Buffer.allocUnsafe(1024 * 1024);
parentPort.on("message", ({ id, file, size }) => {
  let fd;
  try {
    fd = fs.openSync(file, "r");
    const h = crypto.createHash("sha256");
    for (let pos = 0; pos < size; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
      if (n === 0) throw new Error("the file became shorter while it was read");
      h.update(buf.subarray(0, n));
      pos += n;
    }
    parentPort.postMessage({ id, sha256: h.digest("hex") });
  } catch (err) {
    parentPort.postMessage({ id, error: String((err && err.message) || err) });
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
});
`;

type Job = { file: string; size: number; resolve: (sha256: string) => void; reject: (err: Error) => void };

export class FileHasher {
  private workers: Array<{ worker: Worker; queued: number }> | null = null;
  private readonly jobs = new Map<number, Job & { slot: number }>();
  private nextId = 1;
  private broken = false;

  /** @param threads workers (default: one per core beyond the first, at most 2) */
  constructor(private readonly threads = Math.max(1, Math.min(2, os.availableParallelism() - 1))) {}

  /** SHA-256 (hex) of the first `size` bytes of the file; rejects if the file is shorter or cannot be read. */
  hash(file: string, size: number): Promise<string> {
    const pool = this.pool();
    if (!pool) return hashHere(file, size);
    // the worker with the fewest files waiting
    let slot = 0;
    for (let i = 1; i < pool.length; i++) if (pool[i]!.queued < pool[slot]!.queued) slot = i;
    const id = this.nextId++;
    pool[slot]!.queued++;
    return new Promise<string>((resolve, reject) => {
      this.jobs.set(id, { file, size, resolve, reject, slot });
      pool[slot]!.worker.postMessage({ id, file, size });
    });
  }

  /** Stops the workers (files still being hashed are rejected). */
  async close(): Promise<void> {
    const pool = this.workers;
    this.workers = null;
    if (!pool) return;
    await Promise.all(pool.map((w) => w.worker.terminate()));
    for (const [id, job] of this.jobs) {
      this.jobs.delete(id);
      job.reject(new Error("the hashing stopped"));
    }
  }

  private pool(): Array<{ worker: Worker; queued: number }> | null {
    if (this.broken) return null;
    if (this.workers) return this.workers;
    try {
      this.workers = Array.from({ length: this.threads }, (_, slot) => {
        const worker = new Worker(WORKER_CODE, { eval: true });
        // never what keeps the process alive
        worker.unref();
        worker.on("message", (m: { id: number; sha256?: string; error?: string }) => {
          const job = this.jobs.get(m.id);
          if (!job) return;
          this.jobs.delete(m.id);
          const w = this.workers?.[slot];
          if (w) w.queued--;
          if (m.sha256) job.resolve(m.sha256);
          else job.reject(new Error(m.error ?? "the file could not be hashed"));
        });
        worker.on("error", (err) => this.fail(err));
        return { worker, queued: 0 };
      });
    } catch {
      this.broken = true;
      this.workers = null;
    }
    return this.workers;
  }

  /** A worker died: what the workers had is hashed here instead, and so is everything after. */
  private fail(_err: Error): void {
    this.broken = true;
    const pool = this.workers;
    this.workers = null;
    for (const w of pool ?? []) void w.worker.terminate();
    for (const [id, job] of this.jobs) {
      this.jobs.delete(id);
      hashHere(job.file, job.size).then(job.resolve, job.reject);
    }
  }
}

const HASH_CHUNK = 1024 * 1024;
/** read buffers reused across files (one per file being hashed on this thread): no garbage per chunk */
const hashBuffers: Buffer[] = [];

/** SHA-256 of the first `size` bytes of an open file, on the calling thread, through a reused buffer. */
export async function sha256Open(fd: fs.promises.FileHandle, size: number): Promise<string> {
  const h = crypto.createHash("sha256");
  const buf = hashBuffers.pop() ?? Buffer.allocUnsafe(HASH_CHUNK);
  try {
    for (let pos = 0; pos < size; ) {
      const { bytesRead } = await fd.read(buf, 0, Math.min(HASH_CHUNK, size - pos), pos);
      if (bytesRead === 0) throw new Error("the file became shorter while it was read");
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    hashBuffers.push(buf);
  }
  return h.digest("hex");
}

/** The same for a file by name: where no worker could be started, or one died. */
async function hashHere(file: string, size: number): Promise<string> {
  const fd = await fs.promises.open(file, "r");
  try {
    return await sha256Open(fd, size);
  } finally {
    await fd.close();
  }
}
