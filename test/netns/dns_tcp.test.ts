// DNS over TCP (tcp/53) through the relay, IPv4 and IPv6: forced mode is a rule that
// sends tcp/53 to a `forward` outbound (the configured resolver, dnsmasq on another
// address) while the client talks to the address it asked, where nothing listens: the
// answer can only come through the relay, on a connection the client holds with its
// original destination. Several queries on one connection and pipelined queries come
// back whole; a UDP answer with TC=1 makes kdig retry over TCP through the relay; a
// client that sends a length prefix and stops is closed by tcp.idleTimeoutMs (counted,
// no descriptor left), and malformed DNS over TCP passes through as bytes without
// harming other connections. The relay keeps no per-message state on TCP: it relays the
// byte stream, so no name rule answers a TCP query in place (docs/dns_tcp.md): the last
// test shows a rule on names finding no ClientHello there and the query forced anyway.
//
//   client ns ── router ns (relay, tcp/53 intercepted) ── server ns:
//     dnsmasq on E3:53 / E3v6:53 (the forced resolver, forced.relay.test -> .77 / ::77)
//     dns_tcp_peers.py resolver on server4:53 / server6:53 (UDP: TC=1, TCP: the answer)
//     nothing on E5 / E5v6 (the original destination of forced queries)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { JsonLinesProcess } from "../lab/json_lines.ts";
import { LAB, labUnavailableReason } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const PEERS = join(import.meta.dir, "dns_tcp_peers.py");
const [E3, , E5] = LAB.serverExtra4;
const [E3v6, , E5v6] = LAB.serverExtra6;
const IDLE_TIMEOUT_MS = 2000;
const FORCED = { name: "forced.relay.test", a: "198.18.1.77", aaaa: "2001:2:0:2::77" };
const PIPELINED = ["p1.relay.test", "p2.relay.test", "p3.relay.test"];

const RELAY_CONFIG = {
  listeners: [
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12370 },
    { name: "tcp6", protocol: "tcp", address: "::1", port: 12370 },
  ],
  intercept: ["tcp4", "tcp6"].map((listener) => ({ listener, ports: [53] })),
  tcp: { idleTimeoutMs: IDLE_TIMEOUT_MS },
  outbounds: [
    { name: "resolver4", type: "forward", targets: [`${E3}:53`] },
    { name: "resolver6", type: "forward", targets: [`[${E3v6}]:53`] },
  ],
  rules: [
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
};

const FAMILIES = [
  { name: "IPv4", original: E5, fake: LAB.server4, type: "A", forced: FORCED.a, v6: false },
  { name: "IPv6", original: E5v6, fake: LAB.server6, type: "AAAA", forced: FORCED.aaaa, v6: true },
] as const;

const unavailable = labUnavailableReason();
const skip = labSkipReason(unavailable);
if (!skip) {
  describe("DNS over TCP through the relay", () => {
    let env: RelayLab;
    let fake: JsonLinesProcess;
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
    const kdig = (args: string[]) => {
      const r = env.lab.exec(env.lab.client, ["kdig", "+timeout=3", "+retry=0", ...args]);
      return `${r.stdout}\n${r.stderr}`;
    };
    const peer = (args: string[]) => {
      const r = env.lab.exec(env.lab.client, ["python3", PEERS, ...args]);
      return JSON.parse(r.stdout.trim().split("\n").pop()!);
    };

    beforeAll(async () => {
      if (unavailable) throw new Error(`DNS over TCP lab unavailable: ${unavailable}`);
      env = new RelayLab();
      const lab = env.lab;
      const records = [`--host-record=${FORCED.name},${FORCED.a},${FORCED.aaaa}`];
      for (const [i, name] of PIPELINED.entries()) {
        records.push(`--host-record=${name},198.18.1.${81 + i},2001:2:0:2::${81 + i}`);
      }
      env.spawn(lab.server, [
        ...["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts"],
        ...["--bind-interfaces", `--listen-address=${E3}`, `--listen-address=${E3v6}`],
        ...["--port=53", "--user=root", "--pid-file", "--log-facility=-", ...records],
      ]);
      fake = new JsonLinesProcess(
        "dns_tcp_peers",
        env.spawn(lab.server, ["python3", PEERS, "resolver", LAB.server4, LAB.server6]),
      );
      await fake.waitFor((l) => l.event === "ready", 10_000);
      await waitFor(
        () => lab.exec(lab.server, ["ss", "-Htln"], undefined, true).stdout,
        (out) => out.includes(`${E3}:53`) && out.includes(`[${E3v6}]:53`),
        { what: "dnsmasq listening on tcp/53", timeoutMs: 10_000 },
      );
      await env.startRelay(RELAY_CONFIG);
      lab.warmNeighbours();
    });

    afterAll(async () => {
      await env?.close();
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
        });

        test("several queries on one connection, and three pipelined queries", async () => {
          // kdig sends every question of one invocation on the same TCP connection.
          const before = await tcp();
          const out = kdig([
            ...["+tcp", "+keepopen", `@${f.original}`],
            ...[FORCED.name, f.type, PIPELINED[0], f.type],
          ]);
          expect(out).toContain(f.forced);
          expect(out).toContain(f.v6 ? "2001:2:0:2::81" : "198.18.1.81");
          const kept = await settle();
          expect(kept.accepted - before.accepted).toBe(1);

          const r = peer(["pipeline", f.original, ...PIPELINED]);
          expect(r.answers).toHaveLength(3);
          const byId = new Map(r.answers.map((a: any) => [a.id, a]));
          for (const [i, sent] of r.sent.entries()) {
            const a: any = byId.get(sent.id);
            expect(a?.name).toBe(sent.name);
            expect(a?.addresses).toEqual([`198.18.1.${81 + i}`]);
          }
          const after = await settle();
          expect(after.accepted - kept.accepted).toBe(1);
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
        });

        test("a length prefix and nothing more: idle timeout, no fd left", async () => {
          const fdsBefore = await fdsWithoutPool();
          const before = await tcp();
          const r = peer(["stall", f.original]);
          expect(r.ended).not.toBe("open");
          expect(r.received).toBe(0);
          const after = await settle();
          expect(after.idleTimeouts - before.idleTimeouts).toBe(1);
          expect(await fdsWithoutPool()).toBe(fdsBefore);
        });

        test("malformed DNS over TCP passes; other connections unaffected", async () => {
          const fdsBefore = await fdsWithoutPool();
          const r = peer(["malformed", f.original]);
          // dnsmasq answers nothing to garbage and holds on: the idle timeout ends it.
          expect(r.ended).not.toBe("open");
          const out = kdig(["+tcp", `@${f.original}`, FORCED.name, f.type]);
          expect(out).toContain(f.forced);
          expect(await fdsWithoutPool()).toBe(fdsBefore);
        });
      });
    }

    // Last: it restarts the relay with a rule on names in front of the forced ones.
    test("a rule on names does not match DNS over TCP (documented as not done)", async () => {
      const blocked = {
        name: "blocked",
        protocol: "tcp",
        ports: [53],
        names: { exact: [FORCED.name] },
        action: "reject",
      };
      await env.startRelay({ ...RELAY_CONFIG, rules: [blocked, ...RELAY_CONFIG.rules] });
      const before = await tcp();
      // The relay looks for a TLS ClientHello, finds a DNS message: no name, forced.
      const out = kdig(["+tcp", `@${E5}`, FORCED.name, "A"]);
      expect(out).toContain(FORCED.a);
      const after = await settle();
      expect(after.sniffMalformed - before.sniffMalformed).toBe(1);
      expect(after.accepted - before.accepted).toBe(1);
    });
  });
}
