// nftables rules and policy routing that feed the relay (README "Installing the TPROXY
// rules"). Generated from the config so the listeners, marks and ports cannot drift.
//
// The path of an intercepted packet: prerouting (mangle) matches it, `tproxy` assigns
// it to the listener socket and sets the fwmark; `ip rule fwmark M lookup T` with
// `local default dev lo` in table T delivers it locally although its destination
// is not ours. The relay's own upstream packets carry SO_MARK = config.mark; the
// output chain copies that into conntrack, so their replies are never intercepted
// (no loop), whatever the intercept rules match.
//
// Destinations local to the host (`fib daddr type local`: its own addresses, loopback,
// broadcast; plus multicast and anycast) are never intercepted: the gateway's own
// services (its DNS resolver on the LAN address) are reached directly, and the relay,
// which refuses such flows anyway (src/flow/local_targets.ts), never sees them.
//
// Everything that goes into the script comes from the validated config: listener
// names match [A-Za-z0-9_.-], interface names are checked (config/load.ts
// interfaceNameProblem) and double-quoted, numbers are numbers; the nft text goes
// through a quoted heredoc, so nothing in it is expanded by the shell.
import type { Config } from "../config/load.ts";
import {
  type BypassSets,
  bypassSets,
  cgroupPath,
  hasUdpClientSource,
  interceptsForwarded,
  interceptsLocal,
  isUid,
  relayMarks,
} from "./bypass.ts";
import { iptablesScript } from "./iptables.ts";

export const TABLE_NAME = "transparent_relay";

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function portText(low: number, high: number): string {
  return low === high ? `${low}` : `${low}-${high}`;
}

function portSet(ranges: Array<[number, number]>): string {
  const items = ranges.map(([low, high]) => portText(low, high));
  return items.length === 1 ? items[0] : `{ ${items.join(", ")} }`;
}

function elements(indent: string, items: string[]): string[] {
  return [
    `${indent}elements = {`,
    ...items.map((i, k) => `${indent}  ${i}${k < items.length - 1 ? "," : ""}`),
    `${indent}}`,
  ];
}

/** The bypass sets (only those with elements: nft refuses an empty `elements`). */
function bypassSetLines(sets: BypassSets): string[] {
  const lines: string[] = [];
  const set = (name: string, type: string, items: string[]) => {
    if (items.length === 0) return;
    lines.push(`  set ${name} {`);
    lines.push(`    type ${type}; flags interval;`);
    lines.push(...elements("    ", items));
    lines.push(`  }`);
  };
  const texts = (list: Array<{ text: string }>) => list.map((c) => c.text);
  set("bypass_src4", "ipv4_addr", texts(sets.sources4));
  set("bypass_src6", "ipv6_addr", texts(sets.sources6));
  set("bypass_dst4", "ipv4_addr", texts(sets.destinations4));
  set("bypass_dst6", "ipv6_addr", texts(sets.destinations6));
  set(
    "bypass_ports",
    "inet_service",
    sets.portRanges.map(([low, high]) => portText(low, high)),
  );
  return lines;
}

/** Rules consulting the bypass sets: before any tproxy, redirect or marking rule. */
function bypassRuleLines(sets: BypassSets): string[] {
  const lines: string[] = [];
  if (
    sets.sources4.length +
      sets.sources6.length +
      sets.destinations4.length +
      sets.destinations6.length +
      sets.portRanges.length ===
    0
  ) {
    return lines;
  }
  lines.push(`    # firewall.bypass: never intercepted`);
  if (sets.sources4.length) lines.push(`    ip saddr @bypass_src4 counter return`);
  if (sets.sources6.length) lines.push(`    ip6 saddr @bypass_src6 counter return`);
  if (sets.destinations4.length) lines.push(`    ip daddr @bypass_dst4 counter return`);
  if (sets.destinations6.length) lines.push(`    ip6 daddr @bypass_dst6 counter return`);
  if (sets.portRanges.length) {
    lines.push(`    meta l4proto { tcp, udp } th dport @bypass_ports counter return`);
  }
  return lines;
}

/**
 * Local mode: what of this host's own traffic is never diverted. The relay's own sockets
 * (SO_MARK = config.mark on every upstream socket), and the user and cgroup it runs as.
 */
function localExemptLines(config: Config): string[] {
  const lines = [
    `    # the relay's own upstream sockets (SO_MARK): out directly, never back into it`,
    `    meta mark ${markMatch(config)} counter return`,
  ];
  const user = config.firewall.exemptUser;
  if (user !== "") {
    lines.push(`    meta skuid ${isUid(user) ? user : `"${user}"`} counter return`);
  }
  const cgroup = cgroupPath(config);
  if (cgroup) {
    lines.push(`    socket cgroupv2 level ${cgroup.level} "${cgroup.path}" counter return`);
  }
  return lines;
}

/** config.mark, or a set of it and the direct outbounds' own marks (relayMarks). */
function markMatch(config: Config): string {
  const marks = relayMarks(config);
  return marks.length === 1 ? hex(marks[0]) : `{ ${marks.map(hex).join(", ")} }`;
}

const NOT_INTERCEPTED_TYPES = "fib daddr type { local, broadcast, multicast, anycast }";

/** The nft script: replaces the relay's table atomically (one transaction). */
export function nftRuleset(config: Config): string {
  const gateway = interceptsForwarded(config);
  const local = interceptsLocal(config);
  const sets = bypassSets(config);
  const bypassRules = bypassRuleLines(sets);
  const tproxyMark = hex(config.tproxyMark);
  const lines: string[] = [];
  lines.push(`table inet ${TABLE_NAME}`);
  lines.push(`delete table inet ${TABLE_NAME}`);
  lines.push(`table inet ${TABLE_NAME} {`);
  lines.push(...bypassSetLines(sets));
  lines.push(`  chain prerouting {`);
  lines.push(`    type filter hook prerouting priority mangle; policy accept;`);
  const tcp = config.listeners.filter((l) => l.protocol === "tcp");
  if (tcp.some((l) => l.mode === "tproxy" || l.source === "client")) {
    // Before anything else: a TCP packet for a transparent socket that exists here (a
    // client connection the relay accepted, or the server's reply to an upstream
    // connection made from the client's address) is delivered to it locally. Without
    // it, replies to client-source connections would be forwarded to the real client.
    // A bare SYN opens a new connection and is left to the tproxy rule, which retires a
    // TIME_WAIT socket left on the same 4-tuple by an earlier connection (the relay
    // closed first) in favour of the listener (nf_tproxy_handle_time_wait4/6), instead
    // of delivering the SYN to that leftover socket.
    lines.push(`    # packets of established transparent TCP sockets (accepted clients; replies`);
    lines.push(`    # to upstream connections made from the client's address): deliver locally`);
    lines.push(
      `    meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 ` +
        `meta mark set ${tproxyMark} accept`,
    );
  }
  const udpClientSource = hasUdpClientSource(config);
  if (udpClientSource) {
    // The server's reply to a client-source UDP socket (bound to the client's ip:port)
    // is delivered to it. Reply direction only: a client's own datagram (original
    // direction) would otherwise match a reply socket bound to its destination, and
    // skip the bypass and tproxy rules. Wildcard sockets (a listener on 0.0.0.0 or ::)
    // are no reply's destination.
    lines.push(`    # replies to UDP upstream sockets bound to a client address: deliver locally`);
    lines.push(
      `    meta l4proto udp ct direction reply socket transparent 1 socket wildcard 0 ` +
        `meta mark set ${tproxyMark} accept`,
    );
  }
  lines.push(`    # replies to the relay's own upstream sockets: never intercept (no loop)`);
  // A client-source UDP socket sends on the client's own 4-tuple, so its datagrams join
  // the conntrack entry the client's first datagram made and mark it: the client's later
  // datagrams (original direction) must still reach the tproxy rule.
  const replies = udpClientSource ? "ct direction reply " : "";
  lines.push(`    ${replies}ct mark ${markMatch(config)} counter return`);
  lines.push(`    # the host itself (its services answer directly), broadcast, multicast, anycast`);
  lines.push(`    ${NOT_INTERCEPTED_TYPES} counter return`);
  lines.push(...bypassRules);
  const redirects: string[] = [];
  const localRedirects: string[] = [];
  const localMarks: string[] = [];
  const localTproxies: string[] = [];
  for (const rule of config.intercept) {
    const l = rule.listener;
    const family = l.ipv6 ? "ipv6" : "ipv4";
    const what = `meta nfproto ${family} ${l.protocol} dport ${portSet(rule.portRanges)}`;
    const redirect = l.protocol === "tcp" && l.mode === "redirect";
    if (local && redirect) {
      localRedirects.push(`    ${what} counter redirect to :${l.port} comment "${l.name}"`);
    } else if (local) {
      localMarks.push(`    ${what} counter meta mark set ${tproxyMark} comment "${l.name}"`);
    }
    const to = l.ipv6 ? `ip6 to [${l.address}]:${l.port}` : `ip to ${l.address}:${l.port}`;
    const tproxy = `tproxy ${to} meta mark set ${tproxyMark} accept comment "${l.name}"`;
    if (local && !redirect) {
      // Marked in output, rerouted to lo by the policy route: here it meets its listener.
      localTproxies.push(`    iifname "lo" meta mark ${tproxyMark} ${what} counter ${tproxy}`);
    }
    if (!gateway) continue;
    const iif =
      rule.interfaces.length === 0
        ? `iifname != "lo"`
        : `iifname { ${rule.interfaces.map((i) => `"${i}"`).join(", ")} }`;
    if (redirect) {
      // REDIRECT rewrites the destination to the input interface's address; conntrack
      // keeps the original (SO_ORIGINAL_DST). The listener binds 0.0.0.0 / ::.
      redirects.push(`    ${iif} ${what} counter redirect to :${l.port} comment "${l.name}"`);
      continue;
    }
    lines.push(`    ${iif} ${what} counter ${tproxy}`);
  }
  if (localTproxies.length > 0) {
    lines.push(`    # local mode: this host's own packets, marked in output and looped back`);
    lines.push(...localTproxies);
  }
  lines.push(`  }`);
  if (redirects.length > 0) {
    lines.push(`  chain prerouting_nat {`);
    lines.push(`    type nat hook prerouting priority dstnat; policy accept;`);
    lines.push(`    ct mark ${markMatch(config)} counter return`);
    lines.push(`    ${NOT_INTERCEPTED_TYPES} counter return`);
    lines.push(...bypassRules);
    lines.push(...redirects);
    lines.push(`  }`);
  }
  lines.push(`  chain output {`);
  lines.push(`    type route hook output priority mangle; policy accept;`);
  // Only connections the relay opens (original direction); never a client's entry.
  lines.push(
    `    meta mark ${markMatch(config)} ct direction original ct state new ct mark set meta mark`,
  );
  if (localMarks.length > 0) {
    lines.push(...localExemptLines(config));
    // Replies never go back into the relay: those it sends to clients (here or routed
    // through us, whatever their port) and those this host's services send.
    lines.push(`    # replies (the relay's to its clients among them) leave as they are`);
    lines.push(`    ct direction reply counter return`);
    lines.push(`    ${NOT_INTERCEPTED_TYPES} counter return`);
    lines.push(...bypassRules);
    lines.push(`    # local mode: mark this host's own traffic; the policy route sends it to lo`);
    lines.push(...localMarks);
  }
  lines.push(`  }`);
  if (localRedirects.length > 0) {
    lines.push(`  chain output_nat {`);
    lines.push(`    type nat hook output priority -100; policy accept;`);
    lines.push(...localExemptLines(config));
    lines.push(`    ${NOT_INTERCEPTED_TYPES} counter return`);
    lines.push(...bypassRules);
    lines.push(...localRedirects);
    lines.push(`  }`);
  }
  lines.push(`}`);
  return lines.join("\n") + "\n";
}

/**
 * `ip` commands (argv) for policy routing: marked packets are delivered locally. The
 * route is `replace`d (idempotent); the rule carries config.rulePriority, so adding it
 * twice fails with EEXIST instead of duplicating it (rulesScript checks first).
 */
export function policyRoutingCommands(config: Config): string[][] {
  const mark = hex(config.tproxyMark);
  const table = `${config.routeTable}`;
  const priority = `${config.rulePriority}`;
  return [
    ["ip", "-4", "rule", "add", "fwmark", mark, "lookup", table, "priority", priority],
    ["ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", table],
    ["ip", "-6", "rule", "add", "fwmark", mark, "lookup", table, "priority", priority],
    ["ip", "-6", "route", "replace", "local", "::/0", "dev", "lo", "table", table],
  ];
}

/**
 * A shell script a user can read and run (bun run relay --print-rules), for the
 * configured backend. Idempotent: running it twice leaves the same state as once (the
 * nft table, or each family's iptables chains, replaced in one transaction; the routes
 * replaced; each ip rule and iptables jump rule added only when absent).
 */
export function rulesScript(config: Config): string {
  const ip = policyRoutingCommands(config).map((argv) => {
    if (argv[2] !== "rule") return argv.join(" ");
    // `ip rule list SELECTOR` prints the rule if it exists: add it only when not.
    const selector = argv.slice(4).join(" ");
    return `${argv[0]} ${argv[1]} rule list ${selector} | grep -q . || ${argv.join(" ")}`;
  });
  const firewall =
    config.firewall.backend === "iptables"
      ? iptablesScript(config)
      : `nft -f - <<'NFT'\n${nftRuleset(config)}NFT\n`;
  const header = "#!/bin/sh\n# Generated by: bun run relay --print-rules\nset -e\n";
  return `${header}${firewall}${ip.join("\n")}\n`;
}
