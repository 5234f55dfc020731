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

  it("refuses a target off this machine", async () => {
    await expect(startFaultProxy({ target: { host: "10.0.0.1", port: 80 } })).rejects.toThrow(/only forwards to this machine/);
  });
});
