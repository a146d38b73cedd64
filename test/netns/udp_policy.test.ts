// End-to-end: the policy on the UDP path, with real clients through kernel TPROXY.
//
//   client ns ── router ns (relay, rules by name/port) ── server ns
//   kdig @198.18.1.2   a.test -> forward "resolverA" ─────► dnsmasq A on .3 / ::3
//                      b.test -> forward "resolverB" ─────► dnsmasq B on .4 / ::4
//   gtlsclient qa.test (SNI) -> forward "quicA" ──────────► gtlsserver A on .3 / ::3
//              qb.test (SNI) -> forward "quicB" ──────────► gtlsserver B on .4 / ::4
//   port 9001 -> drop; port 9002 -> reject (ICMP port unreachable from the destination)
//
// Nothing listens on the original destination 198.18.1.2 / 2001:2:0:2::2: every answer
// proves the forward, and the client checks it came from the address it asked. Both
// udp.dataPlane modes. Below: reject without CAP_NET_RAW (a throwaway namespace), and
// UDP through a socks5 outbound with Dante (UDP ASSOCIATE) to dnsmasq on 198.18.1.2.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { clientHello, hex, multiInitial, QUIC_V1, toHex } from "../fixtures/classify/build.ts";
import { JsonLinesProcess } from "../lab/json_lines.ts";
import { type Dante, danteUnavailableReason, startDante } from "../lab/dante.ts";
import { dnsmasqArgv, dnsmasqOn, kdigUdp, LAB, labUnavailableReason, run } from "../lab/netns.ts";
import { QUIC_BODY, QuicPeers } from "../lab/quic_peers.ts";
import { waitFor } from "../lab/wait_for.ts";
import { RELAY_BIN, RELAY_MAIN, withControlSocket } from "../lab/relay_process.ts";
import { flowRecords, labSkipReason, RelayLab } from "./harness.ts";

const [A4, B4, DEAD4] = LAB.serverExtra4;
const [A6, B6, DEAD6] = LAB.serverExtra6;
const QUIC_BODY_B = "served by B\n";
const HOLD_PACKETS_PER_FLOW = 4;
/** The arena: 32 slots of 2048 bytes. */
const HOLD_BYTES = 65_536;
const FAILURES_MAX = 2;
/** The "pinned" direct outbound's source addresses (added to the router) and mark. */
const PINNED4 = "198.18.1.250";
const PINNED6 = "2001:2:0:2::250";
const PINNED_MARK = 0x77;

const forward = (name: string, targets: string[], healthCheck = {}) => ({
  name,
  type: "forward",
  targets,
  healthCheck,
});

const config = (dataPlane: string, flowLogPath: string) => ({
  listeners: [
    { name: "udp4", address: "127.0.0.1", port: 12345 },
    { name: "udp6", address: "::1", port: 12345 },
  ],
  intercept: [
    { listener: "udp4", ports: [53, 443, 7001, 9001, 9002, 9003], interfaces: ["r0"] },
    { listener: "udp6", ports: [53, 443, 7001, 9001, 9002, 9003], interfaces: ["r0"] },
  ],
  udp: {
    datagramBytesMax: 2048,
    holdBytesMax: HOLD_BYTES,
    holdPacketsPerFlowMax: HOLD_PACKETS_PER_FLOW,
    holdTimeoutMs: 2000,
    // The hostile flows below never complete their ClientHello: sniffing must not give
    // up before they fill their bound.
    sniffPacketsMax: 16,
    dataPlane,
    // DNS and drop flows end soon after their traffic: their flow records show.
    idleTimeoutMsByPort: { "53": 300, "9001": 300 },
  },
  flowLog: { path: flowLogPath },
  outbounds: [
    forward("resolverA", [`${A4}:53`, `[${A6}]:53`]),
    forward("resolverB", [`${B4}:53`, `[${B6}]:53`]),
    // The first IPv4 target answers nothing (ICMP port unreachable): failover to B.
    forward("failover", [`${DEAD4}:53`, `${B4}:53`, `[${DEAD6}]:53`, `[${B6}]:53`], {
      answerTimeoutMs: 300,
      failuresMax: FAILURES_MAX,
      retryIntervalMs: 600_000,
    }),
    forward("quicA", [`${A4}:443`, `[${A6}]:443`]),
    forward("quicB", [`${B4}:443`, `[${B6}]:443`]),
    {
      name: "pinned",
      type: "direct",
      bindAddress4: PINNED4,
      bindAddress6: PINNED6,
      interface: "r1",
      mark: PINNED_MARK,
    },
  ],
  rules: [
    { name: "a", names: { exact: ["a.test"] }, action: "resolverA" },
    { name: "b", names: { exact: ["b.test"] }, action: "resolverB" },
    { name: "f", names: { exact: ["f.test"] }, action: "failover" },
    { name: "qa", names: { suffix: ["qa.test"] }, action: "quicA" },
    { name: "qb", names: { suffix: ["qb.test"] }, action: "quicB" },
    { name: "blocked", ports: [9001, 9003], action: "drop" },
    { name: "refused", ports: [9002], action: "reject" },
    { name: "echo", ports: [7001], action: "pinned" },
  ],
});

/**
 * One UDP socket to target:port in the client namespace that sends a datagram per line
 * on its stdin and reports {"sent": n}: a flow that stays open across a reload.
 */
const LONG_FLOW = (target: string, port: number) => `import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("${target}", ${port}))
print(json.dumps({"port": s.getsockname()[1]}), flush=True)
n = 0
for line in sys.stdin:
    s.send(b"datagram")
    n += 1
    print(json.dumps({"sent": n}), flush=True)
`;

/** Polls the relay's UDP counters until `done` holds. */
function waitForUdp(env: RelayLab, what: string, done: (udp: any) => boolean) {
  return waitFor(async () => (await env.relay!.metrics()).udp, done, {
    what,
    timeoutMs: 10_000,
  });
}

/** kdig @server name type from the client namespace: its output (never throws). */
function kdig(env: RelayLab, server: string, name: string, type: string): string {
  return kdigUdp(env.lab, server, name, type, 1);
}

/**
 * A connected UDP socket with IP_RECVERR sends one datagram to target:port; prints
 * "refused ADDRESS TYPE CODE" (the ICMP error's offender, from the error queue) or
 * "silent" when nothing came back within the timeout.
 */
function connectedProbe(family: 4 | 6, target: string, port: number, timeoutS: number, sends = 1) {
  const af = family === 4 ? "socket.AF_INET" : "socket.AF_INET6";
  const level = family === 4 ? "socket.IPPROTO_IP" : "socket.IPPROTO_IPV6";
  const recvErr = family === 4 ? 11 : 25; // IP_RECVERR, IPV6_RECVERR
  const addrAt = family === 4 ? "4:8" : "8:24";
  return `import socket
s = socket.socket(${af}, socket.SOCK_DGRAM)
s.setsockopt(${level}, ${recvErr}, 1)
s.connect(("${target}", ${port}))
s.settimeout(${timeoutS})
for _ in range(${sends}):
    s.send(b"blocked datagram 0123456789")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    _, anc, _, _ = s.recvmsg(100, 512, socket.MSG_ERRQUEUE)
    d = anc[0][2]
    offender = socket.inet_ntop(${af}, d[16:][${addrAt}])
    print("refused", offender, d[5], d[6])
except socket.timeout:
    print("silent")
`;
}

const skip = labSkipReason();
for (const dataPlane of skip ? [] : ["worker", "callback"]) {
  describe(`UDP policy (${dataPlane}): rules by name and port, forward, drop, reject, hold`, () => {
    let env: RelayLab;
    let peersA: QuicPeers;
    let peersB: QuicPeers;
    const dir = mkdtempSync(join(tmpdir(), "relay-udp-policy-"));
    const flowLogPath = join(dir, "flow.log");
    const CONFIG = config(dataPlane, flowLogPath);

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      env.spawn(
        lab.server,
        dnsmasqOn(A4, A6, [
          ["a.test", "198.18.1.101", "2001:2:0:2::101"],
          ["b.test", "198.18.1.102", "2001:2:0:2::102"],
          ["f.test", "198.18.1.103", "2001:2:0:2::103"],
        ]),
      );
      env.spawn(
        lab.server,
        dnsmasqOn(B4, B6, [
          ["a.test", "198.18.1.201", "2001:2:0:2::201"],
          ["b.test", "198.18.1.202", "2001:2:0:2::202"],
          ["f.test", "198.18.1.203", "2001:2:0:2::203"],
        ]),
      );
      peersA = new QuicPeers(lab);
      peersB = new QuicPeers(lab);
      writeFileSync(join(peersB.dir, "htdocs", "index.html"), QUIC_BODY_B);
      for (const address of [A4, A6]) env.track(peersA.serve(address, 443));
      for (const address of [B4, B6]) env.track(peersB.serve(address, 443));
      // Every name leads to the one original destination: only the SNI tells them apart.
      lab.setHosts(lab.client, [
        [LAB.server4, "qa.test"],
        [LAB.server4, "qb.test"],
        [LAB.server6, "v6.qa.test"],
        [LAB.server6, "v6.qb.test"],
      ]);
      lab.exec(lab.router, ["ip", "addr", "add", `${PINNED4}/24`, "dev", "r1"]);
      lab.exec(lab.router, ["ip", "addr", "add", `${PINNED6}/64`, "dev", "r1", "nodad"]);
      // Counts the datagrams the relay sends with the pinned outbound's mark.
      lab.exec(
        lab.router,
        ["nft", "-f", "-"],
        `table inet pinned {
  chain out { type filter hook output priority 0; meta mark ${PINNED_MARK} udp dport 7001 counter; }
}
`,
      );
      env.spawnEcho("--stamp", `${LAB.server4}:7001`, `[${LAB.server6}]:7001`);
      await env.startRelay(CONFIG);
      await lab.waitForUdpPort(lab.server, 53);
      await lab.waitForUdpPort(lab.server, 443);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      try {
        await env?.close();
      } finally {
        peersA?.close();
        peersB?.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test("kdig: two names reach two resolvers; answers come from the address asked", async () => {
      const cases = [
        [LAB.server4, "a.test", "A", "198.18.1.101"],
        [LAB.server4, "b.test", "A", "198.18.1.202"],
        [LAB.server6, "a.test", "AAAA", "2001:2:0:2::101"],
        [LAB.server6, "b.test", "AAAA", "2001:2:0:2::202"],
      ];
      for (const [server, name, type, answer] of cases) {
        const out = kdig(env, server, name, type);
        expect(out).toContain("status: NOERROR");
        expect(out).toContain(answer);
        // kdig names where the answer came from: the original destination.
        expect(out).toContain(`;; From ${server}@53(UDP)`);
      }
      // Forced DNS (src/dns/forwarder.ts): each query decided by its own name, no session.
      const m = await env.relay!.metrics();
      expect(m.udp.dnsAnswersRelayed).toBeGreaterThanOrEqual(4);
      expect(m.sessions.some((s: any) => s.protocol === "dns")).toBe(false);
    });

    test("QUIC: two SNIs end at two servers; a ClientHello over two Initials too", () => {
      const fetch = (host: string, peers: QuicPeers, extra: string[] = []) =>
        peers.fetch(host, 443, extra);
      expect(fetch("qa.test", peersA)).toBe(QUIC_BODY);
      expect(fetch("qb.test", peersB)).toBe(QUIC_BODY_B);
      expect(fetch("v6.qa.test", peersA)).toBe(QUIC_BODY);
      expect(fetch("v6.qb.test", peersB)).toBe(QUIC_BODY_B);
      // FFDHE8192: the ClientHello spans two Initials, both held until the SNI is known.
      const split = ["--groups=-GROUP-ALL:+GROUP-FFDHE8192:+GROUP-X25519"];
      expect(fetch("qb.test", peersB, split)).toBe(QUIC_BODY_B);
      expect(fetch("v6.qa.test", peersA, split)).toBe(QUIC_BODY);
    });

    for (const family of [4, 6] as const) {
      const target = family === 4 ? LAB.serverExtra4[2] : LAB.serverExtra6[2];
      test(`reject (IPv${family}): ECONNREFUSED at once, ICMP from the original destination`, async () => {
        const before = (await env.relay!.metrics()).udp;
        const out = env.python(env.lab.client, connectedProbe(family, target, 9002, 5));
        // ICMP type/code: port unreachable (3/3 for IPv4, 1/4 for ICMPv6).
        expect(out.stdout.trim()).toBe(`refused ${target} ${family === 4 ? "3 3" : "1 4"}`);
        const udp = await waitForUdp(env, "the reject counted", (u) => u.rejectIcmpSent > 0);
        expect(udp.rejectIcmpSent - before.rejectIcmpSent).toBe(1);
        expect(udp.droppedRejected - before.droppedRejected).toBe(1);
      });

      test(`drop (IPv${family}): nothing comes back, each datagram counted`, async () => {
        const before = (await env.relay!.metrics()).udp;
        const out = env.python(env.lab.client, connectedProbe(family, target, 9001, 0.3, 2));
        expect(out.stdout.trim()).toBe("silent");
        const udp = await waitForUdp(
          env,
          "the drops counted",
          (u) => u.droppedByRule - before.droppedByRule >= 2,
        );
        // One session: it remembers, the second datagram is dropped without a decision.
        expect(udp.sessionsCreated - before.sessionsCreated).toBe(1);
        expect(udp.droppedByRule - before.droppedByRule).toBe(2);
      });
    }

    test("direct with options: source address, interface and mark of the outbound", () => {
      const r4 = env.probe([`${LAB.server4}:7001`], { flows: 2, packets: 3, stamped: true });
      expect(r4).toMatchObject({ received: 6, lost: 0, wrongSource: 0 });
      expect(r4.serverSaw).toEqual([PINNED4]);
      const r6 = env.probe([`[${LAB.server6}]:7001`], { flows: 2, packets: 3, stamped: true });
      expect(r6).toMatchObject({ received: 6, lost: 0, wrongSource: 0 });
      expect(r6.serverSaw).toEqual([`[${PINNED6}]`]);
      const counted = env.lab.exec(env.lab.router, [
        "nft",
        "list",
        "chain",
        "inet",
        "pinned",
        "out",
      ]);
      // Every payload byte of the 12 datagrams (64 bytes each) passed the marked rule. With
      // udp.gso a run of one flow passes netfilter as one packet (docs/udp_gso.md), so
      // the packets are 12 or fewer; each carries one header (IPv4 28, IPv6 48 bytes),
      // which leaves one split p4 + p6 of them that explains the bytes exactly (a missing
      // datagram would leave 64 bytes that no such split can explain).
      const [, packets, bytes] = /packets (\d+) bytes (\d+)/.exec(counted.stdout)!.map(Number);
      const p6 = (bytes! - 12 * 64 - 28 * packets!) / 20;
      const p4 = packets! - p6;
      expect(Number.isInteger(p6) && p4 >= 1 && p4 <= 6 && p6 >= 1 && p6 <= 6).toBe(true);
    });

    test("forward failover: after failuresMax unanswered flows the dead target is skipped", async () => {
      // Each kdig is a new flow (a new source port); its hash picks a target. Flows that
      // pick the dead one go unanswered until it is marked down.
      await waitFor(
        async () => {
          kdig(env, LAB.server4, "f.test", "A");
          return (await env.relay!.metrics()).udp;
        },
        (u) => u.forwardTargetsDown >= 1,
        { what: "the dead target marked down", timeoutMs: 60_000 },
      );
      const udp = (await env.relay!.metrics()).udp;
      expect(udp.forwardAnswerTimeouts).toBeGreaterThanOrEqual(FAILURES_MAX);
      for (let i = 0; i < 5; i++) {
        const out = kdig(env, LAB.server4, "f.test", "A");
        expect(out).toContain("198.18.1.203");
        expect(out).toContain(`;; From ${LAB.server4}@53(UDP)`);
      }
    });

    test("hold buffer: flows that never finish a ClientHello fill only their own bound", async () => {
      const before = (await env.relay!.metrics()).udp;
      // 10 flows (one socket each), each sending 6 copies of the first of 4 Initials
      // of a large ClientHello: never complete. 8 flows fill the 32-slot arena with 4
      // each (2 more each over their own bound); the last 2 find it full.
      const hello = clientHello({ sni: "never.test", paddingBytes: 3000 });
      const flows = Array.from({ length: 10 }, (_, k) => {
        const dcid = hex(`0badc0de${k.toString(16).padStart(8, "0")}`);
        return toHex(multiInitial(QUIC_V1, dcid, hello, 4)[0]);
      });
      env.python(
        env.lab.client,
        `import socket
for packet in ${JSON.stringify(flows)}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("${LAB.server4}", 443))
    for _ in range(6):
        s.send(bytes.fromhex(packet))
`,
      );
      const held = await waitForUdp(
        env,
        "60 hostile datagrams read",
        (u) => u.packetsFromClients - before.packetsFromClients >= 60,
      );
      expect(held.droppedHoldFull - before.droppedHoldFull).toBe(16);
      expect(held.droppedHoldArenaFull - before.droppedHoldArenaFull).toBe(12);
      // Other flows go on while the arena is full: a DNS query is decided by its own
      // datagram and sent from the receive slab.
      const out = kdig(env, LAB.server4, "a.test", "A");
      expect(out).toContain("198.18.1.101");
      const after = await waitForUdp(
        env,
        "the held flows released on timeout",
        (u) => u.holdReleasedTimeout - before.holdReleasedTimeout >= 10,
      );
      expect(after.holdBytes).toBe(0);
      expect(after.sessionsHolding).toBe(0);
    });

    test("flow records carry the rule and the outbound", async () => {
      const records = await waitFor(
        async () => flowRecords(dir, flowLogPath),
        (r) =>
          r.some((x) => x.name === "a.test" && x.rule === "a") &&
          r.some((x) => x.targetPort === 9001),
        { what: "records of the a.test and port 9001 flows", timeoutMs: 15_000 },
      );
      const a = records.filter((x) => x.name === "a.test" && x.rule === "a");
      expect(a.every((x) => x.outbound === "resolverA" && x.packetsToClient === 1)).toBe(true);
      const dropped = records.filter((x) => x.targetPort === 9001);
      expect(dropped.every((x) => x.rule === "blocked" && x.outbound === "drop")).toBe(true);
    });

    test("reload: new flows follow the new rules, an open flow keeps its decision", async () => {
      const relay = env.relay!;
      const argv = ["python3", "-c", LONG_FLOW(LAB.serverExtra4[2], 9003)];
      const proc = env.track(env.lab.spawn(env.lab.client, argv, { stdin: "pipe" }));
      const flow = new JsonLinesProcess("long flow", proc as Subprocess<"pipe", "pipe", "pipe">);
      const send = async (n: number) => {
        proc.stdin!.write("x\n");
        proc.stdin!.flush();
        await flow.waitFor((l) => l.sent === n, 5000);
      };
      const { port } = await flow.waitFor((l) => l.port !== undefined, 5000);
      const before = (await relay.metrics()).udp;
      await send(1);
      await waitForUdp(env, "the drop", (u) => u.droppedByRule > before.droppedByRule);

      // The new policy: a.test goes to resolver B, ports 9001 and 9003 are not dropped.
      const next: any = config(dataPlane, flowLogPath);
      next.rules = next.rules.filter((r: any) => r.name !== "blocked");
      next.rules[0].action = "resolverB";
      await env.reload(next, 20_000);
      const out = kdig(env, LAB.server4, "a.test", "A");
      expect(out).toContain("198.18.1.201");
      expect(out).toContain(`;; From ${LAB.server4}@53(UDP)`);

      // The open flow is still dropped by the rule it was decided by.
      await send(2);
      const udp = await waitForUdp(
        env,
        "the open flow's second drop",
        (u) => u.droppedByRule - before.droppedByRule >= 2,
      );
      expect(udp.droppedByRule - before.droppedByRule).toBe(2);
      const m = await relay.metrics();
      const open = m.sessions.find((s: any) => s.client === `${LAB.client4}:${port}`);
      expect(open).toMatchObject({ outbound: "drop", rule: "(before reload)" });
      // A new flow to the same port goes direct now (the default).
      env.python(env.lab.client, connectedProbe(4, LAB.serverExtra4[2], 9003, 0.5));
      const after = await relay.metrics();
      const fresh = after.sessions.filter(
        (s: any) => s.target.endsWith(":9003") && s.client !== `${LAB.client4}:${port}`,
      );
      expect(fresh.some((s: any) => s.outbound === "direct" && s.rule === "default")).toBe(true);
      expect(after.udp.droppedByRule - before.droppedByRule).toBe(2);
    });
  });
}

if (!skip) {
  describe("UDP reject needs CAP_NET_RAW", () => {
    const ns = `trl-rej-${randomBytes(4).toString("hex")}`;
    const dir = mkdtempSync(join(tmpdir(), "relay-reject-"));
    const inNs = (argv: string[]) => {
      const r = spawnSync("ip", ["netns", "exec", ns, ...argv], {
        encoding: "utf8",
        timeout: 30_000,
      });
      return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
    };
    const withoutNetRaw = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"];
    const configFile = (action: string) => {
      const path = join(dir, `${action}.json`);
      const raw = {
        listeners: [{ name: "u4", address: "127.0.0.1", port: 12345 }],
        rules: [{ ports: [443], action }],
      };
      writeFileSync(path, JSON.stringify(withControlSocket(raw, join(dir, `${action}.sock`))));
      return path;
    };

    beforeAll(() => {
      run(["ip", "netns", "add", ns]);
      run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    });

    afterAll(() => {
      const pids = run(["ip", "netns", "pids", ns], undefined, true).stdout.trim();
      if (pids) run(["kill", "-9", ...pids.split(/\s+/)], undefined, true);
      run(["ip", "netns", "del", ns], undefined, true);
      rmSync(dir, { recursive: true, force: true });
    });

    test("a reject rule without CAP_NET_RAW fails the start (exit 77), naming it", () => {
      const r = inNs([...withoutNetRaw, RELAY_BIN, RELAY_MAIN, "--config", configFile("reject")]);
      expect(r.stderr).toContain("It needs CAP_NET_RAW besides CAP_NET_ADMIN");
      expect(r.status).toBe(77);
    });

    test("without a reject rule CAP_NET_RAW is not needed", () => {
      const driver = join(import.meta.dir, "relay_driver.py");
      const relay = [...withoutNetRaw, RELAY_BIN, RELAY_MAIN, "--config", configFile("drop")];
      const r = JSON.parse(inNs(["python3", driver, "sighup", "--", ...relay]).stdout);
      expect(r.ready).toContain('"event":"ready"');
      expect(r.exitCode).toBe(0);
    });
  });
}

const danteUnavailable = labUnavailableReason() ?? danteUnavailableReason();
const socksSkip = labSkipReason(danteUnavailable);
for (const dataPlane of socksSkip ? [] : ["worker", "callback"]) {
  describe(`UDP through a socks5 outbound (${dataPlane}; Dante, UDP ASSOCIATE)`, () => {
    let env: RelayLab;
    let dante: Dante;
    let quic: QuicPeers;
    let big: Buffer;
    const dir = mkdtempSync(join(tmpdir(), "relay-socks-udp-"));
    const PROXY4 = LAB.serverExtra4[2];
    const PROXY6 = LAB.serverExtra6[2];

    beforeAll(async () => {
      if (danteUnavailable) throw new Error(`SOCKS5 lab unavailable: ${danteUnavailable}`);
      env = new RelayLab();
      const { lab } = env;
      env.spawn(lab.server, dnsmasqArgv("s.test", "198.18.1.77", "2001:2:0:2::77"));
      // HTTP/3 through the proxy: a real QUIC server behind it.
      quic = new QuicPeers(lab);
      big = quic.addFile("big.bin", 2 << 20);
      env.track(quic.serve(LAB.server4, 443));
      env.track(quic.serve(LAB.server6, 443));
      lab.setHosts(lab.client, [
        [LAB.server4, "h3.socks.test"],
        [LAB.server6, "h3v6.socks.test"],
      ]);
      dante = await startDante(lab, lab.server, dir, {
        listen: [PROXY4, PROXY6],
        port: 1080,
        externalInterface: LAB.serverIf,
        clients: ["198.18.0.0/15", "2001:2::/48"],
        logPath: join(dir, "danted.log"),
      });
      env.track(dante.proc);
      await env.startRelay({
        listeners: [
          { name: "udp4", address: "127.0.0.1", port: 12345 },
          { name: "udp6", address: "::1", port: 12345 },
        ],
        intercept: [
          { listener: "udp4", ports: [53, 443, 9053], interfaces: ["r0"] },
          { listener: "udp6", ports: [53, 443, 9053], interfaces: ["r0"] },
        ],
        // Short idle timeouts: the flows end soon, and their associations with them.
        udp: { idleTimeoutMsByPort: { "53": 500, "443": 1000 }, dataPlane },
        outbounds: [
          { name: "proxy4", type: "socks5", server: `${PROXY4}:1080`, associationsMax: 8 },
          { name: "proxy6", type: "socks5", server: `[${PROXY6}]:1080`, associationsMax: 8 },
        ],
        rules: [
          { sources: ["198.18.0.0/15"], action: "proxy4" },
          { sources: ["2001:2::/48"], action: "proxy6" },
        ],
      });
      await lab.waitForUdpPort(lab.server, 53);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      try {
        await env?.close();
      } finally {
        quic?.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    /** Established TCP connections to the proxy's port, seen in namespace ns. */
    const controls = (ns: string, filter: string) =>
      env.lab
        .exec(ns, ["ss", "-Htn", "state", "established", filter])
        .stdout.split("\n")
        .filter((l) => l.trim() !== "").length;

    test("kdig through the proxy: the answer comes from the original destination", async () => {
      for (const [server, type, answer] of [
        [LAB.server4, "A", "198.18.1.77"],
        [LAB.server6, "AAAA", "2001:2:0:2::77"],
      ]) {
        const out = kdig(env, server, "s.test", type);
        expect(out).toContain("status: NOERROR");
        expect(out).toContain(answer);
        expect(out).toContain(`;; From ${server}@53(UDP)`);
      }
      const m = await env.relay!.metrics();
      expect(m.udp.socks5AssociationsOpened).toBeGreaterThanOrEqual(2);
      expect(m.udp.socks5AssociationsFailed).toBe(0);
      const viaProxy = m.sessions.filter((s: any) => s.outbound.startsWith("proxy"));
      expect(viaProxy.length).toBeGreaterThanOrEqual(2);
    });

    test("HTTP/3 download (gtlsclient) through the proxy, IPv4 and IPv6: bytes intact", async () => {
      // QUIC completes only if every server datagram comes back from the address the client
      // sent to: a finished download is itself the check that replies come from the
      // original destination.
      const before = (await env.relay!.metrics()).udp;
      for (const host of ["h3.socks.test", "h3v6.socks.test"]) {
        expect(quic.fetch(host, 443)).toBe(QUIC_BODY);
        const download = quic.startFetch(host, 443, "big.bin");
        env.track(download.proc);
        const body = await download.done;
        expect(body.length).toBe(big.length);
        expect(body.equals(big)).toBe(true);
      }
      const m = await env.relay!.metrics();
      const quicFlows = m.sessions.filter(
        (x: any) => x.protocol === "quic" && x.outbound.startsWith("proxy"),
      );
      expect(quicFlows.length).toBeGreaterThanOrEqual(2);
      expect(m.udp.socks5AssociationsFailed).toBe(before.socks5AssociationsFailed);
    });

    test("once the flows expire: no control connection at the relay, none at Dante", async () => {
      await waitForUdp(env, "the associations closed", (u) => u.socks5Associations === 0);
      await waitFor(
        async () => controls(env.lab.router, "dport = :1080"),
        (n) => n === 0,
        { what: "no control connection from the relay", timeoutMs: 10_000 },
      );
      await waitFor(
        async () => controls(env.lab.server, "sport = :1080"),
        (n) => n === 0,
        { what: "no association left at Dante", timeoutMs: 10_000 },
      );
    });

    test("the control connection's end ends its sessions (counted)", async () => {
      const argv = ["python3", "-c", LONG_FLOW(LAB.server4, 9053)];
      const proc = env.track(env.lab.spawn(env.lab.client, argv, { stdin: "pipe" }));
      const flow = new JsonLinesProcess("long flow", proc as Subprocess<"pipe", "pipe", "pipe">);
      await flow.waitFor((l) => l.port !== undefined, 5000);
      proc.stdin!.write("x\n");
      proc.stdin!.flush();
      await flow.waitFor((l) => l.sent === 1, 5000);
      const before = await waitForUdp(
        env,
        "the association ready",
        (u) => u.packetsToTargets > 0 && u.socks5Associations === 1,
      );
      // Dante's children hold the association: end every danted of the server namespace
      // (by pid: only those this test started live there).
      const ours = run(["ip", "netns", "pids", env.lab.server]).stdout.split(/\s+/);
      const danted = ours.filter((pid) => {
        const comm = run(["cat", `/proc/${pid}/comm`], undefined, true).stdout.trim();
        return pid !== "" && comm === "danted";
      });
      expect(danted.length).toBeGreaterThan(0);
      run(["kill", "-9", ...danted]);
      const after = await waitForUdp(
        env,
        "the session ended with its association",
        (u) => u.sessionsEndedSocks5 > before.sessionsEndedSocks5,
      );
      expect(after.socks5ControlLost).toBeGreaterThanOrEqual(1);
      expect(after.socks5Associations).toBe(0);
    });
  });
}
