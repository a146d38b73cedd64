// The UDP packet path, the receive core:
//
//   listener (TPROXY) --recvmmsg--> session table --send queue--> upstream socket --> target
//   client <--send queue-- listener (IP_PKTINFO) or reply socket <--recvmmsg-- upstream
//
// One thread. The poller hands us ready sockets in rounds (src/sys/poller.ts): for each
// we receive up to drainBatchesMax batches into the free part of the slab and queue one
// send per datagram (src/udp/send_queue.ts). At the end of the round, or when the slab
// is full, everything queued goes out in one rl_send_batch.
//
// The parts around it, each its own module:
//   src/udp/registry.ts        token -> socket (what the poller reports)
//   src/udp/send_queue.ts      the one writer of send entries, both directions
//   src/egress/upstream_pool.ts  sockets toward the targets (RFC 4787 mapping)
//   src/egress/reply_pool.ts   transparent sockets bound to original destinations
//   src/classify/sniffer.ts    DNS name / QUIC SNI of a flow's first datagrams
//   src/flow/table.ts          sessions; src/flow/clients.ts per-client bounds;
//   src/flow/local_targets.ts  what is this host (never relayed to)
//   src/policy/policy.ts       the rules: what a new flow does (once per flow)
//   src/udp/hold_buffer.ts     a flow's first datagrams while the rules await its name
//   src/egress/outbounds.ts    outbounds as sessions hold them; forward target health
//
// The policy decides once per new flow, from its addresses, ports and listener, and
// when a rule looks at names and the flow's port is sniffed, from its name: until the
// sniffer has it (or gives up, or udp.holdTimeoutMs passes) the flow is PENDING and its
// datagrams wait, copied, in the hold buffer; then they are released in order through
// the outbound chosen. The decision stays on the session (rule, outbound): the per-
// datagram path only reads it. drop: datagrams counted and dropped; reject: each answered
// by an ICMP port unreachable from the original destination (rate-limited); direct: to the
// original destination; forward: to one of the outbound's targets, whose replies go
// back to the client from the original destination like any other.
//
// Memory: one receive slab (batchCountMax slots of datagramBytesMax, in the WASM
// parsers' packet area so they parse in place), one metadata table and one send table,
// allocated here once. Payloads are never copied: send entries point into the slab,
// and slots are reused only after their sends went out.

import { type Pointer, ptr, type RelayLib } from "../sys/ffi.ts";
import { Sniffer } from "../classify/sniffer.ts";
import { parsersLoad } from "../classify/wasm.ts";
import { QuicConnectionIds } from "../flow/quic_ids.ts";
import { type Config, type ListenerConfig, PACKET_AREA_BYTES } from "../config/load.ts";
import { log as startLog, RateLimitedLog } from "../control/log.ts";
import { type SessionQuery, SESSIONS_LIMIT_MAX } from "../control/query.ts";
import { TopK } from "../control/top_k.ts";
import { DnsForwarder, parseQuestion, type QueryDecision, questionName } from "../dns/forwarder.ts";
import { ReplyPool } from "../egress/reply_pool.ts";
import { type ForwardTargets, Outbounds } from "../egress/outbounds.ts";
import { parseUdpHeader, UDP_FRAGMENTED, UdpSource, writeUdpHeader } from "../egress/socks5.ts";
import { AssociationEvent, AssociationState, Socks5Associations } from "../egress/socks5_udp.ts";
import { type UpstreamOptions, UpstreamPool } from "../egress/upstream_pool.ts";
import { ACTION_DNS_ANSWER, ACTION_DROP, ACTION_REJECT, rejectsUdp } from "../policy/config.ts";
import { compilePolicy, FLOW_UDP, NEED_NAME, type Policy, PolicyFlow } from "../policy/policy.ts";
import { ClientLimits } from "../flow/clients.ts";
import { LocalTargets, TargetKind, V4_MAPPED_WORD } from "../flow/local_targets.ts";
import {
  type FlowBatch,
  FlowRecords,
  flowPolicyNames,
  FLOW_RECORDS_MAX,
  REPLY_PKTINFO,
  REPLY_SOCKET,
} from "../flow/flow_records.ts";
import { selectSessions } from "../flow/select.ts";
import {
  EndReason,
  OUTBOUND_PENDING,
  PROTOCOL_NAMES,
  PROTOCOL_QUIC,
  SessionTable,
} from "../flow/table.ts";
import { batchBucket, UdpCounters } from "../metrics.ts";
import { formatEndpoint } from "../sys/addr.ts";
import { assertionFailed } from "../sys/assert.ts";
import {
  classifyIoErrno,
  decodeSocketError,
  describeSocketError,
  E,
  errnoName,
  IoOutcome,
  isPrivilegeErrno,
  StartError,
  unexpectedErrno,
} from "../sys/errno.ts";
import {
  META,
  META_BYTES,
  META_FLAG_HAS_DROPS,
  META_FLAG_HAS_ORIGDST,
  META_FLAG_TRUNCATED,
  META_WORDS,
  SOCK,
} from "../sys/layout.ts";
import { type CancelTimer, Poller, WAKE_ERROR_FLAG, WAKE_TOKEN_MASK } from "../sys/poller.ts";
import { faultDataPath } from "../sys/test_faults.ts";
import { HoldBuffer, HoldResult } from "./hold_buffer.ts";
import type { WorkerCounts } from "./multi_plane.ts";
import { SocketKind, SocketRegistry } from "./registry.ts";
import { Direction, SendQueue } from "./send_queue.ts";
import { OffloadCounters, setUpOffload, type UdpOffload } from "./offload.ts";
import { chooseIoBackend, URING_STATS, type UdpIoBackend, UringPlane } from "./uring_plane.ts";

/**
 * A policy action as a session takes it: a dnsAnswer outbound answers DNS queries only
 * (src/dns/forwarder.ts); any other flow its rule matches is dropped.
 */
const sessionAction = (action: number) => (action <= ACTION_DNS_ANSWER ? ACTION_DROP : action);

/** Forced DNS: upstream sockets are reserved for at least this many resolvers. */
const DNS_RESOLVERS_MIN = 16;

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
/** io_uring send slots at least (datagrams in flight; more are sent at once). */
const URING_SEND_SLOTS_MIN = 256;
/** Timer period: expiry, idle reply sockets, lost wake-up recovery. */
const TICK_MS = 250;
/** udp.holdPacketsPerFlowMax's schema maximum (the hold send queue's capacity). */
const HOLD_PACKETS_PER_FLOW_MAX = 64;

export interface SessionView {
  client: string;
  target: string;
  listener: string;
  reply: "pktinfo" | "socket";
  /** "dns", "quic" or "udp" (not recognised), and the DNS name or QUIC SNI. */
  protocol: string;
  name: string | null;
  /** The policy rule that decided the flow (null: not decided yet), and what it does:
   * an outbound's name, "drop", "reject", or "pending" while the name is awaited. */
  rule: string | null;
  outbound: string;
  ageMs: number;
  idleMs: number;
  packetsToTarget: number;
  bytesToTarget: number;
  packetsToClient: number;
  bytesToClient: number;
  /** With udp.workers > 1: the worker holding the session (src/udp/multi_plane.ts). */
  worker?: number;
}

/** The `udp` object of the metrics line: every counter, then the gauges. */
export type UdpValues = ReturnType<UdpRelay["values"]>;

export interface UdpSnapshot {
  uptimeMs: number;
  udp: UdpValues;
  sessions: SessionView[];
  /** With a query: how many sessions matched it (`sessions` holds at most its limit). */
  sessionsMatched?: number;
  /** With udp.workers > 1: a few values of each worker (the rest are summed in `udp`). */
  workers?: WorkerCounts[];
}

export class UdpRelay {
  readonly counters = new UdpCounters();
  readonly sessions: SessionTable;
  readonly replies: ReplyPool;
  readonly upstreams: UpstreamPool;
  /** What the loop guard treats as this host (checked once per new flow). */
  readonly locals: LocalTargets;

  private readonly lib: RelayLib;
  /** Replaced by reconfigure() (its live fields only differ; see src/config/reload.ts). */
  private config: Config;
  private readonly poller: Poller;
  /** The io_uring plane (udp.ioBackend), or null: the poller's epoll does the I/O. */
  private readonly uring: UringPlane | null;
  readonly ioBackend: UdpIoBackend;
  /** Why this backend (the start-up log line). */
  readonly ioBackendReason: string;
  private readonly registry: SocketRegistry;
  private readonly queue: SendQueue;
  private readonly sniffer: Sniffer;
  private readonly clients: ClientLimits;

  // Receive side. The slab is the WASM parsers' packet area: recvmmsg writes there and
  // the parsers read the same bytes in place.
  /** Memory offset of slot 0 inside the WASM memory (what the parsers take). */
  private readonly slabWasmOffset: number;
  private readonly slotBytes: number;
  /** GSO and GRO as switched on at start (src/udp/offload.ts). */
  private readonly offload: UdpOffload;
  private readonly offloadCounters: OffloadCounters;
  private readonly batchCount: number;
  private readonly slabPtr: Pointer;
  private readonly meta: Uint8Array;
  private readonly metaPtr: Pointer;
  private readonly meta32: Uint32Array;
  private readonly meta16: Uint16Array;
  /** Slab slots (and metadata records) holding datagrams of this round. */
  private slotsUsed = 0;
  /** Scratch metadata for the error queue, apart from the slots of the round. */
  private readonly errorMeta: Uint8Array;
  private readonly errorMetaPtr: Pointer;
  private readonly errorMeta32: Uint32Array;

  // Listeners.
  private readonly listenerFd: Int32Array;
  private readonly listenerToken: Int32Array;
  private readonly listenerPort: Uint16Array;
  /** Listener address words (4 per listener) and family, for the loop checks. */
  private readonly listenerAddr: Uint32Array;
  private readonly listenerIpv6: Uint8Array;
  /** SO_RXQ_OVFL's counter last seen per listener (cumulative in the kernel). */
  private readonly listenerQueueDrops: Uint32Array;

  /** Per session: its ClientLimits slot, and its (client, reply socket) pair or -1. */
  /** QUIC connection IDs -> sessions (udp.quicFollowConnectionIds), or null. */
  private readonly quicIds: QuicConnectionIds | null;
  /** Per destination port: 1 on udp.quicPorts. */
  private readonly quicPort = new Uint8Array(65536);
  /** The whole WASM memory (the slab is in it): packet headers are read from here. */
  private readonly wasmBytes: Uint8Array;
  private readonly sessionClient: Int32Array;
  private readonly sessionPair: Int32Array;

  // The policy. Recompiled by reconfigure(): new flows only; sessions keep their rule and
  // outbound (a runtime index in `outbounds`, which outlives the config that made it).
  private policy: Policy;
  /** Bumped per reconfigure: a session's rule index is its generation's. */
  private policyGeneration = 0;
  private readonly sessionGeneration: Uint16Array;
  /** The facts a decision reads; its words are refilled from the key per decision. */
  private readonly flow = new PolicyFlow();
  private readonly outbounds: Outbounds;
  /** Per outbound runtime: how its upstream sockets are made (rebuilt with the policy). */
  private upstreamOptions: UpstreamOptions[] = [];
  /** The same for sessions of a client-source listener (direct outbounds only). */
  private upstreamOptionsClientSource: UpstreamOptions[] = [];
  /** Per session: a hash of its key, for a forward outbound's stable target choice. */
  private readonly sessionHash: Uint32Array;
  private readonly hold: HoldBuffer;
  /** Forced DNS (src/dns/forwarder.ts); per port: 1 on udp.dnsPorts. */
  private readonly dns: DnsForwarder;
  private readonly dnsPort = new Uint8Array(65536);
  private readonly dnsDecision: QueryDecision = { rule: -1, outbound: -1, name: null };
  /**
   * The rule forcedDns() chose, on the query's name, for the datagram being handled when
   * its action takes a session (direct, socks5, drop, reject); -1 otherwise. A query is
   * decided once: openSession() uses it instead of deciding again without the name (and
   * holding the flow while the sniffer reads the same name again).
   */
  private dnsDecidedRule = -1;
  /** Sends the held datagrams (its slab is the hold arena). */
  private readonly holdQueue: SendQueue;
  /** The WASM memory as words: held datagrams are copied from the slab through it. */
  private readonly wasm32: Uint32Array;
  /** The hold timer (Poller.after: run from the Worker's loop itself, inline mode). */
  private holdTimer: CancelTimer | null = null;
  private readonly holdTimerBound = () => {
    this.holdTimer = null;
    this.releaseExpiredHolds(performance.now());
    this.endRound();
  };
  /** SOCKS5 UDP associations, by upstream socket (src/egress/socks5_udp.ts). */
  private readonly socks: Socks5Associations;
  /** Per upstream socket: its sessions waiting for the association (a list through
   * waitNext/waitPrev, per session), released in order once it is ready. */
  private readonly waitHead: Int32Array;
  private readonly waitNext: Int32Array;
  private readonly waitPrev: Int32Array;
  /** The SOCKS5 UDP header of a datagram being sent (its end is where the payload
   * starts: written right-aligned), and its destination. */
  private readonly socksHeader = new Uint8Array(new ArrayBuffer(32));
  private readonly socksHeaderPtr: Pointer = ptr(this.socksHeader);
  private readonly socksDest = new Uint8Array(new ArrayBuffer(16));
  private readonly socksDest32 = new Uint32Array(this.socksDest.buffer);
  private readonly socksSource = new UdpSource();
  private readonly socksSource32 = new Uint32Array(this.socksSource.addr.buffer);
  /** Raw sockets for reject's ICMP (-1: none), and the rate limit's current second. */
  private icmp4Fd = -1;
  private icmp6Fd = -1;
  private rejectSecond = 0;
  private rejectSentInSecond = 0;
  /** Client and target addresses for rl_icmp_unreachable (own ArrayBuffer). */
  private readonly icmpAddrs = new Uint8Array(new ArrayBuffer(32));
  private readonly icmpAddrs32 = new Uint32Array(this.icmpAddrs.buffer);
  private readonly icmpAddrsPtr: Pointer = ptr(this.icmpAddrs);

  /** Ended sessions waiting for the flow log (null: no flow log), and who takes them. */
  private readonly flows: FlowRecords | null;
  private readonly onFlows: (batch: FlowBatch) => void;

  private localsRefreshedMs = 0;
  private watchToken = -1;
  private cancelTick: CancelTimer | null = null;
  private readonly logger = new RateLimitedLog();
  private stopped = false;
  /** Start time of the relay's monotonic clock (performance.now()). */
  readonly startedMs = performance.now();

  // Control plane (snapshots between two waits): built once, reused by every request.
  private readonly listenerNames: string[];
  private readonly selected = new TopK(SESSIONS_LIMIT_MAX);
  private readonly viewKey = new Uint32Array(8);
  private readonly viewKeyBytes = new Uint8Array(this.viewKey.buffer);

  /**
   * inline: the calling thread waits in epoll_wait itself (a Worker; see worker.ts).
   * onFatal: a broken invariant on the data path (a bug): the owner ends the process
   * with this message; without it the error is thrown.
   * onFlows: with flowLog.path set, gets the sessions that ended, a batch per timer tick.
   */
  constructor(
    lib: RelayLib,
    config: Config,
    options: {
      inline?: boolean;
      onFatal?: (message: string) => void;
      onFlows?: (batch: FlowBatch) => void;
    } = {},
  ) {
    this.lib = lib;
    this.config = config;
    const udp = config.udp;
    this.batchCount = udp.batchCountMax;
    // One slot per datagram of a batch; 64-byte aligned slots keep payloads on their
    // own cache lines.
    this.slotBytes = Math.ceil(udp.datagramBytesMax / 64) * 64;
    const choice = chooseIoBackend(lib, udp.ioBackend, options.inline === true);
    // The ring sends each datagram as its own SQE and does not split GRO buffers: with
    // io_uring both offloads stay off (docs/udp_gso.md).
    const offloads = choice.backend === "epoll" ? udp : { gso: false, gro: false };
    this.offload = setUpOffload(lib, offloads, this.slotBytes);
    this.offloadCounters = new OffloadCounters(lib);
    const parsers = parsersLoad();
    if (parsers.packetArea.bytesMax !== PACKET_AREA_BYTES) {
      throw new Error(
        `WASM packet area is ${parsers.packetArea.bytesMax} bytes, ` +
          `config assumes ${PACKET_AREA_BYTES}: rebuild (bash scripts/build.sh)`,
      );
    }
    this.sniffer = new Sniffer(parsers, config, this.counters);
    this.slabWasmOffset = parsers.packetArea.offset;
    this.wasmBytes = parsers.bytes;
    if (this.slabWasmOffset % 64 !== 0) {
      throw new Error("WASM packet area is not 64-byte aligned: rebuild (bash scripts/build.sh)");
    }
    this.wasm32 = new Uint32Array(parsers.memory.buffer);
    this.quicIds =
      udp.quicFollowConnectionIds && udp.quicPorts.length > 0
        ? new QuicConnectionIds(udp.sessionsMax)
        : null;
    for (const port of udp.quicPorts) this.quicPort[port] = 1;
    const slabBytes = this.slotBytes * this.batchCount;
    const slab = new Uint8Array(parsers.memory.buffer, this.slabWasmOffset, slabBytes);
    this.slabPtr = ptr(slab);
    // Each array on its own ArrayBuffer: JSC keeps a small typed array's bytes in the GC
    // heap and moves them when `.buffer` is first read, which would leave a cached ptr()
    // pointing at freed memory.
    this.meta = new Uint8Array(new ArrayBuffer(META_WORDS * 4 * this.batchCount));
    this.metaPtr = ptr(this.meta);
    this.meta32 = new Uint32Array(this.meta.buffer);
    this.meta16 = new Uint16Array(this.meta.buffer);
    this.errorMeta = new Uint8Array(new ArrayBuffer(META_WORDS * 4 * ERRORS_DRAIN_MAX));
    this.errorMetaPtr = ptr(this.errorMeta);
    this.errorMeta32 = new Uint32Array(this.errorMeta.buffer);
    const log = (reason: string, message: string) => this.log(reason, message);
    this.queue = new SendQueue(lib, this.slabPtr, slabBytes, this.batchCount, this.counters, log);

    const listenerCount = config.listeners.length;
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
    this.listenerNames = config.listeners.map((l) => l.name);

    this.locals = new LocalTargets(lib);
    this.clients = new ClientLimits(
      udp.sessionsMax,
      udp.sessionsPerClientMax,
      udp.replySocketsPerClientMax,
    );
    this.sessionClient = new Int32Array(udp.sessionsMax).fill(-1);
    this.sessionPair = new Int32Array(udp.sessionsMax).fill(-1);
    this.sessionGeneration = new Uint16Array(udp.sessionsMax);
    this.sessionHash = new Uint32Array(udp.sessionsMax);
    this.policy = compilePolicy(config);
    this.outbounds = new Outbounds(udp.sessionsMax, this.counters);
    this.setOutbounds(config);
    this.hold = new HoldBuffer(
      this.slotBytes,
      udp.holdBytesMax,
      udp.sessionsMax,
      udp.holdPacketsPerFlowMax,
      udp.holdBytesPerFlowMax,
    );
    this.holdQueue = new SendQueue(
      lib,
      this.hold.arenaPtr,
      this.hold.arena.byteLength,
      // The schema's maximum of holdPacketsPerFlowMax: a reload may raise it.
      HOLD_PACKETS_PER_FLOW_MAX,
      this.counters,
      log,
    );
    this.sessions = new SessionTable(udp.sessionsMax, config.timeoutClassesMs);
    this.sessions.onEnd = (slot, reason) => this.onSessionEnd(slot, reason);
    const onFlows = options.onFlows;
    this.onFlows = onFlows ?? (() => {});
    this.flows =
      config.flowLog.path !== "" && onFlows
        ? new FlowRecords(
            "udp",
            config.listeners.map((l) => l.name),
            FLOW_RECORDS_MAX,
            ...flowPolicyNames(config),
          )
        : null;

    // Tokens: listeners + one upstream socket per session at most + reply sockets.
    // SOCKS5 control connections: associationsMax per socks5 outbound at start (a reload
    // that adds more finds the registry full: those associations fail, counted).
    const controlsMax = config.policy.outbounds.reduce(
      (sum, o) => sum + (o.type === "socks5" && o.udp ? o.associationsMax : 0),
      0,
    );
    // Forced DNS: dnsUpstreamSocketsPerTarget per forward target at start, and room for
    // DNS_RESOLVERS_MIN resolvers at least, so a reload may add some (beyond that, queries
    // to a resolver with no socket are dropped and counted: socket_failed).
    const dnsSocketsMax =
      udp.dnsUpstreamSocketsPerTarget *
      Math.max(
        DNS_RESOLVERS_MIN,
        config.policy.outbounds.reduce(
          (sum, o) => sum + (o.type === "forward" ? o.targets.length : 0),
          0,
        ),
      );
    const tokensMax =
      listenerCount +
      udp.sessionsMax +
      udp.replySocketsMax +
      EXTRA_TOKENS +
      controlsMax +
      dnsSocketsMax;
    this.poller = new Poller(lib, (token) => this.onToken(token), {
      tokensMax,
      inline: options.inline === true,
      busyPollUs: udp.busyPollUs,
      onRoundEnd: () => this.endRound(),
      onError: (err) => this.onDataPathError(err, options.onFatal),
    });
    this.ioBackend = choice.backend;
    this.ioBackendReason = choice.reason;
    this.uring =
      choice.backend === "io_uring"
        ? new UringPlane(lib, {
            tokensMax,
            slotBytes: this.slotBytes,
            sendSlots: Math.max(URING_SEND_SLOTS_MIN, 4 * this.batchCount),
            poller: this.poller,
            onToken: (token) => this.onToken(token),
            onRoundEnd: () => this.endRound(),
            onError: (err) => this.onDataPathError(err, options.onFatal),
            onSendResult: (toTarget, result) => this.queue.countResult(toTarget, result),
          })
        : null;
    this.queue.uring = this.uring;
    this.holdQueue.uring = this.uring;
    const registry = new SocketRegistry(this.poller, tokensMax, this.uring);
    this.registry = registry;
    this.upstreams = new UpstreamPool(
      lib,
      config,
      udp.sessionsMax,
      (fd, upstream) => {
        // Where the servers' bulk replies arrive; failing, the socket just gets no GRO.
        if (this.offload.groSpanSlots > 0) lib.rl_udp_gro(fd, 1);
        return registry.register(SocketKind.Upstream, fd, upstream);
      },
      (token) => registry.unregister(token),
      () => registry.lastErrno,
    );
    const poller = this.poller;
    this.socks = new Socks5Associations(
      lib,
      udp.sessionsMax,
      this.counters,
      config.mark,
      (fd, upstream) => registry.register(SocketKind.Socks5Control, fd, upstream),
      (token) => registry.unregister(token),
      (fd, token) => poller.armOut(fd, token),
      (fd, token) => poller.readsOnly(fd, token),
    );
    this.waitHead = new Int32Array(udp.sessionsMax).fill(-1);
    this.waitNext = new Int32Array(udp.sessionsMax).fill(-1);
    this.waitPrev = new Int32Array(udp.sessionsMax).fill(-1);
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
      (fd, entry) => registry.register(SocketKind.Reply, fd, entry),
      (token) => registry.unregister(token),
    );
    for (const port of udp.dnsPorts) this.dnsPort[port] = 1;
    this.dns = new DnsForwarder(
      {
        lib,
        counters: this.counters,
        bytes: this.wasmBytes,
        slabAt: this.slabWasmOffset,
        slotBytes: this.slotBytes,
        meta32: this.meta32,
        meta16: this.meta16,
        queue: this.queue,
        replies: this.replies,
        listenerFd: this.listenerFd,
        mark: config.mark,
        bind4: config.upstreamAddr4,
        bind6: config.upstreamAddr6,
        socketReceiveBytes: udp.socketReceiveBytes,
        socketSendBytes: udp.socketSendBytes,
        register: (fd, socket) => registry.register(SocketKind.DnsUpstream, fd, socket),
        unregister: (token) => registry.unregister(token),
        log,
        flows: this.flows,
        generation: () => this.policyGeneration,
      },
      udp.dnsQueriesInFlightMax,
      udp.dnsUpstreamSocketsPerTarget,
      dnsSocketsMax,
      (arenaPtr, arenaBytes, capacity) => {
        const queue = new SendQueue(lib, arenaPtr, arenaBytes, capacity, this.counters, log);
        queue.uring = this.uring;
        return queue;
      },
    );
  }

  // Not logged and carried on: a data-path exception is a bug whose state cannot be
  // trusted (a half-written send entry could misdeliver). End the process loudly.
  private onDataPathError(err: unknown, onFatal: ((message: string) => void) | undefined): void {
    const message = `UDP data path failed: ${(err as Error).stack ?? err}`;
    if (onFatal) onFatal(message);
    else throw err;
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
      this.watchToken = this.registry.register(SocketKind.AddressWatch, watchFd, 0);
      if (this.watchToken < 0) {
        throw new Error(`epoll_ctl(ADD) address watch: ${errnoName(this.registry.lastErrno)}`);
      }
      this.config.listeners.forEach((l, i) => {
        this.openListener(l, i);
      });
      const problem = this.openRejectSockets();
      if (problem !== null) throw new StartError(problem, true);
    } catch (err) {
      this.closeListeners();
      this.closeWatch();
      this.closeRejectSockets();
      throw err;
    }
    if (this.uring !== null)
      this.uring.start(); // the poller's loop, the ring's wait
    else this.poller.start();
    startLog.info(`udp io backend ${this.ioBackend} (${this.ioBackendReason})`);
    if (this.offload.note !== null) this.log("udp-offload", this.offload.note);
    // The tick expires sessions, closes idle reply sockets, and keeps the process alive
    // (a threadsafe JSCallback does not; inline, the loop does). Its listener drain also
    // recovers from a wake-up that never came.
    this.cancelTick = this.poller.every(TICK_MS, () => this.tick());
  }

  /**
   * Inline mode: the handle the main thread passes to Poller.notify() before it posts a
   * message to this thread (src/udp/plane.ts), so the loop lets the event loop deliver it.
   */
  get notifyHandle(): number {
    return this.poller.notifyHandle;
  }

  /** Inline mode: a message announced through notifyHandle was handled. */
  messageHandled(): void {
    this.poller.messageHandled();
  }

  /** Joins the poll thread, closes the callback, then every socket. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.cancelTick?.();
    this.uring?.stop();
    this.poller.stop();
    const ended: number[] = [];
    this.sessions.forEach((slot) => {
      ended.push(slot);
    });
    for (const slot of ended) {
      // Every session open at stop gets its record: hand over a full buffer first.
      if (this.flows?.full) this.flushFlows();
      this.sessions.end(slot, EndReason.Closed);
    }
    this.flushFlows();
    this.replies.closeAll();
    this.dns.closeAll();
    this.closeListeners();
    this.closeWatch();
    this.closeRejectSockets();
    this.holdTimer?.();
    this.holdTimer = null;
  }

  /**
   * When a rule can reject UDP: the raw sockets its ICMP messages leave on, one per
   * family of the listeners. Returns null, or why they cannot be opened (CAP_NET_RAW).
   */
  private openRejectSockets(): string | null {
    if (!rejectsUdp(this.config.policy)) return null;
    const listeners = this.config.listeners;
    for (const ipv6 of [false, true]) {
      if (!listeners.some((l) => l.ipv6 === ipv6)) continue;
      if ((ipv6 ? this.icmp6Fd : this.icmp4Fd) >= 0) continue;
      const fd = this.lib.rl_icmp_open(ipv6 ? 1 : 0);
      if (fd < 0) {
        return (
          `a rule rejects UDP: the ICMP${ipv6 ? "v6" : ""} port-unreachable socket (raw, ` +
          `${ipv6 ? "IPV6_TRANSPARENT" : "IPPROTO_RAW"}) could not be opened: ` +
          `${errnoName(-fd)}. It needs CAP_NET_RAW besides CAP_NET_ADMIN ` +
          `(or use "drop" instead of "reject")`
        );
      }
      if (ipv6) this.icmp6Fd = fd;
      else this.icmp4Fd = fd;
    }
    return null;
  }

  private closeRejectSockets(): void {
    if (this.icmp4Fd >= 0) this.lib.rl_close(this.icmp4Fd);
    if (this.icmp6Fd >= 0) this.lib.rl_close(this.icmp6Fd);
    this.icmp4Fd = -1;
    this.icmp6Fd = -1;
  }

  /** The policy's outbounds as sessions will hold them, and how their sockets are made. */
  private setOutbounds(config: Config): void {
    this.outbounds.setPolicy(config.policy.outbounds);
    config.policy.outbounds.forEach((o, i) => {
      const runtime = this.outbounds.ofPolicy(i);
      this.upstreamOptions[runtime] =
        o.type === "direct"
          ? {
              outbound: runtime,
              perSession: false,
              bindAddr4: o.bindAddr4,
              bindAddr6: o.bindAddr6,
              mark: o.mark,
              interface: o.interface,
              clientSource: false,
            }
          : {
              outbound: runtime,
              perSession: true,
              bindAddr4: null,
              bindAddr6: null,
              mark: null,
              interface: null,
              clientSource: false,
            };
      this.upstreamOptionsClientSource[runtime] = {
        ...this.upstreamOptions[runtime],
        clientSource: o.type === "direct",
      };
    });
  }

  /**
   * A reload's live settings, applied between two rounds (the caller is this thread's
   * control plane: never inside a batch). The caller has checked that every field that
   * needs a restart is unchanged. Nothing open is ended by the change itself: sessions
   * move to their new idle timeout class (one already idle past it ends at the next
   * tick); lowered per-client bounds refuse new sessions until a client is under them;
   * dnsPorts, quicPorts and sniffPacketsMax decide for new flows.
   */
  reconfigure(config: Config): void {
    this.config = config;
    const udp = config.udp;
    const sessions = this.sessions;
    const classByPort = config.timeoutClassByPort;
    // Key word 8 is (client port << 16 | target port).
    sessions.setTimeouts(
      config.timeoutClassesMs,
      (slot) => classByPort[sessions.keyWord(slot, 8) & 0xffff],
    );
    this.clients.setLimits(udp.sessionsPerClientMax, udp.replySocketsPerClientMax);
    this.poller.setBusyPoll(udp.busyPollUs);
    this.replies.setTimes(udp.replySocketIdleMs, udp.replyBindRetryMs);
    this.sniffer.configure(config);
    this.dnsPort.fill(0);
    for (const port of udp.dnsPorts) this.dnsPort[port] = 1;
    this.hold.packetsPerFlowMax = udp.holdPacketsPerFlowMax;
    this.hold.bytesPerFlowMax = udp.holdBytesPerFlowMax;
    // New flows follow the new rules; open ones keep their rule and outbound. Records of
    // the flows decided so far go out with the names they were decided by.
    this.flushFlows();
    this.policy = compilePolicy(config);
    this.policyGeneration = (this.policyGeneration + 1) & 0xffff;
    this.setOutbounds(config);
    this.flows?.setPolicyNames(...flowPolicyNames(config));
    const problem = this.openRejectSockets();
    if (problem !== null) this.log("reject-socket", `${problem}: rejected flows are dropped`);
  }

  private closeWatch(): void {
    if (this.watchToken >= 0) {
      this.registry.unregister(this.watchToken);
      this.watchToken = -1;
    }
    this.locals.closeWatch();
  }

  /**
   * Counters, gauges and sessions, for the control plane: the first `sessionsListed`
   * (the metrics line), or with a query (`relay sessions`) the ones it selects, with
   * how many matched. Runs between two waits; bounded by the limits of both.
   */
  snapshot(sessionsListed: number, query: SessionQuery | null = null): UdpSnapshot {
    const selected = query === null ? null : this.selectSessions(query);
    return {
      uptimeMs: Math.round(performance.now() - this.startedMs),
      udp: this.values(),
      sessions: selected?.sessions ?? this.sessionViews(sessionsListed),
      sessionsMatched: selected?.matched,
    };
  }

  /** Counters (the batch histogram as a plain array: it crosses postMessage and JSON) and
   * gauges. */
  values() {
    this.offloadCounters.fold(this.counters);
    const { batchDatagrams, ...counters } = this.counters;
    return {
      ...counters,
      batchDatagrams: Array.from(batchDatagrams),
      sessionsActive: this.sessions.count,
      sessionsMax: this.sessions.capacity,
      upstreamSockets: this.upstreams.count,
      upstreamPortsQuarantined: this.upstreams.portsQuarantined,
      replySockets: this.replies.count,
      dnsUpstreamSockets: this.dns.sockets,
      dnsQueriesInFlight: this.dns.inFlight,
      holdBytes: this.hold.bytesUsed,
      sessionsHolding: this.hold.count,
      socks5Associations: this.socks.count,
      // Tokens in use: listeners + the address watch + upstream + reply sockets.
      socketsRegistered: this.registry.used,
      pollWakes: this.poller.wakes,
      pollEvents: this.poller.events,
      pollRingOverflows: this.poller.overflows,
      pollBusyPolls: this.poller.busyPolls,
      gsoEnabled: this.offload.gso ? 1 : 0,
      groEnabled: this.offload.groSpanSlots > 0 ? 1 : 0,
      // udp.ioBackend as it runs (an info gauge per backend), and the ring's counters.
      ioBackendEpoll: this.uring === null ? 1 : 0,
      ioBackendUring: this.uring === null ? 0 : 1,
      uringEnters: this.uring?.stat(URING_STATS.enters) ?? 0,
      uringCompletions: this.uring?.stat(URING_STATS.completions) ?? 0,
      uringNoBuffers: this.uring?.stat(URING_STATS.noBuffers) ?? 0,
      uringSendsQueued: this.uring?.stat(URING_STATS.sendsQueued) ?? 0,
      uringSendsDirect: this.uring?.stat(URING_STATS.sendsDirect) ?? 0,
    };
  }

  /** Snapshot of live sessions for the control plane (bounded by `limit`). */
  sessionViews(limit: number): SessionView[] {
    const out: SessionView[] = [];
    const now = performance.now();
    this.sessions.forEach((s) => {
      if (out.length < limit) out.push(this.sessionView(s, now));
    });
    return out;
  }

  /** The sessions `query` selects, in its order, and how many matched in all. */
  private selectSessions(query: SessionQuery): { sessions: SessionView[]; matched: number } {
    const top = this.selected;
    const matched = selectSessions(this.sessions, query, this.listenerNames, top);
    const now = performance.now();
    const sessions: SessionView[] = [];
    for (let i = 0; i < top.count; i++) sessions.push(this.sessionView(top.items[i], now));
    return { sessions, matched };
  }

  private sessionView(s: number, now: number): SessionView {
    const sessions = this.sessions;
    const key = this.viewKey;
    for (let w = 0; w < 8; w++) key[w] = sessions.keyWord(s, w);
    const ports = sessions.keyWord(s, 8);
    return {
      client: formatEndpoint(this.viewKeyBytes, 0, ports >>> 16),
      target: formatEndpoint(this.viewKeyBytes, 16, ports & 0xffff),
      listener: this.listenerNames[sessions.listener[s]] ?? "?",
      reply: sessions.reply[s] >= 0 ? "socket" : "pktinfo",
      protocol: PROTOCOL_NAMES[sessions.protocol[s]],
      name: sessions.name[s],
      rule: this.ruleName(s),
      outbound: this.outboundName(sessions.outbound[s]),
      ageMs: Math.round(now - sessions.createdMs[s]),
      idleMs: Math.round(now - sessions.lastSeenMs[s]),
      packetsToTarget: sessions.packetsToTarget[s],
      bytesToTarget: sessions.bytesToTarget[s],
      packetsToClient: sessions.packetsToClient[s],
      bytesToClient: sessions.bytesToClient[s],
    };
  }

  private ruleName(s: number): string | null {
    const rule = this.sessions.rule[s];
    if (rule < 0) return null;
    if (this.sessionGeneration[s] !== this.policyGeneration) return "(before reload)";
    return this.policy.ruleNames[rule] ?? "?";
  }

  private outboundName(outbound: number): string {
    if (outbound === ACTION_DROP) return "drop";
    if (outbound === ACTION_REJECT) return "reject";
    if (outbound === OUTBOUND_PENDING) return "pending";
    return this.outbounds.name(outbound);
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
    const token = this.registry.register(SocketKind.Listener, fd, index);
    if (token < 0) {
      this.lib.rl_close(fd);
      throw new Error(
        `listener "${l.name}": epoll_ctl(ADD): ${errnoName(this.registry.lastErrno)}`,
      );
    }
    this.listenerFd[index] = fd;
    this.listenerToken[index] = token;
  }

  private closeListeners(): void {
    for (let i = 0; i < this.listenerFd.length; i++) {
      if (this.listenerFd[i] < 0) continue;
      this.registry.unregister(this.listenerToken[i]);
      this.lib.rl_close(this.listenerFd[i]);
      this.listenerFd[i] = -1;
    }
  }

  // ---- the data path ----

  private onToken(wake: number): void {
    const token = wake & WAKE_TOKEN_MASK;
    const registry = this.registry;
    const kind = registry.kind(token);
    if (kind === SocketKind.Free) return; // closed since the wake-up was queued
    const fd = registry.fd(token);
    this.counters.wakes++;
    try {
      if (kind === SocketKind.AddressWatch) {
        this.onAddressChange();
        return;
      }
      if (kind === SocketKind.Socks5Control) {
        // It re-arms itself (for writes while connecting or handshaking).
        this.onAssociation(registry.ref(token));
        return;
      }
      if (wake & WAKE_ERROR_FLAG) this.drainErrors(fd);
      this.drain(token, kind, fd);
    } finally {
      // Re-arm even if the drain threw; a socket closed during the drain is Free now.
      const current = registry.kind(token);
      if (
        current !== SocketKind.Free &&
        current !== SocketKind.Socks5Control &&
        registry.fd(token) === fd
      ) {
        this.poller.rearm(fd, token);
      }
    }
  }

  private drain(token: number, kind: SocketKind, fd: number): void {
    const now = performance.now();
    const ref = this.registry.ref(token);
    // GRO (upstream sockets): each buffer may hold 64 datagrams, split into a span's slots.
    const span = kind === SocketKind.Upstream ? this.offload.groSpanSlots : 0;
    for (let batch = 0; batch < this.config.udp.drainBatchesMax; batch++) {
      if (this.batchCount - this.slotsUsed < Math.max(1, span)) this.endRound();
      const first = this.slotsUsed;
      const room = this.batchCount - first;
      const slots = (this.slabPtr + first * this.slotBytes) as Pointer;
      const meta = (this.metaPtr + first * META_BYTES) as Pointer;
      const n =
        this.uring !== null
          ? this.uring.recv(token, slots, this.slotBytes, room, meta)
          : span > 0
            ? this.lib.rl_recv_batch_gro(fd, slots, this.slotBytes, room, meta)
            : this.lib.rl_recv_batch(fd, slots, this.slotBytes, room, meta);
      if (n < 0) {
        this.onReceiveError(fd, -n);
        continue; // the error is consumed; datagrams may still wait behind it
      }
      if (n === 0) return;
      if (n > room) assertionFailed(`recvmmsg returned ${n} for ${room} slots`);
      this.counters.batches++;
      this.counters.batchDatagrams[batchBucket(n)]++;
      this.slotsUsed += n;
      if (kind === SocketKind.Upstream) this.fromTargets(ref, first, n, now);
      else if (kind === SocketKind.DnsUpstream) this.dns.fromResolvers(ref, first, n, now);
      else {
        faultDataPath(n);
        const listener = kind === SocketKind.Listener ? ref : this.replies.listenerOf(ref);
        this.fromClients(listener, first, n, now);
      }
      // Drained: the socket had no more (with GRO: fewer datagrams than buffers offered).
      if (n < (span > 0 ? Math.floor(room / span) : room)) return;
      // A new flow may have closed this very socket (reply pool full): stop reading it.
      if (this.registry.fd(token) !== fd || this.registry.kind(token) !== kind) return;
    }
  }

  /** Sends everything queued this round and frees the slab for the next. */
  private endRound(): void {
    this.queue.flush();
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
      this.dnsDecidedRule = -1;
      if (s < 0 && this.dnsPort[targetPort] === 1 && this.forcedDns(listener, i, length, now)) {
        continue;
      }
      if (s < 0 && this.quicIds !== null && this.quicPort[targetPort] === 1) {
        s = this.followConnection(
          listener,
          targetPort,
          meta32[w + META.sourceScopeWord],
          i,
          length,
        );
      }
      if (s < 0) {
        s = this.openSession(
          listener,
          targetPort,
          meta32[w + META.sourceScopeWord],
          now,
          this.dnsDecidedRule,
        );
        if (s < 0) continue;
      } else if (sessions.lastSeenMs[s] !== now) {
        sessions.touch(s, now);
      }
      let outbound = sessions.outbound[s];
      if (outbound < 0) {
        // Held (its name awaited), dropped or rejected: consumed here, unless this very
        // datagram decided it for an outbound (then it goes like any other).
        const consumed = this.undecided(
          s,
          i,
          length,
          meta32[w + META.targetScopeWord],
          meta32[w + META.sourceScopeWord],
          now,
        );
        if (consumed) continue;
        outbound = sessions.outbound[s];
      }
      if (sessions.sniffLeft[s] !== 0) {
        this.sniffer.sniff(sessions, s, this.slabWasmOffset + i * this.slotBytes, length);
      }
      sessions.packetsToTarget[s]++;
      sessions.bytesToTarget[s] += length;
      if (this.outbounds.forward(outbound) !== null) {
        this.forward(this.queue, s, outbound, i * this.slotBytes, length, now);
        continue;
      }
      if (this.viaSocks(s)) {
        const offset = i * this.slotBytes;
        this.toSocks(s, this.slabPtr, this.wasm32, this.slabWasmOffset + offset, offset, length);
        continue;
      }
      // To the original destination, from the session's upstream socket.
      this.queue.push(
        Direction.ToTarget,
        this.upstreams.fd(sessions.upstream[s]),
        key[4],
        key[5],
        key[6],
        key[7],
        targetPort,
        meta32[w + META.targetScopeWord],
        i * this.slotBytes,
        length,
      );
    }
  }

  /** Replies from original destinations, on an upstream socket. */
  private fromTargets(upstream: number, first: number, n: number, now: number): void {
    const sessions = this.sessions;
    const key = sessions.key;
    const meta32 = this.meta32;
    const meta16 = this.meta16;
    const c = this.counters;
    const up = this.upstreams;
    const client0 = up.clientWord(upstream, 0);
    const client1 = up.clientWord(upstream, 1);
    const client2 = up.clientWord(upstream, 2);
    const client3 = up.clientWord(upstream, 3);
    const clientPort = up.clientPort(upstream);
    const clientScope = up.clientScope(upstream);
    const outboundRuntime = up.outboundOf(upstream);
    const forward = this.outbounds.forward(outboundRuntime);
    const forwardSession = up.sessionOf(upstream);
    const socks = this.socks.stateOf(upstream) === AssociationState.Ready;
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
      let s: number;
      let offset = i * this.slotBytes;
      let size = length;
      if (socks) {
        // From the proxy's UDP relay only; the header names where the reply came from.
        const b = upstream * 4;
        const bound = this.socks.boundWords;
        if (
          sourcePort !== this.socks.boundPort[upstream] ||
          meta32[w] !== bound[b] ||
          meta32[w + 1] !== bound[b + 1] ||
          meta32[w + 2] !== bound[b + 2] ||
          meta32[w + 3] !== bound[b + 3]
        ) {
          c.droppedUnsolicitedReply++;
          continue;
        }
        const source = this.socksSource;
        const at = this.slabWasmOffset + offset;
        const payloadAt = parseUdpHeader(this.wasmBytes, at, length, source);
        if (payloadAt === UDP_FRAGMENTED) {
          c.droppedSocks5Fragmented++;
          continue;
        }
        if (payloadAt < 0 || source.domain !== null) {
          c.droppedSocks5Malformed++;
          continue;
        }
        offset += payloadAt - at;
        size -= payloadAt - at;
        const words = this.socksSource32;
        key[0] = client0;
        key[1] = client1;
        key[2] = client2;
        key[3] = client3;
        key[4] = words[0];
        key[5] = words[1];
        key[6] = words[2];
        key[7] = words[3];
        key[8] = (clientPort << 16) | source.port;
        s = sessions.find();
        if (s < 0 || sessions.upstream[s] !== upstream) {
          c.droppedUnsolicitedReply++;
          continue;
        }
      } else if (forward !== null) {
        // A forward session's own socket: replies come from one of its targets, and go
        // to the client from the original destination (the session's key).
        s = forwardSession;
        const t = forward.find(meta32, w, sourcePort);
        if (t < 0) {
          c.droppedUnsolicitedReply++;
          continue;
        }
        this.outbounds.answer(s, outboundRuntime, t);
        for (let k = 4; k < 9; k++) key[k] = sessions.keyWord(s, k);
      } else {
        // The session is (client endpoint, the address this reply came from).
        key[0] = client0;
        key[1] = client1;
        key[2] = client2;
        key[3] = client3;
        key[4] = meta32[w];
        key[5] = meta32[w + 1];
        key[6] = meta32[w + 2];
        key[7] = meta32[w + 3];
        key[8] = (clientPort << 16) | sourcePort;
        s = sessions.find();
        if (s < 0 || sessions.upstream[s] !== upstream) {
          c.droppedUnsolicitedReply++;
          continue;
        }
      }
      if (sessions.lastSeenMs[s] !== now) sessions.touch(s, now);
      if (this.quicIds !== null && sessions.protocol[s] === PROTOCOL_QUIC) {
        const at = this.slabWasmOffset + offset;
        if (this.quicIds.learn(s, this.wasmBytes, at, size)) c.quicConnectionIdsLearned++;
      }
      sessions.packetsToClient[s]++;
      sessions.bytesToClient[s] += size;
      // To the client, from the original destination: on the reply socket bound to
      // it, or on the listener with the source set by IP_PKTINFO.
      const reply = sessions.reply[s];
      if (reply >= 0) {
        this.queue.push(
          Direction.ToClient,
          this.replies.fdOf(reply),
          client0,
          client1,
          client2,
          client3,
          clientPort,
          clientScope,
          offset,
          size,
        );
      } else {
        this.queue.toClientFrom(
          this.listenerFd[sessions.listener[s]],
          client0,
          client1,
          client2,
          client3,
          clientPort,
          clientScope,
          key[4],
          key[5],
          key[6],
          key[7],
          offset,
          size,
        );
      }
    }
  }

  private readonly failTarget = (f: ForwardTargets, t: number, now: number) =>
    this.outbounds.fail(f, t, now);

  /**
   * A datagram with no session on a DNS port (the key holds client and original
   * destination): when it is a DNS query the policy sends to a forward outbound, the
   * forwarder takes it (no session) and this returns true. False: the session way (a
   * non-query is counted as malformed; other outbounds keep their sessions).
   */
  private forcedDns(listener: number, slot: number, length: number, now: number): boolean {
    const key = this.sessions.key;
    const targetPort = key[8] & 0xffff;
    const at = this.slabWasmOffset + slot * this.slotBytes;
    const bytes = this.wasmBytes;
    const dns = this.dns;
    if ((bytes[at + 2] & 0xf8) !== 0 || !parseQuestion(bytes, at, length, dns.question)) {
      this.counters.dnsQueriesMalformed++; // QR set, an opcode other than QUERY, or no question
      return false;
    }
    const name = this.policy.usesNames || this.flows !== null ? questionName(bytes, at) : null;
    const rule = this.decide(listener, name, false);
    const action = this.policy.actions[rule];
    const answer =
      action <= ACTION_DNS_ANSWER ? this.config.policy.answers[ACTION_DNS_ANSWER - action] : null;
    const f = action >= 0 ? this.outbounds.forward(this.outbounds.ofPolicy(action)) : null;
    if (f === null && answer === null) {
      this.dnsDecidedRule = rule; // openSession() takes this decision, not a second one
      return false;
    }
    if (!this.admissible(listener, targetPort)) return true;
    const ipv6 = this.listenerIpv6[listener] === 1;
    const mode = this.config.listeners[listener].reply;
    const samePort = targetPort === this.listenerPort[listener];
    if (mode === "pktinfo" && !samePort) {
      this.counters.droppedReplyModeMismatch++;
      return true;
    }
    const pktinfo = mode === "pktinfo" || (mode === "auto" && samePort);
    const clientScope = this.meta32[slot * META_WORDS + META.sourceScopeWord];
    const decision = this.dnsDecision;
    decision.rule = rule;
    decision.outbound =
      answer !== null
        ? this.config.policy.outbounds.length + ACTION_DNS_ANSWER - action
        : this.outbounds.policyIndexOf(this.outbounds.ofPolicy(action));
    decision.name = name;
    if (answer !== null) {
      dns.answer(decision, answer, key, clientScope, listener, ipv6, pktinfo, slot, now);
      return true;
    }
    // The client endpoint picks the target (its port changes per query, mostly).
    const h = Math.imul(key[8] ^ key[3], 0x9e3779b1);
    const t = f!.pick((h ^ (h >>> 15)) >>> 0, ipv6, now);
    if (t < 0) {
      this.counters.droppedOutboundUnavailable++;
      return true;
    }
    dns.forward(decision, f!, t, key, clientScope, listener, ipv6, pktinfo, slot, length, now);
    return true;
  }

  // ---- sessions ----

  /**
   * A datagram from a client endpoint with no session, on a QUIC port (the key holds the
   * new endpoint and the original destination): if its Destination Connection ID names
   * a session to the same destination through the same listener, the client's NAT has
   * rebound it. That session, its upstream socket and its reply path move to the new
   * endpoint, so the server sees the same 4-tuple and the connection goes on. Returns the
   * session, or -1 (then it is a new flow).
   */
  private followConnection(
    listener: number,
    targetPort: number,
    clientScope: number,
    i: number,
    length: number,
  ): number {
    const sessions = this.sessions;
    const key = sessions.key;
    const offset = this.slabWasmOffset + i * this.slotBytes;
    const s = this.quicIds!.sessionOfClientPacket(this.wasmBytes, offset, length);
    if (s < 0) return -1;
    if (sessions.listener[s] !== listener) return -1;
    for (let w = 4; w < 8; w++) if (sessions.keyWord(s, w) !== key[w]) return -1;
    if ((sessions.keyWord(s, 8) & 0xffff) !== targetPort) return -1;
    const c = this.counters;
    const upstream = sessions.upstream[s];
    if (upstream < 0) return -1; // held, dropped or rejected: nothing to move
    // A socket shared with the client's other flows (endpoint-independent mapping) cannot
    // follow one of them; nor may the new endpoint exceed its own bounds.
    const clients = this.clients;
    const oldClient = this.sessionClient[s];
    const sameAddress =
      sessions.keyWord(s, 0) === key[0] &&
      sessions.keyWord(s, 1) === key[1] &&
      sessions.keyWord(s, 2) === key[2] &&
      sessions.keyWord(s, 3) === key[3];
    let newClient = oldClient;
    if (!sameAddress) {
      newClient = clients.find(key[0], key[1], key[2], key[3]);
      const reply = sessions.reply[s];
      if (!clients.maySession(newClient) || (reply >= 0 && !clients.mayReply(newClient, reply))) {
        c.quicRebindsRefused++;
        return -1;
      }
    }
    if (!this.upstreams.soleSession(upstream)) {
      c.quicRebindsRefused++;
      return -1;
    }
    const clientPort = key[8] >>> 16;
    if (!this.upstreams.rebind(upstream, key[0], key[1], key[2], key[3], clientPort, clientScope)) {
      c.quicRebindsRefused++;
      return -1;
    }
    if (!sameAddress) {
      const pair = this.sessionPair[s];
      const reply = sessions.reply[s];
      if (pair >= 0) clients.removeReply(oldClient, pair);
      clients.removeSession(oldClient);
      newClient = clients.addSession(key[0], key[1], key[2], key[3]);
      this.sessionClient[s] = newClient;
      this.sessionPair[s] = reply >= 0 ? clients.addReply(newClient, reply) : -1;
    }
    sessions.rekey(s);
    c.quicRebindsFollowed++;
    return s;
  }

  /**
   * A new flow (the key holds client and original destination): judge it, then open its
   * session, reply path and upstream socket, all or nothing. Returns the session, or -1
   * with the datagram counted under exactly one drop reason.
   *
   * clientScope: the IPv6 scope id of a link-local client (0 otherwise).
   */
  /**
   * decidedRule: the rule forcedDns() already chose for this datagram, on its question's
   * name (a DNS query whose action takes a session), or -1: decided here.
   */
  private openSession(
    listener: number,
    targetPort: number,
    clientScope: number,
    now: number,
    decidedRule: number,
  ): number {
    const sessions = this.sessions;
    const key = sessions.key;
    const c = this.counters;
    if (!this.admissible(listener, targetPort)) return -1;
    // The policy, once per flow: on its addresses and port now, or (NEED_NAME) when its
    // name is known; a dropped or rejected flow needs no reply path nor upstream socket.
    // A DNS query was decided on its name already: never held for the name it carries.
    const pending = decidedRule < 0 && this.policy.usesNames && this.sniffer.parses(targetPort);
    const rule = decidedRule >= 0 ? decidedRule : this.decide(listener, null, pending);
    const action = rule === NEED_NAME ? OUTBOUND_PENDING : sessionAction(this.policy.actions[rule]);
    if (action === ACTION_DROP || action === ACTION_REJECT) {
      return this.openDecidedSession(listener, targetPort, rule, action, now);
    }
    const ipv6 = this.listenerIpv6[listener] === 1;
    const mode = this.config.listeners[listener].reply;
    const samePort = targetPort === this.listenerPort[listener];
    if (mode === "pktinfo" && !samePort) {
      c.droppedReplyModeMismatch++;
      return -1;
    }
    const usePktinfo = mode === "pktinfo" || (mode === "auto" && samePort);
    // The pools and limits below use scratch keys of their own: keep the words here.
    const client0 = key[0];
    const client1 = key[1];
    const client2 = key[2];
    const client3 = key[3];
    const clientPort = key[8] >>> 16;
    const target0 = key[4];
    const target1 = key[5];
    const target2 = key[6];
    const target3 = key[7];

    // Fairness: a client past its own bounds is refused before it can evict anybody.
    const clients = this.clients;
    let client = clients.find(client0, client1, client2, client3);
    if (!clients.maySession(client)) {
      c.droppedClientSessionsLimit++;
      this.log(
        "client-sessions",
        `a client reached udp.sessionsPerClientMax (${clients.sessionsMax})`,
      );
      return -1;
    }
    if (!usePktinfo) {
      this.replies.setKey(target0, target1, target2, target3, targetPort);
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
      this.queue.flush();
      sessions.end(sessions.leastRecentlyUsed(), EndReason.Evicted);
    }

    let reply = -1;
    if (!usePktinfo) {
      this.replies.setKey(target0, target1, target2, target3, targetPort);
      reply = this.replies.acquire(listener, ipv6, now);
      if (reply < 0) {
        const target = this.describeTarget(target0, target1, target2, target3, targetPort);
        this.log(
          `reply-${this.replies.lastFailure}`,
          `no reply socket for ${target}: ${this.replies.describeFailure()}`,
        );
        return -1; // counted by the pool, by reason
      }
    }

    // From here every step is undone by sessions.end() -> onSessionEnd().
    key[0] = client0;
    key[1] = client1;
    key[2] = client2;
    key[3] = client3;
    key[4] = target0;
    key[5] = target1;
    key[6] = target2;
    key[7] = target3;
    key[8] = ((clientPort << 16) | targetPort) >>> 0;
    const s = sessions.create(now, this.config.timeoutClassByPort[targetPort]);
    client = clients.addSession(client0, client1, client2, client3);
    this.sessionClient[s] = client;
    sessions.listener[s] = listener;
    sessions.reply[s] = reply;
    this.sessionPair[s] = reply >= 0 ? clients.addReply(client, reply) : -1;
    this.sniffer.begin(sessions, s, targetPort);
    this.sessionGeneration[s] = this.policyGeneration;
    c.sessionsCreated++;
    if (reply >= 0) c.sessionsReplySocket++;
    else c.sessionsReplyPktinfo++;
    if (action === OUTBOUND_PENDING) {
      // Its datagrams wait in the hold buffer until the name is known (undecided()).
      sessions.outbound[s] = OUTBOUND_PENDING;
      c.sessionsHeld++;
      this.hold.begin(s, now);
      if (this.holdTimer === null) {
        this.holdTimer = this.poller.after(this.config.udp.holdTimeoutMs, this.holdTimerBound);
      }
      return s;
    }
    sessions.rule[s] = rule;
    if (!this.openUpstream(s, action, clientScope, 1)) {
      sessions.end(s, EndReason.Closed);
      return -1;
    }
    return s;
  }

  /**
   * The flow in the key, on `listener`: the rule that decides it, or NEED_NAME (only when
   * its name may still come: namePending).
   */
  private decide(listener: number, name: string | null, namePending: boolean): number {
    const flow = this.flow;
    const key = this.sessions.key;
    const words = flow.words;
    for (let k = 0; k < 8; k++) words[k] = key[k];
    flow.protocol = FLOW_UDP;
    flow.listener = listener;
    flow.port = key[8] & 0xffff;
    flow.name = name;
    flow.namePending = namePending;
    return this.policy.decide(flow);
  }

  /**
   * Session s (open, held) goes through policy outbound `action`: its runtime is held,
   * and its upstream socket made. False (counted, logged) when the socket could not be
   * made or the outbound cannot carry UDP; the caller ends the session.
   */
  private openUpstream(s: number, action: number, clientScope: number, datagrams: number): boolean {
    const sessions = this.sessions;
    const c = this.counters;
    const runtime = this.outbounds.ofPolicy(action);
    this.outbounds.acquire(runtime);
    sessions.outbound[s] = runtime;
    const o = this.outbounds.config(runtime);
    if (o.type === "socks5" && !o.udp) {
      c.droppedOutboundUnavailable += datagrams;
      this.log("socks5-udp", `outbound "${o.name}": udp is false: UDP flows are dropped`);
      return false;
    }
    let hash = 0x811c9dc5;
    for (let k = 0; k < 9; k++) hash = Math.imul(hash ^ sessions.keyWord(s, k), 0x01000193);
    this.sessionHash[s] = hash >>> 0;
    const upstream = this.upstreams.acquire(
      s,
      sessions.keyWord(s, 0),
      sessions.keyWord(s, 1),
      sessions.keyWord(s, 2),
      sessions.keyWord(s, 3),
      sessions.keyWord(s, 8) >>> 16,
      clientScope,
      // A SOCKS5 association's datagrams go to the proxy: its family, not the client's.
      o.type === "socks5"
        ? !(o.server.addr[10] === 0xff && o.server.addr[11] === 0xff)
        : this.listenerIpv6[sessions.listener[s]] === 1,
      // From the client's own ip:port (docs/udp_client_source.md); never a local address
      // (a client on this host holds it itself): that one leaves from the relay's.
      this.config.listeners[sessions.listener[s]].source === "client" &&
        !this.locals.isLocal(
          sessions.keyWord(s, 0),
          sessions.keyWord(s, 1),
          sessions.keyWord(s, 2),
          sessions.keyWord(s, 3),
        )
        ? this.upstreamOptionsClientSource[runtime]
        : this.upstreamOptions[runtime],
    );
    if (upstream < 0) {
      const up = this.upstreams;
      if (up.lastFailure === "descriptors") c.droppedNoDescriptors += datagrams;
      else c.droppedUpstreamSocketFailed += datagrams;
      this.log(`upstream-${up.lastFailure}`, up.lastMessage);
      return false;
    }
    sessions.upstream[s] = upstream;
    if (o.type === "socks5" && this.socks.stateOf(upstream) === AssociationState.None) {
      // The client endpoint's first flow through this proxy: open its association.
      let problem: string | null = null;
      if (!this.socks.mayOpen(runtime, o)) {
        c.droppedSocks5AssociationsLimit += datagrams;
        problem = `associationsMax (${o.associationsMax}) reached`;
      } else if (!this.socks.begin(upstream, runtime, o, performance.now())) {
        c.droppedSocks5Failed += datagrams;
        c.socks5AssociationsFailed++;
        problem = this.socks.lastError;
      }
      if (problem !== null) {
        this.log("socks5-associate", `outbound "${o.name}": UDP ASSOCIATE: ${problem}`);
        return false; // the caller ends the session, which releases the upstream socket
      }
    }
    return true;
  }

  /** Whether session s goes through a SOCKS5 association (its upstream socket has one). */
  private viaSocks(s: number): boolean {
    const u = this.sessions.upstream[s];
    return u >= 0 && this.socks.stateOf(u) !== AssociationState.None;
  }

  /**
   * A datagram of session s (through a SOCKS5 association) at `offset` from `base`:
   * wrapped and sent now when the association is ready; else held until it is.
   */
  private toSocks(
    s: number,
    base: Pointer,
    source: Uint32Array | null,
    wasmOffset: number,
    offset: number,
    length: number,
  ): void {
    const sessions = this.sessions;
    const u = sessions.upstream[s];
    const c = this.counters;
    if (this.socks.stateOf(u) !== AssociationState.Ready) {
      const hold = this.hold;
      if (!hold.holding(s)) {
        hold.begin(s, performance.now(), false);
        const head = this.waitHead[u];
        this.waitNext[s] = head;
        this.waitPrev[s] = -1;
        if (head >= 0) this.waitPrev[head] = s;
        this.waitHead[u] = s;
      }
      const held = hold.hold(s, source!, wasmOffset, length, 0);
      if (held === HoldResult.FlowFull) c.droppedHoldFull++;
      else if (held === HoldResult.ArenaFull) c.droppedHoldArenaFull++;
      return;
    }
    const dest = this.socksDest32;
    for (let k = 0; k < 4; k++) dest[k] = sessions.keyWord(s, 4 + k);
    const port = sessions.keyWord(s, 8) & 0xffff;
    const start = writeUdpHeader(this.socksHeader, 32, this.socksDest, 0, port);
    const n = this.lib.rl_send_wrapped(
      this.upstreams.fd(u),
      (this.socksHeaderPtr + start) as Pointer,
      32 - start,
      (base + offset) as Pointer,
      length,
      this.socks.boundAddrPtr(u),
      this.socks.boundPort[u],
      0,
    );
    if (n < 0) this.queue.countError(-n);
    else {
      c.packetsToTargets++;
      c.bytesToTargets += length;
    }
  }

  /** An event on the control connection of upstream u's association. */
  private onAssociation(u: number): void {
    const event = this.socks.onEvent(u);
    if (event === AssociationEvent.Ready) {
      // Release the waiting sessions' datagrams, oldest session first, each in order.
      const hold = this.hold;
      let last = -1;
      for (let s = this.waitHead[u]; s >= 0; s = this.waitNext[s]) last = s;
      for (let s = last; s >= 0; ) {
        const previous = this.waitPrev[s];
        for (let slot = hold.firstOf(s); slot >= 0; slot = hold.after(slot)) {
          this.toSocks(s, hold.arenaPtr, null, 0, hold.offsetOf(slot), hold.length[slot]);
        }
        hold.end(s);
        this.waitNext[s] = -1;
        this.waitPrev[s] = -1;
        s = previous;
      }
      this.waitHead[u] = -1;
    } else if (event === AssociationEvent.Ended) {
      this.endAssociation(u);
    }
  }

  /** Upstream u's association failed or ended: its sessions end (the last closes it). */
  private endAssociation(u: number): void {
    const sessions = this.sessions;
    const ended: number[] = [];
    sessions.forEach((s) => {
      if (sessions.upstream[s] === u) ended.push(s);
    });
    this.log("socks5-ended", `SOCKS5 UDP association ended: ${this.socks.lastError}`);
    this.queue.flush(); // their upstream fd may be in this round's sends
    for (const s of ended) {
      this.counters.droppedSocks5Failed += this.hold.packetsOf(s);
      sessions.end(s, EndReason.Closed);
    }
    this.counters.sessionsEndedSocks5 += ended.length;
  }

  /**
   * A new flow the rules drop or reject: a session that remembers it (later datagrams
   * are not decided again), with no reply path nor upstream socket. Returns the session.
   */
  private openDecidedSession(
    listener: number,
    targetPort: number,
    rule: number,
    action: number,
    now: number,
  ): number {
    const sessions = this.sessions;
    const key = sessions.key;
    const clients = this.clients;
    const client = clients.find(key[0], key[1], key[2], key[3]);
    if (!clients.maySession(client)) {
      this.counters.droppedClientSessionsLimit++;
      return -1;
    }
    if (sessions.index.full) {
      // Its upstream socket's fd may be in this round's sends: send them first.
      const saved = this.flow.words; // the key is the flow's: keep it across the flush
      for (let k = 0; k < 8; k++) saved[k] = key[k];
      const ports = key[8];
      this.queue.flush();
      sessions.end(sessions.leastRecentlyUsed(), EndReason.Evicted);
      for (let k = 0; k < 8; k++) key[k] = saved[k];
      key[8] = ports;
    }
    const s = sessions.create(now, this.config.timeoutClassByPort[targetPort]);
    this.sessionClient[s] = clients.addSession(key[0], key[1], key[2], key[3]);
    sessions.listener[s] = listener;
    sessions.rule[s] = rule;
    sessions.outbound[s] = action;
    this.sessionGeneration[s] = this.policyGeneration;
    this.counters.sessionsCreated++;
    return s;
  }

  /**
   * A datagram (slot i) of session s, which is held, dropped or rejected. A held flow's
   * datagram is offered to the sniffer: if the flow is still undecided it is copied into
   * the hold buffer; once the name is known (or sniffing gave up) the flow is decided and
   * its held datagrams released. Returns whether the datagram was consumed (dropped,
   * rejected, held); false: the flow now has an outbound and the caller sends it, from
   * the slab, after the held ones.
   */
  private undecided(
    s: number,
    i: number,
    length: number,
    targetScope: number,
    clientScope: number,
    now: number,
  ): boolean {
    const sessions = this.sessions;
    const c = this.counters;
    let outbound = sessions.outbound[s];
    const offset = i * this.slotBytes;
    if (outbound === OUTBOUND_PENDING) {
      if (sessions.sniffLeft[s] !== 0) {
        this.sniffer.sniff(sessions, s, this.slabWasmOffset + offset, length);
      }
      if (sessions.name[s] === null && sessions.sniffLeft[s] !== 0) {
        const wasm = this.slabWasmOffset + offset;
        const held = this.hold.hold(s, this.wasm32, wasm, length, targetScope);
        if (held === HoldResult.FlowFull) c.droppedHoldFull++;
        else if (held === HoldResult.ArenaFull) c.droppedHoldArenaFull++;
        return true;
      }
      if (sessions.name[s] !== null) c.holdReleasedNamed++;
      else c.holdReleasedUnnamed++;
      if (!this.release(s, 1, clientScope, now)) return true; // ended: counted
      outbound = sessions.outbound[s];
      if (outbound >= 0) return false;
    }
    if (outbound === ACTION_DROP) {
      c.droppedByRule++;
      return true;
    }
    this.reject(s, this.slabPtr, offset, length, clientScope, now);
    return true;
  }

  /**
   * Decides held session s now (with its name, or without: namePending false) and sends
   * its held datagrams, in order, the way the decision says. False when the session
   * ended instead (its upstream socket could not be made: its held datagrams and the
   * `current` one, 0 or 1, the caller's, counted).
   */
  private release(s: number, current: number, clientScope: number, now: number): boolean {
    const sessions = this.sessions;
    const hold = this.hold;
    const c = this.counters;
    const key = sessions.key;
    for (let k = 0; k < 9; k++) key[k] = sessions.keyWord(s, k);
    const decided = this.decide(sessions.listener[s], sessions.name[s], false);
    sessions.rule[s] = decided;
    this.sessionGeneration[s] = this.policyGeneration;
    const action = sessionAction(this.policy.actions[decided]);
    if (action === ACTION_DROP || action === ACTION_REJECT) {
      sessions.outbound[s] = action;
      for (let slot = hold.firstOf(s); slot >= 0; slot = hold.after(slot)) {
        if (action === ACTION_DROP) c.droppedByRule++;
        else {
          const length = hold.length[slot];
          this.reject(s, hold.arenaPtr, hold.offsetOf(slot), length, clientScope, now);
        }
      }
      hold.end(s);
      return true;
    }
    if (!this.openUpstream(s, action, clientScope, hold.packetsOf(s) + current)) {
      sessions.end(s, EndReason.Closed); // ends the hold too
      return false;
    }
    const runtime = sessions.outbound[s];
    const forward = this.outbounds.forward(runtime) !== null;
    const queue = this.holdQueue;
    if (this.viaSocks(s)) {
      // Sent as they are when the association is ready; else they wait for it, as they
      // are (moved from the name wait to the association's).
      const u = sessions.upstream[s];
      const ready = this.socks.stateOf(u) === AssociationState.Ready;
      for (let slot = hold.firstOf(s); slot >= 0; slot = hold.after(slot)) {
        sessions.packetsToTarget[s]++;
        sessions.bytesToTarget[s] += hold.length[slot];
      }
      if (ready) {
        for (let slot = hold.firstOf(s); slot >= 0; slot = hold.after(slot)) {
          this.toSocks(s, hold.arenaPtr, null, 0, hold.offsetOf(slot), hold.length[slot]);
        }
        hold.end(s);
      } else {
        hold.untime(s);
        const head = this.waitHead[u];
        this.waitNext[s] = head;
        this.waitPrev[s] = -1;
        if (head >= 0) this.waitPrev[head] = s;
        this.waitHead[u] = s;
      }
      return true;
    }
    const fd = this.upstreams.fd(sessions.upstream[s]);
    for (let slot = hold.firstOf(s); slot >= 0; slot = hold.after(slot)) {
      const length = hold.length[slot];
      sessions.packetsToTarget[s]++;
      sessions.bytesToTarget[s] += length;
      if (forward) this.forward(queue, s, runtime, hold.offsetOf(slot), length, now);
      else {
        queue.push(
          Direction.ToTarget,
          fd,
          sessions.keyWord(s, 4),
          sessions.keyWord(s, 5),
          sessions.keyWord(s, 6),
          sessions.keyWord(s, 7),
          sessions.keyWord(s, 8) & 0xffff,
          hold.scope[slot],
          hold.offsetOf(slot),
          length,
        );
      }
    }
    // Now, before any later datagram of the flow (those queue behind, in this round).
    queue.flush();
    hold.end(s);
    return true;
  }

  /** Held sessions past udp.holdTimeoutMs: decided without their name (oldest first). */
  private releaseExpiredHolds(now: number): void {
    const hold = this.hold;
    const timeoutMs = this.config.udp.holdTimeoutMs;
    for (let s = hold.oldest; s >= 0; s = hold.oldest) {
      if (hold.sinceMs[s] + timeoutMs > now) {
        if (this.holdTimer === null) {
          const wait = Math.max(1, hold.sinceMs[s] + timeoutMs - now);
          this.holdTimer = this.poller.after(wait, this.holdTimerBound);
        }
        return;
      }
      this.counters.holdReleasedTimeout++;
      this.release(s, 0, 0, now);
    }
  }

  /**
   * Queues a datagram of forward session s (runtime `runtime`) at `offset` in the
   * queue's slab to the target its hash picks among those up, and starts waiting for
   * the answer (the target's health).
   */
  private forward(
    queue: SendQueue,
    s: number,
    runtime: number,
    offset: number,
    length: number,
    now: number,
  ): void {
    const f = this.outbounds.forward(runtime)!;
    const ipv6 = this.listenerIpv6[this.sessions.listener[s]] === 1;
    const t = f.pick(this.sessionHash[s], ipv6, now);
    if (t < 0) {
      // No target of the flow's family (the config warned): nowhere to send it.
      this.counters.droppedOutboundUnavailable++;
      return;
    }
    const w = t * 4;
    const words = f.words;
    queue.push(
      Direction.ToTarget,
      this.upstreams.fd(this.sessions.upstream[s]),
      words[w],
      words[w + 1],
      words[w + 2],
      words[w + 3],
      f.ports[t],
      0,
      offset,
      length,
    );
    this.outbounds.sent(s, runtime, t, now);
  }

  /**
   * A rejected datagram (at `offset` from `base`): an ICMP port unreachable goes to the
   * client from the original destination, within udp.rejectIcmpPerSecondMax.
   */
  private reject(
    s: number,
    base: Pointer,
    offset: number,
    length: number,
    clientScope: number,
    now: number,
  ): void {
    const c = this.counters;
    const sessions = this.sessions;
    c.droppedRejected++;
    const second = Math.floor(now / 1000);
    if (second !== this.rejectSecond) {
      this.rejectSecond = second;
      this.rejectSentInSecond = 0;
    }
    if (this.rejectSentInSecond >= this.config.udp.rejectIcmpPerSecondMax) {
      c.rejectIcmpRateLimited++;
      return;
    }
    const fd = this.listenerIpv6[sessions.listener[s]] === 1 ? this.icmp6Fd : this.icmp4Fd;
    if (fd < 0) {
      c.rejectIcmpFailed++; // a reload added the rule and the socket could not be opened
      return;
    }
    this.rejectSentInSecond++;
    const addrs = this.icmpAddrs32;
    for (let k = 0; k < 8; k++) addrs[k] = sessions.keyWord(s, k);
    const ports = sessions.keyWord(s, 8);
    const p = this.icmpAddrsPtr;
    const rc = this.lib.rl_icmp_unreachable(
      fd,
      p,
      ports >>> 16,
      clientScope,
      (p + 16) as Pointer,
      ports & 0xffff,
      (base + offset) as Pointer,
      length,
    );
    if (rc < 0) {
      c.rejectIcmpFailed++;
      this.log("reject-icmp", `ICMP port unreachable: ${errnoName(-rc)}`);
    } else {
      c.rejectIcmpSent++;
    }
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
      this.upstreams.holdsPort(clientPort) &&
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

  private onSessionEnd(slot: number, reason: EndReason): void {
    const now = performance.now();
    if (reason === EndReason.Idle) this.counters.sessionsExpired++;
    else if (reason === EndReason.Evicted) this.counters.sessionsEvicted++;
    const upstream = this.sessions.upstream[slot];
    if (upstream >= 0) {
      if (this.socks.stateOf(upstream) !== AssociationState.None) {
        this.unwait(upstream, slot);
        // The association's last session: its control connection closes with it.
        if (this.upstreams.soleSession(upstream)) this.socks.close(upstream);
      }
      this.upstreams.release(upstream);
    }
    const outbound = this.sessions.outbound[slot];
    if (outbound >= 0) this.outbounds.release(outbound, slot, now);
    // Held datagrams never sent (a name or an association awaited) are lost with it.
    this.hold.end(slot);
    this.quicIds?.forget(slot);
    const client = this.sessionClient[slot];
    const pair = this.sessionPair[slot];
    if (pair >= 0) this.clients.removeReply(client, pair);
    if (client >= 0) this.clients.removeSession(client);
    this.sessionClient[slot] = -1;
    this.sessionPair[slot] = -1;
    const reply = this.sessions.reply[slot];
    if (reply >= 0) this.replies.release(reply, now);
    // A session whose upstream socket was never made carried no datagram (its first one
    // was counted as dropped): no flow to log. Dropped, rejected and held ones are flows.
    if (this.flows !== null && (upstream >= 0 || outbound < 0)) {
      this.recordFlow(slot, reason, now);
    }
  }

  /** Session s stops waiting for upstream u's association (if it was). */
  private unwait(u: number, s: number): void {
    const p = this.waitPrev[s];
    const n = this.waitNext[s];
    if (p < 0 && this.waitHead[u] !== s) return; // not waiting
    if (p >= 0) this.waitNext[p] = n;
    else this.waitHead[u] = n;
    if (n >= 0) this.waitPrev[n] = p;
    this.waitNext[s] = -1;
    this.waitPrev[s] = -1;
  }

  /** The ended session's row in the flow log buffer; when it is full, dropped and counted. */
  private recordFlow(slot: number, reason: EndReason, now: number): void {
    const flows = this.flows!;
    const r = flows.reserve();
    if (r < 0) {
      this.counters.flowLogDropped++;
      return;
    }
    const sessions = this.sessions;
    const endMs = Date.now();
    flows.endMs[r] = endMs;
    flows.startMs[r] = endMs - (now - sessions.createdMs[slot]);
    const w = r * 8;
    for (let k = 0; k < 8; k++) flows.addrWords[w + k] = sessions.keyWord(slot, k);
    flows.ports[r] = sessions.keyWord(slot, 8);
    flows.listener[r] = sessions.listener[slot];
    flows.packetsToTarget[r] = sessions.packetsToTarget[slot];
    flows.bytesToTarget[r] = sessions.bytesToTarget[slot];
    flows.packetsToClient[r] = sessions.packetsToClient[slot];
    flows.bytesToClient[r] = sessions.bytesToClient[slot];
    flows.parsed[r] = sessions.protocol[slot];
    flows.names[r] = sessions.name[slot];
    flows.reason[r] = reason;
    flows.reply[r] = sessions.reply[slot] >= 0 ? REPLY_SOCKET : REPLY_PKTINFO;
    const outbound = sessions.outbound[slot];
    // Rule indexes are the running policy's: a flow decided by an earlier one has none.
    const current = this.sessionGeneration[slot] === this.policyGeneration;
    flows.rule[r] = current ? sessions.rule[slot] : -1;
    if (outbound >= 0) flows.outbound[r] = this.outbounds.policyIndexOf(outbound);
    // A flow ended while held: its datagrams never left.
    else flows.outbound[r] = outbound === OUTBOUND_PENDING ? ACTION_DROP : outbound;
  }

  /** Hands the ended sessions to the flow log (from the timer, and at stop). */
  private flushFlows(): void {
    if (this.flows !== null && this.flows.count > 0) this.onFlows(this.flows.take());
  }

  /** The local-address set may have changed: re-read it, end flows now local. */
  private onAddressChange(): void {
    const before = this.locals.changes;
    try {
      this.locals.onWatchReadable();
    } catch (err) {
      // Keep the last good set (the guard stays on); say so, rate-limited.
      this.log("locals", `local-address refresh failed: ${(err as Error).message}`);
    }
    this.localsRefreshedMs = performance.now();
    if (this.locals.changes !== before) this.endLocalSessions();
  }

  /**
   * After the host gained an address, a session may now lead to it: end those (they
   * would loop). Bounded by the table's capacity; runs only on an address change.
   */
  private endLocalSessions(): void {
    const sessions = this.sessions;
    const local: number[] = [];
    sessions.forEach((s) => {
      const kind = this.locals.classify(
        sessions.keyWord(s, 4),
        sessions.keyWord(s, 5),
        sessions.keyWord(s, 6),
        sessions.keyWord(s, 7),
      );
      if (kind !== TargetKind.Remote) local.push(s);
    });
    if (local.length === 0) return;
    this.queue.flush(); // their upstream fds may be in this round's sends
    for (const s of local) sessions.end(s, EndReason.LocalTarget);
    this.counters.sessionsEndedLocalTarget += local.length;
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

  // ---- control plane ----

  private tick(): void {
    if (!this.poller.check()) return; // the epoll thread died: onFatal has been called
    const now = performance.now();
    const outbounds = this.outbounds;
    outbounds.expire(now); // before expiry: a flow that ends now still counts its silence
    this.dns.expire(now, this.failTarget);
    this.sessions.expire(now, EXPIRE_BUDGET_PER_TICK);
    this.replies.sweep(now, REPLY_SWEEP_BUDGET_PER_TICK);
    this.releaseExpiredHolds(now);
    if (this.socks.count > 0) {
      const overdue: number[] = [];
      this.socks.overdue(now, overdue);
      for (const u of overdue) {
        this.socks.timedOut();
        this.endAssociation(u);
      }
    }
    if (now - this.localsRefreshedMs >= LOCAL_REFRESH_MS) this.onAddressChange();
    // Lost wake-up recovery: drain listeners directly (cheap: one recvmmsg each when idle).
    for (let i = 0; i < this.listenerFd.length; i++) {
      if (this.listenerFd[i] >= 0) this.onToken(this.listenerToken[i]);
    }
    this.endRound();
    this.flushFlows();
  }

  private describeTarget(w0: number, w1: number, w2: number, w3: number, port: number): string {
    return formatEndpoint(new Uint8Array(Uint32Array.of(w0, w1, w2, w3).buffer), 0, port);
  }

  log(reason: string, message: string): void {
    this.logger.log(reason, message);
  }
}
