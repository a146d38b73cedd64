// The TCP path in a Worker (tcp.dataPlane "worker", src/tcp/plane.ts): this thread may
// block, so its Poller waits in epoll_wait itself and the splice engine runs inline in
// it (src/tcp/relay.ts). Requests from the main thread (src/sys/worker_plane.ts: start,
// then snapshot, reconfigure and stop with ids) come announced through the Poller's
// notice (its loop turns the event loop for them, not per round: src/sys/poller.ts).
import type { Config } from "../config/load.ts";
import { configureLog } from "../control/log.ts";
import type { SessionQuery } from "../control/query.ts";
import { StartError } from "../sys/errno.ts";
import { loadFfi } from "../sys/ffi.ts";
import { parentPort } from "../sys/thread.ts";
import { tcpPlaneView } from "./plane.ts";
import { TcpRelay } from "./relay.ts";

const parent = parentPort();

type Request =
  | { type: "start"; config: Config }
  | { type: "snapshot"; id: number; connectionsListed: number; query: SessionQuery | null }
  | { type: "reconfigure"; id: number; config: Config }
  // Answered once every connection is accounted for (graceMs, then resets).
  | { type: "stop"; id: number; graceMs: number };

let relay: TcpRelay | null = null;
let stopping = false;

/** The data path cannot go on: report it with the last counters; the main thread exits. */
function fatal(message: string): void {
  let data = null;
  try {
    data = relay?.snapshot() ?? null;
  } catch {
    // The counters are plain numbers; if even they fail, report without them.
  }
  parent.post({ type: "fatal", message, data });
}

async function handle(m: Request): Promise<void> {
  if (m.type === "start") {
    configureLog(m.config.log); // this thread's own logger: same level and format
    try {
      relay = new TcpRelay(loadFfi(), m.config, {
        inline: true,
        onFatal: fatal,
        onFlows: (batch) => parent.post({ type: "flows", batch }),
      });
      relay.start();
      parent.post({ type: "started", notifyHandle: relay.notifyHandle });
    } catch (err) {
      relay = null;
      const privilege = err instanceof StartError && err.privilege;
      parent.post({ type: "error", message: (err as Error).message, privilege });
    }
    return;
  }
  // Snapshots are answered while a stop waits for its connections (metrics go on).
  if (relay === null || (stopping && m.type !== "snapshot")) {
    parent.post({ type: "error", id: m.id, message: "TCP worker not running" });
    return;
  }
  try {
    if (m.type === "snapshot") {
      const data = tcpPlaneView(relay, m.connectionsListed, m.query);
      parent.post({ type: "snapshot", id: m.id, data });
    } else if (m.type === "reconfigure") {
      configureLog(m.config.log);
      relay.reconfigure(m.config);
      parent.post({ type: "reconfigured", id: m.id });
    } else {
      stopping = true;
      await relay.stop(m.graceMs);
      parent.post({ type: "stopped", id: m.id, data: relay.snapshot() });
    }
  } catch (err) {
    parent.post({ type: "error", id: m.id, message: (err as Error).message });
  } finally {
    // Only now: while a stop waits for its connections, the loop keeps turning the event
    // loop for the stop's own timers (every announced message not yet handled does that).
    relay?.messageHandled();
  }
}

parent.onMessage((message) => void handle(message as Request));

// Only from here on is a message heard (src/sys/worker_plane.ts waits for it to "start").
parent.post({ type: "loaded" });
