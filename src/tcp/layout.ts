// TCP records and constants shared with ffi/relay.h (the rl_tcp_* functions). The
// event record itself is defined with the others in src/sys/layout.ts (checked field by
// field at start-up); the indices below derive from it.
import { fieldIndex, TCP_EVENT_RECORD } from "../sys/layout.ts";

const f = TCP_EVENT_RECORD.fields;

/** struct rl_tcp_event (40 bytes): one per connection, when it ends. */
export const TCP_EVENT_BYTES = TCP_EVENT_RECORD.bytes;
export const TCP_EVENT_WORDS = TCP_EVENT_BYTES / 4;
export const TCP_EVENT_HALVES = TCP_EVENT_BYTES / 2;
export const TCP_EVENT_DOUBLES = TCP_EVENT_BYTES / 8; // the 40-byte stride is 5 doubles
export const TCP_EVENT = {
  idWord: fieldIndex(f.id, 4),
  kindHalf: fieldIndex(f.kind, 2),
  reasonHalf: fieldIndex(f.reason, 2),
  errorWord: fieldIndex(f.error, 4), // i32
  durationWord: fieldIndex(f.duration_ms, 4),
  bytesUpDouble: fieldIndex(f.bytes_up, 8),
  bytesDownDouble: fieldIndex(f.bytes_down, 8),
  connectWord: fieldIndex(f.connect_ms, 4),
} as const;

export const TCP_EVENT_CLOSED = 2;
/** connect_ms of a connection whose upstream never connected. */
export const TCP_NEVER_CONNECTED = 0xffffffff;

/** RL_TCP_END_*: why a connection ended (the engine sends RST where noted). */
export const enum TcpEnd {
  /** Both directions ended with FIN, every byte delivered. */
  Closed = 1,
  /** The client reset or vanished (read or write error); RST to the upstream. */
  ClientReset = 2,
  /** The upstream reset or vanished; RST to the client. */
  UpstreamReset = 3,
  /** The upstream answered the SYN with RST; RST to the client. */
  ConnectRefused = 4,
  /** No answer within tcp.connectTimeoutMs; RST to the client. */
  ConnectTimeout = 5,
  /** Another connect error (host/net unreachable...); RST to the client. */
  ConnectFailed = 6,
  /** No byte either way for tcp.idleTimeoutMs; RST to both. */
  IdleTimeout = 7,
  /** Reset at the end of the shutdown grace period. */
  Aborted = 8,
  /** No pipe could be made (descriptors or memory); RST to both. */
  Resources = 9,
  // Ends decided in TypeScript before any splice (never reported by the engine):
  /** A policy rule's "drop": the client's connection closed, nothing sent upstream. */
  Dropped = 10,
  /** A policy rule's "reject": the client reset. */
  Rejected = 11,
  /** A SOCKS5 outbound's server failed (refused, closed, garbage, REP, timeout): reset. */
  ProxyFailed = 12,
  // DNS over TCP read per message (src/dns/tcp_stream.ts): one record per query.
  /** Its answer came from the upstream (a forward target or the original destination). */
  DnsAnswered = 13,
  /** Answered in place by a dnsAnswer outbound. */
  DnsAnsweredLocally = 14,
  /** The connection ended before its answer (closed, reset, idle, upstream lost). */
  DnsUnanswered = 15,
}

/** TcpEnd names by value (the flow log's end reasons; 0 is not a reason). */
/** A TCP flow record's `parsed` code: its first bytes were a TLS ClientHello. */
export const TCP_PARSED_TLS = 1;
/** A TCP flow record's `parsed` code: one DNS query of a connection on tcp.dnsPorts. */
export const TCP_PARSED_DNS = 2;

export const TCP_END_NAMES = [
  "unknown",
  "closed",
  "client-reset",
  "upstream-reset",
  "connect-refused",
  "connect-timeout",
  "connect-failed",
  "idle-timeout",
  "aborted",
  "resources",
  "dropped",
  "rejected",
  "proxy-failed",
  "dns-answered",
  "dns-local",
  "dns-unanswered",
] as const;

/** rl_tcp_connect() flags. */
export const TCP_CONNECT = {
  sourceBind: 0x0001,
  transparent: 0x0002,
} as const;

/** rl_tcp_connect() failure step of connect() itself (the others are SOCKET_STEPS). */
export const TCP_STEP_CONNECT = 13;

/** rl_tcp_engine_stats() output slots. */
export const TCP_STATS = {
  bytesUp: 0,
  bytesDown: 1,
  open: 2,
  pipesInUse: 3,
  pipesPooled: 4,
  eventsLost: 5,
  spliceSwitches: 6,
  copyOnly: 7,
  copyBuffersInUse: 8,
  copyPoolEmpty: 9,
  count: 10,
} as const;

/**
 * Copy buffer per direction of tcp.spliceMode "auto" (rl_tcp_engine_open's copy_bytes):
 * a read that fills it proves a direction bulk, which then splices. 16 KiB holds any
 * request or response of a short exchange in one read (a TLS record is at most 16 KiB
 * plus its header, so a full record stream switches), and is HAProxy's default
 * tune.bufsize.
 */
export const TCP_COPY_BYTES = 16 << 10;
