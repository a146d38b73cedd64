// End-to-end: the control socket of a relay carrying known traffic, asked with the real
// CLI (`relay stats`, `relay sessions`, `relay top` in a pseudo-terminal).
//
//   client ns ──veth── router ns (relay + nft tproxy; the CLI beside it) ──veth── server ns
//   198.18.0.2          r0 198.18.0.1 | r1 198.18.1.1                       198.18.1.2
//                       control socket: a file in the test's temp dir        UDP echo :7001,:7002
//
// What the CLI reports must be exactly what was sent: every datagram of the probes is
// echoed (the probes check it), so each counter is known to the packet and the byte.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { LAB, run } from "../lab/netns.ts";
import { RELAY_MAIN, RELAY_BIN } from "../lab/relay_process.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const S4 = LAB.server4;
const CONFIG = {
  listeners: [
    { name: "udp4", address: "127.0.0.1", port: 12345 },
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
  ],
  intercept: [
    { listener: "udp4", ports: [7001, 7002] },
    { listener: "tcp4", ports: [8080] },
  ],
  // Nothing expires while the test reads the sessions, however slow the machine.
  udp: { idleTimeoutMs: 600_000, idleTimeoutMsByPort: {} },
};

/** The known traffic: [target, flows, packets per flow, bytes per datagram]. */
const TRAFFIC: Array<[string, number, number, number]> = [
  [`${S4}:7001`, 3, 4, 100],
  [`${S4}:7002`, 1, 10, 300],
  [`${S4}:7002`, 1, 6, 300],
  [`${S4}:7002`, 1, 2, 300],
];
const PACKETS = TRAFFIC.reduce((n, [, flows, packets]) => n + flows * packets, 0); // 30
const BYTES = TRAFFIC.reduce((n, [, flows, packets, size]) => n + flows * packets * size, 0);
const FLOWS = TRAFFIC.reduce((n, [, flows]) => n + flows, 0); // 6

const skip = labSkipReason();
if (!skip) {
  describe("control socket: relay stats, sessions, top", () => {
    let env: RelayLab;

    /** `bun run relay ARGS` in the router namespace, beside the relay. */
    const cli = (args: string[], allowFail = false) =>
      env.lab.exec(
        env.lab.router,
        [RELAY_BIN, RELAY_MAIN, ...args, "--control", env.controlPath],
        undefined,
        allowFail,
      );

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      env.spawnEcho(`${S4}:7001`, `${S4}:7002`);
      await env.startRelay(CONFIG);
      await lab.waitForUdpPort(lab.server, 7001);
      await lab.waitForUdpPort(lab.server, 7002);
      lab.warmNeighbours();
      for (const [target, flows, packets, size] of TRAFFIC) {
        const r = env.probe([target], { flows, packets, size });
        expect(r).toMatchObject({ received: flows * packets, lost: 0, wrongSource: 0 });
      }
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("the socket is the test's own, mode 0600", () => {
      expect(statSync(env.controlPath).isSocket()).toBe(true);
      expect(statSync(env.controlPath).mode & 0o777).toBe(0o600);
    });

    test("relay stats reports exactly the packets, bytes and sessions sent", () => {
      const stats = JSON.parse(cli(["stats", "--json"]).stdout);
      expect(stats.udp).toMatchObject({
        packetsFromClients: PACKETS,
        packetsToTargets: PACKETS,
        packetsFromTargets: PACKETS,
        packetsToClients: PACKETS,
        bytesFromClients: BYTES,
        bytesToTargets: BYTES,
        bytesFromTargets: BYTES,
        bytesToClients: BYTES,
        sessionsCreated: FLOWS,
        sessionsActive: FLOWS,
      });
      expect(stats.tcp).toMatchObject({ accepted: 0, connectionsActive: 0 });
      expect(stats.uptimeMs).toBeGreaterThan(0);
      const text = cli(["stats"]).stdout;
      for (const label of ["from clients", "to targets", "from targets", "to clients"]) {
        expect(text).toMatch(new RegExp(`${label} +${PACKETS} +${BYTES}\\n`));
      }
      expect(text).toContain(`sessionsActive ${FLOWS}`);
      expect(text).toContain("drops: none");
    });

    test("relay sessions --target X --sort bytes --limit 2: exactly the two busiest", () => {
      const args = ["sessions", "--target", `${S4}:7002`, "--sort", "bytes", "--limit", "2"];
      const lines = cli([...args, "--json"])
        .stdout.trim()
        .split("\n")
        .map((l) => JSON.parse(l));
      expect(lines).toEqual([
        expect.objectContaining({
          transport: "udp",
          target: `${S4}:7002`,
          listener: "udp4",
          packetsToTarget: 10,
          bytesToTarget: 3000,
          packetsToClient: 10,
          bytesToClient: 3000,
        }),
        expect.objectContaining({
          transport: "udp",
          target: `${S4}:7002`,
          packetsToTarget: 6,
          bytesToTarget: 1800,
          packetsToClient: 6,
          bytesToClient: 1800,
        }),
      ]);
      expect(lines[0].client).toMatch(/^198\.18\.0\.2:\d+$/);
      expect(lines[1].client).not.toBe(lines[0].client);
      const text = cli(args).stdout;
      expect(text).toContain("UDP sessions: 2 of 3 matching, by bytes");
      expect(text).toContain("TCP connections: 0 of 0 matching, oldest first");
      // The third flow to 7002 (600 bytes) matched but is past the limit.
      expect(text).toMatch(/ 10 +3000 +10 +3000\n/);
      expect(text).toMatch(/ 6 +1800 +6 +1800\n/);
      expect(text).not.toContain(" 600 ");
    });

    test("a second relay on the same control socket refuses to start (exit 1)", () => {
      const dir = join(env.controlPath, "..");
      const path = join(dir, "second.json");
      const second = {
        listeners: [{ name: "other", address: "127.0.0.1", port: 12399 }],
        // Its own metrics port (the first relay holds the default in this namespace):
        // only the control socket is shared.
        metrics: { port: 0 },
        control: { socketPath: env.controlPath },
      };
      writeFileSync(path, JSON.stringify(second));
      const r = env.lab.exec(
        env.lab.router,
        [RELAY_BIN, RELAY_MAIN, "--config", path],
        undefined,
        true,
      );
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(
        `control socket ${env.controlPath}: another relay answers on it (a connect succeeded)`,
      );
      expect(r.stdout).not.toContain('"event":"ready"');
      // The first relay still answers on it.
      expect(JSON.parse(cli(["stats", "--json"]).stdout).udp.packetsFromClients).toBe(PACKETS);
    });

    test("relay top in a terminal: live counts and drops, q or Ctrl-C quits and restores", async () => {
      // Two datagrams straight to the listener from the router itself: droppedToListener.
      env.python(
        env.lab.router,
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" +
          "for i in range(2): s.sendto(b'x', ('127.0.0.1', 12345))",
      );
      const stats = await waitFor(
        () => JSON.parse(cli(["stats", "--json"]).stdout).udp,
        (udp) => udp.droppedToListener === 2,
        { what: "the 2 datagrams to the listener to be counted", timeoutMs: 10_000 },
      );
      for (const key of ["q", "C-c"]) {
        // A tmux server of this test's own, its socket in the lab's directory (removed
        // with it): never the user's tmux, never another test's. One per key: a new
        // session on the socket of a server still exiting fails ("server exited
        // unexpectedly").
        const tmux = ["tmux", "-S", join(env.controlPath, "..", `tmux-${key}.sock`)];
        const capture = () => run([...tmux, "capture-pane", "-p", "-t", "top"]).stdout;
        const command =
          `ip netns exec ${env.lab.router} ${RELAY_BIN} ${RELAY_MAIN} top --control ` +
          `${env.controlPath} --interval-ms 250; echo "top exited with $?"; exec sleep 600`;
        try {
          run([...tmux, "new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command]);
          const screen = await waitFor(
            capture,
            (text) => text.includes("udp droppedToListener") && text.includes("flows/s 0.0"),
            { what: "top to show the counts and a rate", timeoutMs: 20_000 },
          );
          expect(screen).toContain(`packets from clients ${stats.packetsFromClients} `);
          expect(screen).toContain(`to targets ${PACKETS} `);
          expect(screen).toMatch(/udp droppedToListener +2 +0\.0\n/);
          expect(screen).toContain(`busiest UDP sessions (by bytes): ${FLOWS} of ${FLOWS}`);
          // The busiest first: the 3000-byte flow to 7002.
          const rows = screen.split("\n").filter((l) => l.startsWith("198.18.0.2:"));
          expect(rows).toHaveLength(FLOWS);
          expect(rows[0]).toContain(`${S4}:7002`);
          expect(rows[0]).toMatch(/ 10 +3000 +10 +3000$/);
          // In the alternate screen, cursor hidden, while it runs.
          const display = (format: string) =>
            run([...tmux, "display", "-p", "-t", "top", format]).stdout.trim();
          expect(display("#{alternate_on} #{cursor_flag}")).toBe("1 0");
          run([...tmux, "send-keys", "-t", "top", key]);
          const after = await waitFor(capture, (text) => text.includes("top exited with"), {
            what: `top to exit on ${key}`,
            timeoutMs: 10_000,
          });
          expect(after).toContain("top exited with 0");
          // The terminal is back: normal screen, cursor shown.
          expect(display("#{alternate_on} #{cursor_flag}")).toBe("0 1");
        } finally {
          run([...tmux, "kill-server"], undefined, true);
        }
      }
    }, 90_000);

    test("the socket file is removed when the relay stops", async () => {
      const { exitCode, final } = await env.relay!.stop();
      expect(exitCode).toBe(0);
      expect(final).not.toBeNull();
      expect(existsSync(env.controlPath)).toBe(false);
      const r = cli(["stats"], true);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`no relay is running with control socket ${env.controlPath}`);
    });
  });
}
