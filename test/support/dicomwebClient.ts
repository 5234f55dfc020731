/**
 * dicomweb-client is a browser library built on XMLHttpRequest: in Node the xhr2 polyfill is
 * installed as a global before the client is loaded.
 */
import XMLHttpRequestPolyfill from "xhr2";

const g = globalThis as unknown as { XMLHttpRequest?: unknown };
if (!g.XMLHttpRequest) g.XMLHttpRequest = XMLHttpRequestPolyfill;

const mod = await import("dicomweb-client");
// the package ships CJS and ESM builds with different shapes
export const api = ((mod as unknown as { api?: unknown }).api ?? (mod as unknown as { default: { api: unknown } }).default.api) as {
  DICOMwebClient: new (opts: { url: string; headers?: Record<string, string>; singlepart?: string | boolean; verbose?: boolean }) => DicomwebClient;
};

export interface DicomwebClient {
  storeInstances(o: { datasets: ArrayBuffer[]; studyInstanceUID?: string }): Promise<unknown>;
  searchForStudies(o?: { queryParams?: Record<string, unknown> }): Promise<Record<string, { vr: string; Value?: unknown[] }>[]>;
  searchForSeries(o?: { studyInstanceUID?: string; queryParams?: Record<string, unknown> }): Promise<Record<string, { vr: string; Value?: unknown[] }>[]>;
  searchForInstances(o?: { studyInstanceUID?: string; seriesInstanceUID?: string; queryParams?: Record<string, unknown> }): Promise<Record<string, { vr: string; Value?: unknown[] }>[]>;
  retrieveStudy(o: { studyInstanceUID: string }): Promise<ArrayBuffer[]>;
  retrieveSeries(o: { studyInstanceUID: string; seriesInstanceUID: string }): Promise<ArrayBuffer[]>;
  retrieveInstance(o: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string }): Promise<ArrayBuffer>;
  retrieveStudyMetadata(o: { studyInstanceUID: string }): Promise<Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string }>[]>;
  retrieveSeriesMetadata(o: { studyInstanceUID: string; seriesInstanceUID: string }): Promise<Record<string, unknown>[]>;
  retrieveInstanceMetadata(o: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string }): Promise<Record<string, unknown>[]>;
  retrieveInstanceFrames(o: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string; frameNumbers: number[]; mediaTypes?: { mediaType: string; transferSyntaxUID?: string }[] }): Promise<ArrayBuffer[]>;
  retrieveBulkData(o: { BulkDataURI: string; mediaTypes?: { mediaType: string; transferSyntaxUID?: string }[] }): Promise<ArrayBuffer[]>;
  deleteStudy?(o: { studyInstanceUID: string }): Promise<unknown>;
}

export function dicomwebClient(url: string, headers: Record<string, string> = {}): DicomwebClient {
  return new api.DICOMwebClient({ url, headers, verbose: false });
}
