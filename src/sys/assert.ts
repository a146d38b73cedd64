// Assertions that stay on in production (STYLE.md 6, TigerBeetle): a broken invariant
// on the data path would corrupt memory or misdeliver a datagram, so the process ends
// with a message instead (a service manager restarts it). Cheap: one branch.
// Untrusted input is validated and counted, never asserted.

export class AssertionError extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = "AssertionError";
  }
}

/**
 * The message must be a constant: it is evaluated on every call. Where it needs values,
 * write `if (!condition) assertionFailed(\`...\`)`, so the text is built only on failure
 * (a template string per datagram would allocate on the hot path; tidy checks this).
 */
export function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** A broken invariant, with a message built only now that it failed. */
export function assertionFailed(message: string): never {
  throw new AssertionError(message);
}
