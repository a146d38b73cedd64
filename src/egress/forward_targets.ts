// A forward outbound's targets and their health, as the TCP path sees it: each new flow
// goes to one target, chosen by rendezvous hashing of the flow (client address and port,
// original destination and port) over the targets that are up, so a flow's choice is
// stable and a target going down moves only its own flows. Health is passive: a connect
// that fails (refused, timed out, unreachable) counts against its target, a connect that
// succeeds clears the count; healthCheck.failuresMax failures in a row mark the target
// down for retryIntervalMs, after which it is tried again (one more failure marks it down
// again at once). When every target is down the flow goes to its choice among all of them
// anyway: health bookkeeping never refuses service by itself.
import type { Endpoint } from "../policy/config.ts";

export class ForwardTargets {
  readonly targets: Endpoint[];
  private readonly failuresMax: number;
  private readonly retryIntervalMs: number;
  /** Connect failures in a row, per target. */
  private readonly failures: Int32Array;
  /** performance.now() until which the target is down (0: never marked). */
  private readonly downUntilMs: Float64Array;

  constructor(targets: Endpoint[], failuresMax: number, retryIntervalMs: number) {
    this.targets = targets;
    this.failuresMax = Math.max(1, failuresMax);
    this.retryIntervalMs = retryIntervalMs;
    this.failures = new Int32Array(targets.length);
    this.downUntilMs = new Float64Array(targets.length);
  }

  isDown(index: number, nowMs: number): boolean {
    return this.failures[index] >= this.failuresMax && nowMs < this.downUntilMs[index];
  }

  /** The target index for a flow whose hash is `flowHash` (see flowHash()). */
  choose(flowHash: number, nowMs: number): number {
    let best = -1;
    let bestScore = -1;
    let bestAny = 0;
    let bestAnyScore = -1;
    for (let i = 0; i < this.targets.length; i++) {
      const score = mix32(flowHash ^ Math.imul(i + 1, 0x9e3779b1));
      if (score > bestAnyScore) {
        bestAnyScore = score;
        bestAny = i;
      }
      if (score > bestScore && !this.isDown(i, nowMs)) {
        bestScore = score;
        best = i;
      }
    }
    return best >= 0 ? best : bestAny;
  }

  /** A connect to target `index` failed; returns true when this marks it down. */
  failed(index: number, nowMs: number): boolean {
    const wasDown = this.isDown(index, nowMs);
    this.failures[index]++;
    if (this.failures[index] < this.failuresMax) return false;
    this.downUntilMs[index] = nowMs + this.retryIntervalMs;
    return !wasDown;
  }

  /** A connect to target `index` succeeded. */
  succeeded(index: number): void {
    this.failures[index] = 0;
  }
}

/** A 32-bit avalanche (murmur3's finalizer): every input bit moves every output bit. */
function mix32(x: number): number {
  let h = x | 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * FNV-1a over a flow's words (client and original destination addresses, 8 words from
 * `at`) and its ports word: the input of choose().
 */
export function flowHash(words: Uint32Array, at: number, ports: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < 8; i++) h = Math.imul(h ^ words[at + i], 0x01000193);
  return Math.imul(h ^ ports, 0x01000193) >>> 0;
}
