// End-to-end: one client cannot lock out the others (issue 8). A client that opens
// thousands of flows and destinations meets its own bounds (udp.sessionsPerClientMax,
// udp.replySocketsPerClientMax), counted; another client's new flows are still relayed,
// replies from the original destination. And with a descriptor limit far below
// udp.sessionsMax, the table is fitted under it and evicts before EMFILE.
//
//   client ns: 198.18.0.2 (the flooder) and 198.18.0.3 (another client)   -- router (relay) --
//   server ns: 198.18.1.2 echo on 7001; 198.18.1.10.. are destinations nobody answers
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const PEERS = join(import.meta.dir, "security_peers.py");
const OTHER4 = "198.18.0.3";
const OTHER6 = "2001:2:0:1::3";
/** The flood's source port: below the ephemeral range (32768-60999 by default). */
const FLOOD_PORT = 5999;

const LISTENERS = {
  listeners: [
    { name: "u4", address: "127.0.0.1", port: 12345 },
    { name: "u6", address: "::1", port: 12345 },
  ],
  intercept: [
    { listener: "u4", ports: ["7001-7010"] },
    { listener: "u6", ports: ["7001-7010"] },
  ],
};

/** 200 addresses x 5 ports of the server's subnet: 1000 distinct destinations. */
function destinations(v6: boolean): string[] {
  const out: string[] = [];
  for (let host = 10; host < 210; host++) {
    for (let port = 7001; port <= 7005; port++) {
      out.push(v6 ? `[2001:2:0:2::${host.toString(16)}]:${port}` : `198.18.1.${host}:${port}`);
    }
  }
  return out;
}

function makeLab(): RelayLab {
  const env = new RelayLab();
  const { lab } = env;
  lab.exec(lab.client, ["ip", "addr", "add", `${OTHER4}/24`, "dev", LAB.clientIf]);
  lab.exec(lab.client, ["ip", "addr", "add", `${OTHER6}/64`, "dev", LAB.clientIf, "nodad"]);
  env.spawnEcho(`${LAB.server4}:7001`, `[${LAB.server6}]:7001`);
  return env;
}

const skip = labSkipReason();
if (!skip) {
  describe("fairness: one client cannot stop another's new flows", () => {
    let env: RelayLab;
    const peer = (args: string[]) =>
      JSON.parse(env.lab.exec(env.lab.client, ["python3", PEERS, ...args]).stdout.trim());

    beforeAll(async () => {
      env = makeLab();
      await env.startRelay({
        ...LISTENERS,
        udp: {
          sessionsMax: 256,
          sessionsPerClientMax: 64,
          replySocketsMax: 64,
          replySocketsPerClientMax: 16,
        },
      });
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    for (const [family, attacker, other, server] of [
      ["IPv4", LAB.client4, OTHER4, LAB.server4],
      ["IPv6", LAB.client6, OTHER6, LAB.server6],
    ] as const) {
      test(`${family}: 1000 destinations and 200 flows from one client`, async () => {
        const v6 = family === "IPv6";
        const before = (await env.relay!.metrics()).udp;
        // 1000 destinations from one socket: 16 reply sockets, then its own bound.
        const targets = destinations(v6);
        // From a port below the ephemeral range: the spread's sockets below can never
        // reuse it (a reused port would join the flood's session instead of opening one).
        peer(["flood", attacker, `${FLOOD_PORT}`, ...targets]);
        // 200 more flows to a destination it already pins: sessions up to 64, then its bound.
        const pinned = targets[0].replace(/^\[|\]:\d+$|:\d+$/g, "").replace(/\]$/, "");
        peer(["spread", attacker, pinned, "7001", "200"]);
        const m = await waitFor(
          async () => (await env.relay!.metrics()).udp,
          (u) => u.packetsFromClients - before.packetsFromClients >= 1200,
          { what: "the relay to read all 1200 datagrams", timeoutMs: 10_000 },
        );
        expect(m.droppedClientReplySocketsLimit - before.droppedClientReplySocketsLimit).toBe(984);
        expect(m.droppedClientSessionsLimit - before.droppedClientSessionsLimit).toBe(152);
        expect(m.sessionsCreated - before.sessionsCreated).toBe(64);
        expect(m.sessionsEvicted).toBe(0);

        // Another client: every new flow relayed, replies from the original destination.
        const r = peer(["ask", other, server, "7001", "8"]);
        expect(r).toEqual({ received: 8, wrongSource: 0 });
        const after = (await env.relay!.metrics()).udp;
        expect(after.sessionsCreated - m.sessionsCreated).toBe(8);
        expect(after.droppedReplyPoolFull).toBe(0);
        expect(after.droppedNoDescriptors).toBe(0);
      }, 60_000);
    }
  });

  describe("descriptors: sessionsMax far above RLIMIT_NOFILE is fitted under it", () => {
    let env: RelayLab;
    const peer = (args: string[]) =>
      JSON.parse(env.lab.exec(env.lab.client, ["python3", PEERS, ...args]).stdout.trim());

    beforeAll(async () => {
      env = makeLab();
      // Default sessionsMax (65536) and replySocketsMax (4096) under 400 descriptors.
      await env.startRelay(LISTENERS, ["prlimit", "--nofile=400:400", "--"]);
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("the table evicts before EMFILE; another client's flows still work", async () => {
      const first = (await env.relay!.metrics()).udp;
      expect(first.sessionsMax).toBeLessThan(400);
      expect(env.relay!.stderr).toContain(
        `udp.sessionsMax 65536 lowered to ${first.sessionsMax} (RLIMIT_NOFILE is 400)`,
      );
      // 600 flows from one client (no per-client bound applies: it defaults to the table).
      peer(["spread", LAB.client4, LAB.server4, "7001", "600"]);
      const m = await waitFor(
        async () => (await env.relay!.metrics()).udp,
        (u) => u.sessionsCreated - first.sessionsCreated >= 600,
        { what: "600 sessions created", timeoutMs: 10_000 },
      );
      expect(m.droppedNoDescriptors).toBe(0);
      expect(m.droppedUpstreamSocketFailed).toBe(0);
      expect(m.sessionsActive).toBe(m.sessionsMax);
      expect(m.sessionsEvicted - first.sessionsEvicted).toBe(600 - m.sessionsMax);
      const r = peer(["ask", OTHER4, LAB.server4, "7001", "8"]);
      expect(r).toEqual({ received: 8, wrongSource: 0 });
    }, 60_000);
  });
}
