// End-to-end TCP: real clients and servers through kernel TPROXY and REDIRECT in three
// namespaces (see udp_relay.test.ts for the picture). What we assert is what a direct
// connection would do: bytes intact, half-closes and resets passed on, a slow reader
// stalling its writer; plus what only a relay has: the server sees the relay (default)
// or the client (source "client"), REDIRECT recovers the original destination, and
// faults (refused, timed out, vanished, limit, idle, shutdown) are each counted and
// leak no descriptor.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const PEERS = join(import.meta.dir, "tcp_peers.py");
const CLIENT = join(import.meta.dir, "tcp_client.py");

const PORT = {
  peer: 8001,
  reset: 8002,
  halfclose: 8003,
  slow: 8004,
  firehose: 8005,
  late: 8006,
  http: 8080,
  iperf: 5201,
  dropped: 8998, // the server drops SYNs: connect timeout
  closed: 8999, // nothing listens: connect refused
  clientSource: 8101, // a "peer" behind listeners with source "client"
  redirect: 9001, // a "peer" behind REDIRECT listeners
  wildcard: 8009, // a "peer" behind a TPROXY listener on 0.0.0.0 with the same port
} as const;

const TCP = {
  connectTimeoutMs: 1000,
  idleTimeoutMs: 3000,
  connectionsMax: 16,
  shutdownGraceMs: 2500,
  bufferBytesMax: 65536,
};
const RELAY_CONFIG = {
  listeners: [
    { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
    { name: "tcp6", protocol: "tcp", address: "::1", port: 12346 },
    { name: "csrc4", protocol: "tcp", address: "127.0.0.1", port: 12348, source: "client" },
    { name: "csrc6", protocol: "tcp", address: "::1", port: 12348, source: "client" },
    { name: "redir4", protocol: "tcp", address: "0.0.0.0", port: 12347, mode: "redirect" },
    { name: "redir6", protocol: "tcp", address: "::", port: 12347, mode: "redirect" },
    { name: "wild4", protocol: "tcp", address: "0.0.0.0", port: 8009 },
  ],
  intercept: [
    ...["tcp4", "tcp6"].map((listener) => ({
      listener,
      ports: [PORT.iperf, "8001-8006", PORT.http, PORT.dropped, PORT.closed],
    })),
    { listener: "csrc4", ports: [PORT.clientSource] },
    { listener: "csrc6", ports: [PORT.clientSource] },
    { listener: "redir4", ports: [PORT.redirect] },
    { listener: "redir6", ports: [PORT.redirect] },
    { listener: "wild4", ports: [PORT.wildcard] },
  ],
  tcp: TCP,
};

const FAMILIES = [
  {
    name: "IPv4",
    server: LAB.server4,
    extra: LAB.serverExtra4[1],
    router: LAB.routerServer4,
    client: LAB.client4,
    url: LAB.server4,
  },
  {
    name: "IPv6",
    server: LAB.server6,
    extra: LAB.serverExtra6[1],
    router: LAB.routerServer6,
    client: LAB.client6,
    url: `[${LAB.server6}]`,
  },
] as const;

const BLOB_BYTES = 4 << 20;

const skip = labSkipReason();
if (!skip) {
  describe("TCP relay through kernel TPROXY and REDIRECT", () => {
    let env: RelayLab;
    let blobDir: string;
    let blobSha = "";
    /** JSON lines the server-side peers printed. */
    const peerEvents: any[] = [];

    /** Runs one tcp_client.py case in the client namespace; returns its result line. */
    const client = (name: string, host: string, port: number, arg?: string | number) => {
      const argv = [
        "python3",
        CLIENT,
        name,
        host,
        `${port}`,
        ...(arg === undefined ? [] : [`${arg}`]),
      ];
      const r = env.lab.exec(env.lab.client, argv);
      return JSON.parse(r.stdout.trim().split("\n").pop()!);
    };
    const metrics = async () => (await env.relay!.metrics()).tcp;
    const relayPid = () => env.relay!.proc.pid;
    const fdCount = () => readdirSync(`/proc/${relayPid()}/fd`).length;
    /** Descriptors beyond the pooled pipes (two fds each, bounded by the engine's pool). */
    const fdsWithoutPool = async () => {
      await settle();
      const m = await metrics();
      return fdCount() - 2 * m.pipesPooled;
    };
    /** Waits (bounded) until the relay has no open connection; returns those metrics. */
    const settle = () =>
      waitFor(metrics, (m) => m.connectionsActive === 0, {
        what: "every connection through the relay to close",
        timeoutMs: 10_000,
      });
    /** Sockets listening on tcp `port` in `ns`, as `ss` lists them. */
    const listening = (ns: string, port: number) =>
      env.lab.exec(ns, ["ss", "-Htln", `sport = :${port}`], undefined, true).stdout.trim();
    const waitForTcpPort = (port: number) =>
      waitFor(
        () => listening(env.lab.server, port),
        (lines) => lines.length > 0,
        { what: `a listener on tcp port ${port} in the server namespace`, timeoutMs: 10_000 },
      );
    /** SYN retransmissions (TcpExtTCPSynRetrans) in the client and router namespaces. */
    const synRetransmits = () => {
      const count = (ns: string) => {
        const text = env.lab.exec(ns, ["nstat", "-asz", "TcpExtTCPSynRetrans"]).stdout;
        const match = /^TcpExtTCPSynRetrans\s+(\d+)/m.exec(text);
        if (!match) throw new Error(`nstat has no TcpExtTCPSynRetrans in ${ns}:\n${text}`);
        return Number(match[1]);
      };
      return { client: count(env.lab.client), router: count(env.lab.router) };
    };

    beforeAll(async () => {
      env = new RelayLab();
      const { lab } = env;
      blobDir = mkdtempSync(join(tmpdir(), "relay-tcp-blob-"));
      const blob = new Uint8Array(BLOB_BYTES);
      for (let i = 0; i < blob.length; i += 65536)
        crypto.getRandomValues(blob.subarray(i, i + 65536));
      writeFileSync(join(blobDir, "blob"), blob);
      blobSha = new Bun.CryptoHasher("sha256").update(blob).digest("hex");

      const peers = env.spawn(lab.server, [
        "python3",
        PEERS,
        `${PORT.peer}:peer`,
        `${PORT.clientSource}:peer`,
        `${PORT.redirect}:peer`,
        `${PORT.wildcard}:peer`,
        `${PORT.reset}:reset`,
        `${PORT.halfclose}:halfclose`,
        `${PORT.slow}:slow`,
        `${PORT.firehose}:firehose`,
        `${PORT.late}:late`,
      ]);
      (async () => {
        const decoder = new TextDecoder();
        let buffer = "";
        for await (const chunk of peers.stdout as ReadableStream<Uint8Array>) {
          buffer += decoder.decode(chunk);
          for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
            peerEvents.push(JSON.parse(buffer.slice(0, nl)));
            buffer = buffer.slice(nl + 1);
          }
        }
      })();
      env.spawn(lab.server, [
        "python3",
        "-m",
        "http.server",
        `${PORT.http}`,
        "--bind",
        "::",
        "--directory",
        blobDir,
      ]);
      env.spawn(lab.server, ["iperf3", "-s", "-p", `${PORT.iperf}`]);
      lab.exec(
        lab.server,
        ["nft", "-f", "-"],
        [
          "table inet lab {",
          "  chain input {",
          "    type filter hook input priority 0; policy accept;",
          `    tcp dport ${PORT.dropped} drop`,
          "  }",
          "}",
        ].join("\n") + "\n",
      );
      await env.startRelay(RELAY_CONFIG);
      await waitFor(
        () => peerEvents.some((e) => e.event === "ready"),
        (ready) => ready,
        { what: "tcp_peers.py to listen on every port", timeoutMs: 10_000 },
      );
      for (const port of [PORT.http, PORT.iperf]) await waitForTcpPort(port);
      lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
      if (blobDir) rmSync(blobDir, { recursive: true, force: true });
    });

    for (const f of FAMILIES) {
      test(`${f.name}: curl downloads from python http.server through TPROXY, bytes intact`, () => {
        const r = env.lab.exec(env.lab.client, [
          "sh",
          "-c",
          `curl -sS --max-time 10 http://${f.url}:${PORT.http}/blob | sha256sum`,
        ]);
        expect(r.stdout.split(" ")[0]).toBe(blobSha);
      });

      test(`${f.name}: iperf3 through TPROXY`, async () => {
        const before = await metrics();
        const r = env.lab.exec(env.lab.client, [
          "iperf3",
          "-c",
          f.server,
          "-p",
          `${PORT.iperf}`,
          "-t",
          "1",
          "-J",
        ]);
        const report = JSON.parse(r.stdout);
        expect(report.end.sum_received.bytes).toBeGreaterThan(1 << 20);
        const after = await settle();
        // iperf3 uses a control and a data connection; both went through the relay.
        expect(after.connected - before.connected).toBeGreaterThanOrEqual(2);
        expect(after.bytesToTargets - before.bytesToTargets).toBeGreaterThanOrEqual(
          report.end.sum_received.bytes,
        );
        // tcp.spliceMode auto: the data stream filled a copy buffer and spliced from then on.
        expect(after.spliceSwitches - before.spliceSwitches).toBeGreaterThanOrEqual(1);
      });

      test(`${f.name}: default source: the server sees the relay, the original destination is kept`, () => {
        const r = client("peer", f.extra, PORT.peer, 200_000);
        expect(r).toMatchObject({
          peer: f.router,
          local: f.extra,
          echoOk: true,
          bye: "BYE 200000",
        });
      });

      test(`${f.name}: source "client": the server sees the client's own address`, () => {
        const r = client("peer", f.extra, PORT.clientSource, 200_000);
        expect(r).toMatchObject({
          peer: f.client,
          local: f.extra,
          echoOk: true,
          bye: "BYE 200000",
        });
      });

      test(`${f.name}: REDIRECT recovers the original destination (SO_ORIGINAL_DST)`, () => {
        const r = client("peer", f.extra, PORT.redirect, 50_000);
        expect(r).toMatchObject({ peer: f.router, local: f.extra, echoOk: true, bye: "BYE 50000" });
      });

      test(`${f.name}: half-close each way; a server reset reaches the client`, async () => {
        const before = await settle();
        // Client FIN first (peer case above also does), then server FIN first.
        expect(client("halfclose", f.server, PORT.halfclose, 50_000)).toMatchObject({
          hello: "HELLO",
          afterEof: 0,
        });
        expect(client("reset", f.server, PORT.reset)).toEqual({
          event: "result",
          error: "ConnectionResetError",
        });
        const after = await settle();
        expect(after.closed - before.closed).toBe(1);
        expect(after.upstreamResets - before.upstreamResets).toBe(1);
      });

      test(`${f.name}: a client port reused at once after the relay closed first (TIME_WAIT)`, () => {
        // The relay holds the first connection's 4-tuple in TIME_WAIT; a SYN that went
        // astray would have to be retransmitted (after >= 1 s) for the second connection
        // to open: the kernel counts that, whatever the machine's load.
        // (Client ports below the ephemeral range: no other connection of the file uses them.)
        const before = synRetransmits();
        const r = client("reuse", f.server, PORT.halfclose, f.name === "IPv4" ? 30111 : 30112);
        expect(r).toMatchObject({ hellos: ["HELLO", "HELLO"] });
        expect(synRetransmits()).toEqual(before);
      });

      test(`${f.name}: a slow reader stalls the writer (bounded buffering), then gets every byte`, () => {
        const r = client("slow", f.server, PORT.slow, 1.0);
        expect(r.doneOk).toBe(true);
        // Everything the client could write while nobody read sits in kernel socket
        // buffers (client send, relay receive/send, server receive: autotuned to a few
        // MiB each at most) plus the relay's one pipe of tcp.bufferBytesMax. It stalls:
        // an unbounded relay would have swallowed ~1 s of line rate (> 100 MiB).
        expect(r.acceptedInStall).toBeGreaterThan(0);
        expect(r.acceptedInStall).toBeLessThan(48 << 20);
      });
    }

    test("faults: refused, timed out, unroutable, client vanishing: counted, no descriptor leaked", async () => {
      const fdsBefore = await fdsWithoutPool();
      const before = await metrics();
      for (const f of FAMILIES) {
        const refused = client("fails", f.server, PORT.closed);
        expect(refused).toMatchObject({ error: "ConnectionResetError" });
        // The reset comes from the relay's connect timer (connectTimeouts below), before
        // the client's own deadline (tcp_client.py TIMEOUT_S, else TimeoutError); not
        // before tcp.connectTimeoutMs: load only lengthens this, so the bound holds.
        const timedOut = client("fails", f.server, PORT.dropped);
        expect(timedOut).toMatchObject({ error: "ConnectionResetError", atConnect: false });
        expect(timedOut.elapsedMs).toBeGreaterThanOrEqual(TCP.connectTimeoutMs - 50);
        const vanished = client("vanish", f.server, PORT.firehose, 4 << 20);
        expect(vanished.read).toBeGreaterThanOrEqual(4 << 20);
      }
      // An original destination the router has no route to: connect() fails at once.
      const unroutable = client("fails", "198.18.9.9", PORT.closed);
      expect(unroutable).toMatchObject({ error: "ConnectionResetError" });
      const after = await settle();
      expect(after.upstreamSocketFailed - before.upstreamSocketFailed).toBe(1);
      expect(after.connectRefused - before.connectRefused).toBe(2);
      expect(after.connectTimeouts - before.connectTimeouts).toBe(2);
      expect(after.clientResets - before.clientResets).toBe(2);
      // The server learnt of the vanished client as it would directly: a reset.
      const firehoses = peerEvents.filter((e) => e.event === "firehose");
      expect(firehoses.length).toBe(2);
      for (const e of firehoses)
        expect(["ConnectionResetError", "BrokenPipeError"]).toContain(e.error);
      expect(await fdsWithoutPool()).toBe(fdsBefore);
    });

    test("connection limit: the extra client is reset at once, counted, then service resumes", async () => {
      const fdsBefore = await fdsWithoutPool();
      const before = await metrics();
      const r = client("limit", LAB.server4, PORT.peer, TCP.connectionsMax);
      expect(r).toMatchObject({ held: TCP.connectionsMax, extraError: "ConnectionResetError" });
      const after = await settle();
      expect(after.rejectedLimit - before.rejectedLimit).toBe(1);
      expect(client("peer", LAB.server4, PORT.peer, 1000)).toMatchObject({ echoOk: true });
      expect(await fdsWithoutPool()).toBe(fdsBefore);
    });

    test("idle timeout: a silent connection is reset after tcp.idleTimeoutMs, counted", async () => {
      const before = await metrics();
      // The reset comes from the relay's idle timer (idleTimeouts below), before the
      // client's own 8 s deadline (else TimeoutError); not before tcp.idleTimeoutMs: load
      // only lengthens this, so the bound holds.
      const r = client("idle", LAB.server6, PORT.peer, 8);
      expect(r.error).toBe("ConnectionResetError");
      expect(r.elapsedMs).toBeGreaterThanOrEqual(TCP.idleTimeoutMs - 50);
      const after = await settle();
      expect(after.idleTimeouts - before.idleTimeouts).toBe(1);
    });

    test("wildcard TPROXY listener on the intercepted port relays (not mistaken for a direct hit)", () => {
      const r = client("peer", LAB.serverExtra4[2], PORT.wildcard, 1000);
      expect(r).toMatchObject({
        peer: LAB.routerServer4,
        local: LAB.serverExtra4[2],
        echoOk: true,
      });
    });

    test("listener reached without interception: reset, counted, no loop", async () => {
      const before = await metrics();
      // From the router itself straight to the listener: no TPROXY, no original destination.
      const r = env.lab.exec(env.lab.router, [
        "python3",
        "-c",
        [
          "import socket",
          "try:",
          "    s = socket.create_connection(('127.0.0.1', 12346), timeout=3)",
          "    print(s.recv(10))",
          "except OSError as e:",
          "    print(type(e).__name__)",
        ].join("\n"),
      ]);
      expect(r.stdout.trim()).toBe("ConnectionResetError");
      // The wildcard listener, reached at one of the router's own addresses.
      const wild = env.lab.exec(env.lab.client, [
        "python3",
        "-c",
        [
          "import socket",
          "try:",
          `    s = socket.create_connection(('${LAB.routerClient4}', ${PORT.wildcard}), timeout=3)`,
          "    print(s.recv(10))",
          "except OSError as e:",
          "    print(type(e).__name__)",
        ].join("\n"),
      ]);
      expect(wild.stdout.trim()).toBe("ConnectionResetError");
      const after = await settle();
      expect(after.droppedToListener - before.droppedToListener).toBe(2);
      expect(after.connected - before.connected).toBe(0);
    });

    test("shutdown: open connections get the grace period, the rest are reset", async () => {
      const proc = env.track(
        env.lab.spawn(
          env.lab.client,
          ["python3", CLIENT, "grace", LAB.server4, `${PORT.late}`, `${PORT.peer}`],
          { stdin: "pipe" },
        ),
      );
      const out: string[] = [];
      let readerDone = false;
      void (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of proc.stdout as ReadableStream<Uint8Array>)
          out.push(decoder.decode(chunk));
        readerDone = true;
      })();
      await waitFor(
        () => out.join(""),
        (text) => text.includes("connected"),
        { what: "the grace client's two connections", timeoutMs: 10_000 },
      );
      const started = performance.now();
      const stopped = env.relay!.stop(TCP.shutdownGraceMs + 5000);
      // Shutdown closes the listeners first; then the late exchange goes on, in the grace.
      await waitFor(
        () => listening(env.lab.router, 12346),
        (lines) => lines.length === 0,
        { what: "the relay to close its listeners (shutdown begun)", timeoutMs: 10_000 },
      );
      proc.stdin!.write("go\n");
      proc.stdin!.flush();
      const { final, exitCode } = await stopped;
      const stopMs = performance.now() - started;
      await waitFor(
        () => readerDone,
        (done) => done,
        { what: "the grace client to print its result and exit", timeoutMs: 10_000 },
      );
      const result = JSON.parse(out.join("").trim().split("\n").pop()!);
      expect(result).toMatchObject({ lateAnswer: "LATE", idleError: "ConnectionResetError" });
      expect(exitCode).toBe(0);
      expect(stopMs).toBeGreaterThanOrEqual(TCP.shutdownGraceMs - 100);
      expect(final.tcp.abortedAtShutdown).toBe(1);
      expect(final.tcp.connectionsActive).toBe(0);
      expect(final.tcp.eventsLost).toBe(0);
      // Every connection of the whole file is accounted for exactly once.
      const t = final.tcp;
      expect(t.accepted).toBe(
        t.rejectedLimit +
          t.droppedNoOriginalDst +
          t.droppedToListener +
          t.droppedLocalTarget +
          t.droppedMulticastTarget +
          t.upstreamNoDescriptors +
          t.upstreamSocketFailed +
          t.closed +
          t.clientResets +
          t.upstreamResets +
          t.connectRefused +
          t.connectTimeouts +
          t.connectFailed +
          t.idleTimeouts +
          t.abortedAtShutdown +
          t.resourceFailures,
      );
      expect(t.bytesToTargets).toBe(t.bytesToTargetsClosed);
      expect(t.bytesToClients).toBe(t.bytesToClientsClosed);
      expect(t.pipesInUse).toBe(0);
      // Short exchanges of the file never took a pipe; no copy buffer outlived its bytes.
      expect(t.copyOnlyConnections).toBeGreaterThan(0);
      expect(t.copyBuffersInUse).toBe(0);
      env.relay = null;
    });
  });
}
