/**
 * Resident memory of another process (Linux /proc), for the bench: its current RSS and its peak since the last reset.
 * The peak is the kernel's high-water mark (VmHWM), which writing "5" to /proc/PID/clear_refs resets to the current
 * RSS, so each phase of a run has its own peak, not the largest of the phases before it. Where that reset is refused
 * (a kernel or container that does not allow it), VmRSS is sampled every 20 ms instead: a peak shorter than that
 * may then be missed, which `method` says.
 */
import fs from "node:fs";

export interface PeakRssMeter {
  /** resident set size now, bytes */
  rss(): number;
  /** peak resident set size since the last reset (or since the start), bytes */
  peakRss(): number;
  /** starts a new peak from the current RSS */
  resetPeak(): void;
  /** how the peak is measured */
  readonly method: "VmHWM (reset through clear_refs)" | "VmRSS sampled every 20 ms";
  /** stops the sampler, if any */
  close(): void;
}

const statusKb = (pid: number, field: "VmRSS" | "VmHWM"): number => {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
};

export function peakRssMeter(pid: number): PeakRssMeter {
  const rss = () => statusKb(pid, "VmRSS");
  const clear = (): boolean => {
    try {
      fs.writeFileSync(`/proc/${pid}/clear_refs`, "5");
    } catch {
      return false;
    }
    // the reset worked when the mark came down to about the current RSS
    return statusKb(pid, "VmHWM") <= rss() + 1024 * 1024;
  };
  if (clear()) {
    return {
      rss,
      peakRss: () => statusKb(pid, "VmHWM"),
      resetPeak: () => {
        if (!clear()) throw new Error(`the peak RSS of process ${pid} could not be reset (clear_refs)`);
      },
      method: "VmHWM (reset through clear_refs)",
      close: () => undefined,
    };
  }
  let peak = rss();
  const sample = () => {
    try {
      peak = Math.max(peak, rss());
    } catch {
      // the process has ended
    }
  };
  const timer = setInterval(sample, 20);
  timer.unref();
  return {
    rss,
    peakRss: () => {
      sample();
      return peak;
    },
    resetPeak: () => {
      peak = rss();
    },
    method: "VmRSS sampled every 20 ms",
    close: () => clearInterval(timer),
  };
}

/**
 * CPU time the process has used so far (user + system, seconds, /proc/PID/stat): on a shared machine a steadier
 * measure of what a phase costs than its wall-clock throughput.
 */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  // the fields after the command name (which may hold spaces) in parentheses; utime and stime are the 14th and 15th
  const after = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(after[11]) + Number(after[12])) / 100;
}
