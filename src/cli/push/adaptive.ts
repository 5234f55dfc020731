/**
 * How many connections the push runs at once, found from the link itself (pure: fed samples, no clock of its own).
 *
 * On a long lossy path one TCP flow gets a small share of the line (throughput ~ MSS / (RTT x sqrt(loss))), so the
 * aggregate grows with the number of flows until the line itself is full. The controller climbs: every window of a
 * few RTTs it compares the aggregate rate with the rate before its last change; while a step up paid (the rate grew by
 * more than `gain`), it steps up again (x2 until the first step that did not pay, then x1.25); a step that did not pay
 * is undone and the level held, probing a step up or down every few windows (a step down that keeps the rate is
 * kept: as fast with fewer connections). Errors (resets, timeouts, 5xx) in a window cut the level by a third.
 * A window in which fewer flows had work than the level allows is not judged (nothing to learn).
 * When the sender also gives each connection's own rate while sending (pieces timed one by one), it is the
 * cross-check: while doubling, the next step comes as soon as added connections carry as much each as before, and a
 * step down is kept only if each connection got faster by as much.
 */

export interface FlowControllerOptions {
  min: number;
  max: number;
  /** flows at the start */
  initial: number;
  /** length of a judging window (ms): a few round trips, at least a second */
  windowMs: number;
  /** a step up must raise the rate by this fraction to count as paid (0.1 = 10%) */
  gain?: number;
  /** windows held at a plateau before probing one step up again */
  probeEvery?: number;
  /**
   * after a change, time before the next window starts (ms): new connections first create their upload and wait a
   * round trip or two before their bytes flow; judged at once, a step up that will pay looks as if it did not
   */
  settleMs?: number;
}

export interface FlowSample {
  /** ms (any monotonic clock) */
  t: number;
  /** bytes sent so far on the wire, all flows together */
  bytes: number;
  /** flows that had work at this moment */
  busy: number;
  /** errors so far (connection resets, timeouts, 5xx), all flows together */
  errors: number;
  /**
   * pieces ended so far, with their bytes and the time each spent sending (summed over pieces): what one connection
   * carries while it sends. Optional; when given, the climb doubles as soon as the connections a step added carry
   * as much each as those before (the link had room) instead of waiting for a whole window
   */
  pieces?: number;
  pieceBytes?: number;
  pieceMs?: number;
}

export class FlowController {
  readonly min: number;
  readonly max: number;
  private level: number;
  private windowMs: number;
  private readonly minWindowMs: number;
  private readonly gain: number;
  private readonly probeEvery: number;
  /** doubling until the first step that did not pay, then steps of 25% */
  private fast = true;
  private start: FlowSample | null = null;
  private saturated = true;
  /** a step being tried: the level and rate before it (and each connection's rate before it), and its direction */
  private trial: { from: number; rate: number; dir: "up" | "down"; flowRate?: number } | null = null;
  private held = 0;
  private probes = 0;
  private settleMs: number;
  private readonly minSettleMs: number;
  /** no window starts before this time (a change is settling) */
  private settleUntil = 0;
  /** the decisions taken (the last 50), for the log and tests */
  readonly history: Array<{ t: number; rate: number; level: number; why: string }> = [];

  constructor(o: FlowControllerOptions) {
    this.min = Math.max(1, Math.floor(o.min));
    this.max = Math.max(this.min, Math.floor(o.max));
    this.level = clamp(Math.floor(o.initial), this.min, this.max);
    this.windowMs = Math.max(200, o.windowMs);
    this.minWindowMs = this.windowMs;
    this.gain = o.gain ?? 0.1;
    this.probeEvery = o.probeEvery ?? 4;
    this.settleMs = Math.max(0, o.settleMs ?? 0);
    this.minSettleMs = this.settleMs;
  }

  /** still doubling (the first steps of a push) */
  get climbing(): boolean {
    return this.fast;
  }

  /** flows allowed now */
  get flows(): number {
    return this.level;
  }

  /**
   * Lengthen (or shorten, never below the window given at construction) the judging window. The rate is judged by
   * the bytes of pieces the relay confirmed, which arrive whole: a window that sees few pieces end reads the rate
   * several tens of percent off, and the controller decides by noise. The sender sizes the window so that some two
   * dozen pieces end in it.
   */
  setWindow(ms: number): void {
    this.windowMs = Math.max(this.minWindowMs, ms);
  }

  /**
   * Lengthen (never below the value given at construction) the wait after a change before judging. A connection
   * added by a step counts in the confirmed bytes only once its first piece ends: judged before, the step looks as if
   * it did not pay. The sender sets it to a piece's duration on one connection plus a round trip.
   */
  setSettle(ms: number): void {
    this.settleMs = Math.max(this.minSettleMs, ms);
  }

  get window(): number {
    return this.windowMs;
  }

  /** Feed a sample (every few hundred ms); returns the flows allowed from now on. */
  sample(s: FlowSample): number {
    if (!this.start || s.t < this.settleUntil) {
      // the window begins once the last change has settled
      this.start = s;
      this.saturated = true;
      return this.level;
    }
    // a window is judged only if every allowed flow had work all through it; while doubling, a window begins when
    // they all have (the first pieces are still being built when the push starts)
    if (s.busy < this.level) {
      if (this.fast) {
        this.start = s;
        return this.level;
      }
      this.saturated = false;
    }
    if (this.fast && this.saturated && this.climbEarly(s)) return this.level;
    if (s.t - this.start.t < this.windowMs) return this.level;
    const rate = ((s.bytes - this.start.bytes) * 1000) / (s.t - this.start.t);
    const flowRate = windowFlowRate(this.start, s);
    const errors = s.errors - this.start.errors;
    const judged = this.saturated;
    this.start = s;
    this.saturated = true;
    if (errors > Math.max(1, this.level / 8)) {
      // the link (or the relay) says slow down
      this.fast = false;
      this.trial = null;
      this.held = 0;
      this.set(this.level * 0.67, rate, `${errors} errors`);
      return this.level;
    }
    if (!judged) return this.level;
    const t = this.trial;
    if (t) {
      this.trial = null;
      // each connection's own rate, where both windows have it: confirmed bytes arrive a piece at a time and in
      // bursts, so the aggregate of a window can read tens of percent off; a connection's pieces are timed one by one
      const each = flowRate !== undefined && t.flowRate !== undefined ? flowRate / t.flowRate : undefined;
      if (t.dir === "up") {
        // more flows pay if the aggregate grew (judged by the aggregate alone: when the machine, not the link, is
        // the limit, each connection slows down as flows are added, and yet more flows still carry more)
        if (rate >= t.rate * (1 + this.gain)) {
          // it paid: keep climbing
          this.step("up", rate, "more flows paid", flowRate);
        } else {
          this.fast = false;
          this.held = 0;
          this.set(t.from, rate, "more flows did not pay");
        }
      } else if (rate < t.rate * (1 - this.gain / 4) || (each !== undefined && each < (t.from / this.level) * 0.85)) {
        // fewer flows must keep (nearly) all of the rate (too many flows cost little, too few cost the link), and
        // each must have got faster by as much (they shared a full link): connections each capped by a lossy path
        // stay as fast each, and then fewer of them carry less, whatever one window read
        this.held = 0;
        this.set(t.from, rate, "fewer flows lost rate");
      } else {
        // as fast with fewer: keep the lower level and try lower still
        this.step("down", rate, "fewer flows as fast", flowRate);
      }
      return this.level;
    }
    if (this.fast) {
      this.step("up", rate, "start", flowRate);
      return this.level;
    }
    // holding: probe now and then, up and down in turn (the link's share changes at busy hours)
    if (++this.held >= this.probeEvery) {
      this.held = 0;
      this.step(this.probes++ % 2 === 0 ? "up" : "down", rate, "probe", flowRate);
    }
    return this.level;
  }

  /**
   * While doubling: once enough pieces have ended since the window began (a quarter of the connections' worth, at
   * least 4), each connection's rate while sending tells at once whether the link had room. The first time it is the
   * reference (and the first step is taken: nothing to judge yet); after a step up, connections each as fast as
   * before (within 15%) mean the link was not full: double again. Slower connections decide nothing here: the
   * window judges the step by the aggregate rate, as without this signal.
   */
  private climbEarly(s: FlowSample): boolean {
    const flowRate = windowFlowRate(this.start!, s, Math.max(4, Math.ceil(this.level / 4)));
    if (flowRate === undefined) return false;
    // the reference a later window judges the step by: what this level carries with every connection sending (the
    // confirmed bytes of so short a window would be noise)
    const rate = flowRate * this.level;
    const t = this.trial;
    if (t && t.dir !== "up") return false;
    if (t && !(t.flowRate && flowRate >= t.flowRate * 0.85)) return false;
    this.start = s;
    this.saturated = true;
    this.trial = null;
    this.step("up", rate, t ? "more flows paid (each as fast)" : "start", flowRate);
    return true;
  }

  private step(dir: "up" | "down", rate: number, why: string, flowRate?: number): void {
    const next = dir === "up" ? (this.fast ? this.level * 2 : Math.max(this.level + 1, this.level * 1.25)) : Math.min(this.level - 1, this.level * 0.8);
    const to = clamp(Math.round(next), this.min, this.max);
    if (to === this.level) {
      // at a bound: hold, and probe from there
      this.fast = false;
      this.held = 0;
      return;
    }
    this.trial = { from: this.level, rate, dir, flowRate };
    this.set(to, rate, why);
  }

  private set(level: number, rate: number, why: string): void {
    const before = this.level;
    this.level = clamp(Math.round(level), this.min, this.max);
    if (this.level !== before && this.start) this.settleUntil = this.start.t + this.settleMs;
    this.history.push({ t: this.start?.t ?? 0, rate, level: this.level, why });
    if (this.history.length > 50) this.history.shift();
  }
}

const clamp = (x: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, x));

/** each connection's rate while sending between two samples (pieces ended in between), when at least minPieces ended */
function windowFlowRate(a: FlowSample, b: FlowSample, minPieces = 4): number | undefined {
  if (a.pieces === undefined || b.pieces === undefined || a.pieceBytes === undefined || b.pieceBytes === undefined || a.pieceMs === undefined || b.pieceMs === undefined) return undefined;
  if (b.pieces - a.pieces < minPieces || b.pieceMs <= a.pieceMs) return undefined;
  return ((b.pieceBytes - a.pieceBytes) * 1000) / (b.pieceMs - a.pieceMs);
}

/** A fixed number of flows (--parallel N): the same interface, no adaptation. */
export class FixedFlows {
  constructor(readonly flows: number) {}
  sample(): number {
    return this.flows;
  }
}
