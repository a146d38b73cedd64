// End-to-end: the forced DNS resolver on UDP (src/dns/forwarder.ts), real peers.
//
//   client ns ── router ns (relay) ── server ns
//   kdig / dnsperf @198.18.1.2:53 or @[2001:2:0:2::2]:53 (nothing listens there)
//     x.test  -> forward "resolver" ─► dnsmasq A on .3 / ::3 (answers .101 / ::101)
//     f.test  -> forward "failover" ─► .5:54 (nobody: ICMP) then dnsmasq B on .4 / ::4
//     s.test  -> forward "spoofer"  ─► a python fake resolver on .5:53 / ::5 that answers
//                                      with a wrong ID, then a wrong question, then right
//
// Every answer must come from the address the client asked (kdig prints ";; From").
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import {
  A4,
  A6,
  B4,
  B6,
  C4,
  C6,
  config,
  dnsmasq,
  kdig,
  SOCKETS_PER_TARGET,
  udp,
  waitForResolvers,
} from "./dns_forced_lab.ts";
import { flowRecords, labSkipReason, RelayLab, relayLog } from "./harness.ts";

const QUERIES = 50_000;

/** Each test that runs over both families: the address asked, the type, the spoofer's answer. */
const FAMILIES = [
  { family: "IPv4", server: LAB.server4, type: "A", spoofedAnswer: "198.18.1.77" },
  { family: "IPv6", server: LAB.server6, type: "AAAA", spoofedAnswer: "2001:2:0:2::77" },
];

/**
 * A fake resolver on `address`:53: for each query a wrong-ID answer, a wrong-question one,
 * then the right one (an A query gets 198.18.1.77, any other type 2001:2:0:2::77).
 */
const spoofer = (address: string) => `import socket
s = socket.socket(socket.AF_INET6 if ":" in "${address}" else socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("${address}", 53))
while True:
    q, peer = s.recvfrom(2048)
    end = 12
    while q[end]:
        end += q[end] + 1
    qtype = q[end + 1:end + 3]
    end += 5
    header = bytearray(q[:12])
    header[2] |= 0x80
    header[3] = 0x80
    header[6:12] = b"\\x00\\x01\\x00\\x00\\x00\\x00"
    if qtype == b"\\x00\\x01":
        data = bytes([198, 18, 1, 77])
    else:
        data = socket.inet_pton(socket.AF_INET6, "2001:2:0:2::77")
    ttl = b"\\x00\\x00\\x00\\x3c"
    record = b"\\xc0\\x0c" + qtype + b"\\x00\\x01" + ttl + bytes([0, len(data)]) + data
    good = bytes(header) + q[12:end] + record
    wrong_id = bytes([q[0] ^ 0x5a, q[1]]) + good[2:]
    question = bytearray(q[12:end])
    question[1] ^= 0x01
    wrong_question = bytes(header) + bytes(question) + record
    s.sendto(wrong_id, peer)
    s.sendto(wrong_question, peer)
    s.sendto(good, peer)
`;

const skip = labSkipReason();
for (const _ of skip === null ? [1] : []) {
  describe("forced DNS on UDP: ID-multiplexed upstream sockets", () => {
    let env: RelayLab;
    const dir = mkdtempSync(join(tmpdir(), "relay-dns-forced-"));

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      env.spawn(
        lab.server,
        dnsmasq(A4, A6, [
          ["x.test", "198.18.1.101", "2001:2:0:2::101"],
          ["f.test", "198.18.1.103", "2001:2:0:2::103"],
        ]),
      );
      env.spawn(
        lab.server,
        dnsmasq(B4, B6, [
          ["x.test", "198.18.1.201", "2001:2:0:2::201"],
          ["f.test", "198.18.1.203", "2001:2:0:2::203"],
        ]),
      );
      for (const address of [C4, C6]) env.spawn(lab.server, ["python3", "-c", spoofer(address)]);
      await env.startRelay(config(65_536, join(dir, "flow.log")));
      await waitForResolvers(env, [`${A4}:53`, `[${A6}]:53`, `${B4}:53`, `[${B6}]:53`]);
      await waitForResolvers(env, [`${C4}:53`, `[${C6}]:53`]);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      try {
        await env?.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test("kdig gets the configured resolver's answer from the address it asked", async () => {
      const cases = [
        [LAB.server4, "A", "198.18.1.101"],
        [LAB.server6, "AAAA", "2001:2:0:2::101"],
      ];
      for (const [server, type, answer] of cases) {
        const out = kdig(env, server, "x.test", type);
        expect(out).toContain("status: NOERROR");
        expect(out).toContain(answer);
        expect(out).toContain(`;; From ${server}@53(UDP)`);
      }
      const u = await udp(env);
      expect(u.dnsAnswersRelayed).toBeGreaterThanOrEqual(2);
      // No session: the forwarder holds the query until its answer only.
      expect(u.sessionsCreated).toBe(0);
    });

    // Both families, one after the other: the IPv6 run also shows the IPv4 one's queries
    // left nothing behind.
    for (const { family, server, type } of FAMILIES) {
      const title = `${QUERIES} queries from dnsperf over ${family}: all answered, few sockets`;
      test(`${title}, no sessions`, async () => {
        const before = await udp(env);
        const data = join(dir, `queries-${family}.txt`);
        writeFileSync(data, `x.test ${type}\n`.repeat(1000));
        const r = env.lab.exec(
          env.lab.client,
          [
            "dnsperf",
            ...["-s", server, "-p", "53", "-d", data, "-c", "50"],
            ...["-n", `${QUERIES / 1000}`, "-Q", "5000", "-t", "5"],
          ],
          undefined,
          true,
        );
        const completed = /Queries completed:\s+(\d+)/.exec(r.stdout);
        expect(completed?.[1], r.stdout + r.stderr).toBe(`${QUERIES}`);
        // A few seconds later (the relay answers at once; dnsperf's last answers are
        // relayed when it returns), the session table is near-empty: no DNS query has
        // one, and nothing waits for an answer.
        const u = await waitFor(
          () => udp(env),
          (v) => v.sessionsActive <= 2 && v.dnsQueriesInFlight === 0,
          { what: "the session table near-empty", timeoutMs: 10_000 },
        );
        // Only the resolver's two targets (IPv4 and IPv6) were asked so far (the spoofer
        // tests come later): 4 sockets each at most, whatever the number of client ports.
        expect(u.dnsUpstreamSockets).toBeLessThanOrEqual(2 * SOCKETS_PER_TARGET);
        expect(u.dnsAnswersRelayed - before.dnsAnswersRelayed).toBeGreaterThanOrEqual(QUERIES);
        expect(u.sessionsCreated).toBe(0);
        expect(u.sessionsActive).toBe(0);
      }, 120_000);
    }

    for (const { family, server, type, spoofedAnswer } of FAMILIES) {
      const title = "answers with a wrong ID or a wrong question are dropped and counted";
      test(`${title} (${family})`, async () => {
        const before = await udp(env);
        const out = kdig(env, server, "s.test", type);
        expect(out).toContain(spoofedAnswer);
        expect(out).toContain(`;; From ${server}@53(UDP)`);
        const u = await waitFor(
          () => udp(env),
          (v) => v.dnsAnswersSpoofed >= before.dnsAnswersSpoofed + 2,
          { what: "two spoofed answers counted", timeoutMs: 5000 },
        );
        expect(u.dnsAnswersRelayed).toBe(before.dnsAnswersRelayed + 1);
      });
    }

    test("failover: the first resolver down, answers come from the second", async () => {
      // Each kdig is a new client port: its hash picks a target. A query sent to the dead
      // one is retried on the next (and the dead one marked down at once: failuresMax 1).
      for (const [server, type, answer] of [
        [LAB.server4, "A", "198.18.1.203"],
        [LAB.server6, "AAAA", "2001:2:0:2::203"],
      ]) {
        for (let i = 0; i < 8; i++) {
          const out = kdig(env, server, "f.test", type, 3);
          expect(out).toContain(answer);
          expect(out).toContain(`;; From ${server}@53(UDP)`);
        }
      }
      const u = await udp(env);
      expect(u.forwardTargetsDown).toBeGreaterThanOrEqual(1);
      expect(u.dnsQueriesRetried).toBeGreaterThanOrEqual(1);
    }, 60_000);

    test("EDNS(0) and truncated answers pass unchanged", () => {
      const base = ["kdig", `@${LAB.server4}`, "big.test", "TXT", "+timeout=2", "+retry=0"];
      // Without EDNS, 512 bytes at most: dnsmasq truncates, the client sees TC (and would
      // retry over TCP; +ignore keeps kdig on UDP).
      const truncated = env.lab.exec(env.lab.client, [...base, "+noedns", "+ignore"]).stdout;
      expect(truncated).toMatch(/;; Flags: .*\btc\b/);
      expect(truncated).toContain(`;; From ${LAB.server4}@53(UDP)`);
      // With EDNS (a 4096-byte buffer) the whole answer comes, its OPT record too.
      const full = env.lab.exec(env.lab.client, [...base, "+notcp", "+bufsize=4096"]).stdout;
      expect(full).toContain("EDNS PSEUDOSECTION");
      expect(full).toContain("c".repeat(200));
      expect(full).not.toMatch(/;; Flags: .*\btc\b/);
    });

    test("blocked names get the configured answer in place, nothing goes upstream", async () => {
      const before = await udp(env);
      const cases = [
        [LAB.server4, "ads.blocked.test", "A", "status: NXDOMAIN", null],
        [LAB.server6, "blocked.test", "AAAA", "status: NXDOMAIN", null],
        [LAB.server4, "pinned.test", "A", "status: NOERROR", "198.18.1.99"],
        [LAB.server6, "pinned.test", "AAAA", "status: NOERROR", "2001:2:0:2::99"],
        [LAB.server4, "pinned.test", "MX", "ANSWER: 0", null],
      ];
      for (const [server, name, type, status, answer] of cases) {
        const out = kdig(env, server!, name!, type!);
        expect(out).toContain(status!);
        if (answer !== null) expect(out).toMatch(/pinned\.test\.\s+30\s+IN\s+/);
        if (answer !== null) expect(out).toContain(answer);
        expect(out).toContain(`;; From ${server}@53(UDP)`);
      }
      const u = await udp(env);
      expect(u.dnsQueriesAnsweredLocally - before.dnsQueriesAnsweredLocally).toBe(cases.length);
      expect(u.dnsQueriesForwarded).toBe(before.dnsQueriesForwarded);
      expect(u.packetsToTargets).toBe(before.packetsToTargets);
    });

    test("the flow log has one record per query: name, rule, outbound, end", async () => {
      const path = join(dir, "flow.log");
      const records = await waitFor(
        async () => flowRecords(dir, path),
        (r: any[]) =>
          r.some((x) => x.name === "x.test" && x.end === "dns-answered") &&
          r.some((x) => x.name === "pinned.test" && x.end === "dns-local"),
        { what: "query records", timeoutMs: 10_000 },
      );
      const x = records.find((r: any) => r.name === "x.test" && r.end === "dns-answered");
      expect(x).toMatchObject({ rule: "dns", outbound: "resolver", target: LAB.server4 });
      const pinned = records.find((r: any) => r.name === "pinned.test");
      expect(pinned).toMatchObject({ rule: "pin", outbound: "pinned", targetPort: 53 });
    });

    test("the query log: qtype, rcode and the resolver that answered", async () => {
      // A query to a resolver that never answers ends as a timeout record.
      kdig(env, LAB.server4, "t.test", "A", 1);
      const path = join(dir, "flow.log");
      const records = await waitFor(
        async () => flowRecords(dir, path),
        (r: any[]) => r.some((x) => x.name === "t.test" && x.end === "dns-timeout"),
        { what: "the timed-out query's record", timeoutMs: 10_000 },
      );
      const summary = (name: string, end: string) => [
        ...new Set(
          records
            .filter((r: any) => r.name === name && r.end === end)
            .map((r: any) => `${r.qtype} ${r.rcode} ${r.resolver}`),
        ),
      ];
      // x.test: A (dnsperf, kdig) and AAAA (kdig over IPv6), from the one resolver.
      expect(summary("x.test", "dns-answered").sort()).toEqual([`1 0 ${A4}:53`, `28 0 [${A6}]:53`]);
      // f.test: the first targets are dead; every answer came from the second ones
      // (retried there, or sent there once the dead ones were down).
      expect(summary("f.test", "dns-answered").sort()).toEqual([`1 0 ${B4}:53`, `28 0 [${B6}]:53`]);
      // Answered here: the configured rcode, no resolver.
      expect(summary("ads.blocked.test", "dns-local")).toEqual(["1 3 null"]);
      expect(summary("blocked.test", "dns-local")).toEqual(["28 3 null"]);
      expect(summary("pinned.test", "dns-local").sort()).toEqual([
        "1 0 null",
        "15 0 null",
        "28 0 null",
      ]);
      // A timeout: no rcode, no resolver.
      expect(summary("t.test", "dns-timeout")).toEqual(["1 null null"]);
      // The text form names them.
      const text = (name: string) => relayLog(dir, path, ["--name", name, "--limit", "1"])[0];
      expect(text("x.test")).toEndWith(`qtype=A rcode=NOERROR resolver=${A4}:53`);
      expect(text("ads.blocked.test")).toEndWith("qtype=A rcode=NXDOMAIN resolver=-");
      expect(text("t.test")).toEndWith("qtype=A rcode=- resolver=-");
    });

    test("malformed DNS on port 53: counted, goes the session way; queries go on", async () => {
      const before = await udp(env);
      env.python(
        env.lab.client,
        `import socket
sockets = []
for datagram in [b"\\x01\\x02not dns at all", b"\\x00"]:
    # One socket each, all kept open: a second datagram of the same flow (a closed
    # socket's port given to the next one) would be its session's.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(datagram, ("${LAB.server4}", 53))
    sockets.append(s)
`,
      );
      await waitFor(
        () => udp(env),
        (v) => v.dnsQueriesMalformed >= before.dnsQueriesMalformed + 2,
        { what: "two malformed queries counted", timeoutMs: 5000 },
      );
      expect(kdig(env, LAB.server4, "x.test", "A")).toContain("198.18.1.101");
    });

    test("a query whose name rule takes a session is decided once: never held", async () => {
      const before = await udp(env);
      // "pass" (direct, by name) goes to the resolver the client asked: A4's dnsmasq.
      const out = kdig(env, A4, "pass.test", "A");
      expect(out).toMatch(/status: (NOERROR|NXDOMAIN|REFUSED)/);
      expect(out).toContain(`;; From ${A4}@53(UDP)`);
      const u = await udp(env);
      expect(u.sessionsCreated - before.sessionsCreated).toBe(1);
      // The name was read once, by the forced-DNS check: the session was not held for it.
      expect(u.sessionsHeld).toBe(before.sessionsHeld);
      expect(u.dnsQueriesForwarded).toBe(before.dnsQueriesForwarded);
    });
  });
}
