// Micro-benchmarks of the header parsers: ns per packet for the WASM module called once per
// packet and once per batch, against the TypeScript references (src/classify/*_ref.ts) as
// each group's baseline. Every task parses a batch of BATCH_COUNT packets already in WASM
// memory (the TS reference reads the same bytes through subarray views), so timer overhead
// is spread over the batch. `--small` runs each task briefly (a smoke run, keeps it from
// going stale); the default is the real run. A checksum of the results is printed.
//
//   node_modules/.bin/bun bench/parsers.bench.ts [--small]
//
// bench/micro.bench.ts (and so `bun run bench`) imports runParsers().
import { Bench } from "tinybench";
import { DnsRefParser } from "../test/ref/dns_ref.ts";
import { Kind, RESULT_WORDS_SHIFT, WORD_CODE, WORD_FIELD, Field } from "../src/classify/layout.ts";
import { QuicRefParser } from "../test/ref/quic_ref.ts";
import { parsersLoad } from "../src/classify/wasm.ts";
import { clientHello, multiInitial, tlsRecords } from "../test/fixtures/classify/build.ts";
import { dnsFixtures, quicHeaderFixtures, quicInitialFixtures }
  from "../test/fixtures/classify/corpus.ts";

/** The relay's recvmmsg batch (wasm/src/main.zig batch_count_max). */
const BATCH_COUNT = 256;
/** A 1500-byte MTU datagram rounded up; 256 slots fill the 512 KiB packet area. */
const SLOT_BYTES = 2048;
const TIME_MS = { small: 30, full: 600 };
const WARMUP_MS = { small: 10, full: 200 };

const parsers = parsersLoad();
const e = parsers.exports;
const words = parsers.resultWords;
let timeMs = TIME_MS.full;
let warmupMs = WARMUP_MS.full;

interface Slots {
  offsets: Uint32Array;
  lengths: Uint32Array;
  views: Uint8Array[];
}

/** Places `fixtures` round-robin into BATCH_COUNT slots of the packet area. */
function placeSlots(fixtures: Uint8Array[]): Slots {
  const slots: Slots = { offsets: new Uint32Array(BATCH_COUNT),
    lengths: new Uint32Array(BATCH_COUNT), views: [] };
  for (let i = 0; i < BATCH_COUNT; i++) {
    const packet = fixtures[i % fixtures.length];
    const offset = parsers.place(packet, i * SLOT_BYTES);
    slots.offsets[i] = offset;
    slots.lengths[i] = packet.length;
    slots.views.push(parsers.bytes.subarray(offset, offset + packet.length));
  }
  return slots;
}

function describeAll(slots: Slots, kind: number): void {
  for (let i = 0; i < BATCH_COUNT; i++) parsers.describe(i, slots.offsets[i], slots.lengths[i],
    kind);
}

let checksum = 0;

/** One comparison: its tasks share the packet area, so a group places its packets in
 * setup() and runs before the next group's setup() overwrites them. */
interface Group {
  name: string;
  baseline: string;
  bench: Bench;
  /** Packets parsed per task iteration. */
  count: number;
}

function group(name: string, baseline: string, count = BATCH_COUNT): Group {
  return { name, baseline, count, bench: new Bench({ time: timeMs, warmupTime: warmupMs }) };
}

// DNS: the first question's qtype is read from each result so no work can be skipped.
function dnsGroup(): Group {
  const g = group("dns", "ts-ref");
  const ref = new DnsRefParser();
  const slots = placeSlots(dnsFixtures.map((f) => f.bytes));
  g.bench.add("ts-ref", () => {
    for (let i = 0; i < BATCH_COUNT; i++) checksum += ref.parse(slots.views[i]).qtype;
  });
  const single = (parsers.singleIndex << RESULT_WORDS_SHIFT) + WORD_FIELD + Field.dnsQtype;
  g.bench.add("wasm per-packet", () => {
    for (let i = 0; i < BATCH_COUNT; i++) {
      e.dns_parse(slots.offsets[i], slots.lengths[i]);
      checksum += words[single];
    }
  });
  g.bench.add("wasm batch", () => {
    describeAll(slots, Kind.dns);
    e.batch_parse(BATCH_COUNT);
    for (let i = 0; i < BATCH_COUNT; i++) {
      checksum += words[(i << RESULT_WORDS_SHIFT) + WORD_FIELD + Field.dnsQtype];
    }
  });
  return g;
}

// QUIC header: long headers of real Initials (RFC vectors and gtlsclient captures).
function quicGroup(): Group {
  const g = group("quic header", "ts-ref");
  const ref = new QuicRefParser();
  const slots = placeSlots(quicHeaderFixtures.map((f) => f.bytes));
  g.bench.add("ts-ref", () => {
    for (let i = 0; i < BATCH_COUNT; i++) checksum += ref.parse(slots.views[i]).dcidBytes;
  });
  const single = (parsers.singleIndex << RESULT_WORDS_SHIFT) + WORD_FIELD +
    Field.quicDcidBytes;
  g.bench.add("wasm per-packet", () => {
    for (let i = 0; i < BATCH_COUNT; i++) {
      e.quic_header_parse(slots.offsets[i], slots.lengths[i], 0);
      checksum += words[single];
    }
  });
  g.bench.add("wasm batch", () => {
    describeAll(slots, Kind.quicHeader);
    e.batch_parse(BATCH_COUNT);
    for (let i = 0; i < BATCH_COUNT; i++) {
      checksum += words[(i << RESULT_WORDS_SHIFT) + WORD_FIELD + Field.quicDcidBytes];
    }
  });
  return g;
}

// QUIC Initial: full decryption + ClientHello. "cached keys" reuses the connection's context
// (a retransmission); "new DCID" derives keys with HKDF each time (a new connection).
function initialGroup(): Group {
  const count = 16;
  const g = group("quic initial (wasm)", "cached keys", count);
  const initials = quicInitialFixtures.filter((f) => f.packets.length === 1)
    .map((f) => f.packets[0]);
  const slots = placeSlots(initials);
  g.bench.add("cached keys", () => {
    for (let i = 0; i < count; i++) checksum += e.quic_initial_parse(slots.offsets[i],
      slots.lengths[i]);
  });
  g.bench.add("new DCID", () => {
    for (let i = 0; i < count; i++) {
      e.quic_contexts_reset();
      checksum += e.quic_initial_parse(slots.offsets[i], slots.lengths[i]);
    }
  });
  const hello = clientHello({ sni: "bench.example", alpn: ["h3"], paddingBytes: 1400 });
  const pair = multiInitial(0x00000001, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), hello, 2);
  const pairSlots = { offsets: new Uint32Array(2), lengths: new Uint32Array(2) };
  for (let i = 0; i < 2; i++) {
    // After the single Initials' 16 slots, so both sets stay in place.
    pairSlots.offsets[i] = parsers.place(pair[i], (count + i) * SLOT_BYTES);
    pairSlots.lengths[i] = pair[i].length;
  }
  g.bench.add("hello over 2 Initials", () => {
    for (let i = 0; i < count; i += 2) {
      e.quic_contexts_reset();
      checksum += e.quic_initial_parse(pairSlots.offsets[0], pairSlots.lengths[0]);
      checksum += e.quic_initial_parse(pairSlots.offsets[1], pairSlots.lengths[1]);
    }
  });
  return g;
}

// TLS ClientHello over TCP, one buffer per call.
function tlsGroup(): Group {
  const g = group("tls hello (wasm)", "per-packet");
  const records = tlsRecords(clientHello({ sni: "bench.example", alpn: ["h2", "http/1.1"] }));
  const slots = placeSlots([records]);
  g.bench.add("per-packet", () => {
    for (let i = 0; i < BATCH_COUNT; i++) checksum += e.tls_parse(slots.offsets[i],
      slots.lengths[i]);
  });
  g.bench.add("batch", () => {
    describeAll(slots, Kind.tls);
    e.batch_parse(BATCH_COUNT);
    for (let i = 0; i < BATCH_COUNT; i++) {
      checksum += words[(i << RESULT_WORDS_SHIFT) + WORD_CODE];
    }
  });
  return g;
}

const groups = [dnsGroup, quicGroup, initialGroup, tlsGroup];

export interface ParserRow {
  group: string;
  task: string;
  baseline: boolean;
  nsPerPacket: number;
  p99NsPerPacket: number;
}

/** Runs every parser group once; ns per packet for each task, and the results' checksum. */
export async function runParsers(small: boolean): Promise<{ rows: ParserRow[]; checksum: number }> {
  timeMs = small ? TIME_MS.small : TIME_MS.full;
  warmupMs = small ? WARMUP_MS.small : WARMUP_MS.full;
  checksum = 0;
  const rows: ParserRow[] = [];
  for (const setup of groups) {
    const g = setup();
    await g.bench.run();
    for (const task of g.bench.tasks) {
      const r = task.result;
      if (!("latency" in r)) throw new Error(`${g.name} ${task.name}: ${r.state}`);
      rows.push({ group: g.name, task: task.name, baseline: task.name === g.baseline,
        nsPerPacket: r.latency.mean * 1e6 / g.count, p99NsPerPacket: r.latency.p99 * 1e6 / g.count });
    }
  }
  return { rows, checksum: checksum >>> 0 };
}

if (import.meta.main) {
  const small = process.argv.includes("--small");
  const { rows, checksum: sum } = await runParsers(small);
  console.log(`parsers bench: ${small ? "small" : "full"} run, ${timeMs} ms per task, ` +
    `${BATCH_COUNT} packets per iteration (quic initial: 16), Bun ${Bun.version}`);
  console.log("group                 task                   ns/pkt    p99 ns/pkt  ratio");
  for (const row of rows) {
    const base = rows.find((r) => r.group === row.group && r.baseline)!.nsPerPacket;
    console.log(`${row.group.padEnd(21)} ${row.task.padEnd(22)} ` +
      `${row.nsPerPacket.toFixed(1).padStart(8)}  ${row.p99NsPerPacket.toFixed(1).padStart(10)}  ` +
      `${(row.nsPerPacket / base).toFixed(2).padStart(5)}`);
  }
  console.log(`checksum ${sum}`);
}
