// The loop and fairness guards' structures (issue 8): the local-destination set and the
// per-client bounds, with their invariants.
import { describe, expect, test } from "bun:test";
import { ClientLimits } from "../../src/flow/clients.ts";
import { LocalTargets, TargetKind } from "../../src/flow/local_targets.ts";
import { parseAddress } from "../../src/sys/addr.ts";
import { loadFfi } from "../../src/sys/ffi.ts";

describe("LocalTargets (this host's local table)", () => {
  const targets = new LocalTargets(loadFfi());
  targets.refresh();
  const kind = (text: string) => targets.classifyBytes(parseAddress(text)!);

  test("loopback, unspecified and limited broadcast are local, in every spelling", () => {
    for (const a of [
      "127.0.0.1",
      "127.255.0.9",
      "0.0.0.0",
      "0.1.2.3",
      "255.255.255.255",
      "::1",
      "::",
      "0:0:0:0:0:0:0:1",
      "::ffff:127.0.0.1",
      "::ffff:0.0.0.0",
    ]) {
      expect([a, kind(a)]).toEqual([a, TargetKind.Local]);
    }
  });
  test("multicast is neither local nor relayed", () => {
    for (const a of ["224.0.0.251", "239.255.255.250", "ff02::1", "ff05::1:3"]) {
      expect([a, kind(a)]).toEqual([a, TargetKind.Multicast]);
    }
  });
  test("benchmark-range addresses this host does not have are remote", () => {
    for (const a of ["198.18.1.2", "198.19.255.254", "2001:2::1", "2001:2:0:2::2"]) {
      expect([a, kind(a)]).toEqual([a, TargetKind.Remote]);
    }
  });
  test("every address of this host's interfaces is local", () => {
    const ifs = require("node:os").networkInterfaces() as Record<string, Array<any>>;
    for (const list of Object.values(ifs)) {
      for (const i of list) {
        const a = String(i.address).split("%")[0];
        expect([a, kind(a)]).toEqual([a, TargetKind.Local]);
      }
    }
  });
  test("re-reading an unchanged table is not a change (no session scan follows)", () => {
    const fresh = new LocalTargets(loadFfi());
    fresh.refresh();
    fresh.refresh();
    fresh.refresh();
    expect(fresh.refreshes).toBe(3);
    expect(fresh.changes).toBe(1);
  });

  test("the netlink watch opens and drains without error", () => {
    const fd = targets.openWatch();
    expect(fd).toBeGreaterThan(0);
    targets.onWatchReadable(); // nothing pending: drains 0, refreshes
    targets.closeWatch();
    expect(targets.refreshes).toBeGreaterThanOrEqual(2);
  });
});

describe("ClientLimits", () => {
  const words = (text: string) => new Uint32Array(parseAddress(text)!.buffer);

  test("sessions per client are bounded; other clients are not affected", () => {
    const limits = new ClientLimits(64, 3, 2);
    const a = words("198.18.0.2");
    const b = words("198.18.0.3");
    const slots: number[] = [];
    for (let i = 0; i < 3; i++) {
      expect(limits.maySession(limits.find(a[0], a[1], a[2], a[3]))).toBe(true);
      slots.push(limits.addSession(a[0], a[1], a[2], a[3]));
    }
    expect(limits.maySession(limits.find(a[0], a[1], a[2], a[3]))).toBe(false);
    expect(limits.maySession(limits.find(b[0], b[1], b[2], b[3]))).toBe(true);
    limits.invariants();
    for (const s of slots) limits.removeSession(s);
    expect(limits.clientCount).toBe(0);
    limits.invariants();
  });

  test("reply sockets: counted once per (client, socket), bounded per client", () => {
    const limits = new ClientLimits(64, 64, 2);
    const a = words("2001:2:0:1::2");
    const c = limits.addSession(a[0], a[1], a[2], a[3]);
    const p1 = limits.addReply(c, 7);
    const c2 = limits.addSession(a[0], a[1], a[2], a[3]);
    expect(c2).toBe(c);
    const p1b = limits.addReply(c, 7); // a second session on the same socket
    expect(p1b).toBe(p1);
    expect(limits.replySocketsOf(c)).toBe(1);
    const p2 = limits.addReply(c, 9);
    expect(limits.mayReply(c, 7)).toBe(true); // pinned already
    expect(limits.mayReply(c, 11)).toBe(false); // a third socket
    expect(limits.mayReply(c, -1)).toBe(false); // one not made yet
    expect(() => limits.addReply(c, 11)).toThrow("past its reply bound");
    limits.invariants();
    limits.removeReply(c, p1);
    limits.removeReply(c, p1b);
    limits.removeReply(c, p2);
    limits.removeSession(c);
    limits.removeSession(c);
    expect(limits.clientCount).toBe(0);
    limits.invariants();
  });

  test("a bound as large as the table is no bound (the table's LRU rules)", () => {
    const limits = new ClientLimits(4, 4, 4);
    const a = words("198.18.0.2");
    for (let i = 0; i < 6; i++) limits.addSession(a[0], a[1], a[2], a[3]);
    expect(limits.maySession(limits.find(a[0], a[1], a[2], a[3]))).toBe(true);
  });
});
