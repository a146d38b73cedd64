// DNS over TCP (tcp/53) through the relay, IPv4 and IPv6, read per message
// (src/dns/tcp_stream.ts): each query is decided by the policy on its name. Forced mode
// is a rule that sends tcp/53 to a `forward` outbound (the configured resolver, dnsmasq
// on another address) while the client talks to the address it asked, where nothing
// listens: the answer can only come through the relay, on a connection the client holds
// with its original destination. A blocked name is answered in place (NXDOMAIN, or a
// configured address) with no SYN at any resolver; several queries on one connection and
// pipelined queries (blocked and forwarded mixed) come back whole, each with its ID; a
// UDP answer with TC=1 makes kdig retry over TCP through the relay (direct: to the
// address asked); malformed messages, a length prefix then silence, and a client that
// never reads its answers are counted and closed with no descriptor left; every query
// gets a query-log record. The last tests restart the relay: failover to a second
// resolver, tcp.dnsConnectionsMax (past it: relayed as bytes) and tcp.dnsPorts [] (bytes,
// as before: a rule on names finds no ClientHello there).
//
//   client ns ── router ns (relay, tcp/53 intercepted) ── server ns:
//     dnsmasq on E3:53 / E3v6:53 (the forced resolver, forced.relay.test -> .77 / ::77)
//     dns_tcp_peers.py resolver on server4:53 / server6:53 (UDP: TC=1, TCP: the answer)
//     nothing on E4 / E4v6 (a dead resolver) nor E5 / E5v6 (the original destination)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { danteUnavailableReason, startDante } from "../lab/dante.ts";
import { JsonLinesProcess } from "../lab/json_lines.ts";
import { LAB, labUnavailableReason } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { flowRecords, labSkipReason, RelayLab } from "./harness.ts";

const PEERS = join(import.meta.dir, "dns_tcp_peers.py");
const [E3, E4, E5] = LAB.serverExtra4;
const [E3v6, E4v6, E5v6] = LAB.serverExtra6;
const IDLE_TIMEOUT_MS = 2000;
/** tcp.dnsIdleTimeoutMs, low: the stalled clients below are closed within a second. */
const DNS_IDLE_TIMEOUT_MS = 1000;
const FORCED = { name: "forced.relay.test", a: "198.18.1.77", aaaa: "2001:2:0:2::77" };
const PIPELINED = ["p1.relay.test", "p2.relay.test", "p3.relay.test"];
/** Under the "block" rule's suffix: NXDOMAIN from the relay itself. */
const BLOCKED = "ads.blocked.relay.test";
/** The "pin" rule's name: the sinkhole's address from the relay itself. */
const PINNED = { name: "pinned.relay.test", a: "198.18.1.66", aaaa: "2001:2:0:2::66" };
const FAILOVER = { name: "failover.relay.test", a: "198.18.1.88", aaaa: "2001:2:0:2::88" };
/** The "socks" rule's name: the whole connection through Dante (on server4:1080). */
const SOCKS = { name: "socks.relay.test", a: "198.18.1.44", aaaa: "2001:2:0:2::44" };
const SOCKS_PORT = 1080;

const forward = (name: string, targets: string[]) => ({
  name,
  type: "forward",
  targets,
  // The dead resolver is marked down at its first refused connect.
  healthCheck: { failuresMax: 1, retryIntervalMs: 60_000 },
});

const relayConfig = (flowLogPath: string) => ({
  listeners: [
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12370 },
    { name: "tcp6", protocol: "tcp", address: "::1", port: 12370 },
  ],
  intercept: ["tcp4", "tcp6"].map((listener) => ({ listener, ports: [53] })),
  tcp: { idleTimeoutMs: IDLE_TIMEOUT_MS, dnsIdleTimeoutMs: DNS_IDLE_TIMEOUT_MS },
  flowLog: { path: flowLogPath },
  outbounds: [
    { name: "resolver4", type: "forward", targets: [`${E3}:53`] },
    { name: "resolver6", type: "forward", targets: [`[${E3v6}]:53`] },
    forward("failover4", [`${E4}:53`, `${E3}:53`]),
    forward("failover6", [`[${E4v6}]:53`, `[${E3v6}]:53`]),
    { name: "dante", type: "socks5", server: `${LAB.server4}:${SOCKS_PORT}` },
    { name: "blocked", type: "dnsAnswer", rcode: "NXDOMAIN" },
    {
      name: "sinkhole",
      type: "dnsAnswer",
      rcode: "NOERROR",
      address4: PINNED.a,
      address6: PINNED.aaaa,
    },
  ],
  rules: [
    // No protocol: blocked over UDP and TCP alike.
    { name: "block", names: { suffix: ["blocked.relay.test"] }, action: "blocked" },
    { name: "pin", protocol: "tcp", names: { exact: [PINNED.name] }, action: "sinkhole" },
    {
      name: "failover6",
      protocol: "tcp",
      sources: ["2001:2::/48"],
      names: { exact: [FAILOVER.name] },
      action: "failover6",
    },
    { name: "failover4", protocol: "tcp", names: { exact: [FAILOVER.name] }, action: "failover4" },
    { name: "socks", protocol: "tcp", names: { exact: [SOCKS.name] }, action: "dante" },
    // The fake resolver of the truncation test answers at its own address.
    {
      name: "tc-pass",
      protocol: "tcp",
      ports: [53],
      destinations: [LAB.server4, LAB.server6],
      action: "direct",
    },
    {
      name: "forced6",
      protocol: "tcp",
      ports: [53],
      sources: ["2001:2::/48"],
      action: "resolver6",
    },
    { name: "forced4", protocol: "tcp", ports: [53], action: "resolver4" },
  ],
});

const FAMILIES = [
  {
    name: "IPv4",
    original: E5,
    fake: LAB.server4,
    type: "A",
    forced: FORCED.a,
    pinned: PINNED.a,
    resolver: `${E3}:53`,
    v6: false,
  },
  {
    name: "IPv6",
    original: E5v6,
    fake: LAB.server6,
    type: "AAAA",
    forced: FORCED.aaaa,
    pinned: PINNED.aaaa,
    resolver: `[${E3v6}]:53`,
    v6: true,
  },
] as const;

const unavailable = labUnavailableReason() ?? danteUnavailableReason();
const skip = labSkipReason(unavailable);
if (!skip) {
  describe("DNS over TCP through the relay", () => {
    let env: RelayLab;
    let fake: JsonLinesProcess;
    const dir = mkdtempSync(join(tmpdir(), "relay-dns-tcp-"));
    const flowLog = join(dir, "flow.log");
    const tcp = async () => (await env.relay!.metrics()).tcp;
    const settle = () =>
      waitFor(tcp, (m) => m.connectionsActive === 0, {
        what: "every connection through the relay to close",
        timeoutMs: 15_000,
      });
    const fdsWithoutPool = async () => {
      const m = await settle();
      return readdirSync(`/proc/${env.relay!.proc.pid}/fd`).length - 2 * m.pipesPooled;
    };
    /** kdig's answer and, after it, its warnings (stderr). */
    const kdig = (args: string[], allowFail = false) => {
      const argv = ["kdig", "+timeout=3", "+retry=0", ...args];
      const r = env.lab.exec(env.lab.client, argv, undefined, allowFail);
      return `${r.stdout}\n${r.stderr}`;
    };
    const peer = (args: string[]) => {
      const r = env.lab.exec(env.lab.client, ["python3", PEERS, ...args]);
      return JSON.parse(r.stdout.trim().split("\n").pop()!);
    };
    /** SYNs that reached any tcp/53 of the server namespace (the resolvers) so far. */
    const resolverSyns = () => {
      const out = env.lab.exec(env.lab.server, ["nft", "list", "chain", "inet", "dnstcp", "probe"]);
      return Number(/counter packets (\d+)/.exec(out.stdout)![1]);
    };

    beforeAll(async () => {
      if (unavailable) throw new Error(`DNS over TCP lab unavailable: ${unavailable}`);
      env = new RelayLab();
      const lab = env.lab;
      const records = [
        `--host-record=${FORCED.name},${FORCED.a},${FORCED.aaaa}`,
        `--host-record=${FAILOVER.name},${FAILOVER.a},${FAILOVER.aaaa}`,
        `--host-record=${SOCKS.name},${SOCKS.a},${SOCKS.aaaa}`,
      ];
      for (const [i, name] of PIPELINED.entries()) {
        records.push(`--host-record=${name},198.18.1.${81 + i},2001:2:0:2::${81 + i}`);
      }
      env.spawn(lab.server, [
        ...["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts"],
        ...["--bind-interfaces", `--listen-address=${E3}`, `--listen-address=${E3v6}`],
        ...["--port=53", "--user=root", "--pid-file", "--log-facility=-", ...records],
      ]);
      lab.exec(
        lab.server,
        ["nft", "-f", "-"],
        "table inet dnstcp {\n chain probe {\n  type filter hook input priority 0;\n" +
          "  tcp dport 53 tcp flags & (syn | ack) == syn counter\n }\n}\n",
      );
      fake = new JsonLinesProcess(
        "dns_tcp_peers",
        env.spawn(lab.server, ["python3", PEERS, "resolver", LAB.server4, LAB.server6]),
      );
      await fake.waitFor((l) => l.event === "ready", 10_000);
      const dante = await startDante(lab, lab.server, dir, {
        listen: [LAB.server4],
        port: SOCKS_PORT,
        externalInterface: LAB.serverIf,
        clients: ["198.18.0.0/15", "2001:2::/48"],
        logPath: join(dir, "danted.log"),
      });
      env.track(dante.proc);
      await waitFor(
        () => lab.exec(lab.server, ["ss", "-Htln"], undefined, true).stdout,
        (out) => out.includes(`${E3}:53`) && out.includes(`[${E3v6}]:53`),
        { what: "dnsmasq listening on tcp/53", timeoutMs: 10_000 },
      );
      await env.startRelay(relayConfig(flowLog));
      lab.warmNeighbours();
    });

    afterAll(async () => {
      await env?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    for (const f of FAMILIES) {
      describe(f.name, () => {
        test("kdig +tcp to the original destination: the forced answer", async () => {
          const before = await tcp();
          const out = kdig(["+tcp", `@${f.original}`, FORCED.name, f.type]);
          expect(out).toContain(`${FORCED.name}.`);
          expect(out).toContain(f.forced);
          // kdig names the server it talked to: the original destination, over TCP.
          expect(out).toContain(`;; From ${f.original}@53(TCP)`);
          const after = await settle();
          expect(after.accepted - before.accepted).toBe(1);
          expect(after.connected - before.connected).toBe(1);
          expect(after.dnsTcpConnections - before.dnsTcpConnections).toBe(1);
          expect(after.dnsTcpForwarded - before.dnsTcpForwarded).toBe(1);
          expect(after.dnsTcpAnswered - before.dnsTcpAnswered).toBe(1);
        });

        test("a blocked name: answered in place, no SYN at any resolver", async () => {
          const before = await tcp();
          const syns = resolverSyns();
          const blocked = kdig(["+tcp", `@${f.original}`, BLOCKED, f.type]);
          expect(blocked).toContain("status: NXDOMAIN");
          expect(blocked).toContain(`;; From ${f.original}@53(TCP)`);
          const pinned = kdig(["+tcp", `@${f.original}`, PINNED.name, f.type]);
          expect(pinned).toContain("status: NOERROR");
          expect(pinned).toContain(f.pinned);
          expect(pinned).toContain(`;; From ${f.original}@53(TCP)`);
          const after = await settle();
          expect(after.dnsTcpAnsweredLocally - before.dnsTcpAnsweredLocally).toBe(2);
          expect(after.connected - before.connected).toBe(0);
          expect(after.dnsTcpForwarded - before.dnsTcpForwarded).toBe(0);
          expect(resolverSyns()).toBe(syns);
        });

        test("several queries on one connection; pipelined, blocked and forced mixed", async () => {
          // kdig sends every question of one invocation on the same TCP connection.
          const before = await tcp();
          const out = kdig([
            ...["+tcp", "+keepopen", `@${f.original}`],
            ...[FORCED.name, f.type, PIPELINED[0], f.type, BLOCKED, f.type],
          ]);
          expect(out).toContain(f.forced);
          expect(out).toContain(f.v6 ? "2001:2:0:2::81" : "198.18.1.81");
          expect(out).toContain("status: NXDOMAIN");
          const kept = await settle();
          expect(kept.accepted - before.accepted).toBe(1);

          // One write: 3 forced, 2 answered in place (which come back first, out of order).
          const names = [PIPELINED[0], BLOCKED, PIPELINED[1], PINNED.name, PIPELINED[2]];
          const r = peer(["pipeline", f.original, ...names]);
          expect(r.answers).toHaveLength(names.length);
          const byId = new Map(r.answers.map((a: any) => [a.id, a]));
          const expected: Record<string, { rcode: number; addresses: string[] }> = {
            [BLOCKED]: { rcode: 3, addresses: [] },
            [PINNED.name]: { rcode: 0, addresses: [PINNED.a] },
          };
          PIPELINED.forEach((name, i) => {
            expected[name] = { rcode: 0, addresses: [`198.18.1.${81 + i}`] };
          });
          for (const sent of r.sent) {
            const a: any = byId.get(sent.id);
            expect(a?.name).toBe(sent.name);
            expect({ rcode: a?.rcode, addresses: a?.addresses }).toEqual(expected[sent.name]);
          }
          const after = await settle();
          expect(after.accepted - kept.accepted).toBe(1);
          expect(after.dnsTcpForwarded - kept.dnsTcpForwarded).toBe(3);
          expect(after.dnsTcpAnsweredLocally - kept.dnsTcpAnsweredLocally).toBe(2);
        });

        test("a first query sent to socks5: the whole connection through it, bytes kept", async () => {
          // The resolver is the original destination here: Dante connects to it.
          const resolver = f.v6 ? E3v6 : E3;
          const before = await tcp();
          const out = kdig(["+tcp", `@${resolver}`, SOCKS.name, f.type]);
          expect(out).toContain(f.v6 ? SOCKS.aaaa : SOCKS.a);
          expect(out).toContain(`;; From ${resolver}@53(TCP)`);
          // Pipelined: the queries read with the first one reach the resolver too.
          const r = peer(["pipeline", resolver, SOCKS.name, PIPELINED[0], PIPELINED[1]]);
          expect(r.answers.map((a: any) => a.addresses[0]).sort()).toEqual([
            "198.18.1.44",
            "198.18.1.81",
            "198.18.1.82",
          ]);
          const after = await settle();
          expect(after.dnsTcpSocks5 - before.dnsTcpSocks5).toBe(2);
          expect(after.socks5Connected - before.socks5Connected).toBe(2);
          expect(after.dnsTcpForwarded - before.dnsTcpForwarded).toBe(0);
        });

        test("a truncated UDP answer makes kdig retry over TCP through the relay", async () => {
          const before = await tcp();
          // No +tcp: kdig asks over UDP (not intercepted here), gets TC=1 and retries
          // over TCP, which the relay carries to the fake resolver at its own address.
          const out = kdig([`@${f.fake}`, "big.relay.test", f.type]);
          expect(out).toContain("retrying over TCP");
          expect(out).toContain(f.v6 ? "2001:2:0:2::99" : "198.18.1.99");
          expect(out).toContain(`;; From ${f.fake}@53(TCP)`);
          const after = await settle();
          expect(after.accepted - before.accepted).toBe(1);
          expect(after.connected - before.connected).toBe(1);
          expect(after.dnsTcpDirect - before.dnsTcpDirect).toBe(1);
        });

        test("a length prefix and nothing more: closed at dnsIdleTimeoutMs, no fd left", async () => {
          const fdsBefore = await fdsWithoutPool();
          const before = await tcp();
          const r = peer(["stall", f.original]);
          expect(r.ended).not.toBe("open");
          expect(r.received).toBe(0);
          const after = await settle();
          expect(after.dnsTcpIncomplete - before.dnsTcpIncomplete).toBe(1);
          expect(after.idleTimeouts - before.idleTimeouts).toBe(0);
          expect(await fdsWithoutPool()).toBe(fdsBefore);
        });

        test("malformed DNS over TCP: counted and closed; other connections unaffected", async () => {
          const fdsBefore = await fdsWithoutPool();
          const before = await tcp();
          const kinds = ["short", "answer", "noquestion", "badname"];
          for (const kind of kinds) {
            const r = peer(["malformed", f.original, kind]);
            expect({ kind, ended: r.ended, received: r.received }).toEqual({
              kind,
              ended: "reset",
              received: 0,
            });
          }
          const out = kdig(["+tcp", `@${f.original}`, FORCED.name, f.type]);
          expect(out).toContain(f.forced);
          const after = await settle();
          expect(after.dnsTcpMalformed - before.dnsTcpMalformed).toBe(kinds.length);
          expect(await fdsWithoutPool()).toBe(fdsBefore);
        });

        test("a client that never reads its answers: stalled, reset, no fd left", async () => {
          const fdsBefore = await fdsWithoutPool();
          const before = await tcp();
          // The relay's send buffers at most 64 KiB (the kernel's autotuning would take
          // megabytes of answers first): its own bound is then reached within a few
          // thousand queries.
          const sysctl = ["sysctl", "-n", "net.ipv4.tcp_wmem"];
          const wmem = env.lab.exec(env.lab.router, sysctl).stdout.trim().split(/\s+/).join(" ");
          env.lab.exec(env.lab.router, ["sysctl", "-w", "net.ipv4.tcp_wmem=4096 16384 65536"]);
          try {
            const r = peer(["unread", f.original, PINNED.name, "200000"]);
            expect(r.ended).toBe("reset");
          } finally {
            env.lab.exec(env.lab.router, ["sysctl", "-w", `net.ipv4.tcp_wmem=${wmem}`]);
          }
          const after = await settle();
          expect(after.dnsTcpStalled - before.dnsTcpStalled).toBe(1);
          expect(await fdsWithoutPool()).toBe(fdsBefore);
        });
      });
    }

    test("the query log: one record per TCP query", async () => {
      const records = await waitFor(
        async () => flowRecords(dir, flowLog),
        (r: any[]) => r.filter((x) => x.name === PINNED.name).length >= 4,
        { what: "the TCP queries' records", timeoutMs: 10_000 },
      );
      const dns = records.filter((r: any) => r.protocol === "tcp" && r.parsed === "dns");
      const summary = (name: string) => [
        ...new Set(
          dns
            .filter((r: any) => r.name === name)
            .map(
              (r: any) => `${r.end} ${r.rule} ${r.outbound} ${r.qtype} ${r.rcode} ${r.resolver}`,
            ),
        ),
      ];
      expect(summary(FORCED.name).sort()).toEqual([
        `dns-answered forced4 resolver4 1 0 ${E3}:53`,
        `dns-answered forced6 resolver6 28 0 [${E3v6}]:53`,
      ]);
      expect(summary(BLOCKED).sort()).toEqual([
        "dns-local block blocked 1 3 null",
        "dns-local block blocked 28 3 null",
      ]);
      // Direct: the resolver is the original destination itself.
      expect(summary("big.relay.test").sort()).toEqual([
        `dns-answered tc-pass direct 1 0 ${LAB.server4}:53`,
        `dns-answered tc-pass direct 28 0 [${LAB.server6}]:53`,
      ]);
      const forced = dns.find((r: any) => r.name === FORCED.name && r.qtype === 1);
      expect(forced).toMatchObject({ target: E5, targetPort: 53, client: LAB.client4 });
      expect(forced.endMs).toBeGreaterThanOrEqual(forced.startMs);
    });

    test("failover: the first resolver refuses, answers come from the second", async () => {
      for (const f of FAMILIES) {
        const before = await tcp();
        for (let i = 0; i < 3; i++) {
          const out = kdig(["+tcp", `@${f.original}`, FAILOVER.name, f.type]);
          expect(out).toContain(f.v6 ? FAILOVER.aaaa : FAILOVER.a);
        }
        const after = await settle();
        // Refused once at most: then it is down (failuresMax 1) and skipped.
        expect(after.forwardTargetFailures - before.forwardTargetFailures).toBeLessThanOrEqual(1);
        expect(after.dnsTcpUpstreamFailed - before.dnsTcpUpstreamFailed).toBe(0);
      }
      const records = await waitFor(
        async () => flowRecords(dir, flowLog),
        (r: any[]) => r.filter((x) => x.name === FAILOVER.name).length >= 6,
        { what: "the failover queries' records", timeoutMs: 10_000 },
      );
      const resolvers = new Set(
        records.filter((r: any) => r.name === FAILOVER.name).map((r: any) => r.resolver),
      );
      expect([...resolvers].sort()).toEqual([`${E3}:53`, `[${E3v6}]:53`]);
    });

    // The tests below restart the relay.
    test("past tcp.dnsConnectionsMax a connection is relayed as bytes", async () => {
      const config = relayConfig(flowLog);
      // The holder must outlive the kdig below: a long DNS idle timeout here.
      const tcpConfig = { ...config.tcp, dnsConnectionsMax: 1, dnsIdleTimeoutMs: 20_000 };
      await env.startRelay({ ...config, tcp: tcpConfig });
      // One connection holds the only stream (a length prefix, then silence) meanwhile.
      const holder = env.spawn(env.lab.client, ["python3", PEERS, "stall", E5]);
      try {
        await waitFor(tcp, (m) => m.dnsConnectionsActive === 1, {
          what: "the holder's DNS stream",
          timeoutMs: 10_000,
        });
        const before = await tcp();
        // As bytes, decided without a name: the forced rule (dnsmasq does not know the
        // name), not the sinkhole's address.
        const out = kdig(["+tcp", `@${E5}`, PINNED.name, "A"]);
        expect(out).toContain(`;; From ${E5}@53(TCP)`);
        expect(out).not.toContain(PINNED.a);
        const after = await tcp();
        expect(after.dnsTcpOverLimit - before.dnsTcpOverLimit).toBe(1);
        expect(after.dnsTcpQueries - before.dnsTcpQueries).toBe(0);
      } finally {
        holder.kill();
      }
      await settle();
    });

    test("tcp.dnsPorts []: relayed as bytes, a rule on names finds no ClientHello", async () => {
      const config = relayConfig("");
      const rejectByName = {
        name: "by-name",
        protocol: "tcp",
        ports: [53],
        names: { exact: [FORCED.name] },
        action: "reject",
      };
      await env.startRelay({
        ...config,
        tcp: { ...config.tcp, dnsPorts: [] },
        rules: [rejectByName, ...config.rules],
      });
      const before = await tcp();
      // The relay looks for a TLS ClientHello, finds a DNS message: no name, forced.
      const out = kdig(["+tcp", `@${E5}`, FORCED.name, "A"]);
      expect(out).toContain(FORCED.a);
      const after = await settle();
      expect(after.sniffMalformed - before.sniffMalformed).toBe(1);
      expect(after.accepted - before.accepted).toBe(1);
      expect(after.dnsTcpConnections - before.dnsTcpConnections).toBe(0);

      // Read per message again: the same rule resets the connection at that query.
      await env.startRelay({ ...config, rules: [rejectByName, ...config.rules] });
      const rejected = kdig(["+tcp", `@${E5}`, FORCED.name, "A"], true);
      expect(rejected).not.toContain(FORCED.a);
      const m = await settle();
      expect(m.dnsTcpRejected).toBe(1);
    });
  });
}
