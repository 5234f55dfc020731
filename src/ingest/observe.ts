import type { Readable } from "node:stream";
import type { IngestOptions, IngestResult, Ingestor, SpooledInstance } from "./types.ts";

/**
 * An Ingestor that tells `onResult` of every result, whichever way in and whichever half (spool refusals
 * included), then returns it unchanged: how the audit trail and the metrics see every instance.
 */
export function observingIngestor(inner: Ingestor, onResult: (result: IngestResult, opts?: IngestOptions) => void): Ingestor {
  const note = (result: IngestResult, opts?: IngestOptions): IngestResult => {
    onResult(result, opts);
    return result;
  };
  return {
    async ingestStream(body: Readable, opts?: IngestOptions) {
      return note(await inner.ingestStream(body, opts), opts);
    },
    async spool(body: Readable, opts?: IngestOptions): Promise<SpooledInstance | IngestResult> {
      const s = await inner.spool(body, opts);
      return "status" in s ? note(s, opts) : s;
    },
    async ingestSpool(spooled: SpooledInstance, opts?: IngestOptions) {
      return note(await inner.ingestSpool(spooled, opts), opts);
    },
    discard(spooled: SpooledInstance) {
      return inner.discard(spooled);
    },
  };
}
