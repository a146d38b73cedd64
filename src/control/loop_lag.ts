// Event-loop lag of the thread that creates it: how late a repeating timer fires. A late
// timer means everything else on that thread waited as long (on the main thread: TCP,
// the control plane, and UDP with udp.dataPlane "callback").

/** One timer every this often: at most 10 wake-ups a second of an otherwise idle thread. */
const LAG_PERIOD_MS = 100;

export interface LoopLagSample {
  /** Lag of the last firing. */
  lastMs: number;
  /** The largest lag since the previous take(). */
  maxMs: number;
}

export class LoopLag {
  private lastMs = 0;
  private maxMs = 0;
  private dueMs = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly periodMs = LAG_PERIOD_MS) {
    this.arm();
  }

  /** The last lag and the max since the previous take; the max then starts over. */
  take(): LoopLagSample {
    const sample = { lastMs: this.lastMs, maxMs: this.maxMs };
    this.maxMs = 0;
    return sample;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  // One timeout at a time, re-armed when it fires: each lag is measured against its own
  // due time (an interval's would depend on how the runtime reschedules it).
  private arm(): void {
    this.dueMs = performance.now() + this.periodMs;
    this.timer = setTimeout(() => this.fired(), this.periodMs);
    // Never what keeps the process alive.
    this.timer.unref();
  }

  private fired(): void {
    const lagMs = Math.max(0, performance.now() - this.dueMs);
    this.lastMs = lagMs;
    if (lagMs > this.maxMs) this.maxMs = lagMs;
    this.arm();
  }
}
