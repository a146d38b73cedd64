// DNS over TCP read per message (docs/dns_tcp.md): a connection on tcp.dnsPorts is not
// spliced as bytes; its messages (RFC 1035 4.2.2 / RFC 7766: a 2-byte length, then the
// message; several per connection, pipelined) are read here, and each query is decided
// by the policy on its name, as UDP queries are (src/dns/forwarder.ts):
//
//   client --query--> parse, decide --dnsAnswer--> answered in place (shared builder)
//                                   --forward/direct--> an upstream TCP connection
//                                   --drop--> ignored; --reject--> the connection reset
//                                   --socks5--> (first query only) the whole connection
//                                               to the per-connection path, bytes kept
//   upstream --answer (framed)--> matched by ID and question --> the client, whole
//
// Everything is non-blocking on the TCP relay's Poller: one token per socket (client,
// then at most UPSTREAMS_MAX upstreams), each armed one-shot for what the stream needs
// now (read, write, or both), and re-armed after every wake-up (sync()).
//
// Bounds: tcp.dnsConnectionsMax streams (past it, the relay splices the connection as
// bytes); QUERIES_IN_FLIGHT_MAX queries per stream; PENDING_BYTES_HIGH bytes waiting to
// be sent stops reading the side that produces them (back-pressure); buffers grow with
// use (one message is at most 65537 bytes; all of a stream's under 512 KiB at worst) and
// are dropped when empty; a stream with no progress for tcp.dnsIdleTimeoutMs is closed.
import { type Pointer, ptr } from "../sys/ffi.ts";
import type { DnsAnswerConfig, OutboundConfig } from "../policy/config.ts";
import { ACTION_DNS_ANSWER, ACTION_DROP, ACTION_REJECT } from "../policy/config.ts";
import { E } from "../sys/errno.ts";
import type { RelayLib } from "../sys/ffi.ts";
import type { Poller } from "../sys/poller.ts";
import { TcpEnd } from "../tcp/layout.ts";
import {
  LOCAL_ANSWER_RECORD_BYTES,
  parseQuestion,
  Question,
  questionName,
  writeLocalAnswer,
} from "./forwarder.ts";

/** A message's 2-byte length prefix. */
const PREFIX_BYTES = 2;
/** A DNS header: anything shorter is not a message. */
const HEADER_BYTES = 12;
/**
 * Queries of one connection waiting for their answers. RFC 7766 lets a client pipeline;
 * real ones keep a handful in flight. Reaching it stops reading the client (its queries
 * wait in its socket), which bounds the per-connection table and what is sent upstream.
 */
export const QUERIES_IN_FLIGHT_MAX = 32;
/**
 * Upstream connections of one client connection: queries decided differently (forced,
 * direct, another outbound) need one each. Two covers a forced resolver plus a direct
 * exception; a query needing a third resets the connection (counted): a client that
 * mixes that many resolvers on one connection is not one this relay must serve.
 */
export const UPSTREAMS_MAX = 2;
/**
 * Bytes waiting to be sent (to the client, or to the upstreams) past which the relay
 * stops reading the side that produces them: a client that does not read its answers
 * stops its upstreams' reads, and then its own queries' (and closes at the idle deadline).
 */
const PENDING_BYTES_HIGH = 64 << 10;
/** Bytes read per recv(); one buffer shared by every stream (JavaScript is one thread). */
const RECV_BYTES = 16 << 10;
/** recv() calls per wake-up and socket: the rest waits for the next wake-up (fairness). */
const RECVS_MAX = 4;
/** A buffer's first size: most DNS messages fit; larger ones grow it to their size. */
const BUFFER_BYTES_MIN = 512;
/** An emptied buffer larger than this is dropped (a big answer does not pin memory). */
const BUFFER_BYTES_KEEP = 4096;
/** Sockets (poller tokens) per stream: the client, then its upstreams. */
export const DNS_TCP_TOKENS_PER_STREAM = 1 + UPSTREAMS_MAX;
/** Question types whose answer spans several messages (zone transfers). */
const TYPE_IXFR = 251;
const TYPE_AXFR = 252;

const EMPTY = new Uint8Array(0);

/**
 * One direction of a DNS-over-TCP stream: bytes received and not yet consumed (cut into
 * whole messages), or bytes to send and not yet sent. Grows as used, never past what
 * the caller appends; memory is let go when it empties.
 */
export class MessageBuffer {
  bytes: Uint8Array = EMPTY;
  start = 0;
  end = 0;
  private pointer: Pointer | null = null;

  get pending(): number {
    return this.end - this.start;
  }

  /** The next message's length (its prefix excluded) if all of it is here, else -1. */
  messageLength(): number {
    const n = this.declaredLength();
    return n >= 0 && this.pending >= PREFIX_BYTES + n ? n : -1;
  }

  /** The next message's length prefix, or -1 when its 2 bytes are not here yet. */
  declaredLength(): number {
    if (this.pending < PREFIX_BYTES) return -1;
    return (this.bytes[this.start] << 8) | this.bytes[this.start + 1];
  }

  append(source: Uint8Array, at: number, n: number): void {
    if (this.end + n > this.bytes.length) this.makeRoom(n);
    this.bytes.set(source.subarray(at, at + n), this.end);
    this.end += n;
  }

  consume(n: number): void {
    this.start += n;
    if (this.start < this.end) return;
    this.start = this.end = 0;
    if (this.bytes.length > BUFFER_BYTES_KEEP) this.clear();
  }

  /** The address of byte `offset` of `bytes`, for C (own ArrayBuffer: it never moves). */
  address(offset: number): Pointer {
    if (this.pointer === null) this.pointer = ptr(this.bytes);
    return (this.pointer + offset) as Pointer;
  }

  clear(): void {
    this.bytes = EMPTY;
    this.pointer = null;
    this.start = this.end = 0;
  }

  private makeRoom(n: number): void {
    const pending = this.pending;
    if (pending + n <= this.bytes.length) {
      this.bytes.copyWithin(0, this.start, this.end);
    } else {
      const size = Math.max(
        BUFFER_BYTES_MIN,
        pending + n,
        Math.min(2 * this.bytes.length, 1 << 17),
      );
      const grown = new Uint8Array(new ArrayBuffer(size));
      grown.set(this.bytes.subarray(this.start, this.end));
      this.bytes = grown;
      this.pointer = null;
    }
    this.start = 0;
    this.end = pending;
  }
}

/** What the TCP relay lends the streams (src/tcp/relay.ts implements it). */
export interface DnsTcpHost {
  readonly lib: RelayLib;
  readonly poller: Poller;
  /**
   * The poller is level-triggered (the TCP Worker, tcp.dataPlane "worker"): a socket
   * stays armed after a wake-up, and one wanted for nothing leaves the poller.
   */
  readonly levelTriggered: boolean;
  readonly counters: DnsTcpCounters;
  idleTimeoutMs(): number;
  connectTimeoutMs(): number;
  /** Decides a query of connection `id` asking `name`: the rule (its name and rule kept). */
  decide(id: number, name: string | null): number;
  /** The action of `rule` for connection `id` (its policy generation). */
  actionOf(id: number, rule: number): number;
  answerOf(id: number, action: number): DnsAnswerConfig;
  outboundOf(id: number, action: number): OutboundConfig;
  /**
   * forward: the connection's target (after < 0), or the next target that is up after
   * `after` (-1: none). Not forward: -1.
   */
  chooseTarget(id: number, action: number, after: number): number;
  /**
   * Opens the upstream of `action` (target: a forward target, else -1: the original
   * destination), non-blocking: its fd, -1 (no descriptor: give up) or -2 (this target
   * failed: counted against it; another may do). Logged.
   */
  connect(id: number, action: number, target: number): number;
  targetFailed(id: number, action: number, target: number): void;
  targetSucceeded(id: number, action: number, target: number, connectMs: number): void;
  /** The first query said socks5: the connection leaves, `early` bytes to the server first. */
  handToSocks(id: number, clientFd: number, action: number, early: Uint8Array): void;
  /** The connection ended here (its descriptors are closed): free its id. */
  release(id: number): void;
  /** Whether query records are kept (the flow log is on). */
  recording(): boolean;
  record(id: number, r: QueryRecord): void;
}

/** The counters the streams bump (TcpCounters has them all). */
export interface DnsTcpCounters {
  dnsTcpConnections: number;
  dnsTcpOverLimit: number;
  dnsTcpQueries: number;
  dnsTcpForwarded: number;
  dnsTcpDirect: number;
  dnsTcpAnswered: number;
  dnsTcpAnsweredLocally: number;
  dnsTcpDropped: number;
  dnsTcpRejected: number;
  dnsTcpSocks5: number;
  dnsTcpSocks5NotFirst: number;
  dnsTcpUpstreamsExceeded: number;
  dnsTcpUpstreamFailed: number;
  dnsTcpAnswersUnmatched: number;
  dnsTcpMalformed: number;
  dnsTcpIncomplete: number;
  dnsTcpStalled: number;
  dnsTcpTimedOut: number;
  dnsTcpIdleClosed: number;
  dnsTcpClientResets: number;
  connected: number;
  connectMsTotal: number;
  connectRefused: number;
  connectTimeouts: number;
  connectFailed: number;
}

/** Where a query's answer came from, for its record. */
export const RESOLVER_NONE = -1;
export const RESOLVER_ORIGINAL = -2;

/** One query's flow record, filled by the streams and written by the host. */
export class QueryRecord {
  reason: TcpEnd = TcpEnd.DnsAnswered;
  rule = -1;
  action = 0;
  name: string | null = null;
  qtype = 0;
  /** The answer's rcode, or -1: none. */
  rcode = -1;
  bytesUp = 0;
  bytesDown = 0;
  /** performance.now() when the query was read. */
  startMs = 0;
  /** A forward target's index, RESOLVER_ORIGINAL or RESOLVER_NONE. */
  resolver = RESOLVER_NONE;
}

/** A query sent upstream and not answered yet. */
class Pending {
  upstream = 0;
  id = 0;
  hash = 0;
  type = 0;
  name: string | null = null;
  rule = 0;
  action = 0;
  bytes = 0;
  startMs = 0;
  /** A zone transfer already answered once (more messages may follow). */
  answered = false;
}

const enum UpState {
  None = 0,
  Connecting = 1,
  Open = 2,
}

class Upstream {
  state = UpState.None;
  fd = -1;
  action = 0;
  /** forward: the target's index; -1: the original destination. */
  target = -1;
  retried = false;
  connectStartMs = 0;
  /** Events armed (ARM_*), 0 after a one-shot wake-up. */
  armed = 0;
  readonly input = new MessageBuffer();
  readonly output = new MessageBuffer();
}

class Stream {
  /** The relay's connection id; -1: the slot is free. */
  id = -1;
  clientFd = -1;
  armed = 0;
  clientEof = false;
  lastProgressMs = 0;
  /** Queries decided so far (a socks5 decision counts only for the first). */
  decided = 0;
  readonly input = new MessageBuffer();
  readonly output = new MessageBuffer();
  readonly pending: Pending[] = [];
  readonly upstreams: Upstream[] = [];
  constructor() {
    for (let u = 0; u < UPSTREAMS_MAX; u++) this.upstreams.push(new Upstream());
  }
}

const ARM_IN = 1;
const ARM_OUT = 2;

/** How a stream ends: FIN to the client (all said), or RST (garbage, failure). */
const enum Close {
  Fin = 0,
  Reset = 1,
}

export class DnsTcpStreams {
  private readonly streams: Array<Stream | null>;
  private readonly freeSlots: Int32Array;
  private freeCount: number;
  /** Slot of each relay connection id handled here (-1: none). */
  private readonly slotOf: Int32Array;
  private readonly recv = new Uint8Array(new ArrayBuffer(RECV_BYTES));
  private readonly recvPtr: Pointer;
  /** A local answer is built here: the query's header and question, then the record. */
  private readonly answer = new Uint8Array(
    new ArrayBuffer(PREFIX_BYTES + 65_535 + LOCAL_ANSWER_RECORD_BYTES),
  );
  private readonly answerPtr: Pointer;
  private readonly q = new Question();
  private readonly answerQ = new Question();
  private readonly rec = new QueryRecord();
  private stopping = false;

  constructor(
    private readonly host: DnsTcpHost,
    readonly streamsMax: number,
    connectionsMax: number,
    /** The poller token of slot 0's client; slot s uses tokenBase + s * 3 + 0..2. */
    private readonly tokenBase: number,
  ) {
    this.streams = new Array<Stream | null>(streamsMax).fill(null);
    this.freeSlots = new Int32Array(streamsMax);
    for (let i = 0; i < streamsMax; i++) this.freeSlots[i] = streamsMax - 1 - i;
    this.freeCount = streamsMax;
    this.slotOf = new Int32Array(connectionsMax).fill(-1);
    this.recvPtr = ptr(this.recv);
    this.answerPtr = ptr(this.answer);
  }

  /** Streams open now. */
  get active(): number {
    return this.streamsMax - this.freeCount;
  }

  /**
   * Takes accepted connection `id` (its client socket) to be read per message. False:
   * tcp.dnsConnectionsMax streams are open (counted): the caller relays it as bytes.
   */
  start(id: number, clientFd: number, nowMs: number): boolean {
    const c = this.host.counters;
    if (this.freeCount === 0 || this.stopping) {
      c.dnsTcpOverLimit++;
      return false;
    }
    const slot = this.freeSlots[--this.freeCount];
    let s = this.streams[slot];
    if (s === null) {
      s = new Stream();
      this.streams[slot] = s;
    }
    s.id = id;
    s.clientFd = clientFd;
    s.clientEof = false;
    s.lastProgressMs = nowMs;
    s.decided = 0;
    s.armed = ARM_IN;
    this.slotOf[id] = slot;
    c.dnsTcpConnections++;
    const rc = this.host.poller.add(clientFd, this.tokenBase + slot * DNS_TCP_TOKENS_PER_STREAM);
    if (rc < 0) {
      // The poller refused it (memory): give the slot back, the caller relays it as bytes.
      this.slotOf[id] = -1;
      s.id = -1;
      this.freeSlots[this.freeCount++] = slot;
      c.dnsTcpConnections--;
      c.dnsTcpOverLimit++;
      return false;
    }
    return true;
  }

  /** A stream's socket is ready (token - tokenBase). */
  onWake(token: number, nowMs: number): void {
    const slot = Math.floor(token / DNS_TCP_TOKENS_PER_STREAM);
    const which = token - slot * DNS_TCP_TOKENS_PER_STREAM;
    const s = this.streams[slot];
    if (s === null || s.id < 0) return; // ended since the wake-up was queued
    const oneShot = !this.host.levelTriggered;
    if (which === 0) {
      if (oneShot) s.armed = 0;
      if (s.output.pending > 0 && !this.flushClient(s, nowMs)) return;
      if (this.wantsClient(s) && !this.readClient(s, nowMs)) return;
    } else {
      const up = s.upstreams[which - 1];
      if (up.state === UpState.None) return;
      if (oneShot) up.armed = 0;
      if (!this.upstreamReady(s, which - 1, nowMs)) return;
    }
    // Whole queries held back by the in-flight bound go now that answers made room:
    // they are already read, so no wake-up of the client would bring them.
    if (s.pending.length < QUERIES_IN_FLIGHT_MAX && s.input.messageLength() >= 0) {
      if (!this.readQueries(s, nowMs)) return;
    }
    this.settle(s, slot);
  }

  /** From the relay's timer: idle and stalled streams, slow connects. */
  tick(nowMs: number): void {
    if (this.freeCount === this.streamsMax) return;
    const idleMs = this.host.idleTimeoutMs();
    const connectMs = this.host.connectTimeoutMs();
    const c = this.host.counters;
    for (let slot = 0; slot < this.streamsMax; slot++) {
      const s = this.streams[slot];
      if (s === null || s.id < 0) continue;
      let ended = false;
      for (let u = 0; u < UPSTREAMS_MAX && !ended; u++) {
        const up = s.upstreams[u];
        if (up.state === UpState.Connecting && nowMs - up.connectStartMs >= connectMs) {
          c.connectTimeouts++;
          ended = !this.connectFailed(s, u, nowMs);
        }
      }
      if (ended) continue;
      const waiting = awaited(s);
      if (this.stopping && !waiting && s.output.pending === 0) {
        this.end(s, Close.Fin);
        continue;
      }
      if (nowMs - s.lastProgressMs < idleMs) continue;
      // Nothing moved for tcp.dnsIdleTimeoutMs: say why in the counters.
      // Answers the client does not take come first: its input may end mid-message only
      // because the relay stopped reading it.
      if (s.output.pending > 0) c.dnsTcpStalled++;
      else if (s.input.pending > 0) c.dnsTcpIncomplete++;
      else if (waiting) c.dnsTcpTimedOut++;
      else {
        c.dnsTcpIdleClosed++;
        this.end(s, Close.Fin);
        continue;
      }
      this.end(s, Close.Reset);
    }
  }

  /** At stop: streams with nothing in flight close now, the rest as they finish. */
  stop(): void {
    this.stopping = true;
    this.tick(performance.now());
  }

  /** Past the shutdown grace period (or at close): every stream is reset. */
  abortAll(onAbort: () => void): void {
    for (const s of this.streams) {
      if (s === null || s.id < 0) continue;
      onAbort();
      this.end(s, Close.Reset);
    }
  }

  // ---- the client ----

  private wantsClient(s: Stream): boolean {
    if (s.clientEof || this.stopping || s.pending.length >= QUERIES_IN_FLIGHT_MAX) return false;
    if (s.output.pending >= PENDING_BYTES_HIGH) return false;
    let upstreamBytes = 0;
    for (const up of s.upstreams) upstreamBytes += up.output.pending;
    return upstreamBytes < PENDING_BYTES_HIGH;
  }

  /** Reads the client's queries and acts on the whole ones. False: the stream ended. */
  private readClient(s: Stream, nowMs: number): boolean {
    for (let k = 0; k < RECVS_MAX && this.wantsClient(s); k++) {
      const n = this.host.lib.rl_tcp_recv(s.clientFd, this.recvPtr, RECV_BYTES);
      if (n === -E.EAGAIN) break;
      if (n < 0) {
        this.host.counters.dnsTcpClientResets++;
        this.end(s, Close.Reset);
        return false;
      }
      if (n === 0) {
        s.clientEof = true;
        break;
      }
      s.lastProgressMs = nowMs;
      s.input.append(this.recv, 0, n);
      if (!this.readQueries(s, nowMs)) return false;
      if (n < RECV_BYTES) break;
    }
    return true;
  }

  /** Acts on each whole query in the client's input (in-flight bound allowing). */
  private readQueries(s: Stream, nowMs: number): boolean {
    const input = s.input;
    for (;;) {
      const declared = input.declaredLength();
      if (declared < 0) return true;
      if (declared < HEADER_BYTES) {
        this.host.counters.dnsTcpMalformed++;
        this.end(s, Close.Reset);
        return false;
      }
      if (input.messageLength() < 0) return true;
      if (s.pending.length >= QUERIES_IN_FLIGHT_MAX) return true; // read on after answers
      if (!this.query(s, input.start, declared, nowMs)) return false;
      input.consume(PREFIX_BYTES + declared);
    }
  }

  /**
   * One whole query, its prefix at `at` in the client's input (`length` bytes after it).
   * False: the stream ended or left (socks5).
   */
  private query(s: Stream, at: number, length: number, nowMs: number): boolean {
    const host = this.host;
    const c = host.counters;
    const bytes = s.input.bytes;
    const m = at + PREFIX_BYTES;
    const q = this.q;
    if ((bytes[m + 2] & 0x80) !== 0 || !parseQuestion(bytes, m, length, q)) {
      c.dnsTcpMalformed++; // an answer, no single question, a name that does not parse
      this.end(s, Close.Reset);
      return false;
    }
    c.dnsTcpQueries++;
    const name = questionName(bytes, m);
    const rule = host.decide(s.id, name);
    const action = host.actionOf(s.id, rule);
    const first = s.decided++ === 0;
    const r = this.rec;
    r.rule = rule;
    r.action = action;
    r.name = name;
    r.qtype = q.type;
    r.rcode = -1;
    r.bytesUp = length;
    r.bytesDown = 0;
    r.startMs = nowMs;
    r.resolver = RESOLVER_NONE;
    if (action === ACTION_DROP) {
      c.dnsTcpDropped++;
      this.record(s, TcpEnd.Dropped);
      return true;
    }
    if (action === ACTION_REJECT) {
      c.dnsTcpRejected++;
      this.record(s, TcpEnd.Rejected);
      this.end(s, Close.Reset);
      return false;
    }
    if (action <= ACTION_DNS_ANSWER) return this.answerLocally(s, m, action, nowMs);
    const o = host.outboundOf(s.id, action);
    if (o.type === "socks5") {
      if (!first) {
        // The connection already has per-message upstreams: it cannot become one tunnel.
        c.dnsTcpSocks5NotFirst++;
        this.end(s, Close.Reset);
        return false;
      }
      c.dnsTcpSocks5++;
      // A copy on its own ArrayBuffer: C reads it (send) after this stream is gone.
      const early = new Uint8Array(new ArrayBuffer(s.input.end - at));
      early.set(s.input.bytes.subarray(at, s.input.end));
      const id = s.id;
      const fd = s.clientFd;
      this.detach(s);
      host.handToSocks(id, fd, action, early);
      return false;
    }
    // In the table before its upstream exists: if none can be had, the stream ends and
    // records this query as unanswered with the rest.
    const p = new Pending();
    p.upstream = -1;
    p.id = (bytes[m] << 8) | bytes[m + 1];
    p.hash = q.hash;
    p.type = q.type;
    p.name = name;
    p.rule = rule;
    p.action = action;
    p.bytes = length;
    p.startMs = nowMs;
    s.pending.push(p);
    const u = this.upstreamFor(s, action, nowMs);
    if (u < 0) return false;
    p.upstream = u;
    if (o.type === "forward") c.dnsTcpForwarded++;
    else c.dnsTcpDirect++;
    const up = s.upstreams[u];
    if (up.state === UpState.Open && up.output.pending === 0) {
      const w = host.lib.rl_tcp_send(up.fd, s.input.address(at), PREFIX_BYTES + length);
      if (w === PREFIX_BYTES + length) return true;
      if (w < 0 && w !== -E.EAGAIN) return this.upstreamLost(s, u);
      const sent = Math.max(w, 0);
      up.output.append(bytes, at + sent, PREFIX_BYTES + length - sent);
      return true;
    }
    up.output.append(bytes, at, PREFIX_BYTES + length);
    return true;
  }

  /** A dnsAnswer outbound's answer to the query at `m` (parsed into this.q). */
  private answerLocally(s: Stream, m: number, action: number, nowMs: number): boolean {
    const c = this.host.counters;
    const a = this.host.answerOf(s.id, action);
    const out = this.answer;
    const q = this.q;
    out.set(s.input.bytes.subarray(m, m + q.end), PREFIX_BYTES);
    const n = writeLocalAnswer(out, PREFIX_BYTES, q, a);
    out[0] = n >>> 8;
    out[1] = n & 0xff;
    c.dnsTcpAnsweredLocally++;
    this.rec.rcode = a.rcode;
    this.rec.bytesDown = n;
    this.record(s, TcpEnd.DnsAnsweredLocally);
    return this.toClient(s, out, null, 0, PREFIX_BYTES + n, nowMs);
  }

  /**
   * Sends a whole framed message to the client, or queues what the socket does not take
   * (after anything queued before: messages never interleave). `from`: the buffer that
   * holds `bytes`, else `bytes` is this.answer. False: the stream ended.
   */
  private toClient(
    s: Stream,
    bytes: Uint8Array,
    from: MessageBuffer | null,
    at: number,
    n: number,
    nowMs: number,
  ): boolean {
    let sent = 0;
    if (s.output.pending === 0) {
      const address = from !== null ? from.address(at) : ((this.answerPtr + at) as Pointer);
      const w = this.host.lib.rl_tcp_send(s.clientFd, address, n);
      if (w < 0 && w !== -E.EAGAIN) {
        this.host.counters.dnsTcpClientResets++;
        this.end(s, Close.Reset);
        return false;
      }
      if (w > 0) {
        sent = w;
        s.lastProgressMs = nowMs;
      }
      if (sent === n) return true;
    }
    s.output.append(bytes, at + sent, n - sent);
    return true;
  }

  /** Sends what is queued for the client. False: the stream ended. */
  private flushClient(s: Stream, nowMs: number): boolean {
    const out = s.output;
    const w = this.host.lib.rl_tcp_send(s.clientFd, out.address(out.start), out.pending);
    if (w === -E.EAGAIN) return true;
    if (w < 0) {
      this.host.counters.dnsTcpClientResets++;
      this.end(s, Close.Reset);
      return false;
    }
    s.lastProgressMs = nowMs;
    out.consume(w);
    return true;
  }

  // ---- upstreams ----

  /** The upstream for `action` (opened on first use), or -1 (the stream ended). */
  private upstreamFor(s: Stream, action: number, nowMs: number): number {
    let free = -1;
    for (let u = 0; u < UPSTREAMS_MAX; u++) {
      const up = s.upstreams[u];
      if (up.state !== UpState.None && up.action === action) return u;
      if (up.state === UpState.None && free < 0) free = u;
    }
    if (free < 0) {
      this.host.counters.dnsTcpUpstreamsExceeded++;
      this.end(s, Close.Reset);
      return -1;
    }
    const up = s.upstreams[free];
    up.action = action;
    up.retried = false;
    const target = this.host.chooseTarget(s.id, action, -1);
    return this.open(s, free, target, nowMs) ? free : -1;
  }

  /** Connects upstream u to `target`; a failed target is retried once on the next one up. */
  private open(s: Stream, u: number, target: number, nowMs: number): boolean {
    const up = s.upstreams[u];
    const host = this.host;
    for (;;) {
      const fd = host.connect(s.id, up.action, target);
      if (fd >= 0) {
        up.fd = fd;
        up.target = target;
        up.state = UpState.Connecting;
        up.connectStartMs = nowMs;
        up.armed = ARM_OUT;
        const token = this.tokenBase + this.slotOf[s.id] * DNS_TCP_TOKENS_PER_STREAM + 1 + u;
        if (host.poller.armOut(fd, token, true) === 0) return true;
        host.lib.rl_close(fd);
        up.fd = -1;
        up.state = UpState.None;
        break;
      }
      if (fd === -2 && target >= 0 && !up.retried) {
        up.retried = true;
        target = host.chooseTarget(s.id, up.action, target);
        if (target >= 0) continue;
      }
      break;
    }
    host.counters.dnsTcpUpstreamFailed++;
    this.end(s, Close.Reset);
    return false;
  }

  /** Upstream u is ready: connected, writable or readable. False: the stream ended. */
  private upstreamReady(s: Stream, u: number, nowMs: number): boolean {
    const up = s.upstreams[u];
    const lib = this.host.lib;
    if (up.state === UpState.Connecting) {
      const rc = lib.rl_tcp_connect_result(up.fd);
      if (rc < 0) {
        const c = this.host.counters;
        if (rc === -E.ECONNREFUSED) c.connectRefused++;
        else c.connectFailed++;
        return this.connectFailed(s, u, nowMs);
      }
      up.state = UpState.Open;
      const c = this.host.counters;
      c.connected++;
      this.host.targetSucceeded(s.id, up.action, up.target, nowMs - up.connectStartMs);
    }
    if (up.output.pending > 0) {
      const out = up.output;
      const w = lib.rl_tcp_send(up.fd, out.address(out.start), out.pending);
      if (w < 0 && w !== -E.EAGAIN) return this.upstreamLost(s, u);
      if (w > 0) out.consume(w);
    }
    if (s.output.pending >= PENDING_BYTES_HIGH) return true; // the client reads first
    for (let k = 0; k < RECVS_MAX; k++) {
      const n = lib.rl_tcp_recv(up.fd, this.recvPtr, RECV_BYTES);
      if (n === -E.EAGAIN) break;
      if (n <= 0) return this.upstreamLost(s, u);
      up.input.append(this.recv, 0, n);
      if (!this.readAnswers(s, u, nowMs)) return false;
      if (n < RECV_BYTES || s.output.pending >= PENDING_BYTES_HIGH) break;
    }
    return true;
  }

  /** Each whole answer from upstream u goes to the client, whole. False: the stream ended. */
  private readAnswers(s: Stream, u: number, nowMs: number): boolean {
    const input = s.upstreams[u].input;
    const c = this.host.counters;
    for (;;) {
      const length = input.messageLength();
      if (length < 0) return true;
      const at = input.start;
      const k = length >= HEADER_BYTES ? this.matchAnswer(s, u, input.bytes, at, length) : -1;
      if (k < 0) {
        c.dnsTcpAnswersUnmatched++;
        input.consume(PREFIX_BYTES + length);
        continue;
      }
      const p = s.pending[k];
      c.dnsTcpAnswered++;
      if (!p.answered) {
        const r = this.rec;
        r.rule = p.rule;
        r.action = p.action;
        r.name = p.name;
        r.qtype = p.type;
        r.rcode = input.bytes[at + PREFIX_BYTES + 3] & 0x0f;
        r.bytesUp = p.bytes;
        r.bytesDown = length;
        r.startMs = p.startMs;
        const target = s.upstreams[u].target;
        r.resolver = target >= 0 ? target : RESOLVER_ORIGINAL;
        this.record(s, TcpEnd.DnsAnswered);
      }
      // A zone transfer's answer spans messages: its query stays until the stream ends.
      if (p.type === TYPE_AXFR || p.type === TYPE_IXFR) p.answered = true;
      else s.pending.splice(k, 1);
      if (!this.toClient(s, input.bytes, input, at, PREFIX_BYTES + length, nowMs)) return false;
      input.consume(PREFIX_BYTES + length);
    }
  }

  /**
   * The query upstream u's answer (prefix at `at`) belongs to: same ID, QR set, and the
   * same question (or none: some errors carry no question). -1: none (a stray answer).
   */
  private matchAnswer(s: Stream, u: number, bytes: Uint8Array, at: number, length: number) {
    const m = at + PREFIX_BYTES;
    if ((bytes[m + 2] & 0x80) === 0) return -1;
    const id = (bytes[m] << 8) | bytes[m + 1];
    const noQuestion = bytes[m + 4] === 0 && bytes[m + 5] === 0;
    const q = this.answerQ;
    const parsed = !noQuestion && parseQuestion(bytes, m, length, q);
    for (let k = 0; k < s.pending.length; k++) {
      const p = s.pending[k];
      if (p.upstream !== u || p.id !== id) continue;
      if (noQuestion || (parsed && q.hash === p.hash)) return k;
    }
    return -1;
  }

  /** Upstream u's connect failed: counted against its target; the next one tried once. */
  private connectFailed(s: Stream, u: number, nowMs: number): boolean {
    const up = s.upstreams[u];
    const host = this.host;
    host.poller.remove(up.fd);
    host.lib.rl_tcp_abort(up.fd);
    up.fd = -1;
    up.state = UpState.None;
    up.input.clear();
    if (up.target >= 0) {
      host.targetFailed(s.id, up.action, up.target);
      if (!up.retried) {
        up.retried = true;
        const next = host.chooseTarget(s.id, up.action, up.target);
        // The queries queued for it (up.output) go to the next target as they are.
        if (next >= 0) return this.open(s, u, next, nowMs);
      }
    }
    host.counters.dnsTcpUpstreamFailed++;
    this.end(s, Close.Reset);
    return false;
  }

  /**
   * Upstream u closed or failed: with queries of its own in flight the client cannot
   * get their answers (reset, counted: it asks again); otherwise it just closes.
   */
  private upstreamLost(s: Stream, u: number): boolean {
    const unanswered = s.pending.some((p) => p.upstream === u && !p.answered);
    if (unanswered || s.upstreams[u].output.pending > 0) {
      this.host.counters.dnsTcpUpstreamFailed++;
      this.end(s, Close.Reset);
      return false;
    }
    // A zone transfer the upstream ended by closing: its query goes with it.
    for (let k = s.pending.length - 1; k >= 0; k--) {
      if (s.pending[k].upstream === u) s.pending.splice(k, 1);
    }
    this.closeUpstream(s.upstreams[u], false);
    return true;
  }

  private closeUpstream(up: Upstream, reset: boolean): void {
    if (up.state !== UpState.None) {
      this.host.poller.remove(up.fd);
      if (reset) this.host.lib.rl_tcp_abort(up.fd);
      else this.host.lib.rl_close(up.fd);
    }
    up.fd = -1;
    up.state = UpState.None;
    up.armed = 0;
    up.input.clear();
    up.output.clear();
  }

  // ---- arming and ending ----

  /**
   * After a wake-up: a half-closed client with nothing left ends the stream; otherwise
   * each socket is armed for what the stream needs from it now.
   */
  private settle(s: Stream, slot: number): void {
    if (s.clientEof && s.pending.length === 0 && s.output.pending === 0) {
      // A message cut off by the client's FIN never completes.
      if (s.input.pending > 0) this.host.counters.dnsTcpIncomplete++;
      this.end(s, Close.Fin);
      return;
    }
    const base = this.tokenBase + slot * DNS_TCP_TOKENS_PER_STREAM;
    // One-shot, a socket wanted for nothing is simply not re-armed.
    const off = this.host.levelTriggered ? -1 : 0;
    const client = (this.wantsClient(s) ? ARM_IN : 0) | (s.output.pending > 0 ? ARM_OUT : 0);
    if (client !== off && client !== s.armed) {
      this.arm(s.clientFd, base, client, s.armed);
      s.armed = client;
    }
    for (let u = 0; u < UPSTREAMS_MAX; u++) {
      const up = s.upstreams[u];
      if (up.state === UpState.None) continue;
      let want = ARM_OUT;
      if (up.state === UpState.Open) {
        want =
          (s.output.pending < PENDING_BYTES_HIGH ? ARM_IN : 0) |
          (up.output.pending > 0 ? ARM_OUT : 0);
      }
      if (want !== off && want !== up.armed) {
        this.arm(up.fd, base + 1 + u, want, up.armed);
        up.armed = want;
      }
    }
  }

  /**
   * Arms a socket for ARM_IN, ARM_OUT or both (one-shot: registered, disarmed by its
   * wake-up). Level-triggered, `had` is what it is armed for now, and 0 (wanted for
   * nothing, which would wake us again and again: a client's EOF, bytes held back)
   * takes it off the poller until it is wanted again.
   */
  private arm(fd: number, token: number, events: number, had: number): void {
    const poller = this.host.poller;
    if (this.host.levelTriggered) {
      if (events === 0) {
        poller.remove(fd);
        return;
      }
      if (had === 0) {
        poller.add(fd, token); // back on the poller, for reads
        if (events === ARM_IN) return;
      }
      if (events === ARM_IN) {
        poller.readsOnly(fd, token); // writability off again
        return;
      }
    }
    if (events === ARM_IN) poller.rearm(fd, token);
    else if (events === ARM_OUT) poller.armOut(fd, token, false);
    else poller.armBoth(fd, token);
  }

  private record(s: Stream, reason: TcpEnd): void {
    if (!this.host.recording()) return;
    this.rec.reason = reason;
    this.host.record(s.id, this.rec);
  }

  /** Ends stream s: its queries unanswered are recorded, every socket closed. */
  private end(s: Stream, how: Close): void {
    const host = this.host;
    if (host.recording()) {
      const r = this.rec;
      for (const p of s.pending) {
        if (p.answered) continue;
        r.rule = p.rule;
        r.action = p.action;
        r.name = p.name;
        r.qtype = p.type;
        r.rcode = -1;
        r.bytesUp = p.bytes;
        r.bytesDown = 0;
        r.startMs = p.startMs;
        r.resolver = RESOLVER_NONE;
        this.record(s, TcpEnd.DnsUnanswered);
      }
    }
    const id = s.id;
    const fd = s.clientFd;
    this.detach(s);
    if (how === Close.Reset) host.lib.rl_tcp_abort(fd);
    else host.lib.rl_close(fd);
    host.release(id);
  }

  /** Frees stream s's slot and upstreams; the client's socket is the caller's. */
  private detach(s: Stream): void {
    const slot = this.slotOf[s.id];
    this.host.poller.remove(s.clientFd);
    for (const up of s.upstreams) this.closeUpstream(up, s.pending.length > 0);
    s.pending.length = 0;
    s.input.clear();
    s.output.clear();
    this.slotOf[s.id] = -1;
    s.id = -1;
    s.clientFd = -1;
    s.armed = 0;
    this.freeSlots[this.freeCount++] = slot;
  }
}

/** Whether stream s has queries whose answer has not come (a zone transfer's first did). */
function awaited(s: Stream): boolean {
  for (const p of s.pending) if (!p.answered) return true;
  return false;
}
