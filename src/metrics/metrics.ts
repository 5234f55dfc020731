/**
 * Prometheus metrics (prom-client): one registry per relay (not prom-client's global one, so several relays in one
 * process, as in the tests, never mix their counts). Counters and histograms are updated where the work happens
 * (HTTP edge, ingest, DIMSE, error handler); states (transfers, forwarding queue, disk) are read when scraped.
 * Label values come from fixed sets only (operations.ts): no UID, token, AE-free text or path ever becomes a label.
 */
import fsp from "node:fs/promises";
import client from "prom-client";
import type { IngestOptions, IngestResult } from "../ingest/types.ts";
import { ingestSourceKind } from "./operations.ts";

const PREFIX = "dicomrelay_";
/** seconds: from a QIDO answered from the index (ms) to a tus PATCH carrying a bundle over a slow link (minutes) */
const LATENCY_BUCKETS = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];

/** What a scrape reads of the relay's state, each optional (a tool that runs without transfers has none). */
export interface MetricsSources {
  transfersByState?: () => Promise<Record<string, number>>;
  forwardingByState?: () => { jobs: Record<string, number>; items: Record<string, number> };
  /** the local directory whose file system holds the blobs (storage.kind fs), for size/free bytes */
  storageDir?: string | null;
}

export class RelayMetrics {
  readonly registry = new client.Registry();
  readonly httpRequests: client.Counter<"operation" | "method" | "status">;
  readonly httpDuration: client.Histogram<"operation">;
  readonly httpInFlight: client.Gauge<"operation">;
  readonly httpBytesIn: client.Counter<"operation">;
  readonly httpBytesOut: client.Counter<"operation">;
  readonly ingestInstances: client.Counter<"source" | "result" | "reason">;
  readonly ingestBytes: client.Counter<"source" | "result">;
  readonly dimseRequests: client.Counter<"command" | "outcome">;
  readonly dimseDuration: client.Histogram<"command">;
  readonly backendErrors: client.Counter<"backend">;
  private sources: MetricsSources = {};

  constructor() {
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
    this.httpRequests = new client.Counter({ name: `${PREFIX}http_requests_total`, help: "HTTP requests answered, by operation (qido, wado-*, stow, tus-*, ...), method and status class", labelNames: ["operation", "method", "status"], registers });
    this.httpDuration = new client.Histogram({ name: `${PREFIX}http_request_duration_seconds`, help: "HTTP request duration from the first byte of the request to the last byte of the answer, by operation", labelNames: ["operation"], buckets: LATENCY_BUCKETS, registers });
    this.httpInFlight = new client.Gauge({ name: `${PREFIX}http_requests_in_flight`, help: "HTTP requests being served now, by operation", labelNames: ["operation"], registers });
    this.httpBytesIn = new client.Counter({ name: `${PREFIX}http_received_bytes_total`, help: "request body bytes received from clients, by operation", labelNames: ["operation"], registers });
    this.httpBytesOut = new client.Counter({ name: `${PREFIX}http_sent_bytes_total`, help: "bytes written to clients (headers and bodies, as counted on the socket), by operation", labelNames: ["operation"], registers });
    this.ingestInstances = new client.Counter({ name: `${PREFIX}ingest_instances_total`, help: "instances offered to the ingest pipeline, by way in, result (stored, already-stored, replaced, failed) and DICOM failure reason (0xA700 ...; none when not failed)", labelNames: ["source", "result", "reason"], registers });
    this.ingestBytes = new client.Counter({ name: `${PREFIX}ingest_bytes_total`, help: "bytes of instances offered to the ingest pipeline, by way in and result", labelNames: ["source", "result"], registers });
    this.dimseRequests = new client.Counter({ name: `${PREFIX}dimse_requests_total`, help: "DIMSE requests answered (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET), by outcome", labelNames: ["command", "outcome"], registers });
    this.dimseDuration = new client.Histogram({ name: `${PREFIX}dimse_request_duration_seconds`, help: "DIMSE request duration, by command", labelNames: ["command"], buckets: LATENCY_BUCKETS, registers });
    this.backendErrors = new client.Counter({ name: `${PREFIX}backend_errors_total`, help: "requests that failed because the index database or the blob storage was unavailable", labelNames: ["backend"], registers });

    const self = this;
    // gauges of counts by state, read from a source when scraped (no source, or nothing yet: no samples)
    const byState = (name: string, help: string, states: readonly string[], read: () => Promise<Record<string, number> | null | undefined> | Record<string, number> | null | undefined) =>
      new client.Gauge({
        name: `${PREFIX}${name}`,
        help,
        labelNames: ["state"],
        registers,
        async collect() {
          const by = (await read()) ?? null;
          this.reset();
          if (!by) return;
          for (const state of states) this.set({ state }, by[state] ?? 0);
        },
      });
    byState("transfers", "transfers by state (open, released, complete, cancelled)", ["open", "released", "complete", "cancelled"], () => self.sources.transfersByState?.());
    byState("forwarding_jobs", "forwarding jobs (one per rule and study of a completed transfer) by state (pending, done, failed)", ["pending", "done", "failed"], () => self.sources.forwardingByState?.()?.jobs);
    byState("forwarding_instances", "instances in the forwarding queue by state: pending is the queue depth, failed the instances a peer refused for good", ["pending", "sent", "failed"], () => self.sources.forwardingByState?.()?.items);
    new client.Gauge({
      name: `${PREFIX}storage_filesystem_bytes`,
      help: "size and free bytes of the file system that holds the blobs (storage.kind fs only)",
      labelNames: ["kind"],
      registers,
      async collect() {
        this.reset();
        const dir = self.sources.storageDir;
        if (!dir) return;
        const st = await fsp.statfs(dir).catch(() => null);
        if (!st) return;
        this.set({ kind: "size" }, st.blocks * st.bsize);
        this.set({ kind: "free" }, st.bavail * st.bsize);
      },
    });
  }

  /** Where scrapes read the relay's state from (set once the services exist). */
  setSources(sources: MetricsSources): void {
    this.sources = sources;
  }

  noteIngest(result: IngestResult, opts?: IngestOptions): void {
    const source = ingestSourceKind(opts?.source);
    const reason = result.status === "failed" ? `0x${result.reason.toString(16).toUpperCase().padStart(4, "0")}` : "none";
    this.ingestInstances.inc({ source, result: result.status, reason });
    if (result.size) this.ingestBytes.inc({ source, result: result.status }, result.size);
  }

  noteDimse(command: string, outcome: string, seconds: number): void {
    this.dimseRequests.inc({ command, outcome });
    this.dimseDuration.observe({ command }, seconds);
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
