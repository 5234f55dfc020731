import { describe, it, expect } from "vitest";
import { classifyRequest, dicomwebOperation, ingestSourceKind, statusClass } from "../../src/metrics/operations.ts";
import { RelayMetrics } from "../../src/metrics/metrics.ts";
import { dimseOutcome } from "../../src/dimse/server.ts";

const PATHS = { dicomwebRoot: "/dicom-web", tusPath: "/api/uploads", consolePath: "/console", viewerAssetsPath: "/viewer" };

/** The value of one sample in Prometheus text format, or null when absent. */
function sample(text: string, name: string, labels: Record<string, string>): number | null {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && line.split(" ")[0] !== name) continue;
    const m = /^([^{ ]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return null;
}

describe("request classification", () => {
  it.each([
    ["GET", "/dicom-web/studies", "qido"],
    ["GET", "/dicom-web/series", "qido"],
    ["GET", "/dicom-web/studies/1.2/series", "qido"],
    ["GET", "/dicom-web/studies/1.2/series/3.4/instances", "qido"],
    ["GET", "/dicom-web/studies/1.2", "wado-retrieve"],
    ["GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6", "wado-retrieve"],
    ["GET", "/dicom-web/studies/1.2/metadata", "wado-metadata"],
    ["GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1,2", "wado-frames"],
    ["GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1/rendered", "wado-rendered"],
    ["GET", "/dicom-web/studies/1.2/thumbnail", "wado-rendered"],
    ["GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/bulkdata/7FE00010", "wado-bulkdata"],
    ["POST", "/dicom-web/studies", "stow"],
    ["POST", "/dicom-web/studies/1.2", "stow"],
    ["DELETE", "/dicom-web/studies/1.2", "dicomweb-delete"],
    ["GET", "/share/drs_abc_def/dicom-web/studies", "qido"],
    ["GET", "/share/drs_abc_def/viewer", "viewer"],
    ["POST", "/api/uploads", "tus-create"],
    ["PATCH", "/api/uploads/abc", "tus-patch"],
    ["HEAD", "/api/uploads/abc", "tus-head"],
    ["DELETE", "/api/uploads/abc", "tus-delete"],
    ["GET", "/api/uploads/abc", "tus-result"],
    ["OPTIONS", "/api/uploads", "tus-options"],
    ["POST", "/api/transfers", "transfers"],
    ["GET", "/api/transfers/x/receipt", "transfers"],
    ["POST", "/api/studies/1.2/documents", "documents"],
    ["GET", "/api/admin/tokens", "admin"],
    ["GET", "/api/forwarding", "forwarding"],
    ["GET", "/console/index.html", "console"],
    ["GET", "/viewer/app.js", "viewer"],
    ["GET", "/healthz", "health"],
    ["GET", "/metrics", "metrics"],
    ["GET", "/nothing/here", "other"],
    ["PUT", "/dicom-web/studies/1.2", "other"],
  ])("%s %s -> %s", (method, p, want) => {
    expect(classifyRequest(method, p, PATHS)).toBe(want);
  });

  it("follows the configured roots, and never puts a share link in a label", () => {
    const paths = { ...PATHS, dicomwebRoot: "/pacs/rs", tusPath: "/up" };
    expect(classifyRequest("GET", "/pacs/rs/studies", paths)).toBe("qido");
    expect(classifyRequest("GET", "/dicom-web/studies", paths)).toBe("other");
    expect(classifyRequest("PATCH", "/up/1", paths)).toBe("tus-patch");
    expect(dicomwebOperation("GET", "/studies/1/series/2")).toBe("wado-retrieve");
  });

  it("status classes, ingest sources and DIMSE outcomes", () => {
    expect(statusClass(204)).toBe("2xx");
    expect(statusClass(503)).toBe("5xx");
    expect(ingestSourceKind("tus:abc:IM1")).toBe("tus");
    expect(ingestSourceKind("dimse:HOSPITAL")).toBe("dimse");
    expect(ingestSourceKind("document:pdf")).toBe("document");
    expect(ingestSourceKind(undefined)).toBe("other");
    expect(dimseOutcome(0)).toBe("success");
    expect(dimseOutcome(0xb000)).toBe("warning");
    expect(dimseOutcome(0x0001)).toBe("warning");
    expect(dimseOutcome(0xa700)).toBe("failure");
    expect(dimseOutcome(0xc000)).toBe("failure");
  });
});

describe("RelayMetrics", () => {
  it("counts ingest results by way in, result and failure reason, and reads states when scraped", async () => {
    const m = new RelayMetrics();
    m.noteIngest({ status: "stored", studyInstanceUID: "1", seriesInstanceUID: "2", sopInstanceUID: "3", sopClassUID: "4", sha256: "x", size: 100 }, { source: "stow" });
    m.noteIngest({ status: "stored", studyInstanceUID: "1", seriesInstanceUID: "2", sopInstanceUID: "5", sopClassUID: "4", sha256: "y", size: 50 }, { source: "stow" });
    m.noteIngest({ status: "failed", reason: 0xa700, message: "too big" }, { source: "tus:u:IM1" });
    m.setSources({ transfersByState: async () => ({ open: 2, complete: 5, released: 0 }), forwardingByState: () => ({ jobs: { pending: 1 }, items: { pending: 7, failed: 2 } }), storageDir: "." });
    const { body, contentType } = await m.text();
    expect(contentType).toMatch(/^text\/plain/);
    expect(sample(body, "dicomrelay_ingest_instances_total", { source: "stow", result: "stored", reason: "none" })).toBe(2);
    expect(sample(body, "dicomrelay_ingest_bytes_total", { source: "stow", result: "stored" })).toBe(150);
    expect(sample(body, "dicomrelay_ingest_instances_total", { source: "tus", result: "failed", reason: "0xA700" })).toBe(1);
    expect(sample(body, "dicomrelay_transfers", { state: "open" })).toBe(2);
    expect(sample(body, "dicomrelay_transfers", { state: "complete" })).toBe(5);
    expect(sample(body, "dicomrelay_forwarding_instances", { state: "pending" })).toBe(7);
    expect(sample(body, "dicomrelay_forwarding_instances", { state: "failed" })).toBe(2);
    expect(sample(body, "dicomrelay_forwarding_jobs", { state: "done" })).toBe(0);
    expect(sample(body, "dicomrelay_storage_filesystem_bytes", { kind: "size" })).toBeGreaterThan(0);
    expect(sample(body, "dicomrelay_process_resident_memory_bytes", {})).toBeGreaterThan(0);
  });

  it("two relays in one process keep their own counts", async () => {
    const a = new RelayMetrics();
    const b = new RelayMetrics();
    a.noteDimse("C-ECHO", "completed", 0.01);
    expect(sample((await a.text()).body, "dicomrelay_dimse_requests_total", { command: "C-ECHO", outcome: "completed" })).toBe(1);
    expect(sample((await b.text()).body, "dicomrelay_dimse_requests_total", { command: "C-ECHO", outcome: "completed" })).toBeNull();
  });
});
