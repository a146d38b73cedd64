// The UDP packet path:
//
//   listener (TPROXY) --recvmmsg--> session table --sendmmsg--> upstream socket --> target
//   client <--sendmmsg-- listener (IP_PKTINFO) or reply socket <--recvmmsg-- upstream socket
//
// One thread. The C epoll thread hands us ready sockets in rounds (src/sys/poller.ts):
// for each we receive up to drainBatchesMax batches into the free part of the slab,
// queue one send per datagram, and re-arm the socket in a `finally`. At the end of the
// round, or when the slab is full, everything queued goes out in one rl_send_batch
// (runs per socket become one sendmmsg each): 256 flows' replies through one listener
// leave in a handful of syscalls instead of one per flow.
//
// Memory: one receive slab (batchCountMax slots of datagramBytesMax), one metadata
// table and one send table, allocated here once. Payloads are never copied: send
// entries point into the slab, and slots are reused only after their sends went out.

import { type Pointer, ptr } from "bun:ffi";
import type { Config, ListenerConfig } from "../config/load.ts";
import { HashIndex } from "../flow/hash_index.ts";
import {
  EndReason,
  PROTOCOL_DNS,
  PROTOCOL_NAMES,
  PROTOCOL_QUIC,
  PROTOCOL_UNKNOWN,
  SESSION_KEY_WORDS,
  SessionTable,
} from "../flow/table.ts";
import { DnsParser } from "../classify/dns.ts";
import { Code } from "../classify/layout.ts";
import { QuicParser } from "../classify/quic.ts";
import { type Parsers, parsersLoad } from "../classify/wasm.ts";
import { PACKET_AREA_BYTES } from "../config/load.ts";
import { ReplyPool } from "../egress/reply_pool.ts";
import { ClientLimits } from "../flow/clients.ts";
import { LocalTargets, TargetKind, V4_MAPPED_WORD } from "../flow/local_targets.ts";
import { RateLimitedLog } from "../control/log.ts";
import { UdpCounters } from "../metrics.ts";
import { formatEndpoint } from "../sys/addr.ts";
import {
  classifyIoErrno,
  decodeSocketError,
  describeSocketError,
  E,
  errnoName,
  IoOutcome,
  isPrivilegeErrno,
  isResourceErrno,
  StartError,
  unexpectedErrno,
} from "../sys/errno.ts";
import { assert } from "../sys/assert.ts";
import { faultDataPath, faultEpollAdd } from "../sys/test_faults.ts";
import type { RelayLib } from "../sys/ffi.ts";
import {
  META,
  META_BYTES,
  META_FLAG_HAS_DROPS,
  META_FLAG_HAS_ORIGDST,
  META_FLAG_TRUNCATED,
  META_WORDS,
  SEND,
  SEND_FLAG_SOURCE,
  SEND_WORDS,
  SOCK,
} from "../sys/layout.ts";
import { Poller, WAKE_ERROR_FLAG, WAKE_TOKEN_MASK } from "../sys/poller.ts";

const enum SocketKind {
  Free = 0,
  Listener = 1,
  Upstream = 2,
  Reply = 3,
  /** The netlink socket that reports address changes (LocalTargets). */
  AddressWatch = 4,
}

/** Upstream key: client address (4 words), client port, session slot (or ALL_DESTINATIONS). */
const UPSTREAM_KEY_WORDS = 6;
/** Session slot word of an endpoint-independent upstream: one socket for every destination. */
const ALL_DESTINATIONS = 0xffffffff;
/** Sessions ended per timer tick at most, so a mass expiry cannot stall the data path. */
const EXPIRE_BUDGET_PER_TICK = 8192;
const REPLY_SWEEP_BUDGET_PER_TICK = 1024;
/** ICMP errors drained per error wake-up (the kernel bounds the queue by rcvbuf anyway). */
const ERRORS_DRAIN_MAX = 64;
/**
 * The local-address set is re-read this often besides on netlink notifications: an
 * AnyIP route (`ip route add local ...`) changes the local table without one.
 */
const LOCAL_REFRESH_MS = 5_000;
/** Tokens beyond listeners, upstream and reply sockets: the address watch. */
const EXTRA_TOKENS = 1;

export interface SessionView {
  client: string;
  target: string;
  listener: string;
  reply: "pktinfo" | "socket";
  /** "dns", "quic" or "udp" (not recognised), and the DNS name or QUIC SNI. */
  protocol: string;
  name: string | null;
  ageMs: number;
  idleMs: number;
  packetsToTarget: number;
  bytesToTarget: number;
  packetsToClient: number;
  bytesToClient: number;
}

export interface UdpSnapshot {
  uptimeMs: number;
  udp: Record<string, number>;
  sessions: SessionView[];
}

export class UdpRelay {
  readonly counters = new UdpCounters();
  readonly sessions: SessionTable;
  readonly replies: ReplyPool;

  private readonly lib: RelayLib;
  private readonly config: Config;
  private readonly poller: Poller;

  // Receive side. The slab is the WASM parsers' packet area: recvmmsg writes there and
  // the parsers read the same bytes in place.
  private readonly parsers: Parsers;
  private readonly dns: DnsParser;
  private readonly quic: QuicParser;
  /** Memory offset of slot 0 inside the WASM memory (what the parsers take). */
  private readonly slabWasmOffset: number;
  /** Per destination port: PROTOCOL_DNS / PROTOCOL_QUIC when its first datagrams are parsed. */
  private readonly sniffByPort: Uint8Array;
  private readonly slotBytes: number;
  private readonly batchCount: number;
  private readonly slab: Uint8Array;
  private readonly slabPtr: Pointer;
  private readonly meta: Uint8Array;
  private readonly metaPtr: Pointer;
  private readonly meta32: Uint32Array;
  private readonly meta16: Uint16Array;

  // Send side.
  private readonly sends: Uint8Array;
  private readonly sendsPtr: Pointer;
  private readonly send32: Uint32Array;
  private readonly sendI32: Int32Array;
  private readonly send16: Uint16Array;
  /** Per queued send: 1 to a target, 0 to a client (for the counters). */
  private readonly sendToTarget: Uint8Array;
  private sendCount = 0;
  /** Slab slots (and metadata records) holding datagrams of this round. */
  private slotsUsed = 0;
  /** Scratch metadata for the error queue, apart from the slots of the round. */
  private readonly errorMeta: Uint8Array;
  private readonly errorMetaPtr: Pointer;
  private readonly errorMeta32: Uint32Array;
  /** 16 bytes for rl_local_port's address (own ArrayBuffer: see the slab comment). */
  private readonly scratchAddr = new Uint8Array(new ArrayBuffer(16));
  private readonly scratchAddrPtr: Pointer = ptr(this.scratchAddr);

  // Socket registry: token -> what the socket is.
  private readonly socketKind: Uint8Array;
  private readonly socketFd: Int32Array;
  private readonly socketRef: Int32Array;
  private readonly freeTokens: Int32Array;
  private freeTokenCount: number;

  // Listeners.
  private readonly listenerFd: Int32Array;
  private readonly listenerToken: Int32Array;
  private readonly listenerPort: Uint16Array;
  /** Listener address words (4 per listener) and family, for the loop checks. */
  private readonly listenerAddr: Uint32Array;
  private readonly listenerIpv6: Uint8Array;
  /** SO_RXQ_OVFL's counter last seen per listener (cumulative in the kernel). */
  private readonly listenerQueueDrops: Uint32Array;

  // Upstream sockets: one per client endpoint (endpoint-independent) or per session.
  private readonly upstreams: HashIndex;
  private readonly upstreamFd: Int32Array;
  private readonly upstreamToken: Int32Array;
  private readonly upstreamRefs: Int32Array;
  private readonly upstreamClientScope: Uint32Array; // IPv6 scope id of a link-local client
  /** Per local port: upstream sockets of ours bound to it (own-traffic check). */
  private readonly upstreamPortRefs: Uint16Array;
  private readonly upstreamPort: Uint16Array; // per upstream record
  private readonly endpointIndependent: boolean;

  // Loop and fairness guards (checked once per new flow, never per packet).
  readonly locals: LocalTargets;
  private localsRefreshedMs = 0;
  private watchToken = -1;
  private readonly clients: ClientLimits;
  /** Per session: its ClientLimits slot, and its (client, reply socket) pair or -1. */
  private readonly sessionClient: Int32Array;
  private readonly sessionPair: Int32Array;

  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly logger = new RateLimitedLog();
  private stopped = false;
  /** Start time of the relay's monotonic clock (performance.now()). */
  readonly startedMs = performance.now();

  /**
   * inline: the calling thread waits in epoll_wait itself (a Worker; see udp_worker.ts).
   * onFatal: a broken invariant on the data path (a bug): the owner ends the process
   * with this message; without it the error is thrown.
   */
  constructor(
    lib: RelayLib,
    config: Config,
    options: { inline?: boolean; onFatal?: (message: string) => void } = {},
  ) {
    this.lib = lib;
    this.config = config;
    const udp = config.udp;
    this.slotBytes = udp.datagramBytesMax;
    this.batchCount = udp.batchCountMax;
    this.endpointIndependent = udp.mapping === "endpoint-independent";

    // slab: one slot per datagram of a batch; 64-byte aligned slots keep payloads on
    // their own cache lines.
    this.slotBytes = Math.ceil(udp.datagramBytesMax / 64) * 64;
    this.parsers = parsersLoad();
    if (this.parsers.packetArea.bytesMax !== PACKET_AREA_BYTES) {
      throw new Error(
        `WASM packet area is ${this.parsers.packetArea.bytesMax} bytes, ` +
          `config assumes ${PACKET_AREA_BYTES}: rebuild (bash scripts/build.sh)`,
      );
    }
    this.dns = new DnsParser(this.parsers);
    this.quic = new QuicParser(this.parsers);
    this.slabWasmOffset = this.parsers.packetArea.offset;
    this.slab = new Uint8Array(
      this.parsers.memory.buffer,
      this.slabWasmOffset,
      this.slotBytes * this.batchCount,
    );
    this.slabPtr = ptr(this.slab);
    this.sniffByPort = new Uint8Array(65536);
    for (const port of udp.quicPorts) this.sniffByPort[port] = PROTOCOL_QUIC;
    for (const port of udp.dnsPorts) this.sniffByPort[port] = PROTOCOL_DNS;
    // Each array on its own ArrayBuffer: JSC keeps a small typed array's bytes in the GC
    // heap and moves them when `.buffer` is first read, which would leave a cached ptr()
    // pointing at freed memory.
    this.meta = new Uint8Array(new ArrayBuffer(META_WORDS * 4 * this.batchCount));
    this.metaPtr = ptr(this.meta);
    this.meta32 = new Uint32Array(this.meta.buffer);
    this.meta16 = new Uint16Array(this.meta.buffer);
    this.sends = new Uint8Array(new ArrayBuffer(SEND_WORDS * 4 * this.batchCount));
    this.sendsPtr = ptr(this.sends);
    this.send32 = new Uint32Array(this.sends.buffer);
    this.sendI32 = new Int32Array(this.sends.buffer);
    this.send16 = new Uint16Array(this.sends.buffer);
    this.sendToTarget = new Uint8Array(this.batchCount);
    this.errorMeta = new Uint8Array(new ArrayBuffer(META_WORDS * 4 * ERRORS_DRAIN_MAX));
    this.errorMetaPtr = ptr(this.errorMeta);
    this.errorMeta32 = new Uint32Array(this.errorMeta.buffer);

    const listenerCount = config.listeners.length;
    // Tokens: listeners + one upstream socket per session at most + reply sockets.
    const tokensMax = listenerCount + udp.sessionsMax + udp.replySocketsMax + EXTRA_TOKENS;
    this.socketKind = new Uint8Array(tokensMax);
    this.socketFd = new Int32Array(tokensMax).fill(-1);
    this.socketRef = new Int32Array(tokensMax).fill(-1);
    this.freeTokens = new Int32Array(tokensMax);
    for (let i = 0; i < tokensMax; i++) this.freeTokens[i] = tokensMax - 1 - i;
    this.freeTokenCount = tokensMax;

    this.listenerFd = new Int32Array(listenerCount).fill(-1);
    this.listenerToken = new Int32Array(listenerCount).fill(-1);
    this.listenerPort = new Uint16Array(listenerCount);
    this.listenerAddr = new Uint32Array(listenerCount * 4);
    this.listenerIpv6 = new Uint8Array(listenerCount);
    config.listeners.forEach((l, i) => {
      this.listenerAddr.set(new Uint32Array(l.addr.slice().buffer), i * 4);
      this.listenerIpv6[i] = l.ipv6 ? 1 : 0;
    });
    this.listenerQueueDrops = new Uint32Array(listenerCount);

    this.upstreams = new HashIndex(UPSTREAM_KEY_WORDS, udp.sessionsMax);
    this.upstreamFd = new Int32Array(udp.sessionsMax).fill(-1);
    this.upstreamToken = new Int32Array(udp.sessionsMax).fill(-1);
    this.upstreamRefs = new Int32Array(udp.sessionsMax);
    this.upstreamClientScope = new Uint32Array(udp.sessionsMax);
    this.upstreamPortRefs = new Uint16Array(65536);
    this.upstreamPort = new Uint16Array(udp.sessionsMax);

    this.locals = new LocalTargets(lib);
    this.clients = new ClientLimits(
      udp.sessionsMax,
      udp.sessionsPerClientMax,
      udp.replySocketsPerClientMax,
    );
    this.sessionClient = new Int32Array(udp.sessionsMax).fill(-1);
    this.sessionPair = new Int32Array(udp.sessionsMax).fill(-1);

    this.sessions = new SessionTable(udp.sessionsMax, config.timeoutClassesMs);
    this.sessions.onEnd = (slot, reason) => this.onSessionEnd(slot, reason);

    this.poller = new Poller(lib, (token) => this.onToken(token), {
      tokensMax,
      inline: options.inline === true,
      onRoundEnd: () => this.endRound(),
      // Not logged and carried on: a data-path exception is a bug whose state cannot be
      // trusted (a half-written send entry could misdeliver). End the process loudly.
      onError: (err) => {
        const message = `UDP data path failed: ${(err as Error).stack ?? err}`;
        if (options.onFatal) options.onFatal(message);
        else throw err;
      },
    });
    this.replies = new ReplyPool(
      lib,
      {
        socketsMax: udp.replySocketsMax,
        idleMs: udp.replySocketIdleMs,
        bindRetryMs: udp.replyBindRetryMs,
        // No SO_MARK here: replies belong to the client's own conntrack entry (reply
        // direction); the relay mark would tag that entry and exempt the client's next
        // packets from interception.
        mark: 0,
        receiveBytes: udp.socketReceiveBytes,
        sendBytes: udp.socketSendBytes,
      },
      this.counters,
      (fd, entry) => this.registerSocket(SocketKind.Reply, fd, entry),
      (fd, token) => this.unregisterSocket(fd, token),
    );
  }

  /** Opens the listeners and starts the poll thread. Throws with a clear message. */
  start(): void {
    // Descriptors: main.ts raised RLIMIT_NOFILE and fitted sessionsMax and
    // replySocketsMax under it (src/config/limits.ts), so the table evicts before EMFILE.
    try {
      // The local set first: no datagram is read before the loop guard can judge it.
      this.locals.refresh();
      this.localsRefreshedMs = performance.now();
      const watchFd = this.locals.openWatch();
      this.watchToken = this.registerSocket(SocketKind.AddressWatch, watchFd, 0);
      if (this.watchToken < 0) {
        throw new Error(`epoll_ctl(ADD) address watch: ${errnoName(this.lastRegisterErrno)}`);
      }
      this.config.listeners.forEach((l, i) => {
        this.openListener(l, i);
      });
    } catch (err) {
      this.closeListeners();
      this.closeWatch();
      throw err;
    }
    this.poller.start();
    // The timer expires sessions, closes idle reply sockets, and keeps the process
    // alive (a threadsafe JSCallback does not). Its listener drain also recovers from
    // a wake-up that never came.
    this.timer = setInterval(() => this.tick(), 250);
  }

  /** Joins the poll thread, closes the callback, then every socket. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.poller.stop();
    const ended: number[] = [];
    this.sessions.forEach((slot) => {
      ended.push(slot);
    });
    for (const slot of ended) this.sessions.end(slot, EndReason.Closed);
    this.replies.closeAll();
    this.closeListeners();
    this.closeWatch();
  }

  private closeWatch(): void {
    if (this.watchToken >= 0) {
      this.unregisterSocket(this.socketFd[this.watchToken], this.watchToken);
      this.watchToken = -1;
    }
    this.locals.closeWatch();
  }

  get upstreamSocketCount(): number {
    return this.upstreams.count;
  }

  get wakeCount(): number {
    return this.poller.wakes;
  }

  /** Ready events the epoll thread reported (one wake call carries many). */
  get readyEventCount(): number {
    return this.poller.events;
  }

  get pollRingOverflows(): number {
    return this.poller.overflows;
  }

  /** Counters, gauges and the first `sessionsListed` sessions, for the control plane. */
  snapshot(sessionsListed: number): UdpSnapshot {
    return {
      uptimeMs: Math.round(performance.now() - this.startedMs),
      udp: {
        ...this.counters,
        sessionsActive: this.sessions.count,
        sessionsMax: this.sessions.capacity,
        upstreamSockets: this.upstreamSocketCount,
        replySockets: this.replies.count,
        // Tokens in use: listeners + the address watch + upstream + reply sockets.
        socketsRegistered: this.freeTokens.length - this.freeTokenCount,
        pollWakes: this.wakeCount,
        pollEvents: this.readyEventCount,
        pollRingOverflows: this.pollRingOverflows,
      },
      sessions: this.sessionViews(sessionsListed),
    };
  }

  /** Snapshot of live sessions for the control plane (bounded by `limit`). */
  sessionViews(limit: number): SessionView[] {
    const out: SessionView[] = [];
    const now = performance.now();
    const keyBytes = new Uint8Array(this.sessions.index.keys.buffer);
    this.sessions.forEach((s) => {
      if (out.length >= limit) return;
      const base = s * SESSION_KEY_WORDS * 4; // byte offset of the session's key
      const ports = this.sessions.index.keys[s * SESSION_KEY_WORDS + 8];
      const listener = this.sessions.listener[s];
      out.push({
        client: formatEndpoint(keyBytes, base, ports >>> 16),
        target: formatEndpoint(keyBytes, base + 16, ports & 0xffff),
        listener: this.config.listeners[listener]?.name ?? "?",
        reply: this.sessions.reply[s] >= 0 ? "socket" : "pktinfo",
        protocol: PROTOCOL_NAMES[this.sessions.protocol[s]],
        name: this.sessions.name[s],
        ageMs: Math.round(now - this.sessions.createdMs[s]),
        idleMs: Math.round(now - this.sessions.lastSeenMs[s]),
        packetsToTarget: this.sessions.packetsToTarget[s],
        bytesToTarget: this.sessions.bytesToTarget[s],
        packetsToClient: this.sessions.packetsToClient[s],
        bytesToClient: this.sessions.bytesToClient[s],
      });
    });
    return out;
  }

  // ---- set-up ----

  private openListener(l: ListenerConfig, index: number): void {
    const udp = this.config.udp;
    // No SO_REUSEADDR: the bind is exclusive, so a second relay (or any socket on this
    // address and port) makes the start fail instead of silently sharing the datagrams.
    // reusePort is the explicit opt-in to share (one worker per core).
    const flags =
      SOCK.transparent |
      SOCK.recvOrigDst |
      SOCK.freeBind |
      SOCK.rxqOverflow |
      (l.reusePort ? SOCK.reusePort : 0) |
      (l.ipv6 ? SOCK.ipv6 | SOCK.v6Only : 0);
    const fd = this.lib.rl_socket(
      flags,
      l.addr,
      l.port,
      0,
      udp.listenerReceiveBytes,
      udp.listenerSendBytes,
    );
    if (fd < 0) {
      const err = decodeSocketError(fd);
      throw new StartError(
        `listener "${l.name}" (udp ${l.address} port ${l.port}): ` +
          describeSocketError(err, l.ipv6),
        isPrivilegeErrno(err.errno),
      );
    }
    this.listenerPort[index] = l.port;
    const token = this.registerSocket(SocketKind.Listener, fd, index);
    if (token < 0) {
      this.lib.rl_close(fd);
      throw new Error(`listener "${l.name}": epoll_ctl(ADD): ${errnoName(this.lastRegisterErrno)}`);
    }
    this.listenerFd[index] = fd;
    this.listenerToken[index] = token;
  }

  private closeListeners(): void {
    for (let i = 0; i < this.listenerFd.length; i++) {
      if (this.listenerFd[i] < 0) continue;
      this.unregisterSocket(this.listenerFd[i], this.listenerToken[i]);
      this.lib.rl_close(this.listenerFd[i]);
      this.listenerFd[i] = -1;
    }
  }

  /**
   * Registers a socket with the poller under a fresh token. All or nothing: returns the
   * token, or -1 with nothing taken when epoll_ctl fails (ENOSPC at
   * fs.epoll.max_user_watches, ENOMEM); the caller still owns and closes the fd.
   */
  private registerSocket(kind: SocketKind, fd: number, ref: number): number {
    // Tokens are sized for every socket the bounds allow: running out is a bug.
    assert(this.freeTokenCount > 0, "socket registry full");
    const token = this.freeTokens[--this.freeTokenCount];
    const rc = faultEpollAdd() || this.poller.add(fd, token);
    if (rc < 0) {
      this.freeTokens[this.freeTokenCount++] = token;
      this.lastRegisterErrno = -rc;
      return -1;
    }
    this.socketKind[token] = kind;
    this.socketFd[token] = fd;
    this.socketRef[token] = ref;
    return token;
  }
  /** errno of the last failed registerSocket (for the caller's message). */
  private lastRegisterErrno = 0;

  private unregisterSocket(fd: number, token: number): void {
    // Remove from epoll before close so a queued wake-up for this token finds Free.
    this.poller.remove(fd);
    this.socketKind[token] = SocketKind.Free;
    this.socketFd[token] = -1;
    this.socketRef[token] = -1;
    this.freeTokens[this.freeTokenCount++] = token;
  }

  // ---- the data path ----

  private onToken(wake: number): void {
    const token = wake & WAKE_TOKEN_MASK;
    const kind = this.socketKind[token];
    if (kind === SocketKind.Free) return; // closed since the wake-up was queued
    const fd = this.socketFd[token];
    this.counters.wakes++;
    try {
      if (kind === SocketKind.AddressWatch) {
        this.onAddressChange();
        return;
      }
      if (wake & WAKE_ERROR_FLAG) this.drainErrors(fd);
      this.drain(token, kind, fd);
    } finally {
      // Re-arm even if the drain threw; a socket closed during the drain is Free now.
      if (this.socketKind[token] !== SocketKind.Free && this.socketFd[token] === fd) {
        this.poller.rearm(fd, token);
      }
    }
  }

  private drain(token: number, kind: SocketKind, fd: number): void {
    const now = performance.now();
    const ref = this.socketRef[token];
    for (let batch = 0; batch < this.config.udp.drainBatchesMax; batch++) {
      if (this.slotsUsed === this.batchCount) this.endRound();
      const first = this.slotsUsed;
      const room = this.batchCount - first;
      const n = this.lib.rl_recv_batch(
        fd,
        (this.slabPtr + first * this.slotBytes) as Pointer,
        this.slotBytes,
        room,
        (this.metaPtr + first * META_BYTES) as Pointer,
      );
      if (n < 0) {
        this.onReceiveError(fd, -n);
        continue; // the error is consumed; datagrams may still wait behind it
      }
      if (n === 0) return;
      this.counters.batches++;
      this.slotsUsed += n;
      if (kind === SocketKind.Upstream) this.fromTargets(ref, first, n, now);
      else {
        faultDataPath(n);
        this.fromClients(
          kind === SocketKind.Listener ? ref : this.replies.listener[ref],
          first,
          n,
          now,
        );
      }
      if (n < room) return; // drained: the socket had no more
      // A new flow may have closed this very socket (reply pool full): stop reading it.
      if (this.socketFd[token] !== fd || this.socketKind[token] !== kind) return;
    }
  }

  /** Sends everything queued this round and frees the slab for the next. */
  private endRound(): void {
    this.flush();
    this.slotsUsed = 0;
  }

  /** Datagrams from clients, on a listener (or a reply socket that caught them). */
  private fromClients(listener: number, first: number, n: number, now: number): void {
    const sessions = this.sessions;
    const key = sessions.key;
    const meta32 = this.meta32;
    const meta16 = this.meta16;
    const c = this.counters;
    for (let i = first; i < first + n; i++) {
      const w = i * META_WORDS;
      const h = w * 2;
      const length = meta32[w + META.lengthWord];
      c.packetsFromClients++;
      c.bytesFromClients += meta32[w + META.lengthWireWord];
      const flags = meta16[h + META.flagsHalf];
      if (flags & META_FLAG_HAS_DROPS) {
        const drops = meta32[w + META.queueDropsWord];
        const last = this.listenerQueueDrops[listener];
        if (drops !== last) {
          c.droppedListenerQueueFull += (drops - last) >>> 0; // the kernel counter wraps at 2^32
          this.listenerQueueDrops[listener] = drops;
        }
      }
      if (flags & META_FLAG_TRUNCATED) {
        c.droppedOversized++;
        continue;
      }
      if ((flags & META_FLAG_HAS_ORIGDST) === 0) {
        c.droppedNoOriginalDst++;
        continue;
      }
      const sourcePort = meta16[h + META.sourcePortHalf];
      const targetPort = meta16[h + META.targetPortHalf];
      key[0] = meta32[w];
      key[1] = meta32[w + 1];
      key[2] = meta32[w + 2];
      key[3] = meta32[w + 3];
      key[4] = meta32[w + 4];
      key[5] = meta32[w + 5];
      key[6] = meta32[w + 6];
      key[7] = meta32[w + 7];
      key[8] = (sourcePort << 16) | targetPort;
      let s = sessions.find();
      if (s < 0) {
        s = this.openSession(listener, targetPort, meta32[w + META.sourceScopeWord], now);
        if (s < 0) continue;
      } else if (sessions.lastSeenMs[s] !== now) {
        sessions.touch(s, now);
      }
      if (sessions.sniffLeft[s] !== 0) this.sniff(s, i, length);
      sessions.packetsToTarget[s]++;
      sessions.bytesToTarget[s] += length;
      // To the original destination, from the session's upstream socket.
      this.sendToTarget[this.sendCount] = 1;
      const d = this.sendCount++ * SEND_WORDS;
      const send32 = this.send32;
      send32[d] = key[4];
      send32[d + 1] = key[5];
      send32[d + 2] = key[6];
      send32[d + 3] = key[7];
      this.send16[d * 2 + SEND.targetPortHalf] = targetPort;
      this.send16[d * 2 + SEND.flagsHalf] = 0;
      this.sendI32[d + SEND.fdWord] = this.upstreamFd[sessions.upstream[s]];
      send32[d + SEND.offsetWord] = i * this.slotBytes;
      send32[d + SEND.lengthWord] = length;
      send32[d + SEND.targetScopeWord] = meta32[w + META.targetScopeWord];
    }
  }

  /** Replies from original destinations, on an upstream socket. */
  private fromTargets(upstream: number, first: number, n: number, now: number): void {
    const sessions = this.sessions;
    const key = sessions.key;
    const meta32 = this.meta32;
    const meta16 = this.meta16;
    const c = this.counters;
    const upKeys = this.upstreams.keys;
    const u = upstream * UPSTREAM_KEY_WORDS;
    const clientPort = upKeys[u + 4];
    for (let i = first; i < first + n; i++) {
      const w = i * META_WORDS;
      const h = w * 2;
      const length = meta32[w + META.lengthWord];
      c.packetsFromTargets++;
      c.bytesFromTargets += meta32[w + META.lengthWireWord];
      if (meta16[h + META.flagsHalf] & META_FLAG_TRUNCATED) {
        c.droppedOversized++;
        continue;
      }
      const sourcePort = meta16[h + META.sourcePortHalf];
      // The session is (client endpoint, the address this reply came from).
      key[0] = upKeys[u];
      key[1] = upKeys[u + 1];
      key[2] = upKeys[u + 2];
      key[3] = upKeys[u + 3];
      key[4] = meta32[w];
      key[5] = meta32[w + 1];
      key[6] = meta32[w + 2];
      key[7] = meta32[w + 3];
      key[8] = (clientPort << 16) | sourcePort;
      const s = sessions.find();
      if (s < 0 || sessions.upstream[s] !== upstream) {
        c.droppedUnsolicitedReply++;
        continue;
      }
      if (sessions.lastSeenMs[s] !== now) sessions.touch(s, now);
      sessions.packetsToClient[s]++;
      sessions.bytesToClient[s] += length;
      // To the client, from the original destination: on the reply socket bound to
      // it, or on the listener with the source set by IP_PKTINFO.
      this.sendToTarget[this.sendCount] = 0;
      const d = this.sendCount++ * SEND_WORDS;
      const send32 = this.send32;
      send32[d] = key[0];
      send32[d + 1] = key[1];
      send32[d + 2] = key[2];
      send32[d + 3] = key[3];
      this.send16[d * 2 + SEND.targetPortHalf] = clientPort;
      const reply = sessions.reply[s];
      if (reply >= 0) {
        this.send16[d * 2 + SEND.flagsHalf] = 0;
        this.sendI32[d + SEND.fdWord] = this.replies.fd[reply];
      } else {
        this.send16[d * 2 + SEND.flagsHalf] = SEND_FLAG_SOURCE;
        send32[d + SEND.sourceAddrWord] = key[4];
        send32[d + SEND.sourceAddrWord + 1] = key[5];
        send32[d + SEND.sourceAddrWord + 2] = key[6];
        send32[d + SEND.sourceAddrWord + 3] = key[7];
        this.sendI32[d + SEND.fdWord] = this.listenerFd[sessions.listener[s]];
      }
      send32[d + SEND.offsetWord] = i * this.slotBytes;
      send32[d + SEND.lengthWord] = length;
      send32[d + SEND.targetScopeWord] = this.upstreamClientScope[upstream];
    }
  }

  /** Sends every queued datagram (both directions; rl_send_batch groups them by socket). */
  private flush(): void {
    const count = this.sendCount;
    if (count === 0) return;
    this.sendCount = 0;
    this.lib.rl_send_batch(this.slabPtr, this.slab.byteLength, this.sendsPtr, count);
    const c = this.counters;
    for (let k = 0; k < count; k++) {
      const result = this.sendI32[k * SEND_WORDS + SEND.resultWord];
      if (result < 0) {
        this.onSendError(k, -result);
      } else if (this.sendToTarget[k] === 1) {
        c.packetsToTargets++;
        c.bytesToTargets += result;
      } else {
        c.packetsToClients++;
        c.bytesToClients += result;
      }
    }
  }

  // ---- sessions ----

  /**
   * A new flow (the key holds client and original destination): judge it, then open its
   * session, reply path and upstream socket, all or nothing. Returns the session, or -1
   * with the datagram counted under exactly one drop reason.
   *
   * clientScope: the IPv6 scope id of a link-local client (0 otherwise).
   */
  private openSession(
    listener: number,
    targetPort: number,
    clientScope: number,
    now: number,
  ): number {
    const sessions = this.sessions;
    const key = sessions.key;
    const c = this.counters;
    if (!this.admissible(listener, targetPort)) return -1;
    const ipv6 = this.listenerIpv6[listener] === 1;
    const mode = this.config.listeners[listener].reply;
    const samePort = targetPort === this.listenerPort[listener];
    if (mode === "pktinfo" && !samePort) {
      c.droppedReplyModeMismatch++;
      return -1;
    }
    const usePktinfo = mode === "pktinfo" || (mode === "auto" && samePort);
    // The lookups below use scratch keys of their own; keep the client's words.
    const clientWord0 = key[0];
    const clientWord1 = key[1];
    const clientWord2 = key[2];
    const clientWord3 = key[3];
    const clientPort = key[8] >>> 16;
    const targetWord0 = key[4];
    const targetWord1 = key[5];
    const targetWord2 = key[6];
    const targetWord3 = key[7];

    // Fairness: a client past its own bounds is refused before it can evict anybody.
    const clients = this.clients;
    let client = clients.find(clientWord0, clientWord1, clientWord2, clientWord3);
    if (!clients.maySession(client)) {
      c.droppedClientSessionsLimit++;
      this.log(
        "client-sessions",
        `a client reached udp.sessionsPerClientMax (${clients.sessionsMax})`,
      );
      return -1;
    }
    const rk = this.replies.key;
    if (!usePktinfo) {
      rk[0] = targetWord0;
      rk[1] = targetWord1;
      rk[2] = targetWord2;
      rk[3] = targetWord3;
      rk[4] = targetPort;
      if (!clients.mayReply(client, this.replies.peek())) {
        c.droppedClientReplySocketsLimit++;
        this.log(
          "client-replies",
          `a client reached udp.replySocketsPerClientMax (${clients.replySocketsMax})`,
        );
        return -1;
      }
    }

    // Make room first: evicting a session may close its upstream socket, whose fd can
    // be in this round's queued sends (and be reused by the next socket()): send them.
    if (sessions.index.full) {
      this.flush();
      sessions.end(sessions.leastRecentlyUsed(), EndReason.Evicted);
    }

    let reply = -1;
    if (!usePktinfo) {
      rk[0] = targetWord0;
      rk[1] = targetWord1;
      rk[2] = targetWord2;
      rk[3] = targetWord3;
      rk[4] = targetPort;
      reply = this.replies.acquire(listener, ipv6, now);
      if (reply < 0) {
        const target = this.describeTarget(
          targetWord0,
          targetWord1,
          targetWord2,
          targetWord3,
          targetPort,
        );
        this.log(
          `reply-${this.replies.lastFailure}`,
          `no reply socket for ${target}: ${this.replies.describeFailure()}`,
        );
        return -1; // counted by the pool, by reason
      }
    }

    // From here every step is undone by sessions.end() -> onSessionEnd().
    key[0] = clientWord0;
    key[1] = clientWord1;
    key[2] = clientWord2;
    key[3] = clientWord3;
    key[4] = targetWord0;
    key[5] = targetWord1;
    key[6] = targetWord2;
    key[7] = targetWord3;
    key[8] = ((clientPort << 16) | targetPort) >>> 0;
    const s = sessions.create(now, this.config.timeoutClassByPort[targetPort]);
    client = clients.addSession(clientWord0, clientWord1, clientWord2, clientWord3);
    this.sessionClient[s] = client;
    sessions.listener[s] = listener;
    sessions.reply[s] = reply;
    this.sessionPair[s] = reply >= 0 ? clients.addReply(client, reply) : -1;
    const sniff = this.sniffByPort[targetPort];
    if (sniff !== PROTOCOL_UNKNOWN) {
      sessions.protocol[s] = sniff;
      sessions.sniffLeft[s] = sniff === PROTOCOL_DNS ? 1 : this.config.udp.sniffPacketsMax;
    }
    const upstream = this.acquireUpstream(
      s,
      clientWord0,
      clientWord1,
      clientWord2,
      clientWord3,
      clientPort,
      ipv6,
    );
    if (upstream < 0) {
      sessions.end(s, EndReason.Closed); // counted by acquireUpstream, by reason
      return -1;
    }
    this.upstreamClientScope[upstream] = clientScope;
    sessions.upstream[s] = upstream;
    c.sessionsCreated++;
    return s;
  }

  /**
   * The loop guards, on the key of a new flow (DESIGN.md "Never relay to ourselves"):
   * a flow is relayed only to a unicast destination that is not this host, in the
   * listener's own address family, and never when it is the relay's own upstream
   * traffic come back. Counts the drop and returns false otherwise.
   */
  private admissible(listener: number, targetPort: number): boolean {
    const key = this.sessions.key;
    const c = this.counters;
    const targetMapped = key[4] === 0 && key[5] === 0 && key[6] === V4_MAPPED_WORD;
    if (this.listenerIpv6[listener] === 1) {
      // An IPv6 listener only sees IPv6 packets: a v4-mapped destination or source was
      // crafted (::ffff:127.0.0.1 would be relayed to IPv4 loopback). A flow never
      // changes address family.
      const clientMapped = key[0] === 0 && key[1] === 0 && key[2] === V4_MAPPED_WORD;
      if (targetMapped || clientMapped) {
        c.droppedFamilyMismatch++;
        this.log("family", "dropped a v4-mapped address on an IPv6 listener");
        return false;
      }
    }
    const kind = this.locals.classify(key[4], key[5], key[6], key[7]);
    if (kind === TargetKind.Local) {
      if (this.isListenerItself(listener, targetPort)) {
        c.droppedToListener++;
        this.log("to-listener", "dropped datagrams sent straight to a listener (not TPROXY'd)");
      } else {
        c.droppedLocalTarget++;
        this.log(
          "local-target",
          "dropped flows to this host's own addresses (rules should skip " +
            "`fib daddr type local`; see bun run relay --print-rules)",
        );
      }
      return false;
    }
    if (kind === TargetKind.Multicast) {
      c.droppedMulticastTarget++;
      return false;
    }
    // Defence in depth beside the rules' mark exemption: a datagram from one of our own
    // upstream sockets (a local address and a port we hold) is our own traffic re-entering.
    const clientPort = key[8] >>> 16;
    if (
      this.upstreamPortRefs[clientPort] > 0 &&
      this.locals.isLocal(key[0], key[1], key[2], key[3])
    ) {
      c.droppedOwnTraffic++;
      this.log("own-traffic", "dropped the relay's own upstream datagrams re-entering a listener");
      return false;
    }
    return true;
  }

  /** The destination in the key is the listener's own address (or any, for a wildcard). */
  private isListenerItself(listener: number, targetPort: number): boolean {
    if (targetPort !== this.listenerPort[listener]) return false;
    const key = this.sessions.key;
    const a = this.listenerAddr;
    const b = listener * 4;
    if (a[b] === key[4] && a[b + 1] === key[5] && a[b + 2] === key[6] && a[b + 3] === key[7]) {
      return true;
    }
    // A wildcard listener (0.0.0.0 or ::) is reached directly on every local address.
    return (
      a[b] === 0 &&
      a[b + 1] === 0 &&
      (a[b + 2] === 0 || a[b + 2] === V4_MAPPED_WORD) &&
      a[b + 3] === 0
    );
  }

  private acquireUpstream(
    session: number,
    a0: number,
    a1: number,
    a2: number,
    a3: number,
    clientPort: number,
    ipv6: boolean,
  ): number {
    const uk = this.upstreams.scratch;
    uk[0] = a0;
    uk[1] = a1;
    uk[2] = a2;
    uk[3] = a3;
    uk[4] = clientPort;
    uk[5] = this.endpointIndependent ? ALL_DESTINATIONS : session;
    let upstream = this.upstreams.find();
    if (upstream >= 0) {
      this.upstreamRefs[upstream]++;
      return upstream;
    }
    const flags = SOCK.recvErr | (ipv6 ? SOCK.ipv6 | SOCK.v6Only : 0);
    const bindAddr = ipv6 ? this.config.upstreamAddr6 : this.config.upstreamAddr4;
    const fd = this.lib.rl_socket(
      flags,
      bindAddr,
      0,
      this.config.mark,
      this.config.udp.socketReceiveBytes,
      this.config.udp.socketSendBytes,
    );
    if (fd < 0) {
      const err = decodeSocketError(fd);
      if (isResourceErrno(err.errno)) this.counters.droppedNoDescriptors++;
      else this.counters.droppedUpstreamSocketFailed++;
      this.log(`upstream-${err.errno}`, `upstream socket: ${describeSocketError(err, ipv6)}`);
      return -1;
    }
    // All or nothing: the port (own-traffic guard), then the poller, then the index.
    const port = this.lib.rl_local_port(fd, this.scratchAddrPtr);
    const token = port > 0 ? this.registerSocket(SocketKind.Upstream, fd, -1) : -1;
    if (token < 0) {
      this.lib.rl_close(fd);
      this.counters.droppedUpstreamSocketFailed++;
      this.log(
        "upstream-register",
        `upstream socket: ` +
          (port <= 0
            ? `getsockname: ${errnoName(-port)}`
            : `epoll_ctl(ADD): ${errnoName(this.lastRegisterErrno)}`),
      );
      return -1;
    }
    upstream = this.upstreams.insert();
    assert(upstream >= 0, "upstream index full: it holds at most one socket per session");
    this.socketRef[token] = upstream;
    this.upstreamFd[upstream] = fd;
    this.upstreamToken[upstream] = token;
    this.upstreamRefs[upstream] = 1;
    this.upstreamPort[upstream] = port;
    this.upstreamPortRefs[port]++;
    return upstream;
  }

  private onSessionEnd(slot: number, reason: EndReason): void {
    const now = performance.now();
    if (reason === EndReason.Idle) this.counters.sessionsExpired++;
    else if (reason === EndReason.Evicted) this.counters.sessionsEvicted++;
    const upstream = this.sessions.upstream[slot];
    if (upstream >= 0 && --this.upstreamRefs[upstream] === 0) {
      const fd = this.upstreamFd[upstream];
      this.unregisterSocket(fd, this.upstreamToken[upstream]);
      this.lib.rl_close(fd);
      this.upstreamPortRefs[this.upstreamPort[upstream]]--;
      this.upstreamFd[upstream] = -1;
      this.upstreamToken[upstream] = -1;
      this.upstreams.remove(upstream);
    }
    const client = this.sessionClient[slot];
    const pair = this.sessionPair[slot];
    if (pair >= 0) this.clients.removeReply(client, pair);
    if (client >= 0) this.clients.removeSession(client);
    this.sessionClient[slot] = -1;
    this.sessionPair[slot] = -1;
    const reply = this.sessions.reply[slot];
    if (reply >= 0) this.replies.release(reply, now);
  }

  /** The local-address set may have changed: re-read it, end flows now local. */
  private onAddressChange(): void {
    const before = this.locals.refreshes;
    try {
      this.locals.onWatchReadable();
    } catch (err) {
      // Keep the last good set (the guard stays on); say so, rate-limited.
      this.log("locals", `local-address refresh failed: ${(err as Error).message}`);
    }
    this.localsRefreshedMs = performance.now();
    if (this.locals.refreshes !== before) this.endLocalSessions();
  }

  /**
   * After the host gained an address, a session may now lead to it: end those (they
   * would loop). Bounded by the table's capacity; runs only on an address change.
   */
  private endLocalSessions(): void {
    const keys = this.sessions.index.keys;
    const local: number[] = [];
    this.sessions.forEach((s) => {
      const b = s * SESSION_KEY_WORDS;
      const kind = this.locals.classify(keys[b + 4], keys[b + 5], keys[b + 6], keys[b + 7]);
      if (kind !== TargetKind.Remote) {
        local.push(s);
      }
    });
    if (local.length === 0) return;
    this.flush(); // their upstream fds may be in this round's sends
    for (const s of local) this.sessions.end(s, EndReason.Closed);
    this.counters.sessionsEndedLocalTarget += local.length;
  }

  // ---- classification ----

  /**
   * Parses datagram i (in place, in the WASM packet area) as the protocol its session's
   * port promises, and records the name. Runs only for a flow's first datagrams.
   */
  private sniff(s: number, i: number, length: number): void {
    const sessions = this.sessions;
    const offset = this.slabWasmOffset + i * this.slotBytes;
    sessions.sniffLeft[s]--;
    if (sessions.protocol[s] === PROTOCOL_DNS) {
      const r = this.dns.parse(offset, length);
      if (r.code === Code.ok && r.qr === 0) {
        sessions.name[s] = r.name();
        this.counters.sniffedDns++;
      } else {
        sessions.protocol[s] = PROTOCOL_UNKNOWN;
        this.counters.sniffMalformed++;
      }
      return;
    }
    const r = this.quic.parseInitial(offset, length);
    if (r.code === Code.ok) {
      sessions.name[s] = r.sni();
      sessions.sniffLeft[s] = 0;
      this.counters.sniffedQuic++;
    } else if (r.code === Code.short) {
      // More Initials of this connection to come (a hello over several packets).
      if (sessions.sniffLeft[s] === 0) this.counters.sniffIncomplete++;
    } else {
      sessions.protocol[s] = PROTOCOL_UNKNOWN;
      sessions.sniffLeft[s] = 0;
      this.counters.sniffMalformed++;
    }
  }

  // ---- errors ----

  private onReceiveError(fd: number, errno: number): void {
    switch (errno) {
      case E.ECONNREFUSED:
      case E.EHOSTUNREACH:
      case E.ENETUNREACH:
      case E.EHOSTDOWN:
      case E.ENETDOWN:
      case E.EACCES:
      case E.EPERM:
        // sk_err from an ICMP error; the details wait in the error queue.
        this.drainErrors(fd);
        return;
      default:
        this.counters.receiveErrors++;
        if (classifyIoErrno(errno) === IoOutcome.ProgrammerError) {
          throw new Error(`recvmmsg on fd ${fd}: ${errnoName(errno)} (a bookkeeping bug)`);
        }
        unexpectedErrno("recvmmsg", errno);
    }
  }

  private drainErrors(fd: number): void {
    const n = this.lib.rl_recv_errors(fd, ERRORS_DRAIN_MAX, this.errorMetaPtr);
    if (n <= 0) return;
    const c = this.counters;
    for (let i = 0; i < n; i++) {
      const errno = this.errorMeta32[i * META_WORDS + META.lengthWord];
      if (errno === E.ECONNREFUSED) c.icmpPortUnreachable++;
      else if (errno === E.EHOSTUNREACH) c.icmpHostUnreachable++;
      else if (errno === E.ENETUNREACH) c.icmpNetUnreachable++;
      else c.icmpOther++;
    }
  }

  private onSendError(k: number, errno: number): void {
    const c = this.counters;
    switch (classifyIoErrno(errno)) {
      case IoOutcome.WouldBlock:
        c.sendWouldBlock++;
        return;
      case IoOutcome.Unreachable:
        c.sendUnreachable++;
        return;
      case IoOutcome.TooLarge:
        c.sendTooLarge++;
        return;
      case IoOutcome.Resources:
        c.sendResources++;
        return;
      case IoOutcome.ProgrammerError:
        throw new Error(`sendmmsg entry ${k}: ${errnoName(errno)} (a bookkeeping bug)`);
      default:
        c.sendOther++;
        this.log(`send-${errno}`, `sendmmsg: ${errnoName(errno)} (${errno})`);
    }
  }

  // ---- control plane ----

  private tick(): void {
    if (!this.poller.check()) return; // the epoll thread died: onFatal has been called
    const now = performance.now();
    this.sessions.expire(now, EXPIRE_BUDGET_PER_TICK);
    this.replies.sweep(now, REPLY_SWEEP_BUDGET_PER_TICK);
    if (now - this.localsRefreshedMs >= LOCAL_REFRESH_MS) this.onAddressChange();
    // Lost wake-up recovery: drain listeners directly (cheap: one recvmmsg each when idle).
    for (let i = 0; i < this.listenerFd.length; i++) {
      if (this.listenerFd[i] >= 0) this.onToken(this.listenerToken[i]);
    }
    this.endRound();
  }

  private describeTarget(w0: number, w1: number, w2: number, w3: number, port: number): string {
    return formatEndpoint(new Uint8Array(Uint32Array.of(w0, w1, w2, w3).buffer), 0, port);
  }

  log(reason: string, message: string): void {
    this.logger.log(reason, message);
  }
}
