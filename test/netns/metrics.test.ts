// End-to-end: the Prometheus endpoint of a relay that carried known traffic.
//
//   client ns ──veth── router ns (relay, GET 127.0.0.1:9477/metrics) ──veth── server ns
//   198.18.0.2          r0 198.18.0.1 | r1 198.18.1.1                    198.18.1.2
//
// What a scrape must show is exactly what was sent: datagrams, bytes and sessions each
// way, each drop under its reason, TCP connections under how they ended; and promtool
// (Prometheus' own checker) accepts the scrape as served.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseSamples, type Sample, sampleValue } from "../lab/exposition.ts";
import { LAB } from "../lab/netns.ts";
import { promtoolCheck, promtoolMissing } from "../lab/promtool.ts";
import { RELAY_BIN, RELAY_MAIN, RelayProcess } from "../lab/relay_process.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const S4 = LAB.server4;
const METRICS_PORT = 9477;
const PORT = {
  pktinfo: 7002, // listener port = original port: replies with IP_PKTINFO
  socket: 7003, // behind the 12345 listener: replies from a reply socket
  rejected: 7998, // the server answers with ICMP host unreachable
  tcpEcho: 8001,
  tcpClosed: 8999, // nothing listens: the upstream connect is refused
} as const;

const RELAY_CONFIG = {
  listeners: [
    { name: "echo4", address: "127.0.0.1", port: PORT.pktinfo },
    { name: "udp4", address: "127.0.0.1", port: 12345 },
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
  ],
  intercept: [
    { listener: "echo4", ports: [PORT.pktinfo] },
    { listener: "udp4", ports: [PORT.socket, PORT.rejected] },
    { listener: "tcp4", ports: [PORT.tcpEcho, PORT.tcpClosed] },
  ],
  udp: { datagramBytesMax: 2048 },
};

/** The traffic each test sends, and so what the counters must say. */
const SENT = {
  pktinfo: { flows: 3, packets: 4, size: 100 },
  socket: { flows: 2, packets: 5, size: 200 },
  /** Larger than udp.datagramBytesMax (2048): truncated by recvmmsg, dropped. */
  oversized: { count: 2, size: 3000 },
  rejected: { size: 50 },
  tcpBytes: 3000,
};

/** Deadline for what the relay counts after the client has seen the outcome. */
const COUNTED_TIMEOUT_MS = 10_000;

/** A TCP echo: each connection's bytes back once the client half-closes, then close. */
const TCP_ECHO = `import socket, threading
srv = socket.create_server(("${S4}", ${PORT.tcpEcho}))
print("listening", flush=True)
def serve(c):
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.sendall(data)
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()`;

const skip = labSkipReason();
if (!skip) {
  describe("Prometheus endpoint", () => {
    let env: RelayLab;
    const dir = mkdtempSync(join(tmpdir(), "relay-metrics-"));

    /** GET on the relay's endpoint from inside the router namespace (it binds loopback). */
    const get = (path: string) => {
      const r = env.lab.exec(env.lab.router, [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code} %{content_type}",
        `http://127.0.0.1:${METRICS_PORT}${path}`,
      ]);
      const cut = r.stdout.lastIndexOf("\n");
      const [status, ...type] = r.stdout.slice(cut + 1).split(" ");
      return { body: r.stdout.slice(0, cut), status: Number(status), type: type.join(" ") };
    };
    const scrape = () => {
      const r = get("/metrics");
      expect(r.status).toBe(200);
      return { text: r.body, samples: parseSamples(r.body) };
    };
    const num = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
      Number(sampleValue(samples, name, labels));

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      env.spawnEcho(`${S4}:${PORT.pktinfo}`, `${S4}:${PORT.socket}`);
      env.spawn(lab.server, ["python3", "-c", TCP_ECHO]);
      lab.exec(
        lab.server,
        ["nft", "-f", "-"],
        [
          "table inet lab {",
          "  chain input {",
          "    type filter hook input priority 0; policy accept;",
          `    udp dport ${PORT.rejected} reject with icmpx type host-unreachable`,
          "  }",
          "}",
        ].join("\n") + "\n",
      );
      await env.startRelay(RELAY_CONFIG);
      await lab.waitForUdpPort(lab.server, PORT.pktinfo);
      await lab.waitForUdpPort(lab.server, PORT.socket);
      await waitFor(
        () => lab.exec(lab.server, ["ss", "-Hltn", `sport = :${PORT.tcpEcho}`]).stdout.trim(),
        (out) => out !== "",
        { what: "the TCP echo to listen", timeoutMs: 10_000 },
      );
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      try {
        await env?.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test("a fresh relay: every family at zero, served as text format 0.0.4", () => {
      const r = get("/metrics");
      expect(r.status).toBe(200);
      expect(r.type).toBe("text/plain; version=0.0.4; charset=utf-8");
      const s = parseSamples(r.body);
      const counted = s.filter((x) => /^relay_(packets|bytes|udp_dropped|tcp_conn)/.test(x.name));
      expect(counted.length).toBeGreaterThan(30);
      expect(counted.filter((x) => x.value !== "0")).toEqual([]);
      expect(num(s, "relay_sessions_limit", { protocol: "udp" })).toBeGreaterThan(0);
      expect(num(s, "process_open_fds")).toBeGreaterThan(10);
      expect(num(s, "process_resident_memory_bytes")).toBeGreaterThan(1 << 20);
      expect(num(s, "relay_uptime_seconds")).toBeGreaterThan(0);
    });

    test("anything but GET /metrics is 404", () => {
      expect(get("/").status).toBe(404);
      expect(get("/metrics/x").status).toBe(404);
      const post = env.lab.exec(env.lab.router, [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        `http://127.0.0.1:${METRICS_PORT}/metrics`,
      ]);
      expect(post.stdout).toBe("404");
    });

    test("after known traffic the scrape shows exactly what was sent", async () => {
      const { lab } = env;
      const a = env.probe([`${S4}:${PORT.pktinfo}`], SENT.pktinfo);
      const b = env.probe([`${S4}:${PORT.socket}`], SENT.socket);
      const echoed = (x: { flows: number; packets: number }) => x.flows * x.packets;
      expect(a).toMatchObject({ received: echoed(SENT.pktinfo), lost: 0, wrongSource: 0 });
      expect(b).toMatchObject({ received: echoed(SENT.socket), lost: 0, wrongSource: 0 });
      env.python(
        lab.client,
        `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(${SENT.oversized.count}):
    s.sendto(b"x" * ${SENT.oversized.size}, ("${S4}", ${PORT.pktinfo}))
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.sendto(b"r" * ${SENT.rejected.size}, ("${S4}", ${PORT.rejected}))`,
      );
      const tcp = env.python(
        lab.client,
        `import socket
c = socket.create_connection(("${S4}", ${PORT.tcpEcho}), timeout=10)
c.sendall(b"t" * ${SENT.tcpBytes}); c.shutdown(socket.SHUT_WR)
got = b""
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    got += chunk
print(len(got))
try:
    socket.create_connection(("${S4}", ${PORT.tcpClosed}), timeout=10).recv(1)
    print("open")
except OSError:
    print("refused")`,
      );
      expect(tcp.stdout.trim().split("\n")).toEqual([`${SENT.tcpBytes}`, "refused"]);

      // The drops, the ICMP report and the TCP ends are counted on the relay's schedule.
      const { text, samples: s } = await waitFor(
        scrape,
        ({ samples }) =>
          num(samples, "relay_udp_dropped_total", { reason: "oversized" }) >= 2 &&
          num(samples, "relay_udp_icmp_errors_total", { kind: "host_unreachable" }) >= 1 &&
          num(samples, "relay_sessions_active", { protocol: "tcp" }) === 0 &&
          num(samples, "relay_tcp_connections_ended_total", { reason: "closed" }) >= 1 &&
          num(samples, "relay_tcp_connections_ended_total", { reason: "connect_refused" }) >= 1,
        {
          what: "the drops, the ICMP error and both TCP ends to be counted",
          timeoutMs: COUNTED_TIMEOUT_MS,
        },
      );

      const relayed = (x: { flows: number; packets: number; size: number }) => ({
        packets: x.flows * x.packets,
        bytes: x.flows * x.packets * x.size,
      });
      const p = relayed(SENT.pktinfo);
      const q = relayed(SENT.socket);
      const over = SENT.oversized;
      const udp = (direction: string) => ({ protocol: "udp", direction });
      // Clients -> relay: everything read, the dropped datagrams too.
      expect(num(s, "relay_packets_total", udp("from_clients"))).toBe(
        p.packets + q.packets + over.count + 1,
      );
      expect(num(s, "relay_bytes_total", udp("from_clients"))).toBe(
        p.bytes + q.bytes + over.count * over.size + SENT.rejected.size,
      );
      // Relay -> targets: all but the oversized ones; the rejected one did go out.
      expect(num(s, "relay_packets_total", udp("to_targets"))).toBe(p.packets + q.packets + 1);
      expect(num(s, "relay_bytes_total", udp("to_targets"))).toBe(
        p.bytes + q.bytes + SENT.rejected.size,
      );
      // Every echo came back and was delivered.
      for (const direction of ["from_targets", "to_clients"]) {
        expect(num(s, "relay_packets_total", udp(direction))).toBe(p.packets + q.packets);
        expect(num(s, "relay_bytes_total", udp(direction))).toBe(p.bytes + q.bytes);
      }
      // One session per flow: the probes' and the rejected datagram's.
      const flows = SENT.pktinfo.flows + SENT.socket.flows + 1;
      expect(num(s, "relay_sessions_created_total", { protocol: "udp" })).toBe(flows);
      expect(num(s, "relay_sessions_active", { protocol: "udp" })).toBe(flows);
      expect(num(s, "relay_sessions_expired_total", { protocol: "udp" })).toBe(0);
      expect(num(s, "relay_sessions_evicted_total", { protocol: "udp" })).toBe(0);
      expect(num(s, "relay_udp_sessions_reply_path_total", { path: "pktinfo" })).toBe(
        SENT.pktinfo.flows,
      );
      expect(num(s, "relay_udp_sessions_reply_path_total", { path: "socket" })).toBe(
        SENT.socket.flows + 1,
      );
      // Endpoint-independent mapping: one upstream socket per client socket; one reply
      // socket per original destination behind the 12345 listener.
      expect(num(s, "relay_udp_upstream_sockets")).toBe(flows);
      expect(num(s, "relay_udp_reply_sockets")).toBe(2);

      // Each drop under its reason, and no other reason.
      const drops = s.filter((x) => x.name === "relay_udp_dropped_total");
      expect(drops.filter((x) => x.value !== "0").map((x) => [x.labels.reason, x.value])).toEqual([
        ["oversized", `${over.count}`],
      ]);
      const nonzero = (name: string) =>
        s.filter((x) => x.name === name && x.value !== "0").map((x) => [x.labels, x.value]);
      expect(nonzero("relay_udp_icmp_errors_total")).toEqual([[{ kind: "host_unreachable" }, "1"]]);
      expect(nonzero("relay_udp_send_errors_total")).toEqual([]);

      // Batches: +Inf = _count, and the datagrams in them are every datagram read.
      const count = num(s, "relay_udp_batch_datagrams_count");
      expect(count).toBeGreaterThan(0);
      expect(num(s, "relay_udp_batch_datagrams_bucket", { le: "+Inf" })).toBe(count);
      expect(num(s, "relay_udp_batch_datagrams_sum")).toBe(
        num(s, "relay_packets_total", udp("from_clients")) +
          num(s, "relay_packets_total", udp("from_targets")),
      );
      const buckets = s
        .filter((x) => x.name === "relay_udp_batch_datagrams_bucket")
        .map((x) => Number(x.value));
      expect(buckets).toEqual([...buckets].sort((x, y) => x - y));

      // TCP: two accepted, one closed cleanly, one refused upstream; bytes each way.
      expect(num(s, "relay_tcp_connections_accepted_total")).toBe(2);
      const ended = s.filter((x) => x.name === "relay_tcp_connections_ended_total");
      expect(ended.filter((x) => x.value !== "0").map((x) => [x.labels.reason, x.value])).toEqual([
        ["connect_refused", "1"],
        ["closed", "1"],
      ]);
      expect(num(s, "relay_tcp_connect_seconds_count")).toBe(1);
      for (const direction of ["to_targets", "to_clients"]) {
        expect(num(s, "relay_bytes_total", { protocol: "tcp", direction })).toBe(SENT.tcpBytes);
        expect(num(s, "relay_tcp_ended_connections_bytes_total", { direction })).toBe(
          SENT.tcpBytes,
        );
      }

      // The same counters as the relay's own metrics line (SIGUSR1).
      const line = await env.relay!.metrics();
      expect(num(s, "relay_packets_total", udp("from_clients"))).toBe(line.udp.packetsFromClients);
      expect(num(s, "relay_udp_dropped_total", { reason: "oversized" })).toBe(
        line.udp.droppedOversized,
      );
      expect(num(s, "relay_tcp_connections_accepted_total")).toBe(line.tcp.accepted);

      if (promtoolMissing("promtool check metrics on a scrape")) return;
      expect(promtoolCheck(text)).toEqual({ status: 0, output: "" });
    }, 60_000);

    test("a metrics port in use fails the start: exit 1, names config.metrics.port", () => {
      // Listeners of its own, the endpoint on the port the running relay holds.
      const path = join(dir, "second.json");
      writeFileSync(
        path,
        JSON.stringify({ listeners: [{ name: "other", address: "127.0.0.1", port: 22345 }] }),
      );
      const r = env.lab.exec(
        env.lab.router,
        [RELAY_BIN, RELAY_MAIN, "--config", path],
        undefined,
        true,
      );
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(
        `relay: metrics endpoint 127.0.0.1 port ${METRICS_PORT} (config.metrics.port; 0 turns ` +
          "the endpoint off): EADDRINUSE",
      );
      expect(r.stdout).not.toContain('"event":"ready"');
    }, 60_000);

    test("metrics.port 0: no endpoint, said so at start", async () => {
      const path = join(dir, "off.json");
      writeFileSync(
        path,
        JSON.stringify({
          listeners: [{ name: "other", address: "127.0.0.1", port: 22346 }],
          metrics: { port: 0 },
        }),
      );
      const relay = await RelayProcess.start(env.lab, path);
      try {
        await waitFor(
          () => relay.stderr,
          (text) => text.includes("metrics off (metrics.port 0)"),
          { what: "the start-up line", timeoutMs: 10_000 },
        );
        const listening = env.lab.exec(env.lab.router, ["ss", "-Hltnp"]).stdout;
        expect(listening).not.toContain(`pid=${relay.proc.pid},`);
      } finally {
        const { exitCode } = await relay.stop();
        expect(exitCode).toBe(0);
      }
    }, 60_000);
  });
}
