// udp.workers (src/udp/multi_plane.ts): the config each worker gets, the merge of the
// workers' snapshots (counters summed field by field, sessions under the request's bound
// and order), and the plane's all-or-none start and fan-out, with fake worker planes.
import { describe, expect, test } from "bun:test";
import { descriptorsWanted } from "../../src/config/limits.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { SessionQuery } from "../../src/control/query.ts";
import { UdpCounters } from "../../src/metrics.ts";
import { StartError } from "../../src/sys/errno.ts";
import { MultiPlane, mergeSnapshots, sumFields, workerConfig } from "../../src/udp/multi_plane.ts";
import type { OnFatal, UdpPlane } from "../../src/udp/plane.ts";
import type { SessionView, UdpSnapshot, UdpValues } from "../../src/udp/relay.ts";
import { problems } from "./config_problems.ts";

const LISTENER = { name: "u", protocol: "udp", address: "127.0.0.1", port: 15000 };
const configOf = (udp: object) => parseConfig({ listeners: [LISTENER], udp });

/** Values of one worker: every numeric field `base + its index`, a histogram of `base`s. */
function values(base: number): UdpValues {
  const { batchDatagrams, ...counters } = new UdpCounters();
  const v = {
    ...counters,
    batchDatagrams: Array.from(batchDatagrams, () => base),
    sessionsActive: 0,
    sessionsMax: 0,
    upstreamSockets: 0,
    replySockets: 0,
    dnsUpstreamSockets: 0,
    dnsQueriesInFlight: 0,
    holdBytes: 0,
    sessionsHolding: 0,
    socks5Associations: 0,
    socketsRegistered: 0,
    pollWakes: 0,
    pollEvents: 0,
    pollRingOverflows: 0,
    pollBusyPolls: 0,
    upstreamPortsQuarantined: 0,
  } as UdpValues;
  Object.keys(v).forEach((k, i) => {
    if (k !== "batchDatagrams") (v as any)[k] = base + i;
  });
  return v;
}

function view(client: string, bytes: number, ageMs: number): SessionView {
  return {
    client,
    target: "198.18.1.1:7",
    listener: "u",
    reply: "socket",
    protocol: "udp",
    name: null,
    rule: null,
    outbound: "direct",
    ageMs,
    idleMs: 0,
    packetsToTarget: 1,
    bytesToTarget: bytes,
    packetsToClient: 0,
    bytesToClient: 0,
  };
}

const snap = (base: number, sessions: SessionView[], matched?: number): UdpSnapshot => ({
  uptimeMs: 1000 + base,
  udp: values(base),
  sessions,
  sessionsMatched: matched,
});

const QUERY: SessionQuery = {
  client: null,
  target: null,
  name: null,
  listener: null,
  sort: "bytes",
  limit: 3,
};

describe("udp.workers: config", () => {
  test("1 by default; 1-64; more than 1 needs the worker data plane", () => {
    expect(configOf({}).udp.workers).toBe(1);
    expect(problems({ udp: { workers: 0 } })[0]).toStartWith("config.udp.workers:");
    expect(problems({ udp: { workers: 65 } })[0]).toStartWith("config.udp.workers:");
    expect(problems({ listeners: [LISTENER], udp: { workers: 2, dataPlane: "callback" } })).toEqual(
      [
        `config.udp.workers: 2 needs udp.dataPlane "worker" (the "callback" plane runs on ` +
          `the main thread, which is one)`,
      ],
    );
    expect(configOf({ workers: 1, dataPlane: "callback" }).udp.dataPlane).toBe("callback");
  });

  test("each worker: listeners in a reuseport group, table bounds split (ceil)", () => {
    const c = configOf({
      workers: 3,
      sessionsMax: 1000,
      replySocketsMax: 100,
      sessionsPerClientMax: 500,
      rejectIcmpPerSecondMax: 0,
    });
    const w = workerConfig(c, 3);
    expect(w.listeners.map((l) => l.reusePort)).toEqual([true]);
    expect(w.udp.sessionsMax).toBe(334);
    expect(w.udp.replySocketsMax).toBe(34);
    expect(w.udp.sessionsPerClientMax).toBe(334);
    expect(w.udp.rejectIcmpPerSecondMax).toBe(0);
    expect(w.udp.holdBytesMax).toBe(Math.ceil(c.udp.holdBytesMax / 3));
    // Never below the schema's minimum.
    expect(workerConfig(configOf({ sessionsMax: 16 }), 64).udp.sessionsMax).toBe(16);
    // One worker: the config as it is (the listener keeps its exclusive bind).
    expect(workerConfig(c, 1)).toBe(c);
  });

  test("descriptors: each extra worker's listeners and fds are asked for", () => {
    const one = descriptorsWanted(configOf({ workers: 1 }));
    expect(descriptorsWanted(configOf({ workers: 4 }))).toBeGreaterThan(one + 3);
  });
});

describe("udp.workers: merged snapshots", () => {
  test("every field summed, the histogram element by element", () => {
    const a = values(10);
    const b = values(1000);
    const sum = sumFields([a, b]);
    expect(Object.keys(sum).sort()).toEqual(Object.keys(a).sort());
    for (const k of Object.keys(a) as (keyof UdpValues)[]) {
      if (k === "batchDatagrams") continue;
      expect(`${k} ${sum[k]}`).toBe(`${k} ${(a[k] as number) + (b[k] as number)}`);
    }
    expect(sum.batchDatagrams).toEqual(a.batchDatagrams.map(() => 1010));
  });

  test("sessions without a query: the first `sessionsListed`, each marked with its worker", () => {
    const m = mergeSnapshots(
      [snap(1, [view("a:1", 5, 1), view("a:2", 6, 1)]), snap(2, [view("b:1", 7, 1)])],
      2,
      null,
    );
    expect(m.sessions.map((v) => `${v.client}@${v.worker}`)).toEqual(["a:1@0", "a:2@0"]);
    expect(m.sessionsMatched).toBeUndefined();
    expect(m.uptimeMs).toBe(1002);
    expect(m.workers?.map((w) => w.packetsFromClients)).toEqual([
      values(1).packetsFromClients,
      values(2).packetsFromClients,
    ]);
  });

  test("with a query: its sort across workers, its limit, matches summed", () => {
    const parts = [
      snap(1, [view("a:1", 50, 1), view("a:2", 10, 9)], 7),
      snap(2, [view("b:1", 40, 5), view("b:2", 30, 2)], 4),
    ];
    const byBytes = mergeSnapshots(parts, 0, QUERY);
    expect(byBytes.sessions.map((v) => v.client)).toEqual(["a:1", "b:1", "b:2"]);
    expect(byBytes.sessionsMatched).toBe(11);
    const byAge = mergeSnapshots(parts, 0, { ...QUERY, sort: "age", limit: 2 });
    expect(byAge.sessions.map((v) => v.client)).toEqual(["a:2", "b:1"]);
  });
});

/** A worker plane that answers from fixed data; `failStart` makes its start fail. */
class FakePlane implements UdpPlane {
  started = false;
  stopped = false;
  reconfigured: number[] = [];
  constructor(
    private readonly index: number,
    private readonly failStart: boolean,
  ) {}
  async start(): Promise<void> {
    if (this.failStart) throw new StartError(`bind: EPERM ${this.index}`, true);
    this.started = true;
  }
  async snapshot(): Promise<UdpSnapshot> {
    return snap(this.index, [view(`w${this.index}:1`, this.index, 1)]);
  }
  async stop(): Promise<UdpSnapshot> {
    this.stopped = true;
    return snap(this.index, []);
  }
  async reconfigure(config: { udp: { sessionsMax: number } }): Promise<void> {
    this.reconfigured.push(config.udp.sessionsMax);
  }
}

function multi(n: number, failing: number[], fatal: OnFatal = () => {}) {
  const fakes: FakePlane[] = [];
  const fatals: OnFatal[] = [];
  const config = configOf({ workers: n, sessionsMax: 100 });
  const plane = new MultiPlane(
    config,
    n,
    (mine, onFatal) => {
      expect(mine.udp.sessionsMax).toBe(Math.ceil(100 / n));
      fatals.push(onFatal);
      const f = new FakePlane(fakes.length, failing.includes(fakes.length));
      fakes.push(f);
      return f;
    },
    fatal,
  );
  return { plane, fakes, fatals, config };
}

describe("udp.workers: the plane of N workers", () => {
  test("start all; snapshot, reconfigure and stop reach every worker", async () => {
    const { plane, fakes, config } = multi(3, []);
    await plane.start();
    expect(fakes.map((f) => f.started)).toEqual([true, true, true]);
    const s = await plane.snapshot(10);
    expect(s.sessions.map((v) => v.worker)).toEqual([0, 1, 2]);
    await plane.reconfigure(config);
    expect(fakes.map((f) => f.reconfigured)).toEqual([[34], [34], [34]]);
    await plane.stop(0);
    expect(fakes.map((f) => f.stopped)).toEqual([true, true, true]);
  });

  test("one worker fails to start: those before it are stopped, no later one is made", async () => {
    const { plane, fakes } = multi(3, [1]);
    const err = await plane.start().then(
      () => null,
      (e) => e,
    );
    expect(err).toBeInstanceOf(StartError);
    expect((err as StartError).message).toBe("UDP worker 1 of 3: bind: EPERM 1");
    expect((err as StartError).privilege).toBe(true);
    expect(fakes.map((f) => f.stopped)).toEqual([true, false]);
  });

  test("a worker's fatal reaches the owner, naming the worker", async () => {
    const seen: string[] = [];
    const { plane, fatals } = multi(2, [], (message) => seen.push(message));
    await plane.start();
    fatals[1]("UDP worker exited", null);
    expect(seen).toEqual(["UDP worker 1: UDP worker exited"]);
  });
});
