// Rules generation: the text for each backend and mode, the bypass sets and exemptions,
// the firewall section's validation, and (as root) that nft and iptables-restore accept
// what is generated in a scratch namespace.
import { describe, expect, test } from "bun:test";
import { ConfigError, parseConfig } from "../../src/config/load.ts";
import { iptablesJumps, iptablesRestoreInput } from "../../src/rules/iptables.ts";
import { nftRuleset, policyRoutingCommands, rulesScript, TABLE_NAME } from "../../src/rules/nft.ts";
import {
  iptablesApplyInScratchNamespace,
  labUnavailableReason,
  nftApplyInScratchNamespace,
} from "../lab/netns.ts";
import { skipped } from "../lab/skip_policy.ts";

const BASE = {
  listeners: [
    { name: "dns4", address: "127.0.0.1", port: 53 },
    { name: "any6", address: "::1", port: 12345 },
  ],
  intercept: [
    { listener: "dns4", ports: [53], interfaces: ["lan0", "lan1"] },
    { listener: "any6", ports: [443, "1000-2000"] },
  ],
};
const config = parseConfig(BASE);

/** BASE with a firewall section. */
function withFirewall(firewall: object) {
  return parseConfig({ ...BASE, firewall });
}

const trimmed = (text: string) => text.split("\n").map((l) => l.trim());

/** The problems parseConfig reports for `raw` (none: []). */
function problems(raw: object): string[] {
  try {
    parseConfig(raw);
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems;
  }
}

describe("nft rules", () => {
  test("one tproxy rule per intercept, the loop exemption first", () => {
    const text = nftRuleset(config);
    const lines = trimmed(text);
    const exempt = lines.indexOf("ct mark 0x1ee7 counter return");
    const tproxy4 = lines.findIndex((l) => l.includes("tproxy ip to 127.0.0.1:53"));
    expect(exempt).toBeGreaterThan(0);
    expect(tproxy4).toBeGreaterThan(exempt);
    expect(lines[tproxy4]).toBe(
      'iifname { "lan0", "lan1" } meta nfproto ipv4 udp dport 53 counter ' +
        'tproxy ip to 127.0.0.1:53 meta mark set 0x1 accept comment "dns4"',
    );
    expect(text).toContain(
      'iifname != "lo" meta nfproto ipv6 udp dport { 443, 1000-2000 } counter ' +
        "tproxy ip6 to [::1]:12345 meta mark set 0x1 accept",
    );
    expect(text).toContain(
      "meta mark 0x1ee7 ct direction original ct state new ct mark set meta mark",
    );
    expect(policyRoutingCommands(config)[1]).toEqual([
      "ip",
      "-4",
      "route",
      "replace",
      "local",
      "0.0.0.0/0",
      "dev",
      "lo",
      "table",
      "100",
    ]);
    expect(rulesScript(config)).toStartWith("#!/bin/sh\n");
  });

  test("gateway mode (the default): no sets, no local rules, the output chain only tags", () => {
    const lines = trimmed(nftRuleset(config));
    expect(lines.filter((l) => l.startsWith("set "))).toEqual([]);
    expect(lines.some((l) => l.includes('iifname "lo"'))).toBe(false);
    const output = lines.indexOf("chain output {");
    expect(lines.slice(output + 1, output + 4)).toEqual([
      "type route hook output priority mangle; policy accept;",
      "meta mark 0x1ee7 ct direction original ct state new ct mark set meta mark",
      "}",
    ]);
  });

  test("local mode: output marks the intercepted ports after the exemptions; lo tproxies", () => {
    const local = withFirewall({ mode: "local", exemptUser: "relay", exemptCgroup: "/a.slice/r" });
    const lines = trimmed(nftRuleset(local));
    // No gateway rule: only this host's traffic, looped back through lo.
    expect(lines.some((l) => l.startsWith("iifname {") || l.startsWith('iifname != "lo"'))).toBe(
      false,
    );
    expect(lines).toContain(
      'iifname "lo" meta mark 0x1 meta nfproto ipv4 udp dport 53 counter ' +
        'tproxy ip to 127.0.0.1:53 meta mark set 0x1 accept comment "dns4"',
    );
    const output = lines.indexOf("chain output {");
    const body = lines.slice(output + 1, lines.indexOf("}", output));
    expect(body.filter((l) => !l.startsWith("#"))).toEqual([
      "type route hook output priority mangle; policy accept;",
      "meta mark 0x1ee7 ct direction original ct state new ct mark set meta mark",
      "meta mark 0x1ee7 counter return",
      'meta skuid "relay" counter return',
      'socket cgroupv2 level 2 "a.slice/r" counter return',
      "ct direction reply counter return",
      "fib daddr type { local, broadcast, multicast, anycast } counter return",
      'meta nfproto ipv4 udp dport 53 counter meta mark set 0x1 comment "dns4"',
      'meta nfproto ipv6 udp dport { 443, 1000-2000 } counter meta mark set 0x1 comment "any6"',
    ]);
    // A numeric uid goes in bare.
    expect(nftRuleset(withFirewall({ mode: "local", exemptUser: "999" }))).toContain(
      "meta skuid 999 counter return",
    );
  });

  test("both: the gateway rules, then the lo rules", () => {
    const lines = trimmed(nftRuleset(withFirewall({ mode: "both" })));
    const gateway = lines.findIndex((l) => l.startsWith('iifname { "lan0"'));
    const lo = lines.findIndex((l) => l.startsWith('iifname "lo"'));
    expect(gateway).toBeGreaterThan(0);
    expect(lo).toBeGreaterThan(gateway);
    expect(lines.filter((l) => l.includes("meta mark set 0x1 comment"))).toHaveLength(2);
  });

  test("bypass: interval sets (nested prefixes dropped), consulted before any tproxy rule", () => {
    const text = nftRuleset(
      withFirewall({
        mode: "both",
        bypass: {
          destinations: ["10.1.0.0/16", "10.0.0.0/8", "2001:db8::/32", "192.0.2.1"],
          sources: ["198.18.0.7/32", "2001:2:0:1::/64"],
          ports: [22, "8000-8100", "8050-8200"],
        },
      }),
    );
    expect(text).toContain(
      "  set bypass_dst4 {\n    type ipv4_addr; flags interval;\n" +
        "    elements = {\n      10.0.0.0/8,\n      192.0.2.1/32\n    }\n  }\n",
    );
    expect(text).toContain("set bypass_dst6 {\n    type ipv6_addr; flags interval;");
    expect(text).toContain("      2001:db8::/32\n");
    expect(text).toContain("      198.18.0.7/32\n");
    expect(text).toContain("      2001:2:0:1::/64\n");
    expect(text).toContain("      22,\n      8000-8200\n");
    const lines = trimmed(text);
    for (const chain of ["chain prerouting {", "chain output {"]) {
      const start = lines.indexOf(chain);
      const end = lines.indexOf("}", start);
      const body = lines.slice(start, end);
      const bypass = body.indexOf("ip daddr @bypass_dst4 counter return");
      const intercept = body.findIndex((l) => /tproxy|meta mark set 0x1 comment/.test(l));
      expect(bypass).toBeGreaterThan(0);
      expect(intercept).toBeGreaterThan(bypass);
      expect(body).toContain("ip6 daddr @bypass_dst6 counter return");
      expect(body).toContain("ip saddr @bypass_src4 counter return");
      expect(body).toContain("ip6 saddr @bypass_src6 counter return");
      expect(body).toContain("meta l4proto { tcp, udp } th dport @bypass_ports counter return");
    }
  });

  test("reservedRanges adds the special-purpose ranges; the lab's ranges only then", () => {
    expect(nftRuleset(config)).not.toContain("198.18.0.0/15");
    const text = nftRuleset(
      withFirewall({ bypass: { reservedRanges: true, destinations: ["10.9.0.0/16"] } }),
    );
    for (const cidr of ["10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16"]) {
      expect(text).toContain(`      ${cidr}`);
    }
    for (const cidr of ["172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4"]) {
      expect(text).toContain(`      ${cidr}`);
    }
    for (const cidr of ["::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "198.18.0.0/15"]) {
      expect(text).toContain(`      ${cidr}`);
    }
    expect(text).not.toContain("10.9.0.0/16"); // inside 10.0.0.0/8
  });

  test("redirect listeners in local mode: a nat output chain with the exemptions", () => {
    const text = nftRuleset(
      parseConfig({
        listeners: [
          { name: "web", protocol: "tcp", mode: "redirect", address: "0.0.0.0", port: 8081 },
        ],
        intercept: [{ listener: "web", ports: [80] }],
        firewall: { mode: "local", exemptUser: "relay" },
      }),
    );
    const lines = trimmed(text);
    const nat = lines.indexOf("chain output_nat {");
    expect(lines.slice(nat + 1, lines.indexOf("}", nat)).filter((l) => !l.startsWith("#"))).toEqual(
      [
        "type nat hook output priority -100; policy accept;",
        "meta mark 0x1ee7 counter return",
        'meta skuid "relay" counter return',
        "fib daddr type { local, broadcast, multicast, anycast } counter return",
        'meta nfproto ipv4 tcp dport 80 counter redirect to :8081 comment "web"',
      ],
    );
    // Not marked for the TPROXY path as well.
    expect(text).not.toContain("meta mark set 0x1 comment");
    expect(lines).not.toContain("chain prerouting_nat {");
  });

  const reason = labUnavailableReason();
  test("nft accepts the generated ruleset (applied in a scratch namespace)", () => {
    if (skipped(reason, "nft check in a scratch namespace")) return;
    const listed = nftApplyInScratchNamespace(nftRuleset(config), TABLE_NAME);
    expect(listed.match(/tproxy/g)?.length).toBe(2);
    // Every mode with bypass sets and a user exemption (a cgroup path must exist for nft).
    const full = withFirewall({
      mode: "both",
      exemptUser: "nobody",
      bypass: {
        reservedRanges: true,
        destinations: ["203.0.113.0/24", "2001:db8::/32"],
        sources: ["192.0.2.0/24", "fd00::/8"],
        ports: [22, "8000-8100"],
      },
    });
    const listedFull = nftApplyInScratchNamespace(nftRuleset(full), TABLE_NAME);
    expect(listedFull.match(/tproxy/g)?.length).toBe(4);
    expect(listedFull).toContain("set bypass_dst4");
  });
});

describe("iptables rules", () => {
  test("gateway: our chains, the loop exemption first, one TPROXY rule per interface", () => {
    const input = iptablesRestoreInput(config, 4);
    const lines = input.split("\n");
    expect(lines.slice(0, 4)).toEqual([
      "*mangle",
      ":TRELAY_PRE - [0:0]",
      ":TRELAY_OUT - [0:0]",
      ":TRELAY_DIVERT - [0:0]",
    ]);
    const exempt = lines.indexOf("-A TRELAY_PRE -m connmark --mark 0x1ee7 -j RETURN");
    const tproxy = lines.findIndex((l) => l.includes("-j TPROXY"));
    expect(exempt).toBeGreaterThan(0);
    expect(tproxy).toBeGreaterThan(exempt);
    expect(lines.filter((l) => l.includes("-j TPROXY"))).toEqual([
      "-A TRELAY_PRE -i lan0 -p udp -m multiport --dports 53 -m comment --comment dns4 " +
        "-j TPROXY --on-port 53 --on-ip 127.0.0.1 --tproxy-mark 0x1/0xffffffff",
      "-A TRELAY_PRE -i lan1 -p udp -m multiport --dports 53 -m comment --comment dns4 " +
        "-j TPROXY --on-port 53 --on-ip 127.0.0.1 --tproxy-mark 0x1/0xffffffff",
    ]);
    expect(lines).toContain(
      "-A TRELAY_OUT -m mark --mark 0x1ee7 -m conntrack --ctstate NEW --ctdir ORIGINAL " +
        "-j CONNMARK --set-xmark 0x1ee7/0xffffffff",
    );
    expect(lines).toContain("-A TRELAY_PRE -m addrtype --dst-type BROADCAST -j RETURN");
    expect(input).toEndWith("COMMIT\n");
    expect(input).not.toContain("*nat");
    const input6 = iptablesRestoreInput(config, 6);
    expect(input6).toContain(
      "-A TRELAY_PRE ! -i lo -p udp -m multiport --dports 443,1000:2000 -m comment " +
        "--comment any6 -j TPROXY --on-port 12345 --on-ip ::1 --tproxy-mark 0x1/0xffffffff",
    );
    // IPv6 has no broadcast (ip6tables refuses the type).
    expect(input6).not.toContain("BROADCAST");
    expect(iptablesJumps(config, 4)).toEqual([
      {
        table: "mangle",
        chain: "PREROUTING",
        spec: ["-m", "comment", "--comment", "transparent-relay", "-j", "TRELAY_PRE"],
      },
      {
        table: "mangle",
        chain: "OUTPUT",
        spec: ["-m", "comment", "--comment", "transparent-relay", "-j", "TRELAY_OUT"],
      },
    ]);
  });

  test("local mode: OUTPUT marks after the exemptions; lo TPROXY; the script checks jumps", () => {
    const local = withFirewall({
      backend: "iptables",
      mode: "local",
      exemptUser: "relay",
      exemptCgroup: "system.slice/relay.service",
    });
    const lines = iptablesRestoreInput(local, 4).split("\n");
    expect(lines.filter((l) => l.startsWith("-A TRELAY_OUT"))).toEqual([
      "-A TRELAY_OUT -m mark --mark 0x1ee7 -m conntrack --ctstate NEW --ctdir ORIGINAL " +
        "-j CONNMARK --set-xmark 0x1ee7/0xffffffff",
      "-A TRELAY_OUT -m mark --mark 0x1ee7 -j RETURN",
      "-A TRELAY_OUT -m owner --uid-owner relay -j RETURN",
      "-A TRELAY_OUT -m cgroup --path system.slice/relay.service -j RETURN",
      "-A TRELAY_OUT -m conntrack --ctdir REPLY -j RETURN",
      "-A TRELAY_OUT -m addrtype --dst-type LOCAL -j RETURN",
      "-A TRELAY_OUT -m addrtype --dst-type BROADCAST -j RETURN",
      "-A TRELAY_OUT -m addrtype --dst-type MULTICAST -j RETURN",
      "-A TRELAY_OUT -m addrtype --dst-type ANYCAST -j RETURN",
      "-A TRELAY_OUT -p udp -m multiport --dports 53 -m comment --comment dns4 " +
        "-j MARK --set-xmark 0x1/0xffffffff",
    ]);
    expect(lines.filter((l) => l.includes("-j TPROXY"))).toEqual([
      "-A TRELAY_PRE -i lo -p udp -m mark --mark 0x1 -m multiport --dports 53 -m comment " +
        "--comment dns4 -j TPROXY --on-port 53 --on-ip 127.0.0.1 --tproxy-mark 0x1/0xffffffff",
    ]);
    const script = rulesScript(local);
    expect(script).toContain("iptables-restore --noflush <<'IPTABLES'\n*mangle\n");
    expect(script).toContain(
      "iptables -t mangle -C PREROUTING -m comment --comment transparent-relay " +
        "-j TRELAY_PRE 2>/dev/null ||\n  iptables -t mangle -I PREROUTING 1 -m comment " +
        "--comment transparent-relay -j TRELAY_PRE\n",
    );
    expect(script).toContain("ip6tables-restore --noflush <<'IPTABLES'\n");
    expect(script).not.toContain("nft -f");
    expect(script).toContain("ip -4 route replace local 0.0.0.0/0 dev lo table 100\n");
  });

  test("bypass: one rule per prefix, multiport lists of at most 15 ports", () => {
    const ports = Array.from({ length: 20 }, (_, i) => 2000 + i * 2);
    const c = withFirewall({
      backend: "iptables",
      bypass: { destinations: ["10.0.0.0/8", "10.1.0.0/16", "fc00::/7"], ports },
    });
    const lines = iptablesRestoreInput(c, 4).split("\n");
    expect(lines.filter((l) => l.includes(" -d "))).toEqual([
      "-A TRELAY_PRE -d 10.0.0.0/8 -j RETURN",
    ]);
    const multiport = lines.filter((l) => l.startsWith("-A TRELAY_PRE -p tcp -m multiport"));
    expect(multiport).toHaveLength(2);
    expect(multiport[0].split("--dports ")[1].split(" ")[0].split(",")).toHaveLength(15);
    expect(iptablesRestoreInput(c, 6)).toContain("-A TRELAY_PRE -d fc00::/7 -j RETURN");
  });

  test("redirect listeners: nat chains and their jumps", () => {
    const c = parseConfig({
      listeners: [
        { name: "web", protocol: "tcp", mode: "redirect", address: "0.0.0.0", port: 8081 },
      ],
      intercept: [{ listener: "web", ports: [80] }],
      firewall: { backend: "iptables", mode: "both" },
    });
    const input = iptablesRestoreInput(c, 4);
    expect(input).toContain(
      "*nat\n:TRELAY_NAT_PRE - [0:0]\n:TRELAY_NAT_OUT - [0:0]\n" +
        "-A TRELAY_NAT_PRE -m connmark --mark 0x1ee7 -j RETURN\n",
    );
    expect(input).toContain(
      "-A TRELAY_NAT_PRE ! -i lo -p tcp -m multiport --dports 80 -m comment --comment web " +
        "-j REDIRECT --to-ports 8081\n",
    );
    expect(input).toContain(
      "-A TRELAY_NAT_OUT -p tcp -m multiport --dports 80 -m comment --comment web " +
        "-j REDIRECT --to-ports 8081\n",
    );
    expect(iptablesJumps(c, 4).map((j) => `${j.table} ${j.chain}`)).toEqual([
      "mangle PREROUTING",
      "mangle OUTPUT",
      "nat PREROUTING",
      "nat OUTPUT",
    ]);
    expect(iptablesRestoreInput(c, 6)).not.toContain("*nat");
  });

  test("deterministic: the same config gives the same text", () => {
    const raw = { ...BASE, firewall: { backend: "iptables", mode: "both" } };
    expect(iptablesRestoreInput(parseConfig(raw), 4)).toBe(
      iptablesRestoreInput(parseConfig(raw), 4),
    );
    expect(rulesScript(parseConfig(raw))).toBe(rulesScript(parseConfig(raw)));
  });

  const reason = labUnavailableReason();
  test("iptables-restore accepts the generated input (twice, in a scratch namespace)", () => {
    if (skipped(reason, "iptables check in a scratch namespace")) return;
    const c = parseConfig({
      listeners: [
        ...BASE.listeners,
        { name: "web4", protocol: "tcp", address: "127.0.0.1", port: 8080 },
        { name: "red4", protocol: "tcp", mode: "redirect", address: "0.0.0.0", port: 8081 },
      ],
      intercept: [
        ...BASE.intercept,
        { listener: "web4", ports: [443] },
        { listener: "red4", ports: [80] },
      ],
      firewall: {
        backend: "iptables",
        mode: "both",
        exemptUser: "nobody",
        bypass: { reservedRanges: true, sources: ["192.0.2.0/24"], ports: [22] },
      },
    });
    const saved = iptablesApplyInScratchNamespace(
      iptablesRestoreInput(c, 4),
      iptablesRestoreInput(c, 6),
    );
    // Applied twice, each rule is there once (the chains were flushed and refilled).
    expect(saved.match(/-j TPROXY/g)).toHaveLength(7); // 5 IPv4 (2 interfaces), 2 IPv6
    expect(saved.match(/-j REDIRECT/g)).toHaveLength(2);
    expect(saved).toContain("-A TRELAY_OUT -m owner --uid-owner 65534 -j RETURN");
  });
});

describe("firewall validation", () => {
  test("each bad value names its field and why", () => {
    const firewall = (f: object) => problems({ firewall: f });
    expect(
      firewall({
        bypass: {
          destinations: ["10.0.0.0/8", "10.0.0.1/8", "1.2.3.4/33", "fc00::1/7", "host", "::/129"],
        },
      }),
    ).toEqual([
      'config.firewall.bypass.destinations[1]: "10.0.0.1/8" has host bits set (10.0.0.0/8?)',
      'config.firewall.bypass.destinations[2]: "1.2.3.4/33" prefix length must be 0-32',
      'config.firewall.bypass.destinations[3]: "fc00::1/7" has host bits set (fc00::/7?)',
      'config.firewall.bypass.destinations[4]: "host" not an IPv4 address or prefix',
      'config.firewall.bypass.destinations[5]: "::/129" prefix length must be 0-128',
    ]);
    expect(firewall({ bypass: { sources: ["198.18.0.1/15", "1.2.3.4/-1"] } })).toEqual([
      'config.firewall.bypass.sources[0]: "198.18.0.1/15" has host bits set (198.18.0.0/15?)',
      'config.firewall.bypass.sources[1]: "1.2.3.4/-1" prefix length must be 0-32',
    ]);
    expect(firewall({ bypass: { ports: [22, "90-80", "1-70000"] } })).toEqual([
      'config.firewall.bypass.ports[1]: range must be within 1-65535, low <= high (got "90-80")',
      "config.firewall.bypass.ports[2]: range must be within 1-65535, low <= high " +
        '(got "1-70000")',
    ]);
    expect(firewall({ bypass: { ports: [0] } })[0]).toStartWith("config.firewall.bypass.ports[0]:");
    for (const user of ["Relay", "re lay", 'x"y', "a;b", "-x", "99999999999", "4294967295"]) {
      expect(firewall({ exemptUser: user })[0]).toStartWith("config.firewall.exemptUser: ");
    }
    for (const path of ["/", "a//b", "a/../b", "./a", 'a"b', "a b", "a/$(x)", "a\\b"]) {
      expect(firewall({ exemptCgroup: path })[0]).toStartWith("config.firewall.exemptCgroup: ");
    }
    expect(firewall({ backend: "pf" })[0]).toStartWith("config.firewall.backend:");
    expect(firewall({ mode: "router" })[0]).toStartWith("config.firewall.mode:");
  });

  test("good values pass, in canonical form", () => {
    const c = parseConfig({
      firewall: {
        exemptUser: "_relay-1",
        exemptCgroup: "/system.slice/relay@1.service",
        bypass: {
          destinations: ["2001:DB8:0:0::/32", "192.0.2.1", "::/0", "0.0.0.0/0"],
          sources: ["fe80::1"],
          ports: [53, "1-65535"],
        },
      },
    });
    expect(c.bypass.destinations.map((d) => d.text)).toEqual([
      "2001:db8::/32",
      "192.0.2.1/32",
      "::/0",
      "0.0.0.0/0",
    ]);
    expect(c.bypass.sources.map((d) => d.text)).toEqual(["fe80::1/128"]);
    expect(c.bypass.portRanges).toEqual([
      [53, 53],
      [1, 65535],
    ]);
    expect(problems({ firewall: { exemptUser: "4294967294" } })).toEqual([]);
    expect(nftRuleset(c)).not.toContain("skuid"); // gateway mode: no output exemptions
  });
});

describe("direct outbounds with their own mark", () => {
  // A direct outbound's mark other than config.mark is the relay's own traffic too:
  // exempted like config.mark in both backends, or its replies would loop back in.
  const marked = parseConfig({
    ...BASE,
    firewall: { mode: "both" },
    outbounds: [
      { name: "via-wan2", type: "direct", mark: 0x2222 },
      { name: "same", type: "direct", mark: 0x1ee7 },
    ],
  });

  test("nft: every mark in one set where config.mark alone was", () => {
    const lines = trimmed(nftRuleset(marked));
    expect(lines).toContain("ct mark { 0x1ee7, 0x2222 } counter return");
    expect(lines).toContain("meta mark { 0x1ee7, 0x2222 } counter return");
    expect(lines).toContain(
      "meta mark { 0x1ee7, 0x2222 } ct direction original ct state new ct mark set meta mark",
    );
    // Without such an outbound, the text is as before.
    expect(trimmed(nftRuleset(config))).toContain("ct mark 0x1ee7 counter return");
  });

  test("iptables: one return (and one CONNMARK) per mark", () => {
    const text = iptablesRestoreInput(
      parseConfig({
        ...BASE,
        firewall: { backend: "iptables", mode: "both" },
        outbounds: [{ name: "via-wan2", type: "direct", mark: 0x2222 }],
      }),
      4,
    );
    for (const m of ["0x1ee7", "0x2222"]) {
      expect(text).toContain(`-A TRELAY_PRE -m connmark --mark ${m} -j RETURN`);
      expect(text).toContain(`-A TRELAY_OUT -m mark --mark ${m} -j RETURN`);
      expect(text).toContain(
        `-A TRELAY_OUT -m mark --mark ${m} -m conntrack --ctstate NEW --ctdir ORIGINAL ` +
          `-j CONNMARK --set-xmark ${m}/0xffffffff`,
      );
    }
  });

  const reason = labUnavailableReason();
  test("nft accepts the mark sets (applied in a scratch namespace)", () => {
    if (skipped(reason, "nft check in a scratch namespace")) return;
    const listed = nftApplyInScratchNamespace(nftRuleset(marked), TABLE_NAME);
    expect(listed).toContain("0x00002222");
  });
});
