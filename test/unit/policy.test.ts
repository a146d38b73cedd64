// The per-flow policy (issue 10): config checks that name the field, CIDR sets against a
// naive reference, port bitmaps, names (exact, suffix, lists), first match wins, and
// NEED_NAME while a rule that could match still waits for the sniffed name.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Config, parseConfig } from "../../src/config/load.ts";
import { parseCidr } from "../../src/config/cidr.ts";
import { AddressSet } from "../../src/policy/address_set.ts";
import { ACTION_DROP, ACTION_REJECT } from "../../src/policy/config.ts";
import {
  DOMAIN_LIST_BYTES_MAX,
  loadDomainList,
  nameProblem,
  normalizeName,
  parseDomainList,
} from "../../src/policy/domain_list.ts";
import {
  compilePolicy,
  FLOW_TCP,
  FLOW_UDP,
  NEED_NAME,
  type Policy,
  PolicyFlow,
} from "../../src/policy/policy.ts";
import { parseAddress } from "../../src/sys/addr.ts";
import { problems } from "./config_problems.ts";

const dir = mkdtempSync(join(tmpdir(), "policy-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const LISTENERS = [
  { name: "udp4", address: "127.0.0.1", port: 12345 },
  { name: "udp6", address: "::1", port: 12345 },
  { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
];

function policyOf(extra: Record<string, unknown>): { policy: Policy; config: Config } {
  const config = parseConfig({ listeners: LISTENERS, ...extra });
  return { policy: compilePolicy(config), config };
}

interface FlowFacts {
  protocol?: number;
  listener?: number;
  source?: string;
  destination: string;
  port: number;
  name?: string | null;
  namePending?: boolean;
}

const flow = new PolicyFlow();
function decide(policy: Policy, f: FlowFacts): number {
  const source = parseAddress(f.source ?? "198.18.0.2")!;
  const destination = parseAddress(f.destination)!;
  flow.words.set(new Uint32Array(source.buffer), 0);
  flow.words.set(new Uint32Array(destination.buffer), 4);
  flow.protocol = f.protocol ?? FLOW_UDP;
  flow.listener = f.listener ?? 0;
  flow.port = f.port;
  flow.name = f.name ?? null;
  flow.namePending = f.namePending ?? false;
  return policy.decide(flow);
}

describe("policy config", () => {
  test("a built-in direct outbound, and the default action is direct", () => {
    const { config, policy } = policyOf({});
    expect(config.policy.outbounds.map((o) => o.name)).toEqual(["direct"]);
    expect(policy.actions[policy.defaultRule]).toBe(0);
    expect(decide(policy, { destination: "198.18.1.2", port: 53 })).toBe(policy.defaultRule);
  });

  test("an outbound named direct replaces the built-in one", () => {
    const { config } = policyOf({
      outbounds: [{ name: "direct", type: "direct", mark: 7, interface: "eth1" }],
    });
    expect(config.policy.outbounds).toHaveLength(1);
    expect(config.policy.outbounds[0]).toMatchObject({ mark: 7, interface: "eth1" });
  });

  test("outbounds get their defaults per type", () => {
    const { config } = policyOf({
      outbounds: [
        { name: "dns", type: "forward", targets: ["198.18.0.53:53", "[2001:2::53]:53"] },
        { name: "proxy", type: "socks5", server: "[2001:2::1]:1080" },
      ],
    });
    expect(config.policy.outbounds[0]).toMatchObject({
      type: "forward",
      healthCheck: { answerTimeoutMs: 2000, failuresMax: 3, retryIntervalMs: 30_000 },
    });
    const forward = config.policy.outbounds[0];
    if (forward.type !== "forward") throw new Error("forward");
    expect(forward.targets.map((t) => `${t.address}|${t.port}`)).toEqual([
      "198.18.0.53|53",
      "2001:2::53|53",
    ]);
    expect(config.policy.outbounds[1]).toMatchObject({
      type: "socks5",
      server: { address: "2001:2::1", port: 1080 },
      udp: true,
      associationsMax: 1024,
      connectTimeoutMs: 5000,
      username: null,
    });
  });

  test("each bad outbound names its field and why", () => {
    expect(problems({ outbounds: [{ name: "p", type: "socks" }] })).toEqual([
      'config.outbounds[0].type: must be one of "direct", "forward", "socks5", "dnsAnswer" ' +
        '(got "socks")',
    ]);
    expect(problems({ outbounds: [{ name: "p", type: "socks5" }] })[0]).toStartWith(
      "config.outbounds[0].server: Expected required property",
    );
    expect(problems({ outbounds: [{ name: "p", type: "socks5", server: "proxy:1080" }] })).toEqual([
      'config.outbounds[0].server: not "IPv4:PORT" or "[IPv6]:PORT" (an address, not a ' +
        'host name; got "proxy:1080")',
    ]);
    expect(
      problems({ outbounds: [{ name: "p", type: "socks5", server: "1.2.3.4:1", username: "u" }] }),
    ).toEqual([
      "config.outbounds[0]: username and password go together (RFC 1929): give both or neither",
    ]);
    const long = "é".repeat(200); // 200 characters, 400 bytes
    expect(
      problems({
        outbounds: [
          { name: "p", type: "socks5", server: "1.2.3.4:1", username: long, password: "x" },
        ],
      }),
    ).toEqual(["config.outbounds[0].username: longer than 255 bytes in UTF-8 (RFC 1929)"]);
    expect(
      problems({
        outbounds: [{ name: "f", type: "forward", targets: ["2001:2::53:53", "1.1.1.1:53"] }],
      }),
    ).toEqual([
      'config.outbounds[0].targets[0]: not "IPv4:PORT" or "[IPv6]:PORT" (got "2001:2::53:53")',
    ]);
    expect(
      problems({
        outbounds: [
          { name: "a", type: "direct" },
          { name: "a", type: "direct", bindAddress4: "::1" },
        ],
      }),
    ).toEqual([
      'config.outbounds[1].name: duplicate outbound name "a" (outbounds[0])',
      'config.outbounds[1].bindAddress4: not an IPv4 address (got "::1")',
    ]);
    expect(problems({ outbounds: [{ name: "drop", type: "direct" }] })).toEqual([
      'config.outbounds[0].name: "drop" is an action, not an outbound name',
    ]);
    expect(problems({ outbounds: [{ name: "d", type: "direct", extra: 1 }] })).toEqual([
      "config.outbounds[0].extra: Unexpected property (got 1)",
    ]);
  });

  test("dnsAnswer: addresses of their family with NOERROR, any rule, not the default", () => {
    const block = { name: "b", type: "dnsAnswer" };
    expect(
      problems({
        outbounds: [
          { ...block, address4: "1.2.3.4" },
          { name: "c", type: "dnsAnswer", rcode: "NOERROR", address6: "1.2.3.4" },
        ],
        // Both protocols (none given), TCP only, UDP only: DNS is answered on each.
        rules: [
          { names: { exact: ["x.test"] }, action: "b" },
          { protocol: "tcp", names: { exact: ["y.test"] }, action: "b" },
          { protocol: "udp", names: { exact: ["z.test"] }, action: "c" },
        ],
        defaultAction: "c",
      }),
    ).toEqual([
      'config.outbounds[0].address4: an address needs rcode "NOERROR" (got "NXDOMAIN")',
      'config.outbounds[1].address6: not an IPv6 address (got "1.2.3.4")',
      'config.defaultAction: "c" is a dnsAnswer outbound (it answers DNS queries only): ' +
        "only a rule can use it",
    ]);
  });

  test("rules: unknown outbounds and listeners are errors naming the rule", () => {
    expect(
      problems({
        listeners: LISTENERS,
        rules: [
          { action: "drop" },
          { action: "proxy" },
          { listener: ["udp4", "nope"], action: "reject" },
        ],
        defaultAction: "gone",
      }),
    ).toEqual([
      'config.rules[1].action: no outbound named "proxy" (known: drop, reject, direct)',
      'config.rules[2].listener: no listener named "nope"',
      'config.defaultAction: no outbound named "gone" (known: drop, reject, direct)',
    ]);
  });

  test("rules: bad CIDRs, ports and names name their index", () => {
    expect(
      problems({
        rules: [
          {
            sources: ["198.18.0.0/15", "198.18.0.1/15", "2001:2::/129", "host"],
            ports: [53, "90-80"],
            names: { exact: ["ok.example", "a..b"], suffix: ["x".repeat(64) + ".com"] },
            action: "drop",
          },
        ],
      }),
    ).toEqual([
      'config.rules[0].ports[1]: range must be within 1-65535, low <= high (got "90-80")',
      'config.rules[0].names.exact[1]: empty label (two dots, or a leading dot) (got "a..b")',
      "config.rules[0].names.suffix[0]: label longer than 63 characters " +
        `(got "${"x".repeat(47)}... (70 chars))`,
      'config.rules[0].sources[1]: has host bits set (198.18.0.0/15?) (got "198.18.0.1/15")',
      'config.rules[0].sources[2]: prefix length must be 0-128 (got "2001:2::/129")',
      'config.rules[0].sources[3]: not an IPv4 address or prefix (got "host")',
    ]);
  });

  test("a rule on names that can never be sniffed is a warning, not an error", () => {
    const { config } = policyOf({
      rules: [
        { protocol: "udp", ports: [5353], names: { exact: ["a.example"] }, action: "drop" },
        { protocol: "udp", ports: ["50-60"], names: { exact: ["a.example"] }, action: "drop" },
        { protocol: "udp", listener: "tcp4", action: "drop" },
      ],
    });
    expect(config.warnings).toEqual([
      "config.rules[0]: matches on names, but no UDP name is sniffed on its ports (DNS on " +
        "udp.dnsPorts, QUIC on udp.quicPorts): it can never match",
      'config.rules[2]: never matches: protocol "udp" but its listeners are not udp',
    ]);
  });
});

describe("policy decisions", () => {
  test("first match wins, on protocol, listener, addresses and ports", () => {
    const { policy } = policyOf({
      outbounds: [{ name: "proxy", type: "socks5", server: "198.18.1.2:1080" }],
      rules: [
        { protocol: "tcp", ports: [25], action: "reject" },
        { listener: "udp6", destinations: ["2001:2:0:2::/64"], action: "drop" },
        { sources: ["198.18.0.128/25"], ports: ["1000-2000", 443], action: "proxy" },
        { destinations: ["198.18.1.0/24", "2001:2::/48"], action: "direct" },
      ],
      defaultAction: "drop",
    });
    expect([...policy.actions]).toEqual([ACTION_REJECT, ACTION_DROP, 0, 1, ACTION_DROP]);
    const tcp = { protocol: FLOW_TCP, listener: 2 };
    expect(decide(policy, { ...tcp, destination: "198.18.1.2", port: 25 })).toBe(0);
    expect(decide(policy, { destination: "198.18.1.2", port: 25 })).toBe(3);
    expect(
      decide(policy, {
        listener: 1,
        source: "2001:2:0:1::2",
        destination: "2001:2:0:2::9",
        port: 1,
      }),
    ).toBe(1);
    expect(
      decide(policy, {
        listener: 0,
        source: "2001:2:0:1::2",
        destination: "2001:2:0:2::9",
        port: 1,
      }),
    ).toBe(3);
    expect(decide(policy, { source: "198.18.0.200", destination: "8.8.8.8", port: 1500 })).toBe(2);
    expect(decide(policy, { source: "198.18.0.200", destination: "8.8.8.8", port: 443 })).toBe(2);
    expect(decide(policy, { source: "198.18.0.200", destination: "8.8.8.8", port: 2001 })).toBe(4);
    expect(decide(policy, { source: "198.18.0.2", destination: "8.8.8.8", port: 1500 })).toBe(4);
    expect(policy.ruleNames).toEqual(["rules[0]", "rules[1]", "rules[2]", "rules[3]", "default"]);
  });

  test("IPv4 CIDRs match IPv4 flows only; IPv6 ones (even ::/0) IPv6 flows only", () => {
    const { policy } = policyOf({
      rules: [
        { destinations: ["::/0"], action: "reject" },
        { destinations: ["0.0.0.0/0"], action: "drop" },
      ],
    });
    expect(decide(policy, { destination: "198.18.1.2", port: 1 })).toBe(1);
    expect(decide(policy, { destination: "2001:2::1", port: 1 })).toBe(0);
  });

  test("names: exact, suffix at label boundaries, case and trailing dot ignored", () => {
    const { policy } = policyOf({
      rules: [
        { names: { exact: ["Exact.Example"] }, action: "drop" },
        { names: { suffix: ["blocked.example."] }, action: "reject" },
      ],
    });
    const at = (name: string | null) => decide(policy, { destination: "1.1.1.1", port: 53, name });
    expect(at("exact.example")).toBe(0);
    expect(at("EXACT.EXAMPLE.")).toBe(0);
    expect(at("a.exact.example")).toBe(2);
    expect(at("blocked.example")).toBe(1);
    expect(at("a.b.BLOCKED.example.")).toBe(1);
    expect(at("notblocked.example")).toBe(2);
    expect(at("example")).toBe(2);
    expect(at(null)).toBe(2);
  });

  test("NEED_NAME only when a rule that could match waits for the name", () => {
    const { policy } = policyOf({
      rules: [
        { destinations: ["198.18.9.0/24"], action: "drop" },
        { ports: [443], names: { suffix: ["video.example"] }, action: "reject" },
        { ports: [443], action: "direct" },
      ],
    });
    const pending = { namePending: true, name: null };
    // An earlier rule decides without the name.
    expect(decide(policy, { ...pending, destination: "198.18.9.1", port: 443 })).toBe(0);
    // The name rule's other conditions fail: no need to wait.
    expect(decide(policy, { ...pending, destination: "198.18.1.2", port: 80 })).toBe(3);
    expect(decide(policy, { ...pending, destination: "198.18.1.2", port: 443 })).toBe(NEED_NAME);
    // Sniffing finished: known, or given up.
    const done = { destination: "198.18.1.2", port: 443 };
    expect(decide(policy, { ...done, name: "cdn.video.example" })).toBe(1);
    expect(decide(policy, { ...done, name: "other.example" })).toBe(2);
    expect(decide(policy, { ...done, name: null })).toBe(2);
    expect(policy.usesNames).toBe(true);
    expect(policyOf({ rules: [{ ports: [1], action: "drop" }] }).policy.usesNames).toBe(false);
  });

  test("a 10,000-name list file: every entry matches, near misses do not", () => {
    const lines = ["# generated", ""];
    for (let i = 0; i < 5000; i++) lines.push(`domain:site${i}.example`);
    for (let i = 0; i < 5000; i++) lines.push(`full:host${i}.example.net`);
    const list = file("big.list", lines.join("\n"));
    const { policy } = policyOf({
      rules: [
        { names: { lists: [list] }, action: "drop" },
        { names: { lists: [list] }, action: "reject" },
      ],
    });
    const at = (name: string) => decide(policy, { destination: "1.1.1.1", port: 443, name });
    let matched = 0;
    for (let i = 0; i < 5000; i++) {
      if (at(`site${i}.example`) === 0) matched++;
      if (at(`www.site${i}.example`) === 0) matched++;
      if (at(`host${i}.example.net`) === 0) matched++;
      if (at(`www.host${i}.example.net`) === 2) matched++;
      if (at(`site${i}.example.org`) === 2) matched++;
    }
    expect(matched).toBe(25_000);
  });
});

describe("address sets", () => {
  test("agree with a naive check on random prefixes and addresses", () => {
    let seed = 12345;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    const cidrs: Array<{ value: bigint; bits: number }> = [];
    const texts: string[] = [];
    for (let i = 0; i < 300; i++) {
      if (i % 2 === 0) {
        const bits = 8 + (random() % 25);
        const value = (BigInt(random()) << 1n) & ~((1n << BigInt(32 - bits)) - 1n) & 0xffffffffn;
        const bytes = [24, 16, 8, 0].map((s) => Number((value >> BigInt(s)) & 0xffn));
        texts.push(`${bytes.join(".")}/${bits}`);
        cidrs.push({ value: (0xffffn << 32n) | value, bits: 96 + bits });
      } else {
        const bits = 16 + (random() % 100);
        let value = (0x2001n << 112n) | (BigInt(random() % 4) << 96n) | (BigInt(random()) << 64n);
        value &= ~((1n << BigInt(128 - bits)) - 1n);
        const groups = [];
        for (let g = 7; g >= 0; g--)
          groups.push(((value >> BigInt(g * 16)) & 0xffffn).toString(16));
        texts.push(`${groups.join(":")}/${bits}`);
        cidrs.push({ value, bits });
      }
    }
    const parsed = texts.map((t) => {
      const p = parseCidr(t);
      if ("problem" in p) throw new Error(`${t}: ${p.problem}`);
      return p;
    });
    const set = new AddressSet(parsed);
    const words = new Uint32Array(4);
    const bytes = new Uint8Array(words.buffer);
    let checked = 0;
    for (let i = 0; i < 20_000; i++) {
      // Near a prefix's edges, or anywhere.
      const base = cidrs[random() % cidrs.length];
      const span = 1n << BigInt(128 - base.bits);
      const offsets = [0n, span - 1n, span, -1n, BigInt(random())];
      let value = base.value + offsets[random() % offsets.length];
      value &= (1n << 128n) - 1n;
      for (let b = 0; b < 16; b++) bytes[b] = Number((value >> BigInt((15 - b) * 8)) & 0xffn);
      const v4 = value >> 32n === 0xffffn;
      const naive = cidrs.some((c) => {
        const cv4 = c.bits >= 96 && c.value >> 32n === 0xffffn;
        if (cv4 !== v4) return false;
        return value >> BigInt(128 - c.bits) === c.value >> BigInt(128 - c.bits);
      });
      expect(set.has(words, 0)).toBe(naive);
      checked++;
    }
    expect(checked).toBe(20_000);
  });

  test("overlapping and adjacent prefixes merge", () => {
    const cidrs = ["198.18.0.0/24", "198.18.1.0/24", "198.18.0.128/25", "2001:2::/48", "2001:2::1"]
      .map((t) => parseCidr(t))
      .map((p) => ("problem" in p ? null : p)!);
    expect(new AddressSet(cidrs).intervalCount).toBe(2);
  });
});

describe("domain lists", () => {
  test("names: what a rule accepts", () => {
    expect(nameProblem("xn--bcher-kva.example")).toBeNull();
    expect(nameProblem("_dmarc.example.com.")).toBeNull();
    expect(nameProblem("a".repeat(63))).toBeNull();
    expect(nameProblem("a".repeat(64))).toBe("label longer than 63 characters");
    expect(nameProblem(`${"a.".repeat(126)}ab`)).toBe("longer than 253 characters (254)");
    expect(nameProblem("bücher.example")).toStartWith("non-ASCII character");
    expect(nameProblem("*.example")).toStartWith('"*" is not supported');
    expect(nameProblem(".example")).toStartWith("empty label");
    expect(nameProblem("")).toBe("empty name");
    const same = "already.lower";
    expect(normalizeName(same)).toBe(same);
    expect(normalizeName("MiXeD.Example.")).toBe("mixed.example");
  });

  test("prefixes, comments, blank lines, CRLF", () => {
    const set = { origin: "t", exact: new Set<string>(), suffix: new Set<string>() };
    const text = "# list\r\nfull:A.example\r\n\r\ndomain:b.example # why\r\nc.example.\r\n";
    expect(parseDomainList(text, "t", set)).toEqual([]);
    expect([...set.exact]).toEqual(["a.example"]);
    expect([...set.suffix]).toEqual(["b.example", "c.example"]);
  });

  test("a malformed line fails the load, naming file:line and why", () => {
    const path = file("bad.list", "good.example\nbad name.example\nregexp:.*\nok\n");
    const loaded = loadDomainList(path);
    expect(loaded.problems).toEqual([
      `${path}:2: contains a space (got "bad name.example")`,
      `${path}:3: unsupported prefix "regexp:" (only full: and domain:)`,
    ]);
    expect(problems({ rules: [{ names: { lists: [path] }, action: "drop" }] })).toEqual(
      loaded.problems.map((p) => `config.rules[0].names.lists: ${p}`),
    );
    expect(
      problems({ rules: [{ names: { lists: [join(dir, "missing")] }, action: "drop" }] })[0],
    ).toStartWith(`config.rules[0].names.lists: ${join(dir, "missing")}: cannot read`);
    expect(DOMAIN_LIST_BYTES_MAX).toBe(64 << 20);
    const empty = file("empty.list", "# nothing yet\n");
    const { config } = policyOf({ rules: [{ names: { lists: [empty] }, action: "drop" }] });
    expect(config.warnings).toEqual([`config.rules[0].names.lists: ${empty} holds no names`]);
  });
});
