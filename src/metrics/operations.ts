/**
 * Names an HTTP request by what it does in the field's words (qido, wado-metadata, stow, tus-patch ...), so a
 * metric's label set stays small and fixed: never a UID, a token or a share link in a label.
 * Pure: no I/O, unit-tested.
 */

export interface OperationPaths {
  /** DICOMweb root, e.g. /dicom-web */
  dicomwebRoot: string;
  /** tus endpoint, e.g. /api/uploads */
  tusPath: string;
  consolePath: string;
  viewerAssetsPath: string;
}

/** Every label value the classifier can give (the metric's documented label set). */
export const OPERATIONS = [
  "qido",
  "wado-retrieve",
  "wado-metadata",
  "wado-frames",
  "wado-bulkdata",
  "wado-rendered",
  "stow",
  "dicomweb-delete",
  "tus-create",
  "tus-patch",
  "tus-head",
  "tus-delete",
  "tus-result",
  "tus-options",
  "transfers",
  "documents",
  "admin",
  "forwarding",
  "console",
  "viewer",
  "health",
  "metrics",
  "other",
] as const;
export type Operation = (typeof OPERATIONS)[number];

const under = (p: string, prefix: string) => p === prefix || p.startsWith(prefix + "/");

/** The DICOMweb operation for a path below the DICOMweb root ("/studies/1.2/series"). */
export function dicomwebOperation(method: string, rest: string): Operation {
  const m = method.toUpperCase();
  if (m === "POST") return "stow";
  if (m === "DELETE") return "dicomweb-delete";
  if (m !== "GET" && m !== "HEAD") return "other";
  const parts = rest.split("/").filter(Boolean);
  if (parts.includes("metadata")) return "wado-metadata";
  if (parts.includes("frames")) {
    const last = parts[parts.length - 1];
    return last === "rendered" || last === "thumbnail" ? "wado-rendered" : "wado-frames";
  }
  if (parts.includes("rendered") || parts.includes("thumbnail")) return "wado-rendered";
  if (parts.includes("bulkdata") || parts.includes("bulk")) return "wado-bulkdata";
  // /studies, /series, /instances, /studies/{s}/series, /studies/{s}/instances, /studies/{s}/series/{se}/instances
  const last = parts[parts.length - 1];
  if (parts.length % 2 === 1 && (last === "studies" || last === "series" || last === "instances")) return "qido";
  if (parts[0] === "studies" && parts.length >= 2) return "wado-retrieve";
  return "other";
}

export function classifyRequest(method: string, pathname: string, paths: OperationPaths): Operation {
  let p = pathname;
  // a share link's scoped root reads like the plain root; the link itself never becomes a label
  const share = /^\/share\/[^/]+(\/.*)?$/.exec(p);
  if (share) {
    p = share[1] ?? "/";
    if (!under(p, paths.dicomwebRoot)) return "viewer";
  }
  const m = method.toUpperCase();
  if (under(p, paths.dicomwebRoot)) return dicomwebOperation(m, p.slice(paths.dicomwebRoot.length));
  if (under(p, paths.tusPath)) {
    switch (m) {
      case "POST":
        return "tus-create";
      case "PATCH":
        return "tus-patch";
      case "HEAD":
        return "tus-head";
      case "DELETE":
        return "tus-delete";
      case "GET":
        return "tus-result";
      case "OPTIONS":
        return "tus-options";
      default:
        return "other";
    }
  }
  if (under(p, "/api/transfers") || p === "/.well-known/dicom-relay/receipt-key") return "transfers";
  if (/^\/api\/studies\/[^/]+\/(documents|completeness)$/.test(p)) return "documents";
  if (under(p, "/api/admin")) return "admin";
  if (under(p, "/api/forwarding")) return "forwarding";
  if (under(p, paths.consolePath) || under(p, "/api/session") || under(p, "/api/viewer-links") || p === "/") return "console";
  if (under(p, paths.viewerAssetsPath)) return "viewer";
  if (p === "/healthz" || p === "/readyz") return "health";
  if (p === "/metrics") return "metrics";
  return "other";
}

/** "2xx" ... "5xx": status classes keep the label set small. */
export const statusClass = (status: number): string => `${Math.floor(status / 100)}xx`;

/** The kind of way in an ingest came by, from IngestOptions.source ("stow", "tus", "bundle:IM1", "dimse:AE", "document:pdf"). */
export function ingestSourceKind(source: string | undefined): string {
  const head = (source ?? "").split(":")[0]!.toLowerCase();
  return ["stow", "tus", "bundle", "dimse", "document"].includes(head) ? head : "other";
}
