// Reload end to end (issue 11): a relay with firewall.manage true, a UDP session and a
// TCP connection exchanging data all along, and the config file rewritten under it:
// (a) live changes (one more intercepted port, an idle timeout, a per-client bound) are
// applied with SIGHUP and nothing open is dropped, and the new port is relayed; (b) an
// invalid file is refused, naming the field, and the old config goes on; (c) a changed
// listener port is refused as needing a restart (`relay reload`), nothing applied. Then
// the host rules: removed at SIGTERM, left by kill -9, replaced by the next start,
// removed on a data-path failure (exit 70).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { JsonLinesProcess } from "../lab/json_lines.ts";
import { LAB } from "../lab/netns.ts";
import { RELAY_MAIN, RelayProcess, RELAY_BIN, withControlSocket } from "../lab/relay_process.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, ROOT, RelayLab } from "./harness.ts";

const FLOWS = join(import.meta.dir, "reload_flows.py");
const PEERS = join(import.meta.dir, "tcp_peers.py");
const PORT = { udpA: 7101, udpC: 7103, tcpB: 8101 } as const;
const TABLE = "transparent_relay";
/** The server sees this address on relayed flows (the relay's upstream), the client's otherwise. */
const RELAYED = LAB.routerServer4;

const skip = labSkipReason();
// Both UDP data planes: the Worker gets the new config as a message, the callback plane
// on the main thread between two of its rounds.
for (const dataPlane of skip ? [] : (["worker", "callback"] as const)) {
  describe(`reload (udp.dataPlane ${dataPlane})`, () => {
    let env: RelayLab;
    let relay: RelayProcess;
    let flows: JsonLinesProcess;
    let configPath: string;
    const base = () => ({
      listeners: [
        { name: "u4", address: "127.0.0.1", port: 12345 },
        { name: "t4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
      ],
      intercept: [
        { listener: "u4", ports: [PORT.udpA] as number[] },
        { listener: "t4", ports: [PORT.tcpB] },
      ],
      udp: { sessionsMax: 1024, sessionsPerClientMax: 64, idleTimeoutMs: 60_000, dataPlane },
      tcp: { connectionsMax: 64 },
      firewall: { manage: true },
      metrics: { port: 0 },
      control: { socketPath: env.controlPath },
    });
    // Through withControlSocket, as every lab config: the RELAY_* data-plane variables
    // reach this file too, so the relay reads it (not a copy) at start and at each reload.
    const writeConfig = (raw: object) =>
      writeFileSync(configPath, JSON.stringify(withControlSocket(raw, env.controlPath)));
    const startRelay = async (prefix: string[] = []) => {
      relay = await RelayProcess.start(env.lab, configPath, 20_000, prefix);
      env.relay = relay;
      return relay;
    };
    const tableListed = () =>
      env.lab.exec(env.lab.router, ["nft", "list", "table", "inet", TABLE], undefined, true);
    /** A new UDP flow (a fresh socket) to the server's port: who the server saw, or null. */
    const udpOnce = (port: number): string | null => {
      const code = [
        "import socket",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "s.settimeout(2)",
        `s.sendto(b'once', ('${LAB.server4}', ${port}))`,
        "try: print(s.recv(2048).split(b'|')[0].decode())",
        "except socket.timeout: print('timeout')",
      ].join("\n");
      const seen = env.python(env.lab.client, code).stdout.trim();
      return seen === "timeout" ? null : seen.split(":")[0];
    };
    /** Waits for `rounds` more rounds of the long-lived flows, every one of them intact. */
    const flowsKeepWorking = async (rounds: number) => {
      const from = flows.lines.length;
      await flows.waitFor((l) => l.n !== undefined && flows.lines.length - from >= rounds, 30_000);
      const recent = flows.lines.slice(from).filter((l) => l.n !== undefined);
      expect(recent.filter((l) => l.tcp !== true)).toEqual([]);
      expect(recent.filter((l) => l.udp === null).length).toBeLessThanOrEqual(0);
      expect(new Set(recent.map((l) => l.udp.split(":")[0]))).toEqual(new Set([RELAYED]));
    };
    const reloads = async () => (await relay.metrics()).config.reloads;
    const waitForReloads = (result: "applied" | "refused" | "invalid", count: number) =>
      waitFor(reloads, (r) => r[result] >= count, {
        what: `${count} reload(s) ${result}`,
        timeoutMs: 20_000,
        intervalMs: 200,
      });
    /** The flows' UDP session in the relay's snapshot. */
    const flowSession = (snapshot: any, source: number) =>
      snapshot.sessions.find(
        (s: any) => s.client === `${LAB.client4}:${source}` && s.target.endsWith(`:${PORT.udpA}`),
      );

    beforeAll(async () => {
      env = new RelayLab();
      configPath = join(env.controlPath, "..", "reload.json");
      const { lab } = env;
      const echo = new JsonLinesProcess(
        "udp_echo",
        env.spawnEcho(
          "--stamp",
          `${LAB.server4}:${PORT.udpA}`,
          `${LAB.server4}:${PORT.udpC}`,
        ) as Subprocess<"ignore", "pipe", "pipe">,
      );
      const peers = new JsonLinesProcess(
        "tcp_peers",
        env.spawn(lab.server, ["python3", PEERS, `${PORT.tcpB}:peer`]) as Subprocess<
          "ignore",
          "pipe",
          "pipe"
        >,
      );
      await echo.waitFor((l) => l.event === "ready", 10_000);
      await peers.waitFor((l) => l.event === "ready", 10_000);
      // The lab's policy routing is not installed here: firewall.manage does it all.
      writeConfig(base());
      await startRelay();
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("firewall.manage: the host rules are in place once the relay is ready", () => {
      expect(tableListed().status).toBe(0);
      const rules = env.lab.exec(env.lab.router, ["ip", "rule", "list"]).stdout;
      expect(rules).toContain("lookup 100");
    });

    // (Port A's relaying shows in the long-lived flows: a session of its own here would
    // count against the client's bound below.)
    test("before any reload: port C is not intercepted (routed past the relay)", () => {
      expect(udpOnce(PORT.udpC)).toBe(LAB.client4);
    });

    test("(a) live changes: applied, the open flows go on, the new port is relayed", async () => {
      flows = new JsonLinesProcess(
        "flows",
        env.spawn(env.lab.client, [
          "python3",
          FLOWS,
          LAB.server4,
          `${PORT.udpA}`,
          `${PORT.tcpB}`,
        ]) as Subprocess<"ignore", "pipe", "pipe">,
      );
      const ready = await flows.waitFor((l) => l.event === "ready", 10_000);
      expect(ready.peer).toStartWith(`PEER ${RELAYED} `);
      await flowsKeepWorking(5);
      const before = await relay.metrics();
      const session = flowSession(before, ready.udpSource);
      expect(session).toBeDefined();

      const next = base();
      next.intercept[0].ports = [PORT.udpA, PORT.udpC];
      next.udp.idleTimeoutMs = 30_000;
      next.udp.sessionsPerClientMax = 3;
      writeConfig(next);
      relay.proc.kill("SIGHUP");
      await waitForReloads("applied", 1);
      expect(relay.stderr).toContain(
        `reload: applied intercept[0].ports [${PORT.udpA}] -> [${PORT.udpA},${PORT.udpC}], ` +
          "udp.sessionsPerClientMax 64 -> 3, udp.idleTimeoutMs 60000 -> 30000 (generation 2)",
      );

      await flowsKeepWorking(10);
      const after = await relay.metrics();
      expect(after.config.generation).toBe(2);
      // The same session: older now, more datagrams, none ended or dropped for a bound.
      const same = flowSession(after, ready.udpSource);
      expect(same).toBeDefined();
      expect(same.ageMs).toBeGreaterThan(session.ageMs);
      expect(same.packetsToTarget).toBeGreaterThan(session.packetsToTarget);
      for (const counter of [
        "sessionsExpired",
        "sessionsEvicted",
        "droppedClientSessionsLimit",
        "droppedClientReplySocketsLimit",
      ]) {
        expect(`${counter} ${after.udp[counter]}`).toBe(`${counter} ${before.udp[counter]}`);
      }
      // The TCP connection was never closed.
      expect(after.tcp.closed).toBe(before.tcp.closed);
      expect(after.tcp.connectionsActive).toBe(1);

      // A new flow to port C goes through the relay now.
      expect(udpOnce(PORT.udpC)).toBe(RELAYED);
    }, 90_000);

    test("(b) an invalid file: refused, naming the field; the old config goes on", async () => {
      const broken = base();
      broken.intercept[0].ports = [PORT.udpA, PORT.udpC];
      broken.udp.idleTimeoutMs = -1;
      writeConfig(broken);
      relay.proc.kill("SIGHUP");
      await waitForReloads("invalid", 1);
      expect(relay.stderr).toContain("reload refused: invalid configuration");
      expect(relay.stderr).toContain("config.udp.idleTimeoutMs:");
      await flowsKeepWorking(5);
      // Port C is still intercepted (the client's 3rd session: the bound is 3).
      expect(udpOnce(PORT.udpC)).toBe(RELAYED);
      // The lowered per-client bound is live: a 4th new flow is refused by the relay.
      const before = (await relay.metrics()).udp.droppedClientSessionsLimit;
      expect(udpOnce(PORT.udpC)).toBeNull();
      const after = await relay.metrics();
      expect(after.udp.droppedClientSessionsLimit).toBe(before + 1);
      expect(after.config.generation).toBe(2);
    }, 60_000);

    test("(c) a listener's port: `relay reload` refuses it as needing a restart", async () => {
      const moved = base();
      moved.intercept[0].ports = [PORT.udpA, PORT.udpC];
      moved.udp.sessionsPerClientMax = 3;
      moved.udp.idleTimeoutMs = 5_000; // would be live, but nothing is applied
      moved.listeners[0].port = 12355;
      writeConfig(moved);
      const cli = spawnSync(RELAY_BIN, [RELAY_MAIN, "reload", "--control", env.controlPath], {
        cwd: ROOT,
        encoding: "utf8",
        timeout: 30_000,
      });
      expect(cli.stdout).toContain(
        "reload refused: listeners[0].port changed (needs a restart); nothing applied",
      );
      expect(cli.status).toBe(1);
      await waitForReloads("refused", 1);
      expect(relay.stderr).toContain("reload refused: listeners[0].port changed");
      const now = await relay.metrics();
      expect(now.config).toEqual({
        generation: 2,
        reloads: { applied: 1, refused: 1, invalid: 1 },
      });
      await flowsKeepWorking(5);
      flows.proc.kill(9);
    }, 60_000);

    test("the rules go at SIGTERM, stay after kill -9, and a restart replaces them", async () => {
      writeConfig(base());
      const { exitCode } = await relay.stop();
      env.relay = null;
      expect(exitCode).toBe(0);
      expect(relay.stderr).toContain("firewall.manage: removed nft table inet transparent_relay");
      expect(tableListed().status).not.toBe(0);
      expect(env.lab.exec(env.lab.router, ["ip", "rule", "list"]).stdout).not.toContain(
        "lookup 100",
      );

      await startRelay();
      expect(tableListed().status).toBe(0);
      relay.proc.kill(9);
      await relay.proc.exited;
      env.relay = null;
      expect(tableListed().status).toBe(0); // a crash leaves them

      await startRelay(); // applies over the leftovers
      expect(tableListed().status).toBe(0);
      expect(udpOnce(PORT.udpA)).toBe(RELAYED);
      const rules = env.lab.exec(env.lab.router, ["ip", "rule", "list"]).stdout;
      expect(rules.match(/lookup 100/g)).toHaveLength(1);
    }, 60_000);

    test("a data-path failure (exit 70) removes the rules as it ends", async () => {
      const { exitCode } = await relay.stop();
      env.relay = null;
      expect(exitCode).toBe(0);
      // The first datagram from a client throws on the data path, as a bug would.
      await startRelay(["env", "RELAY_TEST_FAULTS=data_path_throw_after=0"]);
      expect(tableListed().status).toBe(0);
      udpOnce(PORT.udpA);
      expect(await relay.proc.exited).toBe(70);
      env.relay = null;
      expect(relay.stderr).toContain("firewall.manage: removed nft table inet transparent_relay");
      expect(tableListed().status).not.toBe(0);
    }, 60_000);
  });
}
