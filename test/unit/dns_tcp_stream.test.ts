// DNS over TCP read per message (src/dns/tcp_stream.ts), without sockets: a fake host
// whose "sockets" are byte queues (the streams' recv/send go through bun:ffi pointers,
// which the fake reads and writes with toArrayBuffer), and whose poller records what
// each socket is armed for. The framing across reads, pipelining, answers in place,
// answers out of order, the in-flight bound and the deadlines, each on its own.
import { describe, expect, test } from "bun:test";
import { type Pointer, toArrayBuffer } from "bun:ffi";
import {
  type DnsTcpHost,
  DnsTcpStreams,
  MessageBuffer,
  QUERIES_IN_FLIGHT_MAX,
  type QueryRecord,
  UPSTREAMS_MAX,
} from "../../src/dns/tcp_stream.ts";
import type { DnsAnswerConfig, OutboundConfig } from "../../src/policy/config.ts";
import { ACTION_DNS_ANSWER, ACTION_DROP, ACTION_REJECT } from "../../src/policy/config.ts";
import { E } from "../../src/sys/errno.ts";
import { TcpCounters } from "../../src/tcp/relay.ts";

const CLIENT_FD = 10;
const UPSTREAM_FD = 20;
const TOKEN_BASE = 1000;

/** A query for `name` (type A) with its 2-byte length prefix. */
function framed(id: number, name: string, flags = 0x0100, type = 1): Uint8Array {
  const labels = name.split(".").flatMap((l) => [l.length, ...Buffer.from(l)]);
  const m = [id >> 8, id & 0xff, flags >> 8, flags & 0xff, 0, 1, 0, 0, 0, 0, 0, 0];
  m.push(...labels, 0, type >> 8, type & 0xff, 0, 1);
  return Uint8Array.from([m.length >> 8, m.length & 0xff, ...m]);
}

/** The framed answer to framed query q: QR set, one A record 198.18.1.<last>. */
function answerTo(q: Uint8Array, last: number): Uint8Array {
  const m = [...q.subarray(2)];
  m[2] |= 0x80;
  m[3] = 0x80;
  m[7] = 1;
  m.push(0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 1, last);
  return Uint8Array.from([m.length >> 8, m.length & 0xff, ...m]);
}

/** Cuts a byte stream into its framed messages. */
function messages(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at + 2 <= bytes.length; ) {
    const n = (bytes[at] << 8) | bytes[at + 1];
    out.push(bytes.subarray(at + 2, at + 2 + n));
    at += 2 + n;
  }
  return out;
}

class FakeSocket {
  /** Chunks the next recv() calls return, one per call. */
  readonly incoming: Uint8Array[] = [];
  sent: number[] = [];
  /** Bytes send() takes before EAGAIN (Infinity: all). */
  sendRoom = Number.POSITIVE_INFINITY;
  eof = false;
  closed: "" | "fin" | "reset" = "";
  get sentBytes(): Uint8Array {
    return Uint8Array.from(this.sent);
  }
}

/** The fake host: policy by name, one forward outbound (action 0) and one dnsAnswer. */
class FakeHost implements DnsTcpHost {
  readonly counters = new TcpCounters();
  readonly sockets = new Map<number, FakeSocket>();
  readonly armed = new Map<number, string>();
  readonly records: Array<{ name: string | null; reason: number; rcode: number }> = [];
  readonly released: number[] = [];
  readonly rules = new Map<string, number>(); // name -> action (default: 0, forward)
  idleMs = 1000;
  readonly answer: DnsAnswerConfig = {
    name: "blocked",
    rcode: 3,
    addr4: null,
    addr6: null,
    ttlS: 60,
  };

  /** levelTriggered: the TCP Worker's poller (a socket stays armed after its wake-up). */
  constructor(readonly levelTriggered = false) {
    this.sockets.set(CLIENT_FD, new FakeSocket());
  }

  get client(): FakeSocket {
    return this.sockets.get(CLIENT_FD)!;
  }
  get upstream(): FakeSocket {
    return this.sockets.get(UPSTREAM_FD)!;
  }

  readonly lib = {
    rl_tcp_recv: (fd: number, p: Pointer, cap: number) => {
      const s = this.sockets.get(fd)!;
      const chunk = s.incoming.shift();
      if (chunk === undefined) return s.eof ? 0 : -E.EAGAIN;
      const n = Math.min(cap, chunk.length);
      new Uint8Array(toArrayBuffer(p, 0, cap)).set(chunk.subarray(0, n));
      if (n < chunk.length) s.incoming.unshift(chunk.subarray(n));
      return n;
    },
    rl_tcp_send: (fd: number, p: Pointer, n: number) => {
      const s = this.sockets.get(fd)!;
      const w = Math.min(n, s.sendRoom);
      if (w === 0) return -E.EAGAIN;
      s.sendRoom -= w;
      s.sent.push(...new Uint8Array(toArrayBuffer(p, 0, w)));
      return w;
    },
    rl_tcp_abort: (fd: number) => {
      this.sockets.get(fd)!.closed = "reset";
      return 0;
    },
    rl_close: (fd: number) => {
      this.sockets.get(fd)!.closed = "fin";
      return 0;
    },
    rl_tcp_connect_result: (_fd: number) => 0,
  } as unknown as DnsTcpHost["lib"];

  readonly poller = {
    add: (fd: number) => this.arm(fd, "in"),
    rearm: (fd: number) => this.arm(fd, "in"),
    readsOnly: (fd: number) => this.arm(fd, "in"),
    armOut: (fd: number) => this.arm(fd, "out"),
    armBoth: (fd: number) => this.arm(fd, "both"),
    remove: (fd: number) => {
      this.armed.delete(fd);
      return 0;
    },
  } as unknown as DnsTcpHost["poller"];

  private arm(fd: number, what: string): number {
    this.armed.set(fd, what);
    return 0;
  }

  idleTimeoutMs = () => this.idleMs;
  connectTimeoutMs = () => 5000;
  decide = (_id: number, name: string | null) => this.rules.get(name ?? "") ?? 0;
  actionOf = (_id: number, rule: number) => rule;
  answerOf = (_id: number, _action: number) => this.answer;
  outboundOf = (_id: number, _action: number) =>
    ({ name: "resolver", type: "forward" }) as OutboundConfig;
  chooseTarget = (_id: number, _action: number, after: number) => (after < 0 ? 0 : -1);
  connect = (_id: number, _action: number, _target: number) => {
    this.sockets.set(UPSTREAM_FD, new FakeSocket());
    return UPSTREAM_FD;
  };
  targetFailed = () => {};
  targetSucceeded = () => {};
  handToSocks = () => {};
  release = (id: number) => {
    this.released.push(id);
  };
  recording = () => true;
  record = (_id: number, r: QueryRecord) => {
    this.records.push({ name: r.name, reason: r.reason, rcode: r.rcode });
  };
}

const CLIENT_TOKEN = 0; // slot 0's client
const UPSTREAM_TOKEN = 1; // slot 0's first upstream

/** A stream (connection id 3) on the fake host; wake() delivers a one-shot wake-up. */
function setUp() {
  const host = new FakeHost();
  const streams = new DnsTcpStreams(host, 4, 16, TOKEN_BASE);
  expect(streams.start(3, CLIENT_FD, 0)).toBe(true);
  const wake = (token: number, nowMs: number) => {
    // One-shot: the socket is no longer armed once its wake-up is taken.
    host.armed.delete(token === CLIENT_TOKEN ? CLIENT_FD : UPSTREAM_FD);
    streams.onWake(token, nowMs);
  };
  return { host, streams, wake };
}

describe("MessageBuffer", () => {
  test("a message is whole only with its prefix and every byte; memory comes as used", () => {
    const b = new MessageBuffer();
    expect(b.bytes.length).toBe(0);
    const q = framed(7, "x.test");
    b.append(q, 0, 1);
    expect(b.declaredLength()).toBe(-1);
    b.append(q, 1, 5);
    expect(b.declaredLength()).toBe(q.length - 2);
    expect(b.messageLength()).toBe(-1);
    b.append(q, 6, q.length - 6);
    expect(b.messageLength()).toBe(q.length - 2);
    expect(b.bytes.length).toBeLessThanOrEqual(512);
    b.consume(q.length);
    expect(b.pending).toBe(0);
  });

  test("a 64 KiB message grows it to fit; emptied, that memory is let go", () => {
    const b = new MessageBuffer();
    const big = new Uint8Array(2 + 65_535);
    big[0] = 0xff;
    big[1] = 0xff;
    for (let at = 0; at < big.length; at += 4096) {
      b.append(big, at, Math.min(4096, big.length - at));
    }
    expect(b.messageLength()).toBe(65_535);
    b.consume(big.length);
    expect(b.bytes.length).toBe(0);
  });
});

describe("DNS over TCP streams", () => {
  test("a query split across reads, then two in one read: each decided, sent whole", () => {
    const { host, wake } = setUp();
    host.rules.set("ads.test", ACTION_DNS_ANSWER); // dnsAnswer outbound 0
    const q1 = framed(1, "x.test");
    const q2 = framed(2, "ads.test");
    const q3 = framed(3, "y.test");
    // The prefix itself split, then the rest of q1 with q2 and q3 in one chunk.
    host.client.incoming.push(q1.subarray(0, 1));
    wake(CLIENT_TOKEN, 1);
    expect(host.counters.dnsTcpQueries).toBe(0);
    host.client.incoming.push(Uint8Array.from([...q1.subarray(1), ...q2, ...q3]));
    wake(CLIENT_TOKEN, 2);
    expect(host.counters.dnsTcpQueries).toBe(3);
    // Forwarded: queued while the upstream connects, sent whole once it is writable.
    expect(host.armed.get(UPSTREAM_FD)).toBe("out");
    wake(UPSTREAM_TOKEN, 3);
    expect(messages(host.upstream.sentBytes)).toEqual([q1.subarray(2), q3.subarray(2)]);
    // Answered in place: same ID and question, QR and NXDOMAIN.
    const [local] = messages(host.client.sentBytes);
    expect([local[0], local[1], local[2] & 0x80, local[3] & 0x0f]).toEqual([0, 2, 0x80, 3]);
    expect(host.counters.dnsTcpAnsweredLocally).toBe(1);
    expect(host.counters.dnsTcpForwarded).toBe(2);
  });

  test("answers out of order reach the client whole, by ID; a stray one is dropped", () => {
    const { host, wake } = setUp();
    const q1 = framed(0x1111, "a.test");
    const q2 = framed(0x2222, "b.test");
    host.client.incoming.push(Uint8Array.from([...q1, ...q2]));
    wake(CLIENT_TOKEN, 1);
    wake(UPSTREAM_TOKEN, 2);
    const a1 = answerTo(q1, 1);
    const a2 = answerTo(q2, 2);
    const stray = answerTo(framed(0x3333, "c.test"), 3);
    // q2's answer first, in pieces, with a stray answer between.
    const wire = Uint8Array.from([...a2, ...stray, ...a1]);
    host.upstream.incoming.push(wire.subarray(0, 5), wire.subarray(5, 40), wire.subarray(40));
    host.client.sendRoom = 10; // the client takes 10 bytes now, the rest later
    for (let k = 0; k < 3; k++) wake(UPSTREAM_TOKEN, 3);
    expect(host.armed.get(CLIENT_FD)).toBe("both");
    host.client.sendRoom = Number.POSITIVE_INFINITY;
    wake(CLIENT_TOKEN, 4);
    expect(messages(host.client.sentBytes)).toEqual([a2.subarray(2), a1.subarray(2)]);
    expect(host.counters.dnsTcpAnswered).toBe(2);
    expect(host.counters.dnsTcpAnswersUnmatched).toBe(1);
    expect(host.records.map((r) => [r.name, r.rcode])).toEqual([
      ["b.test", 0],
      ["a.test", 0],
    ]);
  });

  test("malformed: under 12 bytes, an answer, no question: counted, reset", () => {
    for (const bad of [
      Uint8Array.from([0, 5, 1, 2, 3, 4, 5]),
      framed(9, "x.test", 0x8100),
      (() => {
        const q = framed(9, "x.test");
        q[2 + 5] = 0; // QDCOUNT 0
        return q;
      })(),
    ]) {
      const { host, streams, wake } = setUp();
      host.client.incoming.push(bad);
      wake(CLIENT_TOKEN, 1);
      expect(host.counters.dnsTcpMalformed).toBe(1);
      expect(host.client.closed).toBe("reset");
      expect(host.released).toEqual([3]);
      expect(streams.active).toBe(0);
    }
  });

  test("drop ignores the query; reject resets the connection", () => {
    const { host, wake } = setUp();
    host.rules.set("drop.test", ACTION_DROP);
    host.rules.set("reject.test", ACTION_REJECT);
    host.client.incoming.push(framed(1, "drop.test"));
    wake(CLIENT_TOKEN, 1);
    expect(host.counters.dnsTcpDropped).toBe(1);
    expect(host.client.closed).toBe("");
    host.client.incoming.push(framed(2, "reject.test"));
    wake(CLIENT_TOKEN, 2);
    expect(host.counters.dnsTcpRejected).toBe(1);
    expect(host.client.closed).toBe("reset");
  });

  test("the in-flight bound: the rest waits in the relay until answers make room", () => {
    const { host, wake } = setUp();
    const queries = Array.from({ length: QUERIES_IN_FLIGHT_MAX + 8 }, (_, i) =>
      framed(i + 1, `q${i}.test`),
    );
    host.client.incoming.push(Uint8Array.from(queries.flatMap((q) => [...q])));
    wake(CLIENT_TOKEN, 1);
    wake(UPSTREAM_TOKEN, 2);
    expect(messages(host.upstream.sentBytes)).toHaveLength(QUERIES_IN_FLIGHT_MAX);
    // Full: the client is not read (not armed for it) until answers come.
    expect(host.armed.get(CLIENT_FD)).toBeUndefined();
    host.upstream.incoming.push(answerTo(queries[0], 1));
    wake(UPSTREAM_TOKEN, 3);
    expect(messages(host.upstream.sentBytes)).toHaveLength(QUERIES_IN_FLIGHT_MAX + 1);
    expect(host.armed.get(CLIENT_FD)).toBeUndefined();
    // Room for all of the rest: sent, and the client is read again.
    const answers = queries.slice(1, 9).flatMap((q, i) => [...answerTo(q, i)]);
    host.upstream.incoming.push(Uint8Array.from(answers));
    wake(UPSTREAM_TOKEN, 4);
    expect(messages(host.upstream.sentBytes)).toHaveLength(queries.length);
    expect(host.armed.get(CLIENT_FD)).toBe("in");
  });

  test("a length prefix, then silence: closed at the idle deadline as incomplete", () => {
    const { host, streams, wake } = setUp();
    host.client.incoming.push(Uint8Array.from([0, 40]));
    wake(CLIENT_TOKEN, 10);
    streams.tick(10 + host.idleMs - 1);
    expect(host.client.closed).toBe("");
    streams.tick(10 + host.idleMs);
    expect(host.counters.dnsTcpIncomplete).toBe(1);
    expect(host.client.closed).toBe("reset");
    expect(streams.active).toBe(0);
  });

  test("idle with nothing asked: a FIN; half-closed after its answers: a FIN too", () => {
    const { host, streams } = setUp();
    streams.tick(host.idleMs);
    expect(host.counters.dnsTcpIdleClosed).toBe(1);
    expect(host.client.closed).toBe("fin");

    const second = setUp();
    const q = framed(5, "x.test");
    second.host.client.incoming.push(q);
    second.host.client.eof = true;
    second.wake(CLIENT_TOKEN, 1);
    second.wake(UPSTREAM_TOKEN, 2);
    expect(second.host.client.closed).toBe("");
    second.host.upstream.incoming.push(answerTo(q, 5));
    second.wake(UPSTREAM_TOKEN, 3);
    expect(messages(second.host.client.sentBytes)).toHaveLength(1);
    second.wake(CLIENT_TOKEN, 4); // its FIN
    expect(second.host.client.closed).toBe("fin");
    expect(second.host.upstream.closed).toBe("fin");
  });

  test("a zone transfer: every message of its answer; the upstream's close ends it", () => {
    const { host, streams, wake } = setUp();
    const q = framed(7, "zone.test", 0x0100, 252); // AXFR
    host.client.incoming.push(q);
    wake(CLIENT_TOKEN, 1);
    wake(UPSTREAM_TOKEN, 2);
    host.upstream.incoming.push(Uint8Array.from([...answerTo(q, 1), ...answerTo(q, 2)]));
    wake(UPSTREAM_TOKEN, 3);
    expect(messages(host.client.sentBytes)).toHaveLength(2);
    expect(host.records).toHaveLength(1); // one record per query
    host.upstream.eof = true;
    wake(UPSTREAM_TOKEN, 4);
    expect(host.upstream.closed).toBe("fin");
    expect(host.client.closed).toBe("");
    // Nothing awaited: at the idle deadline it closes as idle, not as a timeout.
    streams.tick(4 + host.idleMs);
    expect(host.counters.dnsTcpIdleClosed).toBe(1);
    expect(host.client.closed).toBe("fin");
  });

  test("past UPSTREAMS_MAX upstreams the connection is reset", () => {
    const { host, wake } = setUp();
    // Each query names another action (outbound): one upstream each.
    for (let k = 0; k <= UPSTREAMS_MAX; k++) host.rules.set(`u${k}.test`, k);
    let fd = UPSTREAM_FD;
    host.connect = () => {
      host.sockets.set(++fd, new FakeSocket());
      return fd;
    };
    const wire = Array.from({ length: UPSTREAMS_MAX + 1 }, (_, k) => [
      ...framed(k + 1, `u${k}.test`),
    ]).flat();
    host.client.incoming.push(Uint8Array.from(wire));
    wake(CLIENT_TOKEN, 1);
    expect(host.counters.dnsTcpUpstreamsExceeded).toBe(1);
    expect(host.client.closed).toBe("reset");
  });
});

describe("DNS over TCP streams on a level-triggered poller (tcp.dataPlane worker)", () => {
  test("armed across wake-ups; back to reads after a flush; off while wanted for nothing", () => {
    const host = new FakeHost(true);
    const streams = new DnsTcpStreams(host, 4, 16, TOKEN_BASE);
    expect(streams.start(3, CLIENT_FD, 0)).toBe(true);
    // Level-triggered: a wake-up leaves the socket armed (no delete, unlike setUp's).
    const wake = (token: number, nowMs: number) => streams.onWake(token, nowMs);
    const q1 = framed(0x1111, "a.test");
    host.client.incoming.push(q1);
    host.client.eof = true; // the client half-closes with its query awaited
    wake(CLIENT_TOKEN, 1); // a short read: the query, not yet the EOF
    expect(host.armed.get(CLIENT_FD)).toBe("in");
    wake(CLIENT_TOKEN, 1); // still readable: the EOF
    // Its EOF would be reported again and again: the client leaves the poller until an
    // answer is to be written.
    expect(host.armed.has(CLIENT_FD)).toBe(false);
    expect(host.armed.get(UPSTREAM_FD)).toBe("out");
    wake(UPSTREAM_TOKEN, 2); // connected: the query goes, the answer is awaited
    expect(host.armed.get(UPSTREAM_FD)).toBe("in");
    host.upstream.incoming.push(answerTo(q1, 1));
    host.client.sendRoom = 10; // the client takes 10 bytes now, the rest later
    wake(UPSTREAM_TOKEN, 3);
    expect(host.armed.get(CLIENT_FD)).toBe("out"); // back on the poller, for the rest
    host.client.sendRoom = Number.POSITIVE_INFINITY;
    wake(CLIENT_TOKEN, 4);
    expect(messages(host.client.sentBytes)).toEqual([answerTo(q1, 1).subarray(2)]);
    // Every answer written and the client gone: the stream ends with a FIN.
    expect(host.client.closed).toBe("fin");
    expect(host.released).toEqual([3]);
  });
});
