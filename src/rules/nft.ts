// nftables rules and policy routing that feed the relay (README "Installing the TPROXY
// rules"). Generated from the config so the listeners, marks and ports cannot drift.
//
// The path of an intercepted packet: prerouting (mangle) matches it, `tproxy` assigns
// it to the listener socket and sets the fwmark; `ip rule fwmark M lookup T` with
// `local default dev lo` in table T delivers it locally although its destination
// is not ours. The relay's own upstream packets carry SO_MARK = config.mark; the
// output chain copies that into conntrack, so their replies are never intercepted
// (no loop), whatever the intercept rules match.
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

/** `ip` commands (argv) for policy routing: marked packets are delivered locally. */
export function policyRoutingCommands(config: Config): string[][] {
  const mark = hex(config.tproxyMark);
  const table = `${config.routeTable}`;
  return [
    ["ip", "-4", "rule", "add", "fwmark", mark, "lookup", table],
    ["ip", "-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", table],
    ["ip", "-6", "rule", "add", "fwmark", mark, "lookup", table],
    ["ip", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", table],
  ];
}

/** A shell script a user can read and run (bun run relay --print-rules). */
export function rulesScript(config: Config): string {
  const ip = policyRoutingCommands(config)
    .map((argv) => argv.join(" "))
    .join("\n");
  return (
    `#!/bin/sh\n# Generated by: bun run relay --print-rules\nset -e\n` +
    `nft -f - <<'NFT'\n${nftRuleset(config)}NFT\n${ip}\n`
  );
}
