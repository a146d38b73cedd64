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

export function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}
