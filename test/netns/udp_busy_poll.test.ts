// End-to-end: udp.busyPollUs (busy polling), on each UDP I/O backend. With it on, the
// relay stays transparent (replies come from the original destination, through a reply
// socket and through the listener) while its data path spins after traffic (the
// pollBusyPolls counter); a reload turns it off live, and then nothing spins.
//
//   client ns ──veth── router ns (relay, nft TPROXY) ──veth── server ns (UDP echo)
import { afterEach, describe, expect, test } from "bun:test";
import { readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { loadFfi } from "../../src/sys/ffi.ts";
import { LAB } from "../lab/netns.ts";
import { withControlSocket } from "../lab/relay_process.ts";
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
const probe = loadFfi().rl_uring_probe();
const uringUnavailable = probe === 0 ? null : `io_uring unavailable here (${probe})`;
if (!skip) {
  describe("udp.busyPollUs", () => {
    let env: RelayLab | null = null;

    afterEach(async () => {
      await env?.close();
      env = null;
    });

    /** `flows` one-datagram flows to `port`: answers from the original destination, and not. */
    function ask(e: RelayLab, port: number, flows: number) {
      const out = e.lab.exec(e.lab.client, [
        "python3",
        PEERS,
        "ask",
        LAB.client4,
        LAB.server4,
        `${port}`,
        `${flows}`,
      ]).stdout;
      return JSON.parse(out) as { received: number; wrongSource: number };
    }

    for (const ioBackend of ["epoll", "io_uring"]) {
      test(`${ioBackend}: transparent while it spins; a reload turns it off live`, async () => {
        if (ioBackend === "io_uring" && skipped(uringUnavailable, "the io_uring plane")) return;
        env = new RelayLab();
        const e = env;
        e.spawnEcho(`${LAB.server4}:7001`, `${LAB.server4}:7007`);
        const config = { ...CONFIG, udp: { ioBackend, busyPollUs: 200 } };
        await e.startRelay(config);
        await e.lab.waitForUdpPort(e.lab.server, 7007);
        e.lab.warmNeighbours();

        expect(ask(e, 7001, 20)).toEqual({ received: 20, wrongSource: 0 });
        expect(ask(e, 7007, 20)).toEqual({ received: 20, wrongSource: 0 });
        const on = await waitFor(
          async () => (await e.relay!.metrics()).udp,
          (u) => u.packetsToClients === 40,
          { what: "40 replies counted", timeoutMs: 5000 },
        );
        expect(on.pollBusyPolls).toBeGreaterThan(0);
        expect(on.ioBackendUring).toBe(ioBackend === "io_uring" ? 1 : 0);

        // The harness wrote the config beside the control socket; a reload re-reads it.
        const dir = dirname(e.controlPath);
        const path = join(dir, readdirSync(dir).find((f) => f.startsWith("config-"))!);
        const off = { ...config, udp: { ...config.udp, busyPollUs: 0 } };
        writeFileSync(path, JSON.stringify(withControlSocket(off, e.controlPath)));
        e.relay!.proc.kill("SIGHUP");
        await waitFor(
          async () => (await e.relay!.metrics()).config.reloads,
          (r) => r.applied >= 1,
          { what: "the reload applied", timeoutMs: 10_000 },
        );
        expect(e.relay!.stderr).toContain("udp.busyPollUs 200 -> 0");
        const spins = (await e.relay!.metrics()).udp.pollBusyPolls;
        expect(ask(e, 7001, 20)).toEqual({ received: 20, wrongSource: 0 });
        const after = await waitFor(
          async () => (await e.relay!.metrics()).udp,
          (u) => u.packetsToClients === 60,
          { what: "60 replies counted", timeoutMs: 5000 },
        );
        expect(after.pollBusyPolls).toBe(spins);
      }, 60_000);
    }
  });
}
