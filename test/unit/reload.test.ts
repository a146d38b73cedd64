// Reload: every schema field has a live/restart decision; the diff names what changed;
// a restart field refuses the whole reload; the live parts (timeout classes, per-client
// bounds) keep what is open; the Reloader counts and logs each outcome.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load.ts";
import { describeChanges, planReload, RELOAD_POLICY } from "../../src/config/reload.ts";
import { ConfigSchema } from "../../src/config/schema.ts";
import { Reloader } from "../../src/control/reloader.ts";
import { ClientLimits } from "../../src/flow/clients.ts";
import { EndReason, SessionTable } from "../../src/flow/table.ts";

interface Node {
  type?: string;
  properties?: Record<string, Node>;
}

/** The schema's fields: objects with properties are walked, anything else is one field. */
function schemaFields(node: Node, prefix = ""): string[] {
  if (node.type !== "object" || !node.properties) return [prefix];
  return Object.entries(node.properties).flatMap(([name, child]) =>
    schemaFields(child, prefix === "" ? name : `${prefix}.${name}`),
  );
}

const BASE = {
  listeners: [
    { name: "u4", address: "127.0.0.1", port: 12345 },
    { name: "t4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
  ],
  intercept: [{ listener: "u4", ports: [7101] }],
  tcp: { connectionsMax: 64 },
};
const config = (patch: (raw: any) => void = () => {}) => {
  const raw = structuredClone(BASE) as any;
  patch(raw);
  return parseConfig(raw);
};

describe("the reload policy table", () => {
  test("decides every field of the schema, and names no field the schema lacks", () => {
    const fields = schemaFields(ConfigSchema as Node).sort();
    expect(fields.length).toBeGreaterThan(40);
    expect(Object.keys(RELOAD_POLICY).sort()).toEqual(fields);
  });

  test("what the data path allocates or binds at start needs a restart", () => {
    for (const field of [
      "listeners",
      "udp.sessionsMax",
      "udp.datagramBytesMax",
      "udp.batchCountMax",
      "udp.dataPlane",
      "udp.workers",
      "tcp.dataPlane",
      "mark",
      "metrics.port",
      "control.socketPath",
      "flowLog.path",
    ]) {
      expect(`${field} ${RELOAD_POLICY[field].apply}`).toBe(`${field} restart`);
    }
    for (const field of [
      "intercept",
      "udp.idleTimeoutMs",
      "udp.sessionsPerClientMax",
      "udp.busyPollUs",
      "tcp.idleTimeoutMs",
      "firewall.bypass.ports",
      "log.level",
    ]) {
      expect(`${field} ${RELOAD_POLICY[field].apply}`).toBe(`${field} live`);
    }
  });
});

describe("planReload", () => {
  const running = config();

  test("nothing changed: no changes, no refusals", () => {
    expect(planReload(running, config(), running)).toEqual({ changes: [], refusals: [] });
  });

  test("live changes are listed by path with old and new values", () => {
    const next = config((raw) => {
      raw.udp = { idleTimeoutMs: 30_000, sessionsPerClientMax: 2 };
      raw.intercept[0].ports = [7101, "7103-7104"];
      raw.intercept.push({ listener: "t4", ports: [8101] });
    });
    const plan = planReload(running, next, running);
    expect(plan.refusals).toEqual([]);
    expect(describeChanges(plan.changes)).toBe(
      'intercept[0].ports [7101] -> [7101,"7103-7104"], intercept[1] added ' +
        '{"listener":"t4","ports":[8101],"interfaces":[]}, ' +
        "udp.sessionsPerClientMax 8192 -> 2, udp.idleTimeoutMs 60000 -> 30000",
    );
  });

  test("the policy (outbounds, rules, defaultAction) is compared as the file says it", () => {
    const withPolicy = (patch: (raw: any) => void = () => {}) =>
      config((raw) => {
        raw.outbounds = [{ name: "f", type: "forward", targets: ["198.18.1.2:53"] }];
        raw.rules = [{ name: "r", ports: [443], names: { exact: ["a.test"] }, action: "reject" }];
        patch(raw);
      });
    const before = withPolicy();
    expect(planReload(before, withPolicy(), before).changes).toEqual([]);
    const next = withPolicy((raw) => {
      raw.outbounds[0].targets = ["[2001:2::53]:53"];
      raw.rules[0].names.exact = ["b.test"];
      raw.rules[0].action = "drop";
      raw.defaultAction = "f";
    });
    const plan = planReload(before, next, before);
    expect(plan.refusals).toEqual([]);
    expect(describeChanges(plan.changes)).toBe(
      'outbounds[0].targets ["198.18.1.2:53"] -> ["[2001:2::53]:53"], ' +
        'rules[0].names [{"exact":["a.test"],"suffix":[]}] -> [{"exact":["b.test"],"suffix":[]}], ' +
        'rules[0].action "reject" -> "drop", defaultAction "direct" -> "f"',
    );
  });

  test("a listener's port: refused as needing a restart, named with its index", () => {
    const next = config((raw) => {
      raw.listeners[0].port = 12355;
      raw.udp = { idleTimeoutMs: 30_000 };
    });
    const plan = planReload(running, next, running);
    expect(plan.refusals).toEqual(["listeners[0].port changed (needs a restart)"]);
    expect(plan.changes.map((c) => c.path)).toEqual(["listeners[0].port", "udp.idleTimeoutMs"]);
  });

  test("tcp.connectionsMax: live below the start value, a restart above it", () => {
    const lower = config((raw) => {
      raw.tcp.connectionsMax = 8;
    });
    expect(planReload(running, lower, running).refusals).toEqual([]);
    // Back up to the start value from a lowered one: live.
    expect(planReload(lower, running, running).refusals).toEqual([]);
    const higher = config((raw) => {
      raw.tcp.connectionsMax = 65;
    });
    expect(planReload(lower, higher, running).refusals).toEqual([
      "tcp.connectionsMax raised past 64, the table allocated at start (needs a restart)",
    ]);
  });
});

describe("the live parts keep what is open", () => {
  test("SessionTable.setTimeouts moves sessions to new classes, ordered, none ended", () => {
    const table = new SessionTable(64, [1000, 200]);
    const ended: number[] = [];
    table.onEnd = (s) => ended.push(s);
    const slots: number[] = [];
    for (let i = 0; i < 10; i++) {
      table.key.fill(0);
      table.key[8] = i; // target port i
      slots.push(table.create(i * 10, i % 2));
    }
    table.invariants();
    // Three classes now: port p in class p % 3.
    table.setTimeouts([5000, 50, 75], (s) => table.keyWord(s, 8) % 3);
    table.invariants();
    expect(ended).toEqual([]);
    for (const s of slots) expect(table.timeoutClass[s]).toBe(table.keyWord(s, 8) % 3);
    // At 100 ms: class 1 (50 ms) ends ports 1 and 4 (seen at 10 and 40, not 7 seen at 70);
    // class 2 (75 ms) ends port 2 (seen at 20; ports 5 and 8 were seen at 50 and 80).
    expect(table.expire(100, 100)).toBe(3);
    expect(ended.map((s) => table.keyWord(s, 8)).sort()).toEqual([1, 2, 4]);
    table.invariants();
    // Back to one class: the rest stay.
    table.setTimeouts([5000], () => 0);
    table.invariants();
    expect(table.count).toBe(7);
    table.end(slots[0], EndReason.Closed);
    table.invariants();
  });

  test("ClientLimits.setLimits: a lowered bound evicts nothing and refuses new sessions", () => {
    const clients = new ClientLimits(64, 8, 8);
    for (let i = 0; i < 4; i++) clients.addSession(1, 2, 3, 4);
    const c = clients.find(1, 2, 3, 4);
    clients.setLimits(2, 8);
    expect(clients.sessionsOf(c)).toBe(4);
    expect(clients.maySession(c)).toBe(false);
    clients.removeSession(c);
    clients.removeSession(c);
    expect(clients.maySession(c)).toBe(false); // 2 held, bound 2
    clients.removeSession(c);
    expect(clients.maySession(c)).toBe(true);
    clients.invariants();
  });
});

describe("Reloader", () => {
  const dir = mkdtempSync(join(tmpdir(), "relay-reload-"));
  const path = join(dir, "config.json");
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const setUp = () => {
    writeFileSync(path, JSON.stringify(BASE));
    const applied: string[] = [];
    const reloader = new Reloader(path, config(), 1 << 20, {
      applyRules: (next) => applied.push(`rules ${next.intercept.length}`),
      applyLive: async (next) => {
        applied.push(`live ${next.udp.idleTimeoutMs}`);
      },
    });
    return { reloader, applied };
  };

  test("applied, invalid, refused: counted; only an applied change moves the generation", async () => {
    const { reloader, applied } = setUp();
    expect(reloader.state()).toEqual({
      generation: 1,
      reloads: { applied: 0, refused: 0, invalid: 0 },
    });
    const same = await reloader.reload();
    expect(same).toMatchObject({ result: "applied", generation: 1 });
    expect(same.message).toBe("reload: nothing changed (generation 1)");

    writeFileSync(path, JSON.stringify({ ...BASE, udp: { idleTimeoutMs: 30_000 } }));
    const live = await reloader.reload();
    expect(live.message).toBe("reload: applied udp.idleTimeoutMs 60000 -> 30000 (generation 2)");
    expect(applied).toEqual(["live 30000"]); // firewall.manage is false: no rules

    writeFileSync(path, JSON.stringify({ ...BASE, udp: { idleTimeoutMs: -1 } }));
    const invalid = await reloader.reload();
    expect(invalid.result).toBe("invalid");
    expect(invalid.message).toContain("config.udp.idleTimeoutMs:");
    expect(invalid.message).toContain("(got -1)");

    const moved = structuredClone(BASE);
    moved.listeners[0].port = 12355;
    writeFileSync(path, JSON.stringify({ ...moved, udp: { idleTimeoutMs: 1000 } }));
    const refused = await reloader.reload();
    expect(refused.message).toBe(
      "reload refused: listeners[0].port changed (needs a restart); nothing applied " +
        "(generation 2 goes on)",
    );
    expect(applied).toEqual(["live 30000"]);
    expect(reloader.config.udp.idleTimeoutMs).toBe(30_000);
    expect(reloader.state()).toEqual({
      generation: 2,
      reloads: { applied: 2, refused: 1, invalid: 1 },
    });
  });

  test("firewall.manage: the rules are applied when intercept changes, before the rest", async () => {
    const { reloader, applied } = setUp();
    const managed = { ...BASE, firewall: { manage: true } };
    writeFileSync(path, JSON.stringify(managed));
    await reloader.reload();
    expect(applied).toEqual(["rules 1", "live 60000"]);
    const wider = structuredClone(managed);
    wider.intercept.push({ listener: "t4", ports: [8101] });
    writeFileSync(path, JSON.stringify(wider));
    await reloader.reload();
    expect(applied).toEqual(["rules 1", "live 60000", "rules 2", "live 60000"]);
  });

  test("firewall.manage false: intercept changes apply, and the log says the rules did not", async () => {
    const { reloader, applied } = setUp();
    const wider = structuredClone(BASE);
    wider.intercept.push({ listener: "t4", ports: [8101] });
    writeFileSync(path, JSON.stringify(wider));
    const outcome = await reloader.reload();
    expect(outcome.message).toBe(
      'reload: applied intercept[1] added {"listener":"t4","ports":[8101],"interfaces":[]} ' +
        "(generation 2) (firewall.manage is false: the host rules were not changed; apply " +
        "them with bun run relay rules apply)",
    );
    expect(applied).toEqual(["live 60000"]);
  });

  test("rules that fail refuse the reload: nothing else is applied", async () => {
    writeFileSync(path, JSON.stringify({ ...BASE, firewall: { manage: true } }));
    const live: number[] = [];
    const reloader = new Reloader(path, config(), 1 << 20, {
      applyRules: () => {
        throw new Error("nft -f -: Operation not permitted");
      },
      applyLive: async (next) => {
        live.push(next.udp.idleTimeoutMs);
      },
    });
    const outcome = await reloader.reload();
    expect(outcome.result).toBe("refused");
    expect(outcome.message).toBe(
      "reload refused: the host rules could not be applied: nft -f -: Operation not permitted",
    );
    expect(live).toEqual([]);
    expect(reloader.config.firewall.manage).toBe(false);
  });

  test("the built-in default has nothing to re-read: refused, saying so", async () => {
    const reloader = new Reloader(null, parseConfig({}), 1 << 20, {
      applyRules: () => {},
      applyLive: async () => {},
    });
    const outcome = await reloader.reload();
    expect(outcome.result).toBe("refused");
    expect(outcome.message).toContain("built-in default configuration (no --config)");
  });

  test("reloads asked for during one run after it, as one", async () => {
    const { reloader } = setUp();
    const outcomes = await Promise.all([reloader.reload(), reloader.reload(), reloader.reload()]);
    expect(outcomes.map((o) => o.result)).toEqual(["applied", "applied", "applied"]);
    expect(reloader.state().reloads.applied).toBe(2);
  });
});
