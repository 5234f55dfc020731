/**
 * Progress for a person watching: on a terminal one bar redrawn in place (bytes, rate, time left, instances);
 * otherwise (a log file, a scheduled job) a plain line every so often. Amounts are the study's bytes before
 * compression, so the numbers match the size shown in the summary; bytes on the wire are counted beside them.
 */

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
}

export function bar(fraction: number, width: number): string {
  const f = Math.max(0, Math.min(1, fraction));
  const full = Math.floor(f * width);
  return "#".repeat(full) + "-".repeat(width - full);
}

/** Rate over a sliding window of samples (bytes per second); 0 until two samples span some time. */
export class RateMeter {
  private readonly samples: Array<{ t: number; bytes: number }> = [];
  constructor(private readonly windowMs = 20_000) {}

  add(t: number, bytes: number): void {
    this.samples.push({ t, bytes });
    // each turn drops one old sample; the window bounds the list
    while (this.samples.length > 2 && this.samples[0]!.t < t - this.windowMs) this.samples.shift();
  }

  rate(): number {
    if (this.samples.length < 2) return 0;
    const a = this.samples[0]!;
    const b = this.samples[this.samples.length - 1]!;
    const dt = (b.t - a.t) / 1000;
    return dt > 0.5 ? Math.max(0, (b.bytes - a.bytes) / dt) : 0;
  }
}

export interface ProgressSnapshot {
  doneBytes: number;
  totalBytes: number;
  doneInstances: number;
  totalInstances: number;
  wireBytes: number;
  rate: number;
  /** bytes per second on the wire (after compression) */
  wireRate?: number;
  /** connections sending now, and how many the link was found to want */
  flows?: number;
  flowLimit?: number;
}

function flowsText(s: ProgressSnapshot): string {
  if (s.flows === undefined) return "";
  return ` ${s.flows} flow${s.flows === 1 ? "" : "s"}${s.flowLimit !== undefined && s.flowLimit !== s.flows ? ` (up to ${s.flowLimit})` : ""}`;
}

export function progressLine(s: ProgressSnapshot, width: number): string {
  const f = s.totalBytes ? s.doneBytes / s.totalBytes : 1;
  const eta = s.rate > 0 ? (s.totalBytes - s.doneBytes) / s.rate : NaN;
  const wire = s.wireRate !== undefined ? ` (wire ${formatBytes(s.wireRate)}/s)` : "";
  const text = `${Math.floor(f * 100)}% ${formatBytes(s.doneBytes)}/${formatBytes(s.totalBytes)} ${formatBytes(s.rate)}/s${wire}${flowsText(s)} left ${formatDuration(eta)} instances ${s.doneInstances}/${s.totalInstances}`;
  const barWidth = Math.max(10, Math.min(40, width - text.length - 3));
  return `[${bar(f, barWidth)}] ${text}`;
}

export function logLine(s: ProgressSnapshot): string {
  const f = s.totalBytes ? s.doneBytes / s.totalBytes : 1;
  const eta = s.rate > 0 ? (s.totalBytes - s.doneBytes) / s.rate : NaN;
  const wire = s.wireRate !== undefined ? ` at ${formatBytes(s.wireRate)}/s` : "";
  return `progress: ${Math.floor(f * 100)}% (${formatBytes(s.doneBytes)} of ${formatBytes(s.totalBytes)}), ${formatBytes(s.rate)}/s, about ${formatDuration(eta)} left, ${s.doneInstances} of ${s.totalInstances} instances, ${formatBytes(s.wireBytes)} sent on the wire${wire}${flowsText(s)}`;
}

/** Draws the bar (TTY) or logs lines (not a TTY); `say` prints a message without breaking the bar. */
export class Progress {
  private totalBytes = 0;
  private totalInstances = 0;
  private doneInstances = 0;
  private settledBytes = 0;
  private readonly inFlight = new Map<string, number>();
  private wire = 0;
  private readonly meter = new RateMeter();
  private readonly wireMeter = new RateMeter();
  private flows: number | undefined;
  private flowLimit: number | undefined;
  private timer: NodeJS.Timeout | null = null;
  private drawn = false;
  private lastLog = 0;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly tty: boolean,
    private readonly logEveryMs = 10_000,
  ) {}

  start(totalBytes: number, totalInstances: number, alreadyBytes: number, alreadyInstances: number): void {
    this.totalBytes = totalBytes;
    this.totalInstances = totalInstances;
    this.settledBytes = alreadyBytes;
    this.doneInstances = alreadyInstances;
    this.lastLog = Date.now();
    this.timer = setInterval(() => this.tick(), this.tty ? 250 : 1000);
    this.timer.unref();
  }

  /** fraction of a bundle's raw bytes sent (bytesSent/bytesTotal of its upload); 99% at most until the relay confirms */
  bundleProgress(name: string, rawBytes: number, sent: number, total: number): void {
    this.inFlight.set(name, total ? rawBytes * Math.min(0.99, sent / total) : 0);
  }

  bundleDone(name: string, rawBytes: number, instances: number): void {
    this.inFlight.delete(name);
    this.settledBytes += rawBytes;
    this.doneInstances += instances;
  }

  /** the bundle's upload starts over (a new upload): its bytes so far do not count */
  bundleReset(name: string): void {
    this.inFlight.delete(name);
  }

  addWire(bytes: number): void {
    this.wire += bytes;
  }

  /** connections sending now and the limit the flow controller set */
  setFlows(flows: number, limit: number): void {
    this.flows = flows;
    this.flowLimit = limit;
  }

  snapshot(): ProgressSnapshot {
    let done = this.settledBytes;
    for (const v of this.inFlight.values()) done += v;
    return { doneBytes: Math.min(done, this.totalBytes), totalBytes: this.totalBytes, doneInstances: this.doneInstances, totalInstances: this.totalInstances, wireBytes: this.wire, rate: this.meter.rate(), ...(this.flows !== undefined ? { wireRate: this.wireMeter.rate(), flows: this.flows, flowLimit: this.flowLimit } : {}) };
  }

  say(line: string): void {
    this.clear();
    this.out.write(line + "\n");
    if (this.tty && this.timer) this.draw();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.tty) {
      this.draw();
      this.out.write("\n");
      this.drawn = false;
    } else {
      this.out.write(logLine(this.snapshot()) + "\n");
    }
  }

  private tick(): void {
    const s = this.snapshot();
    this.meter.add(Date.now(), s.doneBytes);
    this.wireMeter.add(Date.now(), this.wire);
    if (this.tty) this.draw();
    else if (Date.now() - this.lastLog >= this.logEveryMs) {
      this.lastLog = Date.now();
      this.out.write(logLine(this.snapshot()) + "\n");
    }
  }

  private draw(): void {
    this.out.write("\r\x1b[2K" + progressLine(this.snapshot(), this.out.columns || 100));
    this.drawn = true;
  }

  private clear(): void {
    if (this.tty && this.drawn) this.out.write("\r\x1b[2K");
    this.drawn = false;
  }
}
