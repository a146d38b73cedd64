// Numbers shared with wasm/src/layout.zig: result codes, parser kinds, and the index of each
// field in a result record. test/unit/classify/layout.test.ts checks them against the module.

/** What a parser says about its input (wasm/src/layout.zig Code). */
export const Code = {
  ok: 0,
  /** A prefix of something that may parse once more bytes arrive. */
  short: 1,
  /** No suffix can make it valid. */
  malformed: 2,
  unsupported: 3,
} as const;

/** Parser selector in a batch descriptor, and the kind written into each record. */
export const Kind = {
  none: 0,
  dns: 1,
  quicHeader: 2,
  quicInitial: 3,
  tls: 4,
  tlsStream: 5,
} as const;

/** Packet types normalized to QUIC v1 numbering (RFC 9000 17.2; v2 remapped, RFC 9369 3.2). */
export const QuicType = {
  initial: 0,
  zeroRtt: 1,
  handshake: 2,
  retry: 3,
  versionNegotiation: 4,
  oneRtt: 5,
} as const;

export const QUIC_VERSION_1 = 0x00000001;
export const QUIC_VERSION_2 = 0x6b3343cf;

/** A record is 32 u32 words: 6 common words, then 26 fields (wasm/src/layout.zig Result). */
export const RESULT_WORDS = 32;
export const RESULT_WORDS_SHIFT = 5;
export const WORD_CODE = 0;
export const WORD_KIND = 1;
export const WORD_NAME_OFFSET = 2;
export const WORD_NAME_BYTES = 3;
export const WORD_ALPN_OFFSET = 4;
export const WORD_ALPN_BYTES = 5;
export const WORD_FIELD = 6;

/** Field indices (add WORD_FIELD for the word index). */
export const Field = {
  dnsId: 0,
  dnsFlags: 1,
  dnsQdcount: 2,
  dnsAncount: 3,
  dnsNscount: 4,
  dnsArcount: 5,
  dnsQtype: 6,
  dnsQclass: 7,
  dnsEdnsPresent: 8,
  dnsEdnsUdpPayloadBytes: 9,
  dnsEdnsVersion: 10,
  dnsEdnsDo: 11,
  dnsRcode: 12,

  quicVersion: 0,
  quicLong: 1,
  quicType: 2,
  quicDcidOffset: 3,
  quicDcidBytes: 4,
  quicScidOffset: 5,
  quicScidBytes: 6,
  quicTokenOffset: 7,
  quicTokenBytes: 8,
  quicPayloadOffset: 9,
  quicPacketBytes: 10,
  quicLength: 11,

  helloBytes: 12,
  helloLegacyVersion: 13,
  helloCipherSuiteCount: 14,
  helloExtensionCount: 15,
  helloFlags: 16,
  helloAlpnCount: 17,

  initialCryptoContiguousBytes: 18,
  initialContextIndex: 19,
  initialPacketNumber: 20,
  initialPacketsCount: 21,
  initialHeaderBytes: 22,
  initialPlainBytes: 23,

  streamBufferedBytes: 18,
  streamRecordCount: 19,
  streamConsumedBytes: 20,
} as const;

export const HELLO_FLAG_SNI = 1;
export const HELLO_FLAG_ALPN = 2;
export const HELLO_FLAG_ALPN_TRUNCATED = 4;

/** Descriptor: offset, bytes, kind, argument (u32 each; wasm/src/main.zig Descriptor). */
export const DESCRIPTOR_WORDS = 4;
/** Text slot per record: name[256] then alpn[256] (wasm/src/layout.zig Text). */
export const NAME_BYTES_MAX = 256;
export const ALPN_BYTES_MAX = 256;
