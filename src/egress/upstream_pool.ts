// The pool of upstream sockets: where a flow's datagrams leave for the original
// destination (beside the reply pool, which sends the replies back).
//
// RFC 4787 mapping: "endpoint-independent" keeps one socket per client ip:port for every
// destination (one descriptor per client endpoint however many destinations it talks
// to, so 100k flows need not each hold a descriptor); "address-and-port-dependent" one
// per session. Filtering is address-and-port-dependent either way: the receive core
// relays a reply only from a destination the client sent to.
//
// Each socket is bound to upstream.bindAddress4/6 port 0, marked SO_MARK = config.mark
// (the rules exempt its replies from interception) and asks for ICMP errors
// (IP_RECVERR). Its local port is recorded: a datagram that reaches a listener from a
// local address and one of these ports is the relay's own traffic come back.
//
// Client source (a listener with source "client", docs/udp_client_source.md): the socket
// is bound to the client's own ip:port instead (IP_TRANSPARENT, SO_REUSEADDR, same mark),
// so the server sees the client. One such socket per client endpoint, shared by all its
// destinations whatever udp.mapping says: two unconnected sockets on one ip:port would
// leave the kernel to pick which gets a reply, so the endpoint may hold one only. The
// 4-tuple is the client's own, unique as the client made it. Its port is not recorded
// as ours: the address is not local, so nothing local sends from it.
//
// Set-up is all or nothing: socket, port, poller registration, index entry; a failure
// at any step undoes the earlier ones, and the caller counts the drop by the reason
// this pool reports (lastFailure).
import type { Config } from "../config/load.ts";
import { HashIndex } from "../flow/hash_index.ts";
import { assert, assertionFailed } from "../sys/assert.ts";
import {
  decodeSocketError,
  describeSocketError,
  errnoName,
  isResourceErrno,
} from "../sys/errno.ts";
import { SOCK } from "../sys/layout.ts";
import { type Pointer, ptr, type RelayLib } from "../sys/ffi.ts";

/**
 * Key: client address (4 words), client port, session slot (or ALL_DESTINATIONS), and
 * the outbound (its runtime index, src/egress/outbounds.ts): flows of one client through
 * two outbounds (say, two bind addresses or marks) never share a socket.
 */
const KEY_WORDS = 7;
/** Session word of a client-source socket (bound to the client endpoint itself). */
const CLIENT_ENDPOINT = 0xfffffffe;
/** Session word of an endpoint-independent socket: one socket for every destination. */
const ALL_DESTINATIONS = 0xffffffff;

/**
 * A local port whose upstream socket closed less than this long ago is not taken again
 * at once (the kernel's bind to port 0 may hand it straight back). A reply still on its
 * way to the session that ended would reach the new socket and, coming from the same
 * destination, be relayed to the new flow's client: another flow's datagram. (Seen when a
 * flood evicts sessions whose echoes are in flight.) Longer than a reply is in flight.
 */
const PORT_QUARANTINE_MS = 2000;
/**
 * Sockets opened at most for one acquire while the kernel hands out quarantined ports
 * (the earlier ones are held open meanwhile, so it cannot return them again); past it,
 * the last one is taken anyway: with ports this short, reuse is the lesser harm.
 */
const PORT_TRIES_MAX = 4;

export type UpstreamFailure = "descriptors" | "socket" | "register";

/** How an outbound's sockets are made (a direct outbound's options; null: the defaults). */
export interface UpstreamOptions {
  /** The outbound's runtime index (part of the key). */
  outbound: number;
  /** One socket per session even when endpoint-independent (forward: replies from one
   * resolver for two original destinations would be ambiguous on a shared socket). */
  perSession: boolean;
  bindAddr4: Uint8Array | null;
  bindAddr6: Uint8Array | null;
  /** SO_MARK; null: config.mark. */
  mark: number | null;
  /** SO_BINDTODEVICE; null: none. */
  interface: string | null;
  /**
   * Bound to the client's own ip:port (a listener with source "client"): one socket per
   * client endpoint, whatever perSession and udp.mapping say.
   */
  clientSource: boolean;
}

export class UpstreamPool {
  private readonly index: HashIndex;
  private readonly fds: Int32Array;
  private readonly tokens: Int32Array;
  private readonly refs: Int32Array;
  private readonly ports: Uint16Array;
  /** IPv6 scope id of a link-local client (replies go back on that link). */
  private readonly clientScopes: Uint32Array;
  /** Per socket: the one session it carries when made per session, else -1. */
  private readonly sessions: Int32Array;
  /** 1: bound to the client's own ip:port (client source). */
  private readonly clientSourced: Uint8Array;
  /** The client's address for a client-source bind, written as the key's words. */
  private readonly bindAddr = new Uint8Array(new ArrayBuffer(16));
  private readonly bindWords = new Uint32Array(this.bindAddr.buffer);
  /** Per local port: sockets of ours bound to it (v4 and v6 may share a number). */
  private readonly portRefs = new Uint16Array(65536);
  private readonly endpointIndependent: boolean;
  /** 16 bytes for rl_local_port's address (own ArrayBuffer: see SendQueue). */
  private readonly scratchAddr = new Uint8Array(new ArrayBuffer(16));
  private readonly scratchAddrPtr: Pointer = ptr(this.scratchAddr);
  /** Per local port: when an upstream socket of ours on it last closed (clock ms). */
  private readonly portClosedAtMs = new Float64Array(65536).fill(Number.NEGATIVE_INFINITY);
  /** Sockets held open while a fresh port is sought (PORT_TRIES_MAX), and their ports. */
  private readonly heldFds = new Int32Array(PORT_TRIES_MAX);
  private readonly heldPorts = new Uint16Array(PORT_TRIES_MAX);
  /** The local port of the socket openSocket() made last. */
  private openedPort = 0;
  /** Sockets closed unused because the kernel gave them a quarantined port. */
  portsQuarantined = 0;
  lastFailure: UpstreamFailure | null = null;
  lastMessage = "";

  constructor(
    private readonly lib: RelayLib,
    private readonly config: Config,
    /** Sessions at most: each holds one socket at most. */
    capacity: number,
    /** Registers a socket with the poller: its token, or -1 (nothing taken; errno). */
    private readonly register: (fd: number, upstream: number) => number,
    private readonly unregister: (token: number) => void,
    private readonly registerErrno: () => number,
    /** The clock of the port quarantine, in ms (tests pass their own). */
    private readonly nowMs: () => number = () => performance.now(),
  ) {
    this.index = new HashIndex(KEY_WORDS, capacity);
    this.fds = new Int32Array(capacity).fill(-1);
    this.tokens = new Int32Array(capacity).fill(-1);
    this.refs = new Int32Array(capacity);
    this.ports = new Uint16Array(capacity);
    this.clientScopes = new Uint32Array(capacity);
    this.sessions = new Int32Array(capacity).fill(-1);
    this.clientSourced = new Uint8Array(capacity);
    this.endpointIndependent = config.udp.mapping === "endpoint-independent";
  }

  get count(): number {
    return this.index.count;
  }

  /**
   * The socket for a new session of client (a0..a3, clientPort): shared with the
   * client's other sessions when endpoint-independent, else its own. Returns the
   * upstream index, or -1 (lastFailure, lastMessage say why; nothing is held).
   */
  acquire(
    session: number,
    a0: number,
    a1: number,
    a2: number,
    a3: number,
    clientPort: number,
    clientScope: number,
    ipv6: boolean,
    options: UpstreamOptions,
  ): number {
    const clientSource = options.clientSource;
    const perSession = !clientSource && (options.perSession || !this.endpointIndependent);
    const owner = clientSource ? CLIENT_ENDPOINT : perSession ? session : ALL_DESTINATIONS;
    this.setKey(a0, a1, a2, a3, clientPort, owner, options.outbound);
    let upstream = this.index.find();
    if (upstream >= 0) {
      this.refs[upstream]++;
      return upstream;
    }
    let flags = SOCK.recvErr | (ipv6 ? SOCK.ipv6 | SOCK.v6Only : 0);
    let bind = ipv6
      ? (options.bindAddr6 ?? this.config.upstreamAddr6)
      : (options.bindAddr4 ?? this.config.upstreamAddr4);
    let bindPort = 0;
    if (clientSource) {
      // From the client's own ip:port (IP_TRANSPARENT: a foreign address).
      const words = this.bindWords;
      words[0] = a0;
      words[1] = a1;
      words[2] = a2;
      words[3] = a3;
      bind = this.bindAddr;
      bindPort = clientPort;
      flags |= SOCK.transparent | SOCK.reuseAddr;
    }
    let fd = this.openSocket(flags, bind, bindPort, options, ipv6);
    if (fd < 0) return -1;
    let port = this.openedPort;
    if (!clientSource && this.quarantined(port)) {
      // Bounded: PORT_TRIES_MAX sockets; the ones refused stay open until a port is found.
      let held = 0;
      while (held < PORT_TRIES_MAX && this.quarantined(port)) {
        this.heldFds[held] = fd;
        this.heldPorts[held++] = port;
        fd = this.openSocket(flags, bind, bindPort, options, ipv6);
        if (fd < 0) break;
        port = this.openedPort;
      }
      if (fd < 0) {
        // No other socket to be had (descriptors, say): the last one will do.
        held--;
        fd = this.heldFds[held];
        port = this.heldPorts[held];
      }
      for (let k = 0; k < held; k++) this.lib.rl_close(this.heldFds[k]);
      this.portsQuarantined += held;
      this.lastFailure = null;
    }
    upstream = this.index.insert();
    assert(upstream >= 0, "upstream index full: it holds at most one socket per session");
    const token = this.register(fd, upstream);
    if (token < 0) {
      this.index.remove(upstream);
      this.lib.rl_close(fd);
      return this.fail(
        "register",
        `upstream socket: epoll_ctl(ADD): ${errnoName(this.registerErrno())}`,
      );
    }
    this.fds[upstream] = fd;
    this.tokens[upstream] = token;
    this.refs[upstream] = 1;
    this.ports[upstream] = port;
    this.clientScopes[upstream] = clientScope;
    this.sessions[upstream] = perSession ? session : -1;
    this.clientSourced[upstream] = clientSource ? 1 : 0;
    // A client-source socket's port is the client's, not ours (nothing local sends from it).
    if (!clientSource) this.portRefs[port]++;
    return upstream;
  }

  /**
   * A socket bound as acquire() asks, with its options: its fd (its local port in
   * openedPort), or -1 with lastFailure and lastMessage set (nothing held).
   */
  private openSocket(
    flags: number,
    bind: Uint8Array,
    bindPort: number,
    options: UpstreamOptions,
    ipv6: boolean,
  ): number {
    const udp = this.config.udp;
    const fd = this.lib.rl_socket(
      flags,
      bind,
      bindPort,
      options.mark ?? this.config.mark,
      udp.socketReceiveBytes,
      udp.socketSendBytes,
    );
    if (fd < 0) {
      const err = decodeSocketError(fd);
      return this.fail(
        isResourceErrno(err.errno) ? "descriptors" : "socket",
        `${options.clientSource ? "client-source upstream socket" : "upstream socket"}: ` +
          describeSocketError(err, ipv6),
      );
    }
    if (options.interface !== null) {
      const name = this.deviceName(options.interface);
      const rc = this.lib.rl_bind_device(fd, name, name.length);
      if (rc < 0) {
        this.lib.rl_close(fd);
        return this.fail(
          "socket",
          `upstream socket: SO_BINDTODEVICE ${options.interface}: ${errnoName(-rc)}`,
        );
      }
    }
    const port = this.lib.rl_local_port(fd, this.scratchAddrPtr);
    if (port <= 0) {
      this.lib.rl_close(fd);
      return this.fail("socket", `upstream socket: getsockname: ${errnoName(-port)}`);
    }
    this.openedPort = port;
    return fd;
  }

  /** Whether an upstream socket of ours on `port` closed within PORT_QUARANTINE_MS. */
  private quarantined(port: number): boolean {
    return this.nowMs() - this.portClosedAtMs[port] < PORT_QUARANTINE_MS;
  }

  /** The session a per-session socket carries, or -1 for a shared one. */
  sessionOf(upstream: number): number {
    return this.sessions[upstream];
  }

  /** The outbound (runtime index) whose socket this is. */
  outboundOf(upstream: number): number {
    return this.index.keys[upstream * KEY_WORDS + 6];
  }

  /** An interface name as bytes for rl_bind_device (cached: one per outbound). */
  private deviceName(name: string): Uint8Array {
    let bytes = this.deviceNames.get(name);
    if (!bytes) {
      bytes = new Uint8Array(new ArrayBuffer(name.length));
      bytes.set(new TextEncoder().encode(name));
      this.deviceNames.set(name, bytes);
    }
    return bytes;
  }
  private readonly deviceNames = new Map<string, Uint8Array>();

  /** One session fewer on the socket; the last one closes it. */
  release(upstream: number): void {
    if (this.refs[upstream] <= 0) assertionFailed(`upstream ${upstream} released with no refs`);
    if (--this.refs[upstream] > 0) return;
    this.unregister(this.tokens[upstream]);
    this.lib.rl_close(this.fds[upstream]);
    if (this.clientSourced[upstream] === 0) {
      const port = this.ports[upstream];
      this.portRefs[port]--;
      this.portClosedAtMs[port] = this.nowMs(); // replies may still be on their way
    }
    this.fds[upstream] = -1;
    this.tokens[upstream] = -1;
    this.index.remove(upstream);
  }

  /** Whether `upstream` carries one session only (so it may follow that session). */
  soleSession(upstream: number): boolean {
    return this.refs[upstream] === 1;
  }

  /**
   * Moves a socket that carries one session to a new client endpoint (the client's NAT
   * rebound it): replies go there from now on, and the server sees nothing change.
   * False, with nothing changed, when the new endpoint already has a socket of its own.
   */
  rebind(
    upstream: number,
    a0: number,
    a1: number,
    a2: number,
    a3: number,
    clientPort: number,
    clientScope: number,
  ): boolean {
    assert(this.refs[upstream] === 1, "rebind of a shared upstream socket");
    // Bound to the old client endpoint itself: it cannot serve the new one.
    if (this.clientSourced[upstream] === 1) return false;
    const keys = this.index.keys;
    const base = upstream * KEY_WORDS;
    this.setKey(a0, a1, a2, a3, clientPort, keys[base + 5], keys[base + 6]);
    if (this.index.find() >= 0) return false;
    this.index.rekey(upstream);
    this.clientScopes[upstream] = clientScope;
    return true;
  }

  /** The index key: client address words and port, whose socket, and the outbound. */
  private setKey(
    a0: number,
    a1: number,
    a2: number,
    a3: number,
    port: number,
    owner: number,
    outbound: number,
  ): void {
    const key = this.index.scratch;
    key[0] = a0;
    key[1] = a1;
    key[2] = a2;
    key[3] = a3;
    key[4] = port;
    key[5] = owner;
    key[6] = outbound;
  }

  fd(upstream: number): number {
    return this.fds[upstream];
  }

  /** Word w (0..3) of the client address the socket serves. */
  clientWord(upstream: number, w: number): number {
    return this.index.keys[upstream * KEY_WORDS + w];
  }

  clientPort(upstream: number): number {
    return this.index.keys[upstream * KEY_WORDS + 4];
  }

  clientScope(upstream: number): number {
    return this.clientScopes[upstream];
  }

  /** Whether one of our upstream sockets is bound to this local port. */
  holdsPort(port: number): boolean {
    return this.portRefs[port] > 0;
  }

  private fail(reason: UpstreamFailure, message: string): number {
    this.lastFailure = reason;
    this.lastMessage = message;
    return -1;
  }
}
