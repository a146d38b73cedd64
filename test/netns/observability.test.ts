// End-to-end (issue 13, acceptance 1): after known traffic, the four ways of seeing the
// relay agree with what was sent and with each other: the Prometheus scrape, `relay
// stats`, `relay sessions` and the flow log; and each kind of drop sent appears under
// its own reason.
//
//   client ns ──veth── router ns (relay: /metrics, control socket, flow log) ──veth── server ns
//   198.18.0.2          198.18.0.1 | 198.18.1.1                                   198.18.1.2 echo
//   2001:2:0:1::2
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { parseSamples, sampleValue } from "../lab/exposition.ts";
import { LAB } from "../lab/netns.ts";
import { BUN, RELAY_BIN, RELAY_MAIN } from "../lab/relay_process.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab, ROOT } from "./harness.ts";

const PEERS = join(import.meta.dir, "security_peers.py");
const PORT = 7002;
/** The known traffic: flows x packets of size bytes, each echoed once. */
const SENT = { flows: 4, packets: 5, size: 120 };
const DATAGRAMS = SENT.flows * SENT.packets;
/** Drops of three kinds, each a known number of datagrams. */
const DROPS = { oversized: 2, to_listener: 1, family_mismatch: 1 };

const skip = labSkipReason();
if (!skip) {
  describe("metrics, stats, sessions and the flow log agree", () => {
    let env: RelayLab;
    let flowLogPath: string;

    /** A CLI command with --json: its output's JSON lines. */
    const cli = (args: string[]): any[] =>
      env.lab
        .exec(env.lab.router, [
          RELAY_BIN,
          RELAY_MAIN,
          ...args,
          "--control",
          env.controlPath,
          "--json",
        ])
        .stdout.split("\n")
        .filter((l) => l !== "")
        .map((l) => JSON.parse(l));
    const scrape = () =>
      parseSamples(
        env.lab.exec(env.lab.router, [
          "curl",
          "-sf",
          "--max-time",
          "10",
          "http://127.0.0.1:9477/metrics",
        ]).stdout,
      );
    const flowRecords = (): any[] => {
      const r = spawnSync(
        BUN,
        [join(ROOT, "src", "main.ts"), "log", "--file", flowLogPath, "--json"],
        {
          encoding: "utf8",
          timeout: 30_000,
        },
      );
      return r.stdout
        .split("\n")
        .filter((l) => l !== "")
        .map((l) => JSON.parse(l));
    };

    beforeAll(async () => {
      env = new RelayLab();
      flowLogPath = join(env.controlPath, "..", "flows.log");
      const { lab } = env;
      env.spawnEcho(`${LAB.server4}:${PORT}`);
      await env.startRelay({
        listeners: [
          { name: "echo4", address: "127.0.0.1", port: PORT },
          { name: "echo6", address: "::1", port: PORT },
        ],
        intercept: [
          { listener: "echo4", ports: [PORT] },
          { listener: "echo6", ports: [PORT] },
        ],
        // Sessions end (and their records reach the flow log) soon after the traffic.
        udp: { datagramBytesMax: 2048, idleTimeoutMs: 4000, idleTimeoutMsByPort: {} },
        flowLog: { path: flowLogPath },
      });
      await lab.waitForUdpPort(lab.server, PORT);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("known traffic and drops: every view says the same", async () => {
      const { lab } = env;
      const r = env.probe([`${LAB.server4}:${PORT}`], SENT);
      expect(r).toMatchObject({ received: DATAGRAMS, lost: 0, wrongSource: 0 });
      // Drops: too large for datagramBytesMax; straight to the listener; a crafted IPv6
      // frame to a v4-mapped address.
      env.python(
        lab.client,
        `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(${DROPS.oversized}): s.sendto(b"x" * 3000, ("${LAB.server4}", ${PORT}))`,
      );
      lab.exec(lab.router, ["python3", PEERS, "send", "127.0.0.1", `${PORT}`, "1"]);
      const mac = lab.exec(lab.router, ["cat", `/sys/class/net/${LAB.routerClientIf}/address`]);
      lab.exec(lab.client, [
        "python3",
        PEERS,
        "craft6",
        LAB.clientIf,
        mac.stdout.trim(),
        LAB.client6,
        "::ffff:127.0.0.1",
        `${PORT}`,
      ]);
      const dropped = Object.values(DROPS).reduce((a, b) => a + b, 0);

      // relay sessions, while the flows are open: each flow with its own packets and bytes.
      const udpSessions = cli([
        "sessions",
        "--target",
        `${LAB.server4}:${PORT}`,
        "--limit",
        "50",
      ]).filter((s) => s.transport === "udp" && s.target === `${LAB.server4}:${PORT}`);
      expect(udpSessions).toHaveLength(SENT.flows);
      for (const s of udpSessions) {
        expect(s).toMatchObject({
          packetsToTarget: SENT.packets,
          bytesToTarget: SENT.packets * SENT.size,
          packetsToClient: SENT.packets,
          bytesToClient: SENT.packets * SENT.size,
        });
      }

      // relay stats, once every datagram sent has been read and counted.
      const stats = await waitFor(
        () => cli(["stats"])[0],
        (s) => s.udp.packetsFromClients >= DATAGRAMS + dropped,
        { what: "the relay to count every datagram sent", timeoutMs: 10_000 },
      );
      const u = stats.udp;
      expect(u.packetsFromClients).toBe(DATAGRAMS + dropped);
      expect(u.packetsToTargets).toBe(DATAGRAMS);
      expect(u.packetsFromTargets).toBe(DATAGRAMS);
      expect(u.packetsToClients).toBe(DATAGRAMS);
      expect(u.bytesToTargets).toBe(DATAGRAMS * SENT.size);
      expect(u.bytesToClients).toBe(DATAGRAMS * SENT.size);
      expect(u.sessionsCreated).toBe(SENT.flows);
      expect(u.droppedOversized).toBe(DROPS.oversized);
      expect(u.droppedToListener).toBe(DROPS.to_listener);
      expect(u.droppedFamilyMismatch).toBe(DROPS.family_mismatch);

      // The scrape says the same, each drop under its reason.
      const samples = scrape();
      const value = (name: string, labels: Record<string, string> = {}) =>
        Number(sampleValue(samples, name, labels));
      const udp = (direction: string) => ({ protocol: "udp", direction });
      expect(value("relay_packets_total", udp("from_clients"))).toBe(u.packetsFromClients);
      expect(value("relay_packets_total", udp("to_targets"))).toBe(u.packetsToTargets);
      expect(value("relay_packets_total", udp("from_targets"))).toBe(u.packetsFromTargets);
      expect(value("relay_packets_total", udp("to_clients"))).toBe(u.packetsToClients);
      expect(value("relay_bytes_total", udp("to_targets"))).toBe(u.bytesToTargets);
      expect(value("relay_bytes_total", udp("to_clients"))).toBe(u.bytesToClients);
      expect(value("relay_sessions_created_total", { protocol: "udp" })).toBe(SENT.flows);
      for (const [reason, count] of Object.entries(DROPS)) {
        expect([reason, value("relay_udp_dropped_total", { reason })]).toEqual([reason, count]);
      }

      // The flow log: one record per session once they expire, the same packets and bytes.
      const records = await waitFor(flowRecords, (rs) => rs.length >= SENT.flows, {
        what: `${SENT.flows} flow records`,
        timeoutMs: 20_000,
        intervalMs: 250,
      });
      expect(records).toHaveLength(SENT.flows);
      for (const rec of records) {
        expect(rec).toMatchObject({
          protocol: "udp",
          target: LAB.server4,
          targetPort: PORT,
          packetsToTarget: SENT.packets,
          bytesToTarget: SENT.packets * SENT.size,
          packetsToClient: SENT.packets,
          bytesToClient: SENT.packets * SENT.size,
          end: "idle",
        });
      }
      const scraped = scrape();
      expect(Number(sampleValue(scraped, "relay_flow_log_records_total"))).toBe(SENT.flows);
    }, 90_000);
  });
}
