// The generated rules at work, applied with the real `relay rules apply` (not the lab's
// hand-made shortcut), for both backends and both families, in the three-namespace lab:
//
// - gateway: the client's UDP and TCP reach the server through the relay; UDP replies
//   come from the original destination;
// - local: a process in the router namespace itself (where the relay runs) reaches the
//   server through the relay, UDP and TCP: its packets are marked in output, looped back
//   through lo and given to the listener;
// - the relay's own upstream traffic never re-enters: its loop guards stay at 0, the
//   exemption rule for its mark counts its packets, and the intercept rules count only
//   the clients' (not the relay's replies either);
// - bypass.destinations and exemptUser: reached directly, the relay's sessions unchanged.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const UDP_PORT = 7000;
const TCP_PORT = 8001;
/** Reached directly: firewall.bypass.destinations. */
const BYPASSED = { 4: LAB.serverExtra4[2], 6: LAB.serverExtra6[2] } as const;
const PEERS = join(import.meta.dir, "tcp_peers.py");

function relayConfig(backend: "nft" | "iptables") {
  return {
    listeners: [
      { name: "udp4", address: "127.0.0.1", port: 12345 },
      { name: "udp6", address: "::1", port: 12345 },
      { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
      { name: "tcp6", protocol: "tcp", address: "::1", port: 12346 },
    ],
    intercept: [
      { listener: "udp4", ports: [UDP_PORT] },
      { listener: "udp6", ports: [UDP_PORT] },
      { listener: "tcp4", ports: [TCP_PORT] },
      { listener: "tcp6", ports: [TCP_PORT] },
    ],
    firewall: {
      backend,
      mode: "both",
      // The lab's relay runs as root; nobody stands in for a service that must go direct.
      exemptUser: "nobody",
      bypass: { destinations: [`${BYPASSED[4]}/32`, `${BYPASSED[6]}/128`] },
    },
  };
}

/** One datagram to HOST:PORT; prints the reply and where it came from. */
const UDP_CLIENT = `
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"ping", (host, port))
data, source = s.recvfrom(2048)
print(json.dumps({"data": data.decode(), "from": [source[0], source[1]]}))
`;

/** Connects, reads the peer's "PEER ip port local" line, echoes a line, half-closes. */
const TCP_CLIENT = `
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=5)
f = s.makefile("rb")
peer = f.readline().decode().strip()
s.sendall(b"hello\\n")
echo = f.readline().decode().strip()
s.shutdown(socket.SHUT_WR)
bye = f.readline().decode().strip()
print(json.dumps({"peer": peer, "echo": echo, "bye": bye}))
`;

const FAMILIES = [
  {
    family: 4 as const,
    server: LAB.server4,
    client: LAB.client4,
    router: LAB.routerServer4,
  },
  {
    family: 6 as const,
    server: LAB.server6,
    client: LAB.client6,
    router: LAB.routerServer6,
  },
];

const skip = labSkipReason();
for (const backend of ["nft", "iptables"] as const) {
  if (skip) break;
  describe(`generated rules at work (${backend}, mode both)`, () => {
    let env: RelayLab;

    /** A rule's packet counter. chain: prerouting or output; match: the rule's text. */
    const counter = (
      family: 4 | 6,
      chain: "prerouting" | "output",
      match: (rule: string) => boolean,
    ) => {
      const { lab } = env;
      const rules: string[] = [];
      if (backend === "nft") {
        const listed = lab.exec(lab.router, [
          "nft",
          "list",
          "chain",
          "inet",
          "transparent_relay",
          chain,
        ]).stdout;
        rules.push(...listed.split("\n").map((l) => l.trim()));
      } else {
        const ours = chain === "prerouting" ? "-A TRELAY_PRE " : "-A TRELAY_OUT ";
        const tool = family === 4 ? "iptables-save" : "ip6tables-save";
        const saved = lab.exec(lab.router, [tool, "-c", "-t", "mangle"]).stdout;
        rules.push(...saved.split("\n").filter((l) => l.includes(ours)));
      }
      const found = rules.filter(match);
      if (found.length !== 1) {
        throw new Error(`${found.length} ${chain} rules match (want 1):\n${rules.join("\n")}`);
      }
      const packets = /counter packets (\d+)|^\[(\d+):/.exec(found[0]);
      return Number(packets?.[1] ?? packets?.[2]);
    };
    /** The rule exempting the relay's own sockets (its SO_MARK) in output. */
    const exemptRule = (rule: string) =>
      backend === "nft"
        ? rule.startsWith("meta mark 0x00001ee7 counter")
        : rule.endsWith("-A TRELAY_OUT -m mark --mark 0x1ee7 -j RETURN");
    /** Output's marking rule for a listener (local mode). */
    const markRule = (name: string) => (rule: string) =>
      backend === "nft"
        ? rule.includes(`comment "${name}"`)
        : rule.includes(`--comment ${name} `) && rule.includes("-j MARK");
    /** Prerouting's TPROXY rule for a listener: looped back through lo, or routed. */
    const tproxyRule = (name: string, loopback: boolean) => (rule: string) => {
      if (backend === "nft") {
        const iif = loopback ? 'iifname "lo"' : 'iifname != "lo"';
        return rule.startsWith(iif) && rule.includes(`comment "${name}"`);
      }
      const iif = loopback ? "-A TRELAY_PRE -i lo " : "-A TRELAY_PRE ! -i lo ";
      return rule.includes(iif) && rule.includes(`--comment ${name} `);
    };
    /** The counters a listener's traffic meets (udp4, tcp6...: the family is the digit). */
    const counters = (name: string) => {
      const family = name.endsWith("6") ? 6 : 4;
      return {
        exempt: counter(family, "output", exemptRule),
        mark: counter(family, "output", markRule(name)),
        local: counter(family, "prerouting", tproxyRule(name, true)),
        gateway: counter(family, "prerouting", tproxyRule(name, false)),
      };
    };
    const delta = (before: Record<string, number>, after: Record<string, number>) =>
      Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - before[k]]));

    const udp = (ns: string, host: string, port = UDP_PORT) =>
      JSON.parse(
        env.python(
          ns,
          UDP_CLIENT.replace("sys.argv[1], int(sys.argv[2])", `${JSON.stringify(host)}, ${port}`),
        ).stdout,
      );
    const tcp = (ns: string, host: string) =>
      JSON.parse(
        env.python(
          ns,
          TCP_CLIENT.replace(
            "sys.argv[1], int(sys.argv[2])",
            `${JSON.stringify(host)}, ${TCP_PORT}`,
          ),
        ).stdout,
      );
    const metrics = async () => {
      const m = await env.relay!.metrics();
      return { udp: m.udp, tcp: m.tcp };
    };

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      lab.warmNeighbours();
      env.spawnEcho(
        "--stamp",
        ...[LAB.server4, BYPASSED[4]].map((a) => `${a}:${UDP_PORT}`),
        ...[LAB.server6, BYPASSED[6]].map((a) => `[${a}]:${UDP_PORT}`),
      );
      env.spawn(lab.server, ["python3", PEERS, `${TCP_PORT}:peer`]);
      await lab.waitForUdpPort(lab.server, UDP_PORT, 10_000);
      await waitFor(
        () => lab.exec(lab.server, ["ss", "-Htln", `sport = :${TCP_PORT}`]).stdout.trim(),
        (listening) => listening.length > 0,
        { what: `the TCP peer listening on port ${TCP_PORT}`, timeoutMs: 10_000 },
      );
      await env.startRelay(relayConfig(backend), [], { rules: "cli" });
    });

    afterAll(async () => {
      await env?.close();
    });

    for (const f of FAMILIES) {
      const v = `IPv${f.family}`;
      test(`gateway, ${v}: UDP and TCP through the relay; replies never marked`, async () => {
        const { lab } = env;
        const before = await metrics();
        const rules = counters(`udp${f.family}`);
        const reply = udp(lab.client, f.server);
        // From the original destination; the server saw the relay (the router).
        expect(reply.from).toEqual([f.server, UDP_PORT]);
        expect(reply.data.split("|")[0]).toContain(f.router);
        const after = await metrics();
        expect(after.udp.sessionsCreated - before.udp.sessionsCreated).toBe(1);
        // The routed client's datagram met the gateway rule; the relay's reply to it went
        // out untouched (not marked, not looped back).
        expect(delta(rules, counters(`udp${f.family}`))).toEqual({
          exempt: expect.any(Number),
          mark: 0,
          local: 0,
          gateway: 1,
        });

        const tcpRules = counters(`tcp${f.family}`);
        const stream = tcp(lab.client, f.server);
        expect(stream).toEqual({
          peer: expect.stringContaining(`PEER ${f.router} `),
          echo: "hello",
          bye: expect.stringContaining("BYE"),
        });
        const tcpAfter = await metrics();
        expect(tcpAfter.tcp.accepted - after.tcp.accepted).toBe(1);
        const tcpDelta = delta(tcpRules, counters(`tcp${f.family}`));
        expect(tcpDelta.mark).toBe(0);
        expect(tcpDelta.local).toBe(0);
        expect(tcpDelta.gateway).toBeGreaterThanOrEqual(1);
      });

      test(`local, ${v}: this host's own UDP and TCP through the relay`, async () => {
        const { lab } = env;
        const before = await metrics();
        const rules = counters(`udp${f.family}`);
        const reply = udp(lab.router, f.server);
        expect(reply.from).toEqual([f.server, UDP_PORT]);
        expect(reply.data.split("|")[0]).toContain(f.router);
        const after = await metrics();
        expect(after.udp.sessionsCreated - before.udp.sessionsCreated).toBe(1);
        expect(after.udp.packetsFromClients - before.udp.packetsFromClients).toBe(1);
        expect(after.udp.packetsToClients - before.udp.packetsToClients).toBe(1);
        // The client's one datagram was marked and tproxied; the relay's upstream copy
        // left by the exemption for its mark; its reply was neither marked nor diverted.
        const udpDelta = delta(rules, counters(`udp${f.family}`));
        expect(udpDelta).toEqual({ exempt: expect.any(Number), mark: 1, local: 1, gateway: 0 });
        expect(udpDelta.exempt).toBeGreaterThanOrEqual(1);

        const tcpRules = counters(`tcp${f.family}`);
        const stream = tcp(lab.router, f.server);
        expect(stream).toEqual({
          peer: expect.stringContaining(`PEER ${f.router} `),
          echo: "hello",
          bye: expect.stringContaining("BYE"),
        });
        const tcpAfter = await metrics();
        expect(tcpAfter.tcp.accepted - after.tcp.accepted).toBe(1);
        expect(tcpAfter.tcp.connected - after.tcp.connected).toBe(1);
        const tcpDelta = delta(tcpRules, counters(`tcp${f.family}`));
        // Every packet the client sent was marked and met the lo rule (the SYN, at
        // least); the relay's own connection was exempt by its mark.
        expect(tcpDelta.mark).toBeGreaterThanOrEqual(3);
        expect(tcpDelta.local).toBeGreaterThanOrEqual(1);
        expect(tcpDelta.gateway).toBe(0);
        expect(tcpDelta.exempt).toBeGreaterThanOrEqual(3);
      });

      test(`bypass, ${v}: a bypassed destination is reached directly`, async () => {
        const { lab } = env;
        const before = await metrics();
        const routed = udp(lab.client, BYPASSED[f.family]);
        expect(routed.from).toEqual([BYPASSED[f.family], UDP_PORT]);
        // The server saw the client itself: forwarded, not relayed.
        expect(routed.data.split("|")[0]).toContain(f.client);
        const local = udp(lab.router, BYPASSED[f.family]);
        expect(local.from).toEqual([BYPASSED[f.family], UDP_PORT]);
        const after = await metrics();
        expect(after.udp.sessionsCreated).toBe(before.udp.sessionsCreated);
        expect(after.udp.packetsFromClients).toBe(before.udp.packetsFromClients);
      });
    }

    test("exemptUser: that user's own traffic goes direct (IPv4 and IPv6)", async () => {
      const { lab } = env;
      const before = await metrics();
      const userRule = (rule: string) =>
        backend === "nft"
          ? rule.startsWith("meta skuid 65534 counter")
          : rule.endsWith("-A TRELAY_OUT -m owner --uid-owner 65534 -j RETURN");
      for (const f of FAMILIES) {
        const exempted = counter(f.family, "output", userRule);
        const code = UDP_CLIENT.replace(
          "sys.argv[1], int(sys.argv[2])",
          `${JSON.stringify(f.server)}, ${UDP_PORT}`,
        );
        const asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
        // Debian's python3 (python3-pip in setup.sh pulls it in): a user-local install
        // such as pyenv's shims is not readable by nobody.
        const r = lab.exec(lab.router, [...asNobody, "/usr/bin/python3", "-c", code]);
        expect(JSON.parse(r.stdout).from).toEqual([f.server, UDP_PORT]);
        expect(counter(f.family, "output", userRule) - exempted).toBeGreaterThanOrEqual(1);
      }
      const after = await metrics();
      expect(after.udp.sessionsCreated).toBe(before.udp.sessionsCreated);
      expect(after.udp.packetsFromClients).toBe(before.udp.packetsFromClients);
    });

    test("the relay's own traffic never re-entered it", async () => {
      const { udp, tcp } = await metrics();
      expect({
        udpOwnTraffic: udp.droppedOwnTraffic,
        udpToListener: udp.droppedToListener,
        udpLocalTarget: udp.droppedLocalTarget,
        tcpToListener: tcp.droppedToListener,
        tcpLocalTarget: tcp.droppedLocalTarget,
      }).toEqual({
        udpOwnTraffic: 0,
        udpToListener: 0,
        udpLocalTarget: 0,
        tcpToListener: 0,
        tcpLocalTarget: 0,
      });
      expect(udp.sessionsCreated).toBe(4); // gateway and local, each family
      expect(tcp.accepted).toBe(4);
    });
  });
}
