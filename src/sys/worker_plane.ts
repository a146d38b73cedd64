// The main thread's side of a data plane that runs in a Worker (src/udp/plane.ts,
// src/tcp/plane.ts): one protocol for both. The thread posts "loaded" once it hears
// messages (under Bun one posted while its module was still loading could be lost), and
// only then gets "start". It answers "start" with "started" (and its poller's handle) or
// an "error" (privilege: the exit status of a refused bind); every later request carries
// an id and gets one reply with that id (type "error" rejects). Each request is announced
// to the thread's poller first (Poller.notify: its loop turns the event loop only for
// messages; src/sys/poller.ts). Unasked, it posts "flows" (ended flows for the flow log,
// in order) and "fatal" (the data path died: why, and its last counters). A thread that
// dies or exits unasked is fatal too.
import type { Config } from "../config/load.ts";
import type { FlowBatch } from "../flow/flow_records.ts";
import { errnoName, StartError } from "./errno.ts";
import type { RelayLib } from "./ffi.ts";
import { Poller } from "./poller.ts";
import { type DataThread, type DataThreadScript, startDataThread } from "./thread.ts";

/** What a plane's thread posts (its fields by type; see the top comment). */
export interface PlaneMessage {
  type: string;
  id?: number;
  message?: string;
  privilege?: boolean;
  data?: unknown;
  batch?: FlowBatch;
  /** "started": the thread's poller, for Poller.notify. */
  notifyHandle?: number;
}

/** Replies from the worker are awaited at most this long (it answers between waits). */
const WORKER_REPLY_TIMEOUT_MS = 10_000;

export class WorkerPlaneClient<Last> {
  private readonly worker: DataThread;
  private nextId = 1;
  private readonly waiting = new Map<number, (r: PlaneMessage) => void>();
  private startWaiter: ((r: PlaneMessage) => void) | null = null;
  private started = false;
  private stopping = false;
  /** The thread's poller (Poller.notify before each request); -1 until it started. */
  private notifyHandle = -1;
  /** Resolved by the thread's "loaded": from then on it hears messages. */
  private readonly loaded: Promise<void>;
  private onLoaded: () => void = () => {};

  /** name: "UDP" or "TCP", in the messages; onFatal gets the fatal post's data as Last. */
  constructor(
    private readonly lib: RelayLib,
    private readonly name: string,
    script: DataThreadScript,
    onFatal: (message: string, last: Last | null) => void,
    onFlows: ((batch: FlowBatch) => void) | null,
  ) {
    this.loaded = new Promise((resolve) => {
      this.onLoaded = resolve;
    });
    this.worker = startDataThread(script);
    this.worker.onMessage((message) => {
      const reply = message as PlaneMessage;
      if (reply.type === "loaded") {
        this.onLoaded();
        return;
      }
      if (reply.type === "flows") {
        // Messages keep their order: a stop's last batches arrive before its reply.
        if (reply.batch) onFlows?.(reply.batch);
        return;
      }
      if (reply.type === "fatal") {
        onFatal(reply.message ?? "", (reply.data ?? null) as Last | null);
        return;
      }
      if (reply.id === undefined) {
        this.startWaiter?.(reply); // "started", or an "error" before any start
        return;
      }
      this.waiting.get(reply.id)?.(reply);
      this.waiting.delete(reply.id);
    });
    this.worker.onError((why) => {
      const message = `${name} worker failed: ${why}`;
      this.startWaiter?.({ type: "error", message, privilege: false });
      for (const [, w] of this.waiting) w({ type: "error", message });
      this.waiting.clear();
      if (this.started && !this.stopping) onFatal(message, null);
    });
    // A worker that ends without an error event (its thread exited) is just as dead.
    this.worker.onExit(() => {
      if (this.started && !this.stopping) onFatal(`${name} worker exited`, null);
    });
  }

  start(config: Config): Promise<void> {
    return new Promise((resolve, reject) => {
      this.startWaiter = (reply) => {
        this.startWaiter = null;
        if (reply.type === "started") {
          this.started = true;
          this.notifyHandle = reply.notifyHandle ?? -1;
          resolve();
        } else if (reply.type === "error") {
          reject(new StartError(reply.message ?? "", reply.privilege === true));
        } else reject(new Error("unexpected reply"));
      };
      void this.loaded.then(() => this.worker.post({ type: "start", config }));
    });
  }

  /** Posts a request with a fresh id; resolves with the worker's reply to it. */
  ask(
    type: string,
    fields: Record<string, unknown>,
    timeoutMs = WORKER_REPLY_TIMEOUT_MS,
  ): Promise<PlaneMessage> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`${this.name} worker did not answer "${type}" within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, (reply) => {
        clearTimeout(timer);
        if (reply.type === "error") reject(new Error(reply.message));
        else resolve(reply);
      });
      // Announced first: the thread's loop then turns its event loop to take it. The
      // poller is alive: only a request posted after this one could stop it.
      const rc = Poller.notify(this.lib, this.notifyHandle);
      if (rc < 0) {
        this.waiting.delete(id);
        clearTimeout(timer);
        reject(new Error(`${this.name} worker's poller: ${errnoName(-rc)}`));
        return;
      }
      this.worker.post({ type, id, ...fields });
    });
  }

  /**
   * The "stop" request (its exit is expected from now on); then the thread ends.
   * graceMs: how long the thread may take to stop on top of a reply's usual wait.
   */
  async stop(fields: Record<string, unknown>, graceMs = 0): Promise<PlaneMessage> {
    this.stopping = true;
    const reply = await this.ask("stop", fields, WORKER_REPLY_TIMEOUT_MS + graceMs);
    this.worker.terminate();
    return reply;
  }
}
