// Wait for conditions, not for time (STYLE.md 14): on a shared 2-core machine a sleep is
// either too short (the test flakes) or too long (the suite crawls). Poll what the test is
// about until it holds; give up at a deadline that only a broken relay reaches, and say
// what was awaited and the last value seen.

export interface WaitOptions {
  /** What is awaited, for the error: "the 2 sessions to port 7002 to expire". */
  what: string;
  /** Give up after this long. Generous: a loaded machine is slow, not wrong. */
  timeoutMs: number;
  /** Pause between two polls. */
  intervalMs?: number;
}

const INTERVAL_MS_DEFAULT = 20;
/** An error message quotes at most this much of the last value seen. */
const LAST_VALUE_CHARS_MAX = 2000;

/**
 * Polls `probe` until `done(value)` holds and returns that value. Bounded in time
 * (timeoutMs) and in count (timeoutMs / intervalMs + 1 polls): past either, throws with
 * `what` and the last value. Errors thrown by `probe` propagate at once.
 */
export async function waitFor<T>(
  probe: () => T | Promise<T>,
  done: (value: T) => boolean,
  options: WaitOptions,
): Promise<T> {
  const intervalMs = options.intervalMs ?? INTERVAL_MS_DEFAULT;
  if (!(intervalMs > 0 && options.timeoutMs > 0)) throw new Error("waitFor: bad options");
  const pollsMax = Math.ceil(options.timeoutMs / intervalMs) + 1;
  const started = performance.now();
  const deadline = started + options.timeoutMs;
  let last: T | undefined;
  let polls = 0;
  while (polls < pollsMax) {
    last = await probe();
    polls += 1;
    if (done(last)) return last;
    const left = deadline - performance.now();
    if (left <= 0) break;
    await Bun.sleep(Math.min(intervalMs, left));
  }
  const elapsedMs = Math.round(performance.now() - started);
  throw new Error(
    `gave up waiting for ${options.what} after ${elapsedMs} ms (${polls} polls, ` +
      `limit ${options.timeoutMs} ms); last value: ${describe(last)}`,
  );
}

function describe(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  if (text.length <= LAST_VALUE_CHARS_MAX) return text;
  return `${text.slice(0, LAST_VALUE_CHARS_MAX)}... (${text.length} chars)`;
}
