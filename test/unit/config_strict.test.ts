// Config (issue 8): every wrong type is an error naming the field, addresses compare in
// canonical form, interface names are what Linux accepts and a script can carry, and an
// error quotes at most a short prefix of a bad value.
import { describe, expect, test } from "bun:test";
import { parseConfig } from "../../src/config/load.ts";
import { configProblems as problems } from "./config_problems.ts";
import { descriptorsWanted, fitToDescriptors } from "../../src/config/limits.ts";
import { rulesScript } from "../../src/rules/nft.ts";

const one = { listeners: [{ name: "a", address: "127.0.0.1", port: 5 }] };

describe("config: wrong types are errors, never defaults", () => {
  test("an object where the listener array belongs", () => {
    expect(problems({ listeners: {} })).toEqual(["config.listeners: Expected array (got {})"]);
  });
  test("an object where the intercept array belongs", () => {
    expect(problems({ ...one, intercept: {} })).toEqual([
      "config.intercept: Expected array (got {})",
    ]);
  });
  test("an array where the udp object belongs", () => {
    expect(problems({ udp: [] })).toEqual(["config.udp: Expected object (got [])"]);
  });
  test("a map where a port list belongs", () => {
    expect(problems({ ...one, intercept: [{ listener: "a", ports: { "0": 53 } }] })).toEqual([
      'config.intercept[0].ports: Expected array (got {"0":53})',
    ]);
  });
  test("absent fields still get their defaults", () => {
    const c = parseConfig({ udp: { sessionsMax: 100 } });
    expect(c.udp.sessionsMax).toBe(100);
    expect(c.udp.idleTimeoutMs).toBe(60_000);
    expect(c.listeners.map((l) => l.name)).toEqual(["udp4", "udp6"]);
  });
});

describe("config: addresses compare in canonical form", () => {
  for (const [a, b] of [
    ["::1", "0:0:0:0:0:0:0:1"],
    ["127.0.0.1", "::ffff:127.0.0.1"],
    ["2001:2::1", "2001:0002:0000:0000:0000:0000:0000:0001"],
  ]) {
    test(`${a} and ${b} are one address`, () => {
      const p = problems({
        listeners: [
          { name: "a", address: a, port: 5 },
          { name: "b", address: b, port: 5 },
        ],
      });
      expect(p).toHaveLength(1);
      expect(p[0]).toContain("config.listeners[1]: binds udp");
      expect(p[0]).toContain("as config.listeners[0] does");
    });
  }
});

describe("config: interface names", () => {
  const withInterface = (name: string) =>
    problems({ ...one, intercept: [{ listener: "a", ports: [53], interfaces: [name] }] });
  test("ordinary names pass", () => {
    for (const name of ["eth0", "lan0", "br-lan", "wg0.100", "enp3s0f1", "veth_a@b"]) {
      expect(withInterface(name)).toEqual([]);
    }
  });
  for (const [name, why] of [
    ['x"; reboot; "', "quotes"],
    ["NFT\nid", "printable"],
    ["a b", "printable"],
    ["a/b", '"/" or ":"'],
    ["a:1", '"/" or ":"'],
    [".", '"." and ".."'],
    ["..", '"." and ".."'],
    ["a\\b", "backslashes"],
    ["$(id)'", "quotes"],
  ]) {
    test(`${JSON.stringify(name)} is refused (${why})`, () => {
      const p = withInterface(name);
      expect(p).toHaveLength(1);
      expect(p[0]).toStartWith("config.intercept[0].interfaces[0]: ");
      expect(p[0]).toContain(why);
    });
  }
  test("a name too long for Linux is refused by the schema", () => {
    const p = withInterface("a".repeat(16));
    expect(p[0]).toStartWith("config.intercept[0].interfaces[0]: ");
  });
  test("the rules script carries valid names quoted, inside a quoted heredoc", () => {
    const c = parseConfig({
      ...one,
      intercept: [{ listener: "a", ports: [53], interfaces: ["lan0", "br-lan"] }],
    });
    const script = rulesScript(c);
    expect(script).toContain(`iifname { "lan0", "br-lan" }`);
    expect(script).toContain("nft -f - <<'NFT'\n");
    // The heredoc ends exactly once, at its own terminator line.
    expect(script.split("\n").filter((l) => l === "NFT")).toHaveLength(1);
  });
});

describe("config: errors quote a short prefix of a bad value", () => {
  test("a 10 MB value gives a short message", () => {
    const big = "x".repeat(10 * 1024 * 1024);
    const p = problems({ udp: { sessionsMax: big }, listeners: [{ name: big }] });
    const total = p.join("\n").length;
    expect(total).toBeLessThan(4096);
    expect(p.some((m) => m.startsWith("config.udp.sessionsMax: Expected integer"))).toBe(true);
    expect(p.join("\n")).toContain(`(${big.length + 2} chars)`);
  });
});

describe("limits: bounds fitted under RLIMIT_NOFILE", () => {
  test("defaults under 20000 descriptors: sessions and reply sockets fit, noted", () => {
    const c = parseConfig({});
    expect(descriptorsWanted(c)).toBeGreaterThan(20_000);
    const { config, notes } = fitToDescriptors(c, 20_000);
    expect(config.udp.sessionsMax + config.udp.replySocketsMax).toBeLessThanOrEqual(20_000 - 256);
    expect(config.udp.replySocketsMax).toBe(4096);
    expect(notes).toEqual([
      `udp.sessionsMax 65536 lowered to ${config.udp.sessionsMax} (RLIMIT_NOFILE is 20000)`,
    ]);
    expect(config.udp.sessionsPerClientMax).toBeLessThanOrEqual(config.udp.sessionsMax);
  });
  test("a high limit changes nothing", () => {
    const c = parseConfig({});
    const { config, notes } = fitToDescriptors(c, 1 << 20);
    expect(config.udp.sessionsMax).toBe(65_536);
    expect(notes).toEqual([]);
  });
  test("UDP and TCP share the limit", () => {
    const c = parseConfig({
      listeners: [
        { name: "u", address: "127.0.0.1", port: 5 },
        { name: "t", protocol: "tcp", address: "127.0.0.1", port: 6 },
      ],
    });
    const { config } = fitToDescriptors(c, 20_000);
    const udp = config.udp.sessionsMax + config.udp.replySocketsMax;
    const tcp = config.tcp.connectionsMax * 6 + 2048;
    expect(udp + tcp).toBeLessThanOrEqual(20_000 - 256);
  });
  test("a limit too low to run says which limit to raise", () => {
    expect(() => fitToDescriptors(parseConfig({}), 200)).toThrow("RLIMIT_NOFILE is 200");
  });
});

describe("rules script: idempotent (issue 9)", () => {
  test("applied twice in a scratch namespace: one rule each, the same ruleset", () => {
    const { labUnavailableReason, run } = require("../lab/netns.ts");
    const { skipped } = require("../lab/skip_policy.ts");
    if (skipped(labUnavailableReason(), "rules script check")) return;
    const ns = `trl-rules-${Math.random().toString(16).slice(2, 10)}`;
    const script = rulesScript(parseConfig({}));
    run(["ip", "netns", "add", ns]);
    try {
      run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
      const state = () =>
        ["ip -4 rule", "ip -6 rule", "ip -4 route show table 100", "ip -6 route show table 100"]
          .map((c) => run(["ip", "netns", "exec", ns, ...c.split(" ")]).stdout)
          .join("\n") + run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"]).stdout;
      run(["ip", "netns", "exec", ns, "sh", "-c", script]);
      const once = state();
      run(["ip", "netns", "exec", ns, "sh", "-c", script]);
      expect(state()).toBe(once);
      expect(once.match(/fwmark 0x1 lookup 100/g)).toHaveLength(2); // one per family
    } finally {
      run(["ip", "netns", "del", ns], undefined, true);
    }
  });
});
