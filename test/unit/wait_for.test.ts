// waitFor (test/lab/wait_for.ts), which every end-to-end wait goes through: it returns the
// value that met the condition, and gives up bounded in time and in polls, naming what it
// waited for and the last value it saw.
import { describe, expect, test } from "bun:test";
import { waitFor } from "../lab/wait_for.ts";

describe("waitFor", () => {
  test("returns the first value that meets the condition, polling no further", async () => {
    let polls = 0;
    const value = await waitFor(
      () => ++polls,
      (n) => n >= 3,
      { what: "three polls", timeoutMs: 60_000, intervalMs: 1 },
    );
    expect(value).toBe(3);
    expect(polls).toBe(3);
  });

  test("async probes are awaited", async () => {
    let polls = 0;
    const value = await waitFor(
      async () => ({ active: ++polls < 2 ? 1 : 0 }),
      (m) => m.active === 0,
      { what: "no active connection", timeoutMs: 60_000, intervalMs: 1 },
    );
    expect(value).toEqual({ active: 0 });
  });

  test("gives up at the deadline with what it waited for and the last value seen", async () => {
    let polls = 0;
    const error = await waitFor(
      () => ({ sessionsExpired: 1, poll: ++polls }),
      (m) => m.sessionsExpired >= 2,
      { what: "2 sessions to expire", timeoutMs: 30, intervalMs: 10 },
    ).catch((e: Error) => e);
    expect(error).toBeInstanceOf(Error);
    const message = (error as Error).message;
    expect(message).toStartWith("gave up waiting for 2 sessions to expire after ");
    expect(message).toContain(`last value: {"sessionsExpired":1,"poll":${polls}}`);
    // Bounded in count too: timeoutMs / intervalMs + 1 polls at most.
    expect(polls).toBeGreaterThanOrEqual(1);
    expect(polls).toBeLessThanOrEqual(4);
  });

  test("a probe that throws ends the wait at once with its error", async () => {
    let polls = 0;
    const error = await waitFor(
      () => {
        polls += 1;
        throw new Error("metrics: no answer");
      },
      () => true,
      { what: "metrics", timeoutMs: 60_000 },
    ).catch((e: Error) => e);
    expect((error as Error).message).toBe("metrics: no answer");
    expect(polls).toBe(1);
  });

  test("long last values are cut", async () => {
    const error = await waitFor(
      () => "x".repeat(5000),
      () => false,
      { what: "never", timeoutMs: 1, intervalMs: 1 },
    ).catch((e: Error) => e);
    expect((error as Error).message).toEndWith("... (5002 chars)");
  });
});
