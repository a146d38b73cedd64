// End-to-end: real traffic through real kernel TPROXY in three namespaces.
//
//   client ns ──veth── router ns (relay + nft tproxy + ip rule fwmark) ──veth── server ns
//   198.18.0.2          r0 198.18.0.1 | r1 198.18.1.1                    198.18.1.2..5
//   2001:2:0:1::2       2001:2:0:1::1 | 2001:2:0:2::1                    2001:2:0:2::2..5
//
// Transparency is what we assert: the client gets every reply from the exact address
// and port it sent to; the server sees the router (default mode).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { dnsmasqArgv, LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const S4 = LAB.server4;
const S6 = `[${LAB.server6}]`;
const stampTargets4 = [S4, ...LAB.serverExtra4].map((a) => `${a}:7001`);
const stampTargets6 = [LAB.server6, ...LAB.serverExtra6].map((a) => `[${a}]:7001`);

/** Intercepts on every interface, ephemeral ports included: only the relay's mark
 * exemption keeps the server's replies to the relay from being intercepted again. */
const RELAY_CONFIG = {
  listeners: [
    { name: "udp4", address: "127.0.0.1", port: 12345 },
    { name: "udp6", address: "::1", port: 12345 },
    { name: "echo4", address: "127.0.0.1", port: 7007 },
    { name: "echo6", address: "::1", port: 7007 },
    { name: "dns4", address: "127.0.0.1", port: 53 },
    { name: "dns6", address: "::1", port: 53 },
  ],
  intercept: [
    { listener: "echo4", ports: [7007] },
    { listener: "echo6", ports: [7007] },
    { listener: "dns4", ports: [53] },
    { listener: "dns6", ports: [53] },
    { listener: "udp4", ports: ["1024-7006", "7008-65535"] },
    { listener: "udp6", ports: ["1024-7006", "7008-65535"] },
  ],
  udp: { sessionsMax: 2048, datagramBytesMax: 2048, replyBindRetryMs: 60_000 },
};

/**
 * From ONE client socket, one datagram to port 7001 of each server address; returns
 * the relay address:port each (stamping) server saw. Asserts every reply came from
 * the address it was sent to.
 */
function relayPortsSeen(env: RelayLab, servers: string[]): string[] {
  const targets = servers.map((a) => `("${a}", 7001)`).join(", ");
  const r = env.python(
    env.lab.client,
    `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
seen = []
for target in (${targets},):
    s.sendto(b"flow=0 seq=0 x", target)
    data, src = s.recvfrom(2000)
    assert src == target, (src, target)
    seen.append(data.split(b"|")[0].decode())
print(" ".join(seen))`,
  );
  return r.stdout.trim().split(" ");
}

/** Deadline for a counter the relay updates after the client has seen the outcome (an
 * ICMP error, a loop, a drop): generous, since only a broken relay reaches it. */
const COUNTED_TIMEOUT_MS = 10_000;

/** Polls the relay's UDP counters until `done` holds; returns that snapshot. */
function waitForUdp(env: RelayLab, what: string, done: (udp: any) => boolean) {
  return waitFor(async () => (await env.relay!.metrics()).udp, done, {
    what,
    timeoutMs: COUNTED_TIMEOUT_MS,
  });
}

const skip = labSkipReason();
if (!skip) {
  describe("UDP relay through kernel TPROXY", () => {
    let env: RelayLab;

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      const stamp = [...stampTargets4, `${S4}:7007`, ...stampTargets6, `${S6}:7007`];
      env.spawnEcho("--stamp", ...stamp);
      env.spawnEcho(`${S4}:7002`, `${S6}:7002`);
      env.spawn(lab.server, dnsmasqArgv("relay.test", "198.18.1.77", "2001:2:0:2::77"));
      // ICMP host unreachable for one port, so upstream errors can be provoked.
      lab.exec(
        lab.server,
        ["nft", "-f", "-"],
        [
          "table inet lab {",
          "  chain input {",
          "    type filter hook input priority 0; policy accept;",
          "    udp dport 7998 reject with icmpx type host-unreachable",
          "  }",
          "}",
        ].join("\n") + "\n",
      );
      await env.startRelay(RELAY_CONFIG);
      await lab.waitForUdpPort(lab.server, 7001);
      await lab.waitForUdpPort(lab.server, 7002);
      await lab.waitForUdpPort(lab.server, 53);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("IPv4 echo: replies from the original destination (reply-socket pool)", () => {
      const r = env.probe([`${S4}:7001`], { flows: 4, packets: 8, stamped: true });
      expect(r).toMatchObject({ received: 32, lost: 0, wrongSource: 0, wrongFlow: 0 });
      expect(r.serverSaw).toEqual([LAB.routerServer4]);
    });

    test("IPv4 echo: listener port = original port replies with IP_PKTINFO", async () => {
      const r = env.probe([`${S4}:7007`], { flows: 4, packets: 8, stamped: true });
      expect(r).toMatchObject({ received: 32, lost: 0, wrongSource: 0, wrongFlow: 0 });
      const m = await env.relay!.metrics();
      const viaEcho = m.sessions.filter((s: any) => s.target === `${S4}:7007`);
      expect(viaEcho.length).toBe(4);
      expect(viaEcho.every((s: any) => s.listener === "echo4" && s.reply === "pktinfo")).toBe(true);
    });

    test("IPv6 echo: replies from the original destination, pool and IP_PKTINFO", () => {
      for (const target of [`${S6}:7001`, `${S6}:7007`]) {
        const r = env.probe([target], { flows: 4, packets: 8, stamped: true });
        expect(r).toMatchObject({ received: 32, lost: 0, wrongSource: 0, wrongFlow: 0 });
        expect(r.serverSaw).toEqual([`[${LAB.routerServer6}]`]);
      }
    });

    for (const [family, targets] of [
      ["IPv4", stampTargets4],
      ["IPv6", stampTargets6],
    ] as const) {
      test(`256 concurrent ${family} flows over 4 destinations: no reply reaches the wrong flow`, async () => {
        const r = env.probe(targets, {
          flows: 256,
          packets: 8,
          size: 200,
          stamped: true,
          timeoutMs: 8000,
        });
        expect(r).toMatchObject({ sent: 2048, wrongSource: 0, wrongFlow: 0, duplicate: 0 });
        if (r.received !== 2048) console.error(`lost ${r.lost}:\n${await env.diagnose()}`);
        expect(r.received).toBe(2048);
      });
    }

    test("endpoint-independent mapping: one client port keeps one relay port for every destination", () => {
      // One client socket talks to two servers; both see the same router address and port.
      const [first, second] = relayPortsSeen(env, [S4, LAB.serverExtra4[2]]);
      expect(first).toStartWith(`${LAB.routerServer4}:`);
      expect(second).toBe(first);
    });

    test("kdig through the relay to dnsmasq (IPv4 and IPv6, A and AAAA)", async () => {
      const cases = [
        [LAB.server4, "A", "198.18.1.77"],
        [LAB.server4, "AAAA", "2001:2:0:2::77"],
        [LAB.server6, "A", "198.18.1.77"],
        [LAB.server6, "AAAA", "2001:2:0:2::77"],
      ];
      for (const [server, type, answer] of cases) {
        const r = env.lab.exec(env.lab.client, [
          "kdig",
          `@${server}`,
          "relay.test",
          type,
          "+notcp",
          "+timeout=2",
          "+retry=0",
        ]);
        expect(r.stdout).toContain("status: NOERROR");
        expect(r.stdout).toContain(answer);
        // kdig names the server that answered: the original destination.
        expect(r.stdout).toContain(`;; From ${server}@53(UDP)`);
      }
      const m = await env.relay!.metrics();
      const dns = m.sessions.filter((s: any) => s.target.endsWith(":53"));
      expect(dns.length).toBeGreaterThanOrEqual(4);
      expect(dns.every((s: any) => s.listener.startsWith("dns") && s.reply === "pktinfo")).toBe(
        true,
      );
      // The relay parsed each query in place (WASM) and recorded the name asked.
      expect(dns.every((s: any) => s.protocol === "dns" && s.name === "relay.test")).toBe(true);
      expect(m.udp.sniffedDns).toBeGreaterThanOrEqual(4);
    });

    test("the relay's own upstream traffic is not intercepted again (no loop)", async () => {
      const before = (await env.relay!.metrics()).udp;
      const r = env.probe([`${S4}:7001`, `${S6}:7001`], { flows: 2, packets: 10, stamped: true });
      expect(r).toMatchObject({ received: 20, lost: 0 });
      const after = (await env.relay!.metrics()).udp;
      // Exactly the client's datagrams entered the relay: the server's 20 replies to
      // the relay's upstream sockets (ephemeral ports, inside the intercepted range)
      // were exempted by the conntrack mark.
      expect(after.packetsFromClients - before.packetsFromClients).toBe(20);
      expect(after.packetsToClients - before.packetsToClients).toBe(20);

      // Layered defence. Without the conntrack-mark exemption the server's replies still
      // go to the relay's upstream sockets: their destination is the router's own
      // address, which the rules skip (`fib daddr type local`).
      const { lab } = env;
      const deleteRule = (pattern: RegExp) => {
        const listing = lab.exec(lab.router, [
          "nft",
          "-a",
          "list",
          "chain",
          "inet",
          "transparent_relay",
          "prerouting",
        ]).stdout;
        const handle = pattern.exec(listing)?.[1];
        expect(handle).toBeDefined();
        lab.exec(lab.router, [
          "nft",
          "delete",
          "rule",
          "inet",
          "transparent_relay",
          "prerouting",
          "handle",
          handle!,
        ]);
      };
      try {
        deleteRule(/ct mark 0x0*1ee7 counter .*return # handle (\d+)/);
        const viaFib = env.probe([`${S4}:7002`], { flows: 1, packets: 4 });
        expect(viaFib).toMatchObject({ received: 4, lost: 0 });
        // Without both, the replies are intercepted: the relay's loop guard sees a flow
        // to one of this host's addresses and drops it, counted. Nothing circulates:
        // exactly the client's 4 datagrams and the 4 intercepted replies entered.
        deleteRule(/fib daddr type .* return # handle (\d+)/);
        const mid = (await env.relay!.metrics()).udp;
        const guarded = env.probe([`${S4}:7002`], { flows: 1, packets: 4, timeoutMs: 1000 });
        expect(guarded.received).toBe(0);
        const end = await waitForUdp(
          env,
          "the 4 intercepted replies to be dropped as local",
          (udp) => udp.droppedLocalTarget - mid.droppedLocalTarget >= 4,
        );
        expect(end.packetsFromClients - mid.packetsFromClients).toBe(8);
        expect(end.droppedLocalTarget - mid.droppedLocalTarget).toBe(4);
      } finally {
        await env.startRelay(RELAY_CONFIG); // reinstalls the full ruleset, fresh counters
      }
    }, 30_000);

    test("oversized datagrams are counted and dropped; zero-length ones are relayed", async () => {
      const before = (await env.relay!.metrics()).udp;
      // 3000 bytes > udp.datagramBytesMax (2048): truncated by recvmmsg, so dropped.
      env.python(
        env.lab.client,
        `import socket
s = socket.socket(); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"x" * 3000, ("${S4}", 7002))`,
      );
      // A zero-length datagram is valid UDP and comes back from the original destination.
      const zero = env.python(
        env.lab.client,
        `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"", ("${S4}", 7002)); d, a = s.recvfrom(100); print(len(d), a[0], a[1])`,
      );
      expect(zero.stdout.trim()).toBe(`0 ${S4} 7002`);
      const ok = env.probe([`${S4}:7002`], { flows: 2, packets: 4 });
      expect(ok).toMatchObject({ received: 8, wrongSource: 0 });
      const after = (await env.relay!.metrics()).udp;
      expect(after.droppedOversized - before.droppedOversized).toBe(1);
    });

    test("truncated datagrams (UDP length beyond the packet) never reach the relay", async () => {
      const before = (await env.relay!.metrics()).udp;
      // A raw UDP header that claims 100 more bytes than it carries. The kernel
      // drops it (RFC 768 length check) after TPROXY matched it; the relay goes on.
      env.python(
        env.lab.client,
        `import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
body = b"y" * 20
for port in (7002, 7001):
    s.sendto(struct.pack("!HHHH", 40000, port, 8 + len(body) + 100, 0) + body, ("${S4}", 0))`,
      );
      const ok = env.probe([`${S4}:7002`], { flows: 2, packets: 4 });
      expect(ok).toMatchObject({ received: 8, wrongSource: 0 });
      const after = (await env.relay!.metrics()).udp;
      expect(after.packetsFromClients - before.packetsFromClients).toBe(8);
    });

    test("unreachable upstreams (ICMP errors) are counted; other flows go on", async () => {
      const before = (await env.relay!.metrics()).udp;
      // 7999: nothing listens (port unreachable); 7998: rejected (host unreachable).
      const dead = env.probe([`${S4}:7999`, `${S4}:7998`, `${S6}:7999`], {
        flows: 3,
        packets: 3,
        timeoutMs: 800,
      });
      expect(dead.received).toBe(0);
      const ok = env.probe([`${S4}:7002`, `${S6}:7002`], { flows: 4, packets: 4 });
      expect(ok).toMatchObject({ received: 16, wrongSource: 0 });
      // The ICMP errors reach the relay's upstream sockets on their own schedule.
      const after = await waitForUdp(
        env,
        "2 ICMP port unreachable and 1 host unreachable to be counted",
        (udp) =>
          udp.icmpPortUnreachable - before.icmpPortUnreachable >= 2 &&
          udp.icmpHostUnreachable - before.icmpHostUnreachable >= 1,
      );
      expect(after.icmpPortUnreachable - before.icmpPortUnreachable).toBeGreaterThanOrEqual(2);
      expect(after.icmpHostUnreachable - before.icmpHostUnreachable).toBeGreaterThanOrEqual(1);
    });

    test("a reply socket that cannot bind is counted, cached, and harms no other flow", async () => {
      const { lab } = env;
      // Another transparent socket holds 198.18.1.3:7005 without SO_REUSEADDR.
      const holder = env.spawn(lab.router, [
        "python3",
        "-c",
        `import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
s.bind(("${LAB.serverExtra4[0]}", 7005)); print("bound", flush=True); time.sleep(60)`,
      ]);
      const reader = holder.stdout.getReader();
      const first = await reader.read();
      expect(new TextDecoder().decode(first.value)).toContain("bound");
      try {
        const before = (await env.relay!.metrics()).udp;
        const blocked = env.probe([`${LAB.serverExtra4[0]}:7005`], {
          flows: 2,
          packets: 2,
          timeoutMs: 800,
        });
        expect(blocked.received).toBe(0);
        const ok = env.probe([`${S4}:7002`, `${S6}:7002`], { flows: 4, packets: 4 });
        expect(ok).toMatchObject({ received: 16, wrongSource: 0 });
        const after = await waitForUdp(
          env,
          "the 4 blocked datagrams to be counted (1 bind failure, 3 cached)",
          (udp) =>
            udp.replySocketBindFailed - before.replySocketBindFailed >= 1 &&
            udp.droppedReplyBindCached - before.droppedReplyBindCached >= 3,
        );
        expect(after.replySocketBindFailed - before.replySocketBindFailed).toBe(1);
        expect(after.droppedReplyBindCached - before.droppedReplyBindCached).toBe(3);
      } finally {
        holder.kill(9);
      }
    });
  });

  describe("udp.dataPlane = callback (main thread, woken by the C epoll thread)", () => {
    let env: RelayLab;
    beforeAll(async () => {
      env = new RelayLab();
      env.spawnEcho("--stamp", ...stampTargets4, ...stampTargets6);
      await env.startRelay({
        listeners: [
          { name: "udp4", address: "127.0.0.1", port: 12345 },
          { name: "udp6", address: "::1", port: 12345 },
        ],
        intercept: [
          { listener: "udp4", ports: [7001], interfaces: ["r0"] },
          { listener: "udp6", ports: [7001], interfaces: ["r0"] },
        ],
        udp: { dataPlane: "callback" },
      });
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      env.lab.warmNeighbours();
    }, 60_000);
    afterAll(async () => {
      await env?.close();
    });

    test("256 concurrent flows per family, every reply from the original destination", async () => {
      for (const targets of [stampTargets4, stampTargets6]) {
        const r = env.probe(targets, { flows: 256, packets: 4, stamped: true, timeoutMs: 8000 });
        expect(r).toMatchObject({ sent: 1024, received: 1024, wrongSource: 0, wrongFlow: 0 });
      }
      const m = (await env.relay!.metrics()).udp;
      expect(m.pollRingOverflows).toBe(0);
      // One JSCallback wake-up carries several ready sockets under load.
      expect(m.pollEvents).toBeGreaterThan(m.pollWakes);
    });
  });

  describe("a listener queue that overflows", () => {
    let env: RelayLab;
    beforeAll(async () => {
      env = new RelayLab();
      env.spawnEcho(`${S4}:7002`);
      await env.startRelay({
        listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
        intercept: [{ listener: "udp4", ports: [7002], interfaces: ["r0"] }],
        // The smallest queue the kernel allows, so a burst overflows it.
        udp: { listenerReceiveBytes: 1 },
      });
      await env.lab.waitForUdpPort(env.lab.server, 7002);
      env.lab.warmNeighbours();
    }, 60_000);
    afterAll(async () => {
      await env?.close();
    });

    /** The kernel's own drop count (sk_drops: `ss -m` skmem "d") of the listener socket. */
    const kernelDrops = () => {
      const text = env.lab.exec(env.lab.router, ["ss", "-Huanm", "sport = :12345"]).stdout;
      const counts = [...text.matchAll(/\bd(\d+)\)/g)].map((match) => Number(match[1]));
      if (counts.length === 0) throw new Error(`no listener socket on :12345 in ss:\n${text}`);
      return counts.reduce((sum, count) => sum + count, 0);
    };
    /** Sends `count` datagrams from one fixed client port (one flow) to the echo server. */
    const send = (count: number, payload: string) =>
      env.python(
        env.lab.client,
        `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("${LAB.client4}", 40123))
for i in range(${count}):
    s.sendto(${payload}, ("${S4}", 7002))`,
      );

    test("every datagram is either relayed or counted as dropped by the kernel (SO_RXQ_OVFL)", async () => {
      // 4000 datagrams back to back overflow the queue. The kernel reports its drop
      // counter with the next datagram the relay reads, so one more follows once every
      // datagram of the burst was read by the relay or dropped by the kernel.
      send(4000, 'b"x" * 200');
      await waitFor(
        async () => ({
          read: (await env.relay!.metrics()).udp.packetsFromClients,
          dropped: kernelDrops(),
        }),
        (seen) => seen.read + seen.dropped >= 4000,
        { what: "the burst of 4000 to be read by the relay or dropped", timeoutMs: 10_000 },
      );
      send(1, 'b"last"');
      const m = await waitForUdp(
        env,
        "the relay to read the last datagram and report the kernel's drops",
        (udp) => udp.packetsFromClients + udp.droppedListenerQueueFull >= 4001,
      );
      expect(m.droppedListenerQueueFull).toBeGreaterThan(0);
      expect(m.packetsFromClients + m.droppedListenerQueueFull).toBe(4001);
      expect(m.packetsToTargets).toBe(m.packetsFromClients);
      // Every drop the kernel made is one the relay counted.
      expect(m.droppedListenerQueueFull).toBe(kernelDrops());
    });
  });

  describe("address-and-port-dependent mapping", () => {
    let env: RelayLab;
    beforeAll(async () => {
      env = new RelayLab();
      env.spawnEcho("--stamp", `${S4}:7001`, `${LAB.serverExtra4[0]}:7001`);
      await env.startRelay({
        listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
        intercept: [{ listener: "udp4", ports: [7001], interfaces: ["r0"] }],
        udp: { mapping: "address-and-port-dependent" },
      });
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      env.lab.warmNeighbours();
    }, 60_000);
    afterAll(async () => {
      await env?.close();
    });

    test("one client port gets a separate relay port per destination", async () => {
      const [first, second] = relayPortsSeen(env, [S4, LAB.serverExtra4[0]]);
      expect(first).toStartWith(`${LAB.routerServer4}:`);
      expect(second).toStartWith(`${LAB.routerServer4}:`);
      expect(second).not.toBe(first);
      const m = (await env.relay!.metrics()).udp;
      expect(m.upstreamSockets).toBe(2);
      expect(m.sessionsActive).toBe(2);
    });
  });

  describe("UDP session limits through kernel TPROXY", () => {
    let env: RelayLab;
    const LIMITS_CONFIG = {
      listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
      intercept: [{ listener: "udp4", ports: ["7000-7010"], interfaces: ["r0"] }],
      // Idle timeouts are what the tests observe; each leaves the test seconds between
      // the client's last datagram and its check that the session still exists.
      udp: {
        sessionsMax: 64,
        idleTimeoutMs: 2000,
        idleTimeoutMsByPort: { "7003": 6000, "7004": 60_000 },
      },
    };

    beforeAll(async () => {
      env = new RelayLab();
      env.spawnEcho(`${S4}:7002`, `${S4}:7003`, `${S4}:7004`);
      await env.startRelay(LIMITS_CONFIG);
      await env.lab.waitForUdpPort(env.lab.server, 7003);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("sessions expire after their idle timeout, per destination port", async () => {
      const r = env.probe([`${S4}:7003`, `${S4}:7002`], { flows: 5, packets: 1 });
      expect(r.received).toBe(5);
      const base = (await env.relay!.metrics()).udp;
      expect(base.sessionsActive).toBe(5);
      // When the 2 port-7002 sessions (2000 ms) have expired, the 3 port-7003 ones
      // (6000 ms) live on.
      const mid = await waitForUdp(
        env,
        "the 2 sessions to port 7002 to expire",
        (udp) => udp.sessionsExpired >= 2,
      );
      expect(mid.sessionsExpired).toBe(2);
      expect(mid.sessionsActive).toBe(3);
      const end = await waitForUdp(
        env,
        "the 3 sessions to port 7003 to expire too",
        (udp) => udp.sessionsExpired >= 5,
      );
      expect(end.sessionsActive).toBe(0);
      expect(end.sessionsExpired).toBe(5);
      expect(end.upstreamSockets).toBe(0);
    }, 40_000);

    test("no descriptor leaks: after every session expires the relay holds what it held at start", async () => {
      const pid = env.relay!.proc.pid;
      const fds = () =>
        Number(
          env.lab.exec(env.lab.router, ["sh", "-c", `ls /proc/${pid}/fd | wc -l`]).stdout.trim(),
        );
      const idle = fds();
      const r = env.probe([`${S4}:7002`], { flows: 40, packets: 2 });
      expect(r.received).toBe(80);
      expect(fds()).toBeGreaterThanOrEqual(idle + 40);
      await waitForUdp(env, "the 40 sessions to expire", (udp) => udp.sessionsActive === 0);
      const left = await waitFor(fds, (count) => count <= idle, {
        what: `the relay's descriptors to return to the ${idle} it held idle`,
        timeoutMs: COUNTED_TIMEOUT_MS,
      });
      expect(left).toBe(idle);
    }, 40_000);

    test("a flood of new flows beyond capacity: table stays at capacity, evictions counted", async () => {
      const before = (await env.relay!.metrics()).udp;
      const r = env.probe([`${S4}:7004`], { flows: 200, packets: 1, timeoutMs: 1000 });
      const m = await waitForUdp(
        env,
        "a session for each of the 200 flows",
        (udp) => udp.sessionsCreated - before.sessionsCreated >= 200,
      );
      expect(m.sessionsCreated - before.sessionsCreated).toBe(200);
      expect(m.sessionsActive).toBe(64);
      expect(m.sessionsEvicted - before.sessionsEvicted).toBe(136);
      expect(m.upstreamSockets).toBe(64);
      // A reply to an evicted flow meets a closed upstream socket (the kernel answers
      // ICMP port unreachable); it is never delivered to another flow.
      expect(r.wrongFlow).toBe(0);
      expect(r.wrongSource).toBe(0);
    });
  });
}
