/**
 * Small files read whole on a worker thread, in batches. A WADO-RS retrieve of many small instances otherwise pays
 * three thread-pool round trips (open, read, close) per instance on the event loop, which then has less time for
 * the response; here the reads asked for in one turn of the event loop go as one message, are read there with
 * blocking calls (blocking only the worker), and their buffers come back moved, not copied.
 */
import { Worker } from "node:worker_threads";

/** plain CommonJS, so it runs the same under tsx, in tests and in a built relay */
const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads");
const fs = require("node:fs");
parentPort.on("message", (batch) => {
  const results = [];
  const moved = [];
  for (const { path, size } of batch.reads) {
    let fd = -1;
    try {
      fd = fs.openSync(path, "r");
      const buf = new Uint8Array(size);
      let got = 0;
      while (got < size) {
        const n = fs.readSync(fd, buf, got, size - got, got);
        if (n === 0) break;
        got += n;
      }
      results.push({ got, bytes: buf.buffer });
      moved.push(buf.buffer);
    } catch (err) {
      results.push({ code: err && err.code ? String(err.code) : null, message: String(err && err.message) });
    } finally {
      if (fd >= 0) try { fs.closeSync(fd); } catch {}
    }
  }
  parentPort.postMessage({ id: batch.id, results }, moved);
});
`;

type Result = { got: number; bytes: ArrayBuffer } | { code: string | null; message: string };
interface Read {
  path: string;
  size: number;
  resolve(b: Buffer): void;
  reject(e: Error): void;
}

/** most reads in one message (a retrieve asks for at most its read-ahead at once; several retrieves share this) */
const MAX_BATCH = 32;

export class WholeFileReader {
  private worker: Worker | null = null;
  private queued: Read[] = [];
  private flushing = false;
  private readonly inFlight = new Map<number, Read[]>();
  private seq = 0;
  private closed = false;

  /**
   * The first `size` bytes of the file (fewer when the file is shorter: the caller decides). Rejects with the
   * file system's error (its code kept, e.g. ENOENT).
   */
  read(path: string, size: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(new Error("the store is closed"));
    return new Promise<Buffer>((resolve, reject) => {
      this.queued.push({ path, size, resolve, reject });
      if (!this.flushing) {
        this.flushing = true;
        // every read asked for in this turn goes in the same message
        queueMicrotask(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushing = false;
    while (this.queued.length) {
      const reads = this.queued.splice(0, MAX_BATCH);
      const id = this.seq++;
      this.inFlight.set(id, reads);
      const w = this.workerNow();
      w.ref();
      w.postMessage({ id, reads: reads.map((r) => ({ path: r.path, size: r.size })) });
    }
  }

  private workerNow(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(WORKER_SOURCE, { eval: true });
    w.on("message", (msg: { id: number; results: Result[] }) => {
      const reads = this.inFlight.get(msg.id);
      this.inFlight.delete(msg.id);
      // idle: the worker must not keep the process alive
      if (!this.inFlight.size) w.unref();
      reads?.forEach((r, i) => {
        const res = msg.results[i]!;
        if ("bytes" in res) r.resolve(Buffer.from(res.bytes, 0, res.got));
        else r.reject(Object.assign(new Error(res.message), res.code ? { code: res.code } : {}));
      });
    });
    const fail = (err: Error) => {
      if (this.worker === w) this.worker = null;
      const reads = [...this.inFlight.values()].flat();
      this.inFlight.clear();
      for (const r of reads) r.reject(err);
    };
    w.on("error", fail);
    w.on("exit", (code) => fail(new Error(`the file reader thread stopped (exit code ${code})`)));
    this.worker = w;
    return w;
  }

  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = null;
    for (const r of this.queued.splice(0)) r.reject(new Error("the store is closed"));
    if (w) await w.terminate();
  }
}
