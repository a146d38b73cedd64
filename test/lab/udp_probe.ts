// UDP client for the lab: opens FLOWS sockets, each sends PACKETS datagrams to one of
// the TARGETS (round robin), and checks every reply:
//   - it comes from the exact address and port the client sent to (transparency);
//   - its payload belongs to this flow and sequence number (no cross-flow delivery).
// bun test/lab/udp_probe.ts --targets A:P[,A:P...] [--flows N] [--packets K] [--size B]
//     [--timeout-ms T] [--stamped]
// Prints one JSON summary line. Bounded: at most FLOWS*PACKETS datagrams, T ms.

interface Target {
  host: string;
  port: number;
}

function parseTarget(text: string): Target {
  const colon = text.lastIndexOf(":");
  return {
    host: text.slice(0, colon).replace(/^\[|\]$/g, ""),
    port: Number(text.slice(colon + 1)),
  };
}

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const targets = option("--targets", "").split(",").filter(Boolean).map(parseTarget);
const flows = Number(option("--flows", "1"));
const packets = Number(option("--packets", "4"));
const size = Number(option("--size", "64"));
const timeoutMs = Number(option("--timeout-ms", "3000"));
const stamped = process.argv.includes("--stamped");
if (
  targets.length === 0 ||
  !(flows >= 1 && flows <= 4096) ||
  !(packets >= 1 && packets <= 100_000)
) {
  console.error("usage: udp_probe.ts --targets A:P[,A:P] [--flows 1-4096] [--packets 1-100000]");
  process.exit(2);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
let received = 0;
let wrongSource = 0;
let wrongFlow = 0;
let duplicate = 0;
const serverSaw = new Set<string>();
const seen = new Uint8Array(flows * packets);
const sentAt = new Float64Array(flows * packets);
const rttUs: number[] = [];
const expected = flows * packets;

function payload(flow: number, seq: number): Uint8Array {
  const head = encoder.encode(`flow=${flow} seq=${seq} `);
  const out = new Uint8Array(Math.max(size, head.length));
  out.set(head);
  for (let i = head.length; i < out.length; i++) out[i] = 0x61 + ((flow + i) % 26);
  return out;
}

let resolveDone: () => void = () => {};
const done = new Promise<void>((r) => (resolveDone = r));

const sockets = [];
for (let flow = 0; flow < flows; flow++) {
  const target = targets[flow % targets.length];
  const socket = await Bun.udpSocket({
    hostname: target.host.includes(":") ? "::" : "0.0.0.0",
    socket: {
      data(_s, data, port, address) {
        const now = performance.now();
        let text = decoder.decode(data);
        if (address !== target.host || port !== target.port) wrongSource++;
        if (stamped) {
          const bar = text.indexOf("|");
          serverSaw.add(text.slice(0, bar).replace(/:\d+$/, ""));
          text = text.slice(bar + 1);
        }
        const m = /^flow=(\d+) seq=(\d+) /.exec(text);
        if (!m || Number(m[1]) !== flow) {
          wrongFlow++;
          return;
        }
        const seq = Number(m[2]);
        const index = flow * packets + seq;
        if (seq >= packets) {
          wrongFlow++;
          return;
        }
        if (seen[index]) {
          duplicate++;
          return;
        }
        // The whole payload must come back intact.
        const sent = payload(flow, seq);
        const body = stamped ? data.subarray(data.length - sent.length) : data;
        if (body.length !== sent.length || !body.every((b, i) => b === sent[i])) {
          wrongFlow++;
          return;
        }
        seen[index] = 1;
        received++;
        rttUs.push((now - sentAt[index]) * 1000);
        if (received === expected) resolveDone();
      },
    },
  });
  sockets.push({ socket, target });
}

// Send: each flow's packets in order, a small pause between rounds so the relay's
// socket buffers are never the reason for a loss in a correctness test.
for (let seq = 0; seq < packets; seq++) {
  for (let flow = 0; flow < flows; flow++) {
    const { socket, target } = sockets[flow];
    sentAt[flow * packets + seq] = performance.now();
    socket.send(payload(flow, seq), target.port, target.host);
    // A pause every 64 datagrams: the peers' default socket buffers (~200 KiB) must never
    // be the reason for a loss in a correctness check.
    if ((seq * flows + flow) % 64 === 63) await Bun.sleep(1);
  }
}
await Promise.race([done, Bun.sleep(timeoutMs)]);
for (const { socket } of sockets) socket.close();
rttUs.sort((a, b) => a - b);
const pct = (p: number) =>
  rttUs.length ? Math.round(rttUs[Math.min(rttUs.length - 1, Math.floor(p * rttUs.length))]) : -1;
console.log(
  JSON.stringify({
    sent: expected,
    received,
    lost: expected - received,
    wrongSource,
    wrongFlow,
    duplicate,
    serverSaw: [...serverSaw],
    rttUsP50: pct(0.5),
    rttUsP99: pct(0.99),
  }),
);
process.exit(0);

export {};
