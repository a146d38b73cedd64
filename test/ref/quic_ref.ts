// Straightforward TypeScript QUIC header parser, the test oracle for wasm/src/quic.zig
// parse_header and the baseline in bench/parsers.bench.ts. RFC 8999 5, RFC 9000 17,
// RFC 9369 3.2. Offsets in the result are relative to the packet's first byte.
import { Code, QUIC_VERSION_1, QUIC_VERSION_2, QuicType } from "../../src/classify/layout.ts";

const CID_BYTES_MAX = 20; // RFC 9000 17.2
const CID_BYTES_MAX_INVARIANT = 255; // RFC 8999 5.1
const RETRY_TAG_BYTES = 16; // RFC 9000 17.2.5
const V1_TYPES = [QuicType.initial, QuicType.zeroRtt, QuicType.handshake, QuicType.retry];
const V2_TYPES = [QuicType.retry, QuicType.initial, QuicType.zeroRtt, QuicType.handshake];

export class QuicRefHeader {
  code = 0;
  version = 0;
  long = false;
  type = 0;
  dcidOffset = 0;
  dcidBytes = 0;
  scidOffset = 0;
  scidBytes = 0;
  tokenOffset = 0;
  tokenBytes = 0;
  payloadOffset = 0;
  packetBytes = 0;
  length = 0;

  clear(): void {
    this.code = 0;
    this.version = 0;
    this.long = false;
    this.type = QuicType.oneRtt;
    this.dcidOffset = 0;
    this.dcidBytes = 0;
    this.scidOffset = 0;
    this.scidBytes = 0;
    this.tokenOffset = 0;
    this.tokenBytes = 0;
    this.payloadOffset = 0;
    this.packetBytes = 0;
    this.length = 0;
  }
}

export class QuicRefParser {
  readonly result = new QuicRefHeader();
  private varintEnd = 0;

  /** RFC 9000 16: returns the value (as a double; exact below 2^53) or -1 when short. */
  private varint(packet: Uint8Array, index: number): number {
    if (index >= packet.length) return -1;
    const first = packet[index];
    const count = 1 << (first >>> 6);
    if (packet.length - index < count) return -1;
    let value = first & 0x3f;
    for (let i = 1; i < count; i++) value = value * 256 + packet[index + i];
    this.varintEnd = index + count;
    return value;
  }

  parse(packet: Uint8Array, shortDcidBytes = 0): QuicRefHeader {
    const r = this.result;
    r.clear();
    r.code = this.parseInto(packet, shortDcidBytes, r);
    return r;
  }

  private parseInto(packet: Uint8Array, shortDcidBytes: number, r: QuicRefHeader): number {
    if (packet.length < 1) return Code.short;
    const first = packet[0];
    if ((first & 0x80) === 0) {
      if (shortDcidBytes > CID_BYTES_MAX) return Code.malformed;
      r.type = QuicType.oneRtt;
      r.dcidOffset = 1;
      r.dcidBytes = shortDcidBytes;
      if (packet.length - 1 < shortDcidBytes) return Code.short;
      r.payloadOffset = 1 + shortDcidBytes;
      r.packetBytes = packet.length;
      return Code.ok;
    }
    r.long = true;
    if (packet.length < 5) return Code.short;
    r.version = ((packet[1] << 24) | (packet[2] << 16) | (packet[3] << 8) | packet[4]) >>> 0;
    const known = r.version === QUIC_VERSION_1 || r.version === QUIC_VERSION_2;
    const cidLimit = known ? CID_BYTES_MAX : CID_BYTES_MAX_INVARIANT;
    let index = 5;
    if (index >= packet.length) return Code.short;
    r.dcidBytes = packet[index++];
    if (r.dcidBytes > cidLimit) return Code.malformed;
    r.dcidOffset = index;
    if (packet.length - index < r.dcidBytes) return Code.short;
    index += r.dcidBytes;
    if (index >= packet.length) return Code.short;
    r.scidBytes = packet[index++];
    if (r.scidBytes > cidLimit) return Code.malformed;
    r.scidOffset = index;
    if (packet.length - index < r.scidBytes) return Code.short;
    index += r.scidBytes;
    if (r.version === 0) {
      r.type = QuicType.versionNegotiation; // RFC 8999 6
      r.payloadOffset = index;
      r.packetBytes = packet.length;
      return (packet.length - index) % 4 === 0 ? Code.ok : Code.malformed;
    }
    if (!known) return Code.unsupported;
    if ((first & 0x40) === 0) return Code.malformed; // RFC 9000 17.2 Fixed Bit
    const bits = (first >>> 4) & 0x03;
    r.type = r.version === QUIC_VERSION_2 ? V2_TYPES[bits] : V1_TYPES[bits];
    if (r.type === QuicType.retry) {
      if (packet.length - index < RETRY_TAG_BYTES) return Code.short;
      r.tokenOffset = index;
      r.tokenBytes = packet.length - index - RETRY_TAG_BYTES;
      r.payloadOffset = packet.length - RETRY_TAG_BYTES;
      r.packetBytes = packet.length;
      return Code.ok;
    }
    if (r.type === QuicType.initial) {
      const tokenBytes = this.varint(packet, index);
      if (tokenBytes < 0) return Code.short;
      index = this.varintEnd;
      if (tokenBytes > packet.length - index) return Code.short;
      r.tokenOffset = index;
      r.tokenBytes = tokenBytes;
      index += tokenBytes;
    }
    const length = this.varint(packet, index);
    if (length < 0) return Code.short;
    index = this.varintEnd;
    r.length = Math.min(length, 0xffffffff);
    r.payloadOffset = index;
    if (length > packet.length - index) return Code.short;
    r.packetBytes = index + length;
    return Code.ok;
  }
}
