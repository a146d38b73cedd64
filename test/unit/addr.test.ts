import { describe, expect, test } from "bun:test";
import { formatAddress, parseAddress, parseIPv4, parseIPv6 } from "../../src/sys/addr.ts";

describe("addresses", () => {
  test("IPv4 parses strictly", () => {
    expect([...parseIPv4("198.18.0.1")!]).toEqual([198, 18, 0, 1]);
    for (const bad of [
      "198.18.0",
      "198.18.0.1.1",
      "256.1.1.1",
      "01.1.1.1",
      "1..1.1",
      "a.b.c.d",
      "",
    ]) {
      expect(parseIPv4(bad)).toBeNull();
    }
  });

  test("IPv6 text forms round-trip in RFC 5952 form", () => {
    const cases: Array<[string, string]> = [
      ["2001:2::1", "2001:2::1"],
      ["2001:0002:0000:0000:0000:0000:0000:0001", "2001:2::1"],
      ["::", "::"],
      ["::1", "::1"],
      ["1::", "1::"],
      ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
      ["::ffff:198.18.0.1", "198.18.0.1"],
    ];
    for (const [input, output] of cases) expect(formatAddress(parseAddress(input)!)).toBe(output);
    for (const bad of ["1:::2", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", ":1", "1:", "g::1"]) {
      expect(parseIPv6(bad)).toBeNull();
    }
  });
});
