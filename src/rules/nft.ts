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

export const TABLE_NAME = "transparent_relay";

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function portSet(ranges: Array<[number, number]>): string {
  const items = ranges.map(([low, high]) => (low === high ? `${low}` : `${low}-${high}`));
  return items.length === 1 ? items[0] : `{ ${items.join(", ")} }`;
}

/** The nft script: replaces the relay's table atomically (one transaction). */
export function nftRuleset(config: Config): string {
  const lines: string[] = [];
  lines.push(`table inet ${TABLE_NAME}`);
  lines.push(`delete table inet ${TABLE_NAME}`);
  lines.push(`table inet ${TABLE_NAME} {`);
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
        `meta mark set ${hex(config.tproxyMark)} accept`,
    );
  }
  lines.push(`    # replies to the relay's own upstream sockets: never intercept (no loop)`);
  lines.push(`    ct mark ${hex(config.mark)} return`);
  lines.push(`    # the host itself (its services answer directly), broadcast, multicast, anycast`);
  lines.push(`    fib daddr type { local, broadcast, multicast, anycast } return`);
  const redirects: string[] = [];
  for (const rule of config.intercept) {
    const l = rule.listener;
    const iif =
      rule.interfaces.length === 0
        ? `iifname != "lo"`
        : `iifname { ${rule.interfaces.map((i) => `"${i}"`).join(", ")} }`;
    const family = l.ipv6 ? "ipv6" : "ipv4";
    const match = `${iif} meta nfproto ${family} ${l.protocol} dport ${portSet(rule.portRanges)}`;
    if (l.protocol === "tcp" && l.mode === "redirect") {
      // REDIRECT rewrites the destination to the input interface's address; conntrack
      // keeps the original (SO_ORIGINAL_DST). The listener binds 0.0.0.0 / ::.
      redirects.push(`    ${match} redirect to :${l.port} comment "${l.name}"`);
      continue;
    }
    const to = l.ipv6 ? `ip6 to [${l.address}]:${l.port}` : `ip to ${l.address}:${l.port}`;
    lines.push(
      `    ${match} tproxy ${to} meta mark set ${hex(config.tproxyMark)} accept ` +
        `comment "${l.name}"`,
    );
  }
  lines.push(`  }`);
  if (redirects.length > 0) {
    lines.push(`  chain prerouting_nat {`);
    lines.push(`    type nat hook prerouting priority dstnat; policy accept;`);
    lines.push(`    ct mark ${hex(config.mark)} return`);
    lines.push(`    fib daddr type { local, broadcast, multicast, anycast } return`);
    lines.push(...redirects);
    lines.push(`  }`);
  }
  lines.push(`  chain output {`);
  lines.push(`    type route hook output priority mangle; policy accept;`);
  // Only connections the relay opens (original direction); never a client's entry.
  lines.push(
    `    meta mark ${hex(config.mark)} ct direction original ct state new ct mark set meta mark`,
  );
  lines.push(`  }`);
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
 * A shell script a user can read and run (bun run relay --print-rules). Idempotent:
 * running it twice leaves the same state as once (the nft table is replaced in one
 * transaction, the routes replaced, each rule added only when absent).
 */
export function rulesScript(config: Config): string {
  const ip = policyRoutingCommands(config).map((argv) => {
    if (argv[2] !== "rule") return argv.join(" ");
    // `ip rule list SELECTOR` prints the rule if it exists: add it only when not.
    const selector = argv.slice(4).join(" ");
    return `${argv[0]} ${argv[1]} rule list ${selector} | grep -q . || ${argv.join(" ")}`;
  });
  return (
    `#!/bin/sh\n# Generated by: bun run relay --print-rules\nset -e\n` +
    `nft -f - <<'NFT'\n${nftRuleset(config)}NFT\n${ip.join("\n")}\n`
  );
}
