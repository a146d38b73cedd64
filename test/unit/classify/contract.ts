// One suite for every implementation of the DNS and QUIC header parsers (WASM and the
// TypeScript references). Hono's common.case.test.ts pattern: a function that registers the
// cases for a given implementation.
import { describe, expect, test } from "bun:test";
import { Code, QUIC_VERSION_1, QUIC_VERSION_2, QuicType } from "../../../src/classify/layout.ts";
import {
  RFC9001_CLIENT_INITIAL_HEX,
  RFC9369_CLIENT_INITIAL_HEX,
} from "../../fixtures/classify/rfc_quic_vectors.ts";
import {
  concat,
  dnsName,
  dnsQuery,
  dnsResponseA,
  hex,
  u16,
  u32,
  u8,
  varint,
} from "../../fixtures/classify/build.ts";
import type { Impl } from "./impls.ts";

export function dnsHeader(
  qdcount: number,
  ancount = 0,
  nscount = 0,
  arcount = 0,
  flags = 0x0100,
): Uint8Array {
  return concat(u16(0x0a0b), u16(flags), u16(qdcount), u16(ancount), u16(nscount), u16(arcount));
}

export function runDnsContract(impl: () => Impl): void {
  describe("DNS", () => {
    const p = impl();

    test("A query: header fields, lowercased name, qtype/qclass", () => {
      const r = p.dns(dnsQuery("WwW.Example.COM", { id: 0xabcd, qtype: 1 }));
      expect(r).toMatchObject({
        code: Code.ok,
        id: 0xabcd,
        flags: 0x0100,
        qr: 0,
        opcode: 0,
        qdcount: 1,
        ancount: 0,
        qtype: 1,
        qclass: 1,
        ednsPresent: false,
        name: "www.example.com",
      });
    });

    test("EDNS0 OPT: payload size, DO bit, version", () => {
      const r = p.dns(
        dnsQuery("example.org", { qtype: 28, ednsUdpPayloadBytes: 1232, ednsDo: true }),
      );
      expect(r).toMatchObject({
        code: Code.ok,
        arcount: 1,
        qtype: 28,
        ednsPresent: true,
        ednsUdpPayloadBytes: 1232,
        ednsDo: true,
        ednsVersion: 0,
        name: "example.org",
      });
    });

    test("response: qr, rcode, answer count, compressed answer owner, OPT", () => {
      const r = p.dns(dnsResponseA("a.example.net", [198, 18, 0, 1], 3));
      expect(r).toMatchObject({
        code: Code.ok,
        qr: 1,
        rcode: 3,
        ancount: 1,
        arcount: 1,
        ednsPresent: true,
        ednsUdpPayloadBytes: 4096,
        name: "a.example.net",
      });
    });

    test("extended RCODE from OPT's TTL high byte (RFC 6891 6.1.3)", () => {
      const opt = concat(u8(0), u16(41), u16(512), u32(0x01000000), u16(0));
      const r = p.dns(concat(dnsHeader(1, 0, 0, 1, 0x8000), dnsName("x"), u16(1), u16(1), opt));
      expect(r).toMatchObject({ code: Code.ok, rcode: 16, ednsUdpPayloadBytes: 512 });
    });

    test("root name, and no question at all", () => {
      expect(p.dns(concat(dnsHeader(1), u8(0), u16(2), u16(1)))).toMatchObject({
        code: Code.ok,
        name: "",
        qtype: 2,
      });
      expect(p.dns(dnsHeader(0))).toMatchObject({ code: Code.ok, name: "", qtype: 0 });
    });

    test("second question's name may point at the first; first is reported", () => {
      const packet = concat(
        dnsHeader(2),
        dnsName("one.test"),
        u16(1),
        u16(1),
        u8(3),
        Buffer.from("two"),
        u16(0xc000 | 12),
        u16(16),
        u16(1),
      );
      expect(p.dns(packet)).toMatchObject({ code: Code.ok, name: "one.test", qtype: 1 });
    });

    test("longest legal name (255 octets) is ok; one more octet is malformed", () => {
      const label63 = "a".repeat(63);
      const name = `${label63}.${label63}.${label63}.${"b".repeat(61)}`; // 253 characters
      expect(dnsName(name).length).toBe(255);
      expect(p.dns(dnsQuery(name))).toMatchObject({ code: Code.ok, name });
      expect(p.dns(dnsQuery(`${name}c`)).code).toBe(Code.malformed);
    });

    test("compression pointers: self, forward, and loops are malformed", () => {
      const self = concat(dnsHeader(1), u16(0xc000 | 12), u16(1), u16(1));
      expect(p.dns(self).code).toBe(Code.malformed);
      const forward = concat(dnsHeader(1), u16(0xc000 | 14), u8(0), u16(1), u16(1));
      expect(p.dns(forward).code).toBe(Code.malformed);
      // Answer owner -> 17 (pointer) -> 12 (label "a") -> then pointer at 14 -> 12 ... each
      // hop points backwards, but the name grows until the 255-octet limit stops it.
      const loop = concat(dnsHeader(1), u8(1), Buffer.from("a"), u16(0xc000 | 12), u16(1), u16(1));
      expect(p.dns(loop).code).toBe(Code.malformed);
    });

    test("extended label types (0x40, 0x80) are malformed", () => {
      expect(p.dns(concat(dnsHeader(1), u8(0x41), u8(0), u16(1), u16(1))).code).toBe(
        Code.malformed,
      );
      expect(p.dns(concat(dnsHeader(1), u8(0x81), u8(0), u16(1), u16(1))).code).toBe(
        Code.malformed,
      );
    });

    test("two OPT records, or OPT with a non-root owner, are malformed (RFC 6891 6.1.1)", () => {
      const opt = concat(u8(0), u16(41), u16(1232), u32(0), u16(0));
      const question = concat(dnsName("x.test"), u16(1), u16(1));
      expect(p.dns(concat(dnsHeader(1, 0, 0, 2), question, opt, opt)).code).toBe(Code.malformed);
      const named = concat(dnsName("x"), u16(41), u16(1232), u32(0), u16(0));
      expect(p.dns(concat(dnsHeader(1, 0, 0, 1), question, named)).code).toBe(Code.malformed);
    });

    test("OPT outside the additional section is not EDNS", () => {
      const opt = concat(u8(0), u16(41), u16(1232), u32(0), u16(0));
      const r = p.dns(concat(dnsHeader(1, 1, 0, 0), dnsName("x.test"), u16(1), u16(1), opt));
      expect(r).toMatchObject({ code: Code.ok, ednsPresent: false });
    });

    test("counts larger than the message: short", () => {
      expect(p.dns(dnsHeader(1)).code).toBe(Code.short);
      expect(
        p.dns(
          concat(
            dnsQuery("x.test").subarray(0, 4),
            u16(1),
            u16(50),
            u16(0),
            u16(0),
            dnsQuery("x.test").subarray(12),
          ),
        ).code,
      ).toBe(Code.short);
      expect(p.dns(new Uint8Array(11)).code).toBe(Code.short);
    });
  });
}

export function runQuicHeaderContract(impl: () => Impl): void {
  describe("QUIC header", () => {
    const p = impl();

    test("RFC 9001 A.2 client Initial (v1)", () => {
      const r = p.quicHeader(hex(RFC9001_CLIENT_INITIAL_HEX));
      expect(r).toEqual({
        code: Code.ok,
        version: QUIC_VERSION_1,
        long: true,
        type: QuicType.initial,
        dcidOffset: 6,
        dcidBytes: 8,
        scidOffset: 15,
        scidBytes: 0,
        tokenOffset: 16,
        tokenBytes: 0,
        payloadOffset: 18,
        packetBytes: 1200,
        length: 1182,
      });
    });

    test("RFC 9369 A.2 client Initial (v2 type bits 0b01)", () => {
      const r = p.quicHeader(hex(RFC9369_CLIENT_INITIAL_HEX));
      expect(r).toMatchObject({
        code: Code.ok,
        version: QUIC_VERSION_2,
        type: QuicType.initial,
        dcidBytes: 8,
        packetBytes: 1200,
        length: 1182,
      });
    });

    const longPacket = (first: number, version: number, rest: Uint8Array) =>
      concat(u8(first), u32(version), u8(4), hex("d1d2d3d4"), u8(2), hex("e1e2"), rest);

    test("v1 and v2 type bits map to the same types (RFC 9369 3.2)", () => {
      const body = concat(varint(5), new Uint8Array(5));
      expect(p.quicHeader(longPacket(0xd0, QUIC_VERSION_1, body)).type).toBe(QuicType.zeroRtt);
      expect(p.quicHeader(longPacket(0xe0, QUIC_VERSION_1, body)).type).toBe(QuicType.handshake);
      expect(p.quicHeader(longPacket(0xe0, QUIC_VERSION_2, body)).type).toBe(QuicType.zeroRtt);
      expect(p.quicHeader(longPacket(0xf0, QUIC_VERSION_2, body)).type).toBe(QuicType.handshake);
      const retry = concat(hex("aabbcc"), new Uint8Array(16));
      expect(p.quicHeader(longPacket(0xc0, QUIC_VERSION_2, retry))).toMatchObject({
        code: Code.ok,
        type: QuicType.retry,
        tokenOffset: 13,
        tokenBytes: 3,
      });
      expect(p.quicHeader(longPacket(0xf0, QUIC_VERSION_1, retry))).toMatchObject({
        code: Code.ok,
        type: QuicType.retry,
        tokenBytes: 3,
        payloadOffset: 16,
      });
    });

    test("Initial with a token; coalesced bytes after Length", () => {
      const body = concat(
        varint(3),
        hex("0a0b0c"),
        varint(30),
        new Uint8Array(30),
        new Uint8Array(7),
      );
      const r = p.quicHeader(longPacket(0xc0, QUIC_VERSION_1, body));
      expect(r).toMatchObject({
        code: Code.ok,
        tokenOffset: 14,
        tokenBytes: 3,
        payloadOffset: 18,
        length: 30,
        packetBytes: 48,
        dcidOffset: 6,
        scidOffset: 11,
      });
    });

    test("Version Negotiation and unknown versions (RFC 8999)", () => {
      const vn = longPacket(0x80, 0, concat(u32(QUIC_VERSION_1), u32(QUIC_VERSION_2)));
      expect(p.quicHeader(vn)).toMatchObject({
        code: Code.ok,
        version: 0,
        type: QuicType.versionNegotiation,
        dcidBytes: 4,
        scidBytes: 2,
      });
      expect(p.quicHeader(vn.subarray(0, vn.length - 1)).code).toBe(Code.malformed);
      const unknown = concat(u8(0xc0), u32(0x1a2a3a4a), u8(30), new Uint8Array(30), u8(0));
      expect(p.quicHeader(unknown)).toMatchObject({
        code: Code.unsupported,
        version: 0x1a2a3a4a,
        dcidBytes: 30,
      });
    });

    test("short header uses the caller's DCID length", () => {
      const r = p.quicHeader(concat(u8(0x41), new Uint8Array(8), new Uint8Array(20)), 8);
      expect(r).toMatchObject({
        code: Code.ok,
        long: false,
        type: QuicType.oneRtt,
        dcidOffset: 1,
        dcidBytes: 8,
        payloadOffset: 9,
        packetBytes: 29,
      });
      expect(p.quicHeader(u8(0x41), 8).code).toBe(Code.short);
      expect(p.quicHeader(u8(0x41), 21).code).toBe(Code.malformed);
    });

    test("v1 CID over 20 bytes, or Fixed Bit 0, is malformed", () => {
      const big = concat(u8(0xc0), u32(QUIC_VERSION_1), u8(21), new Uint8Array(40));
      expect(p.quicHeader(big).code).toBe(Code.malformed);
      const body = concat(varint(0), varint(5), new Uint8Array(5));
      expect(p.quicHeader(longPacket(0x80, QUIC_VERSION_1, body)).code).toBe(Code.malformed);
    });

    test("Length beyond the datagram is short", () => {
      const body = concat(varint(0), varint(100), new Uint8Array(20));
      expect(p.quicHeader(longPacket(0xc0, QUIC_VERSION_1, body)).code).toBe(Code.short);
      expect(p.quicHeader(new Uint8Array(0)).code).toBe(Code.short);
      expect(p.quicHeader(hex("c0000000")).code).toBe(Code.short);
    });
  });
}
