// TCP records and constants shared with ffi/relay.h (the rl_tcp_* functions).

/** struct rl_tcp_event (40 bytes): one per connection, when it ends. */
export const TCP_EVENT_BYTES = 40;
export const TCP_EVENT_WORDS = TCP_EVENT_BYTES / 4;
export const TCP_EVENT_HALVES = TCP_EVENT_BYTES / 2;
export const TCP_EVENT_DOUBLES = TCP_EVENT_BYTES / 8;
export const TCP_EVENT = {
  idWord: 0, // u32 index of id
  kindHalf: 2, // u16 index of kind (byte 4)
  reasonHalf: 3, // u16 index of reason (byte 6)
  errorWord: 2, // i32 index of error (byte 8)
  durationWord: 3, // u32 index of duration_ms (byte 12)
  bytesUpDouble: 2, // f64 index of bytes_up (byte 16; the 40-byte stride is 5 doubles)
  bytesDownDouble: 3, // f64 index of bytes_down (byte 24)
  connectWord: 8, // u32 index of connect_ms (byte 32)
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
}

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
  count: 6,
} as const;
