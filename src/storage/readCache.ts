import { chunksLength } from "./blobStore.ts";

/**
 * Small objects read from a remote store, kept in memory, least recently used first out, bounded in bytes. Blobs are
 * content-addressed (the key is the SHA-256 of the bytes), so an entry never goes stale; a delete or a put of the
 * key drops it all the same. What the page cache gives the file store for free, and what Orthanc's storage cache
 * (MaximumStorageCacheSize, 128 MB by default) gives it: a study retrieved again (a viewer's second look, a PACS
 * retrying) does not cost a request per instance to the object store again. An entry is the chunks the object's
 * response arrived in (kept as they are: joining them would copy every byte once more).
 */
export class ReadCache {
  private readonly entries = new Map<string, { chunks: readonly Buffer[]; bytes: number }>();
  private bytes = 0;

  /**
   * @param maxBytes all entries together (0: nothing is kept)
   * @param maxEntryBytes larger objects are never kept
   */
  constructor(
    readonly maxBytes: number,
    readonly maxEntryBytes: number,
  ) {}

  get size(): { entries: number; bytes: number } {
    return { entries: this.entries.size, bytes: this.bytes };
  }

  /** the object's chunks, or undefined when it is not kept */
  get(key: string): readonly Buffer[] | undefined {
    const e = this.entries.get(key);
    if (e) {
      // most recently used last
      this.entries.delete(key);
      this.entries.set(key, e);
    }
    return e?.chunks;
  }

  set(key: string, chunks: readonly Buffer[]): void {
    const bytes = chunksLength(chunks);
    if (bytes > this.maxEntryBytes || bytes > this.maxBytes) return;
    this.delete(key);
    this.entries.set(key, { chunks, bytes });
    this.bytes += bytes;
    // bounded by maxBytes: each turn drops the least recently used entry
    for (const [k, e] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= e.bytes;
    }
  }

  delete(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    this.bytes -= e.bytes;
  }
}
