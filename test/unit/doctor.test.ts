// `relay doctor`'s checks on fixtures: command outputs, /proc files, sysctl values,
// capability masks and limits fed through a fake Host (src/doctor/check.ts).
import { describe, expect, test } from "bun:test";
import { type Config, parseConfig } from "../../src/config/load.ts";
import type { Check, Host } from "../../src/doctor/check.ts";
import { formatText, runDoctor, summary } from "../../src/doctor/doctor.ts";
import { collisions, ports, splitEndpoint } from "../../src/doctor/ports.ts";
import { listingDiff, normaliseListing, rulesChecks } from "../../src/doctor/rules.ts";
import { selfTestConfig } from "../../src/doctor/self_test.ts";
import {
  capabilities,
  descriptors,
  forwarding,
  kernelSupport,
  parseNofile,
  policyRouting,
  routeLocalnet,
  rpFilter,
} from "../../src/doctor/system.ts";
import type { RunResult } from "../../src/rules/apply.ts";
import { nftRuleset } from "../../src/rules/nft.ts";

const RAW = {
  listeners: [
    { name: "dns4", address: "127.0.0.1", port: 53 },
    { name: "dns6", address: "::1", port: 53 },
  ],
  intercept: [
    { listener: "dns4", ports: [53], interfaces: ["lan0"] },
    { listener: "dns6", ports: [53], interfaces: ["lan0"] },
  ],
  udp: { sessionsMax: 1000, replySocketsMax: 100 },
};
const CONFIG = parseConfig(RAW);
const ok = (stdout = ""): RunResult => ({ status: 0, stdout, stderr: "" });
const err = (stderr: string, status = 1): RunResult => ({ status, stdout: "", stderr });

/** 0x1000: CAP_NET_ADMIN only. */
const STATUS_ROOT = "Name:\tbun\nUid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
const LIMITS = (soft: string, hard: string) =>
  `Limit                     Soft Limit           Hard Limit           Units\n` +
  `Max cpu time              unlimited            unlimited            seconds\n` +
  `Max open files            ${soft}                 ${hard}                 files\n`;

/** The live table as nft lists it: the script's table with counters that have counted. */
const LIVE_TABLE = "table inet transparent_relay {\n  chain prerouting {\n  }\n}\n";

/** A host where everything is as `relay rules apply` and a good set-up leave it. */
function fakeHost(
  overrides: {
    run?: Record<string, RunResult>;
    files?: Record<string, string>;
    dirs?: Record<string, string[]>;
    answers?: boolean;
  } = {},
): Host & { commands: string[] } {
  const files: Record<string, string> = {
    "/proc/self/status": STATUS_ROOT,
    "/proc/self/limits": LIMITS("1024", "1048576"),
    "/proc/sys/net/ipv4/ip_forward": "1\n",
    "/proc/sys/net/ipv6/conf/all/forwarding": "1\n",
    "/proc/sys/net/ipv4/conf/all/rp_filter": "0\n",
    "/proc/sys/net/ipv4/conf/default/rp_filter": "0\n",
    "/proc/sys/net/ipv4/conf/lan0/rp_filter": "0\n",
    "/proc/sys/net/ipv4/conf/lo/rp_filter": "0\n",
    "/proc/sys/net/ipv4/conf/all/route_localnet": "0\n",
    "/proc/sys/net/ipv4/conf/lan0/route_localnet": "0\n",
    ...overrides.files,
  };
  const run: Record<string, RunResult> = {
    "nft list table inet transparent_relay": ok(LIVE_TABLE),
    "ip -4 rule list fwmark 0x1 lookup 100 priority 32000": ok(
      "32000:\tfrom all fwmark 0x1 lookup 100\n",
    ),
    "ip -6 rule list fwmark 0x1 lookup 100 priority 32000": ok(
      "32000:\tfrom all fwmark 0x1 lookup 100\n",
    ),
    "ip -4 route show table 100 type local": ok("local default dev lo scope host\n"),
    "ip -6 route show table 100 type local": ok("local default dev lo metric 1024 pref medium\n"),
    ...overrides.run,
  };
  const commands: string[] = [];
  return {
    commands,
    run: (argv) => {
      const key = argv.join(" ");
      commands.push(key);
      if (key.startsWith("unshare --net")) return run["unshare"] ?? ok(LIVE_TABLE);
      return run[key] ?? ok();
    },
    readFile: (path) => files[path] ?? null,
    listDir: (path) =>
      overrides.dirs?.[path] ?? (path === "/proc/sys/net/ipv4/conf" ? ["all", "lan0", "lo"] : []),
    relayAnswers: async () => overrides.answers ?? false,
  };
}

const statuses = (checks: Check[]) => checks.map((c) => [c.name, c.status]);

describe("kernel support", () => {
  test("nft: the probe table is checked (nft -c), never loaded", () => {
    const host = fakeHost();
    expect(statuses(kernelSupport(CONFIG, host))).toEqual([
      ["kernel: nft tproxy + socket", "pass"],
    ]);
    expect(host.commands).toEqual(["nft -c -f -"]);
  });
  test("nft: a kernel without tproxy fails with the modules to load", () => {
    const host = fakeHost({
      run: { "nft -c -f -": err("Error: Could not process rule: No such file or directory") },
    });
    const [c] = kernelSupport(CONFIG, host);
    expect(c.status).toBe("fail");
    expect(c.detail).toContain("No such file or directory");
    expect(c.fix).toContain("modprobe nft_tproxy nft_socket");
  });
  test("not permitted: unknown, a warning; nft missing: install it", () => {
    const denied = fakeHost({ run: { "nft -c -f -": err("Error: Operation not permitted") } });
    expect(kernelSupport(CONFIG, denied)[0].status).toBe("warn");
    const missing = fakeHost({ run: { "nft -c -f -": err("nft not found", -1) } });
    expect(kernelSupport(CONFIG, missing)[0]).toMatchObject({
      status: "fail",
      fix: "apt-get install nftables",
    });
  });
  test("iptables backend: iptables-restore --test of a throwaway chain, each family", () => {
    const config = parseConfig({ ...RAW, firewall: { backend: "iptables" } });
    const host = fakeHost({
      run: { "ip6tables-restore --test": err('iptables-restore: unknown option "--on-port"') },
    });
    expect(statuses(kernelSupport(config, host))).toEqual([
      ["kernel: iptables TPROXY + socket (IPv4)", "pass"],
      ["kernel: iptables TPROXY + socket (IPv6)", "fail"],
    ]);
    expect(kernelSupport(config, host)[1].fix).toContain("modprobe xt_TPROXY xt_socket");
  });
  test("policy routing: `ip rule` must work for both families", () => {
    expect(policyRouting(fakeHost()).status).toBe("pass");
    const host = fakeHost({
      run: { "ip -6 rule list": err("RTNETLINK answers: Address family not supported") },
    });
    const c = policyRouting(host);
    expect(c.status).toBe("fail");
    expect(c.detail).toContain("ip -6 rule list: RTNETLINK answers");
  });
});

describe("capabilities", () => {
  const status = (uid: number, capEff: string) =>
    fakeHost({
      files: {
        "/proc/self/status": `Uid:\t${uid}\t${uid}\t${uid}\t${uid}\n` + `CapEff:\t${capEff}\n`,
      },
    });
  // No port below 1024 anywhere: CAP_NET_ADMIN alone is enough.
  const high = parseConfig({
    listeners: [{ name: "u", address: "127.0.0.1", port: 12345 }],
    intercept: [{ listener: "u", ports: [5353] }],
    metrics: { port: 9477 },
  });
  test("root with CAP_NET_ADMIN: passes, and says CAP_NET_RAW is not needed", () => {
    const c = capabilities(CONFIG, status(0, "000001ffffffffff"));
    expect(c.status).toBe("pass");
    expect(c.detail).toContain("running as root");
    expect(c.detail).toContain("not CAP_NET_RAW");
  });
  test("an unprivileged user with CAP_NET_ADMIN alone passes when no port is below 1024", () => {
    const c = capabilities(high, status(1000, "0000000000001000"));
    expect(c.status).toBe("pass");
    expect(c.detail).toContain("CAP_NET_RAW is not needed");
  });
  test("a port below 1024 without CAP_NET_BIND_SERVICE fails, naming why and the fix", () => {
    const c = capabilities(CONFIG, status(1000, "0000000000001000"));
    expect(c.status).toBe("fail");
    expect(c.detail).toContain("listener dns4 on port 53");
    expect(c.fix).toContain("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE");
    // With both (bits 10 and 12): passes.
    expect(capabilities(CONFIG, status(1000, "0000000000001400")).status).toBe("pass");
  });
  test("without it (CAP_NET_RAW alone; root with it dropped): fails, says how to grant it", () => {
    for (const [uid, mask] of [
      [1000, "0000000000002000"],
      [0, "000001ffffffefff"],
    ] as const) {
      const c = capabilities(high, status(uid, mask));
      expect(c.status).toBe("fail");
      expect(c.fix).toContain("AmbientCapabilities=CAP_NET_ADMIN");
      expect(c.fix).toContain("setpriv");
    }
  });
  test("a rule that rejects UDP needs CAP_NET_RAW too: fails without it, with the fix", () => {
    const rejecting = parseConfig({
      listeners: [{ name: "u", address: "127.0.0.1", port: 12345 }],
      intercept: [{ listener: "u", ports: [5353] }],
      metrics: { port: 9477 },
      rules: [{ ports: [5353], action: "reject" }],
    });
    const c = capabilities(rejecting, status(1000, "0000000000001000"));
    expect(c.status).toBe("fail");
    expect(c.detail).toContain("CAP_NET_RAW");
    expect(c.fix).toContain("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW");
    // With both (bits 12 and 13): passes, and says why CAP_NET_RAW is there.
    const both = capabilities(rejecting, status(1000, "0000000000003000"));
    expect(both.status).toBe("pass");
    expect(both.detail).toContain("CAP_NET_RAW too");
  });
  test("an unreadable status is a warning, not a pass", () => {
    const unreadable = fakeHost({ files: { "/proc/self/status": "Name: x\n" } });
    expect(capabilities(CONFIG, unreadable).status).toBe("warn");
  });
});

describe("descriptors (RLIMIT_NOFILE)", () => {
  const withLimits = (soft: string, hard: string) =>
    fakeHost({ files: { "/proc/self/limits": LIMITS(soft, hard) } });
  // 256 reserved + 2 listeners + 1000 sessions + 100 reply sockets.
  const WANTED = 1358;
  test("parses /proc/self/limits", () => {
    expect(parseNofile(LIMITS("1024", "524288"))).toEqual([1024, 524288]);
    expect(parseNofile(LIMITS("unlimited", "unlimited"))).toEqual([Infinity, Infinity]);
    expect(parseNofile("nothing")).toBeNull();
  });
  test("a hard limit above the need passes (the relay raises its soft limit)", () => {
    const c = descriptors(CONFIG, withLimits("1024", "4096"));
    expect(c.status).toBe("pass");
    expect(c.detail).toContain(`need ${WANTED} (the relay raises the soft limit to ${WANTED})`);
    expect(descriptors(CONFIG, withLimits("unlimited", "unlimited")).status).toBe("pass");
  });
  test("a hard limit that forces lower bounds fails, naming the need and the fix", () => {
    const c = descriptors(CONFIG, withLimits("1024", "1024"));
    expect(c.status).toBe("fail");
    expect(c.detail).toContain(`need ${WANTED}`);
    expect(c.detail).toContain("udp.sessionsMax 1000 lowered to");
    expect(c.fix).toContain(`LimitNOFILE=${WANTED}`);
    expect(c.fix).toContain(`ulimit -n ${WANTED}`);
    expect(c.fix).toContain("udp.sessionsMax");
  });
  test("a limit too low to start at all says so", () => {
    const c = descriptors(CONFIG, withLimits("64", "64"));
    expect(c.status).toBe("fail");
    expect(c.detail).toContain("the relay would not start");
  });
});

describe("sysctls", () => {
  test("gateway mode needs forwarding in each family it intercepts", () => {
    expect(statuses(forwarding(CONFIG, fakeHost()))).toEqual([
      ["sysctl net.ipv4.ip_forward", "pass"],
      ["sysctl net.ipv6.conf.all.forwarding", "pass"],
    ]);
    const off = fakeHost({ files: { "/proc/sys/net/ipv4/ip_forward": "0\n" } });
    const [v4] = forwarding(CONFIG, off);
    expect(v4.status).toBe("fail");
    expect(v4.fix).toStartWith("sysctl -w net.ipv4.ip_forward=1");
    const v4only = parseConfig({ ...RAW, intercept: [RAW.intercept[0]] });
    expect(forwarding(v4only, fakeHost()).map((c) => c.name)).toEqual([
      "sysctl net.ipv4.ip_forward",
    ]);
  });
  test("local mode does not forward", () => {
    const local = parseConfig({ ...RAW, firewall: { mode: "local" } });
    expect(
      forwarding(local, fakeHost({ files: { "/proc/sys/net/ipv4/ip_forward": "0" } })),
    ).toEqual([]);
  });
  test("rp_filter strict on the intercept interface fails with the sysctl to change", () => {
    const host = fakeHost({ files: { "/proc/sys/net/ipv4/conf/lan0/rp_filter": "1\n" } });
    const [c] = rpFilter(CONFIG, host);
    expect(c).toMatchObject({ name: "sysctl rp_filter lan0", status: "fail" });
    expect(c.detail).toContain("all=0, lan0=1: effective 1");
    expect(c.fix).toStartWith("sysctl -w net.ipv4.conf.lan0.rp_filter=2");
  });
  test("all=1 makes every interface strict: the fix names `all`", () => {
    const host = fakeHost({ files: { "/proc/sys/net/ipv4/conf/all/rp_filter": "1" } });
    const [c] = rpFilter(CONFIG, host);
    expect(c.status).toBe("fail");
    expect(c.fix).toStartWith("sysctl -w net.ipv4.conf.all.rp_filter=2");
  });
  test("the kernel applies max(all, interface): loose anywhere wins over strict", () => {
    const host = fakeHost({
      files: {
        "/proc/sys/net/ipv4/conf/all/rp_filter": "2",
        "/proc/sys/net/ipv4/conf/lan0/rp_filter": "1",
      },
    });
    expect(rpFilter(CONFIG, host)[0]).toMatchObject({ status: "pass" });
  });
  test("no interface list: every interface but lo; local mode: lo", () => {
    const all = parseConfig({ ...RAW, intercept: [{ listener: "dns4", ports: [53] }] });
    const host = fakeHost({
      files: { "/proc/sys/net/ipv4/conf/eth0.100/rp_filter": "1" },
      dirs: { "/proc/sys/net/ipv4/conf": ["all", "default", "eth0.100", "lan0", "lo"] },
    });
    const checks = rpFilter(all, host);
    expect(statuses(checks)).toEqual([
      ["sysctl rp_filter eth0.100", "fail"],
      ["sysctl rp_filter lan0", "pass"],
    ]);
    // sysctl(8) spells a dot inside a name as "/".
    expect(checks[0].fix).toStartWith("sysctl -w net.ipv4.conf.eth0/100.rp_filter=2");
    const local = parseConfig({ ...RAW, firewall: { mode: "local" } });
    expect(statuses(rpFilter(local, fakeHost()))).toEqual([["sysctl rp_filter lo", "pass"]]);
  });
  test("an interface that does not exist yet, and a strict default, are warnings", () => {
    const host = fakeHost({
      files: { "/proc/sys/net/ipv4/conf/default/rp_filter": "1" },
      dirs: { "/proc/sys/net/ipv4/conf": ["all", "default", "lo"] },
    });
    const absent = {
      ...host,
      readFile: (p: string) => (p.includes("/lan0/") ? null : host.readFile(p)),
    };
    expect(statuses(rpFilter(CONFIG, absent))).toEqual([
      ["sysctl rp_filter", "warn"],
      ["sysctl rp_filter default", "warn"],
    ]);
  });
  test("route_localnet: not needed for a 127.0.0.1 listener; on, it is a warning", () => {
    expect(routeLocalnet(CONFIG, fakeHost())).toMatchObject([
      { status: "pass", detail: expect.stringContaining("not needed") },
    ]);
    const on = fakeHost({ files: { "/proc/sys/net/ipv4/conf/lan0/route_localnet": "1" } });
    const [c] = routeLocalnet(CONFIG, on);
    expect(c.status).toBe("warn");
    expect(c.fix).toContain("sysctl -w net.ipv4.conf.lan0.route_localnet=0");
    const elsewhere = parseConfig({
      ...RAW,
      listeners: [{ name: "dns4", address: "198.18.0.1", port: 53 }],
      intercept: [RAW.intercept[0]],
    });
    expect(routeLocalnet(elsewhere, on)).toEqual([]);
  });
});

describe("our rules and routes", () => {
  test("listings compare without counter values, comments or blank lines", () => {
    const a = normaliseListing("table t {\n\tcounter packets 12 bytes 3456 accept\n\n}\n");
    const b = normaliseListing("table t {\n\tcounter packets 0 bytes 0 accept\n}");
    expect(a).toEqual(b);
    expect(normaliseListing("# Generated\n:TRELAY_PRE - [3:120]\n[1:2] -A X")).toEqual([
      ":TRELAY_PRE -",
      "-A X",
    ]);
    expect(listingDiff(["a", "b", "b"], ["b", "c", "a"])).toEqual([["b"], ["c"]]);
  });
  test("everything present and as generated: all pass", () => {
    const host = fakeHost();
    expect(statuses(rulesChecks(CONFIG, host, "/etc/relay.json"))).toEqual([
      ["nft table inet transparent_relay", "pass"],
      ["ip rule IPv4", "pass"],
      ["ip route IPv4 table 100", "pass"],
      ["ip rule IPv6", "pass"],
      ["ip route IPv6 table 100", "pass"],
    ]);
    // The expected table: the generator's script, in a throwaway namespace.
    expect(host.commands).toContain(
      "unshare --net -- sh -c nft -f - && nft list table inet transparent_relay",
    );
  });
  test("absent table, rule and route: each fails with `rules apply --config FILE`", () => {
    const host = fakeHost({
      run: {
        "nft list table inet transparent_relay": err(
          "Error: No such file or directory\nlist table inet transparent_relay\n" +
            "                 ^^^^^^^^^^^^^^^^^",
        ),
        "ip -4 rule list fwmark 0x1 lookup 100 priority 32000": ok(),
        "ip -6 route show table 100 type local": err("Error: ipv6: FIB table does not exist."),
      },
    });
    const checks = rulesChecks(CONFIG, host, "/etc/relay.json");
    const failed = checks.filter((c) => c.status === "fail");
    expect(failed.map((c) => c.detail)).toEqual([
      "absent (Error: No such file or directory)",
      "missing: ip -4 rule fwmark 0x1 lookup 100 priority 32000",
      "missing: local default dev lo in table 100 (Error: ipv6: FIB table does not exist.)",
    ]);
    for (const c of failed)
      expect(c.fix).toBe("bun run relay rules apply --config /etc/relay.json");
  });
  test("a table that differs names the lines missing and the lines not from this config", () => {
    const expected =
      "table inet transparent_relay {\n\tchain prerouting {\n" +
      '\t\tudp dport 53 tproxy ip to 127.0.0.1:53 comment "dns4"\n\t}\n}\n';
    const live =
      "table inet transparent_relay {\n\tchain prerouting {\n" +
      '\t\tudp dport 5353 tproxy ip to 127.0.0.1:53 comment "dns4"\n\t}\n}\n';
    const host = fakeHost({
      run: { "nft list table inet transparent_relay": ok(live), unshare: ok(expected) },
    });
    const [c] = rulesChecks(CONFIG, host, null);
    expect(c.status).toBe("fail");
    expect(c.detail).toBe(
      'missing "udp dport 53 tproxy ip to 127.0.0.1:53 comment \\"dns4\\""; ' +
        'not from this config "udp dport 5353 tproxy ip to 127.0.0.1:53 comment \\"dns4\\""',
    );
    expect(c.fix).toBe("bun run relay rules apply");
  });
  test("the same rules in another order fail: the first match decides", () => {
    const table = (a: string, b: string) =>
      `table inet transparent_relay {\n\tchain prerouting {\n\t\t${a}\n\t\t${b}\n\t}\n}\n`;
    const host = fakeHost({
      run: {
        "nft list table inet transparent_relay": ok(
          table("udp dport 53 tproxy", "ct mark 0x1ee7 return"),
        ),
        unshare: ok(table("ct mark 0x1ee7 return", "udp dport 53 tproxy")),
      },
    });
    const [c] = rulesChecks(CONFIG, host, null);
    expect(c).toMatchObject({
      status: "fail",
      detail: 'the same rules in another order, from "udp dport 53 tproxy" on',
    });
  });
  test("iptables backend: our chains must exist; compared in a scratch namespace", () => {
    const config = parseConfig({ ...RAW, firewall: { backend: "iptables" } });
    const save =
      "*mangle\n:PREROUTING ACCEPT [0:0]\n:TRELAY_PRE - [0:0]\n" +
      "-A PREROUTING -j TRELAY_PRE\nCOMMIT\n";
    // The scratch namespace (what `rules apply` would install) lists the same rules.
    const same = { "iptables-save": ok(save), "ip6tables-save": ok(""), unshare: ok(save) };
    const checks = rulesChecks(config, fakeHost({ run: same }), null);
    expect(statuses(checks).slice(0, 2)).toEqual([
      ["iptables chains TRELAY_*", "pass"],
      ["ip6tables chains TRELAY_*", "fail"],
    ]);
    expect(checks[1].detail).toBe("none of our chains exist");
    // It lists one rule more: ours differ from the config, named.
    const more = save.replace("COMMIT", "-A TRELAY_PRE -j RETURN\nCOMMIT");
    const differ = rulesChecks(config, fakeHost({ run: { ...same, unshare: ok(more) } }), null);
    expect(statuses(differ)[0]).toEqual(["iptables chains TRELAY_*", "fail"]);
    expect(differ[0].detail).toContain("-A TRELAY_PRE -j RETURN");
    // It cannot be built: said, never faked as a pass.
    const failed = { status: 1, stdout: "", stderr: "unshare: Operation not permitted" };
    const unbuilt = rulesChecks(config, fakeHost({ run: { ...same, unshare: failed } }), null);
    expect(statuses(unbuilt)[0]).toEqual(["iptables chains TRELAY_*", "warn"]);
    expect(unbuilt[0].detail).toStartWith("present; not compared: ");
  });
});

describe("ports", () => {
  const ss =
    'UNCONN 0 0 127.0.0.1:53 0.0.0.0:* users:(("dnsmasq",pid=7,fd=4))\n' +
    "UNCONN 0 0 [::]:5353 [::]:*\n" +
    "UNCONN 0 0 *:9000 *:*\n" +
    "UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:*\n";
  test("ss endpoints, and which sockets a listener would collide with", () => {
    expect(splitEndpoint("[::1]:53")).toEqual(["::1", 53]);
    expect(splitEndpoint("127.0.0.53%lo:53")).toEqual(["127.0.0.53", 53]);
    const want = (address: string, port: number) =>
      collisions(ss, { name: "x", protocol: "udp", address, port }).length;
    expect(want("127.0.0.1", 53)).toBe(1);
    expect(want("127.0.0.2", 53)).toBe(0);
    expect(want("0.0.0.0", 53)).toBe(2);
    expect(want("::1", 5353)).toBe(1);
    expect(want("198.18.0.1", 9000)).toBe(1);
  });
  test("free passes; held by a relay that answers passes; held by another fails", async () => {
    const taken = { "ss -Hlnup sport = :53": ok(ss) };
    const config = parseConfig({ ...RAW, metrics: { port: 0 } });
    expect(statuses(await ports(config, fakeHost()))).toEqual([
      ["port udp 127.0.0.1:53 (listener dns4)", "pass"],
      ["port udp [::1]:53 (listener dns6)", "pass"],
    ]);
    const relay = await ports(config, fakeHost({ run: taken, answers: true }));
    expect(relay[0].detail).toContain("a relay answers");
    const other = await ports(config, fakeHost({ run: taken, answers: false }));
    expect(other[0].status).toBe("fail");
    expect(other[0].detail).toContain("dnsmasq");
    const metrics = await ports(CONFIG, fakeHost());
    expect(metrics.map((c) => c.name)).toContain("port tcp 127.0.0.1:9477 (metrics)");
  });
});

describe("the report", () => {
  test("a well set-up host: every check passes; text and summary", async () => {
    const checks = await runDoctor(CONFIG, fakeHost(), { configPath: null, selfTest: false });
    expect(checks.filter((c) => c.status !== "pass")).toEqual([]);
    const text = formatText(checks);
    expect(text).toContain("PASS  kernel: nft tproxy + socket: ");
    expect(text.trimEnd().split("\n").pop()).toBe(`${checks.length} passed, 0 failed, 0 warnings`);
  });
  test("a failure prints its fix indented under it", () => {
    const checks: Check[] = [
      { name: "a", status: "pass", detail: "fine" },
      { name: "b", status: "fail", detail: "broken", fix: "mend it" },
      { name: "c", status: "warn", detail: "odd" },
    ];
    expect(formatText(checks)).toBe(
      "PASS  a: fine\nFAIL  b: broken\n      fix: mend it\nWARN  c: odd\n" +
        "1 passed, 1 failed, 1 warnings\n",
    );
    expect(summary([])).toBe("0 passed, 0 failed, 0 warnings");
  });
  test("the self-test's config: one UDP listener, this config's marks, no default paths", () => {
    const config: Config = parseConfig({ ...RAW, mark: 0x99, routeTable: 7 });
    const raw = selfTestConfig(config, "/tmp/x/control.sock");
    const parsed = parseConfig(raw);
    expect(parsed.listeners.map((l) => l.protocol)).toEqual(["udp"]);
    expect([parsed.mark, parsed.routeTable, parsed.metrics.port]).toEqual([0x99, 7, 0]);
    expect(parsed.control.socketPath).toBe("/tmp/x/control.sock");
    expect(nftRuleset(parsed)).toContain('iifname { "r0" }');
  });
});
