// End-to-end: the flow log of a relay carrying real traffic through kernel TPROXY.
//
//   client ns ──veth── router ns (relay, nft TPROXY; the flow log) ──veth── server ns
//   198.18.0.2          r0 198.18.0.1 | r1 198.18.1.1                 198.18.1.2
//                                                                     udp echo :7002 :7003
//                                                                     dnsmasq :53, tcp :8080
//
// What is proven: one record per ended UDP session and TCP connection, with exactly the
// packets and bytes the client sent and got back, the DNS name parsed from the query,
// rotation at a small fileBytesMax, the sessions still open at SIGTERM written before
// the final line; and after kill -9 in the middle of a flood of short sessions, every
// complete record is read back and a torn last record is reported, also after a
// restarted relay appended behind it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FrameDecoder } from "../../src/control/flow_frame.ts";
import { dnsmasqArgv, LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { BUN, labSkipReason, RelayLab, ROOT } from "./harness.ts";

const S4 = LAB.server4;
const MAIN = join(ROOT, "src", "main.ts");
/** Deadline for a record that follows traffic by an idle timeout and a timer tick or two. */
const RECORD_TIMEOUT_MS = 15_000;

interface Logged {
  status: number | null;
  records: any[];
  stderr: string;
}

/** `bun run relay log ARGS --json`: the records and what it said on stderr. */
function relayLog(args: string[]): Logged {
  const r = spawnSync(BUN, [MAIN, "log", ...args, "--json"], {
    encoding: "utf8",
    timeout: 30_000,
    maxBuffer: 256 << 20,
  });
  const records = r.stdout
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l));
  return { status: r.status, records, stderr: r.stderr };
}

/** Start offsets of the complete frames of a flow log file (the reader's own codec). */
function frameStarts(bytes: Uint8Array): number[] {
  const starts: number[] = [];
  const decoder = new FrameDecoder({
    frame: (_payload, offset) => starts.push(offset),
    problem: () => {},
  });
  for (let at = 0; at < bytes.length; at += 1 << 20) {
    decoder.push(bytes.subarray(at, Math.min(bytes.length, at + (1 << 20))));
  }
  decoder.end();
  return starts;
}

/** A TCP server: reads until the client's FIN, answers `reply` bytes, closes. */
const tcpServer = (reply: number) => `import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("${S4}", 8080)); s.listen(16); print("ready", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(65536):
        pass
    c.sendall(b"y" * ${reply}); c.close()`;

const skip = labSkipReason();
if (!skip) {
  describe("flow log: one record per ended flow, with its counts", () => {
    let env: RelayLab;
    const dir = mkdtempSync(join(tmpdir(), "relay-flowlog-e2e-"));
    const path = join(dir, "flow.log");
    /** A config the reader takes (--config): it only needs flowLog.path. */
    const readerConfig = join(dir, "reader.json");
    const FILE_BYTES_MAX = 4096;
    const CONFIG = {
      listeners: [
        { name: "udp4", address: "127.0.0.1", port: 12345 },
        { name: "dns4", address: "127.0.0.1", port: 53 },
        { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
      ],
      intercept: [
        { listener: "udp4", ports: [7002, 7003], interfaces: ["r0"] },
        { listener: "dns4", ports: [53], interfaces: ["r0"] },
        { listener: "tcp4", ports: [8080], interfaces: ["r0"] },
      ],
      // Short idle timeouts, so sessions end (and are logged) soon after their traffic;
      // port 7003 lives on until the relay stops.
      udp: { idleTimeoutMs: 500, idleTimeoutMsByPort: { "53": 300, "7003": 600_000 } },
      flowLog: { path, fileBytesMax: FILE_BYTES_MAX, filesMax: 100 },
    };
    const startedMs = Date.now();
    /** Every record, oldest first, once `done` holds for them. */
    const recordsWhen = (what: string, done: (records: any[]) => boolean) =>
      waitFor(
        () => relayLog(["--config", readerConfig]),
        (r) => done(r.records),
        {
          what,
          timeoutMs: RECORD_TIMEOUT_MS,
        },
      );

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      writeFileSync(readerConfig, JSON.stringify({ flowLog: { path } }));
      env.spawnEcho(`${S4}:7002`, `${S4}:7003`);
      env.spawn(lab.server, dnsmasqArgv("relay.test", "198.18.1.77", "2001:2:0:2::77"));
      const server = env.spawn(lab.server, ["python3", "-c", tcpServer(3000)]);
      const first = await server.stdout.getReader().read();
      expect(new TextDecoder().decode(first.value)).toContain("ready");
      await env.startRelay(CONFIG);
      await lab.waitForUdpPort(lab.server, 7002);
      await lab.waitForUdpPort(lab.server, 53);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    test("UDP: one record per session, with exactly the packets and bytes each way", async () => {
      const r = env.probe([`${S4}:7002`], { flows: 3, packets: 5, size: 100 });
      expect(r).toMatchObject({ received: 15, lost: 0 });
      const done = await recordsWhen(
        "3 records of the sessions to port 7002",
        (records) => records.filter((x) => x.targetPort === 7002).length >= 3,
      );
      const logged = done.records.filter((x) => x.targetPort === 7002);
      expect(logged.length).toBe(3);
      expect(new Set(logged.map((x) => x.clientPort)).size).toBe(3);
      for (const x of logged) {
        expect(x).toMatchObject({
          protocol: "udp",
          client: LAB.client4,
          listener: "udp4",
          target: S4,
          targetPort: 7002,
          packetsToTarget: 5,
          bytesToTarget: 500,
          packetsToClient: 5,
          bytesToClient: 500,
          name: null,
          parsed: null,
          rule: "default", // no rules: the default decided
          outbound: "direct",
          end: "idle",
          reply: "socket",
        });
        // A session lives at least its idle timeout; wall clock times of this run.
        expect(x.endMs - x.startMs).toBeGreaterThanOrEqual(500);
        expect(x.startMs).toBeGreaterThanOrEqual(startedMs);
      }
      expect(done.stderr).toBe("");
    });

    test("DNS: the query name parsed by the relay, the bytes kdig sent and received", async () => {
      const received: number[] = [];
      for (const type of ["A", "AAAA"]) {
        // +noedns: the query is header (12) + name (12) + type and class (4) bytes.
        const r = env.lab.exec(env.lab.client, [
          "kdig",
          `@${S4}`,
          "relay.test",
          type,
          "+notcp",
          "+noedns",
          "+timeout=2",
          "+retry=0",
        ]);
        expect(r.stdout).toContain("status: NOERROR");
        received.push(Number(/;; Received (\d+) B/.exec(r.stdout)![1]));
      }
      const done = await recordsWhen(
        "2 records of the DNS sessions",
        (records) => records.filter((x) => x.targetPort === 53).length >= 2,
      );
      const dns = done.records.filter((x) => x.targetPort === 53);
      expect(dns.length).toBe(2);
      for (const [i, x] of dns.entries()) {
        expect(x).toMatchObject({
          protocol: "udp",
          listener: "dns4",
          target: S4,
          name: "relay.test",
          parsed: "dns",
          packetsToTarget: 1,
          bytesToTarget: 12 + "relay.test".length + 2 + 4,
          packetsToClient: 1,
          bytesToClient: received[i],
          reply: "pktinfo",
          end: "idle",
          // A DNS session (not the forced resolver): no query log fields.
          qtype: null,
          rcode: null,
          resolver: null,
        });
      }
      // The text form and a filter on the name find the same two.
      const named = relayLog(["--config", readerConfig, "--name", "RELAY.test"]);
      expect(named.records.length).toBe(2);
    });

    test("TCP: one record per connection, with the bytes each way (no packet counts)", async () => {
      const client = env.python(
        env.lab.client,
        `import socket
s = socket.create_connection(("${S4}", 8080), timeout=5)
s.sendall(b"x" * 10000); s.shutdown(socket.SHUT_WR)
n = 0
while True:
    d = s.recv(65536)
    if not d:
        break
    n += len(d)
print(n, s.getsockname()[1])`,
      );
      const [got, port] = client.stdout.trim().split(" ").map(Number);
      expect(got).toBe(3000);
      const done = await recordsWhen("the record of the TCP connection", (records) =>
        records.some((x) => x.protocol === "tcp"),
      );
      const tcp = done.records.filter((x) => x.protocol === "tcp");
      expect(tcp).toEqual([
        {
          startMs: tcp[0].startMs,
          endMs: tcp[0].endMs,
          protocol: "tcp",
          client: LAB.client4,
          clientPort: port,
          listener: "tcp4",
          target: S4,
          targetPort: 8080,
          packetsToTarget: null,
          bytesToTarget: 10_000,
          packetsToClient: null,
          bytesToClient: 3000,
          name: null,
          parsed: null,
          // No rules: the policy's default rule decided it (defaultAction "direct").
          rule: "default",
          outbound: "direct",
          end: "closed",
          reply: null,
          // The DNS query log's fields (layout 2): only forced DNS records have them.
          qtype: null,
          rcode: null,
          resolver: null,
        },
      ]);
      expect(tcp[0].endMs).toBeGreaterThanOrEqual(tcp[0].startMs);
    });

    test("the file rotates at fileBytesMax; read oldest first, no record lost or doubled", async () => {
      const r = env.probe([`${S4}:7002`], { flows: 60, packets: 1, size: 20 });
      expect(r.received).toBe(60);
      const done = await recordsWhen(
        "the 60 one-datagram sessions' records",
        (records) => records.filter((x) => x.bytesToTarget === 20).length >= 60,
      );
      const small = done.records.filter((x) => x.bytesToTarget === 20);
      expect(small.length).toBe(60);
      expect(small.every((x) => x.packetsToClient === 1 && x.bytesToClient === 20)).toBe(true);
      expect(existsSync(`${path}.1`)).toBe(true);
      for (let k = 1; existsSync(`${path}.${k}`); k++) {
        expect(statSync(`${path}.${k}`).size).toBeLessThanOrEqual(FILE_BYTES_MAX);
      }
      // Every ended flow once: the relay's own count of sessions and connections.
      const m = await env.relay!.metrics();
      expect(m.udp.sessionsActive).toBe(0);
      expect(done.records.filter((x) => x.protocol === "udp").length).toBe(m.udp.sessionsCreated);
      expect(done.records.filter((x) => x.protocol === "tcp").length).toBe(m.tcp.connected);
      const flows = done.records.map(
        (x) => `${x.protocol} ${x.clientPort} ${x.target}:${x.targetPort}`,
      );
      expect(new Set(flows).size).toBe(flows.length);
      // Written in the order the flows ended (per protocol: each comes in its own batches).
      const udpEnds = done.records.filter((x) => x.protocol === "udp").map((x) => x.endMs);
      expect(udpEnds).toEqual([...udpEnds].sort((a, b) => a - b));
      expect(m.udp.flowLogDropped).toBe(0);
      expect(m.flowLog).toMatchObject({ recordsLost: 0, writeErrors: 0 });
      expect(m.flowLog.rotations).toBeGreaterThanOrEqual(1);
      expect(m.flowLog.records).toBe(done.records.length);
    });

    test("SIGTERM: sessions still open are written (end: closed) before the final line", async () => {
      const r = env.probe([`${S4}:7003`], { flows: 2, packets: 3, size: 64 });
      expect(r.received).toBe(6);
      const before = relayLog(["--config", readerConfig]).records.length;
      const relay = env.relay!;
      const { final, exitCode } = await relay.stop();
      env.relay = null;
      expect(exitCode).toBe(0);
      // Read after the final line only: the records had to be on disk by then.
      const after = relayLog(["--config", readerConfig]);
      const open = after.records.filter((x) => x.targetPort === 7003);
      expect(open.length).toBe(2);
      for (const x of open) {
        expect(x).toMatchObject({ end: "closed", packetsToTarget: 3, bytesToTarget: 192 });
      }
      expect(after.records.length).toBe(before + 2);
      expect(final.flowLog).toMatchObject({ records: after.records.length, recordsLost: 0 });
    });
  });

  describe("flow log with udp.dataPlane = callback (records written on the main thread)", () => {
    let env: RelayLab;
    const dir = mkdtempSync(join(tmpdir(), "relay-flowlog-callback-"));
    const path = join(dir, "flow.log");

    beforeAll(async () => {
      env = new RelayLab();
      env.spawnEcho(`${S4}:7002`);
      await env.startRelay({
        listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
        intercept: [{ listener: "udp4", ports: [7002], interfaces: ["r0"] }],
        udp: { dataPlane: "callback", idleTimeoutMs: 300, idleTimeoutMsByPort: {} },
        flowLog: { path },
      });
      await env.lab.waitForUdpPort(env.lab.server, 7002);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    test("one record per session, exact counts", async () => {
      const r = env.probe([`${S4}:7002`], { flows: 4, packets: 2, size: 70 });
      expect(r.received).toBe(8);
      const done = await waitFor(
        () => relayLog(["--file", path]),
        (l) => l.records.length >= 4,
        { what: "4 records", timeoutMs: RECORD_TIMEOUT_MS },
      );
      expect(done.records.length).toBe(4);
      for (const x of done.records) {
        expect(x).toMatchObject({
          packetsToTarget: 2,
          bytesToTarget: 140,
          packetsToClient: 2,
          bytesToClient: 140,
          end: "idle",
        });
      }
    });
  });

  describe("flow log after kill -9 in the middle of writing", () => {
    let env: RelayLab;
    const dir = mkdtempSync(join(tmpdir(), "relay-flowlog-crash-"));
    const path = join(dir, "flow.log");
    const CONFIG = {
      listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
      intercept: [{ listener: "udp4", ports: [7002], interfaces: ["r0"] }],
      // The smallest idle timeout: a flood of one-datagram flows becomes a steady stream
      // of records, written every timer tick.
      udp: { idleTimeoutMs: 100, idleTimeoutMsByPort: {} },
      flowLog: { path },
    };

    beforeAll(async () => {
      env = new RelayLab();
      env.spawnEcho(`${S4}:7002`);
      await env.startRelay(CONFIG);
      await env.lab.waitForUdpPort(env.lab.server, 7002);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    test("every complete record is recovered and a torn one reported", async () => {
      // Bounded flood: 40000 flows of one 50-byte datagram each, a new client port each.
      const flood = env.spawn(env.lab.client, [
        "python3",
        "-c",
        `import socket, time
for i in range(40000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"z" * 50, ("${S4}", 7002)); s.close()
    if i % 50 == 49:
        time.sleep(0.002)`,
      ]);
      // Kill while the relay writes: the file has grown and goes on growing.
      const grown = await waitFor(
        () => (existsSync(path) ? statSync(path).size : 0),
        (size) => size >= 64 << 10,
        { what: "the flow log to reach 64 KiB under the flood", timeoutMs: 30_000 },
      );
      await waitFor(
        () => statSync(path).size,
        (size) => size > grown,
        { what: "the flow log to grow once more", timeoutMs: 10_000 },
      );
      const relay = env.relay!;
      relay.proc.kill("SIGKILL");
      expect(await relay.proc.exited).not.toBe(0);
      env.relay = null;
      flood.kill(9);

      const bytes = new Uint8Array(readFileSync(path));
      const starts = frameStarts(bytes);
      const read = relayLog(["--file", path]);
      expect(read.status).toBe(0);
      // Every complete frame is a record, and each is the flood's: 50-byte datagrams
      // (now and then two in one session, when a closed socket's port came round again).
      expect(read.records.length).toBe(starts.length);
      expect(read.records.length).toBeGreaterThan(100);
      for (const x of read.records) {
        expect(x).toMatchObject({ target: S4, targetPort: 7002, protocol: "udp" });
        expect(x.packetsToTarget).toBeGreaterThanOrEqual(1);
        expect(x.bytesToTarget).toBe(50 * x.packetsToTarget);
      }
      // Damage only at the end, if the kill landed inside a write.
      const lastEnd = starts.length ? starts.at(-1)! + frameBytesAt(bytes, starts.at(-1)!) : 0;
      const tornAtKill = lastEnd < bytes.length;
      expect(read.stderr).toBe(
        tornAtKill ? `relay log: ${path}: torn record at byte ${lastEnd}: skipped\n` : "",
      );

      // A torn record for certain: a copy cut in the middle of its last record.
      const copy = join(dir, "torn.log");
      const lastStart = starts.at(-1)!;
      writeFileSync(copy, bytes.subarray(0, lastStart + 7));
      const torn = relayLog(["--file", copy]);
      expect(torn.status).toBe(0);
      expect(torn.records).toEqual(read.records.slice(0, -1));
      expect(torn.stderr).toBe(`relay log: ${copy}: torn record at byte ${lastStart}: skipped\n`);

      // A relay restarted on the torn file appends behind the tear: the reader skips the
      // torn record and finds the new one.
      truncateSync(path, lastStart + 7);
      await env.startRelay(CONFIG);
      const r = env.probe([`${S4}:7002`], { flows: 1, packets: 3, size: 30 });
      expect(r.received).toBe(3);
      const after = await waitFor(
        () => relayLog(["--file", path]),
        (l) => l.records.some((x) => x.bytesToTarget === 90),
        { what: "the restarted relay's record", timeoutMs: RECORD_TIMEOUT_MS },
      );
      // What was before the tear, unchanged; behind it the new session's record.
      expect(after.records.slice(0, starts.length - 1)).toEqual(read.records.slice(0, -1));
      const fresh = after.records.slice(starts.length - 1);
      expect(fresh.filter((x) => x.bytesToTarget === 90)).toMatchObject([
        { packetsToTarget: 3, bytesToTarget: 90, packetsToClient: 3, bytesToClient: 90 },
      ]);
      expect(after.stderr).toBe(
        `relay log: ${path}: corrupt record at byte ${lastStart}: skipped 7 bytes ` +
          `to the next record at byte ${lastStart + 7}\n`,
      );
    }, 90_000);
  });
}

/** Bytes of the frame at `offset`: its length field plus head and CRC. */
function frameBytesAt(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(offset) + 8;
}
