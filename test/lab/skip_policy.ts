// When a machine cannot run a test (no root, no network namespaces, a tool missing): on a
// developer's laptop the test is skipped with a printed reason; in CI (CI=true) it is a
// failure, never a skip, because the end-to-end tests are the proof that the relay works
// (STYLE.md 11; kselftest skips with ksft_skip=4 only outside CI). One policy for every
// test file, so that no file can pass by returning early.

type Env = Record<string, string | undefined>;

/** CI=true, as GitHub Actions and most CI systems set it. */
export function inCi(env: Env = process.env): boolean {
  return env.CI === "true";
}

/**
 * Registration time: the reason to register no tests, or null to register them.
 * `unavailable` is why this machine cannot run them (null: it can). In CI the answer is
 * always null: the tests are registered and fail with `unavailable` when they run.
 */
export function skipReason(unavailable: string | null, env: Env = process.env): string | null {
  if (unavailable === null) return null;
  if (inCi(env)) return null;
  return unavailable;
}

/**
 * Inside a test body: false when the test can run. Outside CI, prints `unavailable` and
 * returns true (the caller returns). In CI, throws with `unavailable`: a failure.
 */
export function skipped(unavailable: string | null, what: string, env: Env = process.env): boolean {
  if (unavailable === null) return false;
  if (inCi(env)) {
    throw new Error(`${what}: ${unavailable} (CI=true: a missing capability fails, never skips)`);
  }
  console.warn(`[${what} skipped] ${unavailable}`);
  return true;
}
