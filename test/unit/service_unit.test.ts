// The systemd unit of `relay service print` (src/cli/service.ts): what it grants (only
// CAP_NET_ADMIN), what it runs around the relay (check, rules apply, rules remove), what it
// sizes from the configuration, and that systemd itself accepts it: `systemd-analyze
// verify` on the rendered file. verify checks the syntax, every directive's name and value,
// and that each Exec binary exists and is executable; it does not check that User= exists
// (the unit names transparent-relay, a user this machine does not need to have).
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serviceUnit } from "../../src/cli/service.ts";
import { descriptorsWanted } from "../../src/config/limits.ts";
import { ConfigError, parseConfig } from "../../src/config/load.ts";
import { BUN, RELAY_MAIN } from "../lab/relay_process.ts";
import { skipped } from "../lab/skip_policy.ts";

const ROOT = join(import.meta.dir, "..", "..");
const dir = mkdtempSync(join(tmpdir(), "relay-service-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base: {
  checkout: string;
  configPath: string;
  user: string;
  group: string;
  node?: string;
} = {
  checkout: ROOT,
  configPath: "/etc/transparent-relay/config.json",
  user: "transparent-relay",
  group: "transparent-relay",
};
/** Ports above 1023 only: CAP_NET_ADMIN is all it needs. */
const HIGH = {
  listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
  intercept: [{ listener: "udp4", ports: ["1024-65535"] }],
};
const render = (raw: object = HIGH, options: Partial<typeof base> = {}) =>
  serviceUnit({ ...base, config: parseConfig(raw), ...options });
/** The values of `key=` lines, in order. */
const values = (unit: string, key: string) =>
  unit
    .split("\n")
    .filter((line) => line.startsWith(`${key}=`))
    .map((line) => line.slice(key.length + 1));

/** Runs the relay's CLI: `bun src/main.ts ...args`. */
const cli = (...args: string[]) =>
  spawnSync(BUN, [RELAY_MAIN, ...args], { encoding: "utf8", timeout: 30_000 });

/** systemd-analyze verify on `unit` written to a file named as installed. */
function verify(unit: string): { status: number | null; output: string } | null {
  const which = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
  const missing = which.error ? "systemd-analyze not found (Debian: systemd)" : null;
  if (skipped(missing, "systemd-analyze verify")) return null;
  const path = join(mkdtempSync(join(dir, "unit-")), "transparent-relay.service");
  writeFileSync(path, unit);
  const r = spawnSync("systemd-analyze", ["verify", path], { encoding: "utf8", timeout: 60_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe("relay service print: the systemd unit", () => {
  test("CAP_NET_ADMIN is the one capability, ambient, and nothing is gained by exec", () => {
    const unit = render();
    expect(values(unit, "User")).toEqual(["transparent-relay"]);
    expect(values(unit, "Group")).toEqual(["transparent-relay"]);
    expect(values(unit, "AmbientCapabilities")).toEqual(["CAP_NET_ADMIN"]);
    expect(values(unit, "CapabilityBoundingSet")).toEqual(["CAP_NET_ADMIN"]);
    expect(values(unit, "NoNewPrivileges")).toEqual(["yes"]);
    // Bun's JIT needs writable-then-executable memory.
    expect(values(unit, "MemoryDenyWriteExecute")).toEqual([]);
    expect(values(unit, "RestrictAddressFamilies")).toEqual([
      "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    ]);
    expect(values(unit, "ProtectSystem")).toEqual(["strict"]);
    expect(values(unit, "ProtectHome")).toEqual(["yes"]);
  });

  test("a rule that rejects UDP adds CAP_NET_RAW (the ICMP leaves on a raw socket)", () => {
    const rejecting = { ...HIGH, rules: [{ ports: [5353], action: "reject" }] };
    const unit = render(rejecting);
    expect(values(unit, "AmbientCapabilities")).toEqual(["CAP_NET_ADMIN CAP_NET_RAW"]);
    expect(values(unit, "CapabilityBoundingSet")).toEqual(["CAP_NET_ADMIN CAP_NET_RAW"]);
    expect(unit).toContain("# CAP_NET_RAW: a rule rejects UDP");
    // A TCP-only reject answers with a reset: no raw socket.
    const tcpOnly = { ...HIGH, rules: [{ protocol: "tcp", action: "reject" }] };
    expect(values(render(tcpOnly), "AmbientCapabilities")).toEqual(["CAP_NET_ADMIN"]);
  });

  test("a port below 1024 adds CAP_NET_BIND_SERVICE, and says why", () => {
    const both = ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"];
    const cases: Array<[object, string]> = [
      // The built-in configuration intercepts DNS and QUIC.
      [{}, "UDP intercept of port 53, whose replies leave from that port"],
      [{ ...HIGH, intercept: [{ listener: "udp4", ports: ["443-444"] }] }, "port 443"],
      [{ ...HIGH, listeners: [{ ...HIGH.listeners[0], port: 853 }] }, "listener udp4 on port 853"],
      [{ ...HIGH, metrics: { port: 99 } }, "metrics.port 99"],
    ];
    for (const [raw, why] of cases) {
      const unit = render(raw);
      expect(values(unit, "AmbientCapabilities")).toEqual(both);
      expect(values(unit, "CapabilityBoundingSet")).toEqual(both);
      expect(unit).toContain(`# CAP_NET_BIND_SERVICE: a port below 1024: `);
      expect(unit).toContain(why);
    }
    // TCP replies leave from the accepted socket: intercepting port 80 binds nothing.
    const tcp = {
      listeners: [{ name: "t", address: "127.0.0.1", port: 12346, protocol: "tcp" }],
      intercept: [{ listener: "t", ports: [80] }],
    };
    expect(values(render(tcp), "AmbientCapabilities")).toEqual(["CAP_NET_ADMIN"]);
  });

  test("checks the config, applies the rules, runs, and removes the rules after it stops", () => {
    const unit = render();
    const relay = `${join(ROOT, "node_modules/.bin/bun")} ${join(ROOT, "src/main.ts")}`;
    const config = "--config /etc/transparent-relay/config.json";
    expect(values(unit, "ExecStartPre")).toEqual([
      `${relay} --check-config ${config}`,
      `${relay} rules apply ${config}`,
    ]);
    expect(values(unit, "ExecStart")).toEqual([`${relay} ${config}`]);
    expect(values(unit, "ExecStopPost")).toEqual([`${relay} rules remove ${config}`]);
    expect(values(unit, "ExecReload")).toEqual(["/bin/kill -HUP $MAINPID"]);
    expect(values(unit, "Restart")).toEqual(["on-failure"]);
    expect(values(unit, "RestartPreventExitStatus")).toEqual(["2 77"]);
    expect(values(unit, "RuntimeDirectory")).toEqual(["transparent-relay"]);
  });

  test("rendered on Node.js: every command runs node with the bundle (docs/node.md)", () => {
    const unit = render(HIGH, { node: "/usr/bin/node" });
    const relay = `/usr/bin/node ${join(ROOT, "dist/node/main.js")}`;
    const config = "--config /etc/transparent-relay/config.json";
    expect(values(unit, "ExecStart")).toEqual([`${relay} ${config}`]);
    expect(values(unit, "ExecStopPost")).toEqual([`${relay} rules remove ${config}`]);
    expect(() => render(HIGH, { node: "relative/node" })).toThrow("the node binary");
  });

  test("LimitNOFILE is what the configuration's bounds want, rounded up, capped", () => {
    for (const raw of [
      {},
      { ...HIGH, udp: { sessionsMax: 1000 } },
      { listeners: [{ name: "t", address: "127.0.0.1", port: 1, protocol: "tcp" }] },
    ]) {
      const limit = Number(values(render(raw), "LimitNOFILE")[0]);
      const wanted = descriptorsWanted(parseConfig(raw));
      expect(limit).toBeGreaterThanOrEqual(wanted);
      expect(limit).toBeLessThan(wanted + 1024);
    }
    const huge = {
      listeners: [{ name: "t", address: "127.0.0.1", port: 1, protocol: "tcp" }],
      tcp: { connectionsMax: 1_000_000 },
    };
    expect(descriptorsWanted(parseConfig(huge))).toBeGreaterThan(1 << 20);
    expect(values(render(huge), "LimitNOFILE")).toEqual([`${1 << 20}`]);
  });

  test("the flow log's directory is writable: systemd's own under /var/log, else named", () => {
    const logs = render({ ...HIGH, flowLog: { path: "/var/log/transparent-relay/flows.log" } });
    expect(values(logs, "LogsDirectory")).toEqual(["transparent-relay"]);
    expect(values(logs, "ReadWritePaths")).toEqual([]);
    const srv = render({ ...HIGH, flowLog: { path: "/srv/relay/flows.log" } });
    expect(values(srv, "ReadWritePaths")).toEqual(["-/srv/relay"]);
    const socket = render({ ...HIGH, control: { socketPath: "/run/relay-b/control.sock" } });
    expect(values(socket, "RuntimeDirectory")).toEqual(["transparent-relay", "relay-b"]);
  });

  test("a checkout under /root or /home keeps ProtectHome read-only, not hidden", () => {
    expect(values(render({}, { checkout: "/root/relay" }), "ProtectHome")).toEqual(["read-only"]);
    expect(values(render({}, { checkout: "/opt/relay" }), "ProtectHome")).toEqual(["yes"]);
  });

  test("what a unit cannot carry is refused, naming the field", () => {
    const problems = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        if (err instanceof ConfigError) return err.problems;
        throw err;
      }
      return [];
    };
    expect(problems(() => render({}, { user: "root; rm" }))).toEqual([
      '--user "root; rm": not a user name',
    ]);
    expect(problems(() => render({}, { configPath: "/etc/my relay.json" }))[0]).toStartWith(
      '--config "/etc/my relay.json": must be an absolute path',
    );
    expect(problems(() => render({ ...HIGH, flowLog: { path: "flows.log" } }))[0]).toStartWith(
      'config.flowLog.path "flows.log": must be an absolute path',
    );
  });

  test("systemd-analyze verify accepts it (default and flow-log configurations)", () => {
    const flowLog = { flowLog: { path: "/var/log/transparent-relay/flows.log" } };
    for (const raw of [HIGH, {}, { ...HIGH, ...flowLog }]) {
      const r = verify(render(raw));
      if (r === null) return;
      expect(r).toEqual({ status: 0, output: "" });
    }
  });

  test("the command: renders for a config file; a bad config or argument exits 2", () => {
    const path = join(dir, "config.json");
    writeFileSync(path, JSON.stringify({ udp: { sessionsMax: 500 } }));
    const r = cli("service", "print", "--config", path, "--user", "relay");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(
      render({ udp: { sessionsMax: 500 } }, { configPath: path, user: "relay", group: "relay" }),
    );
    const missing = cli("service", "print", "--config", join(dir, "absent.json"));
    expect(missing.status).toBe(0);
    expect(missing.stderr).toContain("does not exist yet: sized for the defaults");
    writeFileSync(path, JSON.stringify({ udp: { sessionsMax: 3 } }));
    const bad = cli("service", "print", "--config", path);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("config.udp.sessionsMax");
    expect(cli("service", "print", "--user").status).toBe(2);
    expect(cli("service", "start").status).toBe(2);
  });
});
