// Where the TCP path runs (tcp.dataPlane). "worker" (default): one thread of its own (a
// Bun Worker, or worker_threads on Node: src/sys/thread.ts) that waits in epoll_wait and
// does everything a connection needs: accept (in batches), decide, connect, hand the
// pair to the splice engine, which runs inline in the same Poller, and read its end. No
// wake-up crosses threads (docs/tcp_single_thread.md has the system calls and context
// switches per connection). "main": the main thread, woken by the C epoll thread, hands
// each connection to the splice engine's own thread (command ring + eventfd), whose end
// events come back through another eventfd.
//
// Either way a dead data path is never silent: onFatal gets the message and the last
// counters when they could be read, and the owner ends the process.
import type { Config } from "../config/load.ts";
import type { SessionQuery } from "../control/query.ts";
import type { FlowBatch } from "../flow/flow_records.ts";
import type { RelayLib } from "../sys/ffi.ts";
import { WorkerPlaneClient } from "../sys/worker_plane.ts";
import { type TcpConnectionView, TcpRelay } from "./relay.ts";

/** The `tcp` object of the metrics line. */
export type TcpSnapshot = ReturnType<TcpRelay["snapshot"]>;

/** Counters and open connections, read on the data path's thread in one go. */
export interface TcpPlaneView {
  tcp: TcpSnapshot;
  /** The first `connectionsListed`, or what the query selected (at most its limit). */
  connections: TcpConnectionView[];
  /** With a query: how many matched; else the number listed. */
  matched: number;
}

export interface TcpPlane {
  start(): Promise<void>;
  /**
   * Counters and the first `connectionsListed` open connections; with a query, the
   * connections it selects instead (selected where they live: at most its limit cross
   * the thread boundary).
   */
  snapshot(connectionsListed: number, query?: SessionQuery): Promise<TcpPlaneView>;
  /**
   * No new connections; open ones get graceMs to finish, then are reset. Resolves with
   * the final counters once every connection is accounted for and the thread is gone.
   */
  stop(graceMs: number): Promise<TcpSnapshot>;
  /** A reload's live settings (src/config/reload.ts checked the rest). */
  reconfigure(config: Config): Promise<void>;
  /** The latest counters at hand, without waiting (for a fatal line); null: none yet. */
  latest(): TcpSnapshot | null;
}

/** Ended connections for the flow log (src/control/flow_log.ts), on the main thread. */
type OnFlows = (batch: FlowBatch) => void;

/** The data path died: why, and its last counters if they could be read. */
export type OnTcpFatal = (message: string, last: TcpSnapshot | null) => void;

/** Read where the relay lives (this thread, or src/tcp/tcp_worker.ts in its own). */
export function tcpPlaneView(
  relay: TcpRelay,
  connectionsListed: number,
  query: SessionQuery | null,
): TcpPlaneView {
  const tcp = relay.snapshot();
  if (query === null) {
    const connections = relay.connectionViews(connectionsListed);
    return { tcp, connections, matched: connections.length };
  }
  return { tcp, ...relay.queryConnections(query) };
}

class MainThreadPlane implements TcpPlane {
  private readonly relay: TcpRelay;
  private final: TcpSnapshot | null = null;
  constructor(lib: RelayLib, config: Config, onFatal: OnTcpFatal, onFlows: OnFlows | null) {
    this.relay = new TcpRelay(lib, config, {
      onFatal: (message) => onFatal(message, this.relay.snapshot()),
      onFlows: onFlows ?? undefined,
    });
  }
  async start(): Promise<void> {
    this.relay.start();
  }
  async snapshot(connectionsListed: number, query?: SessionQuery): Promise<TcpPlaneView> {
    return tcpPlaneView(this.relay, connectionsListed, query ?? null);
  }
  async stop(graceMs: number): Promise<TcpSnapshot> {
    await this.relay.stop(graceMs);
    this.final = this.relay.snapshot();
    return this.final;
  }
  async reconfigure(config: Config): Promise<void> {
    this.relay.reconfigure(config);
  }
  latest(): TcpSnapshot | null {
    return this.final ?? this.relay.snapshot();
  }
}

class WorkerThreadPlane implements TcpPlane {
  private readonly client: WorkerPlaneClient<TcpSnapshot>;
  private last: TcpSnapshot | null = null;
  /** After stop(): the thread is gone, its final counters stay. */
  private stopped = false;

  constructor(
    lib: RelayLib,
    private readonly config: Config,
    onFatal: OnTcpFatal,
    onFlows: OnFlows | null,
  ) {
    this.client = new WorkerPlaneClient<TcpSnapshot>(
      lib,
      "TCP",
      "tcp",
      (message, last) => onFatal(message, last ?? this.last),
      onFlows,
    );
  }

  start(): Promise<void> {
    return this.client.start(this.config);
  }

  async snapshot(connectionsListed: number, query?: SessionQuery): Promise<TcpPlaneView> {
    if (this.stopped && this.last !== null) return { tcp: this.last, connections: [], matched: 0 };
    const reply = await this.client.ask("snapshot", { connectionsListed, query: query ?? null });
    const data = reply.data as TcpPlaneView;
    this.last = data.tcp;
    return data;
  }

  async stop(graceMs: number): Promise<TcpSnapshot> {
    const reply = await this.client.stop({ graceMs }, graceMs);
    this.last = reply.data as TcpSnapshot;
    this.stopped = true;
    return this.last;
  }

  async reconfigure(config: Config): Promise<void> {
    await this.client.ask("reconfigure", { config });
  }

  latest(): TcpSnapshot | null {
    return this.last;
  }
}

/** null without TCP listeners. onFlows: the flow log's writer, or null without one. */
export function createTcpPlane(
  lib: RelayLib,
  config: Config,
  onFatal: OnTcpFatal,
  onFlows: OnFlows | null = null,
): TcpPlane | null {
  if (!config.listeners.some((l) => l.protocol === "tcp")) return null;
  return config.tcp.dataPlane === "worker"
    ? new WorkerThreadPlane(lib, config, onFatal, onFlows)
    : new MainThreadPlane(lib, config, onFatal, onFlows);
}
