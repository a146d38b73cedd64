// One rate-limited logger for the relay's repeated conditions (a flood of drops of one
// reason must not become a flood of lines). Never called per packet on the fast path:
// only where a datagram or connection is already being dropped or refused, and then
// at most one line per reason per interval.

/** A repeated line of one reason is printed at most this often. */
export const LOG_INTERVAL_MS = 10_000;
/** Distinct reasons remembered at most (reasons are a small fixed set plus errno values). */
const REASONS_MAX = 1024;

export class RateLimitedLog {
  private readonly lastMs = new Map<string, number>();

  constructor(
    private readonly prefix = "[relay]",
    private readonly intervalMs = LOG_INTERVAL_MS,
  ) {}

  /** Prints `message` unless a line of `reason` was printed within the interval. */
  log(reason: string, message: string): void {
    const now = performance.now();
    const last = this.lastMs.get(reason);
    if (last !== undefined && now - last < this.intervalMs) return;
    if (last === undefined && this.lastMs.size >= REASONS_MAX) this.lastMs.clear();
    this.lastMs.set(reason, now);
    console.error(`${this.prefix} ${message}`);
  }
}
