// Straightforward TypeScript DNS parser, the test oracle for wasm/src/dns.zig (same rules,
// same results) and the baseline in bench/parsers.bench.ts. RFC 1035 4.1, RFC 6891 6.1.
// Allocation-free per call: the result object and the name buffer are reused.
import { Code } from "../../src/classify/layout.ts";

const HEADER_BYTES = 12; // RFC 1035 4.1.1
const NAME_WIRE_BYTES_MAX = 255; // RFC 1035 2.3.4
const POINTER_COUNT_MAX = 127; // a 255-octet name has at most 127 labels
const TYPE_OPT = 41; // RFC 6891 6.1.2
const CHAR_CODE_A = 65;
const CHAR_CODE_Z = 90;
const CHAR_CODE_DOT = 46;
const CASE_OFFSET = 32;

export class DnsRefResult {
  code = 0;
  id = 0;
  flags = 0;
  qr = 0;
  opcode = 0;
  rcode = 0;
  qdcount = 0;
  ancount = 0;
  nscount = 0;
  arcount = 0;
  qtype = 0;
  qclass = 0;
  ednsPresent = false;
  ednsUdpPayloadBytes = 0;
  ednsVersion = 0;
  ednsDo = false;
  readonly nameBuffer = new Uint8Array(256);
  nameBytes = 0;

  name(): string {
    let out = "";
    for (let i = 0; i < this.nameBytes; i++) out += String.fromCharCode(this.nameBuffer[i]);
    return out;
  }

  clear(): void {
    this.code = 0;
    this.id = 0;
    this.flags = 0;
    this.qr = 0;
    this.opcode = 0;
    this.rcode = 0;
    this.qdcount = 0;
    this.ancount = 0;
    this.nscount = 0;
    this.arcount = 0;
    this.qtype = 0;
    this.qclass = 0;
    this.ednsPresent = false;
    this.ednsUdpPayloadBytes = 0;
    this.ednsVersion = 0;
    this.ednsDo = false;
    this.nameBytes = 0;
  }
}

export class DnsRefParser {
  readonly result = new DnsRefResult();
  // read_name's outputs (kept as fields so the hot path allocates nothing).
  private nameEnd = 0;
  private nameTextBytes = 0;

  /** Walks a name from `start`; returns a Code, and sets nameEnd and nameTextBytes. */
  private readName(packet: Uint8Array, start: number, text: Uint8Array | null): number {
    let index = start;
    let end = -1;
    let wireBytes = 0;
    let textBytes = 0;
    let pointerCount = 0;
    const passCountMax = NAME_WIRE_BYTES_MAX + POINTER_COUNT_MAX + 1;
    for (let pass = 0; pass < passCountMax; pass++) {
      if (index >= packet.length) return Code.short;
      const length = packet[index];
      const tag = length & 0xc0;
      if (tag === 0x00) {
        wireBytes += 1 + length;
        if (wireBytes > NAME_WIRE_BYTES_MAX) return Code.malformed;
        if (length === 0) {
          this.nameEnd = end >= 0 ? end : index + 1;
          this.nameTextBytes = textBytes;
          return Code.ok;
        }
        if (packet.length - index - 1 < length) return Code.short;
        if (text !== null) {
          if (textBytes > 0) text[textBytes++] = CHAR_CODE_DOT;
          for (let i = 0; i < length; i++) {
            const b = packet[index + 1 + i];
            text[textBytes++] = b >= CHAR_CODE_A && b <= CHAR_CODE_Z ? b + CASE_OFFSET : b;
          }
        } else {
          textBytes += length + (textBytes > 0 ? 1 : 0);
        }
        index += 1 + length;
      } else if (tag === 0xc0) {
        if (packet.length - index < 2) return Code.short;
        const target = ((length & 0x3f) << 8) | packet[index + 1];
        if (target >= index) return Code.malformed; // RFC 1035 4.1.4: a prior occurrence
        pointerCount++;
        if (pointerCount > POINTER_COUNT_MAX) return Code.malformed;
        if (end < 0) end = index + 2;
        index = target;
      } else {
        return Code.malformed; // extended label types (RFC 6891 5)
      }
    }
    return Code.malformed;
  }

  parse(packet: Uint8Array): DnsRefResult {
    const r = this.result;
    r.clear();
    r.code = this.parseInto(packet, r);
    return r;
  }

  private parseInto(packet: Uint8Array, r: DnsRefResult): number {
    if (packet.length < HEADER_BYTES) return Code.short;
    r.id = (packet[0] << 8) | packet[1];
    r.flags = (packet[2] << 8) | packet[3];
    r.qr = r.flags >>> 15;
    r.opcode = (r.flags >>> 11) & 0x0f;
    r.rcode = r.flags & 0x0f;
    r.qdcount = (packet[4] << 8) | packet[5];
    r.ancount = (packet[6] << 8) | packet[7];
    r.nscount = (packet[8] << 8) | packet[9];
    r.arcount = (packet[10] << 8) | packet[11];
    let index = HEADER_BYTES;
    for (let q = 0; q < r.qdcount; q++) {
      const code = this.readName(packet, index, q === 0 ? r.nameBuffer : null);
      if (code !== Code.ok) return code;
      index = this.nameEnd;
      if (packet.length - index < 4) return Code.short;
      if (q === 0) {
        r.nameBytes = this.nameTextBytes;
        r.qtype = (packet[index] << 8) | packet[index + 1];
        r.qclass = (packet[index + 2] << 8) | packet[index + 3];
      }
      index += 4;
    }
    const recordCount = r.ancount + r.nscount + r.arcount;
    const additionalIndex = r.ancount + r.nscount;
    for (let i = 0; i < recordCount; i++) {
      const code = this.readName(packet, index, null);
      if (code !== Code.ok) return code;
      const nameTextBytes = this.nameTextBytes;
      index = this.nameEnd;
      if (packet.length - index < 10) return Code.short;
      const type = (packet[index] << 8) | packet[index + 1];
      const klass = (packet[index + 2] << 8) | packet[index + 3];
      const ttlHigh = (packet[index + 4] << 8) | packet[index + 5];
      const ttlLow = (packet[index + 6] << 8) | packet[index + 7];
      const rdataBytes = (packet[index + 8] << 8) | packet[index + 9];
      index += 10;
      if (packet.length - index < rdataBytes) return Code.short;
      index += rdataBytes;
      if (type !== TYPE_OPT || i < additionalIndex) continue;
      if (r.ednsPresent) return Code.malformed; // RFC 6891 6.1.1: at most one OPT
      if (nameTextBytes !== 0) return Code.malformed; // its owner is the root
      r.ednsPresent = true;
      r.ednsUdpPayloadBytes = klass;
      r.ednsVersion = ttlHigh & 0xff;
      r.ednsDo = (ttlLow & 0x8000) !== 0;
      r.rcode = ((ttlHigh >>> 8) << 4) | (r.flags & 0x0f);
    }
    return Code.ok;
  }
}
