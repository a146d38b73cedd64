// What the rules never intercept, per family, for both backends: firewall.bypass from the
// config, plus the reserved ranges when firewall.bypass.reservedRanges is on.
import { type Cidr, disjointCidrs, parseCidr } from "../config/cidr.ts";
import type { Config } from "../config/load.ts";

/**
 * Special-purpose destinations (IANA IPv4/IPv6 special-purpose address registries) that a
 * transparent proxy has no business relaying: this network, private (RFC 1918), shared
 * CGNAT (RFC 6598), loopback, link-local, documentation, benchmarking (RFC 2544/5180),
 * multicast and the reserved class E; unspecified, loopback, v4-mapped, NAT64 local use,
 * discard, ULA (RFC 4193), link-local and multicast for IPv6. Off by default: a gateway may
 * well proxy towards private servers.
 */
const RESERVED_RANGES = [
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.0.0.0/24",
  "192.0.2.0/24",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "198.51.100.0/24",
  "203.0.113.0/24",
  "224.0.0.0/4",
  "240.0.0.0/4",
  "::/128",
  "::1/128",
  "::ffff:0.0.0.0/96",
  "64:ff9b:1::/48",
  "100::/64",
  "2001:2::/48",
  "2001:db8::/32",
  "3fff::/20",
  "fc00::/7",
  "fe80::/10",
  "ff00::/8",
];

export interface BypassSets {
  destinations4: Cidr[];
  destinations6: Cidr[];
  sources4: Cidr[];
  sources6: Cidr[];
  portRanges: Array<[number, number]>;
}

function reserved(): Cidr[] {
  return RESERVED_RANGES.map((text) => {
    const cidr = parseCidr(text);
    if ("problem" in cidr) throw new Error("bypass: a reserved range does not parse");
    return cidr;
  });
}

/** The bypass prefixes by family, disjoint and sorted (deterministic output). */
export function bypassSets(config: Config): BypassSets {
  const destinations = [...config.bypass.destinations];
  if (config.firewall.bypass.reservedRanges) destinations.push(...reserved());
  const family = (list: Cidr[], ipv6: boolean) =>
    disjointCidrs(list.filter((c) => c.ipv6 === ipv6));
  const ports = [...config.bypass.portRanges].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  // Overlapping port ranges merged: nft refuses overlapping intervals in a set.
  const portRanges: Array<[number, number]> = [];
  for (const [low, high] of ports) {
    const last = portRanges[portRanges.length - 1];
    if (last && low <= last[1] + 1) last[1] = Math.max(last[1], high);
    else portRanges.push([low, high]);
  }
  return {
    destinations4: family(destinations, false),
    destinations6: family(destinations, true),
    sources4: family(config.bypass.sources, false),
    sources6: family(config.bypass.sources, true),
    portRanges,
  };
}

/** A user name or uid for a rule: nft takes a quoted name (a "-" would read as a range). */
export function isUid(user: string): boolean {
  return /^[0-9]+$/.test(user);
}

/** firewall.exemptCgroup without its leading "/", and its depth (nft's `level`). */
export function cgroupPath(config: Config): { path: string; level: number } | null {
  const path = config.firewall.exemptCgroup.replace(/^\//, "");
  if (path === "") return null;
  return { path, level: path.split("/").length };
}

/** The firewall's modes: traffic routed through the host, the host's own, or both. */
export function interceptsForwarded(config: Config): boolean {
  return config.firewall.mode !== "local";
}

export function interceptsLocal(config: Config): boolean {
  return config.firewall.mode !== "gateway";
}

/** Whether a UDP listener sends upstream from the client's own address and port. */
export function hasUdpClientSource(config: Config): boolean {
  return config.listeners.some((l) => l.protocol === "udp" && l.source === "client");
}

/**
 * The marks of the relay's own upstream sockets: config.mark, and the distinct `mark` of
 * each direct outbound (0 sets none). Each is exempted like config.mark (never diverted
 * back into the relay; its replies never intercepted); config.mark first.
 */
export function relayMarks(config: Config): number[] {
  const marks = [config.mark];
  for (const o of config.policy.outbounds) {
    if (o.type === "direct" && o.mark !== null && o.mark !== 0 && !marks.includes(o.mark)) {
      marks.push(o.mark);
    }
  }
  return marks;
}
