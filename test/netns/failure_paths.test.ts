// End-to-end: set-up that fails half way leaves nothing behind, and a broken data path
// ends the process loudly (issue 9). Failures are injected with RELAY_TEST_FAULTS
// (src/sys/test_faults.ts): epoll_ctl refusing a socket as it does at
// fs.epoll.max_user_watches, and a data-path exception as a bug would throw.
//
//   client ns ──veth── router ns (relay, nft TPROXY) ──veth── server ns (UDP echo)
import { afterEach, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const PEERS = join(import.meta.dir, "security_peers.py");

/** Listeners u4 (socket replies: port differs) and e4 (IP_PKTINFO: same port). */
const CONFIG = {
  listeners: [
    { name: "u4", address: "127.0.0.1", port: 12345 },
    { name: "e4", address: "127.0.0.1", port: 7007 },
  ],
  intercept: [
    { listener: "u4", ports: [7001] },
    { listener: "e4", ports: [7007] },
  ],
  udp: { idleTimeoutMs: 1000, idleTimeoutMsByPort: {}, replySocketIdleMs: 1000 },
};
/** Registrations at start: the address watch and the two listeners. */
const START_REGISTRATIONS = 3;

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Drops and send errors: every datagram read ends in exactly one of these or is sent. */
function accounted(u: Record<string, number>): number {
  let total = u.packetsToTargets;
  for (const [name, value] of Object.entries(u)) {
    if (name.startsWith("dropped") && name !== "droppedListenerQueueFull") total += value;
    if (name.startsWith("send") && name !== "sendWouldBlock") total += value;
  }
  return total + u.sendWouldBlock;
}

const skip = labSkipReason();
if (!skip) {
  describe("failure paths", () => {
    let env: RelayLab | null = null;

    afterEach(async () => {
      await env?.close();
      env = null;
    });

    async function lab(faults: string, dataPlane = "worker") {
      env = new RelayLab();
      env.spawnEcho(`${LAB.server4}:7001`, `${LAB.server4}:7007`);
      await env.startRelay({ ...CONFIG, udp: { ...CONFIG.udp, dataPlane } }, [
        "env",
        `RELAY_TEST_FAULTS=${faults}`,
      ]);
      await env.lab.waitForUdpPort(env.lab.server, 7007);
      env.lab.warmNeighbours();
      return env;
    }

    for (const [what, port, counter] of [
      ["upstream socket", 7007, "droppedUpstreamSocketFailed"],
      ["reply socket", 7001, "droppedReplySocketFailed"],
    ] as const) {
      test(`epoll_ctl refuses a new ${what}: nothing leaks, every datagram counted once`, async () => {
        // The first two registrations after start fail: the first two flows' upstream
        // sockets (IP_PKTINFO replies), or their reply sockets (registered first).
        const e = await lab(`epoll_add_fail_after=${START_REGISTRATIONS},epoll_add_fail_count=2`);
        const pid = e.relay!.proc.pid;
        const idle = await e.relay!.metrics();
        const fdsIdle = fdCount(pid);
        expect(idle.udp.socketsRegistered).toBe(START_REGISTRATIONS);
        // One flow at a time, so the order of registrations is known.
        const answers: number[] = [];
        for (let flow = 0; flow < 4; flow++) {
          const r = JSON.parse(
            e.lab.exec(e.lab.client, [
              "python3",
              PEERS,
              "ask",
              LAB.client4,
              LAB.server4,
              `${port}`,
              "1",
            ]).stdout,
          );
          answers.push(r.received);
        }
        const m = await waitFor(
          async () => (await e.relay!.metrics()).udp,
          (u) => u.packetsFromClients === 4 && accounted(u) === 4,
          { what: "4 datagrams read and each counted once", timeoutMs: 5000 },
        );
        expect(m[counter]).toBe(2);
        expect(answers).toEqual([0, 0, 1, 1]);
        // The registry holds exactly the sockets that exist.
        expect(m.socketsRegistered).toBe(START_REGISTRATIONS + m.upstreamSockets + m.replySockets);
        // Once the flows expire, every descriptor and token is back.
        const end = await waitFor(
          async () => (await e.relay!.metrics()).udp,
          (u) => u.sessionsActive === 0 && u.replySockets === 0,
          { what: "the sessions and reply sockets to expire", timeoutMs: 10_000 },
        );
        expect(end.upstreamSockets).toBe(0);
        expect(end.socketsRegistered).toBe(START_REGISTRATIONS);
        expect(fdCount(pid)).toBe(fdsIdle);
      }, 60_000);
    }

    for (const dataPlane of ["worker", "callback"]) {
      test(`a data-path exception (${dataPlane}) ends the process: final line, exit 70`, async () => {
        const e = await lab("data_path_throw_after=2", dataPlane);
        e.lab.exec(e.lab.client, ["python3", PEERS, "send", LAB.server4, "7007", "3"]);
        const final = await e.relay!.waitFor((l) => l.event === "final", 10_000);
        expect(final.fatal).toContain("injected data-path failure");
        expect(typeof final.udp.packetsFromClients).toBe("number"); // the last counters
        expect(await e.relay!.proc.exited).toBe(70);
        expect(e.relay!.stderr).toContain("[relay] fatal: UDP data path failed");
        e.relay = null; // already gone: close() must not expect a clean stop
      }, 60_000);
    }

    test("the UDP Worker thread dies outside the data path: the process ends, exit 70", async () => {
      const e = await lab("worker_crash_after_ms=300");
      const final = await e.relay!.waitFor((l) => l.event === "final", 10_000);
      expect(final.fatal).toContain("UDP worker");
      expect(await e.relay!.proc.exited).toBe(70);
      expect(e.relay!.stderr).toContain("[relay] fatal: UDP worker");
      e.relay = null; // already gone: close() must not expect a clean stop
    }, 60_000);
  });
}
