// TCP names: on tcp.sniffPorts the relay reads the client's TLS ClientHello (peeked,
// never consumed) before it connects upstream, and records the SNI. What a user sees:
// curl over HTTPS through the relay works and the server is asked for the same name; the
// connection's flow record and counters carry the name. What must never happen: a
// byte lost or reordered because it was looked at. A hello split over two segments is
// still read (SO_RCVLOWAT waits for the rest); a client that stalls mid-hello is relayed
// unnamed after tcp.sniffTimeoutMs, and its bytes arrive intact; a non-TLS stream on a
// sniff port goes through untouched; a client that resets while being read is counted.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LAB } from "../lab/netns.ts";
import { startPausedHello } from "../lab/paused_hello.ts";
import { waitFor } from "../lab/wait_for.ts";
import { BUN, labSkipReason, RelayLab, ROOT } from "./harness.ts";

const PEERS = join(ROOT, "test/lab/tls_peers.py");
const PORT = { tls: 443, echo: 8443 } as const;
const SNIFF_TIMEOUT_MS = 400;

const FAMILIES = [
  { name: "IPv4", server: LAB.server4 },
  { name: "IPv6", server: LAB.server6 },
] as const;

const skip = labSkipReason();
if (!skip) {
  describe("TCP: the TLS SNI read before the upstream connect", () => {
    let lab: RelayLab;
    const dir = mkdtempSync(join(tmpdir(), "relay-sniff-"));
    const flowLog = join(dir, "flows.log");

    beforeAll(async () => {
      lab = new RelayLab();
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
      for (const f of FAMILIES) {
        lab.spawn(lab.lab.server, [
          ...["python3", PEERS, "serve", f.server, `${PORT.tls}`],
          ...[join(dir, "cert.pem"), join(dir, "key.pem")],
        ]);
        lab.spawn(lab.lab.server, ["python3", PEERS, "echo", f.server, `${PORT.echo}`]);
      }
      await waitFor(
        () => lab.lab.exec(lab.lab.server, ["ss", "-Htln"], undefined, true).stdout,
        (out) => out.split("\n").filter((l) => /:(443|8443)\b/.test(l)).length === 4,
        { what: "the TLS and echo servers listening", timeoutMs: 10_000 },
      );
      await lab.startRelay({
        listeners: [
          { name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: 12350 },
          { name: "tcp6", protocol: "tcp", address: "::1", port: 12350 },
        ],
        intercept: [
          { listener: "tcp4", ports: [PORT.tls, PORT.echo] },
          { listener: "tcp6", ports: [PORT.tls, PORT.echo] },
        ],
        tcp: { sniffPorts: [PORT.tls, PORT.echo], sniffTimeoutMs: SNIFF_TIMEOUT_MS },
        flowLog: { path: flowLog },
      });
    });

    afterAll(async () => {
      await lab?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    const tcp = async () => (await lab.relay!.metrics()).tcp;
    const hello = (args: string[]) =>
      JSON.parse(lab.lab.exec(lab.lab.client, ["python3", PEERS, "hello", ...args]).stdout.trim());

    for (const f of FAMILIES) {
      const host = f.server.includes(":") ? `[${f.server}]` : f.server;

      test(`${f.name}: curl over HTTPS through the relay; the SNI is recorded`, async () => {
        const name = `www-${f.name.toLowerCase()}.relay.test`;
        const before = await tcp();
        const body = lab.lab.exec(lab.lab.client, [
          ...["curl", "-sS", "-k", "--max-time", "10"],
          ...["--resolve", `${name}:${PORT.tls}:${host}`, `https://${name}/`],
        ]).stdout;
        // The server was asked for the same name: the relay passed the hello on intact.
        expect(body).toBe(`sni=${name}\n`);
        // The server may end with FIN or RST (Python's ssl closes with the alert unread).
        const after = await waitFor(
          tcp,
          (t) => t.accepted > before.accepted && t.connectionsActive === 0,
          { what: "the HTTPS connection to end", timeoutMs: 10_000 },
        );
        expect(after.sniffedTls - before.sniffedTls).toBe(1);
        expect(after.sniffMalformed).toBe(before.sniffMalformed);
        const logged = await waitFor(
          () =>
            spawnSync(BUN, [join(ROOT, "src/main.ts"), "log", "--file", flowLog, "--json"], {
              encoding: "utf8",
            })
              .stdout.split("\n")
              .filter((l) => l !== "")
              .map((l) => JSON.parse(l)),
          (records) => records.some((r) => r.name === name),
          { what: `a flow record named ${name}`, timeoutMs: 10_000 },
        );
        const record = logged.find((r) => r.name === name);
        expect(record).toMatchObject({ protocol: "tcp", parsed: "tls", targetPort: PORT.tls });
        expect(record.bytesToTarget).toBeGreaterThan(200);
      });

      test(`${f.name}: a ClientHello in two segments is still read, bytes intact`, async () => {
        const before = await tcp();
        const r = hello([`split-${f.name}.relay.test`, f.server, `${PORT.echo}`, "--split", "40"]);
        expect(r.equal).toBe(true);
        expect(r.echoed).toBeGreaterThan(200);
        const after = await waitFor(tcp, (t) => t.closed > before.closed, {
          what: "the split-hello connection to end",
          timeoutMs: 10_000,
        });
        expect(after.sniffedTls - before.sniffedTls).toBe(1);
        expect(after.sniffIncomplete).toBe(before.sniffIncomplete);
      });

      test(`${f.name}: a client stalled mid-hello is relayed unnamed after the timeout`, async () => {
        const before = await tcp();
        const client = await startPausedHello(lab.lab, "stall.relay.test", f.server, PORT.echo, 20);
        // The relay gives up on the name, connects, and the 20 bytes go upstream.
        await waitFor(tcp, (t) => t.sniffIncomplete > before.sniffIncomplete, {
          what: "the sniff timeout",
          timeoutMs: 5_000,
        });
        expect((await client.finish()).equal).toBe(true);
        const after = await tcp();
        expect(after.sniffedTls).toBe(before.sniffedTls);
      });

      test(`${f.name}: not TLS on a sniff port: relayed unnamed, untouched`, async () => {
        const before = await tcp();
        const text = "GET / HTTP/1.0\r\nHost: plain.relay.test\r\n\r\n";
        const r = JSON.parse(
          lab.lab.exec(lab.lab.client, ["python3", PEERS, "raw", f.server, `${PORT.echo}`, text])
            .stdout,
        );
        expect(r).toEqual({ sent: text.length, echoed: text.length, equal: true });
        const after = await waitFor(tcp, (t) => t.closed > before.closed, {
          what: "the plain connection to end",
          timeoutMs: 10_000,
        });
        expect(after.sniffMalformed - before.sniffMalformed).toBe(1);
      });
    }

    test("a client that resets while its hello is read: counted, nothing left open", async () => {
      const before = await tcp();
      lab.python(
        lab.lab.client,
        `import socket, struct
s = socket.create_connection(("${LAB.server4}", ${PORT.echo}), timeout=5)
s.sendall(bytes.fromhex("1603010200010001fc0303"))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()`,
      );
      const after = await waitFor(tcp, (t) => t.clientResets > before.clientResets, {
        what: "the reset to be counted",
        timeoutMs: 10_000,
      });
      expect(after.connectionsActive).toBe(0);
      expect(after.sniffedTls).toBe(before.sniffedTls);
    });
  });
}
