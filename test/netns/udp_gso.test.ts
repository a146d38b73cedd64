// End-to-end: UDP GSO and GRO through the relay (docs/udp_gso.md). A client sends a burst
// of equal-size datagrams of one flow; the relay reads them in batches and sends each
// run to the server as UDP_SEGMENT messages. The server answers with a burst it sends
// itself with UDP_SEGMENT: across the veth it stays one coalesced packet, so the relay's
// upstream socket (UDP_GRO on, udp.gro) receives coalesced buffers and splits them, and
// the replies leave towards the client as GSO runs again. Asserted: every datagram
// arrives, in order and intact, at the server and at the client, and the counters moved.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import { labSkipReason, RelayLab } from "./harness.ts";

const PORT = 7100;
const CLIENT_DATAGRAMS = 300;
const CLIENT_BYTES = 1000;
const SERVER_DATAGRAMS = 256;
const SERVER_BYTES = 1200;

const RELAY_CONFIG = {
  listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
  intercept: [{ listener: "udp4", ports: [PORT] }],
  udp: {
    // The offloads belong to the epoll backend (the io_uring plane sends one SQE per
    // datagram and keeps them off: docs/udp_gso.md).
    ioBackend: "epoll",
    gso: true,
    gro: true,
    datagramBytesMax: 2048,
    batchCountMax: 256,
    // The server's 8 coalesced buffers arrive at once; the kernel default loses some.
    socketReceiveBytes: 8 << 20,
  },
};

/**
 * The server: records the sequence numbers of "B" datagrams; on "E" it answers with a
 * summary (count, in order, sizes: JSON) and then SERVER_DATAGRAMS numbered datagrams sent as UDP_SEGMENT
 * messages of 32 (SOL_UDP 17, UDP_SEGMENT 103).
 */
const SERVER = `
import json, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)  # SO_SNDBUFFORCE
s.bind(("${LAB.server4}", ${PORT}))
seen = []
while True:
    data, peer = s.recvfrom(65535)
    if data[:1] == b"B":
        seen.append((struct.unpack("!I", data[1:5])[0], len(data)))
    elif data[:1] == b"E":
        # A summary: the whole list would not fit one datagram of the relay.
        order = [i for i, _ in seen]
        summary = {"count": len(seen), "inOrder": order == list(range(len(seen))),
                   "sizes": sorted(set(n for _, n in seen))}
        s.sendto(json.dumps(summary).encode(), peer)
        seen = []
        run = 32
        for first in range(0, ${SERVER_DATAGRAMS}, run):
            body = b"".join(
                b"D" + struct.pack("!I", i) + bytes([i & 255]) * (${SERVER_BYTES} - 5)
                for i in range(first, min(first + run, ${SERVER_DATAGRAMS}))
            )
            s.sendmsg([body], [(17, 103, struct.pack("H", ${SERVER_BYTES}))], 0, peer)
`;

/** The client: the burst, the end marker, then the server's list and its burst. */
const CLIENT = `
import json, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
s.settimeout(5)
target = ("${LAB.server4}", ${PORT})
for i in range(${CLIENT_DATAGRAMS}):
    s.sendto(b"B" + struct.pack("!I", i) + bytes([i & 255]) * (${CLIENT_BYTES} - 5), target)
s.sendto(b"E", target)
seen, src = s.recvfrom(65535)
assert src == target, src
got = []
try:
    while len(got) < ${SERVER_DATAGRAMS}:
        data, src = s.recvfrom(65535)
        assert src == target, src
        i = struct.unpack("!I", data[1:5])[0]
        intact = data[:1] == b"D" and data[5:] == bytes([i & 255]) * (len(data) - 5)
        got.append([i, len(data), intact])
except socket.timeout:
    pass
print(json.dumps({"server": json.loads(seen), "client": got}))
`;

const skip = labSkipReason();
if (!skip) {
  describe("UDP GSO and GRO through the relay", () => {
    let env: RelayLab;

    beforeAll(async () => {
      env = new RelayLab();
      env.spawn(env.lab.server, ["python3", "-c", SERVER]);
      await env.startRelay(RELAY_CONFIG);
      await env.lab.waitForUdpPort(env.lab.server, PORT);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      await env?.close();
    });

    /** The client's exchange; asserts both bursts arrived whole and in order. */
    function exchange(): void {
      const r = env.python(env.lab.client, CLIENT);
      const { server, client } = JSON.parse(r.stdout.trim().split("\n").pop()!);
      expect(server).toEqual({ count: CLIENT_DATAGRAMS, inOrder: true, sizes: [CLIENT_BYTES] });
      const replies = [...new Array(SERVER_DATAGRAMS).keys()];
      expect(client).toEqual(replies.map((i) => [i, SERVER_BYTES, true]));
    }

    /** The relay's UDP values once the exchange's replies are counted. */
    function counted(before: any): Promise<any> {
      return waitFor(
        async () => (await env.relay!.metrics()).udp,
        (u) => u.packetsToClients - before.packetsToClients >= SERVER_DATAGRAMS + 1,
        { what: "the replies counted", timeoutMs: 10_000 },
      );
    }

    test("a one-flow burst arrives complete and in order both ways; GSO and GRO counted", async () => {
      const before = (await env.relay!.metrics()).udp;
      expect(before.gsoEnabled).toBe(1);
      expect(before.groEnabled).toBe(1);
      exchange();
      // Datagrams, not buffers, in the packet counters (the end marker and summary too).
      const udp = await counted(before);
      expect(udp.packetsFromClients - before.packetsFromClients).toBe(CLIENT_DATAGRAMS + 1);
      expect(udp.packetsToTargets - before.packetsToTargets).toBe(CLIENT_DATAGRAMS + 1);
      expect(udp.packetsFromTargets - before.packetsFromTargets).toBe(SERVER_DATAGRAMS + 1);
      expect(udp.packetsToClients - before.packetsToClients).toBe(SERVER_DATAGRAMS + 1);
      expect(udp.gsoMessages).toBeGreaterThan(before.gsoMessages);
      expect(udp.gsoDatagrams - before.gsoDatagrams).toBeGreaterThan(
        2 * (udp.gsoMessages - before.gsoMessages) - 1,
      );
      expect(udp.gsoFallbacks).toBe(0);
      expect(udp.groBuffers).toBeGreaterThan(before.groBuffers);
      expect(udp.groDatagrams - before.groDatagrams).toBeGreaterThan(
        udp.groBuffers - before.groBuffers,
      );
      expect(udp.droppedOversized).toBe(0);
    }, 60_000);

    test("with udp.gso and udp.gro false: the same datagrams, one message each", async () => {
      const { udp: off, ...rest } = RELAY_CONFIG;
      await env.startRelay({ ...rest, udp: { ...off, gso: false, gro: false } });
      const before = (await env.relay!.metrics()).udp;
      expect([before.gsoEnabled, before.groEnabled]).toEqual([0, 0]);
      exchange();
      const udp = await counted(before);
      expect(udp.packetsFromTargets - before.packetsFromTargets).toBe(SERVER_DATAGRAMS + 1);
      expect([udp.gsoMessages, udp.gsoDatagrams, udp.groBuffers, udp.groDatagrams]).toEqual([
        0, 0, 0, 0,
      ]);
    }, 60_000);
  });
}
