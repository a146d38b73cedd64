// End-to-end: the relay never relays to itself or to the host's own addresses
// (DESIGN.md "Never relay to ourselves", issue 8), whatever reaches it.
//
//   client ns ──veth── router ns (relay, nft, dnsmasq and a TCP service on its  ──veth── server ns
//   198.18.0.2          own LAN address 198.18.0.1 / 2001:2:0:1::1)                198.18.1.2
//   2001:2:0:1::2                                                                  2001:2:0:2::2
//
// Each case checks the three things a loop would show: the counters (the datagram or
// connection ends under its own drop reason, nothing is relayed), the CPU (the relay is
// idle a second later: nothing circulates) and the descriptors (none left behind).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load.ts";
import { dnsmasqArgv, LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { nftRuleset } from "../../src/rules/nft.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const PEERS = join(import.meta.dir, "security_peers.py");
const LAN_PORT = 12399; // the routable listeners' port (not intercepted)
const TCP_SERVICE_PORT = 8080;
const ROUTER4 = LAB.routerClient4;
const ROUTER6 = LAB.routerClient6;

const CONFIG = {
  listeners: [
    { name: "dns4", address: "127.0.0.1", port: 53 },
    { name: "dns6", address: "::1", port: 53 },
    { name: "lan4", address: ROUTER4, port: LAN_PORT },
    { name: "lan6", address: ROUTER6, port: LAN_PORT },
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
    { name: "tcp6", protocol: "tcp", address: "::1", port: 12346 },
  ],
  // Default-style: udp/53 and the echo ports on every interface but lo.
  intercept: [
    { listener: "dns4", ports: [53] },
    { listener: "dns6", ports: [53] },
    { listener: "lan4", ports: ["7001-7004"] },
    { listener: "lan6", ports: ["7001-7004"] },
    { listener: "tcp4", ports: [TCP_SERVICE_PORT] },
    { listener: "tcp6", ports: [TCP_SERVICE_PORT] },
  ],
  udp: { sessionsMax: 1024 },
};

/** CPU time (clock ticks: utime + stime) of a process, from /proc/PID/stat. */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]); // fields 14 and 15 of stat(5)
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * Waits until the process used under 10% of a core over a 1-second window (100 ticks/s:
 * a relay feeding itself burns ~100). Bounded: 10 windows.
 */
async function waitIdle(pid: number): Promise<number> {
  let last = cpuTicks(pid);
  return waitFor(
    async () => {
      await Bun.sleep(1000);
      const now = cpuTicks(pid);
      const used = now - last;
      last = now;
      return used;
    },
    (ticksPerSecond) => ticksPerSecond < 10,
    { what: "the relay to be idle (CPU ticks per second)", timeoutMs: 10_000, intervalMs: 1 },
  );
}

const skip = labSkipReason();
if (!skip) {
  describe("the relay never relays to itself or to the host", () => {
    let env: RelayLab;
    let pid: number;

    /** UDP counters after they settle: `key` reached `at least` (polled, bounded). */
    const udpWhen = (done: (u: any) => boolean, what: string) =>
      waitFor(async () => (await env.relay!.metrics()).udp, done, { what, timeoutMs: 5000 });

    /** Runs `act`, then asserts: `counter` grew by `by`, nothing relayed, idle, no fd left. */
    async function expectDropped(counter: string, by: number, act: () => void) {
      const before = (await env.relay!.metrics()).udp;
      const fdsBefore = fdCount(pid);
      act();
      const after = await udpWhen(
        (u) => u[counter] - before[counter] >= by,
        `${counter} to grow by ${by}`,
      );
      expect(after[counter] - before[counter]).toBe(by);
      expect(after.packetsToTargets).toBe(before.packetsToTargets);
      expect(after.sessionsCreated).toBe(before.sessionsCreated);
      expect(after.sessionsActive).toBe(before.sessionsActive);
      await waitIdle(pid);
      // Nothing circulated meanwhile: the count did not move on by itself.
      const later = (await env.relay!.metrics()).udp;
      expect(later.packetsFromClients).toBe(after.packetsFromClients);
      expect(fdCount(pid)).toBe(fdsBefore);
    }

    const peer = (ns: string, args: string[]) =>
      env.lab.exec(ns, ["python3", PEERS, ...args]).stdout.trim();

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      env.spawnEcho(`${LAB.server4}:7001`, `[${LAB.server6}]:7001`);
      // The gateway's own DNS server on its LAN address, as dnsmasq on a home router.
      const dns = dnsmasqArgv("gateway.test", "198.18.1.77", "2001:2:0:2::77").map((a) =>
        a === `--listen-address=${LAB.server4}`
          ? `--listen-address=${ROUTER4}`
          : a === `--listen-address=${LAB.server6}`
            ? `--listen-address=${ROUTER6}`
            : a,
      );
      env.spawn(lab.router, dns);
      env.spawn(lab.router, [
        "python3",
        PEERS,
        "tcpserve",
        `${ROUTER4}:${TCP_SERVICE_PORT}`,
        `[${ROUTER6}]:${TCP_SERVICE_PORT}`,
      ]);
      await env.startRelay(CONFIG);
      pid = env.relay!.proc.pid;
      await lab.waitForUdpPort(lab.server, 7001);
      await lab.waitForUdpPort(lab.router, 53);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("control: an intercepted flow is relayed, replies from the original destination", () => {
      for (const target of [`${LAB.server4}:7001`, `[${LAB.server6}]:7001`]) {
        const r = env.probe([target], { flows: 2, packets: 4 });
        expect(r).toMatchObject({ received: 8, lost: 0, wrongSource: 0 });
      }
    });

    test("a datagram straight to a listener, from the host itself (v4 and v6)", async () => {
      const { router } = env.lab;
      await expectDropped("droppedToListener", 4, () => {
        peer(router, ["send", "127.0.0.1", "53", "1"]);
        peer(router, ["send", "::1", "53", "1"]);
        peer(router, ["send", ROUTER4, `${LAN_PORT}`, "1"]);
        peer(router, ["send", ROUTER6, `${LAN_PORT}`, "1"]);
      });
    });

    test("a datagram straight to a routable listener, from a client (v4 and v6)", async () => {
      const { client } = env.lab;
      await expectDropped("droppedToListener", 2, () => {
        peer(client, ["send", ROUTER4, `${LAN_PORT}`, "1"]);
        peer(client, ["send", ROUTER6, `${LAN_PORT}`, "1"]);
      });
    });

    test("the gateway's own DNS server: answered by it, the relay relays nothing", async () => {
      const before = (await env.relay!.metrics()).udp;
      for (const server of [ROUTER4, ROUTER6]) {
        const r = env.lab.exec(env.lab.client, [
          "kdig",
          `@${server}`,
          "gateway.test",
          "A",
          "+retry=0",
          "+timeout=2",
        ]);
        expect(r.stdout).toContain("198.18.1.77");
        expect(r.stdout).toContain(`From ${server}@53(UDP)`);
      }
      const after = (await env.relay!.metrics()).udp;
      expect(after.packetsFromClients).toBe(before.packetsFromClients);
    });

    test("rules that wrongly hand the gateway's own address to the relay: dropped, no loop", async () => {
      const { lab } = env;
      // The generated rules without their `fib daddr type local` skip.
      const wrong = nftRuleset(parseConfig(CONFIG))
        .split("\n")
        .filter((l) => !l.includes("fib daddr type"))
        .join("\n");
      lab.exec(lab.router, ["nft", "-f", "-"], wrong);
      try {
        await expectDropped("droppedLocalTarget", 2, () => {
          for (const server of [ROUTER4, ROUTER6]) {
            const r = lab.exec(
              lab.client,
              ["kdig", `@${server}`, "gateway.test", "A", "+retry=0", "+timeout=1"],
              undefined,
              true,
            );
            expect(r.stdout).not.toContain("198.18.1.77");
          }
        });
      } finally {
        lab.exec(lab.router, ["nft", "-f", "-"], nftRuleset(parseConfig(CONFIG)));
      }
      // The gateway's resolver still answers: the relay never took its address.
      const r = lab.exec(lab.client, ["kdig", `@${ROUTER4}`, "gateway.test", "A", "+timeout=2"]);
      expect(r.stdout).toContain("198.18.1.77");
    });

    test("crafted IPv6 datagrams to v4-mapped loopback and unspecified: dropped", async () => {
      const { lab } = env;
      const mac = routerMac(env);
      await expectDropped("droppedFamilyMismatch", 3, () => {
        for (const target of ["::ffff:127.0.0.1", "::ffff:0.0.0.0", `::ffff:${LAB.server4}`]) {
          peer(lab.client, ["craft6", LAB.clientIf, mac, LAB.client6, target, "53"]);
        }
      });
    });

    test("TCP to the gateway's own address: reaches its service directly, never the relay", async () => {
      const { lab } = env;
      const before = (await env.relay!.metrics()).tcp;
      expect(peer(lab.client, ["tcpget", ROUTER4, `${TCP_SERVICE_PORT}`])).toBe(
        `saw ${LAB.client4}`,
      );
      expect(peer(lab.client, ["tcpget", ROUTER6, `${TCP_SERVICE_PORT}`])).toBe(
        `saw ${LAB.client6}`,
      );
      const after = (await env.relay!.metrics()).tcp;
      expect(after.accepted).toBe(before.accepted);

      // With rules that wrongly intercept it: reset, counted; the service never sees the
      // connection coming from the gateway itself.
      const wrong = nftRuleset(parseConfig(CONFIG))
        .split("\n")
        .filter((l) => !l.includes("fib daddr type"))
        .join("\n");
      lab.exec(lab.router, ["nft", "-f", "-"], wrong);
      const fdsBefore = fdCount(pid);
      try {
        expect(peer(lab.client, ["tcpget", ROUTER4, `${TCP_SERVICE_PORT}`])).toBe(
          "ConnectionResetError",
        );
        expect(peer(lab.client, ["tcpget", ROUTER6, `${TCP_SERVICE_PORT}`])).toBe(
          "ConnectionResetError",
        );
      } finally {
        lab.exec(lab.router, ["nft", "-f", "-"], nftRuleset(parseConfig(CONFIG)));
      }
      const refused = await waitFor(
        async () => (await env.relay!.metrics()).tcp,
        (t) => t.droppedLocalTarget - before.droppedLocalTarget >= 2,
        { what: "tcp.droppedLocalTarget to grow by 2", timeoutMs: 5000 },
      );
      expect(refused.droppedLocalTarget - before.droppedLocalTarget).toBe(2);
      expect(refused.connected).toBe(before.connected);
      await waitIdle(pid);
      expect(fdCount(pid)).toBe(fdsBefore);
    });

    test("an address added while running is local at once (netlink), its flows dropped", async () => {
      const { lab } = env;
      const extra = "198.18.1.200";
      // A flow to it before: relayed (not local yet; nothing answers there).
      const before = (await env.relay!.metrics()).udp;
      peer(lab.client, ["send", extra, "7001", "1"]);
      await udpWhen(
        (u) => u.sessionsCreated - before.sessionsCreated >= 1,
        "a session to the extra address",
      );
      lab.exec(lab.router, ["ip", "addr", "add", `${extra}/32`, "dev", "lo"]);
      try {
        // The session to it ends, and new flows to it are dropped as local.
        const ended = await udpWhen(
          (u) => u.sessionsEndedLocalTarget - before.sessionsEndedLocalTarget >= 1,
          "the session to the new local address to end",
        );
        expect(ended.sessionsEndedLocalTarget - before.sessionsEndedLocalTarget).toBe(1);
        expect(ended.sessionsActive).toBe(before.sessionsActive);
        await waitIdle(pid);
      } finally {
        lab.exec(lab.router, ["ip", "addr", "del", `${extra}/32`, "dev", "lo"]);
      }
    });
  });
}

/** The router's MAC on the client link (for frames built by hand). */
function routerMac(env: RelayLab): string {
  const r = env.lab.exec(env.lab.router, ["cat", `/sys/class/net/${LAB.routerClientIf}/address`]);
  return r.stdout.trim();
}
