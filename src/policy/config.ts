// The policy part of the configuration (outbounds, rules, defaultAction), checked and
// resolved after the schema check: addresses parsed, names of outbounds and listeners
// turned into indexes, domain list files read. Errors name the field and why; a rule that
// can never be decided by name gets a warning instead (the config still works).
import { formatAddress, isV4Mapped, parseAddress } from "../sys/addr.ts";
import type { ConfigInput } from "../config/schema.ts";
import {
  type ListenerConfig,
  interfaceNameProblem,
  parsePortRange,
  quote,
} from "../config/load.ts";
import { type Cidr, parseCidr } from "../config/cidr.ts";
import { type NameSet, loadDomainList, nameProblem, normalizeName } from "./domain_list.ts";

/** Rule actions besides an outbound index (>= 0). */
export const ACTION_DROP = -1;
export const ACTION_REJECT = -2;
/**
 * A dnsAnswer outbound k is action ACTION_DNS_ANSWER - k (PolicyConfig.answers[k]); far
 * below the other negative values (OUTBOUND_PENDING is -3).
 */
export const ACTION_DNS_ANSWER = -16;

/** A dnsAnswer outbound, resolved: the rcode's number, addresses in 16 bytes. */
export interface DnsAnswerConfig {
  name: string;
  rcode: number;
  addr4: Uint8Array | null;
  addr6: Uint8Array | null;
  ttlS: number;
}

const RCODES = { NOERROR: 0, NXDOMAIN: 3, REFUSED: 5 } as const;

export interface Endpoint {
  /** Canonical text ("198.18.0.53", "2001:2::53"). */
  address: string;
  /** 16-byte form. */
  addr: Uint8Array;
  port: number;
}

export type OutboundConfig =
  | {
      name: string;
      type: "direct";
      bindAddr4: Uint8Array | null;
      bindAddr6: Uint8Array | null;
      interface: string | null;
      mark: number | null;
    }
  | {
      name: string;
      type: "forward";
      targets: Endpoint[];
      healthCheck: { answerTimeoutMs: number; failuresMax: number; retryIntervalMs: number };
    }
  | {
      name: string;
      type: "socks5";
      server: Endpoint;
      username: string | null;
      password: string | null;
      udp: boolean;
      associationsMax: number;
      connectTimeoutMs: number;
    };

export interface RuleConfig {
  name: string;
  protocol: "udp" | "tcp" | null;
  /** Listener indexes; null: any. */
  listeners: number[] | null;
  sources: Cidr[] | null;
  destinations: Cidr[] | null;
  portRanges: Array<[number, number]> | null;
  /** Name sets (inline first, then list files); null: the rule does not look at names. */
  names: NameSet[] | null;
  /** An outbound index, ACTION_DROP or ACTION_REJECT. */
  action: number;
}

export interface PolicyConfig {
  outbounds: OutboundConfig[];
  /** dnsAnswer outbounds: rule actions ACTION_DNS_ANSWER - k (DNS queries, UDP and TCP). */
  answers: DnsAnswerConfig[];
  rules: RuleConfig[];
  defaultAction: number;
}

/** Parses "IP:PORT" or "[IPv6]:PORT" (an address literal: no name lookups at start). */
export function parseEndpoint(text: string): Endpoint | null {
  const colon = text.lastIndexOf(":");
  if (colon < 0) return null;
  let host = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  else if (host.includes(":")) return null; // an IPv6 address needs its brackets
  if (!/^[0-9]{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  const addr = parseAddress(host);
  if (!addr || port < 1 || port > 65535) return null;
  if (!text.startsWith("[") && !isV4Mapped(addr)) return null;
  return { address: formatAddress(addr), addr, port };
}

function resolveAnswer(
  o: Extract<ConfigInput["outbounds"][number], { type: "dnsAnswer" }>,
  field: string,
  problems: string[],
): DnsAnswerConfig {
  const address = (key: "address4" | "address6", v4: boolean): Uint8Array | null => {
    const text = o[key];
    if (text === undefined) return null;
    if (o.rcode !== "NOERROR") {
      problems.push(`${field}.${key}: an address needs rcode "NOERROR" (got ${quote(o.rcode)})`);
    }
    const addr = parseAddress(text);
    if (!addr || isV4Mapped(addr) !== v4) {
      problems.push(`${field}.${key}: not an IPv${v4 ? 4 : 6} address (got ${quote(text)})`);
      return null;
    }
    return addr;
  };
  return {
    name: o.name,
    rcode: RCODES[o.rcode],
    addr4: address("address4", true),
    addr6: address("address6", false),
    ttlS: o.ttlS,
  };
}

function resolveOutbound(
  o: Exclude<ConfigInput["outbounds"][number], { type: "dnsAnswer" }>,
  field: string,
  problems: string[],
): OutboundConfig {
  if (o.type === "direct") {
    let bindAddr4: Uint8Array | null = null;
    let bindAddr6: Uint8Array | null = null;
    if (o.bindAddress4 !== undefined) {
      bindAddr4 = parseAddress(o.bindAddress4);
      if (!bindAddr4 || !isV4Mapped(bindAddr4)) {
        problems.push(`${field}.bindAddress4: not an IPv4 address (got ${quote(o.bindAddress4)})`);
      }
    }
    if (o.bindAddress6 !== undefined) {
      bindAddr6 = parseAddress(o.bindAddress6);
      if (!bindAddr6 || isV4Mapped(bindAddr6)) {
        problems.push(`${field}.bindAddress6: not an IPv6 address (got ${quote(o.bindAddress6)})`);
      }
    }
    if (o.interface !== undefined) {
      const problem = interfaceNameProblem(o.interface);
      if (problem) problems.push(`${field}.interface: ${problem} (got ${quote(o.interface)})`);
    }
    return {
      name: o.name,
      type: "direct",
      bindAddr4,
      bindAddr6,
      interface: o.interface ?? null,
      mark: o.mark ?? null,
    };
  }
  if (o.type === "forward") {
    const targets: Endpoint[] = [];
    const seen = new Set<string>();
    o.targets.forEach((t, k) => {
      const endpoint = parseEndpoint(t);
      if (!endpoint) {
        problems.push(`${field}.targets[${k}]: not "IPv4:PORT" or "[IPv6]:PORT" (got ${quote(t)})`);
        return;
      }
      const key = `${endpoint.address}|${endpoint.port}`;
      if (seen.has(key)) problems.push(`${field}.targets[${k}]: duplicate target ${quote(t)}`);
      seen.add(key);
      targets.push(endpoint);
    });
    return { name: o.name, type: "forward", targets, healthCheck: o.healthCheck };
  }
  const server = parseEndpoint(o.server);
  if (!server) {
    problems.push(
      `${field}.server: not "IPv4:PORT" or "[IPv6]:PORT" (an address, not a host name; ` +
        `got ${quote(o.server)})`,
    );
  }
  if ((o.username === undefined) !== (o.password === undefined)) {
    problems.push(`${field}: username and password go together (RFC 1929): give both or neither`);
  }
  // RFC 1929 counts octets: 255 characters of UTF-8 may be more.
  for (const key of ["username", "password"] as const) {
    const value = o[key];
    if (value !== undefined && Buffer.byteLength(value) > 255) {
      problems.push(`${field}.${key}: longer than 255 bytes in UTF-8 (RFC 1929)`);
    }
  }
  return {
    name: o.name,
    type: "socks5",
    server: server ?? { address: "", addr: new Uint8Array(16), port: 0 },
    username: o.username ?? null,
    password: o.password ?? null,
    udp: o.udp,
    associationsMax: o.associationsMax,
    connectTimeoutMs: o.connectTimeoutMs,
  };
}

function resolveAction(
  action: string,
  outbounds: OutboundConfig[],
  answers: DnsAnswerConfig[],
  field: string,
  problems: string[],
): number {
  if (action === "drop") return ACTION_DROP;
  if (action === "reject") return ACTION_REJECT;
  const answer = answers.findIndex((o) => o.name === action);
  if (answer >= 0) return ACTION_DNS_ANSWER - answer;
  const index = outbounds.findIndex((o) => o.name === action);
  if (index < 0) {
    const known = [
      "drop",
      "reject",
      ...outbounds.map((o) => o.name),
      ...answers.map((o) => o.name),
    ].join(", ");
    problems.push(`${field}: no outbound named ${quote(action)} (known: ${known})`);
  }
  return index;
}

function cidrs(texts: string[], field: string, problems: string[]): Cidr[] {
  const out: Cidr[] = [];
  let bad = 0;
  texts.forEach((text, k) => {
    const parsed = parseCidr(text);
    if (!("problem" in parsed)) out.push(parsed);
    // A country list with a broken tail should not bury the other errors.
    else if (bad++ < 5) problems.push(`${field}[${k}]: ${parsed.problem} (got ${quote(text)})`);
  });
  return out;
}

/** Ports the UDP path sniffs a name on (DNS, QUIC): a UDP rule on other ports never gets one. */
function sniffedUdpPorts(c: ConfigInput): Set<number> {
  return new Set([...c.udp.dnsPorts, ...c.udp.quicPorts]);
}

export function resolvePolicy(
  c: ConfigInput,
  listeners: readonly ListenerConfig[],
  problems: string[],
  warnings: string[],
): PolicyConfig {
  const outbounds: OutboundConfig[] = [];
  const answers: DnsAnswerConfig[] = [];
  const names = new Map<string, number>();
  c.outbounds.forEach((o, i) => {
    const field = `config.outbounds[${i}]`;
    if (o.name === "drop" || o.name === "reject") {
      problems.push(`${field}.name: "${o.name}" is an action, not an outbound name`);
    }
    const other = names.get(o.name);
    if (other !== undefined) {
      problems.push(`${field}.name: duplicate outbound name "${o.name}" (outbounds[${other}])`);
    }
    names.set(o.name, i);
    if (o.type === "dnsAnswer") answers.push(resolveAnswer(o, field, problems));
    else outbounds.push(resolveOutbound(o, field, problems));
  });
  if (!names.has("direct")) {
    outbounds.push({
      name: "direct",
      type: "direct",
      bindAddr4: null,
      bindAddr6: null,
      interface: null,
      mark: null,
    });
  }

  const lists = new Map<string, NameSet>(); // one load per file, shared by its rules
  const sniffed = sniffedUdpPorts(c);
  const rules: RuleConfig[] = [];
  c.rules.forEach((r, i) => {
    const field = `config.rules[${i}]`;
    let listenerIndexes: number[] | null = null;
    if (r.listener !== undefined) {
      listenerIndexes = [];
      const wanted = typeof r.listener === "string" ? [r.listener] : r.listener;
      for (const name of wanted) {
        const index = listeners.findIndex((l) => l.name === name);
        if (index < 0) problems.push(`${field}.listener: no listener named ${quote(name)}`);
        else listenerIndexes.push(index);
      }
      if (
        r.protocol !== undefined &&
        listenerIndexes.length > 0 &&
        listenerIndexes.every((k) => listeners[k].protocol !== r.protocol)
      ) {
        warnings.push(
          `${field}: never matches: protocol "${r.protocol}" but its listeners are ` +
            `not ${r.protocol}`,
        );
      }
    }
    let portRanges: Array<[number, number]> | null = null;
    if (r.ports !== undefined) {
      portRanges = [];
      r.ports.forEach((p, k) => {
        const range = parsePortRange(p);
        if (range) portRanges?.push(range);
        else {
          problems.push(
            `${field}.ports[${k}]: range must be within 1-65535, low <= high (got ${quote(p)})`,
          );
        }
      });
    }
    let nameSets: NameSet[] | null = null;
    if (r.names !== undefined) {
      nameSets = [];
      const inline: NameSet = { origin: `${field}.names`, exact: new Set(), suffix: new Set() };
      for (const key of ["exact", "suffix"] as const) {
        let bad = 0;
        (r.names[key] ?? []).forEach((name, k) => {
          const problem = nameProblem(name);
          if (problem === null) inline[key].add(normalizeName(name));
          else if (bad++ < 5) {
            problems.push(`${field}.names.${key}[${k}]: ${problem} (got ${quote(name)})`);
          }
        });
      }
      if (inline.exact.size + inline.suffix.size > 0) nameSets.push(inline);
      for (const path of r.names.lists ?? []) {
        let set = lists.get(path);
        if (!set) {
          const loaded = loadDomainList(path);
          for (const p of loaded.problems) problems.push(`${field}.names.lists: ${p}`);
          set = loaded.set;
          if (loaded.problems.length === 0 && set.exact.size + set.suffix.size === 0) {
            warnings.push(`${field}.names.lists: ${path} holds no names`);
          }
          lists.set(path, set);
        }
        nameSets.push(set);
      }
      if (nameSets.length === 0 && (r.names.lists ?? []).length === 0) {
        problems.push(`${field}.names: no name to match (give exact, suffix or lists)`);
      }
      const udpOnly =
        r.protocol === "udp" ||
        (listenerIndexes !== null &&
          listenerIndexes.length > 0 &&
          listenerIndexes.every((k) => listeners[k].protocol === "udp"));
      const reachable = portRanges?.some(([low, high]) => {
        for (const port of sniffed) if (port >= low && port <= high) return true;
        return false;
      });
      if (udpOnly && portRanges !== null && !reachable) {
        warnings.push(
          `${field}: matches on names, but no UDP name is sniffed on its ports (DNS on ` +
            `udp.dnsPorts, QUIC on udp.quicPorts): it can never match`,
        );
      }
    }
    rules.push({
      name: r.name ?? `rules[${i}]`,
      protocol: r.protocol ?? null,
      listeners: listenerIndexes,
      sources: r.sources === undefined ? null : cidrs(r.sources, `${field}.sources`, problems),
      destinations:
        r.destinations === undefined
          ? null
          : cidrs(r.destinations, `${field}.destinations`, problems),
      portRanges,
      names: nameSets,
      action: resolveAction(r.action, outbounds, answers, `${field}.action`, problems),
    });
  });
  const defaultAction = resolveAction(
    c.defaultAction,
    outbounds,
    answers,
    "config.defaultAction",
    problems,
  );
  if (defaultAction <= ACTION_DNS_ANSWER) {
    problems.push(
      `config.defaultAction: ${quote(c.defaultAction)} is a dnsAnswer outbound (it ` +
        `answers DNS queries only): only a rule can use it`,
    );
  }
  return { outbounds, answers, rules, defaultAction };
}

/** Whether a rule (or the default) can reject a UDP flow: an ICMP message, a raw socket. */
export function rejectsUdp(p: PolicyConfig): boolean {
  return (
    p.defaultAction === ACTION_REJECT ||
    p.rules.some((r) => r.action === ACTION_REJECT && r.protocol !== "tcp")
  );
}
