// `relay sessions` queries: validation of the untrusted request, the text filters, the
// bounded top-k selection (against a sort oracle), and the selection over a real session
// table, as the UDP Worker runs it.
import { describe, expect, test } from "bun:test";
import {
  parseSessionQuery,
  SESSIONS_LIMIT_DEFAULT,
  SESSIONS_LIMIT_MAX,
  textMatches,
} from "../../src/control/query.ts";
import { TopK } from "../../src/control/top_k.ts";
import { selectSessions } from "../../src/flow/select.ts";
import { SessionTable } from "../../src/flow/table.ts";
import { parseAddress } from "../../src/sys/addr.ts";

describe("session queries", () => {
  test("defaults, and every field checked", () => {
    expect(parseSessionQuery({ cmd: "sessions" })).toEqual({
      client: null,
      target: null,
      name: null,
      listener: null,
      sort: "bytes",
      limit: SESSIONS_LIMIT_DEFAULT,
    });
    expect(parseSessionQuery({ target: "=198.18.1.2:7001", sort: "idle", limit: 0 })).toEqual(
      expect.objectContaining({ target: "=198.18.1.2:7001", sort: "idle", limit: 0 }),
    );
    expect(parseSessionQuery({ sort: "name" })).toBe(
      "sort: expected one of bytes, packets, age, idle",
    );
    expect(parseSessionQuery({ limit: SESSIONS_LIMIT_MAX + 1 })).toBe(
      `limit: expected an integer 0-${SESSIONS_LIMIT_MAX}`,
    );
    expect(parseSessionQuery({ limit: 1.5 })).toContain("limit:");
    expect(parseSessionQuery({ client: 7 })).toContain("client: expected a string");
    expect(parseSessionQuery({ name: "x".repeat(257) })).toContain("name: expected a string");
  });

  test("filters: substring, =exact, and no text never matches a filter", () => {
    expect(textMatches("198.18.0.2:4000", null)).toBe(true);
    expect(textMatches("198.18.0.2:4000", "18.0.2")).toBe(true);
    expect(textMatches("198.18.1.20:7001", "=198.18.1.2:7001")).toBe(false);
    expect(textMatches("198.18.1.2:7001", "=198.18.1.2:7001")).toBe(true);
    expect(textMatches(null, "example")).toBe(false);
    expect(textMatches(null, null)).toBe(true);
  });

  test("TopK keeps the largest keys in order, stable for equal keys (sort oracle)", () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    const top = new TopK(50);
    for (const limit of [0, 1, 7, 50]) {
      const keys = Array.from({ length: 500 }, () => Math.floor(random() * 40));
      top.reset(limit);
      keys.forEach((k, i) => {
        top.offer(i, k);
      });
      const oracle = keys
        .map((k, i) => ({ k, i }))
        .sort((a, b) => b.k - a.k || a.i - b.i)
        .slice(0, limit);
      expect(Array.from(top.items.subarray(0, top.count))).toEqual(oracle.map((o) => o.i));
      expect(Array.from(top.keys.subarray(0, top.count))).toEqual(oracle.map((o) => o.k));
    }
    expect(() => top.reset(51)).toThrow("limit above capacity");
  });

  test("selectSessions filters on the text forms and sorts descending", () => {
    const table = new SessionTable(64, [60_000]);
    const flows = [
      // client port, target, bytes to target, name, listener, created
      [4001, "198.18.1.2", 100, null, 0, 10],
      [4002, "198.18.1.2", 900, "www.relay.test", 0, 20],
      [4003, "198.18.1.20", 5000, null, 0, 30],
      [4004, "198.18.1.2", 300, null, 1, 5],
    ] as const;
    for (const [port, target, bytes, name, listener, created] of flows) {
      table.key.fill(0);
      table.key.set(new Uint32Array(parseAddress("198.18.0.2")!.buffer), 0);
      table.key.set(new Uint32Array(parseAddress(target)!.buffer), 4);
      table.key[8] = (port << 16) | 7001;
      const s = table.create(created, 0);
      table.bytesToTarget[s] = bytes;
      table.packetsToTarget[s] = 10_000 - bytes;
      table.name[s] = name;
      table.listener[s] = listener;
    }
    const names = ["udp4", "echo4"];
    const top = new TopK(SESSIONS_LIMIT_MAX);
    const run = (fields: Record<string, unknown>) => {
      const query = parseSessionQuery(fields);
      if (typeof query === "string") throw new Error(query);
      const matched = selectSessions(table, query, names, top);
      const clients = Array.from(top.items.subarray(0, top.count)).map(
        (s) => table.keyWord(s, 8) >>> 16,
      );
      return { matched, clients };
    };
    expect(run({})).toEqual({ matched: 4, clients: [4003, 4002, 4004, 4001] });
    expect(run({ target: "198.18.1.2:", sort: "bytes", limit: 2 })).toEqual({
      matched: 3,
      clients: [4002, 4004],
    });
    expect(run({ target: "=198.18.1.20:7001" })).toEqual({ matched: 1, clients: [4003] });
    expect(run({ sort: "packets", limit: 1 })).toEqual({ matched: 4, clients: [4001] });
    expect(run({ sort: "age" })).toEqual({ matched: 4, clients: [4004, 4001, 4002, 4003] });
    expect(run({ name: "relay.test" })).toEqual({ matched: 1, clients: [4002] });
    expect(run({ listener: "=echo4" })).toEqual({ matched: 1, clients: [4004] });
    expect(run({ client: ":4003" })).toEqual({ matched: 1, clients: [4003] });
    expect(run({ limit: 0 })).toEqual({ matched: 4, clients: [] });
  });
});
