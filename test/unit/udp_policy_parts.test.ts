// The UDP policy's data-path parts on their own: the hold buffer's bounds and order, and
// a forward outbound's target choice and health (src/udp/hold_buffer.ts,
// src/egress/outbounds.ts).
import { describe, expect, test } from "bun:test";
import { Outbounds } from "../../src/egress/outbounds.ts";
import { UdpCounters } from "../../src/metrics.ts";
import { parseEndpoint } from "../../src/policy/config.ts";
import type { OutboundConfig } from "../../src/policy/config.ts";
import { HoldBuffer, HoldResult } from "../../src/udp/hold_buffer.ts";
import { udpPlaneConfig } from "../../src/udp/plane.ts";
import { parseConfig } from "../../src/config/load.ts";

const SLOT = 64;

/** A source of words: datagram k is `k` repeated. */
function source(k: number): Uint32Array {
  return new Uint32Array(SLOT / 4).fill(k);
}

describe("hold buffer", () => {
  test("keeps a flow's datagrams in order, copied; its bound first, then the arena's", () => {
    const hold = new HoldBuffer(SLOT, SLOT * 5, 8, 3, 1000);
    hold.begin(1, 10);
    hold.begin(2, 20);
    for (let k = 1; k <= 3; k++)
      expect(hold.hold(1, source(k), 0, 10 + k, k)).toBe(HoldResult.Held);
    expect(hold.hold(1, source(4), 0, 14, 0)).toBe(HoldResult.FlowFull);
    expect(hold.hold(2, source(5), 0, 15, 0)).toBe(HoldResult.Held);
    expect(hold.hold(2, source(6), 0, 16, 0)).toBe(HoldResult.Held);
    // Five slots in all: the arena is full though flow 2 is under its own bound.
    expect(hold.hold(2, source(7), 0, 17, 0)).toBe(HoldResult.ArenaFull);
    expect(hold.bytesUsed).toBe(5 * SLOT);
    const seen: number[][] = [];
    for (let slot = hold.firstOf(1); slot >= 0; slot = hold.after(slot)) {
      seen.push([hold.arena[hold.offsetOf(slot)], hold.length[slot], hold.scope[slot]]);
    }
    expect(seen).toEqual([
      [1, 11, 1],
      [2, 12, 2],
      [3, 13, 3],
    ]);
    expect(hold.oldest).toBe(1);
    hold.end(1);
    expect(hold.oldest).toBe(2);
    expect(hold.count).toBe(1);
    expect(hold.bytesUsed).toBe(2 * SLOT);
    hold.end(1); // twice: nothing more
    expect(hold.count).toBe(1);
    hold.end(2);
    expect(hold.oldest).toBe(-1);
    expect(hold.bytesUsed).toBe(0);
  });

  test("a flow's byte bound counts bytes, not slots", () => {
    const hold = new HoldBuffer(SLOT, SLOT * 8, 4, 8, 40);
    hold.begin(0, 0);
    expect(hold.hold(0, source(1), 0, 30, 0)).toBe(HoldResult.Held);
    expect(hold.hold(0, source(2), 0, 11, 0)).toBe(HoldResult.FlowFull);
    expect(hold.hold(0, source(2), 0, 10, 0)).toBe(HoldResult.Held);
    expect(hold.packetsOf(0)).toBe(2);
  });
});

function forwardConfig(targets: string[]): OutboundConfig {
  return {
    name: "fwd",
    type: "forward",
    targets: targets.map((t) => parseEndpoint(t)!),
    healthCheck: { answerTimeoutMs: 100, failuresMax: 2, retryIntervalMs: 1000 },
  };
}

describe("forward outbound", () => {
  test("a stable choice among the targets of the flow's family; failover and return", () => {
    const counters = new UdpCounters();
    const outbounds = new Outbounds(16, counters);
    outbounds.setPolicy([forwardConfig(["198.18.1.3:53", "198.18.1.4:53", "[2001:2::3]:53"])]);
    const runtime = outbounds.ofPolicy(0);
    const f = outbounds.forward(runtime)!;
    expect(f.pick(0, false, 0)).toBe(0);
    expect(f.pick(1, false, 0)).toBe(1);
    expect(f.pick(2, false, 0)).toBe(0); // the IPv6 target is skipped for IPv4
    expect(f.pick(2, true, 0)).toBe(2);
    outbounds.acquire(runtime);
    // Two unanswered datagrams in a row to target 0: down.
    outbounds.sent(5, runtime, 0, 0);
    outbounds.sent(5, runtime, 0, 50); // still the first one awaited
    outbounds.expire(99);
    expect(counters.forwardAnswerTimeouts).toBe(0);
    outbounds.expire(100);
    expect(counters.forwardAnswerTimeouts).toBe(1);
    outbounds.sent(5, runtime, 0, 200);
    outbounds.expire(300);
    expect(counters.forwardTargetsDown).toBe(1);
    expect(f.pick(0, false, 400)).toBe(1);
    // After retryIntervalMs it is offered flows again.
    expect(f.pick(0, false, 1300)).toBe(0);
    // An answer resets the count.
    outbounds.sent(5, runtime, 1, 1300);
    outbounds.answer(5, runtime, 1);
    outbounds.expire(5000);
    expect(counters.forwardAnswerTimeouts).toBe(2);
    // A flow that ends while its answer is overdue counts.
    outbounds.sent(6, runtime, 1, 6000);
    outbounds.release(runtime, 6, 6100);
    expect(counters.forwardAnswerTimeouts).toBe(3);
  });

  test("a reload keeps an unchanged outbound's health; a removed one lives while held", () => {
    const outbounds = new Outbounds(4, new UdpCounters());
    const a = forwardConfig(["198.18.1.3:53"]);
    const b = { ...forwardConfig(["198.18.1.4:53"]), name: "other" };
    outbounds.setPolicy([a, b]);
    const ra = outbounds.ofPolicy(0);
    const rb = outbounds.ofPolicy(1);
    outbounds.acquire(rb);
    outbounds.setPolicy([forwardConfig(["198.18.1.3:53"])]);
    expect(outbounds.ofPolicy(0)).toBe(ra);
    expect(outbounds.name(rb)).toBe("other"); // still held
    expect(outbounds.policyIndexOf(rb)).toBe(0x7fff);
    outbounds.release(rb, 0, 0);
    expect(outbounds.name(rb)).toBe("?");
  });
});

describe("the UDP plane's config", () => {
  test("rule listener indexes follow the UDP listeners only", () => {
    const config = parseConfig({
      listeners: [
        { name: "tcp", protocol: "tcp", address: "127.0.0.1", port: 1 },
        { name: "udp", address: "127.0.0.1", port: 2 },
      ],
      rules: [
        { listener: "udp", action: "drop" },
        { listener: "tcp", action: "drop" },
      ],
    });
    const udp = udpPlaneConfig(config);
    expect(udp.listeners.map((l) => l.name)).toEqual(["udp"]);
    expect(udp.policy.rules.map((r) => r.listeners)).toEqual([[0], []]);
  });
});
