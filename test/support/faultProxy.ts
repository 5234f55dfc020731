/**
 * A TCP proxy on 127.0.0.1 that makes a loopback link look like a cross-border one: one-way latency in both
 * directions (RTT grows by twice latencyMs), a bandwidth cap per direction, and connection resets after a number of
 * bytes. Used by the resumable-upload and retry tests; it only ever connects to the target it is given.
 *
 * The link model per direction: bytes queue at a bottleneck that sends bandwidthBytesPerSec (a token bucket with no
 * burst), then travel latencyMs. One timer per direction at a time; close() clears them all.
 */
import net from "node:net";

export interface FaultSettings {
  /** one-way delay added to every byte, each direction (ms) */
  latencyMs: number;
  /** cap per direction, bytes per second; 0 or Infinity for none */
  bandwidthBytesPerSec: number;
  /** reset each connection after this many bytes (both directions) have passed on it; a function is asked per connection */
  resetAfterBytes?: number | (() => number);
  /** reset whichever connection is passing data each time this many bytes have passed, counted across connections */
  resetEveryBytes?: number;
  /**
   * one bottleneck per direction for all connections together (a real link), instead of a cap per connection;
   * parallel uploads then share bandwidthBytesPerSec
   */
  sharedBandwidth?: boolean;
  /**
   * a connection opened while this is set goes silent after this many bytes (both directions): nothing more passes
   * or is read, and nothing is closed or reset (a dead NAT mapping: the client's writes block once its buffers are
   * full). The sockets stay open until close().
   */
  stallAfterBytes?: number;
}

export interface FaultProxyOptions extends Partial<FaultSettings> {
  target: { host: string; port: number };
}

export interface FaultProxyStats {
  /** client -> server bytes delivered */
  bytesUp: number;
  /** server -> client bytes delivered */
  bytesDown: number;
  /** connections accepted */
  connections: number;
  /** connections reset by a fault */
  resets: number;
  /** connections that went silent (stallAfterBytes) */
  stalls: number;
}

export interface FaultProxy {
  port: number;
  /** http://127.0.0.1:port */
  url: string;
  stats(): FaultProxyStats;
  /** change faults from now on; resetAfterBytes applies to connections opened after the change */
  setFaults(partial: Partial<FaultSettings>): void;
  close(): Promise<void>;
}

/** Paused reading above this many queued bytes per direction, so a slow link holds the sender back. */
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  if (!["127.0.0.1", "localhost", "::1"].includes(opts.target.host)) {
    throw new Error("the fault proxy only forwards to this machine (127.0.0.1, localhost, ::1)");
  }
  const settings: FaultSettings = {
    latencyMs: opts.latencyMs ?? 0,
    bandwidthBytesPerSec: opts.bandwidthBytesPerSec ?? 0,
    resetAfterBytes: opts.resetAfterBytes,
    resetEveryBytes: opts.resetEveryBytes,
    sharedBandwidth: opts.sharedBandwidth,
    stallAfterBytes: opts.stallAfterBytes,
  };
  const stats: FaultProxyStats = { bytesUp: 0, bytesDown: 0, connections: 0, resets: 0, stalls: 0 };
  const conns = new Set<Connection>();
  const shared: Shared = { settings, stats, sinceReset: 0, nextFree: { bytesUp: 0, bytesDown: 0 } };

  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    stats.connections++;
    const upstream = net.connect({ host: opts.target.host, port: opts.target.port, allowHalfOpen: true });
    const conn = new Connection(client, upstream, shared, () => conns.delete(conn));
    conns.add(conn);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    stats: () => ({ ...stats }),
    setFaults(partial) {
      Object.assign(settings, partial);
      if ("resetEveryBytes" in partial) shared.sinceReset = 0;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of [...conns]) c.destroy();
      await closed;
    },
  };
}

interface Shared {
  settings: FaultSettings;
  stats: FaultProxyStats;
  /** bytes passed across connections since the last resetEveryBytes fault */
  sinceReset: number;
  /** when the shared bottleneck of each direction is next free (sharedBandwidth) */
  nextFree: { bytesUp: number; bytesDown: number };
}

class Connection {
  private bytes = 0;
  private readonly resetAt: number;
  private readonly stallAt: number;
  private stalled = false;
  private readonly up: Direction;
  private readonly down: Direction;
  private done = false;

  constructor(
    readonly client: net.Socket,
    readonly upstream: net.Socket,
    readonly shared: Shared,
    private readonly onDone: () => void,
  ) {
    const r = shared.settings.resetAfterBytes;
    this.resetAt = typeof r === "function" ? r() : r ?? Infinity;
    this.stallAt = shared.settings.stallAfterBytes ?? Infinity;
    this.up = new Direction(client, upstream, this, "bytesUp");
    this.down = new Direction(upstream, client, this, "bytesDown");
    for (const [s, other] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      s.on("error", (err: NodeJS.ErrnoException) => {
        // a reset on one side is passed on as a reset, anything else as a plain close
        if (err.code === "ECONNRESET") resetSocket(other);
        else other.destroy();
        this.finish();
      });
      s.on("close", () => this.maybeDone());
    }
  }

  /** Bytes about to pass; returns how many may pass before a reset fault (the rest is dropped). */
  allow(n: number): number {
    const every = this.shared.settings.resetEveryBytes;
    let ok = Math.min(n, this.resetAt - this.bytes, this.stallAt - this.bytes);
    if (every && every > 0) ok = Math.min(ok, every - this.shared.sinceReset);
    return Math.max(0, ok);
  }

  passed(n: number): void {
    this.bytes += n;
    this.shared.sinceReset += n;
  }

  /** Whether the bytes passed so far call for a reset (checked after each delivery). */
  due(): boolean {
    const every = this.shared.settings.resetEveryBytes;
    return this.bytes >= this.resetAt || (!!every && every > 0 && this.shared.sinceReset >= every);
  }

  /** Whether the connection just went silent (checked after each delivery); stops both directions once. */
  stall(): boolean {
    if (this.stalled) return true;
    if (this.bytes < this.stallAt) return false;
    this.stalled = true;
    this.shared.stats.stalls++;
    this.up.stop();
    this.down.stop();
    this.client.pause();
    this.upstream.pause();
    return true;
  }

  reset(): void {
    if (this.done || this.client.destroyed) return;
    this.shared.stats.resets++;
    this.shared.sinceReset = 0;
    resetSocket(this.client);
    resetSocket(this.upstream);
    this.finish();
  }

  destroy(): void {
    this.client.destroy();
    this.upstream.destroy();
    this.finish();
  }

  private finish(): void {
    this.up.stop();
    this.down.stop();
    this.maybeDone();
  }

  private maybeDone(): void {
    if (!this.done && this.client.destroyed && this.upstream.destroyed) {
      this.done = true;
      this.up.stop();
      this.down.stop();
      this.onDone();
    }
  }
}

function resetSocket(s: net.Socket): void {
  if (s.destroyed) return;
  // before the upstream connection is made there is no handle to reset: a plain destroy is all there is
  try {
    s.resetAndDestroy();
  } catch {
    s.destroy();
  }
}

/** One direction of a connection: a pacing queue, then latency, then the other socket. */
class Direction {
  private readonly queue: { data: Buffer; dueAt: number }[] = [];
  private queued = 0;
  private nextFree = 0;
  private timer: NodeJS.Timeout | null = null;
  private ended = false;
  private stopped = false;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly conn: Connection,
    private readonly counter: "bytesUp" | "bytesDown",
  ) {
    from.on("data", (chunk: Buffer) => this.arrive(chunk));
    from.on("end", () => {
      this.ended = true;
      this.flush();
    });
    to.on("drain", () => this.maybeResume());
  }

  private arrive(chunk: Buffer): void {
    if (this.stopped) return;
    const { latencyMs, bandwidthBytesPerSec: rate } = this.conn.shared.settings;
    const now = performance.now();
    const paced = rate > 0 && Number.isFinite(rate);
    // slices small enough that a slow link delivers smoothly (about 20 per second), not in one late burst
    const slice = paced ? Math.max(1024, Math.floor(rate / 20)) : chunk.length;
    for (let off = 0; off < chunk.length; off += slice) {
      const data = chunk.subarray(off, off + slice);
      let sent = now;
      if (paced) {
        const link = this.conn.shared.settings.sharedBandwidth ? this.conn.shared.nextFree : null;
        sent = Math.max(now, link ? link[this.counter] : this.nextFree) + (data.length / rate) * 1000;
        if (link) link[this.counter] = sent;
        else this.nextFree = sent;
      }
      this.queue.push({ data, dueAt: sent + latencyMs });
      this.queued += data.length;
    }
    if (this.queued + this.to.writableLength > HIGH_WATER) this.from.pause();
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.stopped || !this.queue.length) return;
    const wait = Math.max(0, this.queue[0]!.dueAt - performance.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, wait);
  }

  private flush(): void {
    if (this.stopped) return;
    const now = performance.now();
    // each turn removes one queued slice
    while (this.queue.length && this.queue[0]!.dueAt <= now + 1) {
      const { data } = this.queue.shift()!;
      this.queued -= data.length;
      const n = this.conn.allow(data.length);
      if (n > 0 && !this.to.destroyed && this.to.writable) {
        this.to.write(n === data.length ? data : data.subarray(0, n));
        this.conn.shared.stats[this.counter] += n;
        this.conn.passed(n);
      }
      if (this.conn.stall()) return;
      if (this.conn.due()) {
        // let the bytes just written leave before the reset, so the peer sees exactly what passed
        setImmediate(() => this.conn.reset());
        this.stop();
        return;
      }
    }
    if (this.ended && !this.queue.length) {
      if (!this.to.destroyed && this.to.writable) this.to.end();
      return;
    }
    this.maybeResume();
    this.schedule();
  }

  private maybeResume(): void {
    if (!this.stopped && this.from.isPaused() && this.queued < LOW_WATER && this.to.writableLength < LOW_WATER) this.from.resume();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.queue.length = 0;
    this.queued = 0;
  }
}
