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
import { errnoName, StartError } from "../sys/errno.ts";
import { Poller } from "../sys/poller.ts";
import type { RelayLib } from "../sys/ffi.ts";
import { type DataThread, startDataThread } from "../sys/thread.ts";
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

/** Replies from the worker are awaited at most this long (it answers between waits). */
const WORKER_REPLY_TIMEOUT_MS = 10_000;

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

type WorkerReply =
  | { type: "loaded" }
  | { type: "started"; notifyHandle: number }
  | { type: "error"; message: string; privilege: boolean }
  | { type: "fatal"; message: string; data: UdpSnapshot | null }
  | { type: "flows"; batch: FlowBatch }
  | { type: "snapshot"; id: number; data: UdpSnapshot }
  | { type: "stopped"; id: number; data: UdpSnapshot }
  | { type: "reconfigured"; id: number };

class WorkerPlane implements UdpPlane {
  private readonly worker: DataThread;
  private nextId = 1;
  private readonly waiting = new Map<number, (r: WorkerReply) => void>();
  private startWaiter: ((r: WorkerReply) => void) | null = null;
  private started = false;
  private stopping = false;
  /** The Worker's poller (Poller.notify before each post); -1 until it started. */
  private notifyHandle = -1;
  /** Resolved by the thread's "loaded": from then on it hears messages (src/udp/worker.ts). */
  private readonly loaded: Promise<void>;
  private onLoaded: () => void = () => {};

  constructor(
    private readonly lib: RelayLib,
    private readonly config: Config,
    private readonly onFatal: OnFatal,
    private readonly onFlows: OnFlows | null,
  ) {
    this.loaded = new Promise((resolve) => {
      this.onLoaded = resolve;
    });
    this.worker = startDataThread();
    this.worker.onMessage((message) => {
      const reply = message as WorkerReply;
      if (reply.type === "loaded") {
        this.onLoaded();
        return;
      }
      if (reply.type === "flows") {
        // Messages keep their order: a stop's last batches arrive before "stopped".
        this.onFlows?.(reply.batch);
        return;
      }
      if (reply.type === "fatal") {
        this.onFatal(reply.message, reply.data);
        return;
      }
      if (reply.type === "started" || reply.type === "error") {
        this.startWaiter?.(reply);
        return;
      }
      this.waiting.get(reply.id)?.(reply);
      this.waiting.delete(reply.id);
    });
    this.worker.onError((why) => {
      const message = `UDP worker failed: ${why}`;
      this.startWaiter?.({ type: "error", message, privilege: false });
      for (const [, w] of this.waiting) w({ type: "error", message, privilege: false });
      this.waiting.clear();
      if (this.started && !this.stopping) this.onFatal(message, null);
    });
    // A worker that ends without an error event (its thread exited) is just as dead.
    this.worker.onExit(() => {
      if (this.started && !this.stopping) this.onFatal("UDP worker exited", null);
    });
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.startWaiter = (reply) => {
        this.startWaiter = null;
        if (reply.type === "started") {
          this.started = true;
          this.notifyHandle = reply.notifyHandle;
          resolve();
        } else if (reply.type === "error") {
          reject(new StartError(reply.message, reply.privilege));
        } else reject(new Error("unexpected reply"));
      };
      void this.loaded.then(() => this.worker.post({ type: "start", config: this.config }));
    });
  }

  private request(
    type: "snapshot" | "stop",
    sessionsListed: number,
    query: SessionQuery | null = null,
  ): Promise<UdpSnapshot> {
    return this.ask(type, { sessionsListed, query }).then((reply) => {
      if (reply.type === "snapshot" || reply.type === "stopped") return reply.data;
      throw new Error("unexpected reply");
    });
  }

  /** Posts a request with a fresh id; resolves with the worker's reply to it. */
  private ask(type: string, fields: Record<string, unknown>): Promise<WorkerReply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(
          new Error(`UDP worker did not answer "${type}" within ${WORKER_REPLY_TIMEOUT_MS} ms`),
        );
      }, WORKER_REPLY_TIMEOUT_MS);
      this.waiting.set(id, (reply) => {
        clearTimeout(timer);
        if (reply.type === "error") reject(new Error(reply.message));
        else resolve(reply);
      });
      // Announced first: the Worker's loop then turns its event loop to take it. The
      // poller is alive: only a message posted after this one could stop it.
      const rc = Poller.notify(this.lib, this.notifyHandle);
      if (rc < 0) {
        this.waiting.delete(id);
        clearTimeout(timer);
        reject(new Error(`UDP worker's poller: ${errnoName(-rc)}`));
        return;
      }
      this.worker.post({ type, id, ...fields });
    });
  }

  async reconfigure(config: Config): Promise<void> {
    const reply = await this.ask("reconfigure", { config });
    if (reply.type !== "reconfigured") throw new Error("unexpected reply");
  }

  snapshot(sessionsListed: number, query?: SessionQuery): Promise<UdpSnapshot> {
    return this.request("snapshot", sessionsListed, query ?? null);
  }

  async stop(sessionsListed: number): Promise<UdpSnapshot> {
    this.stopping = true;
    const final = await this.request("stop", sessionsListed);
    this.worker.terminate();
    return final;
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
