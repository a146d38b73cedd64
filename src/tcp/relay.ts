// The TCP path:
//
//   listener (TPROXY or REDIRECT) --accept--> decide: limit, original destination, source
//     --connect (SO_MARK; optionally IP_TRANSPARENT from the client's address)-->
//   splice engine (C thread): client <-> pipe <-> upstream, both directions
//     --one event per connection (reason, bytes, connect time)--> counters, free the id
//
// TypeScript decides, C copies. Accepting is cheap and rare next to copying bytes, so
// it stays here where policy lives; the bytes never enter JavaScript: the engine in
// ffi/tcp_engine.c moves them with splice(2) through one pipe per direction, which is
// also the per-direction bound (tcp.bufferBytesMax): a slow reader stalls its writer
// through TCP flow control instead of growing a buffer. With tcp.spliceMode "auto" (the
// default) a direction first copies through a 16 KiB buffer (recv + send, no pipe) and
// takes its pipe only once a read fills that buffer: short exchanges never splice.
//
// Why not Bun sockets for the bytes (bench/tcp_bun_stream.ts, measured by
// bench/tcp.ts beside this relay): a pure-Bun stream relay reaches similar single-
// stream throughput here but spends 2-3x the CPU per byte (0.5-0.7 vs ~0.25 s/GB),
// all of it on the one JavaScript thread that also runs the UDP data path and every
// decision. (Bun.connect({fd}) does adopt a socket made in C, so SO_MARK and the
// client-address bind would be reachable that way; net.Socket({fd}) does not work in
// Bun 1.4.5. Forwarding a RST needs SO_LINGER 0 on the peer socket, which the engine
// sets directly.)
//
// Wake-ups: the listeners and the engine's event fd sit in one Poller (the C epoll
// thread, EPOLLONESHOT); each is drained, bounded, and re-armed in a `finally`.
// Inline (tcp.dataPlane "worker", src/tcp/plane.ts): this runs in a Worker whose Poller
// waits in epoll_wait itself (level-triggered), and the engine has no thread: its epoll
// fd sits in that Poller, and a wake-up on it runs the engine's round here
// (rl_tcp_engine_run). One thread accepts, decides, connects, moves the bytes and reads
// the ends: no wake-up crosses threads (docs/tcp_single_thread.md).
//
// Names (tcp.sniffPorts, 443 by default): before the upstream connect, the client's
// first bytes are peeked (MSG_PEEK) into the WASM parsers' packet area and read as a TLS
// ClientHello; the connection records the SNI. The kernel's receive queue is the hold
// buffer: nothing is read, so the splice engine later moves the very same bytes
// upstream. While a ClientHello is incomplete, SO_RCVLOWAT is set one byte past what was
// seen, so the next wake-up comes with new bytes, not for the ones already parsed. The
// client fd sits in the same Poller (token = sniffTokenBase + connection id) until the
// hello is complete, is not TLS, or tcp.sniffTimeoutMs passes (then it goes unnamed).
//
// Policy (docs/policy.md): each accepted connection (past the loop guard) is decided by
// the compiled policy: a rule on names makes it wait for its ClientHello whatever the
// port. The rule's action: drop (closed, nothing sent upstream), reject (RST), or an
// outbound: direct (the original destination, with the outbound's source address,
// interface and mark), forward (one of the outbound's targets instead, by health:
// src/egress/forward_targets.ts), or socks5 (a CONNECT through the server: the handshake
// runs here, non-blocking, with the server's socket in the same Poller armed for
// writability while it connects; then both sockets go to the splice engine as usual).
// The client always talks to its original destination's address: only the upstream differs.
//
// DNS (tcp.dnsPorts, 53 by default): such a connection is not spliced; its messages are
// read in JavaScript on this Poller and each query is decided on its name
// (src/dns/tcp_stream.ts, docs/dns_tcp.md). This file lends it the policy, the upstream
// connects, the forward targets' health and the flow log (dnsHost).

import { type Pointer, ptr, readBytes, type RelayLib } from "../sys/ffi.ts";
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import type { Config, ListenerConfig } from "../config/load.ts";
import { log, RateLimitedLog } from "../control/log.ts";
import {
  FLOW_ADDR_BYTES,
  type FlowBatch,
  FlowRecords,
  flowPolicyNames,
  FLOW_RECORDS_MAX,
  REPLY_NONE,
} from "../flow/flow_records.ts";
import { type SessionQuery, SESSIONS_LIMIT_MAX, textMatches } from "../control/query.ts";
import { TopK } from "../control/top_k.ts";
import { LocalTargets, TargetKind } from "../flow/local_targets.ts";
import { formatEndpoint, isV4Mapped } from "../sys/addr.ts";
import {
  decodeSocketError,
  describeSocketError,
  E,
  errnoName,
  isPrivilegeErrno,
  isResourceErrno,
  StartError,
} from "../sys/errno.ts";
import { ForwardTargets, flowHash } from "../egress/forward_targets.ts";
import {
  DNS_TCP_TOKENS_PER_STREAM,
  type DnsTcpHost,
  DnsTcpStreams,
  type QueryRecord,
  RESOLVER_ORIGINAL,
} from "../dns/tcp_stream.ts";
import { CMD_CONNECT, Socks5Handshake } from "../egress/socks5.ts";
import {
  ACTION_DNS_ANSWER,
  ACTION_DROP,
  ACTION_REJECT,
  type DnsAnswerConfig,
  type OutboundConfig,
} from "../policy/config.ts";
import { compilePolicy, FLOW_TCP, NEED_NAME, type Policy, PolicyFlow } from "../policy/policy.ts";
import { Code } from "../classify/layout.ts";
import { TlsParser } from "../classify/tls.ts";
import { Parsers, WASM_PATH_DEFAULT } from "../classify/wasm.ts";
import { assert } from "../sys/assert.ts";
import { META, META_WORDS, SOCK } from "../sys/layout.ts";
import { type CancelTimer, Poller, WAKE_TOKEN_MASK } from "../sys/poller.ts";
import {
  TCP_CONNECT,
  TCP_EVENT,
  TCP_EVENT_BYTES,
  TCP_EVENT_CLOSED,
  TCP_EVENT_DOUBLES,
  TCP_EVENT_HALVES,
  TCP_EVENT_WORDS,
  TCP_NEVER_CONNECTED,
  TCP_PARSED_DNS,
  TCP_PARSED_TLS,
  TCP_COPY_BYTES,
  TCP_STATS,
  TCP_STEP_CONNECT,
  TcpEnd,
} from "./layout.ts";

/** Connections accepted per listener wake-up before yielding to other sockets. */
const ACCEPT_BUDGET = 64;
/** Inline engine: socket events handled per run (the Poller calls again while ready). */
const ENGINE_EVENTS_PER_RUN = 256;
/** Engine events read per call, and calls per wake-up. */
const EVENTS_BATCH = 256;
const EVENTS_BATCHES_MAX = 16;
/** Timer period: drains events (lost wake-up recovery), re-arms paused listeners. */
const TICK_MS = 100;
/** Bytes read from a SOCKS5 server per recv() while its handshake runs. */
const SOCKS_RECV_BYTES = 2048;
/** recv() calls per SOCKS5 wake-up (the socket is re-armed if more is queued). */
const SOCKS_RECVS_MAX = 4;
/** After the grace period, how long the engine gets to report the resets. */
const ABORT_WAIT_MS = 2000;
/** The local-address set is re-read this often besides on netlink notifications. */
const LOCAL_REFRESH_MS = 5_000;

// errno values of accept(2) not in src/sys/errno.ts.
const ECONNABORTED = 103;
const EPROTO = 71;

const enum ConnState {
  Free = 0,
  /** Handed to the engine (connecting or open: the engine reports only the end). */
  Busy = 1,
  /** Accepted; its ClientHello is being read (tcp.sniffPorts), no upstream yet. */
  Sniffing = 2,
  /** A socks5 outbound: connecting to the server or in its handshake (no engine yet). */
  Socks = 3,
  /** On tcp.dnsPorts: read per DNS message (src/dns/tcp_stream.ts), never spliced. */
  Dns = 4,
}

/**
 * The policy in force when a connection was decided (reconfigure() makes a new one; open
 * connections keep theirs): what its rule and action indexes mean.
 */
interface PolicyGeneration {
  policy: Policy;
  outbounds: OutboundConfig[];
  /** dnsAnswer outbounds (action ACTION_DNS_ANSWER - k): DNS over TCP answers with them. */
  answers: DnsAnswerConfig[];
  /** Per outbound: the forward targets' health, else null. */
  forward: Array<ForwardTargets | null>;
  /** Per outbound: SOCKS5 handshakes in progress (bounded by its associationsMax). */
  handshakes: Int32Array;
  /** Per outbound (direct): its interface as a NUL-terminated name, else null. */
  devices: Array<Uint8Array | null>;
  /** Per outbound (direct): its bindAddress4/6 (own buffers for ptr()), else null. */
  bind4: Array<Uint8Array | null>;
  bind6: Array<Uint8Array | null>;
}

/** Why a SOCKS5 outbound's handshake failed: the counter it goes to. */
type SocksFailure =
  | "socks5Refused"
  | "socks5Unreachable"
  | "socks5Closed"
  | "socks5ProtocolErrors"
  | "socks5AuthFailed"
  | "socks5ReplyErrors"
  | "socks5Timeouts";

/** End of the sniffing list (an id is never negative). */
const NIL = -1;

export class TcpCounters {
  /** Connections accepted from clients (before any decision). */
  accepted = 0;
  /** Accepted at tcp.connectionsMax open connections: reset at once. */
  rejectedLimit = 0;
  /** REDIRECT listener: conntrack had no original destination (SO_ORIGINAL_DST): reset. */
  droppedNoOriginalDst = 0;
  /** Connected straight to a listener's own address and port (not intercepted): reset. */
  droppedToListener = 0;
  /**
   * The original destination is this host (an address of it, loopback, broadcast: the
   * kernel's local table): reset. Relaying it would hand the client to a local service
   * as if it came from the gateway itself, past that service's source filtering.
   */
  droppedLocalTarget = 0;
  /** The original destination is multicast (never a TCP peer): reset. */
  droppedMulticastTarget = 0;
  /** accept() found no descriptor (EMFILE/ENFILE) or memory; the listener pauses a tick. */
  acceptNoDescriptors = 0;
  /** accept() errors of a connection that died in the backlog (ECONNABORTED...). */
  acceptErrors = 0;
  /** The upstream socket could not be made (descriptors): client reset. */
  upstreamNoDescriptors = 0;
  /** socket/bind/connect failed at once (e.g. EADDRNOTAVAIL, ENETUNREACH): client reset. */
  upstreamSocketFailed = 0;
  /** A policy rule said drop: the client's connection closed, nothing sent upstream. */
  droppedByRule = 0;
  /** A policy rule said reject: the client reset at once. */
  rejectedByRule = 0;

  /** forward outbounds: connects to a target that failed (each counts against it). */
  forwardTargetFailures = 0;
  /** forward outbounds: a target marked down (healthCheck.failuresMax failures in a row). */
  forwardTargetsMarkedDown = 0;

  /** socks5 outbounds: handshakes that succeeded (the connection went to the engine). */
  socks5Connected = 0;
  /** socks5: associationsMax handshakes already in progress to the server: client reset. */
  socks5Busy = 0;
  /** socks5: the server refused the TCP connection (no listener): client reset. */
  socks5Refused = 0;
  /** socks5: the server could not be reached otherwise (unreachable, socket error). */
  socks5Unreachable = 0;
  /** socks5: the server closed or reset the connection mid-handshake. */
  socks5Closed = 0;
  /** socks5: the server answered something that is not SOCKS5 (garbage). */
  socks5ProtocolErrors = 0;
  /** socks5: the server refused the username/password (RFC 1929) or wanted them. */
  socks5AuthFailed = 0;
  /** socks5: the server answered the CONNECT with an error REP (refused, unreachable...). */
  socks5ReplyErrors = 0;
  /** socks5: connect plus handshake took longer than the outbound's connectTimeoutMs. */
  socks5Timeouts = 0;

  /** Upstream connections that were established (counted when they end). */
  connected = 0;
  /** Sum of connect times (ms), for the mean: connectMsTotal / connected. */
  connectMsTotal = 0;
  connectRefused = 0;
  connectTimeouts = 0;
  connectFailed = 0;

  /** Ended with FIN both ways, all bytes delivered. */
  closed = 0;
  /** The client reset or vanished mid-connection; RST sent upstream. */
  clientResets = 0;
  /** The upstream reset or vanished; RST sent to the client. */
  upstreamResets = 0;
  idleTimeouts = 0;
  /** Reset when the shutdown grace period ran out. */
  abortedAtShutdown = 0;
  /** Ended connections the flow log never got: its buffer was full. */
  flowLogDropped = 0;
  /** No pipe (descriptors/memory) or the engine refused the hand-off. */
  resourceFailures = 0;

  // The sniff counters count every ClientHello read: on tcp.sniffPorts, and wherever a
  // policy rule on names waited for one.
  /** tcp.sniffPorts: a whole ClientHello read, its SNI recorded (when it has one). */
  sniffedTls = 0;
  /** tcp.sniffPorts: the first bytes were not a TLS ClientHello; relayed unnamed. */
  sniffMalformed = 0;
  /**
   * tcp.sniffPorts: no whole ClientHello within tcp.sniffTimeoutMs or tcp.sniffBytesMax,
   * or the client half-closed first; relayed unnamed.
   */
  sniffIncomplete = 0;

  // DNS over TCP read per message (tcp.dnsPorts; src/dns/tcp_stream.ts).
  /** Connections read per message. */
  dnsTcpConnections = 0;
  /** tcp.dnsConnectionsMax were open: the connection was relayed as bytes, unnamed. */
  dnsTcpOverLimit = 0;
  /** Queries read (whole, parsed). */
  dnsTcpQueries = 0;
  /** Queries sent to a forward outbound's target, or to the original destination. */
  dnsTcpForwarded = 0;
  dnsTcpDirect = 0;
  /** Answers relayed from an upstream to the client. */
  dnsTcpAnswered = 0;
  /** Queries answered in place by a dnsAnswer outbound. */
  dnsTcpAnsweredLocally = 0;
  /** Queries a rule dropped (ignored; the connection goes on). */
  dnsTcpDropped = 0;
  /** Connections reset because a query's rule said reject. */
  dnsTcpRejected = 0;
  /** Connections whose first query went to a socks5 outbound: tunnelled whole from there. */
  dnsTcpSocks5 = 0;
  /** A later query of a connection decided socks5: the connection reset. */
  dnsTcpSocks5NotFirst = 0;
  /** A query needed a third upstream connection (UPSTREAMS_MAX): the connection reset. */
  dnsTcpUpstreamsExceeded = 0;
  /** No upstream (connect failed, retry included) or it closed with queries: reset. */
  dnsTcpUpstreamFailed = 0;
  /** Messages from an upstream matching no query in flight (ID, question): dropped. */
  dnsTcpAnswersUnmatched = 0;
  /** Length under 12, QR set, QDCOUNT not 1, a name that does not parse: reset. */
  dnsTcpMalformed = 0;
  /** Part of a message, then nothing for tcp.dnsIdleTimeoutMs (or a FIN): closed. */
  dnsTcpIncomplete = 0;
  /** Answers the client did not read for tcp.dnsIdleTimeoutMs: reset. */
  dnsTcpStalled = 0;
  /** Queries unanswered by the upstream for tcp.dnsIdleTimeoutMs: reset. */
  dnsTcpTimedOut = 0;
  /** Nothing asked for tcp.dnsIdleTimeoutMs: closed (FIN), as RFC 7766 6.2.3 suggests. */
  dnsTcpIdleClosed = 0;
  /** The client reset the connection or vanished. */
  dnsTcpClientResets = 0;

  /** Bytes of connections that ended, each way (live totals: see snapshot()). */
  bytesToTargetsClosed = 0;
  bytesToClientsClosed = 0;

  wakes = 0;
}

export interface TcpRelayOptions {
  /**
   * The relay cannot go on (the splice engine thread died): called once with what
   * happened. Default: log it and exit with 70 (EX_SOFTWARE), so that a service
   * manager restarts the relay instead of leaving it half-alive.
   */
  onFatal?: (message: string) => void;
  /** With flowLog.path set: the connections that ended, a batch per timer tick. */
  onFlows?: (batch: FlowBatch) => void;
  /**
   * One thread for everything (a Worker that may block: src/tcp/tcp_worker.ts): the Poller
   * waits inline and the splice engine runs in its rounds, without a thread of its own.
   */
  inline?: boolean;
}

/** sysexits.h EX_SOFTWARE: an internal error. */
const EXIT_SOFTWARE = 70;

function exitOnFatal(message: string): void {
  log.error(`fatal: ${message}`);
  process.exit(EXIT_SOFTWARE);
}

export interface TcpConnectionView {
  client: string;
  target: string;
  listener: string;
  /** The TLS SNI read (on a sniff port, or for a rule on names), or null. */
  name: string | null;
  /** The policy rule that decided it (null: not decided yet, its name being read). */
  rule: string | null;
  /** Its outbound's name (null: not decided yet). */
  outbound: string | null;
  ageMs: number;
}

export class TcpRelay {
  readonly counters = new TcpCounters();
  /** Start time of the relay's monotonic clock (performance.now()). */
  readonly startedMs = performance.now();

  private readonly lib: RelayLib;
  /** Replaced by reconfigure() (its live fields only differ; see src/config/reload.ts). */
  private config: Config;
  private readonly listeners: ListenerConfig[];
  /** Per TCP listener: its index in config.listeners (what the policy's rules name). */
  private readonly listenerIndex: Int16Array;
  private readonly poller: Poller;
  /** The policy for new connections (replaced by reconfigure()). */
  private gen: PolicyGeneration;
  /** One flow, refilled per decision; its words are connAddrs' (client at id*8). */
  private readonly flow = new PolicyFlow();
  private engine = -1;
  /** What eventsToken watches: the engine's event fd, or inline its epoll fd. */
  private eventsFd = -1;
  private readonly inline: boolean;
  private readonly eventsToken: number;
  /** The netlink address watch (LocalTargets), after the engine's event fd. */
  private readonly watchToken: number;
  private watchFd = -1;
  /** What the loop guard treats as this host (checked once per accepted connection). */
  readonly locals: LocalTargets;
  private localsRefreshedMs = 0;

  private readonly listenerFd: Int32Array;
  /** Set while a listener waits for descriptors (EMFILE): the tick re-arms it. */
  private readonly listenerPaused: Uint8Array;

  // accept() metadata (one rl_meta) and the original-destination scratch (16 bytes).
  // Every array C writes is built on its own ArrayBuffer before ptr(): JSC moves a
  // small typed array's storage when .buffer is first read, which would leave C
  // writing through a stale pointer.
  private readonly meta = new Uint8Array(new ArrayBuffer(META_WORDS * 4));
  private readonly metaPtr: Pointer;
  private readonly meta16: Uint16Array;
  private readonly meta32: Uint32Array;
  private readonly origDst = new Uint8Array(new ArrayBuffer(16));
  private readonly upstream4 = new Uint8Array(new ArrayBuffer(16));
  private readonly upstream6 = new Uint8Array(new ArrayBuffer(16));
  private readonly origDstPtr: Pointer;
  private readonly upstream4Ptr: Pointer;
  private readonly upstream6Ptr: Pointer;
  private readonly upstream4Any: boolean;
  private readonly upstream6Any: boolean;

  // Engine events.
  private readonly events = new Uint8Array(new ArrayBuffer(TCP_EVENT_BYTES * EVENTS_BATCH));
  private readonly eventsPtr: Pointer;
  private readonly event32: Uint32Array;
  private readonly eventI32: Int32Array;
  private readonly event16: Uint16Array;
  private readonly event64: Float64Array;
  private readonly stats = new Float64Array(new ArrayBuffer(TCP_STATS.count * 8));
  private readonly statsPtr: Pointer;

  // Connections by id (the engine slot): what the control plane may list.
  /** Ids (engine slots) allocated at start: tcp.connectionsMax as the relay started. */
  private readonly connectionsMax: number;
  /** Open connections at most now: tcp.connectionsMax, lowered (or raised back) live. */
  private connectionsLimit: number;
  private readonly freeIds: Int32Array;
  private freeIdCount: number;
  private readonly connState: Uint8Array;
  private readonly connListener: Int16Array;
  private readonly connStartMs: Float64Array;
  private readonly connAddrs: Uint8Array; // 32 bytes each: client, target
  private readonly connAddrsPtr: Pointer;
  private readonly connPorts: Uint32Array; // client port << 16 | target port
  private readonly connScope: Uint32Array; // the target's IPv6 scope id
  private readonly connNames: Array<string | null>;
  /** The deciding rule (-1: not decided yet), its action, and the policy they index. */
  private readonly connRule: Int32Array;
  private readonly connAction: Int32Array;
  private readonly connGen: Array<PolicyGeneration | null>;
  /** forward: the chosen target's index (-1: not a forward outbound). */
  private readonly connTarget: Int16Array;

  // socks5 outbounds: the server's socket and the handshake, while no engine holds them.
  private readonly socksTokenBase: number;
  private readonly connUpstreamFd: Int32Array;
  private readonly connSocksConnecting: Uint8Array;
  private readonly handshakes: Array<Socks5Handshake | null>;
  /** Ids in a SOCKS5 handshake (bounded by the outbounds' associationsMax), for timeouts. */
  private readonly socksIds = new Set<number>();
  private readonly socksRecv = new Uint8Array(new ArrayBuffer(SOCKS_RECV_BYTES));
  private readonly socksRecvPtr: Pointer;
  /** The forward target's address for rl_tcp_connect (its own buffer for ptr()). */
  private readonly forwardAddr = new Uint8Array(new ArrayBuffer(16));
  private readonly forwardAddrPtr: Pointer;

  // Sniffing (tcp.sniffPorts): the client fd while no upstream exists, the bytes of the
  // ClientHello seen so far, the deadline, and a list in deadline order (all sniffing
  // connections share one timeout, so appending keeps it sorted) for the timer.
  private readonly sniffPort: Uint8Array;
  private readonly sniffTokenBase: number;
  private readonly connClientFd: Int32Array;
  private readonly connPeeked: Int32Array;
  private readonly connDeadlineMs: Float64Array;
  private readonly sniffNext: Int32Array;
  private readonly sniffPrev: Int32Array;
  private sniffHead = NIL;
  private sniffTail = NIL;
  /** The parsers read the peeked bytes in place; their own instance (not the UDP slab). */
  private tls: TlsParser | null = null;
  private sniffPtr: Pointer | null = null;
  private sniffOffset = 0;
  private active = 0;
  /** DNS over TCP (tcp.dnsPorts): per port, 1 when read per message. */
  private readonly dnsPort = new Uint8Array(65_536);
  private readonly dnsTokenBase: number;
  private readonly dns: DnsTcpStreams;
  /** socks5 decided by a DNS connection's first query: the bytes already read from it. */
  private readonly connEarly: Array<Uint8Array | null>;
  /** The control plane's selection (`relay sessions`), built once. */
  private readonly selected = new TopK(SESSIONS_LIMIT_MAX);

  /** Ended connections waiting for the flow log (null: no flow log), and who takes them. */
  private flows: FlowRecords | null;
  private readonly onFlows: (batch: FlowBatch) => void;

  /** The tick (Poller.every: inline, run from the Worker's loop itself). */
  private cancelTick: CancelTimer | null = null;
  private readonly logger = new RateLimitedLog();
  private stopping = false;
  private closed = false;
  private pollWakesFinal = 0;
  private readonly onFatal: (message: string) => void;
  private fatal = false;

  constructor(lib: RelayLib, config: Config, options: TcpRelayOptions = {}) {
    this.lib = lib;
    this.config = config;
    this.onFatal = options.onFatal ?? exitOnFatal;
    this.inline = options.inline === true;
    this.listeners = config.listeners.filter((l) => l.protocol === "tcp");
    this.listenerIndex = Int16Array.from(this.listeners.map((l) => config.listeners.indexOf(l)));
    this.gen = this.makeGeneration(config, null);
    this.eventsToken = this.listeners.length;
    this.watchToken = this.listeners.length + 1;
    this.locals = new LocalTargets(lib);
    this.listenerFd = new Int32Array(this.listeners.length).fill(-1);
    this.listenerPaused = new Uint8Array(this.listeners.length);

    this.metaPtr = ptr(this.meta);
    this.meta16 = new Uint16Array(this.meta.buffer);
    this.meta32 = new Uint32Array(this.meta.buffer);
    this.origDstPtr = ptr(this.origDst);
    this.upstream4.set(config.upstreamAddr4);
    this.upstream6.set(config.upstreamAddr6);
    this.upstream4Ptr = ptr(this.upstream4);
    this.upstream6Ptr = ptr(this.upstream6);
    this.upstream4Any = config.upstreamAddr4.subarray(12).every((b) => b === 0);
    this.upstream6Any = config.upstreamAddr6.every((b) => b === 0);

    this.eventsPtr = ptr(this.events);
    this.event32 = new Uint32Array(this.events.buffer);
    this.eventI32 = new Int32Array(this.events.buffer);
    this.event16 = new Uint16Array(this.events.buffer);
    this.event64 = new Float64Array(this.events.buffer);
    this.statsPtr = ptr(this.stats);

    const n = config.tcp.connectionsMax;
    this.connectionsMax = n;
    this.connectionsLimit = n;
    this.freeIds = new Int32Array(n);
    for (let i = 0; i < n; i++) this.freeIds[i] = n - 1 - i;
    this.freeIdCount = n;
    this.connState = new Uint8Array(n);
    this.connListener = new Int16Array(n).fill(-1);
    this.connStartMs = new Float64Array(n);
    this.connAddrs = new Uint8Array(new ArrayBuffer(n * 32));
    this.connAddrsPtr = ptr(this.connAddrs);
    this.connPorts = new Uint32Array(n);
    this.connScope = new Uint32Array(n);
    this.connNames = new Array<string | null>(n).fill(null);
    this.connRule = new Int32Array(n).fill(-1);
    this.connAction = new Int32Array(n);
    this.connGen = new Array<PolicyGeneration | null>(n).fill(null);
    this.connTarget = new Int16Array(n).fill(-1);
    this.flow.protocol = FLOW_TCP;
    this.flow.words = new Uint32Array(this.connAddrs.buffer);

    this.sniffPort = new Uint8Array(65_536);
    for (const port of config.tcp.sniffPorts) this.sniffPort[port] = 1;
    this.sniffTokenBase = this.listeners.length + 2;
    this.connClientFd = new Int32Array(n).fill(-1);
    this.connPeeked = new Int32Array(n);
    this.connDeadlineMs = new Float64Array(n);
    this.sniffNext = new Int32Array(n).fill(NIL);
    this.sniffPrev = new Int32Array(n).fill(NIL);
    this.socksTokenBase = this.sniffTokenBase + n;
    this.connUpstreamFd = new Int32Array(n).fill(-1);
    this.connSocksConnecting = new Uint8Array(n);
    this.handshakes = new Array<Socks5Handshake | null>(n).fill(null);
    this.socksRecvPtr = ptr(this.socksRecv);
    this.forwardAddrPtr = ptr(this.forwardAddr);
    this.connEarly = new Array<Uint8Array | null>(n).fill(null);
    for (const port of config.tcp.dnsPorts) this.dnsPort[port] = 1;
    this.dnsTokenBase = this.socksTokenBase + n;
    if (config.tcp.sniffPorts.length > 0 || this.gen.policy.usesNames) this.openParser();
    this.onFlows = options.onFlows ?? (() => {});
    this.flows =
      config.flowLog.path !== "" && options.onFlows
        ? new FlowRecords(
            "tcp",
            this.listeners.map((l) => l.name),
            FLOW_RECORDS_MAX,
            ...flowPolicyNames(config),
          )
        : null;

    // Listeners, the engine event fd, the address watch, one token per connection id for
    // a client whose ClientHello is being read, one for its SOCKS5 server's socket, and
    // DNS_TCP_TOKENS_PER_STREAM per DNS stream (its client and upstreams).
    const dnsMax = config.tcp.dnsConnectionsMax;
    this.poller = new Poller(lib, (token) => this.onWake(token), {
      inline: this.inline,
      tokensMax: this.dnsTokenBase + dnsMax * DNS_TCP_TOKENS_PER_STREAM,
      // A bug on the accept path, or the epoll thread gone: never limp on half alive.
      onError: (err) => {
        if (this.fatal) return;
        this.fatal = true;
        this.onFatal(`TCP accept path failed: ${(err as Error).stack ?? err}`);
      },
    });
    this.dns = new DnsTcpStreams(this.dnsHost(), dnsMax, n, this.dnsTokenBase);
  }

  /** The TLS parser for names (tcp.sniffPorts, or a policy rule on names). */
  private openParser(): void {
    if (this.tls !== null || this.listeners.length === 0) return;
    const parsers = new Parsers(new WebAssembly.Module(readFileSync(WASM_PATH_DEFAULT)));
    assert(
      this.config.tcp.sniffBytesMax <= parsers.packetArea.bytesMax,
      "tcp.sniffBytesMax exceeds the parsers' packet area",
    );
    this.tls = new TlsParser(parsers);
    this.sniffOffset = parsers.packetArea.offset;
    this.sniffPtr = (ptr(parsers.bytes) + this.sniffOffset) as Pointer;
  }

  /**
   * The compiled policy and its outbounds' state. A forward outbound of the same name and
   * targets as in `previous` keeps its targets' health across a reload.
   */
  private makeGeneration(config: Config, previous: PolicyGeneration | null): PolicyGeneration {
    const outbounds = config.policy.outbounds;
    const own = (addr: Uint8Array | null) => {
      if (addr === null) return null;
      const copy = new Uint8Array(new ArrayBuffer(16));
      copy.set(addr);
      return copy;
    };
    const targetsKey = (o: OutboundConfig) =>
      o.type === "forward" ? o.targets.map((t) => `${t.address}:${t.port}`).join(",") : "";
    return {
      policy: compilePolicy(config),
      outbounds,
      answers: config.policy.answers,
      forward: outbounds.map((o) => {
        if (o.type !== "forward") return null;
        const k = previous?.outbounds.findIndex(
          (p) => p.name === o.name && p.type === "forward" && targetsKey(p) === targetsKey(o),
        );
        if (previous && k !== undefined && k >= 0 && previous.forward[k]) {
          return previous.forward[k];
        }
        const h = o.healthCheck;
        return new ForwardTargets(o.targets, h.failuresMax, h.retryIntervalMs);
      }),
      handshakes: new Int32Array(outbounds.length),
      devices: outbounds.map((o) =>
        o.type === "direct" && o.interface !== null ? Buffer.from(`${o.interface}\0`) : null,
      ),
      bind4: outbounds.map((o) => (o.type === "direct" ? own(o.bindAddr4) : null)),
      bind6: outbounds.map((o) => (o.type === "direct" ? own(o.bindAddr6) : null)),
    };
  }

  /** Opens the listeners, the splice engine and the poll thread. Throws with a clear message. */
  start(): void {
    // Descriptors: main.ts raised RLIMIT_NOFILE and fitted tcp.connectionsMax under it.
    const tcp = this.config.tcp;
    const engine = this.lib.rl_tcp_engine_open(
      tcp.connectionsMax,
      tcp.bufferBytesMax,
      tcp.connectTimeoutMs,
      tcp.idleTimeoutMs,
      // The copy buffer counts against the per-direction bound like the pipe does.
      tcp.spliceMode === "auto" ? Math.min(TCP_COPY_BYTES, tcp.bufferBytesMax) : 0,
      this.inline ? 1 : 0,
    );
    if (engine < 0) throw new Error(`TCP splice engine did not start: ${errnoName(-engine)}`);
    this.engine = engine;
    this.eventsFd = this.inline
      ? this.lib.rl_tcp_engine_epoll_fd(engine)
      : this.lib.rl_tcp_engine_event_fd(engine);
    try {
      // The local set first: no connection is accepted before the loop guard can judge it.
      this.locals.refresh();
      this.localsRefreshedMs = performance.now();
      this.watchFd = this.locals.openWatch();
      const watched = this.poller.add(this.watchFd, this.watchToken);
      if (watched < 0) throw new Error(`epoll_ctl(ADD) address watch: ${errnoName(-watched)}`);
      const rc = this.poller.add(this.eventsFd, this.eventsToken);
      if (rc < 0) throw new Error(`epoll_ctl(ADD) engine events: ${errnoName(-rc)}`);
      this.listeners.forEach((l, i) => {
        this.openListener(l, i);
      });
    } catch (err) {
      this.closeListeners();
      this.closeWatch();
      this.lib.rl_tcp_engine_close(this.engine);
      this.engine = -1;
      throw err;
    }
    this.poller.start();
    this.cancelTick = this.poller.every(TICK_MS, () => this.tick());
  }

  /**
   * Inline mode: the handle the main thread passes to Poller.notify() before it posts a
   * request to this thread (src/sys/worker_plane.ts).
   */
  get notifyHandle(): number {
    return this.poller.notifyHandle;
  }

  /** Inline mode: a request announced through notifyHandle was handled. */
  messageHandled(): void {
    this.poller.messageHandled();
  }

  /**
   * Clean shutdown: stop accepting (listeners closed; connections still in the
   * backlog are reset by the kernel), let open connections finish for up to graceMs,
   * then reset the rest. Resolves once every connection is accounted for.
   */
  async stop(graceMs: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.closeListeners();
    this.dns.stop();
    if (this.engine < 0) return this.close();
    const graceEnd = performance.now() + graceMs;
    while (this.active > 0 && performance.now() < graceEnd) {
      this.drainEvents();
      await sleep(Math.min(20, Math.max(1, graceEnd - performance.now())));
    }
    if (this.active > 0) {
      this.abortSniffing();
      this.abortSocks();
      this.abortDns();
      this.lib.rl_tcp_engine_abort_all(this.engine);
      const abortEnd = performance.now() + ABORT_WAIT_MS;
      while (this.active > 0 && performance.now() < abortEnd) {
        this.drainEvents();
        await sleep(5);
      }
    }
    this.close();
  }

  /**
   * A reload's live settings (the caller has checked that fields needing a restart are
   * unchanged, and that tcp.connectionsMax is within the ids allocated at start). Open
   * connections stay: the connect and idle timeouts apply to them from the engine's next
   * sweep (one already idle past a lowered timeout is reset there); a lowered
   * connectionsMax refuses new clients until fewer are open; shutdownGraceMs is read
   * at stop.
   */
  reconfigure(config: Config): void {
    const tcp = config.tcp;
    if (tcp.connectionsMax > this.connectionsMax) {
      throw new Error("tcp.connectionsMax above the ids allocated at start (needs a restart)");
    }
    this.config = config;
    this.connectionsLimit = tcp.connectionsMax;
    this.dnsPort.fill(0);
    for (const port of tcp.dnsPorts) this.dnsPort[port] = 1;
    // New connections follow the new policy; open ones keep the generation they were
    // decided under (their rule and outbound names, a forward target's health).
    this.gen = this.makeGeneration(config, this.gen);
    if (this.gen.policy.usesNames) this.openParser();
    if (this.flows !== null) {
      // Rows index the names of the policy they were written under: hand those over
      // first, then index the new names.
      this.flushFlows();
      this.flows = new FlowRecords(
        "tcp",
        this.listeners.map((l) => l.name),
        FLOW_RECORDS_MAX,
        ...flowPolicyNames(config),
      );
    }
    if (this.engine >= 0) {
      const rc = this.lib.rl_tcp_engine_set_timeouts(
        this.engine,
        tcp.connectTimeoutMs,
        tcp.idleTimeoutMs,
      );
      if (rc < 0) throw new Error(`rl_tcp_engine_set_timeouts: ${errnoName(-rc)}`);
    }
  }

  /** Joins the threads and closes every descriptor (anything still open is reset). */
  private close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cancelTick?.();
    this.cancelTick = null;
    this.pollWakesFinal = this.poller.wakes;
    this.abortSniffing();
    this.abortSocks();
    this.abortDns();
    this.poller.stop();
    this.closeWatch();
    if (this.engine >= 0) {
      this.drainEvents();
      this.flushFlows();
      // Keep the engine's last totals for the final metrics line.
      this.lib.rl_tcp_engine_stats(this.engine, this.statsPtr);
      this.lib.rl_tcp_engine_close(this.engine);
      this.engine = -1;
    }
  }

  /** The `tcp` object of the metrics line. */
  snapshot() {
    if (this.engine >= 0) this.lib.rl_tcp_engine_stats(this.engine, this.statsPtr);
    return {
      ...this.counters,
      connectionsActive: this.active,
      connectionsMax: this.connectionsLimit,
      dnsConnectionsActive: this.dns.active,
      // Delivered bytes of all connections, open ones included (engine totals).
      bytesToTargets: this.stats[TCP_STATS.bytesUp],
      bytesToClients: this.stats[TCP_STATS.bytesDown],
      pipesInUse: this.stats[TCP_STATS.pipesInUse],
      pipesPooled: this.stats[TCP_STATS.pipesPooled],
      eventsLost: this.stats[TCP_STATS.eventsLost],
      spliceSwitches: this.stats[TCP_STATS.spliceSwitches],
      copyOnlyConnections: this.stats[TCP_STATS.copyOnly],
      copyBuffersInUse: this.stats[TCP_STATS.copyBuffersInUse],
      copyPoolEmpty: this.stats[TCP_STATS.copyPoolEmpty],
      pollWakes: this.closed ? this.pollWakesFinal : this.poller.wakes,
    };
  }

  /** Open connections for the control plane (bounded by `limit`). */
  connectionViews(limit: number): TcpConnectionView[] {
    const out: TcpConnectionView[] = [];
    const now = performance.now();
    for (let id = 0; id < this.connectionsMax && out.length < limit; id++) {
      if (this.connState[id] !== ConnState.Free) out.push(this.connectionView(id, now));
    }
    return out;
  }

  /**
   * The open connections `query` selects (`relay sessions`), and how many matched. The
   * splice engine reports a connection's bytes only when it ends, so there is nothing
   * live to sort by bytes, packets or idle time: whatever the sort, oldest first. A
   * name filter matches the SNI read on a sniff port (tcp.sniffPorts).
   */
  queryConnections(query: SessionQuery): { connections: TcpConnectionView[]; matched: number } {
    const top = this.selected;
    top.reset(query.limit);
    let matched = 0;
    for (let id = 0; id < this.connectionsMax; id++) {
      if (this.connState[id] === ConnState.Free) continue;
      if (!textMatches(this.connNames[id], query.name)) continue;
      const ports = this.connPorts[id];
      const client = formatEndpoint(this.connAddrs, id * 32, ports >>> 16);
      if (!textMatches(client, query.client)) continue;
      const target = formatEndpoint(this.connAddrs, id * 32 + 16, ports & 0xffff);
      if (!textMatches(target, query.target)) continue;
      const listener = this.listeners[this.connListener[id]]?.name ?? "?";
      if (!textMatches(listener, query.listener)) continue;
      matched++;
      top.offer(id, -this.connStartMs[id]);
    }
    const now = performance.now();
    const connections: TcpConnectionView[] = [];
    for (let i = 0; i < top.count; i++) connections.push(this.connectionView(top.items[i], now));
    return { connections, matched };
  }

  private connectionView(id: number, now: number): TcpConnectionView {
    const ports = this.connPorts[id];
    const gen = this.connGen[id];
    const rule = this.connRule[id];
    const decided = gen !== null && rule >= 0;
    return {
      client: formatEndpoint(this.connAddrs, id * 32, ports >>> 16),
      target: formatEndpoint(this.connAddrs, id * 32 + 16, ports & 0xffff),
      listener: this.listeners[this.connListener[id]]?.name ?? "?",
      name: this.connNames[id],
      rule: decided ? (gen.policy.ruleNames[rule] ?? "?") : null,
      outbound: decided ? actionName(gen, this.connAction[id]) : null,
      ageMs: Math.round(now - this.connStartMs[id]),
    };
  }

  // ---- set-up ----

  private openListener(l: ListenerConfig, index: number): void {
    // SO_REUSEADDR only lets a restart bind past TIME_WAIT connections: the kernel still
    // refuses a second listening socket on the address and port (another relay).
    const flags =
      SOCK.stream |
      SOCK.reuseAddr |
      (l.mode === "tproxy" ? SOCK.transparent | SOCK.freeBind : 0) |
      (l.reusePort ? SOCK.reusePort : 0) |
      (l.ipv6 ? SOCK.ipv6 | SOCK.v6Only : 0);
    const fd = this.lib.rl_socket(flags, l.addr, l.port, 0, 0, 0);
    if (fd < 0) {
      const err = decodeSocketError(fd);
      throw new StartError(
        `listener "${l.name}" (tcp ${l.address} port ${l.port}): ` +
          describeSocketError(err, l.ipv6),
        isPrivilegeErrno(err.errno),
      );
    }
    this.listenerFd[index] = fd;
    const rc = this.lib.rl_listen(fd, this.config.tcp.listenBacklog);
    if (rc < 0) {
      throw new StartError(
        `listener "${l.name}" (tcp ${l.address} port ${l.port}): listen(): ${errnoName(-rc)}` +
          (-rc === E.EADDRINUSE ? ": another socket listens on this address and port" : ""),
        false,
      );
    }
    const added = this.poller.add(fd, index);
    if (added < 0) throw new Error(`listener "${l.name}": epoll_ctl(ADD): ${errnoName(-added)}`);
  }

  private closeListeners(): void {
    for (let i = 0; i < this.listenerFd.length; i++) {
      const fd = this.listenerFd[i];
      if (fd < 0) continue;
      this.listenerFd[i] = -1;
      this.poller.remove(fd);
      this.lib.rl_close(fd);
    }
  }

  private closeWatch(): void {
    if (this.watchFd >= 0) this.poller.remove(this.watchFd);
    this.watchFd = -1;
    this.locals.closeWatch();
  }

  /** The local-address set may have changed: re-read it (keep the last good one). */
  private refreshLocals(fromWatch: boolean): void {
    try {
      if (fromWatch) this.locals.onWatchReadable();
      else this.locals.refresh();
    } catch (err) {
      this.log("locals", `local-address refresh failed: ${(err as Error).message}`);
    }
    this.localsRefreshedMs = performance.now();
  }

  // ---- wake-ups ----

  private onWake(wake: number): void {
    const token = wake & WAKE_TOKEN_MASK;
    this.counters.wakes++;
    if (token === this.watchToken) {
      try {
        this.refreshLocals(true);
      } finally {
        if (!this.closed && this.watchFd >= 0) this.poller.rearm(this.watchFd, token);
      }
      return;
    }
    if (token === this.eventsToken) {
      try {
        this.runEngine();
        this.drainEvents();
        this.checkEngine(); // a dying engine wakes us through the same event fd
      } finally {
        if (!this.closed) this.poller.rearm(this.eventsFd, token);
      }
      return;
    }
    if (token >= this.dnsTokenBase) {
      this.dns.onWake(token - this.dnsTokenBase, performance.now());
      return;
    }
    if (token >= this.socksTokenBase) {
      this.onSocksReady(token - this.socksTokenBase);
      return;
    }
    if (token >= this.sniffTokenBase) {
      this.onSniffReadable(token - this.sniffTokenBase);
      return;
    }
    const fd = this.listenerFd[token];
    if (fd === undefined || fd < 0) return; // closed since the wake-up was queued
    try {
      this.acceptFrom(token, fd);
    } finally {
      // A paused listener (no descriptors) is re-armed by the tick instead.
      if (this.listenerFd[token] === fd && !this.listenerPaused[token]) {
        this.poller.rearm(fd, token);
      }
    }
  }

  private tick(): void {
    if (!this.poller.check()) return;
    this.expireSniffing(performance.now());
    this.expireSocks(performance.now());
    this.dns.tick(performance.now());
    this.runEngine(); // inline: the connect and idle timeouts have no thread of their own
    this.drainEvents();
    this.flushFlows();
    this.checkEngine();
    if (performance.now() - this.localsRefreshedMs >= LOCAL_REFRESH_MS) this.refreshLocals(false);
    for (let i = 0; i < this.listenerFd.length; i++) {
      if (!this.listenerPaused[i] || this.listenerFd[i] < 0) continue;
      this.listenerPaused[i] = 0;
      if (this.inline) this.poller.add(this.listenerFd[i], i);
      else this.poller.rearm(this.listenerFd[i], i);
    }
  }

  // ---- accept: the decisions ----

  private acceptFrom(index: number, listenerFd: number): void {
    for (let k = 0; k < ACCEPT_BUDGET; k++) {
      const fd = this.lib.rl_tcp_accept(listenerFd, this.metaPtr);
      if (fd < 0) {
        const err = -fd;
        if (err === E.EAGAIN) return;
        if (isResourceErrno(err)) {
          this.counters.acceptNoDescriptors++;
          this.listenerPaused[index] = 1;
          // Level-triggered (inline), the pending client would wake us at once, again
          // and again: off the Poller until the tick puts it back.
          if (this.inline) this.poller.remove(listenerFd);
          this.log(
            "accept-fds",
            `accept(): ${errnoName(err)}: pausing listener ` +
              `"${this.listeners[index].name}" for ${TICK_MS} ms`,
          );
          return;
        }
        this.counters.acceptErrors++;
        if (err !== ECONNABORTED && err !== EPROTO) {
          this.log(
            `accept-${err}`,
            `accept() on "${this.listeners[index].name}": ${errnoName(err)}`,
          );
          return;
        }
        continue;
      }
      this.counters.accepted++;
      this.admit(index, fd);
    }
  }

  /** One accepted client: refuse it (RST, counted) or connect upstream and hand off. */
  private admit(index: number, clientFd: number): void {
    const l = this.listeners[index];
    if (this.active >= this.connectionsLimit || this.freeIdCount === 0) {
      // Defined behaviour at the limit: the client learns at once (RST), instead of
      // waiting in a backlog that would hide the overload.
      this.counters.rejectedLimit++;
      this.lib.rl_tcp_abort(clientFd);
      return;
    }
    const meta = this.meta;
    const localPort = this.meta16[META.targetPortHalf];
    let targetBytes = meta.subarray(16, 32);
    let targetPort = localPort;
    if (l.mode === "redirect") {
      const port = this.lib.rl_original_dst(clientFd, this.origDstPtr);
      if (port <= 0) {
        this.counters.droppedNoOriginalDst++;
        this.log(
          "no-origdst",
          `listener "${l.name}": no original destination ` +
            `(SO_ORIGINAL_DST: ${port < 0 ? errnoName(-port) : "port 0"})`,
        );
        this.lib.rl_tcp_abort(clientFd);
        return;
      }
      targetBytes = this.origDst;
      targetPort = port;
    }
    const kind = this.locals.classifyBytes(targetBytes);
    if (kind !== TargetKind.Remote) {
      // Sent to the listener itself (no TPROXY/REDIRECT on the way), or to another
      // address of this host: relaying it would connect the relay to itself, or to a
      // local service in the gateway's name. Never relayed.
      if (kind === TargetKind.Multicast) this.counters.droppedMulticastTarget++;
      else if (this.reachedDirectly(l, targetBytes, targetPort, localPort)) {
        this.counters.droppedToListener++;
      } else this.counters.droppedLocalTarget++;
      this.lib.rl_tcp_abort(clientFd);
      return;
    }

    const id = this.freeIds[--this.freeIdCount];
    this.connState[id] = ConnState.Busy;
    this.connListener[id] = index;
    this.connStartMs[id] = performance.now();
    this.connAddrs.set(meta.subarray(0, 16), id * 32);
    this.connAddrs.set(targetBytes.subarray(0, 16), id * 32 + 16);
    this.connPorts[id] = ((this.meta16[META.sourcePortHalf] << 16) | targetPort) >>> 0;
    this.connScope[id] = this.meta32[META.targetScopeWord];
    this.connNames[id] = null;
    this.connRule[id] = -1;
    this.connAction[id] = 0;
    this.connGen[id] = this.gen;
    this.connTarget[id] = -1;
    this.active++;
    // DNS is read per message (decided per query); past tcp.dnsConnectionsMax, as bytes.
    if (this.dnsPort[targetPort] === 1) {
      this.connState[id] = ConnState.Dns;
      if (this.dns.start(id, clientFd, this.connStartMs[id])) return;
      this.connState[id] = ConnState.Busy;
    }
    if (this.tls !== null && this.sniffPort[targetPort] === 1) {
      this.startSniffing(id, clientFd);
      return;
    }
    // A rule on names that could match makes the connection wait for its ClientHello,
    // whatever its port.
    const rule = this.decide(id, this.tls !== null);
    if (rule === NEED_NAME) this.startSniffing(id, clientFd);
    else this.act(id, clientFd, rule);
  }

  /** The policy's rule for connection `id` (NEED_NAME: namePending and a rule wants it). */
  private decide(id: number, namePending: boolean): number {
    const flow = this.flow;
    flow.listener = this.listenerIndex[this.connListener[id]];
    flow.sourceAt = id * 8;
    flow.destinationAt = id * 8 + 4;
    flow.port = this.connPorts[id] & 0xffff;
    flow.name = this.connNames[id];
    flow.namePending = namePending;
    return this.connGen[id]!.policy.decide(flow);
  }

  /** After its ClientHello was read (or not): decide with the name known, and act. */
  private decideNamed(id: number, clientFd: number): void {
    this.act(id, clientFd, this.decide(id, false));
  }

  /** Carries out rule `rule`'s action for connection `id`. */
  private act(id: number, clientFd: number, rule: number): void {
    const gen = this.connGen[id]!;
    const action = gen.policy.actions[rule];
    this.connRule[id] = rule;
    this.connAction[id] = action;
    // A dnsAnswer outbound answers DNS queries only: any other connection is dropped.
    if (action === ACTION_DROP || action <= ACTION_DNS_ANSWER) {
      // Closed, not reset: the client sees the end of the stream, the target nothing.
      this.counters.droppedByRule++;
      this.lib.rl_close(clientFd);
      if (this.flows !== null) this.recordFlow(id, TcpEnd.Dropped, 0, 0);
      this.release(id);
      return;
    }
    if (action === ACTION_REJECT) {
      this.counters.rejectedByRule++;
      this.lib.rl_tcp_abort(clientFd);
      if (this.flows !== null) this.recordFlow(id, TcpEnd.Rejected, 0, 0);
      this.release(id);
      return;
    }
    const o = gen.outbounds[action];
    if (o.type === "direct") {
      this.connectUpstream(id, clientFd, this.upstreamHow(id, action, -1));
    } else if (o.type === "forward") {
      const k = this.chooseTarget(id, action, -1);
      this.connTarget[id] = k;
      this.connectUpstream(id, clientFd, this.upstreamHow(id, action, k));
    } else {
      this.startSocks(id, clientFd, action, o);
    }
  }

  /**
   * How connection `id` reaches the upstream of `action`: a direct outbound's original
   * destination (target -1), or a forward outbound's target `target`.
   */
  private upstreamHow(id: number, action: number, target: number): UpstreamConnect {
    const gen = this.connGen[id]!;
    const o = gen.outbounds[action];
    if (o.type === "forward") {
      const t = o.targets[target];
      this.forwardAddr.set(t.addr);
      const [flags, source] = this.upstreamSource(id, !isV4Mapped(t.addr), true);
      return {
        target: this.forwardAddrPtr,
        port: t.port,
        scope: 0,
        flags,
        source,
        mark: this.config.mark,
        device: null,
      };
    }
    assert(o.type === "direct", "upstreamHow: a direct or forward outbound");
    const at = id * 32 + 16;
    const v6 = !isV4Mapped(this.connAddrs, at);
    const bind = v6 ? gen.bind6[action] : gen.bind4[action];
    const [flags, source] =
      bind !== null ? [TCP_CONNECT.sourceBind, ptr(bind)] : this.upstreamSource(id, v6, true);
    return {
      target: (this.connAddrsPtr + at) as Pointer,
      port: this.connPorts[id] & 0xffff,
      scope: this.connScope[id],
      flags,
      source,
      mark: o.mark ?? this.config.mark,
      device: gen.devices[action],
    };
  }

  /**
   * A forward outbound's target for connection `id`: its choice by health (after < 0),
   * or the next target that is up after `after` (-1: none). Not forward: -1.
   */
  private chooseTarget(id: number, action: number, after: number): number {
    const gen = this.connGen[id]!;
    const health = gen.forward[action];
    if (health === null) return -1;
    const now = performance.now();
    if (after < 0) return health.choose(flowHash(this.flow.words, id * 8, this.connPorts[id]), now);
    const count = health.targets.length;
    for (let k = 1; k < count; k++) {
      const t = (after + k) % count;
      if (!health.isDown(t, now)) return t;
    }
    return -1;
  }

  /**
   * The upstream socket's source: the client's own address (listener source "client",
   * when the upstream is of the client's family and `transparent` allows), else
   * upstream.bindAddress4/6 (none when unspecified).
   */
  private upstreamSource(id: number, v6: boolean, transparent: boolean): [number, Pointer] {
    const l = this.listeners[this.connListener[id]];
    if (transparent && l.source === "client" && v6 === !isV4Mapped(this.connAddrs, id * 32)) {
      return [
        TCP_CONNECT.transparent | TCP_CONNECT.sourceBind,
        (this.connAddrsPtr + id * 32) as Pointer,
      ];
    }
    if (v6) return [this.upstream6Any ? 0 : TCP_CONNECT.sourceBind, this.upstream6Ptr];
    return [this.upstream4Any ? 0 : TCP_CONNECT.sourceBind, this.upstream4Ptr];
  }

  /** Connects connection `id` upstream as `how` says and hands it to the engine. */
  private connectUpstream(id: number, clientFd: number, how: UpstreamConnect): void {
    const l = this.listeners[this.connListener[id]];
    const upstreamFd = this.connectVia(how);
    if (upstreamFd < 0) {
      const err = decodeSocketError(upstreamFd);
      if (isResourceErrno(err.errno)) {
        this.counters.upstreamNoDescriptors++;
      } else {
        this.counters.upstreamSocketFailed++;
        this.targetFailed(id);
      }
      const step = upstreamFd === -((TCP_STEP_CONNECT << 16) | err.errno) ? "connect()" : err.step;
      this.log(
        `upstream-${step}-${err.errno}`,
        `upstream for "${l.name}" to ${describeUpstream(how)}: ${step}: ` + errnoName(err.errno),
      );
      this.lib.rl_tcp_abort(clientFd);
      this.release(id);
      return;
    }
    const rc = this.lib.rl_tcp_engine_add(this.engine, id, clientFd, upstreamFd);
    if (rc < 0) {
      // The engine closed (reset) both sockets.
      this.counters.resourceFailures++;
      this.log("engine-add", `splice engine refused a connection: ${errnoName(-rc)}`);
      this.release(id);
    }
  }

  /** A forward connection's connect failed: it counts against its target. */
  private targetFailed(id: number): void {
    const k = this.connTarget[id];
    if (k >= 0) this.forwardTargetFailed(this.connGen[id]!, this.connAction[id], k);
  }

  /** A connect to target k of forward outbound `action` failed. */
  private forwardTargetFailed(gen: PolicyGeneration, action: number, k: number): void {
    const health = gen.forward[action]!;
    this.counters.forwardTargetFailures++;
    if (health.failed(k, performance.now())) {
      this.counters.forwardTargetsMarkedDown++;
      const t = health.targets[k];
      this.log(
        `forward-down-${t.address}-${t.port}`,
        `forward outbound "${gen.outbounds[action].name}": target ` +
          `${formatEndpoint(t.addr, 0, t.port)} marked down after failed connects`,
      );
    }
  }

  // ---- socks5 outbounds: CONNECT through the server, without blocking ----

  private startSocks(
    id: number,
    clientFd: number,
    action: number,
    o: Extract<OutboundConfig, { type: "socks5" }>,
  ): void {
    const gen = this.connGen[id]!;
    if (gen.handshakes[action] >= o.associationsMax) {
      this.counters.socks5Busy++;
      this.log("socks5-busy", `socks5 outbound "${o.name}": ${o.associationsMax} handshakes busy`);
      this.lib.rl_tcp_abort(clientFd);
      if (this.flows !== null) this.recordFlow(id, TcpEnd.ProxyFailed, 0, 0);
      this.release(id);
      return;
    }
    // The server is a proxy, not the destination: never the client's address as source.
    const [flags, source] = this.upstreamSource(id, !isV4Mapped(o.server.addr), false);
    this.forwardAddr.set(o.server.addr);
    const fd = this.lib.rl_tcp_connect_via(
      this.forwardAddrPtr,
      o.server.port,
      0,
      source,
      flags,
      this.config.mark,
      null,
    );
    if (fd < 0) {
      const err = decodeSocketError(fd);
      if (isResourceErrno(err.errno)) this.counters.upstreamNoDescriptors++;
      else this.counters.socks5Unreachable++;
      this.log(
        `socks5-connect-${err.errno}`,
        `socks5 outbound "${o.name}" (${o.server.address} port ${o.server.port}): ` +
          `${err.step}: ${errnoName(err.errno)}`,
      );
      this.lib.rl_tcp_abort(clientFd);
      if (this.flows !== null) this.recordFlow(id, TcpEnd.ProxyFailed, 0, 0);
      this.release(id);
      return;
    }
    const at = id * 32 + 16;
    const target = new Uint8Array(16);
    target.set(this.connAddrs.subarray(at, at + 16));
    this.handshakes[id] = new Socks5Handshake({
      command: CMD_CONNECT,
      address: { kind: "ip", addr: target, port: this.connPorts[id] & 0xffff },
      username: o.username,
      password: o.password,
    });
    this.connState[id] = ConnState.Socks;
    this.connClientFd[id] = clientFd;
    this.connUpstreamFd[id] = fd;
    this.connSocksConnecting[id] = 1;
    this.connDeadlineMs[id] = performance.now() + o.connectTimeoutMs;
    gen.handshakes[action]++;
    this.socksIds.add(id);
    const rc = this.poller.armOut(fd, this.socksTokenBase + id, true);
    if (rc < 0) this.socksFail(id, "socks5Unreachable", `epoll_ctl(ADD): ${errnoName(-rc)}`);
  }

  /** The SOCKS5 server's socket is writable (connected) or readable (its answer). */
  private onSocksReady(id: number): void {
    if (this.connState[id] !== ConnState.Socks) return; // ended since the wake-up
    const fd = this.connUpstreamFd[id];
    const hs = this.handshakes[id]!;
    if (this.connSocksConnecting[id] === 1) {
      const rc = this.lib.rl_tcp_connect_result(fd);
      if (rc < 0) {
        const reason = rc === -E.ECONNREFUSED ? "socks5Refused" : "socks5Unreachable";
        this.socksFail(id, reason, `connect: ${errnoName(-rc)}`);
        return;
      }
      this.connSocksConnecting[id] = 0;
    } else {
      for (let k = 0; k < SOCKS_RECVS_MAX && !hs.done && !hs.failed; k++) {
        const n = this.lib.rl_tcp_recv(fd, this.socksRecvPtr, SOCKS_RECV_BYTES);
        if (n === -E.EAGAIN) break;
        if (n <= 0) {
          hs.closed(); // closed (0) or reset (-errno) before the handshake ended
          break;
        }
        hs.received(this.socksRecv.slice(0, n));
      }
    }
    if (hs.failed) {
      const message = hs.error ?? "handshake failed";
      let reason: SocksFailure = "socks5ProtocolErrors";
      if (hs.replyCode > 0) reason = "socks5ReplyErrors";
      else if (message.startsWith("the server closed")) reason = "socks5Closed";
      else if (message.startsWith("authentication failed")) reason = "socks5AuthFailed";
      else if (message.startsWith("no acceptable authentication")) reason = "socks5AuthFailed";
      this.socksFail(id, reason, message);
      return;
    }
    if (hs.done) {
      this.socksConnected(id);
      return;
    }
    const out = hs.output();
    if (out.length > 0) {
      const copy = new Uint8Array(new ArrayBuffer(out.length));
      copy.set(out);
      const w = this.lib.rl_tcp_send(fd, copy, copy.length);
      if (w < 0 && w !== -E.EAGAIN) {
        this.socksFail(id, "socks5Closed", `send: ${errnoName(-w)}`);
        return;
      }
      if (w > 0) hs.written(w);
    }
    const token = this.socksTokenBase + id;
    // Bytes the socket did not take: wait until it can; else wait for the answer.
    if (hs.output().length > 0) this.poller.armOut(fd, token, false);
    else this.poller.readsOnly(fd, token); // level-triggered too: writability off again
  }

  /**
   * Sends bytes a socks5 connection (upstreamFd, clientFd: endSocks() has let go of them)
   * owes one side (toFd) before the engine takes it over, in one send. A fresh
   * connection's send buffer takes a few KiB and losing bytes is never an option: if it
   * does not take them all, both sides are aborted (counted, logged): false.
   */
  private sendWhole(
    id: number,
    upstreamFd: number,
    clientFd: number,
    toFd: number,
    bytes: Uint8Array,
    reason: string,
    side: string,
  ): boolean {
    // The array itself, not its address: the binding keeps it alive through the call.
    const w = this.lib.rl_tcp_send(toFd, bytes, bytes.length);
    if (w === bytes.length) return true;
    this.counters.resourceFailures++;
    this.log(reason, `socks5: ${bytes.length} bytes owed to ${side} did not fit`);
    this.lib.rl_tcp_abort(upstreamFd);
    this.lib.rl_tcp_abort(clientFd);
    if (this.flows !== null) this.recordFlow(id, TcpEnd.Resources, 0, 0);
    this.release(id);
    return false;
  }

  /** The server said yes: whatever it sent past its reply goes to the client first. */
  private socksConnected(id: number): void {
    const fd = this.connUpstreamFd[id];
    const clientFd = this.connClientFd[id];
    const rest = this.handshakes[id]!.rest();
    this.endSocks(id, true);
    if (rest.length > 0) {
      const copy = new Uint8Array(new ArrayBuffer(rest.length));
      copy.set(rest);
      if (!this.sendWhole(id, fd, clientFd, clientFd, copy, "socks5-rest", "the client")) return;
    }
    const early = this.connEarly[id];
    if (early !== null) {
      // A DNS connection's first query (and what followed it), read before its decision.
      this.connEarly[id] = null;
      if (!this.sendWhole(id, fd, clientFd, fd, early, "socks5-early", "the server")) return;
    }
    this.counters.socks5Connected++;
    const rc = this.lib.rl_tcp_engine_add(this.engine, id, clientFd, fd);
    if (rc < 0) {
      this.counters.resourceFailures++;
      this.log("engine-add", `splice engine refused a connection: ${errnoName(-rc)}`);
      this.release(id);
    }
  }

  /** The handshake failed: both sockets reset, counted by reason. */
  private socksFail(id: number, reason: SocksFailure, message: string): void {
    const fd = this.connUpstreamFd[id];
    const clientFd = this.connClientFd[id];
    const gen = this.connGen[id]!;
    const o = gen.outbounds[this.connAction[id]];
    this.endSocks(id, true);
    this.counters[reason]++;
    this.log(`${reason}`, `socks5 outbound "${o.name}": ${message}`);
    this.lib.rl_tcp_abort(fd);
    this.lib.rl_tcp_abort(clientFd);
    if (this.flows !== null) this.recordFlow(id, TcpEnd.ProxyFailed, 0, 0);
    this.release(id);
  }

  /** Leaves the SOCKS5 state (the sockets stay open: the caller hands or closes them). */
  private endSocks(id: number, registered: boolean): void {
    if (registered) this.poller.remove(this.connUpstreamFd[id]);
    this.socksIds.delete(id);
    this.connGen[id]!.handshakes[this.connAction[id]]--;
    this.handshakes[id] = null;
    this.connUpstreamFd[id] = -1;
    this.connClientFd[id] = -1;
    this.connState[id] = ConnState.Busy;
  }

  private expireSocks(now: number): void {
    for (const id of this.socksIds) {
      if (this.connDeadlineMs[id] > now) continue;
      const stage = this.connSocksConnecting[id] === 1 ? "connect" : "handshake";
      this.socksFail(id, "socks5Timeouts", `no ${stage} within connectTimeoutMs`);
    }
  }

  /** At shutdown: handshakes still running are reset. */
  private abortSocks(): void {
    for (const id of this.socksIds) {
      const fd = this.connUpstreamFd[id];
      const clientFd = this.connClientFd[id];
      this.endSocks(id, true);
      this.lib.rl_tcp_abort(fd);
      this.lib.rl_tcp_abort(clientFd);
      this.counters.abortedAtShutdown++;
      if (this.flows !== null) this.recordFlow(id, TcpEnd.Aborted, 0, 0);
      this.release(id);
    }
  }

  // ---- DNS over TCP: what the streams (src/dns/tcp_stream.ts) borrow from here ----

  private dnsHost(): DnsTcpHost {
    return {
      lib: this.lib,
      poller: this.poller,
      levelTriggered: this.inline,
      counters: this.counters,
      idleTimeoutMs: () => this.config.tcp.dnsIdleTimeoutMs,
      connectTimeoutMs: () => this.config.tcp.connectTimeoutMs,
      decide: (id, name) => {
        this.connNames[id] = name;
        const rule = this.decide(id, false);
        this.connRule[id] = rule;
        this.connAction[id] = this.connGen[id]!.policy.actions[rule];
        return rule;
      },
      actionOf: (id, rule) => this.connGen[id]!.policy.actions[rule],
      answerOf: (id, action) => this.connGen[id]!.answers[ACTION_DNS_ANSWER - action],
      outboundOf: (id, action) => this.connGen[id]!.outbounds[action],
      chooseTarget: (id, action, after) => this.chooseTarget(id, action, after),
      connect: (id, action, target) => this.dnsConnect(id, action, target),
      targetFailed: (id, action, target) => {
        if (target >= 0) this.forwardTargetFailed(this.connGen[id]!, action, target);
      },
      targetSucceeded: (id, action, target, connectMs) => {
        this.counters.connectMsTotal += connectMs;
        if (target >= 0) this.connGen[id]!.forward[action]!.succeeded(target);
      },
      handToSocks: (id, clientFd, action, early) => {
        this.connState[id] = ConnState.Busy;
        this.connEarly[id] = early;
        const o = this.connGen[id]!.outbounds[action];
        assert(o.type === "socks5", "handToSocks: a socks5 outbound");
        this.startSocks(id, clientFd, action, o);
      },
      release: (id) => this.release(id),
      recording: () => this.flows !== null,
      record: (id, q) => this.recordQuery(id, q),
    };
  }

  /** A non-blocking connect as `how` says: the fd, or -(step << 16 | errno). */
  private connectVia(how: UpstreamConnect): number {
    return this.lib.rl_tcp_connect_via(
      how.target,
      how.port,
      how.scope,
      how.source,
      how.flags,
      how.mark,
      how.device,
    );
  }

  /** A DNS stream's upstream socket, connecting: the fd, -1 (descriptors) or -2 (failed). */
  private dnsConnect(id: number, action: number, target: number): number {
    const how = this.upstreamHow(id, action, target);
    const fd = this.connectVia(how);
    if (fd >= 0) return fd;
    const err = decodeSocketError(fd);
    const step = fd === -((TCP_STEP_CONNECT << 16) | err.errno) ? "connect()" : err.step;
    this.log(
      `dns-upstream-${step}-${err.errno}`,
      `DNS upstream to ${describeUpstream(how)}: ${step}: ${errnoName(err.errno)}`,
    );
    if (isResourceErrno(err.errno)) {
      this.counters.upstreamNoDescriptors++;
      return -1;
    }
    this.counters.upstreamSocketFailed++;
    if (target >= 0) this.forwardTargetFailed(this.connGen[id]!, action, target);
    return -2;
  }

  /** At shutdown, past the grace period: DNS streams still open are reset. */
  private abortDns(): void {
    this.dns.abortAll(() => this.counters.abortedAtShutdown++);
  }

  // ---- names: the ClientHello, peeked before the upstream connect ----

  private startSniffing(id: number, clientFd: number): void {
    this.connState[id] = ConnState.Sniffing;
    this.connClientFd[id] = clientFd;
    this.connPeeked[id] = 0;
    this.connDeadlineMs[id] = this.connStartMs[id] + this.config.tcp.sniffTimeoutMs;
    this.sniffPrev[id] = this.sniffTail;
    this.sniffNext[id] = NIL;
    if (this.sniffTail === NIL) this.sniffHead = id;
    else this.sniffNext[this.sniffTail] = id;
    this.sniffTail = id;
    const rc = this.poller.add(clientFd, this.sniffTokenBase + id);
    if (rc < 0) {
      // The poller refused it (memory): relay it unnamed rather than fail the client.
      this.log("sniff-poll", `epoll_ctl(ADD) client: ${errnoName(-rc)}: relayed unnamed`);
      this.stopSniffing(id, false);
      this.decideNamed(id, clientFd);
    }
  }

  /** Leaves the sniffing state: off the list and the poller, SO_RCVLOWAT back to 1. */
  private stopSniffing(id: number, registered: boolean): number {
    const fd = this.connClientFd[id];
    const prev = this.sniffPrev[id];
    const next = this.sniffNext[id];
    if (prev === NIL) this.sniffHead = next;
    else this.sniffNext[prev] = next;
    if (next === NIL) this.sniffTail = prev;
    else this.sniffPrev[next] = prev;
    this.sniffPrev[id] = NIL;
    this.sniffNext[id] = NIL;
    this.connClientFd[id] = -1;
    this.connState[id] = ConnState.Busy;
    if (registered) this.poller.remove(fd);
    // The splice engine must be woken by every byte again.
    if (this.connPeeked[id] > 0) this.lib.rl_tcp_rcvlowat(fd, 1);
    return fd;
  }

  private onSniffReadable(id: number): void {
    if (this.connState[id] !== ConnState.Sniffing) return; // ended since the wake-up
    const fd = this.connClientFd[id];
    const tls = this.tls!;
    const bytesMax = this.config.tcp.sniffBytesMax;
    const n = this.lib.rl_tcp_peek(fd, this.sniffPtr!, bytesMax);
    if (n === -E.EAGAIN) {
      this.poller.rearm(fd, this.sniffTokenBase + id);
      return;
    }
    if (n < 0) {
      // The client reset or vanished before any upstream existed.
      this.stopSniffing(id, true);
      this.lib.rl_tcp_abort(fd);
      this.counters.clientResets++;
      if (this.flows !== null) this.recordFlow(id, TcpEnd.ClientReset, 0, 0);
      this.release(id);
      return;
    }
    const seen = this.connPeeked[id];
    const r = n > 0 ? tls.parse(this.sniffOffset, n) : null;
    if (r !== null && r.code === Code.short && n < bytesMax && n > seen) {
      // More of the hello to come: wake up only once there is more than n bytes.
      this.connPeeked[id] = n;
      const rc = this.lib.rl_tcp_rcvlowat(fd, n + 1);
      if (rc === 0) {
        this.poller.rearm(fd, this.sniffTokenBase + id);
        return;
      }
      this.log("sniff-lowat", `SO_RCVLOWAT: ${errnoName(-rc)}: relayed unnamed`);
    }
    if (r !== null && r.code === Code.ok) {
      this.counters.sniffedTls++;
      if (r.sniPresent) this.connNames[id] = r.sni();
    } else if (r !== null && r.code !== Code.short) {
      this.counters.sniffMalformed++;
    } else {
      // Half-closed before a whole hello, a hello past sniffBytesMax, or no SO_RCVLOWAT.
      this.counters.sniffIncomplete++;
    }
    this.decideNamed(id, this.stopSniffing(id, true));
  }

  /** At shutdown, past the grace period: connections still without an upstream are reset. */
  private abortSniffing(): void {
    while (this.sniffHead !== NIL) {
      const id = this.sniffHead;
      this.lib.rl_tcp_abort(this.stopSniffing(id, true));
      this.counters.abortedAtShutdown++;
      if (this.flows !== null) this.recordFlow(id, TcpEnd.Aborted, 0, 0);
      this.release(id);
    }
  }

  /** Connections whose ClientHello did not complete in time: relayed unnamed. */
  private expireSniffing(now: number): void {
    while (this.sniffHead !== NIL && this.connDeadlineMs[this.sniffHead] <= now) {
      const id = this.sniffHead;
      this.counters.sniffIncomplete++;
      this.decideNamed(id, this.stopSniffing(id, true));
    }
  }

  /** A local target that is the listener's own address and port (a direct connection). */
  private reachedDirectly(
    l: ListenerConfig,
    target: Uint8Array,
    targetPort: number,
    localPort: number,
  ): boolean {
    if (l.mode === "redirect") {
      // No NAT happened: conntrack's original destination is the local address itself.
      if (localPort !== targetPort) return false;
      for (let i = 0; i < 16; i++) if (target[i] !== this.meta[16 + i]) return false;
      return targetPort === l.port;
    }
    if (targetPort !== l.port) return false;
    // A wildcard listener is reached directly on every local address.
    if (l.addr.every((b, i) => b === 0 || (i >= 10 && i < 12 && b === 0xff))) return true;
    for (let i = 0; i < 16; i++) if (target[i] !== l.addr[i]) return false;
    return true;
  }

  private release(id: number): void {
    this.connState[id] = ConnState.Free;
    this.connNames[id] = null;
    this.connEarly[id] = null;
    this.connGen[id] = null;
    this.connTarget[id] = -1;
    this.connListener[id] = -1;
    this.freeIds[this.freeIdCount++] = id;
    this.active--;
  }

  // ---- engine events ----

  /** Inline: one round of the engine (its sockets' events, turns, timeouts), here. */
  private runEngine(): void {
    if (!this.inline || this.engine < 0) return;
    // A failure is recorded for checkEngine(), which reports it as fatal.
    this.lib.rl_tcp_engine_run(this.engine, ENGINE_EVENTS_PER_RUN);
  }

  /** A dead engine thread moves no byte again: report it once, as fatal. */
  private checkEngine(): void {
    if (this.engine < 0 || this.fatal) return;
    const rc = this.lib.rl_tcp_engine_failed(this.engine);
    if (rc === 0) return;
    this.fatal = true;
    const what = this.inline
      ? "TCP splice engine (inline) failed"
      : "TCP splice engine thread stopped";
    this.onFatal(`${what}: epoll_wait: ${errnoName(-rc)}`);
  }

  private drainEvents(): void {
    if (this.engine < 0) return;
    const c = this.counters;
    for (let batch = 0; batch < EVENTS_BATCHES_MAX; batch++) {
      const n = this.lib.rl_tcp_engine_events(this.engine, this.eventsPtr, EVENTS_BATCH);
      if (n <= 0) return;
      for (let i = 0; i < n; i++) {
        const w = i * TCP_EVENT_WORDS;
        const id = this.event32[w + TCP_EVENT.idWord];
        const kind = this.event16[i * TCP_EVENT_HALVES + TCP_EVENT.kindHalf];
        if (this.connState[id] === ConnState.Free || kind !== TCP_EVENT_CLOSED) {
          this.log("event-free", `engine event ${kind} for connection ${id} (bookkeeping bug)`);
          continue;
        }
        const connectMs = this.event32[w + TCP_EVENT.connectWord];
        if (connectMs !== TCP_NEVER_CONNECTED) {
          c.connected++;
          c.connectMsTotal += connectMs;
        }
        const reason = this.event16[i * TCP_EVENT_HALVES + TCP_EVENT.reasonHalf] as TcpEnd;
        if (this.connTarget[id] >= 0) {
          if (connectMs !== TCP_NEVER_CONNECTED) {
            this.connGen[id]!.forward[this.connAction[id]]!.succeeded(this.connTarget[id]);
          } else if (
            reason === TcpEnd.ConnectRefused ||
            reason === TcpEnd.ConnectTimeout ||
            reason === TcpEnd.ConnectFailed
          ) {
            this.targetFailed(id);
          }
        }
        c.bytesToTargetsClosed += this.event64[i * TCP_EVENT_DOUBLES + TCP_EVENT.bytesUpDouble];
        c.bytesToClientsClosed += this.event64[i * TCP_EVENT_DOUBLES + TCP_EVENT.bytesDownDouble];
        switch (reason) {
          case TcpEnd.Closed:
            c.closed++;
            break;
          case TcpEnd.ClientReset:
            c.clientResets++;
            break;
          case TcpEnd.UpstreamReset:
            c.upstreamResets++;
            break;
          case TcpEnd.ConnectRefused:
            c.connectRefused++;
            break;
          case TcpEnd.ConnectTimeout:
            c.connectTimeouts++;
            break;
          case TcpEnd.ConnectFailed:
            c.connectFailed++;
            this.log(
              `connect-${this.eventI32[w + TCP_EVENT.errorWord]}`,
              `upstream connect: ` + errnoName(this.eventI32[w + TCP_EVENT.errorWord]),
            );
            break;
          case TcpEnd.IdleTimeout:
            c.idleTimeouts++;
            break;
          case TcpEnd.Aborted:
            c.abortedAtShutdown++;
            break;
          case TcpEnd.Resources:
            c.resourceFailures++;
            break;
          default:
            this.log(`reason-${reason}`, `engine: unknown end reason ${reason}`);
        }
        if (this.flows !== null) {
          const up = this.event64[i * TCP_EVENT_DOUBLES + TCP_EVENT.bytesUpDouble];
          const down = this.event64[i * TCP_EVENT_DOUBLES + TCP_EVENT.bytesDownDouble];
          this.recordFlow(id, reason, up, down);
        }
        this.release(id);
      }
      if (n < EVENTS_BATCH) return;
    }
  }

  /** Connection `id`'s row in the flow log buffer; dropped and counted when full. */
  private recordFlow(id: number, reason: TcpEnd, bytesUp: number, bytesDown: number): void {
    const r = this.flowRow(id, reason, bytesUp, bytesDown, this.connStartMs[id]);
    if (r < 0) return;
    const flows = this.flows!;
    const name = this.connNames[id];
    // A name on a DNS port is a query's (a connection its first query sent to socks5).
    const dns = this.dnsPort[this.connPorts[id] & 0xffff] === 1;
    flows.parsed[r] = name === null ? 0 : dns ? TCP_PARSED_DNS : TCP_PARSED_TLS;
    flows.names[r] = name;
    const gen = this.connGen[id];
    // Undecided: the row's defaults (no rule, direct).
    if (this.connRule[id] >= 0 && gen !== null) {
      this.rowPolicy(r, gen, this.connRule[id], this.connAction[id]);
    }
  }

  /** One DNS query of connection `id` (src/dns/tcp_stream.ts): its own row. */
  private recordQuery(id: number, q: QueryRecord): void {
    const r = this.flowRow(id, q.reason, q.bytesUp, q.bytesDown, q.startMs);
    if (r < 0) return;
    const flows = this.flows!;
    const gen = this.connGen[id]!;
    flows.parsed[r] = TCP_PARSED_DNS;
    flows.names[r] = q.name;
    this.rowPolicy(r, gen, q.rule, q.action);
    flows.qtype[r] = q.qtype;
    flows.rcode[r] = q.rcode;
    if (q.resolver === RESOLVER_ORIGINAL) {
      flows.resolverAddrs.set(this.connAddrs.subarray(id * 32 + 16, id * 32 + 32), r * 16);
      flows.resolverPort[r] = this.connPorts[id] & 0xffff;
    } else if (q.resolver >= 0) {
      const t = gen.forward[q.action]!.targets[q.resolver];
      flows.resolverAddrs.set(t.addr, r * 16);
      flows.resolverPort[r] = t.port;
    }
  }

  /** A row with connection `id`'s endpoints, ending now (-1: the buffer is full, counted). */
  private flowRow(
    id: number,
    reason: TcpEnd,
    bytesUp: number,
    bytesDown: number,
    startPerfMs: number,
  ): number {
    const flows = this.flows!;
    const r = flows.reserve();
    if (r < 0) {
      this.counters.flowLogDropped++;
      return -1;
    }
    const endMs = Date.now();
    flows.endMs[r] = endMs;
    flows.startMs[r] = endMs - (performance.now() - startPerfMs);
    flows.addrs.set(this.connAddrs.subarray(id * 32, id * 32 + 32), r * FLOW_ADDR_BYTES);
    flows.ports[r] = this.connPorts[id];
    flows.listener[r] = this.connListener[id];
    flows.packetsToTarget[r] = Number.NaN;
    flows.bytesToTarget[r] = bytesUp;
    flows.packetsToClient[r] = Number.NaN;
    flows.bytesToClient[r] = bytesDown;
    flows.reason[r] = reason;
    flows.reply[r] = REPLY_NONE;
    return r;
  }

  /**
   * Row r's rule and outbound columns: `rule` and `action` of `gen`, as indexes into the
   * names of the policy now in force (flowPolicyNames: outbounds, then dnsAnswer ones).
   */
  private rowPolicy(r: number, gen: PolicyGeneration, rule: number, action: number): void {
    const flows = this.flows!;
    let column = action; // drop and reject keep their own values
    if (action <= ACTION_DNS_ANSWER) column = gen.outbounds.length + ACTION_DNS_ANSWER - action;
    if (gen !== this.gen) {
      // Decided under a policy since reloaded: the rows index the new names.
      rule = this.gen.policy.ruleNames.indexOf(gen.policy.ruleNames[rule]);
      if (rule < 0) rule = this.gen.policy.ruleNames.length; // gone: the log shows "?"
      if (action >= 0 || action <= ACTION_DNS_ANSWER) {
        const name = actionName(gen, action);
        const names = [...this.gen.outbounds, ...this.gen.answers];
        column = names.findIndex((o) => o.name === name);
        if (column < 0) column = names.length; // gone: the log shows "?"
      }
    }
    flows.rule[r] = rule;
    flows.outbound[r] = column;
  }

  /** Hands the ended connections to the flow log (from the timer, and at close). */
  private flushFlows(): void {
    if (this.flows !== null && this.flows.count > 0) this.onFlows(this.flows.take());
  }

  private log(reason: string, message: string): void {
    this.logger.log(reason, message);
  }
}

/** How connectUpstream() connects (rl_tcp_connect_via's arguments). */
interface UpstreamConnect {
  target: Pointer;
  port: number;
  scope: number;
  flags: number;
  source: Pointer;
  mark: number;
  /** The interface (SO_BINDTODEVICE), NUL-terminated, or null. */
  device: Uint8Array | null;
}

function describeUpstream(how: UpstreamConnect): string {
  const addr = new Uint8Array(16);
  addr.set(readBytes(how.target, 16));
  return formatEndpoint(addr, 0, how.port);
}

/** An action's name: its outbound's (dnsAnswer ones too), or "drop" / "reject". */
function actionName(gen: PolicyGeneration, action: number): string {
  if (action === ACTION_DROP) return "drop";
  if (action === ACTION_REJECT) return "reject";
  if (action <= ACTION_DNS_ANSWER) return gen.answers[ACTION_DNS_ANSWER - action]?.name ?? "?";
  return gen.outbounds[action]?.name ?? "?";
}
