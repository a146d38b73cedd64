// Record layouts shared with ffi/relay.h. The C side asserts the same numbers with
// _Static_assert, and loadFfi() checks them through rl_layout_check() at start-up.

/** struct rl_meta: one received datagram (64 bytes). */
export const META_BYTES = 64;
export const META_WORDS = META_BYTES / 4;
export const META = {
  sourceAddrWord: 0, // u32 index of source_addr[16]
  targetAddrWord: 4, // u32 index of target_addr[16]
  sourcePortHalf: 16, // u16 index of source_port
  targetPortHalf: 17, // u16 index of target_port
  flagsHalf: 18, // u16 index of flags
  lengthWord: 10, // u32 index of length (byte 40)
  lengthWireWord: 11, // u32 index of length_wire (byte 44)
  sourceScopeWord: 12,
  targetScopeWord: 13,
  queueDropsWord: 14, // byte 56: SO_RXQ_OVFL's counter when META_FLAG_HAS_DROPS
} as const;
export const META_LENGTH_OFFSET = META.lengthWord * 4;

export const META_FLAG_TRUNCATED = 0x0001;
export const META_FLAG_CTRUNCATED = 0x0002;
export const META_FLAG_HAS_ORIGDST = 0x0004;
export const META_FLAG_HAS_DROPS = 0x0008;

/** struct rl_send: one datagram to send (64 bytes). */
export const SEND_BYTES = 64;
export const SEND_WORDS = SEND_BYTES / 4;
export const SEND = {
  targetAddrWord: 0,
  sourceAddrWord: 4,
  targetPortHalf: 16,
  flagsHalf: 17,
  fdWord: 9, // byte 36
  offsetWord: 10, // byte 40
  lengthWord: 11, // byte 44
  resultWord: 12, // byte 48
  targetScopeWord: 13, // byte 52
} as const;
export const SEND_RESULT_OFFSET = SEND.resultWord * 4;
export const SEND_FLAG_SOURCE = 0x0001;

/** rl_socket() flags. */
export const SOCK = {
  transparent: 0x0001,
  recvOrigDst: 0x0002,
  reuseAddr: 0x0004,
  reusePort: 0x0008,
  freeBind: 0x0010,
  recvErr: 0x0020,
  ipv6: 0x0040,
  v6Only: 0x0080,
  stream: 0x0100,
  rxqOverflow: 0x0200,
} as const;

/** Largest batch per call: RL_BATCH_COUNT_MAX in relay.h. */
export const BATCH_COUNT_MAX = 256;
export const ABI_VERSION = 2;
