// `relay stats`: the counters and gauges of a running relay, as text (every counter,
// grouped) or as one JSON line (--json: the reply as is).
import { drops, duration, pairs, table } from "./format.ts";

type Counters = Record<string, number>;

/** Lines are cut to this width when the output is no terminal. */
const COLUMNS_DEFAULT = 100;

const UDP_TRAFFIC: Array<[string, string, string]> = [
  ["from clients", "packetsFromClients", "bytesFromClients"],
  ["to targets", "packetsToTargets", "bytesToTargets"],
  ["from targets", "packetsFromTargets", "bytesFromTargets"],
  ["to clients", "packetsToClients", "bytesToClients"],
];
const UDP_SESSIONS = ["sessionsActive", "sessionsMax", "sessionsCreated", "sessionsExpired"];
const TCP_CONNECTIONS = ["connectionsActive", "connectionsMax", "accepted", "closed"];

export function statsText(reply: Record<string, any>, columns = COLUMNS_DEFAULT): string[] {
  const udp: Counters = reply.udp ?? {};
  const tcp: Counters | null = reply.tcp ?? null;
  const lines = [`relay up ${duration(reply.uptimeMs ?? 0)}`];
  const config = reply.config;
  if (config) {
    const r = config.reloads ?? {};
    lines.push(
      `config generation ${config.generation}, reloads: ${r.applied ?? 0} applied, ` +
        `${r.refused ?? 0} refused, ${r.invalid ?? 0} invalid`,
    );
  }
  lines.push("");
  const shown = new Set<string>();
  const rows = UDP_TRAFFIC.map(([label, packets, bytes]) => {
    shown.add(packets).add(bytes);
    return [label, udp[packets] ?? 0, udp[bytes] ?? 0];
  });
  lines.push(...table(["UDP", "packets", "bytes"], rows));
  lines.push(...pairs(take(udp, UDP_SESSIONS, shown), columns, "  "));
  if (udp.ioBackendUring !== undefined) {
    // udp.ioBackend as it runs (auto may have fallen back to epoll).
    shown.add("ioBackendUring").add("ioBackendEpoll");
    lines.push(`  io backend ${udp.ioBackendUring === 1 ? "io_uring" : "epoll"}`);
  }
  lines.push(...dropLines(drops(udp, null), shown, "  "));
  lines.push(...pairs(rest(udp, shown), columns, "  "));
  lines.push("");
  if (tcp === null) {
    lines.push("TCP  no TCP listeners");
    return lines;
  }
  const tcpShown = new Set<string>();
  lines.push(
    ...table(
      ["TCP", "bytes"],
      [
        ["to targets", tcp.bytesToTargets ?? 0],
        ["to clients", tcp.bytesToClients ?? 0],
      ],
    ),
  );
  tcpShown.add("bytesToTargets").add("bytesToClients");
  lines.push(...pairs(take(tcp, TCP_CONNECTIONS, tcpShown), columns, "  "));
  lines.push(...dropLines(drops(null, tcp), tcpShown, "  "));
  lines.push(...pairs(rest(tcp, tcpShown), columns, "  "));
  return lines;
}

/** "drops: none", or each non-zero one; every drop counter is marked shown. */
function dropLines(list: Array<[string, number]>, shown: Set<string>, indent: string): string[] {
  for (const [name] of list) shown.add(name.slice(4));
  const nonZero = list.filter(([, value]) => value !== 0);
  if (nonZero.length === 0) return [`${indent}drops: none`];
  return [`${indent}drops:`, ...nonZero.map(([name, value]) => `${indent}  ${name} ${value}`)];
}

function take(counters: Counters, names: string[], shown: Set<string>): Array<[string, number]> {
  for (const name of names) shown.add(name);
  return names.map((name) => [name, counters[name] ?? 0]);
}

/** Every counter not shown yet, in the relay's order. */
function rest(counters: Counters, shown: Set<string>): Array<[string, number]> {
  return Object.entries(counters).filter(
    (entry): entry is [string, number] => !shown.has(entry[0]) && typeof entry[1] === "number",
  );
}
