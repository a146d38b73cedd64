// The forced DNS forwarder (src/dns/forwarder.ts): its question parser (what it takes as
// a query, and that an answer's question matches its query's whatever the name's case),
// and how it tells a late answer from a spoofed one.
import { describe, expect, test } from "bun:test";
import {
  DnsForwarder,
  type DnsPlane,
  parseQuestion,
  questionName,
} from "../../src/dns/forwarder.ts";
import { ForwardTargets } from "../../src/egress/outbounds.ts";
import { UdpCounters } from "../../src/metrics.ts";
import { parseEndpoint } from "../../src/policy/config.ts";
import { META, META_WORDS } from "../../src/sys/layout.ts";
import { Direction, type SendQueue } from "../../src/udp/send_queue.ts";

/** A DNS message: header (id, flags, qdcount), then the question name's labels, type, class. */
function message(id: number, flags: number, labels: string[], type = 1, qdcount = 1): Uint8Array {
  const name = labels.flatMap((l) => [l.length, ...Buffer.from(l)]);
  return Uint8Array.from([
    id >> 8,
    id & 0xff,
    flags >> 8,
    flags & 0xff,
    0,
    qdcount,
    0,
    0,
    0,
    0,
    0,
    0,
    ...name,
    0,
    type >> 8,
    type & 0xff,
    0,
    1,
  ]);
}

type Question = DnsForwarder["question"];
const fresh = (): Question => ({ hash: 0, end: 0, type: 0 }) as Question;

describe("forced DNS: the question", () => {
  test("a query's question: its hash, type, end, and its name lowercased", () => {
    const q = fresh();
    const m = message(0x1234, 0x0100, ["WWW", "Example", "test"], 28);
    expect(parseQuestion(m, 0, m.length, q)).toBe(true);
    expect(q.type).toBe(28);
    expect(q.end).toBe(m.length);
    expect(questionName(m, 0)).toBe("www.example.test");
    // The answer's question in another case (0x20 randomization) is the same question.
    const a = fresh();
    const answer = message(0x1234, 0x8180, ["www", "EXAMPLE", "Test"], 28);
    expect(parseQuestion(answer, 0, answer.length, a)).toBe(true);
    expect(a.hash).toBe(q.hash);
  });

  test("another name or type is another question", () => {
    const hashes = [
      message(1, 0x0100, ["a", "test"]),
      message(1, 0x0100, ["b", "test"]),
      message(1, 0x0100, ["a", "test"], 28),
      message(1, 0x0100, ["atest"]),
    ].map((m) => {
      const q = fresh();
      expect(parseQuestion(m, 0, m.length, q)).toBe(true);
      return q.hash;
    });
    expect(new Set(hashes).size).toBe(hashes.length);
  });

  test("no question, two, a pointer, a truncated name or type: not a query", () => {
    const q = fresh();
    const two = message(1, 0x0100, ["a", "test"], 1, 2);
    expect(parseQuestion(two, 0, two.length, q)).toBe(false);
    const none = message(1, 0x0100, ["a", "test"], 1, 0);
    expect(parseQuestion(none, 0, none.length, q)).toBe(false);
    const m = message(1, 0x0100, ["a", "test"]);
    for (let length = 0; length < m.length; length++) {
      expect(parseQuestion(m, 0, length, q)).toBe(false);
    }
    const pointer = Uint8Array.from([...m.subarray(0, 12), 0xc0, 0x0c, 0, 1, 0, 1]);
    expect(parseQuestion(pointer, 0, pointer.length, q)).toBe(false);
    const long = message(1, 0x0100, [Array(64).fill("x").join("")]);
    expect(parseQuestion(long, 0, long.length, q)).toBe(false);
  });
});

/**
 * A forwarder over a fake data plane: one resolver (198.18.1.5:53), replies with
 * IP_PKTINFO (no reply socket), sends only recorded. Slot 0 holds queries, slot 1 answers.
 */
function forwarderLab() {
  const slotBytes = 512;
  const bytes = new Uint8Array(2 * slotBytes);
  const meta32 = new Uint32Array(2 * META_WORDS);
  const sent: number[] = []; // the ID of each datagram sent to the resolver
  const queue = {
    queued: 0,
    capacity: 256,
    // Direction, fd, address (4 words), port, scope, then the datagram's slab offset.
    push(direction: Direction, ...args: number[]) {
      const offset = args[7];
      if (direction === Direction.ToTarget) sent.push((bytes[offset] << 8) | bytes[offset + 1]);
    },
    // fd, address (4 words), port, then the datagram's slab offset: to the resolver.
    toConnected(...args: number[]) {
      const offset = args[6];
      sent.push((bytes[offset] << 8) | bytes[offset + 1]);
    },
    toClientFrom() {},
    flush() {},
  };
  const counters = new UdpCounters();
  const plane = {
    lib: { rl_socket: () => 100, rl_udp_connect: () => 0, rl_close: () => 0 },
    counters,
    bytes,
    slabAt: 0,
    slotBytes,
    meta32,
    meta16: new Uint16Array(meta32.buffer),
    queue,
    listenerFd: Int32Array.of(3),
    mark: 0,
    bind4: new Uint8Array(16),
    bind6: new Uint8Array(16),
    socketReceiveBytes: 0,
    socketSendBytes: 0,
    register: () => 1,
    unregister() {},
    log() {},
    flows: null,
    generation: () => 0,
  } as unknown as DnsPlane;
  const forwarder = new DnsForwarder(plane, 4, 1, 4, () => queue as unknown as SendQueue);
  const targets = new ForwardTargets({
    name: "resolver",
    type: "forward",
    targets: [parseEndpoint("198.18.1.5:53")!],
    healthCheck: { answerTimeoutMs: 300, failuresMax: 3, retryIntervalMs: 1000 },
  });
  const key = new Uint32Array(9);
  key[8] = ((40000 << 16) | 53) >>> 0; // client port 40000, original port 53
  return {
    counters,
    sent,
    /** A query for `labels` from the client, forced to the resolver at time `now`. */
    query(labels: string[], now: number) {
      const m = message(0x1234, 0x0100, labels);
      bytes.set(m, 0);
      expect(parseQuestion(bytes, 0, m.length, forwarder.question)).toBe(true);
      const decision = { rule: 0, outbound: 0, name: null };
      forwarder.forward(decision, targets, 0, key, 0, 0, false, true, 0, m.length, now);
    },
    /** The resolver's answer with `id` for `labels`, received at `now`. */
    answer(id: number, labels: string[], now: number) {
      const m = message(id, 0x8180, labels);
      bytes.set(m, slotBytes);
      const w = META_WORDS;
      for (let k = 0; k < 4; k++) meta32[w + META.sourceAddrWord + k] = targets.words[k];
      new Uint16Array(meta32.buffer)[w * 2 + META.sourcePortHalf] = 53;
      meta32[w + META.lengthWord] = m.length;
      forwarder.fromResolvers(0, 1, 1, now);
    },
    expire: (now: number) => forwarder.expire(now, () => {}),
  };
}

describe("forced DNS: answers that come too late or from nowhere", () => {
  test("an answer after its query timed out (no retry) is late, not spoofed", () => {
    const lab = forwarderLab();
    lab.query(["late", "test"], 0);
    expect(lab.sent.length).toBe(1);
    lab.expire(1000); // the only resolver: nothing to retry on, given up
    expect(lab.counters.dnsQueriesTimedOut).toBe(1);
    lab.answer(lab.sent[0], ["late", "test"], 1100);
    expect(lab.counters.dnsAnswersLate).toBe(1);
    expect(lab.counters.dnsAnswersSpoofed).toBe(0);
    expect(lab.counters.dnsAnswersRelayed).toBe(0);
  });

  test("an answer with an ID never sent is spoofed; the right one is relayed", () => {
    const lab = forwarderLab();
    lab.query(["x", "test"], 0);
    lab.answer(lab.sent[0] ^ 0x5a5a, ["x", "test"], 10);
    expect(lab.counters.dnsAnswersSpoofed).toBe(1);
    lab.answer(lab.sent[0], ["x", "test"], 20);
    expect(lab.counters.dnsAnswersRelayed).toBe(1);
    // Answered, its ID is free again: the same answer once more is spoofed, not late.
    lab.answer(lab.sent[0], ["x", "test"], 30);
    expect(lab.counters.dnsAnswersSpoofed).toBe(2);
    expect(lab.counters.dnsAnswersLate).toBe(0);
  });
});
