// End-to-end: UDP listeners with source "client" (docs/udp_client_source.md). The
// server must see the client's own address and port, the client must get every reply
// from the original destination, and the server's replies (addressed to the client,
// routed through the router) must reach the relay's socket through the generated rules.
//
//   client ns ──veth── router ns (relay, nft or iptables rules) ──veth── server ns
//   198.18.0.2          198.18.0.1 | 198.18.1.1                          198.18.1.2..5
//   2001:2:0:1::2                                                        2001:2:0:2::2..5
//
// Port 7001 replies through the reply-socket pool, port 7007 (= its listener's port)
// with IP_PKTINFO on the listener: the two reply paths.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const CONFIG = {
  listeners: [
    { name: "cs4", address: "127.0.0.1", port: 12345, source: "client" },
    { name: "cs6", address: "::1", port: 12345, source: "client" },
    { name: "pk4", address: "127.0.0.1", port: 7007, source: "client" },
    { name: "pk6", address: "::1", port: 7007, source: "client" },
  ],
  intercept: [
    // 7998: nothing listens there (the server's host answers port unreachable).
    { listener: "cs4", ports: [7001, 7998] },
    { listener: "cs6", ports: [7001, 7998] },
    { listener: "pk4", ports: [7007] },
    { listener: "pk6", ports: [7007] },
  ],
  // Short, so the expiry check below need not wait long.
  udp: { idleTimeoutMs: 1500, idleTimeoutMsByPort: {}, replySocketIdleMs: 1000 },
};

/** Deadline for what only a broken relay misses. */
const TIMEOUT_MS = 10_000;

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

interface Reply {
  /** The client socket's port. */
  port: number;
  /** Where the reply came from. */
  from: string;
  /** Who the server saw (the echo server's stamp). */
  stamp: string;
  /** The payload echoed: "PORT TARGET SEQ". */
  payload: string;
}

/**
 * In namespace `ns` (the client's by default): one socket per port in `ports` (bound to
 * client:port), each sending `count` datagrams to every target before any reply is read
 * (the sessions are open at once); then every reply, in order of arrival. Bounded: 3 s
 * per reply.
 */
function exchange(
  env: RelayLab,
  client: string,
  ports: number[],
  targets: string[],
  count: number,
  ns = env.lab.client,
): Reply[] {
  const pairs = targets.map((t) => {
    const colon = t.lastIndexOf(":");
    return `("${t.slice(0, colon).replace(/^\[|\]$/g, "")}", ${t.slice(colon + 1)})`;
  });
  const r = env.python(
    ns,
    `import json, socket
family = socket.AF_INET6 if ":" in "${client}" else socket.AF_INET
targets = [${pairs.join(", ")}]
socks = []
for port in [${ports.join(", ")}]:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.bind(("${client}", port))
    socks.append(s)
for s in socks:
    for t in targets:
        for seq in range(${count}):
            s.sendto(f"{s.getsockname()[1]} {t[0]}/{t[1]} {seq}".encode(), t)
out = []
for s in socks:
    for _ in range(len(targets) * ${count}):
        data, src = s.recvfrom(2000)
        stamp, _, payload = data.partition(b"|")
        out.append({"port": s.getsockname()[1], "from": f"{src[0]}/{src[1]}",
                    "stamp": stamp.decode(), "payload": payload.decode()})
print(json.dumps(out))`,
  );
  return JSON.parse(r.stdout);
}

/** The echo server's stamp for a client endpoint. */
function stampOf(client: string, port: number): string {
  return client.includes(":") ? `[${client}]:${port}` : `${client}:${port}`;
}

const skip = labSkipReason();
if (!skip) {
  for (const backend of ["nft", "iptables"] as const) {
    describe(`UDP source "client" (${backend} rules)`, () => {
      let env: RelayLab;

      beforeAll(async () => {
        env = new RelayLab();
        const { lab } = env;
        const servers = [LAB.server4, LAB.serverExtra4[0]].flatMap((a) => [
          `${a}:7001`,
          `${a}:7007`,
        ]);
        const servers6 = [LAB.server6, LAB.serverExtra6[0]].flatMap((a) => [
          `[${a}]:7001`,
          `[${a}]:7007`,
        ]);
        env.spawnEcho("--stamp", ...servers, ...servers6);
        // nft: the lab's own rule installer; iptables: the product's `rules apply`.
        const raw = { ...CONFIG, firewall: { backend } };
        await env.startRelay(raw, [], { rules: backend === "nft" ? "lab" : "cli" });
        await lab.waitForUdpPort(lab.server, 7001);
        await lab.waitForUdpPort(lab.server, 7007);
        lab.warmNeighbours();
      }, 60_000);

      afterAll(async () => {
        await env?.close();
      });

      for (const [family, client, servers] of [
        ["IPv4", LAB.client4, [LAB.server4, LAB.serverExtra4[0]]],
        ["IPv6", LAB.client6, [LAB.server6, LAB.serverExtra6[0]]],
      ] as const) {
        const what = `${family}: the server sees the client's ip:port, replies the destination`;
        test(what, async () => {
          const relay = env.relay!;
          const pid = relay.proc.pid;
          const before = (await relay.metrics()).udp;
          const fdsIdle = fdCount(pid);
          const ports = [41001, 41002];
          const count = 3;
          // Two client ports at once, each to two servers on both reply paths.
          const targets = servers.flatMap((a) => {
            const host = a.includes(":") ? `[${a}]` : a;
            return [`${host}:7001`, `${host}:7007`];
          });
          const replies = exchange(env, client, ports, targets, count);
          expect(replies).toHaveLength(ports.length * targets.length * count);
          for (const r of replies) {
            const [port, target, _seq] = r.payload.split(" ");
            // Each reply reached the socket that sent it, from the address it sent to.
            expect(Number(port)).toBe(r.port);
            expect(r.from).toBe(target);
            // The server talked to the client itself, not to the router.
            expect(r.stamp).toBe(stampOf(client, r.port));
          }
          // Every datagram answered exactly once.
          expect(new Set(replies.map((r) => r.payload)).size).toBe(replies.length);

          const sessions = ports.length * targets.length;
          const during = (await relay.metrics()).udp;
          // The loop guard: the relay's own datagrams (from the client's address) never
          // came back to a listener, so no extra session and no extra datagram.
          expect(during.sessionsCreated - before.sessionsCreated).toBe(sessions);
          expect(during.packetsFromClients - before.packetsFromClients).toBe(sessions * count);
          expect(during.packetsFromTargets - before.packetsFromTargets).toBe(sessions * count);
          expect(during.droppedOwnTraffic).toBe(0);
          expect(during.droppedUnsolicitedReply).toBe(0);
          expect(during.droppedUpstreamSocketFailed).toBe(0);
          // One socket per client endpoint, shared by its four destinations.
          expect(during.upstreamSockets).toBe(ports.length);
          expect(during.sessionsActive).toBe(sessions);

          // Expiry closes the sessions and their sockets: every descriptor is back.
          const end = await waitFor(
            async () => (await relay.metrics()).udp,
            (u) => u.sessionsActive === 0 && u.upstreamSockets === 0 && u.replySockets === 0,
            { what: "the sessions and their sockets to expire", timeoutMs: TIMEOUT_MS },
          );
          expect(end.sessionsActive).toBe(0);
          await waitFor(
            async () => fdCount(pid),
            (n) => n === fdsIdle,
            { what: `the relay's descriptors back to ${fdsIdle}`, timeoutMs: TIMEOUT_MS },
          );
        }, 60_000);
      }

      for (const [client, server] of [
        [LAB.client4, LAB.server4],
        [LAB.client6, LAB.server6],
      ] as const) {
        test(`a session's later datagrams go through the relay too (${client})`, async () => {
          // Each datagram waits for the previous reply: by then the relay's own datagram
          // on the client's 4-tuple has marked the flow's conntrack entry, and the
          // client's next datagram must still meet the tproxy rule (not be forwarded
          // past the relay).
          const relay = env.relay!;
          const before = (await relay.metrics()).udp;
          const r = env.python(
            env.lab.client,
            `import socket
family = socket.AF_INET6 if ":" in "${client}" else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(3)
s.bind(("${client}", 41003))
for seq in range(5):
    s.sendto(b"seq %d" % seq, ("${server}", 7001))
    data, src = s.recvfrom(2000)
    assert src[:2] == ("${server}", 7001), src
    assert data == b"${stampOf(client, 41003)}|seq %d" % seq, data
print("ok")`,
          );
          expect(r.stdout.trim()).toBe("ok");
          const after = (await relay.metrics()).udp;
          expect(after.packetsFromClients - before.packetsFromClients).toBe(5);
          expect(after.sessionsCreated - before.sessionsCreated).toBe(1);
        });
      }

      test("the client sees the port unreachable of a closed server port", () => {
        for (const [client, server] of [
          [LAB.client4, LAB.server4],
          [LAB.client6, LAB.server6],
        ]) {
          const r = env.python(
            env.lab.client,
            `import socket
family = socket.AF_INET6 if ":" in "${client}" else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(3)
s.bind(("${client}", 41004))
s.connect(("${server}", 7998))
s.send(b"anyone?")
try:
    s.recv(2000)
    print("answered")
except ConnectionRefusedError:
    print("refused")`,
          );
          expect(r.stdout.trim()).toBe("refused");
        }
      });

      test("a new session from an expired client endpoint binds it again", () => {
        // Same endpoint as the test above, after its socket was closed by expiry.
        const replies = exchange(env, LAB.client4, [41001], [`${LAB.server4}:7001`], 2);
        expect(replies.map((r) => r.stamp)).toEqual([
          stampOf(LAB.client4, 41001),
          stampOf(LAB.client4, 41001),
        ]);
        expect(replies.every((r) => r.from === `${LAB.server4}/7001`)).toBe(true);
      });
    });
  }

  describe(`UDP source "client" with firewall.mode both`, () => {
    let env: RelayLab;

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      env.spawnEcho("--stamp", `${LAB.server4}:7001`, `[${LAB.server6}]:7001`);
      const raw = {
        listeners: CONFIG.listeners.slice(0, 2),
        intercept: CONFIG.intercept.slice(0, 2),
        udp: CONFIG.udp,
        firewall: { mode: "both" },
      };
      await env.startRelay(raw, [], { rules: "cli" });
      await lab.waitForUdpPort(lab.server, 7001);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    for (const [client, router, server] of [
      [LAB.client4, LAB.routerServer4, LAB.server4],
      [LAB.client6, LAB.routerServer6, LAB.server6],
    ] as const) {
      const target = server.includes(":") ? `[${server}]:7001` : `${server}:7001`;
      const what = `routed clients lend their address, this host's own flows do not (${server})`;
      test(what, async () => {
        const relay = env.relay!;
        const before = (await relay.metrics()).udp;
        const routed = exchange(env, client, [41011], [target], 2);
        expect(routed.map((r) => r.stamp)).toEqual([
          stampOf(client, 41011),
          stampOf(client, 41011),
        ]);
        // A process on the relay's host: intercepted in output, relayed from the relay's
        // own address (its socket holds its ip:port), replies still from the destination.
        const local = exchange(env, router, [41012], [target], 2, env.lab.router);
        for (const r of local) {
          expect(r.from).toBe(`${server}/7001`);
          const address = r.stamp.slice(0, r.stamp.lastIndexOf(":"));
          expect(address).toBe(router.includes(":") ? `[${router}]` : router);
          expect(r.stamp).not.toBe(stampOf(router, 41012));
        }
        const after = (await relay.metrics()).udp;
        expect(after.sessionsCreated - before.sessionsCreated).toBe(2);
        expect(after.packetsFromClients - before.packetsFromClients).toBe(4);
        expect(after.droppedUpstreamSocketFailed).toBe(0);
        expect(after.droppedOwnTraffic).toBe(0);
      });
    }
  });
}
