// UDP listeners with source "client" (docs/udp_client_source.md): the config accepts
// them, the upstream pool binds one transparent socket per client endpoint to the
// client's own ip:port, and both rule backends deliver the server's replies to it.
import { describe, expect, test } from "bun:test";
import { parseConfig } from "../../src/config/load.ts";
import type { Host } from "../../src/doctor/check.ts";
import { kernelSupport } from "../../src/doctor/system.ts";
import { UpstreamPool } from "../../src/egress/upstream_pool.ts";
import { iptablesRestoreInput } from "../../src/rules/iptables.ts";
import { nftRuleset, TABLE_NAME } from "../../src/rules/nft.ts";
import { parseAddress } from "../../src/sys/addr.ts";
import type { RelayLib } from "../../src/sys/ffi.ts";
import { SOCK } from "../../src/sys/layout.ts";
import {
  iptablesApplyInScratchNamespace,
  labUnavailableReason,
  nftApplyInScratchNamespace,
} from "../lab/netns.ts";
import { skipped } from "../lab/skip_policy.ts";

const RAW = {
  listeners: [
    { name: "u4", address: "127.0.0.1", port: 12345, source: "client" },
    { name: "u6", address: "::1", port: 12345, source: "client" },
    { name: "plain4", address: "127.0.0.1", port: 12346 },
  ],
  intercept: [
    { listener: "u4", ports: [7001] },
    { listener: "u6", ports: [7001] },
    { listener: "plain4", ports: [53] },
  ],
};
const PLAIN = {
  listeners: [RAW.listeners[2]],
  intercept: [RAW.intercept[2]],
};
const MARK = "0x1ee7";

const trimmed = (text: string) => text.split("\n").map((l) => l.trim());

describe("UDP client source: config", () => {
  test("a UDP listener may take source client; the default stays relay", () => {
    const config = parseConfig(RAW);
    expect(config.listeners.map((l) => l.source)).toEqual(["client", "client", "relay"]);
    expect(config.warnings).toEqual([]);
  });

  test("firewall.mode local warns: every client is this host, which lends no address", () => {
    const config = parseConfig({ ...RAW, firewall: { mode: "local" } });
    expect(config.warnings).toEqual([
      'config.listeners[0].source: "client" serves clients routed through this host; with ' +
        'firewall.mode "local" every client is this host itself, whose flows leave from ' +
        'the relay\'s address as with source "relay"',
    ]);
  });
});

describe("UDP client source: rules", () => {
  test("nft: replies to client-source sockets are delivered before the mark return", () => {
    const lines = trimmed(nftRuleset(parseConfig(RAW)));
    const socketRule =
      "meta l4proto udp ct direction reply socket transparent 1 socket wildcard 0 " +
      "meta mark set 0x1 accept";
    const markReturn = `ct direction reply ct mark ${MARK} counter return`;
    expect(lines).toContain(socketRule);
    expect(lines).toContain(markReturn);
    expect(lines.indexOf(socketRule)).toBeLessThan(lines.indexOf(markReturn));
    const tproxy = lines.findIndex((l) => l.includes("tproxy ip to 127.0.0.1:12345"));
    expect(lines.indexOf(markReturn)).toBeLessThan(tproxy);
  });

  test("nft: without a client-source UDP listener the ruleset is as before", () => {
    const lines = trimmed(nftRuleset(parseConfig(PLAIN)));
    expect(lines.some((l) => l.startsWith("meta l4proto udp"))).toBe(false);
    expect(lines).toContain(`ct mark ${MARK} counter return`);
    expect(lines.some((l) => l.includes("ct direction reply ct mark"))).toBe(false);
  });

  test("iptables: the same two rules, both families", () => {
    const config = parseConfig(RAW);
    for (const family of [4, 6] as const) {
      const lines = iptablesRestoreInput(config, family).split("\n");
      const socketRule =
        "-A TRELAY_PRE -p udp -m conntrack --ctdir REPLY -m socket --transparent " +
        "-j TRELAY_DIVERT";
      const markReturn =
        `-A TRELAY_PRE -m conntrack --ctdir REPLY -m connmark --mark ${MARK} ` + "-j RETURN";
      expect(lines).toContain(socketRule);
      expect(lines).toContain(markReturn);
      expect(lines.indexOf(socketRule)).toBeLessThan(lines.indexOf(markReturn));
      // No --nowildcard: a listener on 0.0.0.0 / :: is never a reply's socket.
      expect(lines.some((l) => l.includes("--nowildcard"))).toBe(false);
    }
    const plain = iptablesRestoreInput(parseConfig(PLAIN), 4).split("\n");
    expect(plain).toContain(`-A TRELAY_PRE -m connmark --mark ${MARK} -j RETURN`);
    expect(plain.some((l) => l.includes("-p udp -m conntrack"))).toBe(false);
  });

  const reason = labUnavailableReason();
  test("the kernel accepts both rule sets (scratch namespace)", () => {
    if (skipped(reason, "client-source rules in a scratch namespace")) return;
    const config = parseConfig(RAW);
    const listed = nftApplyInScratchNamespace(nftRuleset(config), TABLE_NAME);
    expect(listed).toContain("socket transparent 1 socket wildcard 0");
    const saved = iptablesApplyInScratchNamespace(
      iptablesRestoreInput(config, 4),
      iptablesRestoreInput(config, 6),
    );
    expect(saved).toContain("-m socket --transparent");
  });
});

describe("UDP client source: doctor", () => {
  test("the kernel probe checks the expressions client-source UDP needs, only then", () => {
    const inputs: string[] = [];
    const host = {
      run: (_argv: string[], input: string) => {
        inputs.push(input);
        return { status: 0, stdout: "", stderr: "" };
      },
    } as unknown as Host;
    kernelSupport(parseConfig(RAW), host);
    kernelSupport(parseConfig({ ...RAW, firewall: { backend: "iptables" } }), host);
    kernelSupport(parseConfig(PLAIN), host);
    expect(inputs).toHaveLength(4);
    expect(inputs[0]).toContain("ct direction reply socket transparent 1 socket wildcard 0");
    for (const iptables of inputs.slice(1, 3)) {
      expect(iptables).toContain("-p udp -m conntrack --ctdir REPLY -m socket --transparent");
    }
    expect(inputs[3]).not.toContain("socket wildcard");
  });
});

/** Upstream socket options of a relay-source listener (the relay's address, port 0). */
const RELAY = {
  outbound: 0,
  perSession: false,
  bindAddr4: null,
  bindAddr6: null,
  mark: null,
  interface: null,
  clientSource: false,
};

/** A stand-in for the C helper: records rl_socket calls, hands out fd numbers. */
function fakeLib() {
  const calls: Array<{ flags: number; addr: string; port: number; mark: number }> = [];
  const closed: number[] = [];
  let next = 100;
  const lib = {
    rl_socket(flags: number, addr: Uint8Array, port: number, mark: number) {
      calls.push({ flags, addr: Buffer.from(addr).toString("hex"), port, mark });
      return next++;
    },
    // The kernel's choice for relay-source sockets; the bound port otherwise.
    rl_local_port: (fd: number) => {
      const call = calls[fd - 100];
      return call.port === 0 ? 40000 + fd : call.port;
    },
    rl_close: (fd: number) => {
      closed.push(fd);
      return 0;
    },
  };
  return { lib: lib as unknown as RelayLib, calls, closed };
}

/** The 4 key words of an address, as the data path reads them from the 16-byte form. */
function words(text: string): [number, number, number, number] {
  const w = new Uint32Array(parseAddress(text)!.slice().buffer);
  return [w[0], w[1], w[2], w[3]];
}

describe("UDP client source: upstream pool", () => {
  const config = parseConfig(RAW);
  const make = () => {
    const fake = fakeLib();
    let token = 0;
    const pool = new UpstreamPool(
      fake.lib,
      config,
      16,
      () => token++,
      () => {},
      () => 0,
    );
    return { pool, ...fake };
  };

  const OWN = { ...RELAY, clientSource: true };

  test("bound to the client's ip:port, transparent, marked; one per client endpoint", () => {
    const { pool, calls, closed } = make();
    const client = words("198.18.0.2");
    const a = pool.acquire(0, ...client, 40001, 0, false, OWN);
    const b = pool.acquire(1, ...client, 40001, 0, false, OWN); // another destination
    const c = pool.acquire(2, ...client, 40002, 0, false, OWN); // another client port
    expect(a).toBeGreaterThanOrEqual(0);
    expect(b).toBe(a);
    expect(c).not.toBe(a);
    expect(calls).toHaveLength(2);
    const v4 = Buffer.from(parseAddress("198.18.0.2")!).toString("hex");
    expect(calls[0]).toEqual({
      flags: SOCK.recvErr | SOCK.transparent | SOCK.reuseAddr,
      addr: v4,
      port: 40001,
      mark: config.mark,
    });
    expect(calls[1].port).toBe(40002);
    // Not the relay's own port: a local datagram from 40001 is no loop of ours.
    expect(pool.holdsPort(40001)).toBe(false);
    // Bound to its endpoint: it cannot follow a NAT rebinding of its one session.
    expect(pool.soleSession(c)).toBe(true);
    expect(pool.rebind(c, ...client, 40003, 0)).toBe(false);
    pool.release(a);
    expect(closed).toEqual([]);
    pool.release(b);
    pool.release(c);
    expect(closed).toEqual([100, 101]);
    expect(pool.count).toBe(0);
  });

  test("IPv6: the client's address and port, v6-only", () => {
    const { pool, calls } = make();
    const upstream = pool.acquire(0, ...words("2001:2:0:1::2"), 5353, 0, true, OWN);
    expect(upstream).toBeGreaterThanOrEqual(0);
    expect(calls[0].flags).toBe(
      SOCK.recvErr | SOCK.transparent | SOCK.reuseAddr | SOCK.ipv6 | SOCK.v6Only,
    );
    expect(calls[0].addr).toBe(Buffer.from(parseAddress("2001:2:0:1::2")!).toString("hex"));
    expect(calls[0].port).toBe(5353);
  });

  test("the same client endpoint through a relay-source listener gets its own socket", () => {
    const { pool, calls } = make();
    const client = words("198.18.0.2");
    const own = pool.acquire(0, ...client, 40001, 0, false, OWN);
    const relay = pool.acquire(1, ...client, 40001, 0, false, RELAY);
    expect(relay).not.toBe(own);
    expect(calls[1].port).toBe(0);
    expect(calls[1].flags & SOCK.transparent).toBe(0);
    expect(pool.holdsPort(40000 + 101)).toBe(true);
  });
});

describe("upstream pool: a port closed less than 2 s ago is not taken again at once", () => {
  const config = parseConfig(PLAIN);
  const PER_SESSION = { ...RELAY, perSession: true };
  const client = words("198.18.0.2");

  /** A C helper whose bind to port 0 hands out `ports` in order (the kernel's choice). */
  function scripted(ports: number[]) {
    const closed: number[] = [];
    const portOf = new Map<number, number>();
    let next = 100;
    const lib = {
      rl_socket: () => {
        if (ports.length === 0) return -24; // EMFILE
        portOf.set(next, ports.shift()!);
        return next++;
      },
      rl_local_port: (fd: number) => portOf.get(fd)!,
      rl_close: (fd: number) => {
        closed.push(fd);
        return 0;
      },
    };
    let nowMs = 0;
    let token = 0;
    const pool = new UpstreamPool(
      lib as unknown as RelayLib,
      config,
      16,
      () => token++,
      () => {},
      () => 0,
      () => nowMs,
    );
    return { pool, closed, portOf, advance: (ms: number) => (nowMs += ms) };
  }

  test("the kernel hands the ended flow's port back: the relay takes another one", () => {
    const { pool, closed, portOf } = scripted([40001, 40001, 40001, 40002]);
    const a = pool.acquire(0, ...client, 5000, 0, false, PER_SESSION);
    pool.release(a); // fd 100 on 40001 closed: a reply to it may still be on its way
    const b = pool.acquire(1, ...client, 5001, 0, false, PER_SESSION);
    expect(b).toBeGreaterThanOrEqual(0);
    expect(pool.holdsPort(40002)).toBe(true);
    expect(pool.holdsPort(40001)).toBe(false);
    // The two refused sockets were held while looking (so 40001 could not come back),
    // then closed.
    expect(closed).toEqual([100, 101, 102]);
    expect(portOf.get(103)).toBe(40002);
    expect(pool.portsQuarantined).toBe(2);
  });

  test("past the quarantine the port is anyone's again", () => {
    const { pool, closed, advance } = scripted([40001, 40001]);
    pool.release(pool.acquire(0, ...client, 5000, 0, false, PER_SESSION));
    advance(2000);
    expect(pool.acquire(1, ...client, 5001, 0, false, PER_SESSION)).toBeGreaterThanOrEqual(0);
    expect(pool.holdsPort(40001)).toBe(true);
    expect(closed).toEqual([100]);
    expect(pool.portsQuarantined).toBe(0);
  });

  test("bounded: 4 refusals, then the port is taken; no socket to be had: the last one", () => {
    const many = scripted([40001, 40001, 40001, 40001, 40001, 40001]);
    many.pool.release(many.pool.acquire(0, ...client, 5000, 0, false, PER_SESSION));
    expect(many.pool.acquire(1, ...client, 5001, 0, false, PER_SESSION)).toBeGreaterThanOrEqual(0);
    expect(many.closed).toEqual([100, 101, 102, 103, 104]); // fd 105 kept, on 40001
    expect(many.pool.holdsPort(40001)).toBe(true);

    const short = scripted([40001, 40001]); // then EMFILE
    short.pool.release(short.pool.acquire(0, ...client, 5000, 0, false, PER_SESSION));
    expect(short.pool.acquire(1, ...client, 5001, 0, false, PER_SESSION)).toBeGreaterThanOrEqual(0);
    expect(short.closed).toEqual([100]); // fd 101 kept: better than no flow at all
    expect(short.pool.lastFailure).toBe(null);
  });
});
