// Configuration: defaults, and errors that name the field and the reason.
import { describe, expect, test } from "bun:test";
import { parseConfig } from "../../src/config/load.ts";
import { problems } from "./config_problems.ts";

describe("config", () => {
  test("the built-in default: loopback TPROXY listeners for both families, DNS and QUIC", () => {
    const c = parseConfig({});
    expect(c.listeners.map((l) => `${l.address}|${l.port}|${l.ipv6}`)).toEqual([
      "127.0.0.1|12345|false",
      "::1|12345|true",
    ]);
    expect(c.intercept.map((r) => r.portRanges)).toEqual([
      [
        [53, 53],
        [443, 443],
      ],
      [
        [53, 53],
        [443, 443],
      ],
    ]);
    expect(c.udp.mapping).toBe("endpoint-independent");
    expect(c.timeoutClassesMs).toEqual([60_000, 10_000, 120_000]);
    expect(c.timeoutClassByPort[53]).toBe(1);
    expect(c.timeoutClassByPort[443]).toBe(2);
    expect(c.timeoutClassByPort[8080]).toBe(0);
  });

  test("each bad value names its field and the reason", () => {
    expect(problems({ udp: { sessionsMax: 3 } })).toEqual([
      "config.udp.sessionsMax: Expected integer to be greater or equal to 16 (got 3)",
    ]);
    expect(problems({ udp: { mapping: "full-cone" } })[0]).toStartWith("config.udp.mapping:");
    expect(problems({ udp: { sessionsMaxx: 5 } })[0]).toBe(
      "config.udp.sessionsMaxx: Unexpected property (got 5)",
    );
    expect(problems({ listeners: [{ name: "a", address: "300.1.1.1", port: 1 }] })).toEqual([
      'config.listeners[0].address: not an IPv4 or IPv6 address (got "300.1.1.1")',
    ]);
    expect(problems({ listeners: [{ name: "a", address: "::1", port: 70000 }] })[0]).toStartWith(
      "config.listeners[0].port: Expected integer to be less or equal to 65535",
    );
    expect(
      problems({
        listeners: [{ name: "a", address: "::1", port: 1 }],
        intercept: [{ listener: "b", ports: [53] }],
      }),
    ).toEqual(['config.intercept[0].listener: no listener named "b"']);
    expect(
      problems({
        listeners: [{ name: "a", address: "::1", port: 1 }],
        intercept: [{ listener: "a", ports: ["90-80"] }],
      })[0],
    ).toStartWith("config.intercept[0].ports[0]: range must be within 1-65535");
    expect(problems({ metrics: { address: "localhost" } })).toEqual([
      'config.metrics.address: not an IPv4 or IPv6 address (got "localhost")',
    ]);
    expect(problems({ metrics: { port: 65536 } })[0]).toStartWith("config.metrics.port:");
    expect(problems({ mark: 1, tproxyMark: 1 })[0]).toStartWith(
      "config.mark: must differ from config.tproxyMark",
    );
    expect(problems([])).toEqual(["config: must be a JSON object"]);
  });

  test("udp.gso on and udp.gro off by default; gro needs a batch that holds a 64-slot span", () => {
    const c = parseConfig({});
    expect([c.udp.gso, c.udp.gro]).toEqual([true, false]);
    expect(parseConfig({ udp: { gro: true } }).udp.gro).toBe(true); // 64 slots of 4096
    expect(problems({ udp: { gro: true, batchCountMax: 32 } })).toEqual([
      "config.udp.gro: a coalesced buffer needs 64 slots (64 datagrams and 64 KiB) but " +
        "udp.batchCountMax is 32; raise it",
    ]);
    // 512-byte slots: 64 KiB takes 128 of them.
    expect(
      problems({ udp: { gro: true, datagramBytesMax: 512, batchCountMax: 64 } })[0],
    ).toStartWith("config.udp.gro: a coalesced buffer needs 128 slots");
    expect(problems({ udp: { gso: "yes" } })[0]).toStartWith("config.udp.gso:");
  });

  test("udp.busyPollUs: 0 (off) by default, 0-100000, worker data plane only", () => {
    expect(parseConfig({}).udp.busyPollUs).toBe(0);
    expect(parseConfig({ udp: { busyPollUs: 200 } }).udp.busyPollUs).toBe(200);
    expect(problems({ udp: { busyPollUs: -1 } })[0]).toStartWith("config.udp.busyPollUs:");
    expect(problems({ udp: { busyPollUs: 100_001 } })[0]).toStartWith("config.udp.busyPollUs:");
    expect(problems({ udp: { busyPollUs: 1.5 } })[0]).toStartWith("config.udp.busyPollUs:");
    expect(problems({ udp: { busyPollUs: 200, dataPlane: "callback" } })).toEqual([
      'config.udp.busyPollUs: 200 needs udp.dataPlane "worker" (the "callback" plane ' +
        "waits on the epoll thread, not on a thread of the data path)",
    ]);
  });

  test("duplicate listeners are refused", () => {
    const p = problems({
      listeners: [
        { name: "a", address: "127.0.0.1", port: 5 },
        { name: "a", address: "127.0.0.1", port: 5 },
      ],
    });
    expect(p).toContain('config.listeners[1].name: duplicate listener name "a"');
    expect(p).toContain(
      "config.listeners[1]: binds udp 127.0.0.1 port 5, as config.listeners[0] does",
    );
  });
});
