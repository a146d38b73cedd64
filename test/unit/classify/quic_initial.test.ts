// QUIC Initial decryption and CRYPTO reassembly in the WASM module, against the published
// vectors (RFC 9001 Appendix A, RFC 9369 Appendix A) and against Initials protected here with
// node:crypto (test/fixtures/classify/build.ts), including ClientHellos spanning several
// Initials the way Chrome's post-quantum hello does.
import { beforeEach, describe, expect, test } from "bun:test";
import {
  Code,
  Field,
  QUIC_VERSION_1,
  QUIC_VERSION_2,
  RESULT_WORDS_SHIFT,
  WORD_FIELD,
} from "../../../src/classify/layout.ts";
import { QuicParser } from "../../../src/classify/quic.ts";
import { parsersInstantiate } from "../../../src/classify/wasm.ts";
import {
  clientHello,
  clientInitial,
  clientInitialKeys,
  concat,
  cryptoFrame,
  hex,
  multiInitial,
  QUIC_V1,
  QUIC_V2,
  toHex,
} from "../../fixtures/classify/build.ts";
import * as rfc from "../../fixtures/classify/rfc_quic_vectors.ts";

const parsers = parsersInstantiate();
const quic = new QuicParser(parsers);
const AREA_OFFSET = 8192;

function open(datagram: Uint8Array) {
  const offset = parsers.place(datagram, AREA_OFFSET);
  return quic.parseInitial(offset, datagram.length);
}

function field(index: number): number {
  return parsers.resultWords[(parsers.singleIndex << RESULT_WORDS_SHIFT) + WORD_FIELD + index];
}

function scratch(offsetFn: () => number, bytes: number): string {
  const offset = offsetFn();
  return toHex(parsers.bytes.subarray(offset, offset + bytes));
}

beforeEach(() => quic.resetContexts());

const vectors = [
  {
    name: "RFC 9001 (v1)",
    version: QUIC_VERSION_1,
    packet: rfc.RFC9001_CLIENT_INITIAL_HEX,
    header: rfc.RFC9001_CLIENT_HEADER_HEX,
    secret: rfc.RFC9001_CLIENT_INITIAL_SECRET_HEX,
    key: rfc.RFC9001_CLIENT_KEY_HEX,
    iv: rfc.RFC9001_CLIENT_IV_HEX,
    hp: rfc.RFC9001_CLIENT_HP_HEX,
  },
  {
    name: "RFC 9369 (v2)",
    version: QUIC_VERSION_2,
    packet: rfc.RFC9369_CLIENT_INITIAL_HEX,
    header: rfc.RFC9369_CLIENT_HEADER_HEX,
    secret: rfc.RFC9369_CLIENT_INITIAL_SECRET_HEX,
    key: rfc.RFC9369_CLIENT_KEY_HEX,
    iv: rfc.RFC9369_CLIENT_IV_HEX,
    hp: rfc.RFC9369_CLIENT_HP_HEX,
  },
];

for (const v of vectors) {
  describe(v.name, () => {
    test("Appendix A.1: client key, IV and HP key (WASM and node:crypto)", () => {
      const dcid = hex(rfc.RFC_DCID_HEX);
      const offset = parsers.place(dcid, AREA_OFFSET);
      expect(parsers.exports.quic_client_keys_derive(v.version, offset, dcid.length)).toBe(Code.ok);
      const text = parsers.textOffset + parsers.singleIndex * parsers.textBytes;
      expect(toHex(parsers.bytes.subarray(text, text + 16))).toBe(v.key);
      expect(toHex(parsers.bytes.subarray(text + 16, text + 28))).toBe(v.iv);
      expect(toHex(parsers.bytes.subarray(text + 28, text + 44))).toBe(v.hp);
      const keys = clientInitialKeys(v.version, dcid);
      expect(toHex(keys.clientSecret)).toBe(v.secret);
      expect([toHex(keys.key), toHex(keys.iv), toHex(keys.hp)]).toEqual([v.key, v.iv, v.hp]);
    });

    test("Appendix A.2: header protection removed, payload decrypted exactly", () => {
      const r = open(hex(v.packet));
      expect(r.code).toBe(Code.ok);
      expect(r.header.version).toBe(v.version);
      expect(r.packetNumber).toBe(2);
      // The unprotected header is the RFC's, byte for byte.
      expect(
        scratch(parsers.exports.quic_scratch_header_offset, field(Field.initialHeaderBytes)),
      ).toBe(v.header);
      // The plaintext is the RFC's CRYPTO frame followed by PADDING to 1162 bytes.
      const plain = hex(rfc.RFC_CLIENT_CRYPTO_FRAME_HEX);
      const expected = new Uint8Array(rfc.RFC_CLIENT_PAYLOAD_BYTES);
      expected.set(plain);
      expect(field(Field.initialPlainBytes)).toBe(rfc.RFC_CLIENT_PAYLOAD_BYTES);
      expect(scratch(parsers.exports.quic_scratch_plain_offset, rfc.RFC_CLIENT_PAYLOAD_BYTES)).toBe(
        toHex(expected),
      );
    });

    test("Appendix A.2: ClientHello SNI example.com, ALPN alpn", () => {
      const r = open(hex(v.packet));
      expect(r.code).toBe(Code.ok);
      expect(r.sni()).toBe("example.com");
      expect(r.alpn()).toEqual(["alpn"]);
      expect(r.helloBytes).toBe(0xf1);
      expect(r.legacyVersion).toBe(0x0303);
      expect(r.cipherSuiteCount).toBe(2);
      expect(r.cryptoContiguousBytes).toBe(0xf1);
      expect(r.packetsCount).toBe(1);
    });

    test("node:crypto-protected packet with the RFC's frames opens to the same hello", () => {
      const packet = clientInitial({
        version: v.version,
        dcid: hex(rfc.RFC_DCID_HEX),
        scid: new Uint8Array(0),
        packetNumber: 2,
        frames: hex(rfc.RFC_CLIENT_CRYPTO_FRAME_HEX),
        datagramBytes: 1200,
      });
      expect(toHex(packet)).toBe(v.packet);
    });

    test("a flipped ciphertext bit fails authentication and creates no context", () => {
      const packet = hex(v.packet);
      packet[600] ^= 1;
      expect(open(packet).code).toBe(Code.malformed);
      // The context table is unchanged: the genuine packet still counts as the first.
      expect(open(hex(v.packet)).packetsCount).toBe(1);
    });
  });
}

test("RFC 9001 A.3 server Initial does not open with client keys", () => {
  expect(open(hex(rfc.RFC9001_SERVER_INITIAL_HEX)).code).toBe(Code.malformed);
});

test("non-Initial long headers and short headers are unsupported", () => {
  const packet = hex(rfc.RFC9001_CLIENT_INITIAL_HEX);
  packet[0] = 0xe0; // v1 Handshake type bits, same header shape
  expect(open(packet).code).toBe(Code.unsupported);
  expect(open(concat(Uint8Array.of(0x40), new Uint8Array(40))).code).toBe(Code.unsupported);
});

describe("ClientHello across several Initials", () => {
  const dcid = hex("0011223344556677");
  const alpn = ["h3", "h3-29"];
  // 3000 bytes of padding extension: like a post-quantum hello, it needs 3 Initials.
  const hello = clientHello({ sni: "Www.Chromium.ORG", alpn, paddingBytes: 3000 });

  for (const version of [QUIC_V1, QUIC_V2]) {
    test(`v${version === QUIC_V1 ? 1 : 2}: in order, short until the last`, () => {
      const packets = multiInitial(version, dcid, hello, 3);
      const first = open(packets[0]);
      expect(first.code).toBe(Code.short);
      expect(first.cryptoContiguousBytes).toBe(Math.ceil(hello.length / 3));
      expect(open(packets[1]).code).toBe(Code.short);
      const last = open(packets[2]);
      expect(last.code).toBe(Code.ok);
      expect(last.sni()).toBe("www.chromium.org");
      expect(last.alpn()).toEqual(alpn);
      expect(last.helloBytes).toBe(hello.length);
      expect(last.packetsCount).toBe(3);
    });
  }

  test("out of order and retransmitted packets", () => {
    const packets = multiInitial(QUIC_V1, dcid, hello, 3);
    expect(open(packets[2]).code).toBe(Code.short);
    expect(open(packets[2]).code).toBe(Code.short);
    const middle = open(packets[1]);
    expect(middle.code).toBe(Code.short);
    expect(middle.cryptoContiguousBytes).toBe(0);
    const r = open(packets[0]);
    expect(r.code).toBe(Code.ok);
    expect(r.sni()).toBe("www.chromium.org");
    // A retransmission after completion reports the same hello again.
    expect(open(packets[1]).sni()).toBe("www.chromium.org");
  });

  test("two connections interleaved keep separate contexts", () => {
    const otherDcid = hex("8877665544332211");
    const otherHello = clientHello({ sni: "other.test", alpn: ["h3"], paddingBytes: 1500 });
    const a = multiInitial(QUIC_V1, dcid, hello, 3);
    const b = multiInitial(QUIC_V2, otherDcid, otherHello, 2);
    expect(open(a[0]).code).toBe(Code.short);
    expect(open(b[0]).code).toBe(Code.short);
    expect(open(a[1]).code).toBe(Code.short);
    const rb = open(b[1]);
    expect(rb.code).toBe(Code.ok);
    expect(rb.sni()).toBe("other.test");
    const contextB = rb.contextIndex; // results are one reused object
    const ra = open(a[2]);
    expect(ra.code).toBe(Code.ok);
    expect(ra.sni()).toBe("www.chromium.org");
    expect(ra.contextIndex).not.toBe(contextB);
  });

  test("the context table is bounded: the least recently used is evicted", () => {
    const packets = multiInitial(QUIC_V1, dcid, hello, 2);
    expect(open(packets[0]).code).toBe(Code.short);
    for (let i = 0; i < parsers.quicContextCount; i++) {
      const other = multiInitial(
        QUIC_V1,
        hex(`aa000000000000${i.toString(16).padStart(2, "0")}`),
        clientHello({ sni: `n${i}.test`, paddingBytes: 1500 }),
        2,
      );
      expect(open(other[0]).code).toBe(Code.short);
    }
    // Our first half was evicted: the second half alone cannot complete the hello.
    const r = open(packets[1]);
    expect(r.code).toBe(Code.short);
    expect(r.cryptoContiguousBytes).toBe(0);
    expect(r.packetsCount).toBe(1);
  });

  test("a hello larger than the 16 KiB bound is unsupported, not buffered", () => {
    const huge = clientHello({ sni: "huge.test", paddingBytes: 17000 });
    const packets = multiInitial(QUIC_V1, dcid, huge, 16);
    const r = open(packets[0]);
    expect(r.code).toBe(Code.unsupported);
    expect(r.helloBytes).toBe(huge.length);
  });

  test("CRYPTO data past the bound is unsupported", () => {
    const frames = cryptoFrame(16 * 1024 - 2, new Uint8Array(4));
    const packet = clientInitial({
      version: QUIC_V1,
      dcid,
      scid: new Uint8Array(0),
      packetNumber: 0,
      frames,
    });
    expect(open(packet).code).toBe(Code.unsupported);
  });

  test("frames not allowed in Initial (STREAM 0x08) are malformed (RFC 9000 12.4)", () => {
    const frames = concat(cryptoFrame(0, hello.subarray(0, 100)), Uint8Array.of(0x08, 0, 0));
    const packet = clientInitial({
      version: QUIC_V1,
      dcid,
      scid: new Uint8Array(0),
      packetNumber: 0,
      frames,
    });
    expect(open(packet).code).toBe(Code.malformed);
  });

  test("ACK, PING, CONNECTION_CLOSE frames are skipped", () => {
    const small = clientHello({ sni: "ack.test" });
    const frames = concat(
      Uint8Array.of(0x02, 0x05, 0x00, 0x01, 0x00, 0x02, 0x01),
      Uint8Array.of(0x03, 0x05, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03),
      Uint8Array.of(0x01),
      cryptoFrame(0, small),
      Uint8Array.of(0x1c, 0x00, 0x00, 0x02, 0x61, 0x62),
    );
    const packet = clientInitial({
      version: QUIC_V2,
      dcid,
      scid: new Uint8Array(0),
      packetNumber: 7,
      frames,
    });
    const r = open(packet);
    expect(r.code).toBe(Code.ok);
    expect(r.sni()).toBe("ack.test");
    expect(r.packetNumber).toBe(7);
  });
});
