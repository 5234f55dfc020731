/**
 * Small objects read from a remote store, kept in memory, least recently used first out, bounded in bytes. Blobs are
 * content-addressed (the key is the SHA-256 of the bytes), so an entry never goes stale; a delete or a put of the
 * key drops it all the same. What the page cache gives the file store for free, and what Orthanc's storage cache
 * (MaximumStorageCacheSize, 128 MB by default) gives it: a study retrieved again (a viewer's second look, a PACS
 * retrying) does not cost a request per instance to the object store again.
 */
export class ReadCache {
  private readonly entries = new Map<string, Buffer>();
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

  get(key: string): Buffer | undefined {
    const b = this.entries.get(key);
    if (b) {
      // most recently used last
      this.entries.delete(key);
      this.entries.set(key, b);
    }
    return b;
  }

  set(key: string, value: Buffer): void {
    if (value.length > this.maxEntryBytes || value.length > this.maxBytes) return;
    this.delete(key);
    this.entries.set(key, value);
    this.bytes += value.length;
    // bounded by maxBytes: each turn drops the least recently used entry
    for (const [k, b] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= b.length;
    }
  }

  delete(key: string): void {
    const b = this.entries.get(key);
    if (!b) return;
    this.entries.delete(key);
    this.bytes -= b.length;
  }
}
