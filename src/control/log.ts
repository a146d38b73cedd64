// Structured logs: levels, and two formats: "text" for a terminal ("[relay] message
// key=value") and "json" for a collector (one object per line: time, level, msg, and
// the fields). Configured once at start-up (config.log) in each thread that logs (the
// main thread and the UDP Worker); never called per packet on the data path: only
// where a datagram or connection is already being dropped or refused, through
// RateLimitedLog, and then at most one line per reason per interval.

export type Level = "debug" | "info" | "warn" | "error";
export type Fields = Record<string, string | number | boolean | null>;

const SEVERITY: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

let threshold = SEVERITY.info;
let json = false;

/** Applies config.log (level and format) for this thread. */
export function configureLog(options: { level: Level; format: "text" | "json" }): void {
  threshold = SEVERITY[options.level];
  json = options.format === "json";
}

function emit(level: Level, msg: string, fields?: Fields): void {
  if (SEVERITY[level] < threshold) return;
  let line: string;
  if (json) {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields });
  } else {
    line = `[relay] ${msg}`;
    if (fields) for (const [k, v] of Object.entries(fields)) line += ` ${k}=${v}`;
  }
  // console.error writes to fd 2 directly: process.stderr would open a stream (a
  // duplicate descriptor) lazily in each thread on its first write.
  console.error(line);
}

export const log = {
  debug: (msg: string, fields?: Fields) => emit("debug", msg, fields),
  info: (msg: string, fields?: Fields) => emit("info", msg, fields),
  warn: (msg: string, fields?: Fields) => emit("warn", msg, fields),
  error: (msg: string, fields?: Fields) => emit("error", msg, fields),
};

/** A repeated line of one reason is printed at most this often. */
export const LOG_INTERVAL_MS = 10_000;
/** Distinct reasons remembered at most (reasons are a small fixed set plus errno values). */
const REASONS_MAX = 1024;

/**
 * The relay's repeated conditions (a flood of drops of one reason must not become a
 * flood of lines): one warning per reason per interval.
 */
export class RateLimitedLog {
  private readonly lastMs = new Map<string, number>();

  constructor(private readonly intervalMs = LOG_INTERVAL_MS) {}

  /** Logs `message` (warn) unless a line of `reason` was logged within the interval. */
  log(reason: string, message: string): void {
    const now = performance.now();
    const last = this.lastMs.get(reason);
    if (last !== undefined && now - last < this.intervalMs) return;
    if (last === undefined && this.lastMs.size >= REASONS_MAX) this.lastMs.clear();
    this.lastMs.set(reason, now);
    emit("warn", message, { reason });
  }
}
