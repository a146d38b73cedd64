// QUIC results from the WASM parser (wasm/src/quic.zig): header fields for any packet, and
// for client Initials the decrypted ClientHello's SNI and ALPN. Results are reused objects.
import { Field, RESULT_WORDS_SHIFT, WORD_CODE, WORD_FIELD } from "./layout.ts";
import { HelloFields } from "./hello.ts";
import type { Parsers } from "./wasm.ts";

export class QuicHeaderResult {
  code = 0;
  version = 0;
  long = false;
  /** QuicType (v1 numbering). */
  type = 0;
  /** Offsets are absolute linear-memory offsets. */
  dcidOffset = 0;
  dcidBytes = 0;
  scidOffset = 0;
  scidBytes = 0;
  tokenOffset = 0;
  tokenBytes = 0;
  payloadOffset = 0;
  /** Bytes of this packet in the datagram (coalesced packets follow, RFC 9000 12.2). */
  packetBytes = 0;
  /** The long header's Length field. */
  length = 0;

  readHeader(w: Uint32Array, base: number): void {
    const f = base + WORD_FIELD;
    this.code = w[base + WORD_CODE];
    this.version = w[f + Field.quicVersion];
    this.long = w[f + Field.quicLong] !== 0;
    this.type = w[f + Field.quicType];
    this.dcidOffset = w[f + Field.quicDcidOffset];
    this.dcidBytes = w[f + Field.quicDcidBytes];
    this.scidOffset = w[f + Field.quicScidOffset];
    this.scidBytes = w[f + Field.quicScidBytes];
    this.tokenOffset = w[f + Field.quicTokenOffset];
    this.tokenBytes = w[f + Field.quicTokenBytes];
    this.payloadOffset = w[f + Field.quicPayloadOffset];
    this.packetBytes = w[f + Field.quicPacketBytes];
    this.length = w[f + Field.quicLength];
  }
}

export class QuicInitialResult extends HelloFields {
  readonly header = new QuicHeaderResult();
  code = 0;
  cryptoContiguousBytes = 0;
  contextIndex = 0;
  packetNumber = 0;
  packetsCount = 0;

  read(w: Uint32Array, base: number): void {
    this.header.readHeader(w, base);
    this.code = this.header.code;
    this.readHello(w, base);
    const f = base + WORD_FIELD;
    this.cryptoContiguousBytes = w[f + Field.initialCryptoContiguousBytes];
    this.contextIndex = w[f + Field.initialContextIndex];
    this.packetNumber = w[f + Field.initialPacketNumber];
    this.packetsCount = w[f + Field.initialPacketsCount];
  }
}

export class QuicParser {
  readonly header = new QuicHeaderResult();
  readonly initial: QuicInitialResult;

  constructor(private readonly parsers: Parsers) {
    this.initial = new QuicInitialResult(parsers);
  }

  /** Header only. Short headers carry no DCID length: pass the one your connection uses. */
  parseHeader(offset: number, bytes: number, shortDcidBytes = 0): QuicHeaderResult {
    this.parsers.exports.quic_header_parse(offset, bytes, shortDcidBytes);
    return this.readHeader(this.parsers.singleIndex);
  }

  /** A client datagram: decrypts its Initial packets and reassembles CRYPTO frames.
   * ok: ClientHello complete; short: more Initials (or bytes) needed. */
  parseInitial(offset: number, bytes: number): QuicInitialResult {
    this.parsers.exports.quic_initial_parse(offset, bytes);
    return this.readInitial(this.parsers.singleIndex);
  }

  readHeader(index: number): QuicHeaderResult {
    this.header.readHeader(this.parsers.resultWords, index << RESULT_WORDS_SHIFT);
    return this.header;
  }

  readInitial(index: number): QuicInitialResult {
    this.initial.read(this.parsers.resultWords, index << RESULT_WORDS_SHIFT);
    return this.initial;
  }

  /** Forgets every reassembly context (tests; a relay lets LRU reuse them). */
  resetContexts(): void {
    this.parsers.exports.quic_contexts_reset();
  }
}
