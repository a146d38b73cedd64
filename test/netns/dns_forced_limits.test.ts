// End-to-end: the forced DNS resolver's bounds (src/dns/forwarder.ts) under more queries
// than it can hold: a tiny in-flight table, and every query ID of an upstream socket in
// flight. What does not fit is dropped and counted; other flows go on.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import {
  A4,
  A6,
  C4,
  config,
  dnsmasq,
  forward,
  kdig,
  udp,
  waitForResolvers,
} from "./dns_forced_lab.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

/** Query IDs of one upstream socket. */
const IDS = 65_536;
/** Queries sent past the IDs: each must be dropped and counted as ids_exhausted. */
const EXCESS = 4096;
/** Queries per sender run: the relay reads one run before the next is sent. */
const CHUNK = 4096;
/**
 * The sink's answer timeout: no ID may come back while the test fills them and checks
 * the other flows (5 to 9 s on a loaded 2-core machine: each datagram's trip through
 * veth and TPROXY is paid by the sender), yet they must come back well within the test.
 */
const SINK_ANSWER_TIMEOUT_MS = 25_000;
const ECHO_PORT = 7053;
const SINK_ANSWER = "198.18.1.78";

/**
 * The ID-exhaustion lab: one upstream socket per resolver (65,536 IDs), room in the
 * in-flight table for more than that (so the IDs, not the table, run out first).
 *   *.sink.test -> forward "sink"     ─► a python resolver on .5:53 that reads and drops
 *                                        every query, but answers back.sink.test
 *   other DNS   -> forward "resolver" ─► dnsmasq on .3
 *   udp/7053    -> direct (the default action) ─► a UDP echo server
 */
const exhaustionConfig = () => ({
  listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
  intercept: [{ listener: "udp4", ports: [53, ECHO_PORT], interfaces: ["r0"] }],
  udp: { dnsUpstreamSocketsPerTarget: 1, dnsQueriesInFlightMax: IDS + 2 * EXCESS },
  outbounds: [
    // Its timeouts mark the sink down, but as the outbound's only target it still gets
    // the queries (no resolver is up: the hash's choice is used).
    forward("sink", [`${C4}:53`], { answerTimeoutMs: SINK_ANSWER_TIMEOUT_MS }),
    forward("resolver", [`${A4}:53`]),
  ],
  rules: [
    { name: "sink", names: { suffix: ["sink.test"] }, action: "sink" },
    { name: "dns", ports: [53], action: "resolver" },
  ],
});

/**
 * The sink resolver: it reads every query (so no ICMP port unreachable reaches the relay,
 * nor a full receive buffer: a read-and-drop) and answers only back.sink.test.
 */
const SINK = `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.bind(("${C4}", 53))
back = b"\\x04back\\x04sink\\x04test\\x00"
while True:
    q, peer = s.recvfrom(2048)
    if q[12:12 + len(back)].lower() != back:
        continue
    end = 12 + len(back) + 4
    header = bytearray(q[:12])
    header[2] |= 0x80
    header[3] = 0x80
    header[6:12] = b"\\x00\\x01\\x00\\x00\\x00\\x00"
    record = b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04"
    record += socket.inet_aton("${SINK_ANSWER}")
    s.sendto(bytes(header) + q[12:end] + record, peer)
`;

/**
 * Sends `count` queries for sink.test to the lab's server address, port 53, from 4 client
 * ports (round robin), IDs from `first` on.
 */
function sendSinkQueries(env: RelayLab, first: number, count: number): void {
  env.python(
    env.lab.client,
    `import socket, struct
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
question = b"\\x04sink\\x04test\\x00\\x00\\x01\\x00\\x01"
for i in range(${first}, ${first + count}):
    q = struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + question
    sockets[i % 4].sendto(q, ("${LAB.server4}", 53))
`,
  );
}

const skip = labSkipReason();
for (const _ of skip === null ? [1] : []) {
  describe("forced DNS: a tiny in-flight table", () => {
    let env: RelayLab;

    beforeAll(async () => {
      env = new RelayLab();
      env.spawn(env.lab.server, dnsmasq(A4, A6, [["x.test", "198.18.1.101", "2001:2:0:2::101"]]));
      await env.startRelay(config(2));
      await waitForResolvers(env, [`${A4}:53`]);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("more queries in flight than entries: dropped and counted, no crash", async () => {
      // q.test goes to a resolver that never answers (60 s timeout): 2 fill the table.
      env.python(
        env.lab.client,
        `import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(10):
    q = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + b"\\x01q\\x04test\\x00\\x00\\x01\\x00\\x01"
    s.sendto(q, ("${LAB.server4}", 53))
`,
      );
      const u = await waitFor(
        () => udp(env),
        (v) => v.dnsQueriesDroppedInFlightFull >= 8,
        { what: "8 queries dropped", timeoutMs: 5000 },
      );
      expect(u.dnsQueriesInFlight).toBe(2);
      expect(u.dnsQueriesForwarded).toBe(2);
    });
  });

  describe("forced DNS: every query ID of an upstream socket in flight", () => {
    let env: RelayLab;

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      env.spawn(lab.server, dnsmasq(A4, A6, [["x.test", "198.18.1.101", "2001:2:0:2::101"]]));
      env.spawn(lab.server, ["python3", "-c", SINK]);
      env.spawnEcho(`${LAB.server4}:${ECHO_PORT}`);
      await env.startRelay(exhaustionConfig());
      await waitForResolvers(env, [`${A4}:53`, `${C4}:53`, `${LAB.server4}:${ECHO_PORT}`]);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    test("IDs run out: the excess counted, other flows unaffected, IDs come back", async () => {
      const base = await udp(env);
      const started = performance.now();
      // In runs the relay reads before the next (the listener's receive buffer holds a
      // run with room to spare): every query reaches the forwarder, none is lost before.
      for (let sent = 0; sent < IDS + EXCESS; ) {
        const count = Math.min(CHUNK, IDS + EXCESS - sent);
        sendSinkQueries(env, sent, count);
        sent += count;
        await waitFor(
          () => udp(env),
          (v) =>
            v.dnsQueriesForwarded +
              v.dnsQueriesDroppedIdsExhausted -
              base.dnsQueriesForwarded -
              base.dnsQueriesDroppedIdsExhausted >=
            sent,
          { what: `the relay to take ${sent} queries`, timeoutMs: 10_000 },
        );
      }
      const filledMs = performance.now() - started;
      const full = await udp(env);
      // Not one ID came back yet (else the counts below would be off by those).
      expect(full.dnsQueriesTimedOut, `filled in ${filledMs} ms`).toBe(base.dnsQueriesTimedOut);
      expect(full.dnsQueriesForwarded - base.dnsQueriesForwarded).toBe(IDS);
      expect(full.dnsQueriesDroppedIdsExhausted - base.dnsQueriesDroppedIdsExhausted).toBe(EXCESS);
      expect(full.dnsQueriesDroppedInFlightFull).toBe(base.dnsQueriesDroppedInFlightFull);
      // Bounded: one entry per ID, one upstream socket, no session for any query.
      expect(full.dnsQueriesInFlight).toBe(IDS);
      expect(full.dnsUpstreamSockets).toBe(1);
      expect(full.sessionsCreated).toBe(0);
      expect(full.sessionsActive).toBe(0);

      // Meanwhile, another resolver answers (its own socket, its own IDs)...
      const other = kdig(env, LAB.server4, "x.test", "A");
      expect(other).toContain("198.18.1.101");
      expect(other).toContain(`;; From ${LAB.server4}@53(UDP)`);
      // ...a plain UDP flow through the relay is echoed, all of it...
      const echo = env.probe([`${LAB.server4}:${ECHO_PORT}`], { flows: 2, packets: 4 });
      expect(echo.received).toBe(echo.sent);
      expect(echo.wrongSource).toBe(0);
      // ...and one more query to the sink is dropped and counted too.
      expect(kdig(env, LAB.server4, "back.sink.test", "A", 1)).not.toContain(SINK_ANSWER);
      const during = await waitFor(
        () => udp(env),
        (v) => v.dnsQueriesDroppedIdsExhausted - base.dnsQueriesDroppedIdsExhausted >= EXCESS + 1,
        { what: "the query past the IDs counted", timeoutMs: 5000 },
      );
      expect(during.dnsQueriesTimedOut).toBe(base.dnsQueriesTimedOut);
      // The Prometheus endpoint (the default, 127.0.0.1:9477 in the router namespace) too.
      const url = "http://127.0.0.1:9477/metrics";
      const scrape = env.lab.exec(env.lab.router, ["curl", "-sS", "--max-time", "10", url]);
      const sample = 'relay_udp_dns_queries_total{event="ids_exhausted"}';
      expect(scrape.stdout).toContain(`${sample} ${during.dnsQueriesDroppedIdsExhausted}\n`);
      expect(during.dnsUpstreamSockets).toBe(2);
      expect(during.sessionsCreated).toBe(2); // the echo's two flows, no DNS query
      expect(env.relay!.proc.exitCode).toBeNull();

      // After the sink's answer timeout every ID comes back (each query timed out once:
      // no other target to retry on), and a query to the sink is answered again.
      const after = await waitFor(
        () => udp(env),
        (v) => v.dnsQueriesTimedOut - base.dnsQueriesTimedOut === IDS && v.dnsQueriesInFlight === 0,
        {
          what: "every ID back after the sink's answer timeout",
          timeoutMs: SINK_ANSWER_TIMEOUT_MS + 30_000,
          intervalMs: 250,
        },
      );
      expect(after.dnsQueriesRetried).toBe(base.dnsQueriesRetried);
      const back = kdig(env, LAB.server4, "back.sink.test", "A");
      expect(back).toContain(SINK_ANSWER);
      expect(back).toContain(`;; From ${LAB.server4}@53(UDP)`);
      const end = await udp(env);
      expect(end.dnsQueriesDroppedIdsExhausted).toBe(during.dnsQueriesDroppedIdsExhausted);
      expect(end.dnsUpstreamSockets).toBe(2);
    }, 120_000);
  });
}
