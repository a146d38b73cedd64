// End-to-end: udp.ioBackend (docs/io_uring.md). The io_uring plane relays both ways with
// one io_uring_enter per round and says so (log line, relay_udp_io_backend); "auto" falls
// back to epoll when the start-up probe fails (injected: RELAY_TEST_FAULTS
// uring_probe_fail=1, as kernel.io_uring_disabled = 2 would, without touching the
// machine's sysctl), and "io_uring" forced then is a start-up error naming the field.
// udp.busyPollUs on each backend: transparent while the data path spins after traffic
// (the pollBusyPolls counter), and a reload turns it off live.
//
//   client ns ──veth── router ns (relay, nft TPROXY) ──veth── server ns (UDP echo)
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { loadFfi } from "../../src/sys/ffi.ts";
import { LAB } from "../lab/netns.ts";
import { skipped } from "../lab/skip_policy.ts";
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
};

const skip = labSkipReason();
/** The relay's own probe, here: a kernel or container without io_uring (seccomp). */
const probe = loadFfi().rl_uring_probe();
const uringUnavailable = probe === 0 ? null : `io_uring unavailable here (${probe})`;
if (!skip) {
  describe("udp.ioBackend", () => {
    let env: RelayLab | null = null;

    afterEach(async () => {
      await env?.close();
      env = null;
    });

    async function lab(ioBackend: string, faults = "", udp: object = {}) {
      env = new RelayLab();
      env.spawnEcho(`${LAB.server4}:7001`, `${LAB.server4}:7007`);
      const prefix = faults === "" ? [] : ["env", `RELAY_TEST_FAULTS=${faults}`];
      await env.startRelay({ ...CONFIG, udp: { ioBackend, ...udp } }, prefix);
      await env.lab.waitForUdpPort(env.lab.server, 7007);
      env.lab.warmNeighbours();
      return env;
    }

    /** One-datagram flows to `port`: answers from the original destination, and not. */
    function ask(e: RelayLab, port: number, count: number) {
      const out = e.lab.exec(e.lab.client, [
        "python3",
        PEERS,
        "ask",
        LAB.client4,
        LAB.server4,
        `${port}`,
        `${count}`,
      ]).stdout;
      return JSON.parse(out) as { received: number; wrongSource: number };
    }

    /** `count` answers, every one from the original destination. */
    const answers = (count: number) => ({ received: count, wrongSource: 0 });

    for (const ioBackend of ["io_uring", "auto"]) {
      test(`${ioBackend}: relays both reply paths on the ring, and says so`, async () => {
        if (skipped(uringUnavailable, "the io_uring plane")) return;
        const e = await lab(ioBackend);
        expect(ask(e, 7001, 3)).toEqual(answers(3)); // a reply socket (bound to the original dst)
        expect(ask(e, 7007, 3)).toEqual(answers(3)); // the listener, source set by IP_PKTINFO
        const u = await waitFor(
          async () => (await e.relay!.metrics()).udp,
          (v) => v.packetsToClients === 6,
          { what: "6 replies counted", timeoutMs: 5000 },
        );
        expect(u.ioBackendUring).toBe(1);
        expect(u.ioBackendEpoll).toBe(0);
        expect(u.uringEnters).toBeGreaterThan(0);
        expect(u.uringSendsQueued).toBe(12); // 6 to the targets, 6 back
        expect(e.relay!.stderr).toContain("udp io backend io_uring");
      }, 60_000);
    }

    test("epoll: the epoll plane, and the stat says so", async () => {
      const e = await lab("epoll");
      expect(ask(e, 7007, 2)).toEqual(answers(2));
      const u = (await e.relay!.metrics()).udp;
      expect(u.ioBackendEpoll).toBe(1);
      expect(u.uringEnters).toBe(0);
      expect(e.relay!.stderr).toContain("udp io backend epoll (udp.ioBackend epoll)");
    }, 60_000);

    for (const ioBackend of ["epoll", "io_uring"]) {
      test(`udp.busyPollUs on ${ioBackend}: transparent; spins; a reload stops it`, async () => {
        if (ioBackend === "io_uring" && skipped(uringUnavailable, "the io_uring plane")) return;
        const udp = { ioBackend, busyPollUs: 200 };
        const e = await lab(ioBackend, "", udp);
        expect(ask(e, 7001, 20)).toEqual(answers(20));
        expect(ask(e, 7007, 20)).toEqual(answers(20));
        const on = await waitFor(
          async () => (await e.relay!.metrics()).udp,
          (u) => u.packetsToClients === 40,
          { what: "40 replies counted", timeoutMs: 5000 },
        );
        expect(on.pollBusyPolls).toBeGreaterThan(0);
        expect(on.ioBackendUring).toBe(ioBackend === "io_uring" ? 1 : 0);

        await e.reload({ ...CONFIG, udp: { ...udp, busyPollUs: 0 } });
        expect(e.relay!.stderr).toContain("udp.busyPollUs 200 -> 0");
        const spins = (await e.relay!.metrics()).udp.pollBusyPolls;
        expect(ask(e, 7001, 20)).toEqual(answers(20));
        const off = await waitFor(
          async () => (await e.relay!.metrics()).udp,
          (u) => u.packetsToClients === 60,
          { what: "60 replies counted", timeoutMs: 5000 },
        );
        expect(off.pollBusyPolls).toBe(spins);
      }, 60_000);
    }

    test("auto with io_uring unavailable falls back to epoll, logged and in the stat", async () => {
      const e = await lab("auto", "uring_probe_fail=1");
      expect(ask(e, 7001, 2)).toEqual(answers(2));
      const u = (await e.relay!.metrics()).udp;
      expect(u.ioBackendEpoll).toBe(1);
      expect(u.ioBackendUring).toBe(0);
      expect(e.relay!.stderr).toContain("io_uring unavailable: EPERM");
      expect(e.relay!.stderr).toContain("falls back to epoll");
    }, 60_000);

    test('"io_uring" forced and unavailable: a start-up error naming the field', async () => {
      let failure = "";
      try {
        await lab("io_uring", "uring_probe_fail=1");
      } catch (err) {
        failure = (err as Error).message;
      }
      expect(failure).toContain('udp.ioBackend "io_uring": io_uring unavailable: EPERM');
      expect(failure).toMatch(/exit [1-9]/);
    }, 60_000);
  });
}
