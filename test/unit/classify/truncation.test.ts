// Every prefix of every valid fixture is short or malformed, never ok and never a trap
// (STYLE.md 10, quic-go's io.EOF rule). DNS and QUIC headers run against both the WASM parser
// and the TS reference. QUIC Retry, Version Negotiation and short headers are left out: they
// have no Length field, the datagram's end is the packet's end (RFC 9000 17.2.5, 17.3.1;
// RFC 8999 6), so their prefixes are valid packets.
import { describe, expect, test } from "bun:test";
import { Code } from "../../../src/classify/layout.ts";
import { QuicParser } from "../../../src/classify/quic.ts";
import { TlsParser } from "../../../src/classify/tls.ts";
import { parsersInstantiate } from "../../../src/classify/wasm.ts";
import {
  dnsFixtures,
  quicHeaderFixtures,
  quicInitialFixtures,
  tlsFixtures,
} from "../../fixtures/classify/corpus.ts";
import { refImpl, wasmImpl } from "./impls.ts";

const NOT_OK: number[] = [Code.short, Code.malformed];

for (const make of [wasmImpl, refImpl]) {
  const impl = make(make === wasmImpl ? parsersInstantiate() : undefined);
  describe(`${impl.name} prefixes`, () => {
    for (const fixture of dnsFixtures) {
      test(`DNS ${fixture.name}`, () => {
        expect(impl.dns(fixture.bytes).code).toBe(Code.ok);
        for (let n = 0; n < fixture.bytes.length; n++) {
          expect(NOT_OK).toContain(impl.dns(fixture.bytes.subarray(0, n)).code);
        }
      });
    }
    for (const fixture of quicHeaderFixtures) {
      test(`QUIC header ${fixture.name}`, () => {
        expect(impl.quicHeader(fixture.bytes).code).toBe(Code.ok);
        for (let n = 0; n < fixture.bytes.length; n++) {
          expect(NOT_OK).toContain(impl.quicHeader(fixture.bytes.subarray(0, n)).code);
        }
      });
    }
  });
}

describe("wasm prefixes", () => {
  const parsers = parsersInstantiate();
  const quic = new QuicParser(parsers);
  const tls = new TlsParser(parsers);

  for (const fixture of quicInitialFixtures) {
    test(`QUIC Initial ${fixture.name}`, () => {
      quic.resetContexts();
      let code = -1;
      for (const packet of fixture.packets) {
        for (let n = 0; n < packet.length; n++) {
          const offset = parsers.place(packet.subarray(0, n), 0);
          expect(NOT_OK).toContain(quic.parseInitial(offset, n).code);
        }
        code = quic.parseInitial(parsers.place(packet, 0), packet.length).code;
      }
      expect(code).toBe(Code.ok);
      expect(quic.initial.sni()).toBe(fixture.sni);
    });
  }

  for (const fixture of tlsFixtures) {
    test(`TLS ${fixture.name}`, () => {
      for (let n = 0; n < fixture.bytes.length; n++) {
        const offset = parsers.place(fixture.bytes.subarray(0, n), 0);
        expect(NOT_OK).toContain(tls.parse(offset, n).code);
      }
      expect(tls.parse(parsers.place(fixture.bytes, 0), fixture.bytes.length).code).toBe(Code.ok);
    });
  }
});
