// End-to-end QUIC through the relay with real peers: ngtcp2's gtlsclient fetches a file
// from gtlsserver over HTTP/3 across kernel TPROXY. QUIC only completes when every
// server datagram comes back from the address the client sent to, so a finished
// download is itself the transparency check. The relay must also have read the SNI
// from the client's Initial packets, in place, including a ClientHello that spans two
// Initials (an FFDHE8192 key share, as large as Chrome's post-quantum one).
//
//   client ns (gtlsclient) ── router ns (relay, tproxy udp/443) ── server ns (gtlsserver)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  clientHello,
  clientInitial,
  concat,
  cryptoFrame,
  QUIC_V1,
  toHex,
} from "../fixtures/classify/build.ts";
import { LAB } from "../lab/netns.ts";
import { QUIC_BODY, QuicPeers } from "../lab/quic_peers.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const skip = labSkipReason();
if (!skip) {
  describe("QUIC through the relay (gtlsclient -> gtlsserver)", () => {
    let env: RelayLab;
    let peers: QuicPeers;
    let BIG: Buffer;

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      peers = new QuicPeers(lab);
      lab.setHosts(lab.client, [
        [LAB.server4, "quic.relay.test"],
        [LAB.server6, "quic6.relay.test"],
        [LAB.serverExtra4[0], "big.relay.test"],
      ]);
      BIG = peers.addFile("big.bin", 6 << 20);
      for (const address of [LAB.server4, LAB.server6, LAB.serverExtra4[0]]) {
        env.track(peers.serve(address, 443));
      }
      await env.startRelay({
        listeners: [
          { name: "udp4", address: "127.0.0.1", port: 12345 },
          { name: "udp6", address: "::1", port: 12345 },
        ],
        intercept: [
          { listener: "udp4", ports: [443], interfaces: ["r0"] },
          { listener: "udp6", ports: [443], interfaces: ["r0"] },
        ],
      });
      await lab.waitForUdpPort(lab.server, 443);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      try {
        await env?.close();
      } finally {
        peers?.close();
      }
    });

    const fetch = (host: string, extra: string[] = []) => peers.fetch(host, 443, extra);

    test("an HTTP/3 download completes over IPv4 and IPv6; the relay recorded each SNI", async () => {
      expect(fetch("quic.relay.test")).toBe(QUIC_BODY);
      expect(fetch("quic6.relay.test")).toBe(QUIC_BODY);
      const m = await env.relay!.metrics();
      const quic = m.sessions.filter((s: any) => s.protocol === "quic");
      expect(quic.map((s: any) => `${s.target} ${s.name}`).sort()).toEqual([
        `${LAB.server4}:443 quic.relay.test`,
        `[${LAB.server6}]:443 quic6.relay.test`,
      ]);
      expect(m.udp.sniffedQuic).toBe(2);
      expect(m.udp.sniffMalformed).toBe(0);
    });

    for (const [family, host, server, ip] of [
      ["IPv4", "quic.relay.test", LAB.server4, "ip"],
      ["IPv6", "quic6.relay.test", `[${LAB.server6}]`, "ip6"],
    ] as const) {
      test(`${family}: the client's NAT rebinds its port mid-download: same session`, async () => {
        const { lab } = env;
        const before = await env.relay!.metrics();
        // A slow link to the client keeps the download going while the "NAT" changes.
        const shape = ["rate", "20mbit", "burst", "32kbit", "latency", "400ms"];
        lab.exec(lab.router, ["tc", "qdisc", "replace", "dev", "r0", "root", "tbf", ...shape]);
        const table = `rebind_${family.toLowerCase()}`;
        try {
          const download = peers.startFetch(host, 443, "big.bin");
          env.track(download.proc);
          // Part-way through (the session has carried 200 datagrams to the client)...
          const flow = await waitFor(
            async () =>
              (await env.relay!.metrics()).sessions.find(
                (s: any) => s.target === `${server}:443` && s.packetsToClient > 200,
              ),
            (found) => found !== undefined,
            { what: "the download under way", timeoutMs: 10_000 },
          );
          const oldPort = Number(flow.client.slice(flow.client.lastIndexOf(":") + 1));
          const newPort = oldPort === 40_000 ? 40_001 : 40_000;
          // ...a NAT between client and relay starts using another source port: stateless
          // rewrites of the client's datagrams and, back, of the replies' destination.
          lab.exec(
            lab.client,
            ["nft", "-f", "-"],
            `table ${ip} ${table} {
  chain out { type filter hook postrouting priority 0; udp sport ${oldPort} udp sport set ${newPort}; }
  chain in { type filter hook prerouting priority 0; udp dport ${newPort} udp dport set ${oldPort}; }
}
`,
          );
          const body = await download.done;
          expect(body.length).toBe(BIG.length);
          expect(body.equals(BIG)).toBe(true);
          const m = await env.relay!.metrics();
          expect(m.udp.quicRebindsFollowed - before.udp.quicRebindsFollowed).toBe(1);
          expect(m.udp.quicRebindsRefused).toBe(before.udp.quicRebindsRefused);
          // One session for the whole download, on one upstream socket, now at the new port.
          expect(m.udp.sessionsCreated - before.udp.sessionsCreated).toBe(1);
          const flows = m.sessions.filter((s: any) => s.target === `${server}:443`);
          const moved = flows.find((s: any) => s.packetsToClient > 1000);
          expect(moved.client.endsWith(`:${newPort}`)).toBe(true);
        } finally {
          lab.exec(lab.client, ["nft", "delete", "table", ip, table], undefined, true);
          lab.exec(lab.router, ["tc", "qdisc", "del", "dev", "r0", "root"], undefined, true);
        }
      });
    }

    test("impossible connection ID lengths: parsed safely, counted, QUIC goes on", async () => {
      const before = (await env.relay!.metrics()).udp;
      // Long headers claiming DCID lengths of 255 and 21 (RFC 9000: at most 20), one cut
      // inside its DCID, and a one-byte "short header": each from its own source port.
      env.python(
        env.lab.client,
        `import socket
for payload in [bytes([0xc3, 0, 0, 0, 1, 255]) + bytes(40),
                bytes([0xc3, 0, 0, 0, 1, 21]) + bytes(21) + bytes([8]) + bytes(8),
                bytes([0xc3, 0, 0, 0, 1, 20]) + bytes(5),
                bytes([0x40])]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(payload, ("${LAB.server4}", 443))
    s.close()`,
      );
      const m = await waitFor(
        async () => (await env.relay!.metrics()).udp,
        (u) => u.packetsFromClients - before.packetsFromClients >= 4,
        { what: "the four datagrams at the relay", timeoutMs: 10_000 },
      );
      // Not QUIC Initials: counted as malformed, no connection ID learned or followed. The
      // one cut inside its DCID is a prefix that may yet complete: still being sniffed
      // (counted as incomplete if udp.sniffPacketsMax datagrams never complete it).
      expect(m.sniffMalformed - before.sniffMalformed).toBe(3);
      expect(m.quicRebindsFollowed).toBe(before.quicRebindsFollowed);
      expect(m.quicConnectionIdsLearned).toBe(before.quicConnectionIdsLearned);
      // The relay goes on: a real download right after.
      expect(fetch("quic.relay.test")).toBe(QUIC_BODY);
    });

    test("version negotiation and stateless resets pass through unchanged", async () => {
      // An echo "server" on udp/443 sends back what it gets: the client's Initial (to the
      // relay, a server long header whose SCID it learns), then a Version Negotiation
      // packet (version 0: nothing to learn) and a stateless-reset-shaped short packet.
      const target = LAB.serverExtra4[1];
      env.spawnEcho(`${target}:443`);
      // The QUIC server holds udp/443 on another address already: wait for the echo's.
      await env.lab.waitForUdpPort(env.lab.server, 443, 5000, target);
      const before = (await env.relay!.metrics()).udp;
      const dcid = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
      const scid = Uint8Array.from([9, 9, 9, 9, 8, 8, 8, 8]);
      const initial = clientInitial({
        version: QUIC_V1,
        dcid,
        scid,
        packetNumber: 0,
        frames: cryptoFrame(0, clientHello({ sni: "vn.relay.test" })),
      });
      const vn = concat(
        Uint8Array.from([0x8a, 0, 0, 0, 0, 8]),
        scid,
        Uint8Array.from([8]),
        dcid,
        Uint8Array.from([0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf]),
      );
      const reset = concat(Uint8Array.from([0x4f]), new Uint8Array(42).fill(0x5a));
      const r = env.python(
        env.lab.client,
        `import json, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("${target}", 443))  # only datagrams from the original destination come in
same = []
for h in ["${toHex(initial)}", "${toHex(vn)}", "${toHex(reset)}"]:
    sent = bytes.fromhex(h)
    s.send(sent)
    same.append(s.recv(4096) == sent)
print(json.dumps(same))`,
      );
      expect(JSON.parse(r.stdout.trim())).toEqual([true, true, true]);
      const m = await env.relay!.metrics();
      // The echoed Initial's SCID was learned; the Version Negotiation packet taught nothing.
      expect(m.udp.quicConnectionIdsLearned - before.quicConnectionIdsLearned).toBe(1);
      expect(m.udp.sniffedQuic - before.sniffedQuic).toBe(1);
    });

    test("a ClientHello spanning two Initial packets is reassembled for the SNI", async () => {
      const before = (await env.relay!.metrics()).udp;
      const body = fetch("big.relay.test", ["--groups=-GROUP-ALL:+GROUP-FFDHE8192:+GROUP-X25519"]);
      expect(body).toBe(QUIC_BODY);
      const m = await env.relay!.metrics();
      const big = m.sessions.find((s: any) => s.target === `${LAB.serverExtra4[0]}:443`);
      expect(big).toMatchObject({ protocol: "quic", name: "big.relay.test" });
      expect(m.udp.sniffedQuic - before.sniffedQuic).toBe(1);
      expect(m.udp.sniffIncomplete).toBe(0);
    });
  });
}
