// `relay sessions`: the UDP sessions and TCP connections a query selects, as text tables
// or as JSON lines (--json: one object per session, `transport` "udp" or "tcp").
// `up` is client -> original destination, `down` the replies.
import { duration, type Row, table } from "./format.ts";

type View = Record<string, any>;

const UDP_HEADER = [
  "client",
  "target",
  "listener",
  "reply",
  "proto",
  "name",
  "rule",
  "outbound",
  "age",
  "idle",
  "up pkts",
  "up bytes",
  "down pkts",
  "down bytes",
];

/** One table row of a UDP session view. */
function udpRow(s: View): Row {
  return [
    s.client,
    s.target,
    s.listener,
    s.reply,
    s.protocol,
    s.name ?? "-",
    s.rule ?? "-",
    s.outbound ?? "-",
    duration(s.ageMs),
    duration(s.idleMs),
    s.packetsToTarget,
    s.bytesToTarget,
    s.packetsToClient,
    s.bytesToClient,
  ];
}

export function sessionsText(reply: View): string[] {
  const udp: View[] = reply.udp ?? [];
  const lines = [`UDP sessions: ${udp.length} of ${reply.udpMatched} matching, by ${reply.sort}`];
  lines.push(...(udp.length > 0 ? table(UDP_HEADER, udp.map(udpRow)) : ["  (none)"]));
  lines.push("");
  if (reply.tcp === null) {
    lines.push("TCP connections: no TCP listeners");
    return lines;
  }
  const tcp: View[] = reply.tcp;
  // The splice engine reports bytes when a connection ends: nothing live to sort by.
  lines.push(`TCP connections: ${tcp.length} of ${reply.tcpMatched} matching, oldest first`);
  const rows = tcp.map((c) => [
    c.client,
    c.target,
    c.listener,
    c.name ?? "-",
    // null while its ClientHello is read for a name rule: not decided yet.
    c.rule ?? "-",
    c.outbound ?? "-",
    duration(c.ageMs),
  ]);
  const header = ["client", "target", "listener", "name", "rule", "outbound", "age"];
  lines.push(...(rows.length > 0 ? table(header, rows) : []));
  if (rows.length === 0) lines.push("  (none)");
  return lines;
}

export function sessionsJsonLines(reply: View): string[] {
  const udp: View[] = reply.udp ?? [];
  const tcp: View[] = reply.tcp ?? [];
  return [
    ...udp.map((s) => JSON.stringify({ transport: "udp", ...s })),
    ...tcp.map((c) => JSON.stringify({ transport: "tcp", ...c })),
  ];
}
