// A forward outbound's target choice and passive health (src/egress/forward_targets.ts):
// stable per flow, spread over the targets, down after failuresMax failures in a row,
// tried again after retryIntervalMs, and never a refusal when all are down.
import { describe, expect, test } from "bun:test";
import { ForwardTargets, flowHash } from "../../src/egress/forward_targets.ts";
import { parseEndpoint } from "../../src/policy/config.ts";

const endpoints = ["198.18.1.2:443", "198.18.1.3:443", "198.18.1.4:443"].map(
  (t) => parseEndpoint(t)!,
);

function hashOf(clientPort: number): number {
  const words = new Uint32Array(8);
  words[3] = 0x020012c6; // any fixed addresses: only the port varies
  words[7] = 0x020112c6;
  return flowHash(words, 0, ((clientPort << 16) | 443) >>> 0);
}

describe("forward targets", () => {
  test("a flow's choice is stable, and flows spread over every target", () => {
    const t = new ForwardTargets(endpoints, 3, 1000);
    const seen = new Set<number>();
    for (let port = 40000; port < 40100; port++) {
      const k = t.choose(hashOf(port), 0);
      expect(t.choose(hashOf(port), 0)).toBe(k);
      seen.add(k);
    }
    expect(seen.size).toBe(3);
  });

  test("failuresMax failures in a row mark a target down; its flows move, others stay", () => {
    const t = new ForwardTargets(endpoints, 2, 1000);
    const before = Array.from({ length: 100 }, (_, i) => t.choose(hashOf(40000 + i), 0));
    expect(t.failed(0, 0)).toBe(false);
    t.succeeded(0); // a success in between: the count starts again
    expect(t.failed(0, 0)).toBe(false);
    expect(t.failed(0, 10)).toBe(true);
    expect(t.isDown(0, 10)).toBe(true);
    for (let i = 0; i < 100; i++) {
      const k = t.choose(hashOf(40000 + i), 20);
      expect(k).not.toBe(0);
      if (before[i] !== 0) expect(k).toBe(before[i]); // rendezvous: only target 0's move
    }
    // After retryIntervalMs it is tried again; one more failure marks it down at once.
    expect(t.isDown(0, 1010)).toBe(false);
    expect(t.failed(0, 1010)).toBe(true);
    expect(t.isDown(0, 1020)).toBe(true);
  });

  test("all down: the flow's choice among all of them, never a refusal", () => {
    const t = new ForwardTargets(endpoints, 1, 1000);
    const k = t.choose(hashOf(40000), 0);
    for (let i = 0; i < 3; i++) t.failed(i, 0);
    expect(t.choose(hashOf(40000), 5)).toBe(k);
  });
});
