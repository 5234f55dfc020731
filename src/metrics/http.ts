/**
 * The HTTP edge of the metrics: every request counted and timed by operation, and the bytes its socket moved;
 * GET /metrics answers the registry in Prometheus text format (guarded like any route on the main listener), and an
 * optional separate listener (metrics.port) serves only /metrics, without a token, for a Prometheus on a private
 * network.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { RequestHandler } from "express";
import type { Logger } from "pino";
import type { RelayMetrics } from "./metrics.ts";
import { classifyRequest, statusClass, type OperationPaths } from "./operations.ts";

export function httpMetrics(metrics: RelayMetrics, paths: OperationPaths): RequestHandler {
  return (req, res, next) => {
    const operation = classifyRequest(req.method, req.path, paths);
    const started = process.hrtime.bigint();
    // sent: the socket's counter (a keep-alive socket answers one request at a time, so the difference is this
    // request's). Received: the HTTP parser feeds the socket to llhttp natively (socket.bytesRead stays 0), so the
    // body is counted where the parser hands it over, without putting the stream into flowing mode.
    const socket = req.socket;
    const written0 = socket.bytesWritten;
    let received = 0;
    const push = req.push;
    req.push = function (chunk: unknown, encoding?: BufferEncoding) {
      if (chunk && typeof (chunk as Buffer).length === "number") received += (chunk as Buffer).length;
      return push.call(this, chunk, encoding);
    };
    metrics.httpInFlight.inc({ operation });
    let done = false;
    const end = () => {
      if (done) return;
      done = true;
      metrics.httpInFlight.dec({ operation });
      // a connection that closed before an answer counts as status 499, as nginx logs it
      const status = res.writableFinished ? res.statusCode : 499;
      metrics.httpRequests.inc({ operation, method: req.method, status: statusClass(status) });
      metrics.httpDuration.observe({ operation }, Number(process.hrtime.bigint() - started) / 1e9);
      metrics.httpBytesIn.inc({ operation }, received);
      metrics.httpBytesOut.inc({ operation }, Math.max(0, socket.bytesWritten - written0));
    };
    res.once("finish", end);
    res.once("close", end);
    next();
  };
}

export function metricsHandler(metrics: RelayMetrics): RequestHandler {
  return async (_req, res, next) => {
    try {
      const { contentType, body } = await metrics.text();
      res.set("Cache-Control", "no-store").type(contentType).send(body);
    } catch (err) {
      next(err);
    }
  };
}

/** metrics.port: a listener that answers GET /metrics only, with no token (bind it to a private address). */
export async function startMetricsListener(metrics: RelayMetrics, host: string, port: number, log: Logger): Promise<{ server: http.Server; port: number }> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" }).end("this listener serves GET /metrics only\n");
      return;
    }
    metrics
      .text()
      .then(({ contentType, body }) => res.writeHead(200, { "Content-Type": contentType, "Cache-Control": "no-store" }).end(req.method === "HEAD" ? undefined : body))
      .catch((err: unknown) => {
        log.error({ err }, "metrics scrape failed");
        res.writeHead(500, { "Content-Type": "text/plain; charset=utf-8" }).end("the metrics could not be collected; it was logged\n");
      });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}
