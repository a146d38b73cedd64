// The bounded pool of transparent reply sockets (DESIGN.md "The UDP reply path", 2).
// One unconnected IP_TRANSPARENT + SO_REUSEADDR socket bound to an original
// destination ip:port sends every reply that must come from it. Unconnected on
// purpose: TPROXY's established-socket lookup matches connected sockets only, so
// an unconnected one never steals the flow's later packets from the listener.
//
// Bounded three ways: at most `socketsMax` sockets; a socket nobody uses for
// `idleMs` is closed; a destination whose bind failed is not retried for
// `bindRetryMs` (negative cache, itself bounded).
import { HashIndex } from "../flow/hash_index.ts";
import { assert } from "../sys/assert.ts";
import type { RelayLib } from "../sys/ffi.ts";
import { SOCK } from "../sys/layout.ts";
import { decodeSocketError, errnoName, isResourceErrno } from "../sys/errno.ts";
import type { UdpCounters } from "../metrics.ts";

/** Key: address (4 words) + port. */
const KEY_WORDS = 5;
const NEGATIVE_CACHE_MAX = 4096;

export interface ReplyPoolOptions {
  socketsMax: number;
  idleMs: number;
  bindRetryMs: number;
  mark: number;
  receiveBytes: number;
  sendBytes: number;
}

export type AcquireFailure = "bind" | "cached" | "full" | "descriptors" | "register";

export class ReplyPool {
  private readonly index: HashIndex;
  private readonly key: Uint32Array;
  private readonly fd: Int32Array;
  /** Token registered with the poller (so datagrams that reach it are not lost). */
  private readonly token: Int32Array;
  private readonly listener: Int16Array;
  private readonly refs: Int32Array;
  private readonly lastUsedMs: Float64Array;
  private readonly negative = new Map<string, number>(); // "addrwords|port" -> retry time
  private readonly keyBytes: Uint8Array;
  lastFailure: AcquireFailure | null = null;
  lastErrno = 0;

  constructor(
    private readonly lib: RelayLib,
    /** idleMs and bindRetryMs change on a reload (setTimes); the rest is fixed. */
    private readonly options: ReplyPoolOptions,
    private readonly counters: UdpCounters,
    /** Registers a new socket with the poller; returns its token, or -1 (nothing taken). */
    private readonly register: (fd: number, entry: number) => number,
    private readonly unregister: (token: number) => void,
  ) {
    const n = options.socketsMax;
    this.index = new HashIndex(KEY_WORDS, n);
    this.key = this.index.scratch;
    this.keyBytes = new Uint8Array(this.key.buffer, 0, 16);
    this.fd = new Int32Array(n).fill(-1);
    this.token = new Int32Array(n).fill(-1);
    this.listener = new Int16Array(n).fill(-1);
    this.refs = new Int32Array(n);
    this.lastUsedMs = new Float64Array(n);
  }

  get count(): number {
    return this.index.count;
  }

  /** Sets the destination the next peek()/acquire() is about. */
  setKey(w0: number, w1: number, w2: number, w3: number, port: number): void {
    const k = this.key;
    k[0] = w0;
    k[1] = w1;
    k[2] = w2;
    k[3] = w3;
    k[4] = port;
  }

  /** The entry for the destination set by setKey() if its socket exists, else -1. */
  peek(): number {
    return this.index.find();
  }

  fdOf(entry: number): number {
    return this.fd[entry];
  }

  /** The listener whose flows the socket serves (datagrams it catches are theirs). */
  listenerOf(entry: number): number {
    return this.listener[entry];
  }

  /**
   * The reply socket for the destination in `key` (address words 0..3, port word 4),
   * created on first use. Returns the entry, or -1 (lastFailure says why).
   */
  acquire(listener: number, ipv6: boolean, nowMs: number): number {
    let entry = this.index.find();
    if (entry >= 0) {
      this.refs[entry]++;
      this.lastUsedMs[entry] = nowMs;
      return entry;
    }
    const k = this.key;
    const negativeKey = `${k[0]},${k[1]},${k[2]},${k[3]}|${k[4]}`;
    const retryAtMs = this.negative.get(negativeKey);
    if (retryAtMs !== undefined) {
      if (nowMs < retryAtMs) return this.fail("cached", 0);
      this.negative.delete(negativeKey);
    }
    if (this.index.full && !this.closeOldestIdle()) return this.fail("full", 0);

    const flags =
      SOCK.transparent |
      SOCK.reuseAddr |
      SOCK.freeBind |
      SOCK.recvOrigDst |
      (ipv6 ? SOCK.ipv6 | SOCK.v6Only : 0);
    const fd = this.lib.rl_socket(
      flags,
      this.keyBytes,
      this.key[4],
      this.options.mark,
      this.options.receiveBytes,
      this.options.sendBytes,
    );
    if (fd < 0) {
      const err = decodeSocketError(fd);
      if (isResourceErrno(err.errno)) {
        return this.fail("descriptors", err.errno);
      }
      // EADDRINUSE: something else holds this ip:port without SO_REUSEADDR.
      if (this.negative.size >= NEGATIVE_CACHE_MAX) {
        this.negative.delete(this.negative.keys().next().value!); // oldest first (insertion order)
      }
      this.negative.set(negativeKey, nowMs + this.options.bindRetryMs);
      return this.fail("bind", err.errno);
    }
    // All or nothing: the index entry is taken only once the poller holds the socket.
    entry = this.index.insert();
    assert(entry >= 0, "ReplyPool: no free entry after making room");
    const token = this.register(fd, entry);
    if (token < 0) {
      this.index.remove(entry);
      this.lib.rl_close(fd);
      return this.fail("register", 0);
    }
    this.fd[entry] = fd;
    this.token[entry] = token;
    this.listener[entry] = listener;
    this.refs[entry] = 1;
    this.lastUsedMs[entry] = nowMs;
    return entry;
  }

  release(entry: number, nowMs: number): void {
    if (this.refs[entry] <= 0) throw new Error(`ReplyPool.release: entry ${entry} has no refs`);
    this.refs[entry]--;
    this.lastUsedMs[entry] = nowMs;
  }

  /**
   * A reload: sockets already idle are closed by the next sweep that finds them past the
   * new idleMs; bind failures already cached keep the retry time they were given.
   */
  setTimes(idleMs: number, bindRetryMs: number): void {
    this.options.idleMs = idleMs;
    this.options.bindRetryMs = bindRetryMs;
  }

  /** Closes sockets idle (no sessions) past idleMs; at most `budget`. */
  sweep(nowMs: number, budget: number): number {
    let closed = 0;
    const n = this.options.socketsMax;
    for (let entry = 0; entry < n && closed < budget; entry++) {
      if (this.fd[entry] < 0 || this.refs[entry] > 0) continue;
      if (nowMs - this.lastUsedMs[entry] < this.options.idleMs) continue;
      this.close(entry);
      closed++;
    }
    for (const [key, retryAtMs] of this.negative) {
      if (retryAtMs > nowMs) break;
      this.negative.delete(key);
    }
    return closed;
  }

  closeAll(): void {
    for (let entry = 0; entry < this.options.socketsMax; entry++) {
      if (this.fd[entry] >= 0) this.close(entry);
    }
  }

  describeFailure(): string {
    return this.lastErrno
      ? `${this.lastFailure}: ${errnoName(this.lastErrno)}`
      : `${this.lastFailure}`;
  }

  private close(entry: number): void {
    this.unregister(this.token[entry]);
    this.lib.rl_close(this.fd[entry]);
    this.fd[entry] = -1;
    this.token[entry] = -1;
    this.index.remove(entry);
  }

  private closeOldestIdle(): boolean {
    let oldest = -1;
    for (let entry = 0; entry < this.options.socketsMax; entry++) {
      if (this.fd[entry] < 0 || this.refs[entry] > 0) continue;
      if (oldest < 0 || this.lastUsedMs[entry] < this.lastUsedMs[oldest]) oldest = entry;
    }
    if (oldest < 0) return false;
    this.close(oldest);
    return true;
  }

  private fail(reason: AcquireFailure, errno: number): number {
    this.lastFailure = reason;
    this.lastErrno = errno;
    switch (reason) {
      case "bind":
        this.counters.replySocketBindFailed++;
        break;
      case "cached":
        this.counters.droppedReplyBindCached++;
        break;
      case "full":
        this.counters.droppedReplyPoolFull++;
        break;
      case "descriptors":
        this.counters.droppedNoDescriptors++;
        break;
      case "register":
        this.counters.droppedReplySocketFailed++;
        break;
    }
    return -1;
  }
}
