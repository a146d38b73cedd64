// The process's effective capabilities (/proc/self/status CapEff), and which ones a
// configuration needs besides CAP_NET_ADMIN: read by the relay at start (a clear message
// instead of a socket failing half way), by `relay doctor`, and by `relay service print`
// (the unit grants exactly these).
import type { Config } from "../config/load.ts";
import { rejectsUdp } from "../policy/config.ts";

/** Capability numbers (linux/capability.h). */
export const CAP = { netBindService: 10n, netAdmin: 12n, netRaw: 13n } as const;

/** Binding a port below it needs CAP_NET_BIND_SERVICE (net.ipv4.ip_unprivileged_port_start). */
const PRIVILEGED_PORT_END = 1024;

/** The CapEff mask of a /proc/PID/status text, or null when it has none. */
export function effectiveCapabilities(status: string): bigint | null {
  const line = status.split("\n").find((l) => l.startsWith("CapEff:"));
  const hex = line?.slice(7).trim() ?? "";
  return /^[0-9a-f]+$/i.test(hex) ? BigInt(`0x${hex}`) : null;
}

export function hasCapability(mask: bigint, cap: bigint): boolean {
  return ((mask >> cap) & 1n) === 1n;
}

/**
 * Why the relay binds a port below 1024, or null. A UDP flow's replies leave from a socket
 * bound to the original destination (reply socket), so intercepting DNS (53) or QUIC (443)
 * binds those ports: CAP_NET_ADMIN (IP_TRANSPARENT) lets it bind a foreign address, not a
 * port below 1024 (test/netns/nonroot.test.ts shows both).
 */
export function privilegedPortReason(config: Config): string | null {
  const low = (port: number) => port > 0 && port < PRIVILEGED_PORT_END;
  const listener = config.listeners.find((l) => low(l.port));
  if (listener) return `listener ${listener.name} on port ${listener.port}`;
  if (low(config.metrics.port)) return `metrics.port ${config.metrics.port}`;
  for (const rule of config.intercept) {
    if (rule.listener.protocol !== "udp") continue;
    const range = rule.portRanges.find(([first]) => low(first));
    if (range) return `UDP intercept of port ${range[0]}, whose replies leave from that port`;
  }
  return null;
}

/** Why the relay needs a raw socket (CAP_NET_RAW), or null. */
export function rawSocketReason(config: Config): string | null {
  return rejectsUdp(config.policy)
    ? "a rule rejects UDP: the ICMP port unreachable leaves on a raw socket"
    : null;
}
