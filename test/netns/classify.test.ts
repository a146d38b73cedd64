// Real clients, real packets: kdig and dnsperf (DNS) and ngtcp2's gtlsclient (QUIC) send to
// a UDP socket inside a network namespace this test creates; the captured datagrams must
// parse in the WASM module to the names the clients were asked for.
//
//   namespace cls-<random> (lo up; 127.0.0.1, 198.18.0.1/32, 2001:2::1/128 on lo)
//   ┌──────────────────────────────────────────────────────────────┐
//   │ kdig / dnsperf / gtlsclient ──udp──► udp_capture.ts (Bun)   │──stdout hex──► this test
//   └──────────────────────────────────────────────────────────────┘
//
// gtlsclient 0.12 sends "localhost" as SNI for a numeric host and ignores --sni, so the test
// gives the namespace its own hosts file (/etc/netns/<ns>/hosts, which `ip netns exec`
// bind-mounts) and connects by name. Without root or netns support: fail when CI=true,
// otherwise skip with the reason. CLASSIFY_CAPTURE_SAVE=1 writes the captured packets to
// test/fixtures/classify/captured.json for the unit tests' prefix and fuzz runs.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DnsParser } from "../../src/classify/dns.ts";
import { Code, QUIC_VERSION_1 } from "../../src/classify/layout.ts";
import { QuicParser } from "../../src/classify/quic.ts";
import { parsersInstantiate } from "../../src/classify/wasm.ts";
import { skipReason } from "../lab/skip_policy.ts";
import type { Captured } from "../fixtures/classify/corpus.ts";

const ROOT = join(import.meta.dir, "../..");
const BUN = join(ROOT, "node_modules/.bin/bun");
const CAPTURE = join(ROOT, "test/fixtures/classify/udp_capture.ts");
const NS = `cls-${Math.random().toString(16).slice(2, 10)}`;
const HOSTS_DIR = `/etc/netns/${NS}`;
/** Every wait is bounded: a capture ends after its count or this long. */
const CAPTURE_TIMEOUT_MS = 4000;
const CLIENT_TIMEOUT_MS = 8000;

function run(argv: string[]): { ok: boolean; text: string } {
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", timeout: CLIENT_TIMEOUT_MS });
  return { ok: r.exitCode === 0, text: `${r.stdout.toString()}${r.stderr.toString()}` };
}

function unavailableReason(): string | null {
  if (process.getuid?.() !== 0) return "needs root (CAP_NET_ADMIN) to create a netns";
  for (const tool of ["ip", "kdig", "dnsperf", "gtlsclient"]) {
    if (Bun.which(tool) === null) return `${tool} not installed`;
  }
  // Probe with the real name and delete it at once: beforeAll creates it for good, so a run
  // that filters these tests out leaves nothing behind.
  const probe = run(["ip", "netns", "add", NS]);
  if (!probe.ok) return `ip netns add failed: ${probe.text.trim()}`;
  run(["ip", "netns", "del", NS]);
  return null;
}

const reason = unavailableReason();
const skip = skipReason(reason);

/** Starts a capture in the namespace; resolves to its datagrams (hex) when it exits. */
async function capture(
  address: string,
  port: number,
  countMax: number,
  client: () => Promise<void>,
): Promise<Uint8Array[]> {
  const proc = Bun.spawn(
    [
      "ip",
      "netns",
      "exec",
      NS,
      BUN,
      CAPTURE,
      address,
      String(port),
      String(countMax),
      String(CAPTURE_TIMEOUT_MS),
    ],
    { stdout: "pipe", stderr: "inherit" },
  );
  const reader = proc.stdout.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  // Wait for "ready" (the socket is bound) instead of sleeping; bounded by the capture's
  // own timeout, after which it exits and the stream ends.
  const lines: string[] = [];
  let ready = false;
  let clientDone: Promise<void> | null = null;
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value);
      let newline = buffered.indexOf("\n");
      while (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.startsWith("ready")) {
          ready = true;
          clientDone = client();
        } else if (line.length > 0) {
          lines.push(line);
        }
        newline = buffered.indexOf("\n");
      }
    }
  } finally {
    proc.kill();
    await proc.exited;
  }
  expect(ready).toBe(true);
  await clientDone;
  return lines.map((line) => new Uint8Array(Buffer.from(line, "hex")));
}

async function inNs(argv: string[]): Promise<void> {
  const proc = Bun.spawn(["ip", "netns", "exec", NS, ...argv], {
    stdout: "ignore",
    stderr: "ignore",
  });
  const timer = setTimeout(() => proc.kill(), CLIENT_TIMEOUT_MS);
  try {
    await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}

const parsers = parsersInstantiate();
const dns = new DnsParser(parsers);
const quic = new QuicParser(parsers);
const saved: Captured = { dns: [], quic: [] };

if (skip !== null) {
  // Registers nothing: the printed reason is the whole report (outside CI only).
  console.warn(`[classify netns tests skipped] ${skip}`);
} else if (reason !== null) {
  // CI=true: registered, and a failure with the reason (test/lab/skip_policy.ts).
  test("classify netns tests need root and netns", () => {
    throw new Error(`CI=true and netns unavailable: ${reason}`);
  });
} else {
  describe(`netns ${NS}`, () => {
    beforeAll(() => {
      for (const argv of [
        ["ip", "netns", "add", NS],
        ["ip", "-n", NS, "link", "set", "lo", "up"],
        ["ip", "-n", NS, "addr", "add", "198.18.0.1/32", "dev", "lo"],
        ["ip", "-n", NS, "-6", "addr", "add", "2001:2::1/128", "dev", "lo", "nodad"],
      ]) {
        const r = run(argv);
        if (!r.ok) throw new Error(`${argv.join(" ")}: ${r.text}`);
      }
      mkdirSync(HOSTS_DIR, { recursive: true });
      writeFileSync(
        join(HOSTS_DIR, "hosts"),
        "127.0.0.1 localhost\n198.18.0.1 quic.example.test\n198.18.0.1 big.example.test\n",
      );
    });

    afterAll(() => {
      run(["ip", "netns", "del", NS]);
      rmSync(HOSTS_DIR, { recursive: true, force: true });
      if (process.env.CLASSIFY_CAPTURE_SAVE === "1") {
        const path = join(ROOT, "test/fixtures/classify/captured.json");
        writeFileSync(path, `${JSON.stringify(saved, null, 1)}\n`);
        console.log(`saved captures to ${path}`);
      }
    });

    const kdigCases = [
      {
        address: "127.0.0.1",
        name: "www.example.com",
        type: "A",
        extra: [],
        qtype: 1,
        edns: false,
      },
      {
        address: "198.18.0.1",
        name: "WWW.Example.ORG",
        type: "AAAA",
        extra: ["+dnssec"],
        qtype: 28,
        edns: true,
      },
      {
        address: "198.18.0.1",
        name: "mail.example.net",
        type: "MX",
        extra: ["+bufsize=1232"],
        qtype: 15,
        edns: true,
      },
      {
        address: "2001:2::1",
        name: "v6.example.test",
        type: "TXT",
        extra: ["+edns"],
        qtype: 16,
        edns: true,
      },
    ];

    for (const c of kdigCases) {
      test(`kdig ${c.type} ${c.name} @${c.address}`, async () => {
        const port = 5300 + kdigCases.indexOf(c);
        const packets = await capture(c.address, port, 1, () =>
          inNs([
            "kdig",
            `@${c.address}`,
            "-p",
            String(port),
            c.name,
            c.type,
            "+timeout=1",
            "+retry=0",
            ...c.extra,
          ]),
        );
        expect(packets.length).toBe(1);
        const offset = parsers.place(packets[0]);
        const r = dns.parse(offset, packets[0].length);
        expect(r.code).toBe(Code.ok);
        expect(r.name()).toBe(c.name.toLowerCase());
        expect(r.qtype).toBe(c.qtype);
        expect(r.qr).toBe(0);
        expect(r.ednsPresent).toBe(c.edns);
        if (c.type === "MX") expect(r.ednsUdpPayloadBytes).toBe(1232);
        if (c.type === "AAAA") expect(r.ednsDo).toBe(true);
        saved.dns.push({
          name: `kdig ${c.type}`,
          qname: r.name(),
          hex: Buffer.from(packets[0]).toString("hex"),
        });
      });
    }

    test("dnsperf: every query in its data file parses to its name", async () => {
      const names = ["a.perf.test", "b.perf.test", "Upper.Perf.Test", "d.perf.test", "e.perf.test"];
      const dataPath = `/tmp/${NS}-dnsperf.txt`;
      writeFileSync(dataPath, names.map((n, i) => `${n} ${i % 2 ? "AAAA" : "A"}\n`).join(""));
      try {
        const packets = await capture("198.18.0.1", 5399, names.length, () =>
          inNs([
            "dnsperf",
            "-s",
            "198.18.0.1",
            "-p",
            "5399",
            "-d",
            dataPath,
            "-n",
            "1",
            "-l",
            "2",
            "-t",
            "1",
          ]),
        );
        expect(packets.length).toBe(names.length);
        const seen = packets.map((packet) => {
          const r = dns.parse(parsers.place(packet), packet.length);
          expect(r.code).toBe(Code.ok);
          return r.name();
        });
        expect(seen.sort()).toEqual(names.map((n) => n.toLowerCase()).sort());
        saved.dns.push({
          name: "dnsperf",
          qname: seen[0],
          hex: Buffer.from(packets[0]).toString("hex"),
        });
      } finally {
        rmSync(dataPath, { force: true });
      }
    });

    async function gtls(host: string, port: number, extra: string[]): Promise<Uint8Array[]> {
      // Two datagrams: the client's first flight, then its first retransmission (the
      // capture never answers). Enough for a hello spanning two Initials.
      return capture("198.18.0.1", port, 2, () =>
        inNs(["gtlsclient", "-q", "--timeout=1s", ...extra, host, String(port)]),
      );
    }

    function openAll(packets: Uint8Array[]): number[] {
      quic.resetContexts();
      return packets.map((packet) => quic.parseInitial(parsers.place(packet), packet.length).code);
    }

    test("gtlsclient: one Initial, SNI and ALPN h3", async () => {
      const packets = await gtls("quic.example.test", 4433, []);
      expect(packets.length).toBeGreaterThanOrEqual(1);
      const codes = openAll(packets.slice(0, 1));
      expect(codes).toEqual([Code.ok]);
      expect(quic.initial.header.version).toBe(QUIC_VERSION_1);
      expect(quic.initial.sni()).toBe("quic.example.test");
      expect(quic.initial.alpn()).toContain("h3");
      saved.quic.push({
        name: "gtlsclient one Initial",
        sni: quic.initial.sni(),
        hex: [Buffer.from(packets[0]).toString("hex")],
      });
    });

    test("gtlsclient with an FFDHE8192 key share: ClientHello spans 2 Initials", async () => {
      // A 1024-byte FFDHE8192 key share (RFC 7919) makes the hello ~1.3 KB, more than one
      // Initial holds, as Chrome's X25519MLKEM768 share does.
      const packets = await gtls("big.example.test", 4434, [
        "--groups=-GROUP-ALL:+GROUP-FFDHE8192:+GROUP-X25519",
      ]);
      expect(packets.length).toBe(2);
      const codes = openAll(packets);
      expect(codes).toEqual([Code.short, Code.ok]);
      expect(quic.initial.helloBytes).toBeGreaterThan(1200);
      expect(quic.initial.packetsCount).toBe(2);
      expect(quic.initial.sni()).toBe("big.example.test");
      saved.quic.push({
        name: "gtlsclient hello across 2 Initials",
        sni: quic.initial.sni(),
        hex: packets.map((p) => Buffer.from(p).toString("hex")),
      });
    });
  });
}
