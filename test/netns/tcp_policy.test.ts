// The policy on the TCP path, end to end: each accepted connection is decided by the
// rules (a rule on names waits for the ClientHello, whatever the port) and carried out:
// forward to chosen servers by SNI, reject (RST) and drop (closed, nothing upstream),
// direct with its own source address, interface and mark, socks5 through Dante (curl
// and iperf3) and through a proxy that wants a password, broken SOCKS5 servers (each
// failure counted by reason, the client reset, no descriptor leaked), the bound on
// handshakes in progress, a forward outbound failing over from a dead target, a
// ClientHello that never completes, and a reload of the rules. Whatever the outbound,
// the client talks to its original destination's address: transparency is the point.
//
//   client ns ── router ns (relay; wan2 = a second address on r1) ── server ns:
//     TLS servers E3:8443 and E4:8444, echo E3:9444 (forward targets), tcp_peers
//     (8001-8003 8106-8107 8201), http.server 8080, iperf3 5201, danted :1080, broken
//     SOCKS5 servers 1081-1083 and 1085, a password-checking proxy 1086 (1084: nothing)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { danteUnavailableReason, startDante } from "../lab/dante.ts";
import { JsonLinesProcess } from "../lab/json_lines.ts";
import { LAB, labUnavailableReason } from "../lab/netns.ts";
import { startPausedHello } from "../lab/paused_hello.ts";
import { waitFor } from "../lab/wait_for.ts";
import { BUN, labSkipReason, RelayLab, ROOT } from "./harness.ts";

const TLS_PEERS = join(ROOT, "test/lab/tls_peers.py");
const TCP_PEERS = join(import.meta.dir, "tcp_peers.py");
const SOCKS_FAKES = join(import.meta.dir, "socks_fakes.py");
const CLIENT = join(import.meta.dir, "tcp_client.py");

const [E3, E4, E5] = LAB.serverExtra4;
const E5v6 = LAB.serverExtra6[2];
const PORT = {
  tls: 443,
  tlsA: 8443,
  tlsB: 8444,
  reject: 8001,
  drop: 8002,
  direct: 8003,
  http: 8080,
  iperf: 5201,
  failover: 8200,
  failoverLive: 8201,
  failoverDead: 8299,
  socks: 1080,
  socksRefuse: 1081,
  socksClose: 1082,
  socksGarbage: 1083,
  socksDown: 1084,
  // Original destination ports that select a broken SOCKS5 server.
  viaRefuse: 8101,
  viaClose: 8102,
  viaGarbage: 8103,
  viaDown: 8104,
  viaSilent: 8105,
  socksSilent: 1085,
  viaAuth: 8106,
  viaBadAuth: 8107,
  viaOne: 8108,
  // A name rule, then a fallback to an echo server, on a port never sniffed by default.
  named: 9443,
  echo: 9444,
  socksAuth: 1086,
} as const;
const WAN2 = { mark: 0x2222, addr4: "198.18.1.200", addr6: "2001:2:0:2::200" };
const FAILURES_MAX = 2;
const SOCKS_TIMEOUT_MS = 600;
const SNIFF_TIMEOUT_MS = 500;

const RELAY_CONFIG = {
  listeners: [
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12360 },
    { name: "tcp6", protocol: "tcp", address: "::1", port: 12360 },
  ],
  intercept: ["tcp4", "tcp6"].map((listener) => ({
    listener,
    ports: [
      ...[PORT.tls, PORT.reject, PORT.drop, PORT.direct, PORT.http, PORT.iperf],
      ...[PORT.failover, "8101-8108", PORT.named],
    ],
  })),
  // No sniff ports: the rules on names alone make the relay read the ClientHello.
  tcp: { sniffPorts: [], connectTimeoutMs: 2000, sniffTimeoutMs: SNIFF_TIMEOUT_MS },
  outbounds: [
    {
      name: "wan2",
      type: "direct",
      bindAddress4: WAN2.addr4,
      bindAddress6: WAN2.addr6,
      interface: LAB.routerServerIf,
      mark: WAN2.mark,
    },
    { name: "server-a", type: "forward", targets: [`${E3}:${PORT.tlsA}`] },
    { name: "server-b", type: "forward", targets: [`${E4}:${PORT.tlsB}`] },
    { name: "echo", type: "forward", targets: [`${E3}:${PORT.echo}`] },
    {
      name: "failover",
      type: "forward",
      targets: [`${E3}:${PORT.failoverDead}`, `${E4}:${PORT.failoverLive}`],
      healthCheck: { failuresMax: FAILURES_MAX, retryIntervalMs: 600_000 },
    },
    { name: "dante", type: "socks5", server: `${LAB.server4}:${PORT.socks}` },
    // One handshake at a time to a server that never answers: the bound is reached.
    {
      name: "socks-one",
      type: "socks5",
      server: `${LAB.server4}:${PORT.socksSilent}`,
      associationsMax: 1,
      connectTimeoutMs: 3000,
    },
    ...(
      [
        ["socks-auth", "s3cret"],
        ["socks-badauth", "wrong"],
      ] as const
    ).map(([name, password]) => ({
      name,
      type: "socks5",
      server: `${LAB.server4}:${PORT.socksAuth}`,
      username: "relay",
      password,
    })),
    { name: "dante6", type: "socks5", server: `[${LAB.server6}]:${PORT.socks}` },
    ...(
      [
        ["socks-refuse", PORT.socksRefuse],
        ["socks-close", PORT.socksClose],
        ["socks-garbage", PORT.socksGarbage],
        ["socks-down", PORT.socksDown],
        ["socks-silent", PORT.socksSilent],
      ] as const
    ).map(([name, port]) => ({
      name,
      type: "socks5",
      server: `${LAB.server4}:${port}`,
      connectTimeoutMs: SOCKS_TIMEOUT_MS,
    })),
  ],
  rules: [
    { name: "sni-a", ports: [PORT.tls], names: { exact: ["a.relay.test"] }, action: "server-a" },
    { name: "sni-b", ports: [PORT.tls], names: { suffix: ["b.relay.test"] }, action: "server-b" },
    { name: "named", ports: [PORT.named], names: { exact: ["a.relay.test"] }, action: "server-a" },
    { name: "fallback", ports: [PORT.named], action: "echo" },
    { name: "no-8001", ports: [PORT.reject], action: "reject" },
    { name: "quiet-8002", ports: [PORT.drop], action: "drop" },
    { name: "by-wan2", ports: [PORT.direct], action: "wan2" },
    {
      name: "via-dante6",
      ports: [PORT.http, PORT.iperf],
      sources: ["2001:2::/48"],
      action: "dante6",
    },
    { name: "via-dante", ports: [PORT.http, PORT.iperf], action: "dante" },
    { name: "failover", ports: [PORT.failover], action: "failover" },
    { name: "refuse", ports: [PORT.viaRefuse], action: "socks-refuse" },
    { name: "close", ports: [PORT.viaClose], action: "socks-close" },
    { name: "garbage", ports: [PORT.viaGarbage], action: "socks-garbage" },
    { name: "down", ports: [PORT.viaDown], action: "socks-down" },
    { name: "silent", ports: [PORT.viaSilent], action: "socks-silent" },
    { name: "auth", ports: [PORT.viaAuth], action: "socks-auth" },
    { name: "badauth", ports: [PORT.viaBadAuth], action: "socks-badauth" },
    { name: "one", ports: [PORT.viaOne], action: "socks-one" },
  ],
};

const FAMILIES = [
  { name: "IPv4", client: LAB.client4, target: E5, url: E5, extra: E3, dante: LAB.server4 },
  {
    name: "IPv6",
    client: LAB.client6,
    target: E5v6,
    url: `[${E5v6}]`,
    extra: LAB.serverExtra6[0],
    dante: LAB.server6,
  },
] as const;

const unavailable = labUnavailableReason() ?? danteUnavailableReason();
const skip = labSkipReason(unavailable);
if (!skip) {
  describe("TCP policy: rules decide, outbounds carry", () => {
    let env: RelayLab;
    const dir = mkdtempSync(join(tmpdir(), "relay-tcp-policy-"));
    const flowLog = join(dir, "flows.log");
    let peers: JsonLinesProcess;
    let fakes: JsonLinesProcess;

    const client = (name: string, host: string, port: number, arg?: string | number) => {
      const argv = ["python3", CLIENT, name, host, `${port}`];
      if (arg !== undefined) argv.push(`${arg}`);
      const r = env.lab.exec(env.lab.client, argv);
      return JSON.parse(r.stdout.trim().split("\n").pop()!);
    };
    const tcp = async () => (await env.relay!.metrics()).tcp;
    const settle = () =>
      waitFor(tcp, (m) => m.connectionsActive === 0, {
        what: "every connection through the relay to close",
        timeoutMs: 15_000,
      });
    const fdCount = () => readdirSync(`/proc/${env.relay!.proc.pid}/fd`).length;
    /** Descriptors beyond the engine's pooled pipes (two each), once all is closed. */
    const fdsWithoutPool = async () => {
      const m = await settle();
      return fdCount() - 2 * m.pipesPooled;
    };
    const flowRecords = () =>
      spawnSync(BUN, [join(ROOT, "src/main.ts"), "log", "--file", flowLog, "--json"], {
        encoding: "utf8",
      })
        .stdout.split("\n")
        .filter((l) => l !== "")
        .map((l) => JSON.parse(l));
    /** Established TCP connections in `ns` matching the ss filter. */
    const established = (ns: string, filter: string) =>
      env.lab
        .exec(ns, ["sh", "-c", `ss -Htn state established '${filter}'`], undefined, true)
        .stdout.trim();

    beforeAll(async () => {
      if (unavailable) throw new Error(`TCP policy lab unavailable: ${unavailable}`);
      env = new RelayLab();
      const lab = env.lab;
      const cert = spawnSync(
        "openssl",
        [
          ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
          ...["-nodes", "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem")],
          ...["-subj", "/CN=relay.test", "-days", "2"],
        ],
        { encoding: "utf8" },
      );
      if (cert.status !== 0) throw new Error(`openssl: ${cert.stderr}`);
      for (const [address, port] of [
        [E3, PORT.tlsA],
        [E4, PORT.tlsB],
      ] as const) {
        env.spawn(lab.server, [
          ...["python3", TLS_PEERS, "serve", address, `${port}`],
          ...[join(dir, "cert.pem"), join(dir, "key.pem")],
        ]);
      }
      env.spawn(lab.server, ["python3", TLS_PEERS, "echo", E3, `${PORT.echo}`]);
      peers = new JsonLinesProcess(
        "tcp_peers",
        env.spawn(lab.server, [
          ...["python3", TCP_PEERS],
          ...[`${PORT.reject}:peer`, `${PORT.drop}:peer`, `${PORT.direct}:peer`],
          ...[`${PORT.failoverLive}:peer`, `${PORT.viaAuth}:peer`, `${PORT.viaBadAuth}:peer`],
        ]),
      );
      fakes = new JsonLinesProcess(
        "socks_fakes",
        env.spawn(lab.server, [
          ...["python3", SOCKS_FAKES],
          ...[`${PORT.socksRefuse}:refuse`, `${PORT.socksClose}:close`],
          ...[`${PORT.socksGarbage}:garbage`, `${PORT.socksSilent}:silent`],
          `${PORT.socksAuth}:auth`,
        ]),
      );
      writeFileSync(join(dir, "blob"), Buffer.alloc(1 << 20, 7));
      env.spawn(lab.server, [
        ...["python3", "-m", "http.server", `${PORT.http}`, "--bind", "::"],
        ...["--directory", dir],
      ]);
      env.spawn(lab.server, ["iperf3", "-s", "-p", `${PORT.iperf}`]);
      const dante = await startDante(lab, lab.server, dir, {
        listen: [LAB.server4, LAB.server6],
        port: PORT.socks,
        externalInterface: LAB.serverIf,
        clients: ["198.18.0.0/15", "2001:2::/48"],
        logPath: join(dir, "danted.log"),
      });
      env.track(dante.proc);
      await peers.waitFor((l) => l.event === "ready", 10_000);
      await fakes.waitFor((l) => l.event === "ready", 10_000);
      await waitFor(
        () => lab.exec(lab.server, ["ss", "-Htln"], undefined, true).stdout,
        (out) =>
          [PORT.tlsA, PORT.tlsB, PORT.echo, PORT.http, PORT.iperf].every((p) =>
            new RegExp(`:${p}\\b`).test(out),
          ),
        { what: "the TLS, HTTP and iperf3 servers listening", timeoutMs: 10_000 },
      );
      // The direct outbound "wan2" leaves from a second address of the router.
      lab.exec(lab.router, ["ip", "addr", "add", `${WAN2.addr4}/24`, "dev", LAB.routerServerIf]);
      lab.exec(lab.router, [
        ...["ip", "-6", "addr", "add", `${WAN2.addr6}/64`, "dev", LAB.routerServerIf, "nodad"],
      ]);
      // Counts the relay's packets that carry wan2's mark (SO_MARK is not on the wire).
      lab.exec(
        lab.router,
        ["nft", "-f", "-"],
        [
          "table inet markcheck {",
          "  chain out {",
          "    type filter hook output priority 0; policy accept;",
          `    meta mark ${WAN2.mark} tcp dport ${PORT.direct} counter`,
          "  }",
          "}",
        ].join("\n") + "\n",
      );
      await env.startRelay({ ...RELAY_CONFIG, flowLog: { path: flowLog } });
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    for (const f of FAMILIES) {
      test(`${f.name}: two SNIs to one destination end at two servers; the client sees the destination`, async () => {
        const before = await tcp();
        const seen: Record<string, { body: string; servedBy: string; remote: string }> = {};
        for (const name of ["a.relay.test", "www.b.relay.test"]) {
          const out = env.lab.exec(env.lab.client, [
            ...["curl", "-sS", "-k", "--max-time", "10", "-D", "-"],
            ...["-w", "remote=%{remote_ip}\n"],
            ...["--resolve", `${name}:${PORT.tls}:${f.target}`, `https://${name}/`],
          ]).stdout;
          seen[name] = {
            body: out.match(/^sni=.*$/m)?.[0] ?? out,
            servedBy: out.match(/^X-Served-By: (\S+)/im)?.[1] ?? "?",
            remote: out.match(/^remote=(\S+)$/m)?.[1] ?? "?",
          };
        }
        // Nothing listens on the original destination: only the forward got an answer.
        expect(seen["a.relay.test"]).toEqual({
          body: "sni=a.relay.test",
          servedBy: E3,
          remote: f.target,
        });
        expect(seen["www.b.relay.test"]).toEqual({
          body: "sni=www.b.relay.test",
          servedBy: E4,
          remote: f.target,
        });
        const after = await settle();
        expect(after.accepted - before.accepted).toBe(2);
        const records = await waitFor(
          flowRecords,
          (rs) =>
            rs.filter((r) => r.client.startsWith(f.client) && r.targetPort === 443).length >= 2,
          { what: "two flow records of the HTTPS connections", timeoutMs: 10_000 },
        );
        const mine = records.filter((r) => r.client.startsWith(f.client) && r.targetPort === 443);
        expect(mine.map((r) => [r.name, r.rule, r.outbound]).sort()).toEqual([
          ["a.relay.test", "sni-a", "server-a"],
          ["www.b.relay.test", "sni-b", "server-b"],
        ]);
      });

      test(`${f.name}: reject resets the client at once; drop closes it; nothing reaches the server`, async () => {
        const before = await tcp();
        const rejected = client("quiet", f.extra, PORT.reject);
        expect(rejected).toMatchObject({ error: "ConnectionResetError", received: 0 });
        const dropped = client("quiet", f.extra, PORT.drop);
        expect(dropped).toMatchObject({ error: null, received: 0 });
        const after = await settle();
        expect(after.rejectedByRule - before.rejectedByRule).toBe(1);
        expect(after.droppedByRule - before.droppedByRule).toBe(1);
        expect(after.connected).toBe(before.connected);
        // tcp_peers logs every connection it served: none on these ports.
        expect(peers.lines.filter((l) => l.port === PORT.reject || l.port === PORT.drop)).toEqual(
          [],
        );
      });

      test(`${f.name}: a direct outbound's source address, interface and mark`, async () => {
        const before = await tcp();
        const r = client("peer", f.extra, PORT.direct, 10_000);
        expect(r).toMatchObject({
          peer: f.name === "IPv4" ? WAN2.addr4 : WAN2.addr6,
          local: f.extra,
          echoOk: true,
          bye: "BYE 10000",
        });
        const listed = env.lab.exec(env.lab.router, ["nft", "list", "table", "inet", "markcheck"]);
        expect(Number(listed.stdout.match(/packets (\d+)/)?.[1] ?? 0)).toBeGreaterThan(0);
        const after = await settle();
        expect(after.closed - before.closed).toBe(1);
      });

      test(`${f.name}: through Dante: curl and iperf3; the client sees the destination; nothing left open`, async () => {
        const before = await tcp();
        const out = env.lab.exec(env.lab.client, [
          "sh",
          "-c",
          `curl -sS --max-time 10 -w '\\nremote=%{remote_ip}\\n' ` +
            `http://${f.url}:${PORT.http}/blob | tail -c 64`,
        ]).stdout;
        expect(out).toContain(`remote=${f.target}`);
        const size = env.lab.exec(env.lab.client, [
          "sh",
          "-c",
          `curl -sS --max-time 10 http://${f.url}:${PORT.http}/blob | wc -c`,
        ]).stdout;
        expect(Number(size.trim())).toBe(1 << 20);
        const report = JSON.parse(
          env.lab.exec(env.lab.client, [
            ...["iperf3", "-c", f.target, "-p", `${PORT.iperf}`, "-t", "1", "-J"],
          ]).stdout,
        );
        expect(report.end.sum_received.bytes).toBeGreaterThan(1 << 20);
        const after = await settle();
        // Two curls, iperf3's control and data connections: every one through Dante.
        expect(after.socks5Connected - before.socks5Connected).toBeGreaterThanOrEqual(4);
        expect(after.socks5Connected - before.socks5Connected).toBe(
          after.accepted - before.accepted,
        );
        await waitFor(
          () =>
            established(env.lab.router, `dport = :${PORT.socks}`) +
            established(env.lab.server, `( dport = :${PORT.http} or dport = :${PORT.iperf} )`),
          (text) => text === "",
          { what: "no connection left to Dante nor from it to the servers", timeoutMs: 10_000 },
        );
      });

      test(`${f.name}: SOCKS5 with username/password; what the server sends first comes first`, async () => {
        const before = await tcp();
        const r = client("lines", f.extra, PORT.viaAuth, 2);
        // The proxy's early line, then the destination's: in order, nothing lost.
        expect(r.error).toBeNull();
        expect(r.lines[0]).toBe("EARLY");
        expect(r.lines[1]).toMatch(new RegExp(`^PEER \\S+ \\d+ ${f.extra}$`));
        const bad = client("fails", f.extra, PORT.viaBadAuth);
        expect(bad.error).toBe("ConnectionResetError");
        const after = await settle();
        expect(after.socks5Connected - before.socks5Connected).toBe(1);
        expect(after.socks5AuthFailed - before.socks5AuthFailed).toBe(1);
        expect(peers.lines.filter((l) => l.port === PORT.viaBadAuth)).toEqual([]);
      });

      test(`${f.name}: broken SOCKS5 servers: each failure counted, the client reset, nothing leaked`, async () => {
        const fdsBefore = await fdsWithoutPool();
        const before = await tcp();
        const ports = [PORT.viaRefuse, PORT.viaClose, PORT.viaGarbage, PORT.viaDown];
        for (const port of [...ports, PORT.viaSilent]) {
          const r = client("fails", f.extra, port);
          expect(r.error).toBe("ConnectionResetError");
        }
        const after = await settle();
        expect({
          replyErrors: after.socks5ReplyErrors - before.socks5ReplyErrors,
          closed: after.socks5Closed - before.socks5Closed,
          protocolErrors: after.socks5ProtocolErrors - before.socks5ProtocolErrors,
          refused: after.socks5Refused - before.socks5Refused,
          timeouts: after.socks5Timeouts - before.socks5Timeouts,
          connected: after.socks5Connected - before.socks5Connected,
        }).toEqual({
          replyErrors: 1,
          closed: 1,
          protocolErrors: 1,
          refused: 1,
          timeouts: 1,
          connected: 0,
        });
        // Other connections are unaffected: Dante still carries one.
        const size = env.lab.exec(env.lab.client, [
          "sh",
          "-c",
          `curl -sS --max-time 10 http://${f.url}:${PORT.http}/blob | wc -c`,
        ]).stdout;
        expect(Number(size.trim())).toBe(1 << 20);
        expect(await fdsWithoutPool()).toBe(fdsBefore);
      });
    }

    test("a ClientHello that never completes: decided without the name after the timeout, bytes intact", async () => {
      const before = await tcp();
      const hello = await startPausedHello(env.lab, "a.relay.test", E5, PORT.named, 20);
      env.track(hello.proc);
      // Held while the name is awaited (no upstream yet); then decided by the next rule.
      const timedOut = await waitFor(tcp, (t) => t.sniffIncomplete > before.sniffIncomplete, {
        what: "the sniff timeout",
        timeoutMs: 10_000,
      });
      expect(timedOut.connectionsActive).toBe(1);
      const view = (timedOut.connections as any[]).find((c) => c.target === `${E5}:${PORT.named}`);
      expect(view).toMatchObject({ name: null, rule: "fallback", outbound: "echo" });
      // The echo server got the whole hello, the 20 bytes held first included.
      expect((await hello.finish()).equal).toBe(true);
      await settle();
    });

    test("socks5: past associationsMax handshakes in progress, the next client is reset", async () => {
      const before = await tcp();
      // The first waits in its handshake (the server never answers) until connectTimeoutMs.
      const first = env.spawn(env.lab.client, ["python3", CLIENT, "fails", E3, `${PORT.viaOne}`]);
      await waitFor(tcp, (m) => m.accepted > before.accepted, {
        what: "the first connection accepted",
        timeoutMs: 10_000,
      });
      expect(client("fails", E3, PORT.viaOne).error).toBe("ConnectionResetError");
      const busy = await tcp();
      expect(busy.socks5Busy - before.socks5Busy).toBe(1);
      expect(busy.socks5Timeouts).toBe(before.socks5Timeouts);
      await first.exited;
      const after = await settle();
      expect(after.socks5Timeouts - before.socks5Timeouts).toBe(1);
    });

    test("forward failover: the dead target is marked down after failuresMax failures", async () => {
      const before = await tcp();
      const results: string[] = [];
      // Sequential connections from changing client ports: some hash to the dead target
      // until it is marked down, then every one goes to the live target.
      for (let i = 0; i < 24; i++) {
        // tcp_peers: "PEER <who it saw> <port> <its own address>"; a reset: no line.
        const r = client("line", E5, PORT.failover);
        results.push(r.line ? `ok:${r.line.split(" ")[3]}` : "failed");
        await settle();
      }
      const after = await tcp();
      expect(after.forwardTargetsMarkedDown - before.forwardTargetsMarkedDown).toBe(1);
      const failures = after.forwardTargetFailures - before.forwardTargetFailures;
      expect(failures).toBeGreaterThanOrEqual(FAILURES_MAX);
      expect(results.filter((r) => r === "failed")).toHaveLength(failures);
      // Once marked down, every connection went to the live target.
      const lastFailure = results.lastIndexOf("failed");
      expect(results.slice(lastFailure + 1).length).toBeGreaterThan(0);
      for (const r of results.slice(lastFailure + 1)) expect(r).toBe(`ok:${E4}`);
    });

    test("the relay's log names each SOCKS5 failure", () => {
      const log = env.relay!.stderr;
      expect(log).toContain('socks5 outbound "socks-refuse": the server replied');
      expect(log).toContain('socks5 outbound "socks-down": connect: ECONNREFUSED');
    });

    test("reload: new connections follow the new rules, an open one keeps its decision", async () => {
      // A connection held open through the failover rule: its view names rule and outbound.
      const held = env.spawn(env.lab.client, [
        "python3",
        "-c",
        `import socket,time\ns=socket.create_connection(("${E5}",${PORT.failover}))\n` +
          "print(s.recv(100).decode().strip(), flush=True)\ntime.sleep(60)\n",
      ]);
      const view = async () =>
        ((await tcp()).connections as any[]).find((c) => c.target === `${E5}:${PORT.failover}`);
      expect(
        await waitFor(view, (c) => c !== undefined, {
          what: "the held connection",
          timeoutMs: 10_000,
        }),
      ).toMatchObject({ rule: "failover", outbound: "failover", name: null });
      // The new config: port 8001 is dropped instead of rejected, the failover rule renamed.
      const cmdline = readFileSync(`/proc/${env.relay!.proc.pid}/cmdline`, "utf8").split("\0");
      const path = cmdline[cmdline.indexOf("--config") + 1];
      const raw = JSON.parse(readFileSync(path, "utf8"));
      for (const r of raw.rules) {
        if (r.name === "no-8001") r.action = "drop";
        if (r.name === "failover") r.name = "failover-renamed";
      }
      writeFileSync(path, JSON.stringify(raw));
      const before = await tcp();
      env.relay!.proc.kill("SIGHUP");
      await waitFor(
        async () => (await env.relay!.metrics()).config.reloads.applied,
        (n) => n >= 1,
        { what: "the reload applied", timeoutMs: 10_000 },
      );
      expect(client("quiet", E3, PORT.reject), env.relay!.stderr).toMatchObject({
        error: null,
        received: 0,
      });
      const after = await tcp();
      expect(after.droppedByRule - before.droppedByRule).toBe(1);
      expect(after.rejectedByRule).toBe(before.rejectedByRule);
      // The open connection keeps the rule it was decided by.
      expect(await view()).toMatchObject({ rule: "failover", outbound: "failover" });
      held.kill();
      await settle();
    });
  });
}
