// `relay doctor` run inside a throwaway namespace (`ip netns exec`), as a user runs it on
// a gateway: with the rules applied by `relay rules apply` and the sysctls set right,
// every check passes, the live self-test included; then each breakage on its own (a
// route deleted, a rule deleted, strict rp_filter, a low descriptor limit) fails exactly
// its check, with its fix, and doctor exits 1.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Check } from "../../src/doctor/check.ts";
import { JsonLinesProcess } from "../lab/json_lines.ts";
import { labUnavailableReason, run } from "../lab/netns.ts";
import { RELAY_BIN, RELAY_MAIN } from "../lab/relay_process.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason } from "./harness.ts";

const skip = labSkipReason();
if (!skip) {
  describe("relay doctor", () => {
    const ns = `trl-doctor-${randomBytes(4).toString("hex")}`;
    const dir = mkdtempSync(join(tmpdir(), "relay-doctor-test-"));
    const configPath = join(dir, "config.json");
    const CONFIG = {
      listeners: [
        { name: "dns4", address: "127.0.0.1", port: 5300 },
        { name: "dns6", address: "::1", port: 5300 },
      ],
      intercept: [
        { listener: "dns4", ports: [53], interfaces: ["lan0"] },
        { listener: "dns6", ports: [53], interfaces: ["lan0"] },
      ],
      udp: { sessionsMax: 1000, replySocketsMax: 100 },
      control: { socketPath: join(dir, "control.sock") },
      metrics: { port: 0 },
    };
    const inNs = (argv: string[], allowFail = false) =>
      run(["ip", "netns", "exec", ns, ...argv], undefined, allowFail);
    const applyRules = () =>
      inNs([RELAY_BIN, RELAY_MAIN, "rules", "apply", "--config", configPath]);
    /** Runs doctor in the namespace (prefix: e.g. prlimit); its exit status and checks. */
    const doctor = (options: { selfTest?: boolean; prefix?: string[] } = {}) => {
      const argv = [RELAY_BIN, RELAY_MAIN, "doctor", "--config", configPath, "--json"];
      if (!options.selfTest) argv.push("--no-self-test");
      const r = inNs([...(options.prefix ?? []), ...argv], true);
      let checks: Check[];
      try {
        checks = JSON.parse(r.stdout);
      } catch {
        throw new Error(`doctor printed no JSON (exit ${r.status}): ${r.stdout}${r.stderr}`);
      }
      return { status: r.status, checks, stderr: r.stderr };
    };
    const notPassing = (checks: Check[]) => checks.filter((c) => c.status !== "pass");

    beforeAll(() => {
      const reason = labUnavailableReason();
      if (reason) throw new Error(`end-to-end lab unavailable: ${reason}`);
      run(["ip", "netns", "add", ns]);
      inNs(["ip", "link", "set", "lo", "up"]);
      // The intercept interface: one end of a veth pair inside the namespace.
      inNs(["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p"]);
      inNs(["ip", "link", "set", "lan0", "up"]);
      for (const sysctl of [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.lan0.rp_filter=0",
        "net.ipv4.conf.all.route_localnet=0",
        "net.ipv4.conf.lan0.route_localnet=0",
      ]) {
        inNs(["sysctl", "-qw", sysctl]);
      }
      writeFileSync(configPath, JSON.stringify(CONFIG));
      applyRules();
    });

    afterEach(() => {
      // Every test starts from the good state: the rules re-applied, rp_filter off.
      applyRules();
      inNs(["sysctl", "-qw", "net.ipv4.conf.lan0.rp_filter=0"]);
    });

    afterAll(() => {
      const pids = run(["ip", "netns", "pids", ns], undefined, true).stdout.trim();
      if (pids) run(["kill", "-9", ...pids.split(/\s+/)], undefined, true);
      run(["ip", "netns", "del", ns], undefined, true);
      rmSync(dir, { recursive: true, force: true });
    });

    test("set up right: every check passes, the live self-test included; exit 0", () => {
      const r = doctor({ selfTest: true });
      expect(notPassing(r.checks)).toEqual([]);
      expect(r.status).toBe(0);
      expect(r.checks.map((c) => c.name)).toEqual([
        "kernel: nft tproxy + socket",
        "kernel: policy routing",
        "capabilities",
        "descriptors (RLIMIT_NOFILE)",
        "sysctl net.ipv4.ip_forward",
        "sysctl net.ipv6.conf.all.forwarding",
        "sysctl rp_filter lan0",
        "sysctl route_localnet",
        "nft table inet transparent_relay",
        "ip rule IPv4",
        "ip route IPv4 table 100",
        "ip rule IPv6",
        "ip route IPv6 table 100",
        "port udp 127.0.0.1:5300 (listener dns4)",
        "port udp [::1]:5300 (listener dns6)",
        "self-test",
      ]);
      expect(r.stderr).toContain(`${r.checks.length} passed, 0 failed, 0 warnings`);
      // The self-test's namespaces are gone.
      expect(run(["ip", "netns", "list"]).stdout).not.toContain("trl-doc-");
    });

    test("the text report: one line per check and the summary", () => {
      const r = inNs([RELAY_BIN, RELAY_MAIN, "doctor", "--config", configPath, "--no-self-test"]);
      const lines = r.stdout.trimEnd().split("\n");
      expect(lines[0]).toStartWith("PASS  kernel: nft tproxy + socket: ");
      expect(lines.at(-1)).toBe(`${lines.length - 1} passed, 0 failed, 0 warnings`);
    });

    const fails = (checks: Check[]) =>
      notPassing(checks).map((c) => ({ name: c.name, status: c.status, fix: c.fix }));
    const rulesFix = `bun run relay rules apply --config ${configPath}`;

    test("a missing route: that check fails with the fix, exit 1", () => {
      inNs(["ip", "-4", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", "100"]);
      const r = doctor();
      expect(fails(r.checks)).toEqual([
        { name: "ip route IPv4 table 100", status: "fail", fix: rulesFix },
      ]);
      expect(r.status).toBe(1);
    });

    test("a missing rule: that check fails with the fix, exit 1", () => {
      inNs(["ip", "-6", "rule", "del", "fwmark", "0x1", "lookup", "100", "priority", "32000"]);
      const r = doctor();
      expect(fails(r.checks)).toEqual([{ name: "ip rule IPv6", status: "fail", fix: rulesFix }]);
      expect(r.checks.find((c) => c.name === "ip rule IPv6")?.detail).toBe(
        "missing: ip -6 rule fwmark 0x1 lookup 100 priority 32000",
      );
      expect(r.status).toBe(1);
    });

    test("a rule of ours changed by hand: the table check names the difference", () => {
      inNs([
        "nft",
        "add",
        "rule",
        "inet",
        "transparent_relay",
        "prerouting",
        "udp",
        "dport",
        "9",
        "drop",
      ]);
      const r = doctor();
      expect(fails(r.checks)).toEqual([
        { name: "nft table inet transparent_relay", status: "fail", fix: rulesFix },
      ]);
      expect(r.checks.find((c) => c.status === "fail")?.detail).toBe(
        'not from this config "udp dport 9 drop"',
      );
    });

    test("rp_filter=1 on the intercept interface: fails with the sysctl to set, exit 1", () => {
      inNs(["sysctl", "-qw", "net.ipv4.conf.lan0.rp_filter=1"]);
      const r = doctor();
      expect(notPassing(r.checks).map((c) => [c.name, c.status])).toEqual([
        ["sysctl rp_filter lan0", "fail"],
      ]);
      expect(r.checks.find((c) => c.status === "fail")?.fix).toStartWith(
        "sysctl -w net.ipv4.conf.lan0.rp_filter=2",
      );
      expect(r.status).toBe(1);
    });

    test("a low descriptor limit (prlimit 64:64): fails naming the need and the fix", () => {
      const r = doctor({ prefix: ["prlimit", "--nofile=64:64", "--"] });
      const failed = notPassing(r.checks);
      expect(failed.map((c) => [c.name, c.status])).toEqual([
        ["descriptors (RLIMIT_NOFILE)", "fail"],
      ]);
      // 256 reserved + 2 listeners + 1000 sessions + 100 reply sockets.
      expect(failed[0].detail).toContain("soft 64, hard 64; the configured bounds need 1358");
      expect(failed[0].fix).toContain("LimitNOFILE=1358");
      expect(r.status).toBe(1);
    });

    test("a listener's port held by another process fails; held by the relay passes", async () => {
      const spawn = (argv: string[]) =>
        new JsonLinesProcess(
          argv[0],
          Bun.spawn(["ip", "netns", "exec", ns, ...argv], {
            stdin: "ignore",
            stdout: "pipe",
            stderr: "pipe",
          }),
        );
      const holder = spawn([
        "python3",
        "-c",
        "import json, socket, time\n" +
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" +
          "s.bind(('127.0.0.1', 5300))\n" +
          "print(json.dumps({'event': 'ready'}), flush=True)\n" +
          "time.sleep(60)",
      ]);
      try {
        await holder.waitFor((l) => l.event === "ready", 10_000);
        const r = doctor();
        expect(notPassing(r.checks).map((c) => [c.name, c.status])).toEqual([
          ["port udp 127.0.0.1:5300 (listener dns4)", "fail"],
        ]);
        expect(r.checks.find((c) => c.status === "fail")?.detail).toContain("python3");
      } finally {
        holder.proc.kill("SIGKILL");
        await holder.proc.exited;
      }
      const relay = spawn([RELAY_BIN, RELAY_MAIN, "--config", configPath]);
      try {
        await relay.waitFor((l) => l.event === "ready", 30_000);
        // Polled: the relay is ready, but a loaded machine may be slow to answer doctor.
        const r = await waitFor(
          () => doctor(),
          (d) => d.status === 0,
          { what: "doctor to pass with the relay running", timeoutMs: 30_000, intervalMs: 500 },
        );
        const port = r.checks.find((c) => c.name === "port udp 127.0.0.1:5300 (listener dns4)");
        expect(port?.detail).toContain("a relay answers");
      } finally {
        relay.proc.kill("SIGTERM");
        await relay.proc.exited;
      }
    });

    test("iptables backend: our chains compared with the config; a missing one fails", () => {
      const ipt = join(dir, "iptables.json");
      writeFileSync(ipt, JSON.stringify({ ...CONFIG, firewall: { backend: "iptables" } }));
      const ipDoctor = () => {
        const r = inNs(
          [RELAY_BIN, RELAY_MAIN, "doctor", "--config", ipt, "--json", "--no-self-test"],
          true,
        );
        return { status: r.status, checks: JSON.parse(r.stdout) as Check[] };
      };
      inNs([RELAY_BIN, RELAY_MAIN, "rules", "remove", "--config", configPath]);
      inNs([RELAY_BIN, RELAY_MAIN, "rules", "apply", "--config", ipt]);
      try {
        const good = ipDoctor();
        expect(notPassing(good.checks)).toEqual([]);
        expect(good.checks.map((c) => c.name)).toContain("iptables chains TRELAY_*");
        expect(good.checks.map((c) => c.name)).toContain("ip6tables chains TRELAY_*");
        expect(good.status).toBe(0);
        // A rule of ours deleted by hand: named, with the fix.
        inNs(["iptables", "-t", "mangle", "-F", "TRELAY_DIVERT"]);
        const bad = ipDoctor();
        expect(notPassing(bad.checks).map((c) => [c.name, c.status, c.fix])).toEqual([
          ["iptables chains TRELAY_*", "fail", `bun run relay rules apply --config ${ipt}`],
        ]);
        expect(bad.status).toBe(1);
      } finally {
        inNs([RELAY_BIN, RELAY_MAIN, "rules", "remove", "--config", ipt]);
      }
    });

    test("bad arguments or configuration: exit 2", () => {
      expect(inNs([RELAY_BIN, RELAY_MAIN, "doctor", "--bogus"], true).status).toBe(2);
      const bad = join(dir, "bad.json");
      writeFileSync(bad, JSON.stringify({ udp: { sessionsMax: 3 } }));
      const r = inNs([RELAY_BIN, RELAY_MAIN, "doctor", "--config", bad], true);
      expect([r.status, r.stderr]).toEqual([2, expect.stringContaining("udp.sessionsMax")]);
    });
  });
}
