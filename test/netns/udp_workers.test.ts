// End-to-end: udp.workers 2, two data-path workers whose listeners share each address and
// port through SO_REUSEPORT (docs/udp_workers.md), in the three-namespace lab.
//
//   client ns ──veth── router ns (relay: 2 workers; nft tproxy) ──veth── server ns
//   198.18.0.2          r0 198.18.0.1 | r1 198.18.1.1                    198.18.1.2 echo
//
// What must hold: many client ports all get every reply from the address they sent to,
// whichever worker the kernel picked; each flow lives in exactly one worker, which counted
// all its datagrams; both workers bind reply sockets to the same original destination
// without colliding; the control socket lists both workers' sessions; a reload reaches
// both and keeps their sessions; a stop ends both.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { LAB } from "../lab/netns.ts";
import { RELAY_BIN, RELAY_MAIN } from "../lab/relay_process.ts";
import { flowRecords, labSkipReason, RelayLab } from "./harness.ts";

const S4 = LAB.server4;
const S6 = `[${LAB.server6}]`;
const FLOWS = 64;
const PACKETS = 8;

/** The flow log: every worker's ended flows, written by the main thread. */
const FLOW_DIR = mkdtempSync(join(tmpdir(), "relay-workers-"));
const FLOW_LOG = join(FLOW_DIR, "flows.log");

const CONFIG = {
  listeners: [
    { name: "udp4", address: "127.0.0.1", port: 12345 },
    { name: "udp6", address: "::1", port: 12345 },
    // Listener port = original port: replies leave the listener with IP_PKTINFO.
    { name: "echo4", address: "127.0.0.1", port: 7007 },
  ],
  intercept: [
    { listener: "udp4", ports: [7001] },
    { listener: "udp6", ports: [7001] },
    { listener: "echo4", ports: [7007] },
  ],
  // Nothing expires while the test reads the sessions, however slow the machine.
  udp: { workers: 2, sessionsMax: 2048, idleTimeoutMs: 600_000, idleTimeoutMsByPort: {} },
  flowLog: { path: FLOW_LOG },
};

/** Sessions of `target`, keyed by client endpoint: each must be in one worker only. */
function byClient(sessions: any[], target: string): Map<string, any> {
  const out = new Map<string, any>();
  for (const s of sessions.filter((x) => x.target === target)) {
    expect(out.has(s.client)).toBe(false); // no flow in two workers
    out.set(s.client, s);
  }
  return out;
}

const skip = labSkipReason();
if (!skip) {
  describe("udp.workers 2: flows spread over two SO_REUSEPORT workers", () => {
    let env: RelayLab;
    /** Sessions open after the reload's probe: all of them end at the stop. */
    let sessionsAtEnd = 0;

    /** UDP sockets in the router namespace whose local endpoint is `local`. */
    const socketsOn = (local: string) =>
      env.lab
        .exec(env.lab.router, ["ss", "-Huan", "src", local])
        .stdout.trim()
        .split("\n")
        .filter((l) => l.trim() !== "").length;

    beforeAll(async () => {
      env = new RelayLab();
      const extra = LAB.serverExtra4.map((a) => `${a}:7001`);
      env.spawnEcho("--stamp", `${S4}:7001`, `${S4}:7007`, `${S6}:7001`, ...extra);
      await env.startRelay(CONFIG);
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
      rmSync(FLOW_DIR, { recursive: true, force: true });
    });

    test("each listener address and port is bound once per worker (one reuseport group)", () => {
      expect(socketsOn("127.0.0.1:12345")).toBe(2);
      expect(socketsOn("[::1]:12345")).toBe(2);
      expect(socketsOn("127.0.0.1:7007")).toBe(2);
      expect(env.relay!.stderr).toContain("udp workers 2,");
    });

    for (const [family, target] of [
      ["IPv4", `${S4}:7001`],
      ["IPv6", `${S6}:7001`],
      ["IPv4 IP_PKTINFO", `${S4}:7007`],
    ] as const) {
      test(`${FLOWS} ${family} client ports: replies from ${target}, one worker per flow`, async () => {
        const r = env.probe([target], { flows: FLOWS, packets: PACKETS, stamped: true });
        expect(r).toMatchObject({
          received: FLOWS * PACKETS,
          lost: 0,
          wrongSource: 0,
          wrongFlow: 0,
        });
        const m = await env.relay!.metrics();
        const sessions = byClient(m.sessions, target);
        expect(sessions.size).toBe(FLOWS);
        const perWorker = [0, 0];
        for (const s of sessions.values()) {
          // All of a flow's datagrams, both ways, were counted by its one worker.
          expect(s.packetsToTarget).toBe(PACKETS);
          expect(s.packetsToClient).toBe(PACKETS);
          perWorker[s.worker]++;
        }
        // 64 client ports on one worker: a chance of 2^-63 if the hash spreads at all.
        expect(perWorker[0]).toBeGreaterThan(0);
        expect(perWorker[1]).toBeGreaterThan(0);
      });
    }

    test("workers' counters add up; both bind a reply socket to one destination", async () => {
      const m = await env.relay!.metrics();
      const flows = 3 * FLOWS;
      expect(m.udp.sessionsActive).toBe(flows);
      expect(
        m.workers.map((w: any) => w.sessionsActive).reduce((a: number, b: number) => a + b),
      ).toBe(flows);
      // Each worker's datagrams from clients are exactly those of its own sessions.
      m.workers.forEach((w: any, i: number) => {
        const mine = m.sessions.filter((s: any) => s.worker === i);
        expect(w.sessionsActive).toBe(mine.length);
        expect(w.packetsFromClients).toBe(mine.length * PACKETS);
      });
      expect(m.udp.packetsFromClients).toBe(flows * PACKETS);
      expect(m.udp.sessionsMax).toBe(2048); // 1024 per worker
      // Both workers serve clients of S4:7001 (above): each holds a reply socket on it,
      // beside the other's (SO_REUSEADDR), and the echo server's own socket elsewhere.
      expect(socketsOn(`${S4}:7001`)).toBe(2);
    });

    test("one client endpoint, four destinations: one worker, one upstream port", async () => {
      // The reuseport hash takes the client's address and port and the listener's, not
      // the original destination: every flow of one client socket meets the same worker,
      // whose endpoint-independent mapping gives them one upstream socket.
      const servers = [S4, ...LAB.serverExtra4];
      const targets = servers.map((a) => `("${a}", 7001)`).join(", ");
      const r = env.python(
        env.lab.client,
        `import socket
out = []
for _ in range(16):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.bind(("${LAB.client4}", 0))
    seen = set()
    for target in (${targets},):
        s.sendto(b"flow=0 seq=0 x", target)
        data, src = s.recvfrom(2000)
        assert src == target, (src, target)
        seen.add(data.split(b"|")[0].decode())
    out.append("%d=%s" % (s.getsockname()[1], ",".join(sorted(seen))))
    s.close()
print(" ".join(out))`,
      );
      const clients = r.stdout.trim().split(" ");
      expect(clients.length).toBe(16);
      const m = await env.relay!.metrics();
      const workers = new Set<number>();
      for (const line of clients) {
        const [port, seen] = line.split("=");
        expect(seen.split(",").length).toBe(1); // one relay port for all four servers
        // (Port 7001 only: the kernel may have given this port to an earlier probe's
        // socket, whose flow to 7007 is another session.)
        const mine = m.sessions.filter(
          (x: any) => x.client === `${LAB.client4}:${port}` && x.target.endsWith(":7001"),
        );
        expect(mine.length).toBe(servers.length);
        expect(new Set(mine.map((x: any) => x.worker)).size).toBe(1);
        workers.add(mine[0].worker);
      }
      expect(workers).toEqual(new Set([0, 1]));
    });

    test("the control socket's `sessions` lists both workers' sessions, sorted across them", () => {
      const r = env.lab.exec(env.lab.router, [
        RELAY_BIN,
        RELAY_MAIN,
        "sessions",
        "--target",
        `=${S6}:7001`,
        "--sort",
        "age",
        "--limit",
        "1000",
        "--json",
        "--control",
        env.controlPath,
      ]);
      const lines = r.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l))
        .filter((l) => l.transport === "udp");
      expect(lines.length).toBe(FLOWS);
      expect(new Set(lines.map((l) => l.worker))).toEqual(new Set([0, 1]));
      expect(new Set(lines.map((l) => l.client)).size).toBe(FLOWS);
      const ages = lines.map((l) => l.ageMs);
      expect(ages).toEqual([...ages].sort((a, b) => b - a));
    });

    test("a reload reaches both workers; their sessions stay where they were", async () => {
      const before = await env.relay!.metrics();
      await env.reload({ ...CONFIG, udp: { ...CONFIG.udp, idleTimeoutMs: 500_000 } });
      expect(env.relay!.stderr).toContain("udp.idleTimeoutMs 600000 -> 500000");
      const r = env.probe([`${S4}:7001`], { flows: 8, packets: 4, stamped: true });
      expect(r).toMatchObject({ received: 32, lost: 0, wrongSource: 0, wrongFlow: 0 });
      const after = await env.relay!.metrics();
      const old = byClient(before.sessions, `${S6}:7001`);
      const kept = byClient(after.sessions, `${S6}:7001`);
      expect(kept.size).toBe(FLOWS);
      for (const [client, s] of old) expect(kept.get(client)?.worker).toBe(s.worker);
      // Up to 8 new sessions: a probe port the kernel reused meets its earlier session.
      expect(after.udp.sessionsActive).toBeGreaterThan(before.udp.sessionsActive);
      expect(after.udp.sessionsActive).toBeLessThanOrEqual(before.udp.sessionsActive + 8);
      sessionsAtEnd = after.udp.sessionsActive;
    });

    test("a listener port held without SO_REUSEPORT: no worker starts, one error, exit 1", async () => {
      const port = 23456;
      env.spawn(env.lab.router, [
        "python3",
        "-c",
        "import socket, time\n" +
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" +
          `s.bind(("127.0.0.1", ${port}))\n` +
          "time.sleep(600)",
      ]);
      await env.lab.waitForUdpPort(env.lab.router, port);
      const path = join(dirname(env.controlPath), "held.json");
      writeFileSync(
        path,
        JSON.stringify({
          listeners: [{ name: "held", address: "127.0.0.1", port }],
          udp: { workers: 2 },
          metrics: { port: 0 },
          control: { socketPath: join(dirname(env.controlPath), "held.sock") },
        }),
      );
      const r = env.lab.exec(
        env.lab.router,
        [RELAY_BIN, RELAY_MAIN, "--config", path],
        undefined,
        true,
      );
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(
        `UDP worker 0 of 2: listener "held" (udp 127.0.0.1 port ${port}): bind(): EADDRINUSE`,
      );
      expect(r.stdout).not.toContain('"event":"ready"');
      expect(socketsOn(`127.0.0.1:${port}`)).toBe(1); // the holder's only
    }, 60_000);

    test("a stop ends both workers: one final report with every session", async () => {
      const relay = env.relay!;
      env.relay = null; // stopped here, not again in afterAll
      const { final, exitCode } = await relay.stop();
      expect(exitCode).toBe(0);
      expect(final.udp.sessionsActive).toBe(sessionsAtEnd);
      expect(final.sessions.length).toBe(sessionsAtEnd);
      expect(new Set(final.sessions.map((s: any) => s.worker))).toEqual(new Set([0, 1]));
      // Every session of both workers ended with one record in the one flow log.
      const records = flowRecords(FLOW_DIR, FLOW_LOG).filter((r) => r.protocol === "udp");
      const endpoint = (a: string, port: number) =>
        a.includes(":") ? `[${a}]:${port}` : `${a}:${port}`;
      const flows = new Set(
        records.map(
          (r) => `${endpoint(r.client, r.clientPort)} ${endpoint(r.target, r.targetPort)}`,
        ),
      );
      expect(records.length).toBe(sessionsAtEnd);
      expect(flows).toEqual(new Set(final.sessions.map((s: any) => `${s.client} ${s.target}`)));
      expect(socketsOn("127.0.0.1:12345")).toBe(0);
    });
  });
}

if (!skip) {
  // Source "client": each worker's upstream sockets are bound to its clients' own
  // endpoints, and the server's replies come back through the `socket transparent` rule
  // (src/rules/nft.ts), which finds the one connected socket of that 4-tuple: the worker
  // that owns the client endpoint, never the other.
  describe("udp.workers 2 with listeners of source client", () => {
    let env: RelayLab;

    beforeAll(async () => {
      env = new RelayLab();
      env.spawnEcho("--stamp", `${S4}:7001`, `${S6}:7001`);
      await env.startRelay({
        listeners: [
          { name: "cs4", address: "127.0.0.1", port: 12345, source: "client" },
          { name: "cs6", address: "::1", port: 12345, source: "client" },
        ],
        intercept: [
          { listener: "cs4", ports: [7001] },
          { listener: "cs6", ports: [7001] },
        ],
        udp: { workers: 2, idleTimeoutMs: 600_000, idleTimeoutMsByPort: {} },
      });
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    for (const [target, client] of [
      [`${S4}:7001`, LAB.client4],
      [`${S6}:7001`, `[${LAB.client6}]`],
    ] as const) {
      test(`${FLOWS} client ports to ${target}: the server sees the client, replies return`, async () => {
        const r = env.probe([target], { flows: FLOWS, packets: PACKETS, stamped: true });
        expect(r).toMatchObject({
          received: FLOWS * PACKETS,
          lost: 0,
          wrongSource: 0,
          wrongFlow: 0,
        });
        expect(r.serverSaw).toEqual([client]);
        const m = await env.relay!.metrics();
        const sessions = byClient(m.sessions, target);
        expect(sessions.size).toBe(FLOWS);
        const workers = new Set<number>();
        for (const s of sessions.values()) {
          expect(s.packetsToClient).toBe(PACKETS);
          workers.add(s.worker);
        }
        expect(workers).toEqual(new Set([0, 1]));
      });
    }
  });
}

if (!skip) {
  describe("udp.workers 2: one worker's failure", () => {
    let env: RelayLab;

    afterAll(async () => {
      await env?.close();
    });

    test("a data-path exception in one worker ends the process: final line, exit 70", async () => {
      env = new RelayLab();
      env.spawnEcho(`${S4}:7001`);
      // Each worker is a thread of its own: the fault counts each one's datagrams.
      await env.startRelay(
        {
          listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
          intercept: [{ listener: "udp4", ports: [7001] }],
          udp: { workers: 2 },
        },
        ["env", "RELAY_TEST_FAULTS=data_path_throw_after=2"],
      );
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      // Three datagrams from one client socket: one worker reads them all.
      env.lab.exec(env.lab.client, [
        "python3",
        join(import.meta.dir, "security_peers.py"),
        "send",
        S4,
        "7001",
        "3",
      ]);
      const final = await env.relay!.waitFor((l) => l.event === "final", 10_000);
      expect(final.fatal).toMatch(/^UDP worker [01]: .*injected data-path failure/);
      expect(typeof final.udp.packetsFromClients).toBe("number"); // that worker's counters
      expect(await env.relay!.proc.exited).toBe(70);
      expect(env.relay!.stderr).toMatch(/\[relay\] fatal: UDP worker [01]: /);
      env.relay = null; // already gone: close() must not expect a clean stop
    }, 60_000);
  });
}
