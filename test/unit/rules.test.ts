// Rules generation: the text, and (as root) that nft accepts it in a scratch namespace.
import { describe, expect, test } from "bun:test";
import { parseConfig } from "../../src/config/load.ts";
import { labUnavailableReason, nftApplyInScratchNamespace } from "../lab/netns.ts";
import { skipped } from "../lab/skip_policy.ts";
import { nftRuleset, policyRoutingCommands, rulesScript, TABLE_NAME } from "../../src/rules/nft.ts";

const config = parseConfig({
  listeners: [
    { name: "dns4", address: "127.0.0.1", port: 53 },
    { name: "any6", address: "::1", port: 12345 },
  ],
  intercept: [
    { listener: "dns4", ports: [53], interfaces: ["lan0", "lan1"] },
    { listener: "any6", ports: [443, "1000-2000"] },
  ],
});

describe("nft rules", () => {
  test("one tproxy rule per intercept, the loop exemption first", () => {
    const text = nftRuleset(config);
    const lines = text.split("\n").map((l) => l.trim());
    const exempt = lines.indexOf("ct mark 0x1ee7 return");
    const tproxy4 = lines.findIndex((l) => l.includes("tproxy ip to 127.0.0.1:53"));
    expect(exempt).toBeGreaterThan(0);
    expect(tproxy4).toBeGreaterThan(exempt);
    expect(lines[tproxy4]).toBe(
      'iifname { "lan0", "lan1" } meta nfproto ipv4 udp dport 53 ' +
        'tproxy ip to 127.0.0.1:53 meta mark set 0x1 accept comment "dns4"',
    );
    expect(text).toContain(
      'iifname != "lo" meta nfproto ipv6 udp dport { 443, 1000-2000 } ' +
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

  const reason = labUnavailableReason();
  test("nft accepts the generated ruleset (applied in a scratch namespace)", () => {
    if (skipped(reason, "nft check in a scratch namespace")) return;
    const listed = nftApplyInScratchNamespace(nftRuleset(config), TABLE_NAME);
    expect(listed.match(/tproxy/g)?.length).toBe(2);
  });
});
