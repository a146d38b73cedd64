// The outbounds as the UDP data path uses them: one runtime entry per configured outbound
// (src/policy/config.ts), holding what lives longer than a config: a forward outbound's
// target health. A session keeps the runtime index it was decided with, so a reload
// changes what NEW flows do while open flows go on with the outbound they were given
// (an outbound the reload removed or changed lives on until its last session ends).
//
// Forward health (outbound.healthCheck): a datagram to a target that is not answered
// within answerTimeoutMs is a failure of that target; failuresMax failures in a row mark
// it down for retryIntervalMs; any answer resets its count. A flow's target is a stable
// choice (its hash) among the targets that are up; when all are down, the hash's own.
import { V4_MAPPED_WORD } from "../flow/local_targets.ts";
import type { UdpCounters } from "../metrics.ts";
import type { OutboundConfig } from "../policy/config.ts";
import { assert } from "../sys/assert.ts";

export class ForwardTargets {
  readonly count: number;
  /** Per target: 4 address words (the session key's layout) and the port. */
  readonly words: Uint32Array;
  readonly ports: Uint16Array;
  readonly failures: Uint16Array;
  readonly downUntilMs: Float64Array;
  answerTimeoutMs: number;
  failuresMax: number;
  retryIntervalMs: number;
  /** Sessions waiting for an answer, oldest first (see Outbounds). */
  awaitFirst = -1;
  awaitLast = -1;

  constructor(o: Extract<OutboundConfig, { type: "forward" }>) {
    this.count = o.targets.length;
    this.words = new Uint32Array(this.count * 4);
    this.ports = new Uint16Array(this.count);
    o.targets.forEach((t, i) => {
      this.words.set(new Uint32Array(t.addr.slice().buffer), i * 4);
      this.ports[i] = t.port;
    });
    this.failures = new Uint16Array(this.count);
    this.downUntilMs = new Float64Array(this.count);
    this.answerTimeoutMs = o.healthCheck.answerTimeoutMs;
    this.failuresMax = o.healthCheck.failuresMax;
    this.retryIntervalMs = o.healthCheck.retryIntervalMs;
  }

  /**
   * The target for a flow of hash `hash` whose addresses are IPv6 or not: the hash's
   * own when up, else the next one up; when all are down, the hash's own. Only targets
   * of the flow's family are considered; -1 when there is none.
   */
  pick(hash: number, ipv6: boolean, now: number): number {
    const n = this.count;
    const start = hash % n;
    let fallback = -1;
    for (let k = 0; k < n; k++) {
      const t = (start + k) % n;
      if (this.isIpv6(t) !== ipv6) continue;
      if (this.downUntilMs[t] <= now) return t;
      if (fallback < 0) fallback = t;
    }
    return fallback;
  }

  /** Whether target t is the reply source (4 words at `at` in `words`, `port`). */
  matches(t: number, words: Uint32Array, at: number, port: number): boolean {
    const w = t * 4;
    const own = this.words;
    return (
      this.ports[t] === port &&
      own[w] === words[at] &&
      own[w + 1] === words[at + 1] &&
      own[w + 2] === words[at + 2] &&
      own[w + 3] === words[at + 3]
    );
  }

  /** The target whose address and port these are, or -1. */
  find(words: Uint32Array, at: number, port: number): number {
    for (let t = 0; t < this.count; t++) if (this.matches(t, words, at, port)) return t;
    return -1;
  }

  private isIpv6(t: number): boolean {
    const w = t * 4;
    return !(
      this.words[w] === 0 &&
      this.words[w + 1] === 0 &&
      this.words[w + 2] === V4_MAPPED_WORD
    );
  }
}

/** policyIndexOf() of an outbound the running policy does not have (a flow log "?"). */
const UNKNOWN_POLICY_INDEX = 0x7fff;

interface Runtime {
  config: OutboundConfig;
  /** What identifies the outbound's settings: a reload that keeps them keeps the entry. */
  identity: string;
  /** Sessions holding it. */
  refs: number;
  /** In the running policy (a new flow may get it). */
  current: boolean;
  /** Its index in the running policy's outbounds (flow records name it by that). */
  policyIndex: number;
  forward: ForwardTargets | null;
}

/** Per-session answer tracking for forward outbounds, and the runtime registry. */
export class Outbounds {
  private readonly runtimes: Array<Runtime | null> = [];
  /** Per policy outbound index: its runtime index. */
  private byPolicy = new Int16Array(0);

  // Per session: the runtime and target awaiting an answer, since when, list links.
  private readonly awaitRuntime: Int16Array;
  private readonly awaitTarget: Int16Array;
  private readonly awaitSinceMs: Float64Array;
  private readonly awaitPrev: Int32Array;
  private readonly awaitNext: Int32Array;

  constructor(
    sessionsMax: number,
    /** forwardAnswerTimeouts and forwardTargetsDown are counted here. */
    private readonly counters: UdpCounters,
  ) {
    this.awaitRuntime = new Int16Array(sessionsMax).fill(-1);
    this.awaitTarget = new Int16Array(sessionsMax);
    this.awaitSinceMs = new Float64Array(sessionsMax);
    this.awaitPrev = new Int32Array(sessionsMax).fill(-1);
    this.awaitNext = new Int32Array(sessionsMax).fill(-1);
  }

  /**
   * The policy's outbounds (at start and on reload): each gets a runtime entry, the same
   * one as before when its settings did not change (its health is kept).
   */
  setPolicy(outbounds: readonly OutboundConfig[]): void {
    for (const r of this.runtimes) if (r !== null) r.current = false;
    this.byPolicy = new Int16Array(outbounds.length);
    outbounds.forEach((o, i) => {
      const identity = JSON.stringify(o, (_key, value) =>
        value instanceof Uint8Array ? Array.from(value) : value,
      );
      let index = this.runtimes.findIndex((r) => r !== null && r.identity === identity);
      if (index < 0) {
        index = this.runtimes.indexOf(null);
        if (index < 0) index = this.runtimes.length;
        this.runtimes[index] = {
          config: o,
          identity,
          refs: 0,
          current: true,
          policyIndex: i,
          forward: o.type === "forward" ? new ForwardTargets(o) : null,
        };
      }
      this.runtimes[index]!.current = true;
      this.runtimes[index]!.policyIndex = i;
      this.byPolicy[i] = index;
    });
    const names = outbounds.map((o) => o.name);
    for (let i = 0; i < this.runtimes.length; i++) {
      this.collect(i);
      const r = this.runtimes[i];
      // An outbound the reload changed or removed, still held by open flows: named by
      // the running policy's outbound of that name, or unknown.
      if (r && !r.current) r.policyIndex = names.indexOf(r.config.name);
      if (r && r.policyIndex < 0) r.policyIndex = UNKNOWN_POLICY_INDEX;
    }
  }

  /** The runtime index of policy outbound `i`. */
  ofPolicy(i: number): number {
    return this.byPolicy[i];
  }

  config(runtime: number): OutboundConfig {
    return this.runtimes[runtime]!.config;
  }

  /** The forward targets of a runtime, or null for another type. */
  forward(runtime: number): ForwardTargets | null {
    return this.runtimes[runtime]!.forward;
  }

  /** Its index in the running policy's outbounds (UNKNOWN_POLICY_INDEX: none). */
  policyIndexOf(runtime: number): number {
    return this.runtimes[runtime]!.policyIndex;
  }

  name(runtime: number): string {
    return this.runtimes[runtime]?.config.name ?? "?";
  }

  acquire(runtime: number): void {
    this.runtimes[runtime]!.refs++;
  }

  /**
   * Session ends: it stops holding `runtime`. A datagram it still awaits an answer for,
   * unanswered past answerTimeoutMs already, is a failure (a short idle timeout ends a
   * DNS flow about when its answer is due).
   */
  release(runtime: number, session: number, now: number): void {
    const awaited = this.awaitRuntime[session];
    if (awaited >= 0) {
      const f = this.runtimes[awaited]!.forward!;
      const t = this.awaitTarget[session];
      const late = this.awaitSinceMs[session] + f.answerTimeoutMs <= now;
      this.answered(session);
      if (late) this.fail(f, t, now);
    }
    const r = this.runtimes[runtime]!;
    assert(r.refs > 0, "outbound released with no sessions");
    r.refs--;
    this.collect(runtime);
  }

  /** A datagram of `session` went to target t of forward runtime `runtime`. */
  sent(session: number, runtime: number, t: number, now: number): void {
    if (this.awaitRuntime[session] >= 0) return; // already waiting: the oldest counts
    const f = this.runtimes[runtime]!.forward!;
    this.awaitRuntime[session] = runtime;
    this.awaitTarget[session] = t;
    this.awaitSinceMs[session] = now;
    this.awaitPrev[session] = f.awaitLast;
    this.awaitNext[session] = -1;
    if (f.awaitLast >= 0) this.awaitNext[f.awaitLast] = session;
    else f.awaitFirst = session;
    f.awaitLast = session;
  }

  /** An answer for `session` came from target t of its forward runtime. */
  answer(session: number, runtime: number, t: number): void {
    this.runtimes[runtime]!.forward!.failures[t] = 0;
    this.answered(session);
  }

  /** Counts the answers that did not come in time (from the timer). */
  expire(now: number): void {
    for (const r of this.runtimes) {
      const f = r?.forward;
      if (!f) continue;
      for (let s = f.awaitFirst; s >= 0; s = f.awaitFirst) {
        if (this.awaitSinceMs[s] + f.answerTimeoutMs > now) break;
        const t = this.awaitTarget[s];
        this.answered(s);
        this.fail(f, t, now);
      }
    }
  }

  /** A datagram to target t went unanswered: failuresMax in a row mark it down. */
  fail(f: ForwardTargets, t: number, now: number): void {
    this.counters.forwardAnswerTimeouts++;
    if (++f.failures[t] >= f.failuresMax) {
      f.failures[t] = 0;
      f.downUntilMs[t] = now + f.retryIntervalMs;
      this.counters.forwardTargetsDown++;
    }
  }

  /** Session stops waiting for an answer (answered, timed out, or ended). */
  private answered(s: number): void {
    const runtime = this.awaitRuntime[s];
    if (runtime < 0) return;
    const f = this.runtimes[runtime]!.forward!;
    const p = this.awaitPrev[s];
    const n = this.awaitNext[s];
    if (p >= 0) this.awaitNext[p] = n;
    else f.awaitFirst = n;
    if (n >= 0) this.awaitPrev[n] = p;
    else f.awaitLast = p;
    this.awaitPrev[s] = -1;
    this.awaitNext[s] = -1;
    this.awaitRuntime[s] = -1;
  }

  /** Frees a runtime no session holds and the running policy no longer names. */
  private collect(runtime: number): void {
    const r = this.runtimes[runtime];
    if (r && !r.current && r.refs === 0) this.runtimes[runtime] = null;
  }
}
