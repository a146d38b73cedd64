// Adapters that give the WASM parsers and the TypeScript references one interface, so one
// suite (contract.ts) runs against both, Hono router-test style. Results are copied into plain
// objects with offsets relative to the packet, so they compare with toEqual.
import { DnsParser } from "../../../src/classify/dns.ts";
import { DnsRefParser } from "../../ref/dns_ref.ts";
import { QuicParser } from "../../../src/classify/quic.ts";
import { QuicRefParser } from "../../ref/quic_ref.ts";
import { parsersLoad, type Parsers } from "../../../src/classify/wasm.ts";

export interface DnsView {
  code: number;
  id: number;
  flags: number;
  qr: number;
  opcode: number;
  rcode: number;
  qdcount: number;
  ancount: number;
  nscount: number;
  arcount: number;
  qtype: number;
  qclass: number;
  ednsPresent: boolean;
  ednsUdpPayloadBytes: number;
  ednsVersion: number;
  ednsDo: boolean;
  name: string;
}

export interface QuicHeaderView {
  code: number;
  version: number;
  long: boolean;
  type: number;
  dcidOffset: number;
  dcidBytes: number;
  scidOffset: number;
  scidBytes: number;
  tokenOffset: number;
  tokenBytes: number;
  payloadOffset: number;
  packetBytes: number;
  length: number;
}

export interface Impl {
  name: string;
  dns(packet: Uint8Array): DnsView;
  quicHeader(packet: Uint8Array, shortDcidBytes?: number): QuicHeaderView;
}

type DnsSource = Omit<DnsView, "name"> & { name(): string };

function dnsView(r: DnsSource): DnsView {
  return {
    code: r.code,
    id: r.id,
    flags: r.flags,
    qr: r.qr,
    opcode: r.opcode,
    rcode: r.rcode,
    qdcount: r.qdcount,
    ancount: r.ancount,
    nscount: r.nscount,
    arcount: r.arcount,
    qtype: r.qtype,
    qclass: r.qclass,
    ednsPresent: r.ednsPresent,
    ednsUdpPayloadBytes: r.ednsUdpPayloadBytes,
    ednsVersion: r.ednsVersion,
    ednsDo: r.ednsDo,
    name: r.name(),
  };
}

function quicView(r: QuicHeaderView, base: number): QuicHeaderView {
  return {
    code: r.code,
    version: r.version,
    long: r.long,
    type: r.type,
    dcidOffset: r.dcidOffset - base,
    dcidBytes: r.dcidBytes,
    scidOffset: r.scidOffset - base,
    scidBytes: r.scidBytes,
    tokenOffset: r.tokenOffset - base,
    tokenBytes: r.tokenBytes,
    payloadOffset: r.payloadOffset - base,
    packetBytes: r.packetBytes,
    length: r.length,
  };
}

/** Packets are placed at this offset into the packet area: not 0, to catch offset mixups. */
export const PLACE_AREA_OFFSET = 4096;

export function wasmImpl(parsers: Parsers = parsersLoad()): Impl {
  const dns = new DnsParser(parsers);
  const quic = new QuicParser(parsers);
  return {
    name: "wasm",
    dns(packet) {
      const offset = parsers.place(packet, PLACE_AREA_OFFSET);
      return dnsView(dns.parse(offset, packet.length));
    },
    quicHeader(packet, shortDcidBytes = 0) {
      const offset = parsers.place(packet, PLACE_AREA_OFFSET);
      return quicView(quic.parseHeader(offset, packet.length, shortDcidBytes), offset);
    },
  };
}

export function refImpl(): Impl {
  const dns = new DnsRefParser();
  const quic = new QuicRefParser();
  return {
    name: "ts-ref",
    dns: (packet) => dnsView(dns.parse(packet)),
    quicHeader: (packet, shortDcidBytes = 0) => quicView(quic.parse(packet, shortDcidBytes), 0),
  };
}
