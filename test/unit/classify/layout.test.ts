// The module's fixed layout and limits: exported sizes match the TS constants, memory cannot
// grow, the batch entry point stops exactly at its limit, and descriptors outside the packet
// area are rejected without reading there.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  Code,
  Field,
  HELLO_FLAG_ALPN,
  HELLO_FLAG_ALPN_TRUNCATED,
  HELLO_FLAG_SNI,
  Kind,
  RESULT_WORDS,
  RESULT_WORDS_SHIFT,
  WORD_CODE,
  WORD_KIND,
} from "../../../src/classify/layout.ts";
import { DnsParser } from "../../../src/classify/dns.ts";
import { QuicParser } from "../../../src/classify/quic.ts";
import { TlsParser } from "../../../src/classify/tls.ts";
import { parsersInstantiate } from "../../../src/classify/wasm.ts";
import { clientHello, dnsQuery, hex, tlsRecords } from "../../fixtures/classify/build.ts";
import { RFC9001_CLIENT_INITIAL_HEX } from "../../fixtures/classify/rfc_quic_vectors.ts";

const parsers = parsersInstantiate();
const e = parsers.exports;

function code(index: number): number {
  return parsers.resultWords[(index << RESULT_WORDS_SHIFT) + WORD_CODE];
}

test("layout: sizes, alignment, regions inside memory and disjoint", () => {
  expect(parsers.packetArea.bytesMax).toBe(512 * 1024);
  expect(parsers.packetArea.offset % 64).toBe(0);
  expect(parsers.batchCountMax).toBe(256);
  expect(e.result_size()).toBe(RESULT_WORDS * 4);
  expect(e.descriptor_size()).toBe(16);
  const memoryBytes = parsers.memory.buffer.byteLength;
  expect(memoryBytes).toBe(2 * 1024 * 1024);
  const regions = [
    [parsers.packetArea.offset, parsers.packetArea.bytesMax],
    [e.descriptor_table_offset(), parsers.batchCountMax * 16],
    [e.result_table_offset(), (parsers.batchCountMax + 1) * RESULT_WORDS * 4],
    [e.text_table_offset(), (parsers.batchCountMax + 1) * e.text_size()],
  ].sort((a, b) => a[0] - b[0]);
  for (let i = 0; i < regions.length; i++) {
    expect(regions[i][0] + regions[i][1]).toBeLessThanOrEqual(memoryBytes);
    if (i > 0) expect(regions[i - 1][0] + regions[i - 1][1]).toBeLessThanOrEqual(regions[i][0]);
  }
});

test("memory is fixed: grow traps, so views and C pointers stay valid", () => {
  expect(() => parsers.memory.grow(1)).toThrow();
  expect(parsers.bytes.byteLength).toBe(parsers.memory.buffer.byteLength);
});

test("batch: mixed kinds in one call, results per descriptor", () => {
  const dns = dnsQuery("batch.test");
  const quic = hex(RFC9001_CLIENT_INITIAL_HEX);
  const tls = tlsRecords(clientHello({ sni: "tls.batch.test" }));
  const dnsOffset = parsers.place(dns, 0);
  const quicOffset = parsers.place(quic, 2048);
  const tlsOffset = parsers.place(tls, 4096);
  parsers.describe(0, dnsOffset, dns.length, Kind.dns);
  parsers.describe(1, quicOffset, quic.length, Kind.quicHeader);
  parsers.describe(2, quicOffset, quic.length, Kind.quicInitial);
  parsers.describe(3, tlsOffset, tls.length, Kind.tls);
  parsers.describe(4, tlsOffset, tls.length, Kind.tlsStream, 5);
  parsers.describe(5, dnsOffset, dns.length, 99);
  expect(parsers.batchParse(6)).toBe(6);
  expect([0, 1, 2, 3, 4].map(code)).toEqual([Code.ok, Code.ok, Code.ok, Code.ok, Code.ok]);
  expect(code(5)).toBe(Code.unsupported);
  expect(parsers.resultWords[(5 << RESULT_WORDS_SHIFT) + WORD_KIND]).toBe(Kind.none);
  expect(new DnsParser(parsers).read(0).name()).toBe("batch.test");
  expect(new QuicParser(parsers).readInitial(2).sni()).toBe("example.com");
  expect(new TlsParser(parsers).read(4).sni()).toBe("tls.batch.test");
});

test("batch: exactly the limit, and one past it, parse batchCountMax", () => {
  const dns = dnsQuery("limit.test");
  const slotBytes = 2048;
  for (let i = 0; i < parsers.batchCountMax; i++) {
    const offset = parsers.place(dns, i * slotBytes);
    parsers.describe(i, offset, dns.length, Kind.dns);
  }
  parsers.resultWords.fill(0xffffffff);
  expect(parsers.batchParse(parsers.batchCountMax)).toBe(parsers.batchCountMax);
  for (let i = 0; i < parsers.batchCountMax; i++) expect(code(i)).toBe(Code.ok);
  // The single record was not touched by the batch.
  expect(code(parsers.singleIndex)).toBe(0xffffffff);
  expect(parsers.batchParse(parsers.batchCountMax + 1)).toBe(parsers.batchCountMax);
  expect(parsers.batchParse(0xffffffff)).toBe(parsers.batchCountMax);
  expect(parsers.batchParse(0)).toBe(0);
});

test("offsets outside the packet area are malformed, at the edges exactly", () => {
  const { offset, bytesMax } = parsers.packetArea;
  const dns = dnsQuery("edge.test");
  parsers.place(dns, bytesMax - dns.length);
  expect(e.dns_parse(offset + bytesMax - dns.length, dns.length)).toBe(Code.ok);
  expect(e.dns_parse(offset + bytesMax - dns.length + 1, dns.length)).toBe(Code.malformed);
  expect(e.dns_parse(offset - 1, 12)).toBe(Code.malformed);
  expect(e.dns_parse(0, 12)).toBe(Code.malformed);
  expect(e.dns_parse(offset, bytesMax + 1)).toBe(Code.malformed);
  expect(e.dns_parse(0xffffffff, 0xffffffff)).toBe(Code.malformed);
  expect(e.quic_initial_parse(offset + bytesMax, 1)).toBe(Code.malformed);
  expect(e.tls_parse(offset, 0)).toBe(Code.short);
  expect(e.dns_parse(offset + bytesMax, 0)).toBe(Code.short);
});

test("integer arguments at 0 and max do not trap", () => {
  for (const value of [0, 1, 0x7fffffff, 0x80000000, 0xffffffff]) {
    expect(() => e.quic_header_parse(parsers.packetArea.offset, 64, value)).not.toThrow();
    expect(() => e.quic_client_keys_derive(value, parsers.packetArea.offset, 8)).not.toThrow();
    expect(() => e.tls_stream_parse(value, parsers.packetArea.offset, 64)).not.toThrow();
  }
});

test("every field index in src/classify/layout.ts equals wasm/src/layout.zig's", () => {
  // The Zig file is the source of truth; snake_case there is camelCase here.
  const zig = readFileSync(join(import.meta.dir, "../../../wasm/src/layout.zig"), "utf8");
  const prefixes = ["dns_", "quic_", "hello_", "initial_", "stream_"];
  let checked = 0;
  for (const line of zig.split("\n")) {
    const match = /^pub const ([a-z0-9_]+)(?:: u32)? = (\d+);/.exec(line);
    if (match === null || !prefixes.some((p) => match[1].startsWith(p))) continue;
    const name = match[1];
    const value = Number(match[2]);
    if (name.startsWith("hello_flag_")) {
      const flags: Record<string, number> = {
        hello_flag_sni: HELLO_FLAG_SNI,
        hello_flag_alpn: HELLO_FLAG_ALPN,
        hello_flag_alpn_truncated: HELLO_FLAG_ALPN_TRUNCATED,
      };
      expect(flags[name]).toBe(value);
    } else {
      const camel = name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
      expect([camel, (Field as Record<string, number>)[camel]]).toEqual([camel, value]);
    }
    checked++;
  }
  expect(checked).toBe(Object.keys(Field).length + 3);
});
