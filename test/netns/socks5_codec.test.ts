// The SOCKS5 codec (src/egress/socks5.ts) over real sockets against a real server: Dante
// (dante-server) in the lab's server namespace, driven from the router namespace where
// the relay runs. TCP CONNECT (by IPv4, IPv6 and domain name) to an echo server and back,
// UDP ASSOCIATE round trips to the UDP echo server, and a refusal naming Dante's REP.
// Username/password (RFC 1929) runs against a small in-test server: Dante's "username"
// method needs system users (test/lab/dante.ts). This proves the codec and the lab's
// Dante config before the data path uses them.
//
//   router ns (socks5_driver.ts) ── server ns (danted :1080; tcp_peers 7000, udp_echo 7001)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { Socket } from "bun";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { danteUnavailableReason, startDante } from "../lab/dante.ts";
import { JsonLinesProcess } from "../lab/json_lines.ts";
import { LAB, Lab, labUnavailableReason } from "../lab/netns.ts";
import { BUN } from "../lab/relay_process.ts";
import { connectRoundTrip, handshake, ipAddress } from "../lab/socks5_client.ts";
import { CMD_CONNECT } from "../../src/egress/socks5.ts";
import { labSkipReason } from "./harness.ts";

const ROOT = join(import.meta.dir, "..", "..");
const SOCKS_PORT = 1080;
const TCP_PORT = 7000;
const UDP_PORT = 7001;
/** Nothing listens here: Dante's connect is refused. */
const CLOSED_PORT = 7999;
const E4 = LAB.serverExtra4[0];
const E6 = LAB.serverExtra6[0];

const unavailable = labUnavailableReason() ?? danteUnavailableReason();
const skip = labSkipReason(unavailable);
if (!skip) {
  describe("the SOCKS5 codec against Dante", () => {
    let lab: Lab;
    const dir = mkdtempSync(join(tmpdir(), "socks5-test-"));
    const logPath = join(dir, "danted.log");
    const children: Array<{ kill(): void }> = [];

    /** Runs the driver in the router namespace with a job; returns its result lines. */
    const drive = (job: object): any[] => {
      const r = lab.exec(lab.router, [
        BUN,
        join(ROOT, "test/netns/socks5_driver.ts"),
        JSON.stringify(job),
      ]);
      return r.stdout
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line));
    };

    beforeAll(async () => {
      // In CI the tests run whatever the machine lacks, and fail saying what.
      if (unavailable) throw new Error(`SOCKS5 lab unavailable: ${unavailable}`);
      lab = Lab.create();
      lab.warmNeighbours();
      // Dante resolves CONNECT-by-name in its namespace: /etc/netns/NS/hosts.
      lab.setHosts(lab.server, [[E4, "echo.lab.test"]]);
      const peers = new JsonLinesProcess(
        "tcp_peers",
        lab.spawn(lab.server, [
          "python3",
          join(ROOT, "test/netns/tcp_peers.py"),
          `${TCP_PORT}:peer`,
        ]),
      );
      children.push(peers.proc);
      const echo = new JsonLinesProcess(
        "udp_echo",
        lab.spawn(lab.server, [
          "python3",
          join(ROOT, "test/lab/udp_echo.py"),
          "--stamp",
          `${E4}:${UDP_PORT}`,
          `[${E6}]:${UDP_PORT}`,
        ]),
      );
      children.push(echo.proc);
      await peers.waitFor((l) => l.event === "ready", 10_000);
      await echo.waitFor((l) => l.event === "ready", 10_000);
      const dante = await startDante(lab, lab.server, dir, {
        listen: [LAB.server4, LAB.server6],
        port: SOCKS_PORT,
        externalInterface: LAB.serverIf,
        clients: ["198.18.0.0/15", "2001:2::/48"],
        logPath,
      });
      children.push(dante.proc);
    });

    afterAll(() => {
      for (const child of children) child.kill();
      lab?.destroy();
      rmSync(dir, { recursive: true, force: true });
    });

    const danteLog = () => {
      try {
        return readFileSync(logPath, "utf8");
      } catch {
        return "(no log)";
      }
    };

    for (const [family, server] of [
      ["IPv4", `${LAB.server4}:${SOCKS_PORT}`],
      ["IPv6", `[${LAB.server6}]:${SOCKS_PORT}`],
    ] as const) {
      test(`${family}: CONNECT by address and by name, the echo server answers through Dante`, () => {
        const results = drive({
          server,
          connect: [
            { host: E4, port: TCP_PORT },
            { host: E6, port: TCP_PORT },
            { host: "", port: TCP_PORT, domain: "echo.lab.test" },
          ],
        });
        expect(results.map((r) => r.kind)).toEqual(["connect", "connect", "connect"]);
        const [v4, v6, named] = results;
        // tcp_peers: "PEER <the address it saw> <port> <its own address>", the echo, "BYE n".
        const message = "hello through socks\n";
        expect(v4.received).toMatch(
          new RegExp(`^PEER 198\\.18\\.1\\.\\d+ \\d+ ${E4}\n${message}BYE ${message.length}\n$`),
        );
        expect(v6.received).toMatch(
          new RegExp(`^PEER 2001:2:0:2::\\d+ \\d+ ${E6}\n${message}BYE ${message.length}\n$`),
        );
        expect(named.received).toStartWith("PEER 198.18.1.");
        expect(named.received).toContain(` ${E4}\n${message}BYE`);
        // Dante's bound address is its outgoing side in the server namespace.
        expect(v4.bound).toMatch(/^198\.18\.1\.\d+:\d+$/);
        expect(v6.bound).toMatch(/^\[2001:2:0:2::\d+\]:\d+$/);
      });

      test(`${family}: UDP ASSOCIATE round trips to the IPv4 and IPv6 echo servers`, () => {
        const results = drive({
          server,
          associate: [
            { host: E4, port: UDP_PORT },
            { host: E6, port: UDP_PORT },
          ],
        });
        expect(
          results.map((r) => r.kind),
          danteLog(),
        ).toEqual(["associate", "associate"]);
        const [v4, v6] = results;
        expect(v4.replies.map((r: any) => r.source)).toEqual([
          `${E4}:${UDP_PORT}`,
          `${E4}:${UDP_PORT}`,
        ]);
        expect(v6.replies.map((r: any) => r.source)).toEqual([
          `${E6}:${UDP_PORT}`,
          `${E6}:${UDP_PORT}`,
        ]);
        // --stamp: the echo server saw Dante's address, then our payload.
        expect(v4.replies.map((r: any) => r.payload.replace(/^[^|]*\|/, ""))).toEqual([
          "datagram one",
          "datagram two",
        ]);
        expect(v4.replies[0].payload).toMatch(/^198\.18\.1\.\d+:\d+\|/);
        expect(v6.replies[1].payload).toMatch(/^\[2001:2:0:2::\d+\]:\d+\|datagram two$/);
      });

      test(`${family}: a refused CONNECT names Dante's reply code`, () => {
        const [r] = drive({ server, refused: [{ host: E4, port: CLOSED_PORT }] });
        expect(r.error).toMatch(/^the server replied .* \(REP 0x0[1-8]\)$/);
        expect(r.error).toContain("connection refused (REP 0x05)");
      });
    }
  });
}

/**
 * A tiny SOCKS5 server for what Dante cannot be configured for here: RFC 1929 with a
 * fixed user, replies scripted per test. Only CONNECT to itself: it echoes.
 */
function tinyServer(behaviour: "auth" | "garbage" | "close-mid-reply") {
  const USER = "relay";
  const PASS = "s3cret";
  type State = { phase: number; input: Buffer };
  return Bun.listen<State>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { phase: 0, input: Buffer.alloc(0) };
      },
      data(s: Socket<State>, chunk) {
        const st = s.data;
        st.input = Buffer.concat([st.input, chunk]);
        if (behaviour === "garbage") {
          s.end("HTTP/1.1 400 Bad Request\r\n\r\n");
          return;
        }
        for (;;) {
          const b = st.input;
          if (st.phase === 0) {
            if (b.length < 2 || b.length < 2 + b[1]) return;
            const methods = [...b.subarray(2, 2 + b[1])];
            st.input = b.subarray(2 + b[1]);
            if (!methods.includes(2)) {
              s.end(Uint8Array.from([5, 0xff]));
              return;
            }
            s.write(Uint8Array.from([5, 2]));
            st.phase = 1;
          } else if (st.phase === 1) {
            if (b.length < 2 || b.length < 3 + b[1] || b.length < 3 + b[1] + b[2 + b[1]]) return;
            const user = b.subarray(2, 2 + b[1]).toString();
            const pass = b.subarray(3 + b[1], 3 + b[1] + b[2 + b[1]]).toString();
            st.input = b.subarray(3 + b[1] + b[2 + b[1]]);
            if (b[0] !== 1 || user !== USER || pass !== PASS) {
              s.end(Uint8Array.from([1, 1]));
              return;
            }
            s.write(Uint8Array.from([1, 0]));
            st.phase = 2;
          } else if (st.phase === 2) {
            if (b.length < 10) return; // an IPv4 CONNECT: 10 bytes
            st.input = b.subarray(10);
            if (behaviour === "close-mid-reply") {
              s.end(Uint8Array.from([5, 0, 0, 1, 127]));
              return;
            }
            s.write(Uint8Array.from([5, 0, 0, 1, 127, 0, 0, 1, 0x12, 0x34]));
            st.phase = 3;
          } else {
            if (b.length === 0) return;
            s.write(b); // echo
            st.input = Buffer.alloc(0);
            return;
          }
        }
      },
    },
  });
}

describe("RFC 1929 and broken servers (an in-test server on loopback)", () => {
  const target = ipAddress("127.0.0.1", 9);
  const endpointOf = (server: { port: number }) => ({ host: "127.0.0.1", port: server.port });

  test("username/password accepted: CONNECT, then the stream", async () => {
    const server = tinyServer("auth");
    try {
      const r = await connectRoundTrip(endpointOf(server), target, ["ping\n"], {
        username: "relay",
        password: "s3cret",
      });
      // The tiny server echoes, and closes after our half-close.
      expect(r).toEqual({ bound: "127.0.0.1:4660", received: "ping\n" });
    } finally {
      server.stop(true);
    }
  });

  test("a wrong password, no credentials, garbage, a reply cut short", async () => {
    const outcome = async (
      behaviour: "auth" | "garbage" | "close-mid-reply",
      credentials: { username: string; password: string } | null,
    ) => {
      const server = tinyServer(behaviour);
      try {
        return await handshake(endpointOf(server), CMD_CONNECT, target, credentials).then(
          ({ socket }) => {
            socket.destroy();
            return "accepted";
          },
          (err: Error) => err.message,
        );
      } finally {
        server.stop(true);
      }
    };
    const good = { username: "relay", password: "s3cret" };
    expect(await outcome("auth", good)).toBe("accepted");
    expect(await outcome("auth", { username: "relay", password: "nope" })).toBe(
      "authentication failed (status 0x1)",
    );
    expect(await outcome("auth", null)).toStartWith("no acceptable authentication method");
    expect(await outcome("garbage", null)).toBe("not a SOCKS5 server (version byte 0x48)");
    expect(await outcome("close-mid-reply", good)).toBe(
      "the server closed the connection during the handshake (a truncated request reply)",
    );
  });
});
