// Per-client bounds (fairness under attack): one client address may hold at most
// `sessionsMax` sessions and pin at most `replySocketsMax` distinct reply sockets, so a
// client that opens thousands of flows or destinations exhausts only its own share,
// never the table, the reply pool or the descriptors every other client needs.
//
// A client is an address (not address and port: a port scan from one host is one
// client). A reply socket is pinned by a client while one of its sessions uses it;
// (client, reply socket) pairs are counted once however many of the client's sessions
// share the socket.
//
// Invariants (invariants()): a client entry exists iff it has a session; its
// replySockets equals the number of its pairs; a pair exists iff some session of the
// client holds the reply socket (pairRefs > 0).

import { HashIndex } from "./hash_index.ts";

const CLIENT_KEY_WORDS = 4;
/** Pair key: client slot, reply-pool entry. */
const PAIR_KEY_WORDS = 2;

export class ClientLimits {
  sessionsMax: number;
  replySocketsMax: number;
  private unboundedSessions: boolean;
  private readonly capacity: number;
  private readonly clients: HashIndex;
  private readonly sessions: Int32Array;
  private readonly replySockets: Int32Array;
  private readonly pairs: HashIndex;
  private readonly pairRefs: Int32Array;

  /** capacity: sessions the relay holds at most (each belongs to one client). */
  constructor(capacity: number, sessionsMax: number, replySocketsMax: number) {
    this.capacity = capacity;
    this.sessionsMax = sessionsMax;
    this.unboundedSessions = false;
    this.replySocketsMax = replySocketsMax;
    this.setLimits(sessionsMax, replySocketsMax);
    // +1: a new client is looked up while the table is full, before an eviction.
    this.clients = new HashIndex(CLIENT_KEY_WORDS, capacity + 1);
    this.sessions = new Int32Array(capacity + 1);
    this.replySockets = new Int32Array(capacity + 1);
    this.pairs = new HashIndex(PAIR_KEY_WORDS, capacity);
    this.pairRefs = new Int32Array(capacity);
  }

  /**
   * New bounds (a reload). Nothing held is taken away: a client already past a lowered
   * bound keeps its sessions and pinned sockets, and is refused new ones (maySession,
   * mayReply) until it is back under the bound.
   */
  setLimits(sessionsMax: number, replySocketsMax: number): void {
    this.sessionsMax = sessionsMax;
    // A bound as large as the table bounds nothing: the table's own LRU eviction rules.
    this.unboundedSessions = sessionsMax >= this.capacity;
    this.replySocketsMax = replySocketsMax;
  }

  get clientCount(): number {
    return this.clients.count;
  }

  /** The client's slot, or -1 when it holds no session. */
  find(a0: number, a1: number, a2: number, a3: number): number {
    const k = this.clients.scratch;
    k[0] = a0;
    k[1] = a1;
    k[2] = a2;
    k[3] = a3;
    return this.clients.find();
  }

  /** Whether a client (slot from find(), or -1 for a new one) may open one more session. */
  maySession(client: number): boolean {
    return client < 0 || this.unboundedSessions || this.sessions[client] < this.sessionsMax;
  }

  /**
   * Whether the client may use reply-pool entry `reply` (-1: a socket not made yet):
   * always when it already pins it; otherwise only below its reply-socket bound.
   */
  mayReply(client: number, reply: number): boolean {
    if (client < 0) return this.replySocketsMax > 0;
    if (reply >= 0 && this.findPair(client, reply) >= 0) return true;
    return this.replySockets[client] < this.replySocketsMax;
  }

  /** Counts a new session of the client (find-or-insert); returns its slot. */
  addSession(a0: number, a1: number, a2: number, a3: number): number {
    let client = this.find(a0, a1, a2, a3);
    if (client < 0) {
      client = this.clients.insert();
      if (client < 0) throw new Error("ClientLimits: client index full (bookkeeping bug)");
      this.sessions[client] = 0;
      this.replySockets[client] = 0;
    }
    if (!this.unboundedSessions && this.sessions[client] >= this.sessionsMax) {
      throw new Error(`ClientLimits: client ${client} past its session bound (check maySession)`);
    }
    this.sessions[client]++;
    return client;
  }

  /** Records that a session of `client` uses reply entry `reply`; returns the pair slot. */
  addReply(client: number, reply: number): number {
    let pair = this.findPair(client, reply);
    if (pair < 0) {
      if (this.replySockets[client] >= this.replySocketsMax) {
        throw new Error(`ClientLimits: client ${client} past its reply bound (check mayReply)`);
      }
      pair = this.pairs.insert();
      if (pair < 0) throw new Error("ClientLimits: pair index full (bookkeeping bug)");
      this.pairRefs[pair] = 0;
      this.replySockets[client]++;
    }
    this.pairRefs[pair]++;
    return pair;
  }

  /** Undoes addReply() (pair from it). */
  removeReply(client: number, pair: number): void {
    if (this.pairRefs[pair] <= 0) throw new Error(`ClientLimits: pair ${pair} has no refs`);
    if (--this.pairRefs[pair] > 0) return;
    this.pairs.remove(pair);
    this.replySockets[client]--;
  }

  /** Undoes addSession(); the client's entry goes with its last session. */
  removeSession(client: number): void {
    if (this.sessions[client] <= 0) throw new Error(`ClientLimits: client ${client} has none`);
    if (--this.sessions[client] > 0) return;
    if (this.replySockets[client] !== 0) {
      throw new Error(`ClientLimits: client ${client} ended with reply sockets pinned`);
    }
    this.clients.remove(client);
  }

  sessionsOf(client: number): number {
    return client < 0 ? 0 : this.sessions[client];
  }

  replySocketsOf(client: number): number {
    return client < 0 ? 0 : this.replySockets[client];
  }

  private findPair(client: number, reply: number): number {
    const k = this.pairs.scratch;
    k[0] = client;
    k[1] = reply;
    return this.pairs.find();
  }

  invariants(): void {
    this.clients.invariants();
    this.pairs.invariants();
    let pairsCounted = 0;
    for (let c = 0; c < this.sessions.length; c++) {
      if (this.sessions[c] > 0) pairsCounted += this.replySockets[c];
    }
    if (pairsCounted !== this.pairs.count) {
      throw new Error(`ClientLimits: ${pairsCounted} pinned sockets != ${this.pairs.count} pairs`);
    }
  }
}
