// DNS results from the WASM parser (wasm/src/dns.zig). One DnsResult is reused per parser:
// parse() and read() overwrite its numbers in place; name() builds a string only when asked.
import {
  Field,
  RESULT_WORDS_SHIFT,
  WORD_CODE,
  WORD_FIELD,
  WORD_NAME_BYTES,
  WORD_NAME_OFFSET,
} from "./layout.ts";
import type { Parsers } from "./wasm.ts";

export class DnsResult {
  code = 0;
  id = 0;
  /** The header's second 16-bit word: QR, Opcode, AA, TC, RD, RA, Z, AD, CD, RCODE. */
  flags = 0;
  qr = 0;
  opcode = 0;
  /** Header RCODE, extended by OPT's high bits when OPT is present (RFC 6891 6.1.3). */
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
  nameOffset = 0;
  nameBytes = 0;

  constructor(private readonly parsers: Parsers) {}

  /** The first question's name, lowercased and dotted ("" for the root). */
  name(): string {
    return this.parsers.text(this.nameOffset, this.nameBytes);
  }
}

export class DnsParser {
  readonly result: DnsResult;

  constructor(private readonly parsers: Parsers) {
    this.result = new DnsResult(parsers);
  }

  /** Parses the message at absolute memory `offset` (inside the packet area). */
  parse(offset: number, bytes: number): DnsResult {
    this.parsers.exports.dns_parse(offset, bytes);
    return this.read(this.parsers.singleIndex);
  }

  /** Reads record `index` (after batchParse with Kind.dns descriptors). */
  read(index: number): DnsResult {
    const w = this.parsers.resultWords;
    const base = index << RESULT_WORDS_SHIFT;
    const f = base + WORD_FIELD;
    const r = this.result;
    r.code = w[base + WORD_CODE];
    r.id = w[f + Field.dnsId];
    r.flags = w[f + Field.dnsFlags];
    r.qr = r.flags >>> 15;
    r.opcode = (r.flags >>> 11) & 0x0f;
    r.rcode = w[f + Field.dnsRcode];
    r.qdcount = w[f + Field.dnsQdcount];
    r.ancount = w[f + Field.dnsAncount];
    r.nscount = w[f + Field.dnsNscount];
    r.arcount = w[f + Field.dnsArcount];
    r.qtype = w[f + Field.dnsQtype];
    r.qclass = w[f + Field.dnsQclass];
    r.ednsPresent = w[f + Field.dnsEdnsPresent] !== 0;
    r.ednsUdpPayloadBytes = w[f + Field.dnsEdnsUdpPayloadBytes];
    r.ednsVersion = w[f + Field.dnsEdnsVersion];
    r.ednsDo = w[f + Field.dnsEdnsDo] !== 0;
    r.nameOffset = w[base + WORD_NAME_OFFSET];
    r.nameBytes = w[base + WORD_NAME_BYTES];
    return r;
  }
}
