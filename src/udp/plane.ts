// Where the UDP data path runs. "worker" (default): a thread of its own (a Bun Worker, or
// worker_threads on Node: src/sys/thread.ts) that blocks in epoll_wait itself, so a
// datagram costs one thread wake-up, as in a C relay. "callback": the main thread, woken
// by the C epoll thread (a threadsafe JSCallback on Bun, a pipe on Node; two wake-ups per
// burst; under load one wake carries many sockets). bench/udp.ts measures
// both; docs/performance.md has the numbers behind the default.
//
// Either way a failure of the data path is never silent: onFatal gets the message (and
// the last counters when they could be read), and the owner ends the process.
import type { Config } from "../config/load.ts";
import type { FlowBatch } from "../flow/flow_records.ts";
import type { SessionQuery } from "../control/query.ts";
import type { RelayLib } from "../sys/ffi.ts";
import { WorkerPlaneClient } from "../sys/worker_plane.ts";
import { MultiPlane } from "./multi_plane.ts";
import { UdpRelay, type UdpSnapshot } from "./relay.ts";

export interface UdpPlane {
  start(): Promise<void>;
  /**
   * Counters and the first `sessionsListed` sessions; with a query, the sessions it
   * selects instead (filtered, sorted and bounded where they live: at most its limit
   * cross the thread boundary).
   */
  snapshot(sessionsListed: number, query?: SessionQuery): Promise<UdpSnapshot>;
  /** Stops the data path (threads joined, sockets closed); returns the final snapshot. */
  stop(sessionsListed: number): Promise<UdpSnapshot>;
  /**
   * A reload's new config, whose restart fields equal the running one's (the caller
   * checked: src/config/reload.ts). Applied on the data path's thread between two rounds,
   * never inside a batch; resolves once applied. Every live setting, present and future
   * (policy rules, outbounds), travels in this one message.
   */
  reconfigure(config: Config): Promise<void>;
}

/** The data path died: why, and its last counters if they could be read. */
export type OnFatal = (message: string, last: UdpSnapshot | null) => void;

/** Ended sessions for the flow log (src/control/flow_log.ts), on the main thread. */
export type OnFlows = (batch: FlowBatch) => void;

class InThreadPlane implements UdpPlane {
  private readonly relay: UdpRelay;
  constructor(lib: RelayLib, config: Config, onFatal: OnFatal, onFlows: OnFlows | null) {
    this.relay = new UdpRelay(lib, config, {
      onFatal: (message) => onFatal(message, this.relay.snapshot(0)),
      onFlows: onFlows ?? undefined,
    });
  }
  async start(): Promise<void> {
    this.relay.start();
  }
  async snapshot(sessionsListed: number, query?: SessionQuery): Promise<UdpSnapshot> {
    return this.relay.snapshot(sessionsListed, query ?? null);
  }
  async stop(sessionsListed: number): Promise<UdpSnapshot> {
    const final = this.relay.snapshot(sessionsListed);
    this.relay.stop();
    return final;
  }
  async reconfigure(config: Config): Promise<void> {
    // This thread runs the rounds (JSCallback): a task here is between two of them.
    this.relay.reconfigure(config);
  }
}

class WorkerPlane implements UdpPlane {
  private readonly client: WorkerPlaneClient<UdpSnapshot>;

  constructor(
    lib: RelayLib,
    private readonly config: Config,
    onFatal: OnFatal,
    onFlows: OnFlows | null,
  ) {
    this.client = new WorkerPlaneClient(lib, "UDP", "udp", onFatal, onFlows);
  }

  start(): Promise<void> {
    return this.client.start(this.config);
  }

  async reconfigure(config: Config): Promise<void> {
    const reply = await this.client.ask("reconfigure", { config });
    if (reply.type !== "reconfigured") throw new Error("unexpected reply");
  }

  async snapshot(sessionsListed: number, query?: SessionQuery): Promise<UdpSnapshot> {
    const reply = await this.client.ask("snapshot", { sessionsListed, query: query ?? null });
    if (reply.type !== "snapshot") throw new Error("unexpected reply");
    return reply.data as UdpSnapshot;
  }

  async stop(sessionsListed: number): Promise<UdpSnapshot> {
    const reply = await this.client.stop({ sessionsListed, query: null });
    if (reply.type !== "stopped") throw new Error("unexpected reply");
    return reply.data as UdpSnapshot;
  }
}

/** onFlows: the flow log's writer, or null without one. */
export function createUdpPlane(
  lib: RelayLib,
  config: Config,
  onFatal: OnFatal,
  onFlows: OnFlows | null = null,
): UdpPlane {
  if (config.udp.dataPlane !== "worker") return new InThreadPlane(lib, config, onFatal, onFlows);
  const workers = config.udp.workers;
  if (workers === 1) return new WorkerPlane(lib, config, onFatal, onFlows);
  const makePlane = (mine: Config, fatal: OnFatal) => new WorkerPlane(lib, mine, fatal, onFlows);
  return new MultiPlane(config, workers, makePlane, onFatal);
}

/**
 * The config the UDP plane runs on: its listeners only (its listener indexes are its
 * own), and the policy's rules with their listener indexes moved to that list (a rule on
 * TCP listeners only keeps an empty list: it never matches a UDP flow).
 */
export function udpPlaneConfig(config: Config): Config {
  const udpIndex = new Map<number, number>();
  const listeners = config.listeners.filter((l, i) => {
    if (l.protocol !== "udp") return false;
    udpIndex.set(i, udpIndex.size);
    return true;
  });
  const rules = config.policy.rules.map((r) =>
    r.listeners === null
      ? r
      : { ...r, listeners: r.listeners.flatMap((i) => udpIndex.get(i) ?? []) },
  );
  return { ...config, listeners, policy: { ...config.policy, rules } };
}
