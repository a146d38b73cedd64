// TLS ClientHello over TCP in the WASM module: one buffer, or a stream fed in segments that
// cut through record headers and handshake headers, with ClientHellos split across records.
import { beforeEach, describe, expect, test } from "bun:test";
import { Code } from "../../../src/classify/layout.ts";
import { TlsParser } from "../../../src/classify/tls.ts";
import { parsersInstantiate } from "../../../src/classify/wasm.ts";
import { clientHello, concat, tlsRecords, u16, u24, u8 } from "../../fixtures/classify/build.ts";

const parsers = parsersInstantiate();
const tls = new TlsParser(parsers);
const AREA_OFFSET = 65536;

function parse(bytes: Uint8Array) {
  return tls.parse(parsers.place(bytes, AREA_OFFSET), bytes.length);
}

function feed(context: number, bytes: Uint8Array) {
  return tls.feed(context, parsers.place(bytes, AREA_OFFSET), bytes.length);
}

beforeEach(() => {
  for (let i = 0; i < parsers.tlsContextCount; i++) tls.reset(i);
});

const hello = clientHello({ sni: "API.Example.com", alpn: ["h2", "http/1.1"] });

describe("one buffer", () => {
  test("SNI lowercased, ALPN list, counts", () => {
    const r = parse(tlsRecords(hello));
    expect(r.code).toBe(Code.ok);
    expect(r.sni()).toBe("api.example.com");
    expect(r.alpn()).toEqual(["h2", "http/1.1"]);
    expect(r.alpnCount).toBe(2);
    expect(r.sniPresent && r.alpnPresent && !r.alpnTruncated).toBe(true);
    expect(r.helloBytes).toBe(hello.length);
    expect(r.cipherSuiteCount).toBe(2);
    expect(r.recordCount).toBe(1);
  });

  test("hello split across many small records", () => {
    const r = parse(tlsRecords(hello, 17));
    expect(r.code).toBe(Code.ok);
    expect(r.sni()).toBe("api.example.com");
    expect(r.recordCount).toBe(Math.ceil(hello.length / 17));
  });

  test("a large hello (12 KiB padding) over records of 2^14", () => {
    const big = clientHello({ sni: "big.test", alpn: ["h2"], paddingBytes: 12000 });
    const r = parse(tlsRecords(big, 4096));
    expect(r.code).toBe(Code.ok);
    expect(r.sni()).toBe("big.test");
  });

  test("no SNI, no ALPN: ok with empty fields", () => {
    const r = parse(tlsRecords(clientHello({})));
    expect(r.code).toBe(Code.ok);
    expect(r.sniPresent).toBe(false);
    expect(r.sni()).toBe("");
    expect(r.alpn()).toEqual([]);
  });

  test("ALPN list longer than the 256-byte slot is cut at an entry and flagged", () => {
    const names = Array.from({ length: 40 }, (_, i) => `proto-${i.toString().padStart(3, "0")}`);
    const r = parse(tlsRecords(clientHello({ sni: "x.test", alpn: names })));
    expect(r.code).toBe(Code.ok);
    expect(r.alpnCount).toBe(40);
    expect(r.alpnTruncated).toBe(true);
    expect(r.alpn()).toEqual(names.slice(0, Math.floor(256 / 10)));
  });

  test("not TLS: HTTP request, alert record, SSLv2-style header are unsupported", () => {
    expect(parse(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")).code).toBe(
      Code.unsupported,
    );
    expect(parse(Uint8Array.of(21, 3, 3, 0, 2, 2, 40)).code).toBe(Code.unsupported);
    expect(parse(Uint8Array.of(0x80, 0x2e, 0x01, 0x03, 0x01)).code).toBe(Code.unsupported);
  });

  test("a ServerHello (handshake type 2) is unsupported", () => {
    const serverHello = concat(u8(2), hello.subarray(1));
    expect(parse(tlsRecords(serverHello)).code).toBe(Code.unsupported);
  });

  test("record length 0 or over 2^14 is malformed (RFC 8446 5.1)", () => {
    expect(parse(Uint8Array.of(22, 3, 1, 0, 0)).code).toBe(Code.malformed);
    expect(parse(Uint8Array.of(22, 3, 1, 0x40, 0x01)).code).toBe(Code.malformed);
  });

  test("hello over the 16 KiB bound is unsupported", () => {
    const huge = concat(u8(1), u24(20000), new Uint8Array(100));
    expect(parse(tlsRecords(huge)).code).toBe(Code.unsupported);
  });

  test("duplicate SNI extension, empty ALPN name: malformed", () => {
    const sni = concat(u16(0), u16(9), u16(7), u8(0), u16(4), new TextEncoder().encode("a.bc"));
    const body = hello.subarray(4);
    // Rebuild with two SNI extensions: replace the extensions block.
    const fixed = body.subarray(0, 2 + 32 + 1 + 32 + 2 + 4 + 2);
    const twice = concat(fixed, u16(sni.length * 2), sni, sni);
    expect(parse(tlsRecords(concat(u8(1), u24(twice.length), twice))).code).toBe(Code.malformed);
    const alpn = concat(u16(16), u16(4), u16(2), u8(0), u8(0x61));
    const badAlpn = concat(fixed, u16(alpn.length), alpn);
    expect(parse(tlsRecords(concat(u8(1), u24(badAlpn.length), badAlpn))).code).toBe(
      Code.malformed,
    );
  });
});

describe("stream contexts", () => {
  const stream = tlsRecords(hello, 50);

  for (const segmentBytes of [1, 3, 5, 7, 64, 1000]) {
    test(`segments of ${segmentBytes} bytes: short until complete, then ok`, () => {
      let code: number = Code.short;
      let segments = 0;
      for (let i = 0; i < stream.length; i += segmentBytes) {
        expect(code).toBe(Code.short);
        code = feed(3, stream.subarray(i, i + segmentBytes)).code;
        segments++;
      }
      expect(code).toBe(Code.ok);
      expect(tls.result.sni()).toBe("api.example.com");
      expect(tls.result.consumedBytes).toBe(stream.length);
      expect(segments).toBe(Math.ceil(stream.length / segmentBytes));
    });
  }

  test("contexts are independent, and a final code sticks until reset", () => {
    const other = tlsRecords(clientHello({ sni: "other.test" }));
    expect(feed(0, stream.subarray(0, 100)).code).toBe(Code.short);
    expect(feed(1, other).code).toBe(Code.ok);
    expect(feed(0, stream.subarray(100)).sni()).toBe("api.example.com");
    // Later bytes (application data) do not change a finished context.
    expect(feed(0, Uint8Array.of(23, 3, 3, 0, 1, 0)).code).toBe(Code.ok);
    expect(feed(2, Uint8Array.of(23, 3, 3, 0, 1, 0)).code).toBe(Code.unsupported);
    expect(feed(2, stream).code).toBe(Code.unsupported);
    tls.reset(2);
    expect(feed(2, stream).code).toBe(Code.ok);
  });

  test("context index out of range is rejected, never out of bounds", () => {
    expect(feed(parsers.tlsContextCount, stream).code).toBe(Code.malformed);
    expect(feed(0xffffffff, stream).code).toBe(Code.malformed);
    expect(parsers.exports.tls_stream_reset(parsers.tlsContextCount)).toBe(Code.malformed);
  });
});
