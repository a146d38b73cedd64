// udp.workers > 1: N data-path workers, each a whole UdpRelay on its own thread with its
// own listener sockets (one SO_REUSEPORT group per listener address and port), sessions,
// upstream and reply sockets. Nothing is shared between them on the data path: the
// kernel's reuseport hash of the client's address and port picks the worker of every
// datagram (docs/udp_workers.md), so one flow always meets the same worker.
//
// This plane only fans the control plane's requests out and merges the answers: counters
// summed field by field, sessions merged under the request's own bound and order.
import type { Config } from "../config/load.ts";
import { UdpSchema } from "../config/schema.ts";
import type { SessionQuery, SortKey } from "../control/query.ts";
import { StartError } from "../sys/errno.ts";
import type { OnFatal, UdpPlane } from "./plane.ts";
import type { SessionView, UdpSnapshot, UdpValues } from "./relay.ts";

/** The few values the metrics line shows per worker (`workers`; the rest are summed). */
export interface WorkerCounts {
  packetsFromClients: number;
  packetsFromTargets: number;
  sessionsActive: number;
}

/** Makes one worker's plane (a WorkerPlane) for its share of the config. */
export type PlaneFactory = (config: Config, onFatal: OnFatal) => UdpPlane;

/**
 * One worker's config: the listeners join a reuseport group, and the process-wide table
 * bounds are split (each worker gets ceil(total / workers), at least the schema's
 * minimum), so N workers hold what one would and the descriptors fitted under
 * RLIMIT_NOFILE (src/config/limits.ts) still bound the sum. Per-client and per-flow
 * bounds stay as they are: they apply per worker.
 */
export function workerConfig(config: Config, workers: number): Config {
  if (workers <= 1) return config;
  const udp = config.udp;
  const fields = UdpSchema.properties;
  const share = (total: number, minimum: number | undefined) =>
    Math.max(minimum ?? 0, Math.ceil(total / workers));
  const sessionsMax = share(udp.sessionsMax, fields.sessionsMax.minimum);
  const replySocketsMax = share(udp.replySocketsMax, fields.replySocketsMax.minimum);
  return {
    ...config,
    listeners: config.listeners.map((l) => ({ ...l, reusePort: true })),
    udp: {
      ...udp,
      sessionsMax,
      replySocketsMax,
      dnsQueriesInFlightMax: share(udp.dnsQueriesInFlightMax, fields.dnsQueriesInFlightMax.minimum),
      holdBytesMax: share(udp.holdBytesMax, fields.holdBytesMax.minimum),
      // A rate for the whole process: 0 (none at all) stays 0.
      rejectIcmpPerSecondMax: share(udp.rejectIcmpPerSecondMax, 0),
      // A bound above the worker's table bounds nothing (as src/config/limits.ts says).
      sessionsPerClientMax: Math.min(udp.sessionsPerClientMax, sessionsMax),
      replySocketsPerClientMax: Math.min(udp.replySocketsPerClientMax, replySocketsMax),
    },
  };
}

type Summable<T> = { [K in keyof T]: number | number[] };

/**
 * Field-by-field sums of records of one shape: numbers added, arrays (histograms)
 * added element by element. Gauges sum too: N tables of ceil(max/N) sessions hold
 * sessionsMax between them, and the sockets of all workers are the process's.
 */
export function sumFields<T extends Summable<T>>(parts: readonly T[]): T {
  const out: Record<string, number | number[]> = {};
  for (const part of parts) {
    for (const [name, value] of Object.entries(part) as [string, number | number[]][]) {
      const sum = out[name];
      if (typeof value === "number") {
        out[name] = (typeof sum === "number" ? sum : 0) + value;
        continue;
      }
      const into = Array.isArray(sum) ? sum : [];
      value.forEach((v, i) => {
        into[i] = (into[i] ?? 0) + v;
      });
      out[name] = into;
    }
  }
  return out as T;
}

/** A query's sort key on a session view: larger first, as src/flow/select.ts orders. */
const VIEW_SORT_KEY: Readonly<Record<SortKey, (v: SessionView) => number>> = {
  bytes: (v) => v.bytesToTarget + v.bytesToClient,
  packets: (v) => v.packetsToTarget + v.packetsToClient,
  age: (v) => v.ageMs,
  idle: (v) => v.idleMs,
};

/**
 * One snapshot of N workers' snapshots (in worker order). Each worker already bounded its
 * sessions by `sessionsListed` or the query's limit; the merge keeps that bound for all,
 * in the query's order across workers, each view marked with its worker.
 */
export function mergeSnapshots(
  parts: readonly UdpSnapshot[],
  sessionsListed: number,
  query: SessionQuery | null,
): UdpSnapshot {
  const views = parts.flatMap((p, worker) => p.sessions.map((v) => ({ ...v, worker })));
  let sessions: SessionView[];
  if (query === null) {
    sessions = views.slice(0, sessionsListed);
  } else {
    const key = VIEW_SORT_KEY[query.sort];
    // Array.prototype.sort is stable: equal keys keep worker order.
    sessions = views.sort((a, b) => key(b) - key(a)).slice(0, query.limit);
  }
  return {
    uptimeMs: Math.max(...parts.map((p) => p.uptimeMs)),
    udp: sumFields<UdpValues>(parts.map((p) => p.udp)),
    sessions,
    sessionsMatched:
      query === null ? undefined : parts.reduce((n, p) => n + (p.sessionsMatched ?? 0), 0),
    workers: parts.map(({ udp }) => ({
      packetsFromClients: udp.packetsFromClients,
      packetsFromTargets: udp.packetsFromTargets,
      sessionsActive: udp.sessionsActive,
    })),
  };
}

/** The first rejection of settled promises (in worker order), or null if all fulfilled. */
function firstFailure(results: readonly PromiseSettledResult<unknown>[]): unknown {
  for (const r of results) if (r.status === "rejected") return r.reason ?? new Error("failed");
  return null;
}

export class MultiPlane implements UdpPlane {
  /** The workers started so far, in order. */
  private readonly planes: UdpPlane[] = [];
  private readonly mine: Config;

  constructor(
    config: Config,
    private readonly workers: number,
    private readonly makePlane: PlaneFactory,
    private readonly onFatal: OnFatal,
  ) {
    this.mine = workerConfig(config, workers);
  }

  /**
   * All or none, one worker after the other: the first that fails to start stops those
   * before it, and its error is the one reported (not N copies of it). Each worker's
   * start waits for its thread to hear messages (WorkerPlane: "loaded").
   */
  async start(): Promise<void> {
    for (let i = 0; i < this.workers; i++) {
      // A worker's death ends the process as with one worker; the message names it.
      const plane = this.makePlane(this.mine, (message, last) =>
        this.onFatal(`UDP worker ${i}: ${message}`, last),
      );
      try {
        await plane.start();
      } catch (err) {
        await Promise.allSettled(this.planes.map((p) => p.stop(0)));
        this.planes.length = 0;
        const message = `UDP worker ${i} of ${this.workers}: ${(err as Error).message}`;
        throw new StartError(message, err instanceof StartError && err.privilege);
      }
      this.planes.push(plane);
    }
  }

  async snapshot(sessionsListed: number, query?: SessionQuery): Promise<UdpSnapshot> {
    const parts = await Promise.all(this.planes.map((p) => p.snapshot(sessionsListed, query)));
    return mergeSnapshots(parts, sessionsListed, query ?? null);
  }

  /** Stops every worker, even when one fails; then reports the first failure. */
  async stop(sessionsListed: number): Promise<UdpSnapshot> {
    const results = await Promise.allSettled(this.planes.map((p) => p.stop(sessionsListed)));
    const failure = firstFailure(results);
    if (failure !== null) throw failure;
    const parts = results.map((r) => (r as PromiseFulfilledResult<UdpSnapshot>).value);
    return mergeSnapshots(parts, sessionsListed, null);
  }

  async reconfigure(config: Config): Promise<void> {
    const mine = workerConfig(config, this.workers);
    await Promise.all(this.planes.map((p) => p.reconfigure(mine)));
  }
}
