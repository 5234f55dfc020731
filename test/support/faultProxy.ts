/**
 * A link emulator on 127.0.0.1 (a user-space TCP proxy: these machines have no `tc netem`) that makes a loopback link
 * look like a cross-border one: one-way latency in both directions (RTT grows by twice latencyMs), a rate cap per
 * connection (the share one TCP flow gets of a long lossy path), a rate cap for the link all connections share,
 * connection resets after a number of bytes, stalls, and counters (bytes, concurrent connections now and at peak, a
 * per-second series of delivered bytes and active flows). Used by the resumable-upload and retry tests and by the
 * crossborder bench; it only ever connects to the target it is given.
 *
 * The model per direction: a connection's unsent bytes wait in its own queue (reading from its socket pauses above
 * queueBytes, so memory stays bounded and a slow link holds the sender back); a pump serves the queues round-robin
 * (deficit round-robin: each backlogged flow gets the same share, none starves), each flow within its own token
 * bucket (flowBytesPerSec) and all of them within the link's (linkBytesPerSec); a sent slice then travels latencyMs
 * and is delivered, where the reset and stall faults apply.
 */
import net from "node:net";

export interface FaultSettings {
  /** one-way delay added to every byte, each direction (ms) */
  latencyMs: number;
  /**
   * cap per direction, bytes per second; 0 or Infinity for none. Per connection, or for all connections together with
   * sharedBandwidth (kept for the older tests; flowBytesPerSec and linkBytesPerSec say it directly and win when set)
   */
  bandwidthBytesPerSec: number;
  /** cap per connection and direction (the lossy-flow share), bytes per second; 0 or Infinity for none */
  flowBytesPerSec?: number;
  /** cap of the link all connections share, per direction, bytes per second; 0 or Infinity for none */
  linkBytesPerSec?: number;
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
  /** unsent bytes a connection may queue per direction before its socket is paused (default 1 MiB) */
  queueBytes?: number;
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

/** One second of the link: what was delivered and by how many connections. */
export interface LinkSecond {
  /** seconds since the proxy started (the bucket's start) */
  second: number;
  bytesUp: number;
  bytesDown: number;
  /** connections that delivered bytes (either way) in this second */
  activeFlows: number;
  /** most connections open at once in this second */
  openConnections: number;
}

export interface LinkStats extends FaultProxyStats {
  /** connections open now */
  openConnections: number;
  /** most connections open at once since start (or since resetCounters) */
  peakConnections: number;
  /** one row per second since start (or resetCounters), the running second last */
  series: LinkSecond[];
}

export interface FaultProxy {
  port: number;
  /** http://127.0.0.1:port */
  url: string;
  stats(): FaultProxyStats;
  /** stats() plus concurrency and the per-second series */
  linkStats(): LinkStats;
  /** zero the counters and the series (the settings stay); open connections stay open and count again */
  resetCounters(): void;
  /**
   * reset now every connection whose client has closed its side or that still holds bytes on their way to the
   * server: those bytes never arrive (the link drops as a page is reloaded). Returns how many were reset.
   */
  cutUnfinishedUploads(): number;
  /** change faults from now on; rates apply at once, resetAfterBytes to connections opened after the change */
  setFaults(partial: Partial<FaultSettings>): void;
  close(): Promise<void>;
}

/** Default bound of unsent bytes per connection and direction; reading resumes below a quarter of it. */
const QUEUE_BYTES = 1024 * 1024;
/** How often the pump runs while bytes wait for tokens; the buckets make the rate exact whatever the timer's jitter. */
const TICK_MS = 4;
/** Token buckets hold at most this much time's worth, so a late tick catches up without a long burst. */
const BURST_MS = 50;

const rateOf = (r: number | undefined): number => (r && r > 0 && Number.isFinite(r) ? r : Infinity);

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  if (!["127.0.0.1", "localhost", "::1"].includes(opts.target.host)) {
    throw new Error("the fault proxy only forwards to this machine (127.0.0.1, localhost, ::1)");
  }
  const settings: FaultSettings = {
    latencyMs: opts.latencyMs ?? 0,
    bandwidthBytesPerSec: opts.bandwidthBytesPerSec ?? 0,
    flowBytesPerSec: opts.flowBytesPerSec,
    linkBytesPerSec: opts.linkBytesPerSec,
    resetAfterBytes: opts.resetAfterBytes,
    resetEveryBytes: opts.resetEveryBytes,
    sharedBandwidth: opts.sharedBandwidth,
    stallAfterBytes: opts.stallAfterBytes,
  };
  const conns = new Set<Connection>();
  const shared: Shared = {
    settings,
    stats: { bytesUp: 0, bytesDown: 0, connections: 0, resets: 0, stalls: 0 },
    sinceReset: 0,
    queueBytes: opts.queueBytes ?? QUEUE_BYTES,
    links: { bytesUp: new Link(settings), bytesDown: new Link(settings) },
    meter: new Meter(() => conns.size),
  };

  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    shared.stats.connections++;
    const upstream = net.connect({ host: opts.target.host, port: opts.target.port, allowHalfOpen: true });
    const conn = new Connection(client, upstream, shared, () => {
      conns.delete(conn);
      shared.meter.opened();
    });
    conns.add(conn);
    shared.meter.opened();
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
    stats: () => ({ ...shared.stats }),
    linkStats: () => ({ ...shared.stats, ...shared.meter.snapshot() }),
    resetCounters() {
      shared.stats = { bytesUp: 0, bytesDown: 0, connections: 0, resets: 0, stalls: 0 };
      shared.meter = new Meter(() => conns.size);
    },
    cutUnfinishedUploads() {
      let n = 0;
      for (const c of [...conns]) {
        if (c.carriesUpload()) {
          c.reset();
          n++;
        }
      }
      return n;
    },
    setFaults(partial) {
      Object.assign(settings, partial);
      if ("resetEveryBytes" in partial) shared.sinceReset = 0;
      shared.links.bytesUp.kick();
      shared.links.bytesDown.kick();
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of [...conns]) c.destroy();
      shared.links.bytesUp.stop();
      shared.links.bytesDown.stop();
      await closed;
    },
  };
}

interface Shared {
  settings: FaultSettings;
  stats: FaultProxyStats;
  /** bytes passed across connections since the last resetEveryBytes fault */
  sinceReset: number;
  queueBytes: number;
  /** the shared bottleneck of each direction */
  links: { bytesUp: Link; bytesDown: Link };
  meter: Meter;
}

/** Concurrency and the per-second series. */
class Meter {
  private readonly t0 = performance.now();
  private peak = 0;
  private readonly rows: LinkSecond[] = [];
  private active = new Set<Connection>();

  constructor(private readonly open: () => number) {
    this.opened();
  }

  private row(): LinkSecond {
    const second = Math.floor((performance.now() - this.t0) / 1000);
    let last = this.rows[this.rows.length - 1];
    if (!last || last.second !== second) {
      if (last) last.activeFlows = this.active.size;
      this.active = new Set();
      last = { second, bytesUp: 0, bytesDown: 0, activeFlows: 0, openConnections: this.open() };
      this.rows.push(last);
    }
    return last;
  }

  opened(): void {
    const n = this.open();
    this.peak = Math.max(this.peak, n);
    const r = this.row();
    r.openConnections = Math.max(r.openConnections, n);
  }

  delivered(conn: Connection, counter: "bytesUp" | "bytesDown", n: number): void {
    const r = this.row();
    r[counter] += n;
    this.active.add(conn);
  }

  snapshot(): Pick<LinkStats, "openConnections" | "peakConnections" | "series"> {
    const r = this.row();
    r.activeFlows = this.active.size;
    return { openConnections: this.open(), peakConnections: this.peak, series: this.rows.map((x) => ({ ...x })) };
  }
}

/**
 * The bottleneck of one direction: serves the queues of its connections round-robin within the link's token bucket
 * and each flow's own. With no caps at all a slice passes at once.
 */
class Link {
  private readonly waiting = new Set<Direction>();
  private tokens = 0;
  private last = performance.now();
  private timer: NodeJS.Timeout | null = null;
  private pumping = false;
  private stopped = false;

  constructor(private readonly settings: FaultSettings) {}

  rates(): { link: number; flow: number } {
    const s = this.settings;
    const legacy = rateOf(s.bandwidthBytesPerSec);
    return {
      link: s.linkBytesPerSec !== undefined ? rateOf(s.linkBytesPerSec) : s.sharedBandwidth ? legacy : Infinity,
      flow: s.flowBytesPerSec !== undefined ? rateOf(s.flowBytesPerSec) : s.sharedBandwidth ? Infinity : legacy,
    };
  }

  add(d: Direction): void {
    this.waiting.add(d);
    this.kick();
  }

  remove(d: Direction): void {
    this.waiting.delete(d);
  }

  kick(): void {
    if (this.stopped || this.pumping) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.pump();
  }

  private pump(): void {
    this.pumping = true;
    try {
      const now = performance.now();
      const { link, flow } = this.rates();
      const dt = (now - this.last) / 1000;
      this.last = now;
      this.tokens = link === Infinity ? Infinity : Math.min(this.tokens + link * dt, Math.max(16_384, (link * BURST_MS) / 1000));
      // a flow's turn: at most one quantum, so a flow with a deep queue cannot crowd the others out of a tick
      const quantum = link === Infinity ? Infinity : Math.max(1500, Math.min(16_384, link / 200));
      let progress = true;
      while (progress && this.tokens >= 1 && this.waiting.size) {
        progress = false;
        // the order rotates: whoever went first goes last next round
        for (const d of [...this.waiting]) {
          if (this.tokens < 1) break;
          const n = d.offer(Math.min(quantum, this.tokens), flow, now);
          if (n > 0) {
            this.tokens -= n;
            progress = true;
            this.waiting.delete(d);
            if (d.hasUnsent()) this.waiting.add(d);
          } else if (!d.hasUnsent()) this.waiting.delete(d);
        }
      }
    } finally {
      this.pumping = false;
    }
    if (this.waiting.size && !this.timer && !this.stopped) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.pump();
      }, TICK_MS);
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.waiting.clear();
  }
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

  /** the client has closed its side, or bytes towards the server are still queued here */
  carriesUpload(): boolean {
    return !this.done && (this.up.hasUnsent() || this.up.hasEnded() || this.client.readableEnded);
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


/** One direction of a connection: its unsent queue (served by the link), then latency, then the other socket. */
class Direction {
  private readonly unsent: Buffer[] = [];
  private unsentBytes = 0;
  private readonly inFlight: { data: Buffer; dueAt: number }[] = [];
  private tokens = 0;
  private last = performance.now();
  private timer: NodeJS.Timeout | null = null;
  private ended = false;
  private stopped = false;
  private readonly link: Link;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly conn: Connection,
    private readonly counter: "bytesUp" | "bytesDown",
  ) {
    this.link = conn.shared.links[counter];
    from.on("data", (chunk: Buffer) => this.arrive(chunk));
    from.on("end", () => {
      this.ended = true;
      this.flush();
    });
    to.on("drain", () => {
      this.maybeResume();
      if (this.unsentBytes) this.link.add(this);
    });
  }

  hasEnded(): boolean {
    return this.ended;
  }

  hasUnsent(): boolean {
    return this.unsentBytes > 0 && !this.stopped;
  }

  private arrive(chunk: Buffer): void {
    if (this.stopped) return;
    this.unsent.push(chunk);
    this.unsentBytes += chunk.length;
    if (this.unsentBytes + this.to.writableLength > this.conn.shared.queueBytes) this.from.pause();
    this.link.add(this);
  }

  /**
   * The link offers up to max bytes; take what this flow's bucket allows now (a whole slice of at least 1 kB or the
   * rest of the queue, so slow flows do not trickle single bytes) and put it on the wire. Returns the bytes taken.
   */
  offer(max: number, flowRate: number, now: number): number {
    if (this.stopped || !this.unsentBytes) return 0;
    // the receiver is not reading: hold the bytes here, as TCP's window would
    if (this.to.writableLength > this.conn.shared.queueBytes) return 0;
    if (flowRate === Infinity) this.tokens = Infinity;
    else {
      if (this.tokens === Infinity) this.tokens = 0;
      this.tokens = Math.min(this.tokens + (flowRate * (now - this.last)) / 1000, Math.max(16_384, (flowRate * BURST_MS) / 1000));
    }
    this.last = now;
    let n = Math.floor(Math.min(max, this.tokens, this.unsentBytes));
    if (n < Math.min(1024, this.unsentBytes)) return 0;
    if (this.tokens !== Infinity) this.tokens -= n;
    const taken = n;
    const parts: Buffer[] = [];
    while (n > 0) {
      const head = this.unsent[0]!;
      if (head.length <= n) {
        parts.push(head);
        this.unsent.shift();
        n -= head.length;
      } else {
        parts.push(head.subarray(0, n));
        this.unsent[0] = head.subarray(n);
        n = 0;
      }
    }
    this.unsentBytes -= taken;
    this.inFlight.push({ data: parts.length === 1 ? parts[0]! : Buffer.concat(parts), dueAt: now + this.conn.shared.settings.latencyMs });
    if (this.conn.shared.settings.latencyMs <= 0 && this.inFlight.length === 1) this.flush();
    else this.schedule();
    this.maybeResume();
    return taken;
  }

  private schedule(): void {
    if (this.timer || this.stopped || !this.inFlight.length) return;
    const wait = Math.max(0, this.inFlight[0]!.dueAt - performance.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, wait);
  }

  private flush(): void {
    if (this.stopped) return;
    const now = performance.now();
    while (this.inFlight.length && this.inFlight[0]!.dueAt <= now + 1) {
      const { data } = this.inFlight.shift()!;
      const n = this.conn.allow(data.length);
      if (n > 0 && !this.to.destroyed && this.to.writable) {
        this.to.write(n === data.length ? data : data.subarray(0, n));
        this.conn.shared.stats[this.counter] += n;
        this.conn.shared.meter.delivered(this.conn, this.counter, n);
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
    if (this.ended && !this.inFlight.length && !this.unsentBytes) {
      if (!this.to.destroyed && this.to.writable) this.to.end();
      return;
    }
    this.schedule();
  }

  private maybeResume(): void {
    const low = this.conn.shared.queueBytes / 4;
    if (!this.stopped && this.from.isPaused() && this.unsentBytes < low && this.to.writableLength < low) this.from.resume();
  }

  stop(): void {
    this.stopped = true;
    this.link.remove(this);
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.unsent.length = 0;
    this.unsentBytes = 0;
    this.inFlight.length = 0;
  }
}
