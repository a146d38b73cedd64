// The forced DNS resolver on UDP (docs/dns.md): a query on udp.dnsPorts that the policy
// sends to a `forward` outbound opens no session. It leaves on one of a small, fixed set
// of upstream sockets per resolver (udp.dnsUpstreamSocketsPerTarget) with its ID
// remapped to a free one of that socket; the answer is matched by socket and ID, checked
// against the question (a spoofed or late answer is dropped and counted), given back its
// ID and sent to the client from the original destination. Nothing of the query stays
// after its answer. An unanswered query is retried once on the next resolver that is up.
//
// All state is allocated at start: the in-flight table (udp.dnsQueriesInFlightMax
// entries, each with a copy of its query for the retry) and, per upstream socket, an
// ID -> entry map and a ring of free IDs (shuffled once; freed IDs go to the back, so an
// ID is reused as late as possible and a late answer rarely meets a new query).
import { type Pointer, ptr, type RelayLib } from "../sys/ffi.ts";
import { randomFillSync } from "node:crypto";
import type { ForwardTargets } from "../egress/outbounds.ts";
import { V4_MAPPED_WORD } from "../flow/local_targets.ts";
import type { ReplyPool } from "../egress/reply_pool.ts";
import { type FlowRecords, REPLY_PKTINFO, REPLY_SOCKET } from "../flow/flow_records.ts";
import { EndReason, PROTOCOL_DNS } from "../flow/table.ts";
import type { UdpCounters } from "../metrics.ts";
import type { DnsAnswerConfig } from "../policy/config.ts";
import { decodeSocketError, describeSocketError, errnoName } from "../sys/errno.ts";
import { META, META_WORDS, SOCK } from "../sys/layout.ts";
import { Direction, type SendQueue } from "../udp/send_queue.ts";

/** Bytes of a query kept for its retry; a longer query is not retried. */
const QUERY_COPY_BYTES = 512;
const IDS = 65536;
const HEADER_BYTES = 12;
/** acquireReply(): no reply socket could be had. */
const NO_REPLY = -2;
/** Retries sent per flush of the retry queue. */
const RETRY_BATCH = 256;

/** What the forwarder needs of the UDP data plane (its slab, queue and reply paths). */
export interface DnsPlane {
  lib: RelayLib;
  counters: UdpCounters;
  /** The receive slab as wasm memory bytes, and where the slab starts in it. */
  bytes: Uint8Array;
  slabAt: number;
  slotBytes: number;
  meta32: Uint32Array;
  meta16: Uint16Array;
  queue: SendQueue;
  replies: ReplyPool;
  listenerFd: Int32Array;
  mark: number;
  bind4: Uint8Array;
  bind6: Uint8Array;
  socketReceiveBytes: number;
  socketSendBytes: number;
  /** Registers an upstream socket (its ref: the socket index): the token, or -1. */
  register: (fd: number, socket: number) => number;
  unregister: (token: number) => void;
  log: (reason: string, message: string) => void;
  /** The flow log's buffer (null: off): one record per query, ended here. */
  flows: FlowRecords | null;
  /** The running policy's generation: a record names its rule only if still current. */
  generation: () => number;
}

/** Who decided a query, for its record: rule, outbound (policy index), name, when. */
export interface QueryDecision {
  rule: number;
  outbound: number;
  name: string | null;
}

/**
 * Queries a socket takes in a row before the next socket of its resolver takes over.
 * Not one each: a receive batch's queries then leave in one sendmmsg and their answers
 * come back on one socket (fewer system calls per query); over time every socket, and
 * so every ID space and source port, is still used.
 */
const QUERIES_PER_SOCKET_TURN = 64;

/** The upstream sockets of one resolver: whose turn it is, and how long it has had it. */
interface SocketGroup {
  sockets: number[];
  next: number;
  turnQueries: number;
}

/** A parsed query: its question's hash, where its question ends, and its name. */
export class Question {
  hash = 0;
  end = 0;
  type = 0;
}

/**
 * Parses the DNS message at `at` (length bytes): one question, no compression in it.
 * Fills q (hash over the lowercased name, type and class) and returns true, or false.
 */
export function parseQuestion(bytes: Uint8Array, at: number, length: number, q: Question): boolean {
  if (length < HEADER_BYTES + 5) return false;
  if (bytes[at + 4] !== 0 || bytes[at + 5] !== 1) return false; // QDCOUNT = 1
  const end = at + length;
  let p = at + HEADER_BYTES;
  let hash = 0x811c9dc5;
  let nameBytes = 0;
  for (;;) {
    if (p >= end) return false;
    const label = bytes[p];
    if (label > 63) return false; // a pointer or a reserved label type
    hash = Math.imul(hash ^ label, 0x01000193);
    p++;
    if (label === 0) break;
    nameBytes += label + 1;
    if (nameBytes > 255 || p + label > end) return false;
    for (let k = 0; k < label; k++) {
      let c = bytes[p + k];
      if (c >= 0x41 && c <= 0x5a) c |= 0x20;
      hash = Math.imul(hash ^ c, 0x01000193);
    }
    p += label;
  }
  if (p + 4 > end) return false;
  for (let k = 0; k < 4; k++) hash = Math.imul(hash ^ bytes[p + k], 0x01000193);
  q.hash = hash >>> 0;
  q.type = (bytes[p] << 8) | bytes[p + 1];
  q.end = p + 4 - at;
  return true;
}

/** The question's name at `at` (parsed by parseQuestion), lowercased and dotted. */
export function questionName(bytes: Uint8Array, at: number): string {
  let p = at + HEADER_BYTES;
  let name = "";
  for (let label = bytes[p]; label !== 0; label = bytes[p]) {
    if (name.length > 0) name += ".";
    for (let k = 1; k <= label; k++) {
      let c = bytes[p + k];
      if (c >= 0x41 && c <= 0x5a) c |= 0x20;
      name += String.fromCharCode(c);
    }
    p += label + 1;
  }
  return name;
}

/**
 * Turns the query at `at` (parsed into q) into a dnsAnswer outbound's answer, in place:
 * same ID, question and RD; QR, RA and the rcode; an A/AAAA record when configured for
 * the query's type; no EDNS OPT (cut off). The bytes must have room for q.end + 28 (the
 * record). Returns the answer's length. Shared by UDP (this file) and TCP (tcp_stream.ts).
 */
export function writeLocalAnswer(
  bytes: Uint8Array,
  at: number,
  q: Question,
  a: DnsAnswerConfig,
): number {
  bytes[at + 2] = 0x80 | (bytes[at + 2] & 0x01);
  bytes[at + 3] = 0x80 | a.rcode;
  const record = a.rcode !== 0 ? null : q.type === 1 ? a.addr4 : q.type === 28 ? a.addr6 : null;
  // QDCOUNT 1, ANCOUNT 0 or 1, NSCOUNT 0, ARCOUNT 0 (the query's OPT is cut off).
  bytes.fill(0, at + 6, at + 12);
  let p = at + q.end;
  if (record !== null) {
    bytes[at + 7] = 1;
    const data = q.type === 1 ? record.subarray(12) : record;
    bytes[p++] = 0xc0; // the name: a pointer to the question's
    bytes[p++] = HEADER_BYTES;
    bytes[p++] = 0;
    bytes[p++] = q.type;
    bytes[p++] = 0;
    bytes[p++] = 1; // class IN
    bytes[p++] = a.ttlS >>> 24;
    bytes[p++] = (a.ttlS >>> 16) & 0xff;
    bytes[p++] = (a.ttlS >>> 8) & 0xff;
    bytes[p++] = a.ttlS & 0xff;
    bytes[p++] = 0;
    bytes[p++] = data.length;
    bytes.set(data, p);
    p += data.length;
  }
  return p - at;
}

/** Bytes a local answer may add past its query's question (one AAAA record). */
export const LOCAL_ANSWER_RECORD_BYTES = 28;

export class DnsForwarder {
  readonly question = new Question();
  private readonly answerQuestion = new Question();

  // Upstream sockets, grouped per resolver (address, port).
  private readonly groups = new Map<string, SocketGroup>();
  private readonly groupsOf = new WeakMap<ForwardTargets, Array<SocketGroup | null>>();
  private readonly socketsMax: number;
  private socketCount = 0;
  private readonly sockFd: Int32Array;
  private readonly sockToken: Int32Array;
  /** Per socket: the resolver it talks to (4 words, port). */
  private readonly sockTarget: Uint32Array;
  private readonly sockPort: Uint16Array;
  private readonly idEntry: Int32Array[] = [];
  private readonly idRing: Uint16Array[] = [];
  private readonly idTimedOut: Uint8Array[] = [];
  private readonly ringHead: Int32Array;
  private readonly ringFree: Int32Array;

  // The in-flight table.
  private readonly entriesMax: number;
  private readonly freeEntries: Int32Array;
  private freeCount: number;
  private readonly eSocket: Int32Array;
  private readonly eId: Uint16Array;
  private readonly eOrigId: Uint16Array;
  private readonly eClient: Uint32Array;
  private readonly eClientPort: Uint16Array;
  private readonly eClientScope: Uint32Array;
  private readonly eDest: Uint32Array;
  private readonly eListener: Int32Array;
  private readonly eReply: Int32Array;
  private readonly eHash: Uint32Array;
  private readonly eDeadlineMs: Float64Array;
  private readonly eTarget: Int16Array;
  private readonly eRetried: Uint8Array;
  private readonly eLength: Uint16Array;
  private readonly eTargets: Array<ForwardTargets | null>;
  private readonly eRule: Int16Array;
  private readonly eOutbound: Int16Array;
  private readonly eGeneration: Int32Array;
  private readonly eName: Array<string | null>;
  private readonly eStartMs: Float64Array;
  /** The question's type, for the query log. */
  private readonly eType: Uint16Array;
  /** Per entry: a copy of its query (ID remapped), for the retry. */
  private readonly arena: Uint8Array;
  private readonly retryQueue: SendQueue;

  constructor(
    private readonly plane: DnsPlane,
    entriesMax: number,
    private readonly socketsPerTarget: number,
    socketsMax: number,
    makeQueue: (arenaPtr: Pointer, arenaBytes: number, capacity: number) => SendQueue,
  ) {
    this.entriesMax = entriesMax;
    this.socketsMax = socketsMax;
    this.sockFd = new Int32Array(socketsMax).fill(-1);
    this.sockToken = new Int32Array(socketsMax).fill(-1);
    this.sockTarget = new Uint32Array(socketsMax * 4);
    this.sockPort = new Uint16Array(socketsMax);
    this.ringHead = new Int32Array(socketsMax);
    this.ringFree = new Int32Array(socketsMax);
    this.freeEntries = new Int32Array(entriesMax);
    for (let i = 0; i < entriesMax; i++) this.freeEntries[i] = entriesMax - 1 - i;
    this.freeCount = entriesMax;
    this.eSocket = new Int32Array(entriesMax).fill(-1);
    this.eId = new Uint16Array(entriesMax);
    this.eOrigId = new Uint16Array(entriesMax);
    this.eClient = new Uint32Array(entriesMax * 4);
    this.eClientPort = new Uint16Array(entriesMax);
    this.eClientScope = new Uint32Array(entriesMax);
    this.eDest = new Uint32Array(entriesMax * 5);
    this.eListener = new Int32Array(entriesMax);
    this.eReply = new Int32Array(entriesMax);
    this.eHash = new Uint32Array(entriesMax);
    this.eDeadlineMs = new Float64Array(entriesMax);
    this.eTarget = new Int16Array(entriesMax);
    this.eRetried = new Uint8Array(entriesMax);
    this.eLength = new Uint16Array(entriesMax);
    this.eTargets = new Array(entriesMax).fill(null);
    this.eRule = new Int16Array(entriesMax);
    this.eOutbound = new Int16Array(entriesMax);
    this.eGeneration = new Int32Array(entriesMax);
    this.eName = new Array(entriesMax).fill(null);
    this.eStartMs = new Float64Array(entriesMax);
    this.eType = new Uint16Array(entriesMax);
    this.arena = new Uint8Array(new ArrayBuffer(entriesMax * QUERY_COPY_BYTES));
    this.retryQueue = makeQueue(ptr(this.arena), this.arena.byteLength, RETRY_BATCH);
  }

  get inFlight(): number {
    return this.entriesMax - this.freeCount;
  }

  get sockets(): number {
    return this.socketCount;
  }

  /**
   * The query in receive slot `slot` (parsed into this.question) goes to target t of
   * `f`. The client endpoint and original destination are in `key` (the session key
   * layout: client words 0-3, destination 4-7, ports in 8). replyPktinfo: the answer
   * leaves on the listener with IP_PKTINFO, else on a reply socket bound to the
   * original destination. Returns nothing: every drop is counted.
   */
  forward(
    decision: QueryDecision,
    f: ForwardTargets,
    t: number,
    key: Uint32Array,
    clientScope: number,
    listener: number,
    ipv6: boolean,
    replyPktinfo: boolean,
    slot: number,
    length: number,
    now: number,
  ): void {
    const plane = this.plane;
    const c = plane.counters;
    if (this.freeCount === 0) {
      c.dnsQueriesDroppedInFlightFull++;
      return;
    }
    const sock = this.socketFor(f, t, ipv6);
    if (sock < 0) return; // counted
    const reply = replyPktinfo ? -1 : this.acquireReply(key, listener, ipv6, now);
    if (reply === NO_REPLY) return; // counted by the pool
    const e = this.freeEntries[--this.freeCount];
    const at = plane.slabAt + slot * plane.slotBytes;
    const bytes = plane.bytes;
    this.eOrigId[e] = (bytes[at] << 8) | bytes[at + 1];
    for (let k = 0; k < 4; k++) {
      this.eClient[e * 4 + k] = key[k];
      this.eDest[e * 5 + k] = key[4 + k];
    }
    this.eDest[e * 5 + 4] = key[8] & 0xffff;
    this.eClientPort[e] = key[8] >>> 16;
    this.eClientScope[e] = clientScope;
    this.eListener[e] = listener;
    this.eReply[e] = reply;
    this.eHash[e] = this.question.hash;
    this.eTargets[e] = f;
    this.eRetried[e] = 0;
    this.eRule[e] = decision.rule;
    this.eOutbound[e] = decision.outbound;
    this.eName[e] = decision.name;
    this.eGeneration[e] = plane.generation();
    this.eStartMs[e] = now;
    this.eType[e] = this.question.type;
    this.eLength[e] = length <= QUERY_COPY_BYTES ? length : 0;
    this.bindId(e, sock);
    bytes[at] = this.eId[e] >>> 8;
    bytes[at + 1] = this.eId[e] & 0xff;
    if (this.eLength[e] !== 0) {
      // A byte loop, not set(subarray()): no view allocated per query (GC on the data path).
      const arena = this.arena;
      const to = e * QUERY_COPY_BYTES;
      for (let k = 0; k < length; k++) arena[to + k] = bytes[at + k];
    }
    this.send(plane.queue, e, t, slot * plane.slotBytes, length, now);
    c.dnsQueriesForwarded++;
  }

  /**
   * A dnsAnswer outbound answers the query in receive slot `slot` (parsed into
   * this.question) in place: the reply is built over the query (same ID, question and
   * RD; QR, RA, the rcode; an A/AAAA record when configured for the query's type; no
   * EDNS OPT) and sent from the original destination. Arguments as forward()'s.
   */
  answer(
    decision: QueryDecision,
    a: DnsAnswerConfig,
    key: Uint32Array,
    clientScope: number,
    listener: number,
    ipv6: boolean,
    replyPktinfo: boolean,
    slot: number,
    now: number,
  ): void {
    const plane = this.plane;
    const bytes = plane.bytes;
    const at = plane.slabAt + slot * plane.slotBytes;
    const q = this.question;
    const length = writeLocalAnswer(bytes, at, q, a);
    const reply = replyPktinfo ? -1 : this.acquireReply(key, listener, ipv6, now);
    if (reply === NO_REPLY) return; // counted by the pool
    const offset = slot * plane.slotBytes;
    const clientPort = key[8] >>> 16;
    const flows = plane.flows;
    const r = flows === null ? -1 : flows.reserve();
    if (flows !== null && r < 0) plane.counters.flowLogDropped++;
    if (r >= 0) {
      const row = flows!;
      row.endMs[r] = row.startMs[r] = Date.now();
      for (let k = 0; k < 8; k++) row.addrWords[r * 8 + k] = key[k];
      row.ports[r] = key[8];
      row.listener[r] = listener;
      row.packetsToTarget[r] = 1;
      row.bytesToTarget[r] = q.end;
      row.packetsToClient[r] = 1;
      row.bytesToClient[r] = length;
      row.parsed[r] = PROTOCOL_DNS;
      row.names[r] = decision.name;
      row.reason[r] = EndReason.DnsAnsweredLocally;
      row.reply[r] = reply >= 0 ? REPLY_SOCKET : REPLY_PKTINFO;
      row.rule[r] = decision.rule;
      row.outbound[r] = decision.outbound;
      row.qtype[r] = q.type;
      row.rcode[r] = a.rcode; // no resolver: answered here
    }
    this.sendToClient(reply, listener, key, 0, clientPort, clientScope, key, 4, offset, length);
    // Idle in the pool from now on; it is closed only by a sweep, after this round's sends.
    if (reply >= 0) plane.replies.release(reply, now);
    plane.counters.dnsQueriesAnsweredLocally++;
  }

  /** Answers on upstream socket `sock`, in receive slots first..first+n-1. */
  fromResolvers(sock: number, first: number, n: number, now: number): void {
    const plane = this.plane;
    const c = plane.counters;
    const { meta32, meta16, bytes } = plane;
    const map = this.idEntry[sock];
    const q = this.answerQuestion;
    const st = sock * 4;
    for (let i = first; i < first + n; i++) {
      const w = i * META_WORDS;
      const length = meta32[w + META.lengthWord];
      c.packetsFromTargets++;
      c.bytesFromTargets += meta32[w + META.lengthWireWord];
      if (
        meta16[w * 2 + META.sourcePortHalf] !== this.sockPort[sock] ||
        meta32[w] !== this.sockTarget[st] ||
        meta32[w + 1] !== this.sockTarget[st + 1] ||
        meta32[w + 2] !== this.sockTarget[st + 2] ||
        meta32[w + 3] !== this.sockTarget[st + 3]
      ) {
        c.dnsAnswersSpoofed++; // not from the resolver this socket talks to
        continue;
      }
      const at = plane.slabAt + i * plane.slotBytes;
      if (length < HEADER_BYTES) {
        c.dnsAnswersSpoofed++;
        continue;
      }
      const id = (bytes[at] << 8) | bytes[at + 1];
      const e = map[id];
      if (e < 0) {
        if (this.idTimedOut[sock][id] === 1) c.dnsAnswersLate++;
        else c.dnsAnswersSpoofed++;
        continue;
      }
      if (
        (bytes[at + 2] & 0x80) === 0 ||
        !parseQuestion(bytes, at, length, q) ||
        q.hash !== this.eHash[e]
      ) {
        c.dnsAnswersSpoofed++;
        continue;
      }
      const t = this.eTarget[e];
      this.eTargets[e]!.failures[t] = 0;
      bytes[at] = this.eOrigId[e] >>> 8;
      bytes[at + 1] = this.eOrigId[e] & 0xff;
      this.toClient(e, i * plane.slotBytes, length);
      c.dnsAnswersRelayed++;
      if (plane.flows !== null) {
        this.record(e, EndReason.DnsAnswered, length, now, bytes[at + 3] & 0x0f);
      }
      this.free(e, now, false);
    }
  }

  /**
   * Queries unanswered past their deadline: their resolver failed once (its health);
   * each is retried once on the next resolver that is up, then given up.
   */
  expire(now: number, fail: (f: ForwardTargets, t: number, now: number) => void): void {
    if (this.freeCount === this.entriesMax) return;
    const c = this.plane.counters;
    const q = this.retryQueue;
    for (let e = 0; e < this.entriesMax; e++) {
      if (this.eSocket[e] < 0 || this.eDeadlineMs[e] > now) continue;
      const f = this.eTargets[e]!;
      const t = this.eTarget[e];
      fail(f, t, now);
      const next = this.eRetried[e] === 0 && this.eLength[e] !== 0 ? this.nextUp(f, t, now) : -1;
      const sock = next < 0 ? -1 : this.socketFor(f, next, !isV4(f, next));
      if (sock < 0) {
        c.dnsQueriesTimedOut++;
        if (this.plane.flows !== null) this.record(e, EndReason.DnsTimedOut, 0, now, -1);
        this.free(e, now, true); // its ID remembers it: an answer now is late, not spoofed
        continue;
      }
      this.unbindId(e, true);
      this.bindId(e, sock);
      const at = e * QUERY_COPY_BYTES;
      this.arena[at] = this.eId[e] >>> 8;
      this.arena[at + 1] = this.eId[e] & 0xff;
      this.eRetried[e] = 1;
      if (q.queued === q.capacity) q.flush();
      this.send(q, e, next, at, this.eLength[e], now);
      c.dnsQueriesRetried++;
    }
    q.flush();
  }

  /** Closes every upstream socket (in-flight queries are forgotten). */
  closeAll(): void {
    for (let s = 0; s < this.socketCount; s++) {
      if (this.sockFd[s] < 0) continue;
      this.plane.unregister(this.sockToken[s]);
      this.plane.lib.rl_close(this.sockFd[s]);
      this.sockFd[s] = -1;
    }
  }

  private send(
    queue: SendQueue,
    e: number,
    t: number,
    offset: number,
    length: number,
    now: number,
  ) {
    const f = this.eTargets[e]!;
    const w = t * 4;
    // The socket is connected to this resolver (open): no name, the cached route.
    queue.toConnected(
      this.sockFd[this.eSocket[e]],
      f.words[w],
      f.words[w + 1],
      f.words[w + 2],
      f.words[w + 3],
      f.ports[t],
      offset,
      length,
    );
    this.eTarget[e] = t;
    this.eDeadlineMs[e] = now + f.answerTimeoutMs;
  }

  private toClient(e: number, offset: number, length: number): void {
    this.sendToClient(
      this.eReply[e],
      this.eListener[e],
      this.eClient,
      e * 4,
      this.eClientPort[e],
      this.eClientScope[e],
      this.eDest,
      e * 5,
      offset,
      length,
    );
  }

  /**
   * Queues an answer to the client at client[c..c+4), port, scope: on reply socket
   * `reply`, bound to the original destination, or (reply < 0) on the listener, sent from
   * the original destination dest[d..d+4) with IP_PKTINFO.
   */
  private sendToClient(
    reply: number,
    listener: number,
    client: Uint32Array,
    c: number,
    port: number,
    scope: number,
    dest: Uint32Array,
    d: number,
    offset: number,
    length: number,
  ): void {
    const plane = this.plane;
    const c0 = client[c];
    const c1 = client[c + 1];
    const c2 = client[c + 2];
    const c3 = client[c + 3];
    if (reply >= 0) {
      const fd = plane.replies.fdOf(reply);
      plane.queue.push(Direction.ToClient, fd, c0, c1, c2, c3, port, scope, offset, length);
      return;
    }
    plane.queue.toClientFrom(
      plane.listenerFd[listener],
      c0,
      c1,
      c2,
      c3,
      port,
      scope,
      dest[d],
      dest[d + 1],
      dest[d + 2],
      dest[d + 3],
      offset,
      length,
    );
  }

  /**
   * A reply socket bound to the original destination in `key` (words 4-7, port in word
   * 8's low half), for an answer: its index, or NO_REPLY (counted by the pool, logged).
   */
  private acquireReply(key: Uint32Array, listener: number, ipv6: boolean, now: number): number {
    const replies = this.plane.replies;
    replies.setKey(key[4], key[5], key[6], key[7], key[8] & 0xffff);
    const reply = replies.acquire(listener, ipv6, now);
    if (reply < 0) {
      this.plane.log("dns-reply", `no reply socket: ${replies.describeFailure()}`);
      return NO_REPLY;
    }
    return reply;
  }

  /**
   * The flow log's record of query e (answered: the answer's bytes and its header's
   * rcode, from eTarget, the resolver that answered; timed out: rcode -1, no resolver).
   */
  private record(
    e: number,
    reason: EndReason,
    answerBytes: number,
    now: number,
    rcode: number,
  ): void {
    const flows = this.plane.flows!;
    const r = flows.reserve();
    if (r < 0) {
      this.plane.counters.flowLogDropped++;
      return;
    }
    const endMs = Date.now();
    flows.endMs[r] = endMs;
    flows.startMs[r] = endMs - (now - this.eStartMs[e]);
    const w = r * 8;
    for (let k = 0; k < 4; k++) {
      flows.addrWords[w + k] = this.eClient[e * 4 + k];
      flows.addrWords[w + 4 + k] = this.eDest[e * 5 + k];
    }
    flows.ports[r] = ((this.eClientPort[e] << 16) | this.eDest[e * 5 + 4]) >>> 0;
    flows.listener[r] = this.eListener[e];
    flows.packetsToTarget[r] = 1 + this.eRetried[e];
    flows.bytesToTarget[r] = this.eLength[e] * (1 + this.eRetried[e]);
    flows.packetsToClient[r] = answerBytes > 0 ? 1 : 0;
    flows.bytesToClient[r] = answerBytes;
    flows.parsed[r] = PROTOCOL_DNS;
    flows.names[r] = this.eName[e];
    flows.reason[r] = reason;
    flows.reply[r] = this.eReply[e] >= 0 ? REPLY_SOCKET : REPLY_PKTINFO;
    flows.rule[r] = this.eGeneration[e] === this.plane.generation() ? this.eRule[e] : -1;
    flows.outbound[r] = this.eOutbound[e];
    flows.qtype[r] = this.eType[e];
    flows.rcode[r] = rcode;
    if (rcode >= 0) {
      const f = this.eTargets[e]!;
      const t = this.eTarget[e];
      for (let k = 0; k < 4; k++) flows.resolverWords[r * 4 + k] = f.words[t * 4 + k];
      flows.resolverPort[r] = f.ports[t];
    }
  }

  /** The next target after t of the same family that is up, or -1. */
  private nextUp(f: ForwardTargets, t: number, now: number): number {
    const v4 = isV4(f, t);
    for (let k = 1; k < f.count; k++) {
      const u = (t + k) % f.count;
      if (isV4(f, u) === v4 && f.downUntilMs[u] <= now) return u;
    }
    return -1;
  }

  /** Frees entry e (timedOut: it was given up, so its answer, if any, will be late). */
  private free(e: number, now: number, timedOut: boolean): void {
    this.unbindId(e, timedOut);
    if (this.eReply[e] >= 0) this.plane.replies.release(this.eReply[e], now);
    this.eTargets[e] = null;
    this.eName[e] = null;
    this.freeEntries[this.freeCount++] = e;
  }

  /** Gives entry e a free ID of socket `sock` (the caller checked one is free). */
  private bindId(e: number, sock: number): void {
    const ring = this.idRing[sock];
    const id = ring[this.ringHead[sock]];
    this.ringHead[sock] = (this.ringHead[sock] + 1) % IDS;
    this.ringFree[sock]--;
    this.idEntry[sock][id] = e;
    this.idTimedOut[sock][id] = 0;
    this.eSocket[e] = sock;
    this.eId[e] = id;
  }

  /** Entry e gives its ID back (to the back of the ring); timedOut: an answer is late. */
  private unbindId(e: number, timedOut: boolean): void {
    const sock = this.eSocket[e];
    const id = this.eId[e];
    this.idEntry[sock][id] = -1;
    this.idTimedOut[sock][id] = timedOut ? 1 : 0;
    this.idRing[sock][(this.ringHead[sock] + this.ringFree[sock]) % IDS] = id;
    this.ringFree[sock]++;
    this.eSocket[e] = -1;
  }

  /**
   * A socket to target t of f with a free ID: the one whose turn it is (each takes
   * QUERIES_PER_SOCKET_TURN in a row; one without a free ID is passed over), opened on
   * first use. -1 when none can be had (counted).
   */
  private socketFor(f: ForwardTargets, t: number, ipv6: boolean): number {
    let byTarget = this.groupsOf.get(f);
    if (byTarget === undefined) {
      byTarget = new Array(f.count).fill(null);
      this.groupsOf.set(f, byTarget);
    }
    let group = byTarget[t];
    if (group === null) {
      // Outbounds (or a reload's new runtime) naming the same resolver share its sockets.
      const w = t * 4;
      const words = f.words;
      const name = `${words[w]},${words[w + 1]},${words[w + 2]},${words[w + 3]}|${f.ports[t]}`;
      group = this.groups.get(name) ?? { sockets: [], next: 0, turnQueries: 0 };
      this.groups.set(name, group);
      byTarget[t] = group;
    }
    const sockets = group.sockets;
    const c = this.plane.counters;
    if (sockets.length < this.socketsPerTarget) {
      const s = this.open(f, t, ipv6);
      if (s >= 0) {
        sockets.push(s);
        return s;
      }
      if (sockets.length === 0) return -1;
    }
    if (++group.turnQueries > QUERIES_PER_SOCKET_TURN) {
      group.turnQueries = 1;
      group.next = (group.next + 1) % sockets.length;
    }
    const start = group.next;
    for (let k = 0; k < sockets.length; k++) {
      const s = sockets[(start + k) % sockets.length];
      if (this.ringFree[s] > 0) {
        if (k !== 0) {
          group.next = (start + k) % sockets.length;
          group.turnQueries = 1;
        }
        return s;
      }
    }
    c.dnsQueriesDroppedIdsExhausted++;
    return -1;
  }

  private open(f: ForwardTargets, t: number, ipv6: boolean): number {
    const plane = this.plane;
    const c = plane.counters;
    if (this.socketCount === this.socketsMax) {
      c.dnsUpstreamSocketFailed++;
      return -1;
    }
    const fd = plane.lib.rl_socket(
      SOCK.recvErr | (ipv6 ? SOCK.ipv6 | SOCK.v6Only : 0),
      ipv6 ? plane.bind6 : plane.bind4,
      0,
      plane.mark,
      plane.socketReceiveBytes,
      plane.socketSendBytes,
    );
    if (fd < 0) {
      c.dnsUpstreamSocketFailed++;
      plane.log(
        "dns-socket",
        `DNS upstream socket: ${describeSocketError(decodeSocketError(fd), ipv6)}`,
      );
      return -1;
    }
    // Connected to its resolver: sends skip a route lookup each, and the kernel drops
    // datagrams from any other address before they cost a wake-up (an off-path spoofer
    // must now also forge the resolver's address and port).
    const address = new Uint8Array(Uint32Array.from(f.words.subarray(t * 4, t * 4 + 4)).buffer);
    const connected = plane.lib.rl_udp_connect(fd, address, f.ports[t], 0);
    if (connected < 0) {
      plane.lib.rl_close(fd);
      c.dnsUpstreamSocketFailed++;
      plane.log("dns-connect", `DNS upstream socket: connect: ${errnoName(-connected)}`);
      return -1;
    }
    const s = this.socketCount;
    const token = plane.register(fd, s);
    if (token < 0) {
      plane.lib.rl_close(fd);
      c.dnsUpstreamSocketFailed++;
      return -1;
    }
    this.socketCount++;
    this.sockFd[s] = fd;
    this.sockToken[s] = token;
    for (let k = 0; k < 4; k++) this.sockTarget[s * 4 + k] = f.words[t * 4 + k];
    this.sockPort[s] = f.ports[t];
    this.idEntry[s] = new Int32Array(IDS).fill(-1);
    this.idTimedOut[s] = new Uint8Array(IDS);
    const ring = new Uint16Array(IDS);
    for (let i = 0; i < IDS; i++) ring[i] = i;
    // Shuffled (Fisher-Yates on random bytes): IDs an off-path spoofer cannot predict.
    const random = new Uint32Array(IDS);
    randomFillSync(random);
    for (let i = IDS - 1; i > 0; i--) {
      const j = random[i] % (i + 1);
      const x = ring[i];
      ring[i] = ring[j];
      ring[j] = x;
    }
    this.idRing[s] = ring;
    this.ringHead[s] = 0;
    this.ringFree[s] = IDS;
    return s;
  }
}

function isV4(f: ForwardTargets, t: number): boolean {
  const w = t * 4;
  return f.words[w] === 0 && f.words[w + 1] === 0 && f.words[w + 2] === V4_MAPPED_WORD;
}
