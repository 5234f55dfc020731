import { describe, it, expect, afterEach } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { startFaultProxy, type FaultProxy } from "../support/faultProxy.ts";

/** A server on 127.0.0.1:0 that echoes, or just counts what it receives and answers with the count on end. */
async function startServer(mode: "echo" | "sink") {
  const received: number[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    let n = 0;
    s.on("error", () => undefined);
    if (mode === "echo") s.pipe(s);
    else {
      s.on("data", (c: Buffer) => (n += c.length));
      s.on("end", () => {
        received.push(n);
        s.end(`${n}`);
      });
      s.on("close", () => received.length || received.push(n));
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    received,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        for (const s of sockets) s.destroy();
      }),
  };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(mode: "echo" | "sink", faults: Parameters<typeof startFaultProxy>[0] extends infer O ? Omit<O, "target"> : never = {}) {
  const server = await startServer(mode);
  cleanups.push(server.close);
  const proxy = await startFaultProxy({ target: { host: "127.0.0.1", port: server.port }, ...faults });
  cleanups.push(() => proxy.close());
  return { server, proxy };
}

/** Send data through the proxy, half-close, and collect the reply; resolves with the reply or the socket error. */
function exchange(proxy: FaultProxy, data: Buffer): Promise<{ reply: Buffer; error?: NodeJS.ErrnoException; ms: number }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = net.connect({ host: "127.0.0.1", port: proxy.port, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let error: NodeJS.ErrnoException | undefined;
    s.on("data", (c: Buffer) => chunks.push(c));
    s.on("error", (e) => (error = e));
    s.on("close", () => resolve({ reply: Buffer.concat(chunks), error, ms: performance.now() - t0 }));
    s.end(data);
  });
}

describe("startFaultProxy", () => {
  it("passes bytes intact both ways", async () => {
    const { proxy } = await setup("echo");
    const data = randomBytes(1024 * 1024);
    const r = await exchange(proxy, data);
    expect(r.error).toBeUndefined();
    expect(createHash("sha256").update(r.reply).digest("hex")).toBe(createHash("sha256").update(data).digest("hex"));
    expect(proxy.stats()).toEqual({ bytesUp: data.length, bytesDown: data.length, connections: 1, resets: 0, stalls: 0 });
  });

  it("adds latency in both directions", async () => {
    const { proxy } = await setup("echo", { latencyMs: 60 });
    const r = await exchange(proxy, Buffer.from("ping"));
    expect(r.reply.toString()).toBe("ping");
    // request and reply each wait 60 ms
    expect(r.ms).toBeGreaterThanOrEqual(115);
  });

  it("caps bandwidth: 1 MB at 2 MB/s takes at least 0.4 s", async () => {
    const { proxy, server } = await setup("sink", { bandwidthBytesPerSec: 2 * 1024 * 1024 });
    const r = await exchange(proxy, randomBytes(1024 * 1024));
    expect(r.reply.toString()).toBe(String(1024 * 1024));
    expect(server.received).toEqual([1024 * 1024]);
    expect(r.ms).toBeGreaterThanOrEqual(400);
  });

  it("sharedBandwidth: two connections share one cap (a real link), without it each gets the cap", async () => {
    const { proxy } = await setup("sink", { bandwidthBytesPerSec: 2 * 1024 * 1024, sharedBandwidth: true });
    const both = await Promise.all([exchange(proxy, randomBytes(512 * 1024)), exchange(proxy, randomBytes(512 * 1024))]);
    // 1 MB in all at 2 MB/s: the later one finishes after at least 0.4 s
    expect(Math.max(...both.map((r) => r.ms))).toBeGreaterThanOrEqual(400);
    expect(proxy.stats().bytesUp).toBe(1024 * 1024);
  });

  it("stallAfterBytes: the connection goes silent, no reset and no close; close() ends it", async () => {
    const { proxy, server } = await setup("sink", { stallAfterBytes: 50_000 });
    const s = net.connect({ host: "127.0.0.1", port: proxy.port });
    let error: Error | undefined;
    s.on("error", (e) => (error = e));
    s.write(randomBytes(200_000));
    await new Promise((r) => setTimeout(r, 500));
    expect(proxy.stats()).toMatchObject({ bytesUp: 50_000, stalls: 1, resets: 0 });
    expect(error).toBeUndefined();
    expect(s.destroyed).toBe(false);
    await proxy.close();
    for (let i = 0; i < 50 && !server.received.length; i++) await new Promise((r) => setTimeout(r, 20));
    // the server never got more than what passed before the stall
    expect(server.received).toEqual([50_000]);
    s.destroy();
  });

  it("resets a connection after N bytes; the client sees ECONNRESET", async () => {
    const { proxy, server } = await setup("sink", { resetAfterBytes: 100_000 });
    const r = await exchange(proxy, randomBytes(1024 * 1024));
    expect(r.error?.code).toBe("ECONNRESET");
    expect(proxy.stats().resets).toBe(1);
    expect(proxy.stats().bytesUp).toBe(100_000);
    // the server never got more than what passed
    expect(server.received.every((n) => n <= 100_000)).toBe(true);
  });

  it("asks a resetAfterBytes function once per connection", async () => {
    const asked: number[] = [];
    const { proxy } = await setup("sink", {
      resetAfterBytes: () => {
        asked.push(1);
        return asked.length === 1 ? 5000 : Infinity;
      },
    });
    expect((await exchange(proxy, randomBytes(50_000))).error?.code).toBe("ECONNRESET");
    const ok = await exchange(proxy, randomBytes(50_000));
    expect(ok.error).toBeUndefined();
    expect(ok.reply.toString()).toBe("50000");
    expect(asked).toHaveLength(2);
  });

  it("counts resetEveryBytes across connections, and setFaults turns it off", async () => {
    const { proxy } = await setup("sink", { resetEveryBytes: 100_000 });
    // 60 kB passes (plus a short reply), the next connection is cut when the shared count reaches 100 kB
    const first = await exchange(proxy, randomBytes(60_000));
    expect(first.error).toBeUndefined();
    const second = await exchange(proxy, randomBytes(60_000));
    expect(second.error?.code).toBe("ECONNRESET");
    expect(proxy.stats().resets).toBe(1);
    expect(proxy.stats().bytesUp + proxy.stats().bytesDown).toBe(100_000);
    proxy.setFaults({ resetEveryBytes: undefined });
    const third = await exchange(proxy, randomBytes(200_000));
    expect(third.error).toBeUndefined();
    expect(third.reply.toString()).toBe("200000");
    expect(proxy.stats().connections).toBe(3);
  });

  it("close() ends open connections and pending timers at once", async () => {
    const { proxy } = await setup("echo", { latencyMs: 10_000 });
    const pending = exchange(proxy, Buffer.from("held for 10 s"));
    await new Promise((r) => setTimeout(r, 50));
    const t0 = performance.now();
    await proxy.close();
    const r = await pending;
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(r.reply.length).toBe(0);
  });

  it("flowBytesPerSec caps one flow below the link: 1 MB at 1 MB/s per flow on a 10 MB/s link takes at least 0.9 s", async () => {
    const { proxy, server } = await setup("sink", { flowBytesPerSec: 1024 * 1024, linkBytesPerSec: 10 * 1024 * 1024 });
    const r = await exchange(proxy, randomBytes(1024 * 1024));
    expect(r.reply.toString()).toBe(String(1024 * 1024));
    expect(server.received).toEqual([1024 * 1024]);
    expect(r.ms).toBeGreaterThanOrEqual(900);
  });

  it("flowBytesPerSec holds for each of several flows at once (the link has room for all)", async () => {
    const { proxy } = await setup("sink", { flowBytesPerSec: 256 * 1024, linkBytesPerSec: 10 * 1024 * 1024 });
    const all = await Promise.all(Array.from({ length: 4 }, () => exchange(proxy, randomBytes(256 * 1024))));
    expect(all.map((r) => r.reply.toString())).toEqual(Array(4).fill(String(256 * 1024)));
    // each flow alone needs ~1 s at its cap, side by side they still do
    for (const r of all) expect(r.ms).toBeGreaterThanOrEqual(900);
  });

  it("N flows share the link cap fairly: none finishes before the others have had their share", async () => {
    const { proxy } = await setup("sink", { flowBytesPerSec: 4 * 1024 * 1024, linkBytesPerSec: 1024 * 1024 });
    const all = await Promise.all(Array.from({ length: 4 }, () => exchange(proxy, randomBytes(256 * 1024))));
    expect(proxy.stats().bytesUp).toBe(1024 * 1024);
    const times = all.map((r) => r.ms);
    // 1 MB over a 1 MB/s link: the last one is done after ~1 s
    expect(Math.max(...times)).toBeGreaterThanOrEqual(900);
    // served first come, first served one flow would be done after 0.25 s; shared round-robin all finish together
    expect(Math.min(...times)).toBeGreaterThanOrEqual(0.7 * Math.max(...times));
    // every flow had bytes through in the first second
    const { series } = proxy.linkStats();
    const busy = series.filter((s) => s.bytesUp > 0);
    expect(busy.length).toBeGreaterThanOrEqual(1);
    expect(busy[0]!.activeFlows).toBe(4);
  });

  it("latency adds to a capped link: both caps and the round trip at once", async () => {
    const { proxy } = await setup("echo", { latencyMs: 100, flowBytesPerSec: 512 * 1024, linkBytesPerSec: 1024 * 1024 });
    const r = await exchange(proxy, Buffer.from("ping"));
    expect(r.reply.toString()).toBe("ping");
    expect(r.ms).toBeGreaterThanOrEqual(195);
    const big = await exchange(proxy, randomBytes(256 * 1024));
    expect(big.reply.length).toBe(256 * 1024);
    // 0.5 s each way at the flow cap (pipelined: ~0.5 s) plus 0.2 s of round trip
    expect(big.ms).toBeGreaterThanOrEqual(650);
  });

  it("resetEveryBytes cuts flows on a shared capped link; the bytes before the cut arrive", async () => {
    const { proxy } = await setup("sink", { flowBytesPerSec: 2 * 1024 * 1024, linkBytesPerSec: 4 * 1024 * 1024, resetEveryBytes: 200_000 });
    const all = await Promise.all(Array.from({ length: 3 }, () => exchange(proxy, randomBytes(300_000))));
    expect(all.filter((r) => r.error?.code === "ECONNRESET").length).toBeGreaterThanOrEqual(1);
    expect(proxy.stats().resets).toBeGreaterThanOrEqual(1);
  });

  it("counts concurrent connections (now and peak) and the flows active in each second", async () => {
    const { proxy } = await setup("echo");
    const sockets = await Promise.all(
      Array.from({ length: 5 }, () => new Promise<net.Socket>((resolve) => {
        const s = net.connect({ host: "127.0.0.1", port: proxy.port }, () => resolve(s));
        s.on("error", () => undefined);
      })),
    );
    for (let i = 0; i < 50 && proxy.linkStats().openConnections < 5; i++) await new Promise((r) => setTimeout(r, 10));
    expect(proxy.linkStats()).toMatchObject({ openConnections: 5, peakConnections: 5, connections: 5 });
    // three of them say something: three active flows this second
    await Promise.all(sockets.slice(0, 3).map((s) => new Promise((r) => { s.once("data", r); s.write("x"); })));
    const rows = proxy.linkStats().series;
    expect(Math.max(...rows.map((s) => s.activeFlows))).toBe(3);
    expect(Math.max(...rows.map((s) => s.openConnections))).toBe(5);
    expect(rows.reduce((a, s) => a + s.bytesUp, 0)).toBe(3);
    for (const s of sockets.slice(0, 2)) s.destroy();
    for (let i = 0; i < 50 && proxy.linkStats().openConnections > 3; i++) await new Promise((r) => setTimeout(r, 10));
    expect(proxy.linkStats()).toMatchObject({ openConnections: 3, peakConnections: 5 });
    proxy.resetCounters();
    expect(proxy.linkStats()).toMatchObject({ openConnections: 3, peakConnections: 3, bytesUp: 0, connections: 0 });
    for (const s of sockets) s.destroy();
  });

  it("bounds memory: a fast sender on a slow flow is held back, not buffered in the proxy", async () => {
    const { proxy } = await setup("sink", { flowBytesPerSec: 256 * 1024, queueBytes: 256 * 1024 });
    const s = net.connect({ host: "127.0.0.1", port: proxy.port });
    s.on("error", () => undefined);
    await new Promise((r) => s.once("connect", r));
    s.write(randomBytes(32 * 1024 * 1024));
    await new Promise((r) => setTimeout(r, 500));
    // what the proxy took in is its queue plus the kernel's socket buffers; the rest waits in the sender
    expect(s.writableLength).toBeGreaterThan(16 * 1024 * 1024);
    s.destroy();
  });

  it("refuses a target off this machine", async () => {
    await expect(startFaultProxy({ target: { host: "10.0.0.1", port: 80 } })).rejects.toThrow(/only forwards to this machine/);
  });
});
