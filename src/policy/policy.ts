// The compiled policy: which rule a new flow matches (first match wins), asked once per
// flow by the data path, never per packet. Conditions are checked cheapest first
// (protocol, listener, port bitmap, address intervals, then names); the address parts
// read the caller's words in place and allocate nothing.
//
// A rule that looks at names cannot be decided while the flow's name is still being
// sniffed (a QUIC ClientHello may span several Initials): when every earlier rule has
// failed and such a rule's other conditions hold, decide() answers NEED_NAME, and the
// data path holds the flow's first packets until the name is known (or sniffing gives
// up: then the flow is asked again with namePending false and name null, and rules on
// names simply do not match).
import type { Config } from "../config/load.ts";
import { assert } from "../sys/assert.ts";
import { AddressSet } from "./address_set.ts";
import type { PolicyConfig, RuleConfig } from "./config.ts";
import { type NameSet, normalizeName } from "./domain_list.ts";

/** decide(): the flow's name is needed to decide; ask again once it is known. */
export const NEED_NAME = -1;

export const FLOW_UDP = 0;
export const FLOW_TCP = 1;

/**
 * The facts about a new flow the policy decides on. The caller keeps one and refills it
 * per flow; the addresses stay in the caller's words (the 16-byte form as 4 native-endian
 * words per address, as the session key holds them: src/flow/table.ts). The UDP path can
 * point words at SessionTable.key as is: client at 0, target at 4, port = key[8] & 0xffff.
 */
export class PolicyFlow {
  /** FLOW_UDP or FLOW_TCP. */
  protocol = FLOW_UDP;
  /** Index of the listener the flow arrived on (config.listeners order). */
  listener = 0;
  /** Words holding both addresses. */
  words: Uint32Array = new Uint32Array(8);
  /** Where the client (source) address starts in words. */
  sourceAt = 0;
  /** Where the original destination address starts in words. */
  destinationAt = 4;
  /** Original destination port. */
  port = 0;
  /** The sniffed name (DNS qname, TLS or QUIC SNI), or null. */
  name: string | null = null;
  /** Sniffing has not finished: a null name may still become known. */
  namePending = false;
}

interface CompiledRule {
  /** -1 any, else FLOW_UDP / FLOW_TCP. */
  protocol: number;
  /** Per listener index: 1 if the rule applies; null: any listener. */
  listeners: Uint8Array | null;
  /** One bit per port; null: any port. */
  ports: Uint32Array | null;
  sources: AddressSet | null;
  destinations: AddressSet | null;
  names: NameSet[] | null;
}

export class Policy {
  /** Per rule index, the last one the default (rules.length): an outbound or ACTION_*. */
  readonly actions: Int32Array;
  /** Per rule index: its name, "default" for the last. */
  readonly ruleNames: string[];
  /** Whether any rule looks at names (if none, a flow never needs its name held). */
  readonly usesNames: boolean;
  private readonly rules: CompiledRule[];

  constructor(config: PolicyConfig, listenerCount: number) {
    this.rules = config.rules.map((r) => compileRule(r, listenerCount));
    this.actions = Int32Array.from([...config.rules.map((r) => r.action), config.defaultAction]);
    this.ruleNames = [...config.rules.map((r) => r.name), "default"];
    this.usesNames = config.rules.some((r) => r.names !== null);
  }

  /** Index of the default rule (no rule matched). */
  get defaultRule(): number {
    return this.rules.length;
  }

  /**
   * The index of the first rule the flow matches (this.actions[index] says what to do),
   * or NEED_NAME while a rule that could match depends on a name not known yet.
   */
  decide(flow: PolicyFlow): number {
    const rules = this.rules;
    let name: string | null = null;
    let normalized = false;
    for (let i = 0; i < rules.length; i++) {
      const r = rules[i];
      if (r.protocol >= 0 && r.protocol !== flow.protocol) continue;
      if (r.listeners !== null && r.listeners[flow.listener] !== 1) continue;
      if (r.ports !== null && (r.ports[flow.port >>> 5] & (1 << (flow.port & 31))) === 0) {
        continue;
      }
      if (r.sources !== null && !r.sources.has(flow.words, flow.sourceAt)) continue;
      if (r.destinations !== null && !r.destinations.has(flow.words, flow.destinationAt)) {
        continue;
      }
      if (r.names === null) return i;
      if (!normalized) {
        normalized = true;
        if (flow.name !== null) name = normalizeName(flow.name);
      }
      if (name === null) {
        if (flow.namePending) return NEED_NAME;
        continue;
      }
      if (namesMatch(r.names, name)) return i;
    }
    return rules.length;
  }
}

function compileRule(r: RuleConfig, listenerCount: number): CompiledRule {
  let listeners: Uint8Array | null = null;
  if (r.listeners !== null) {
    listeners = new Uint8Array(listenerCount);
    for (const index of r.listeners) {
      assert(index >= 0 && index < listenerCount, "rule listener index out of range");
      listeners[index] = 1;
    }
  }
  let ports: Uint32Array | null = null;
  if (r.portRanges !== null) {
    ports = new Uint32Array(65536 / 32);
    for (const [low, high] of r.portRanges) {
      for (let p = low; p <= high; p++) ports[p >>> 5] |= 1 << (p & 31);
    }
  }
  return {
    protocol: r.protocol === null ? -1 : r.protocol === "udp" ? FLOW_UDP : FLOW_TCP,
    listeners,
    ports,
    sources: r.sources === null ? null : new AddressSet(r.sources),
    destinations: r.destinations === null ? null : new AddressSet(r.destinations),
    names: r.names,
  };
}

/**
 * Whether a normalized name is in one of the sets: exactly, or as a suffix at a label
 * boundary ("a.example.com" is under "example.com"; "badexample.com" is not).
 */
function namesMatch(sets: NameSet[], name: string): boolean {
  for (let s = 0; s < sets.length; s++) {
    const set = sets[s];
    if (set.exact.has(name)) return true;
    const suffix = set.suffix;
    if (suffix.size === 0) continue;
    if (suffix.has(name)) return true;
    for (let dot = name.indexOf("."); dot >= 0; dot = name.indexOf(".", dot + 1)) {
      if (suffix.has(name.slice(dot + 1))) return true;
    }
  }
  return false;
}

/** The configuration's policy, compiled for the data path. */
export function compilePolicy(config: Config): Policy {
  return new Policy(config.policy, config.listeners.length);
}
