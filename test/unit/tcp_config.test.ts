// TCP configuration and rules: defaults, field-named errors, the generated nft text,
// and (as root) that nft accepts it in a scratch namespace.
import { describe, expect, test } from "bun:test";
import { parseConfig } from "../../src/config/load.ts";
import { problems } from "./config_problems.ts";
import { labUnavailableReason, nftApplyInScratchNamespace } from "../lab/netns.ts";
import { skipped } from "../lab/skip_policy.ts";
import { nftRuleset, TABLE_NAME } from "../../src/rules/nft.ts";

const config = parseConfig({
  listeners: [
    { name: "dns4", address: "127.0.0.1", port: 53 },
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
    { name: "tcp6", protocol: "tcp", address: "::1", port: 12346, source: "client" },
    { name: "nat4", protocol: "tcp", address: "0.0.0.0", port: 12347, mode: "redirect" },
  ],
  intercept: [
    { listener: "dns4", ports: [53] },
    { listener: "tcp4", ports: [53, 443, "8000-8999"], interfaces: ["lan0"] },
    { listener: "tcp6", ports: [443] },
    { listener: "nat4", ports: [80] },
  ],
});

describe("TCP config", () => {
  test("defaults: tproxy, relay source, tcp section", () => {
    const c = parseConfig({ listeners: [{ name: "t", protocol: "tcp", address: "::1", port: 1 }] });
    expect(c.listeners[0]).toMatchObject({
      protocol: "tcp",
      mode: "tproxy",
      source: "relay",
      ipv6: true,
    });
    expect(c.tcp).toEqual({
      connectTimeoutMs: 5000,
      idleTimeoutMs: 300_000,
      connectionsMax: 4096,
      bufferBytesMax: 262_144,
      spliceMode: "auto",
      dataPlane: "worker",
      shutdownGraceMs: 5000,
      listenBacklog: 1024,
      sniffPorts: [443],
      sniffTimeoutMs: 1000,
      sniffBytesMax: 16_384,
      dnsPorts: [53],
      dnsConnectionsMax: 1024,
      dnsIdleTimeoutMs: 10_000,
    });
    // UDP listeners keep their defaults (and the built-in config has no TCP listener).
    expect(parseConfig({}).listeners.every((l) => l.protocol === "udp")).toBe(true);
  });

  test("each bad value names its field and the reason", () => {
    expect(problems({ tcp: { connectionsMax: 0 } })).toEqual([
      "config.tcp.connectionsMax: Expected integer to be greater or equal to 1 (got 0)",
    ]);
    expect(problems({ tcp: { bufferBytesMax: 100_000 } })).toEqual([
      "config.tcp.bufferBytesMax: must be a power of two, as pipe sizes are (got 100000)",
    ]);
    expect(problems({ tcp: { dnsConnectionsMax: 0, dnsIdleTimeoutMs: 50 } })).toEqual([
      "config.tcp.dnsConnectionsMax: Expected integer to be greater or equal to 1 (got 0)",
      "config.tcp.dnsIdleTimeoutMs: Expected integer to be greater or equal to 100 (got 50)",
    ]);
    expect(problems({ tcp: { dnsPorts: [0] } })[0]).toStartWith("config.tcp.dnsPorts[0]:");
    expect(problems({ tcp: { spliceMode: "never" } })).toEqual([
      'config.tcp.spliceMode: Expected union value (got "never")',
    ]);
    expect(problems({ tcp: { idleTimeout: 5 } })).toEqual([
      "config.tcp.idleTimeout: Unexpected property (got 5)",
    ]);
    expect(
      problems({ listeners: [{ name: "u", address: "::1", port: 1, mode: "redirect" }] }),
    ).toEqual([
      'config.listeners[0].mode: "redirect" is for TCP listeners only (REDIRECT loses a UDP ' +
        "datagram's original destination)",
    ]);
    expect(
      problems({ listeners: [{ name: "t", protocol: "sctp", address: "::1", port: 1 }] })[0],
    ).toStartWith("config.listeners[0].protocol:");
  });

  test("UDP and TCP may share an address and port; two TCP listeners may not", () => {
    const both = parseConfig({
      listeners: [
        { name: "u", address: "127.0.0.1", port: 53 },
        { name: "t", protocol: "tcp", address: "127.0.0.1", port: 53 },
      ],
    });
    expect(both.listeners.map((l) => l.protocol)).toEqual(["udp", "tcp"]);
    expect(
      problems({
        listeners: [
          { name: "a", protocol: "tcp", address: "127.0.0.1", port: 53 },
          { name: "b", protocol: "tcp", address: "127.0.0.1", port: 53 },
        ],
      }),
    ).toEqual(["config.listeners[1]: binds tcp 127.0.0.1 port 53, as config.listeners[0] does"]);
  });
});

describe("TCP rules", () => {
  test("socket-transparent delivery first, then the loop exemption, tproxy and redirect rules", () => {
    const lines = nftRuleset(config)
      .split("\n")
      .map((l) => l.trim());
    const socket = lines.indexOf(
      "meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 " +
        "meta mark set 0x1 accept",
    );
    const exempt = lines.indexOf("ct mark 0x1ee7 counter return");
    const tcp4 = lines.findIndex((l) => l.includes("tproxy ip to 127.0.0.1:12346"));
    expect(socket).toBeGreaterThan(0);
    expect(exempt).toBeGreaterThan(socket);
    expect(tcp4).toBeGreaterThan(exempt);
    expect(lines[tcp4]).toBe(
      'iifname { "lan0" } meta nfproto ipv4 tcp dport { 53, 443, 8000-8999 } counter ' +
        'tproxy ip to 127.0.0.1:12346 meta mark set 0x1 accept comment "tcp4"',
    );
    expect(lines).toContain(
      'iifname != "lo" meta nfproto ipv6 tcp dport 443 counter tproxy ip6 to [::1]:12346 ' +
        'meta mark set 0x1 accept comment "tcp6"',
    );
    expect(lines).toContain(
      'iifname != "lo" meta nfproto ipv4 udp dport 53 counter tproxy ip to 127.0.0.1:53 ' +
        'meta mark set 0x1 accept comment "dns4"',
    );
    const nat = lines.indexOf("chain prerouting_nat {");
    expect(nat).toBeGreaterThan(tcp4);
    expect(lines[nat + 1]).toBe("type nat hook prerouting priority dstnat; policy accept;");
    // The loop exemption and the local-destination skip come first here too.
    expect(lines[nat + 2]).toBe("ct mark 0x1ee7 counter return");
    expect(lines[nat + 3]).toBe(
      "fib daddr type { local, broadcast, multicast, anycast } counter return",
    );
    expect(lines[nat + 4]).toBe(
      'iifname != "lo" meta nfproto ipv4 tcp dport 80 counter redirect to :12347 comment "nat4"',
    );
  });

  test("a UDP-only config has no TCP rules", () => {
    const text = nftRuleset(parseConfig({}));
    expect(text).not.toContain("socket transparent");
    expect(text).not.toContain("prerouting_nat");
  });

  const reason = labUnavailableReason();
  test("nft accepts the TCP ruleset (applied twice in a scratch namespace)", () => {
    if (skipped(reason, "nft check in a scratch namespace")) return;
    const listed = nftApplyInScratchNamespace(nftRuleset(config), TABLE_NAME);
    expect(listed.match(/tproxy/g)?.length).toBe(3);
    expect(listed).toContain("socket transparent 1");
    expect(listed).toContain("redirect to :12347");
  });
});
