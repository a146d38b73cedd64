// The UDP data path in a Worker (src/udp/plane.ts): this thread may block, so it
// waits in epoll_wait itself (Poller inline mode) and runs its timers from that loop.
// The main thread announces each message through the poller's notice eventfd
// (Poller.notify on the handle "started" gives it) before posting it, so the loop lets
// the event loop turn only to deliver a message, never per round.
import type { Config } from "../config/load.ts";
import { configureLog } from "../control/log.ts";
import type { SessionQuery } from "../control/query.ts";
import { StartError } from "../sys/errno.ts";
import { loadFfi } from "../sys/ffi.ts";
import { parentPort } from "../sys/thread.ts";
import { faultWorkerCrash } from "../sys/test_faults.ts";
import { UdpRelay } from "./relay.ts";

const parent = parentPort();

type Request =
  | { type: "start"; config: Config }
  // query: the control socket's `sessions` (filter, sort, limit), applied here so that
  // at most its limit of views is copied to the main thread.
  | { type: "snapshot"; id: number; sessionsListed: number; query: SessionQuery | null }
  | { type: "stop"; id: number; sessionsListed: number }
  // A reload (src/udp/plane.ts): handled here, between two epoll waits.
  | { type: "reconfigure"; id: number; config: Config };

let relay: UdpRelay | null = null;

/** A bug on the data path: report it with the last counters; the main thread exits. */
function fatal(message: string): void {
  let data = null;
  try {
    data = relay?.snapshot(0) ?? null;
  } catch {
    // The counters are plain numbers; if even they fail, report without them.
  }
  parent.post({ type: "fatal", message, data });
  try {
    relay?.stop();
  } catch {
    // Already failing: the main thread ends the process.
  }
  relay = null;
}

parent.onMessage((message) => {
  const m = message as Request;
  if (m.type === "start") {
    configureLog(m.config.log); // this thread's own logger: same level and format
    try {
      relay = new UdpRelay(loadFfi(), m.config, {
        inline: true,
        onFatal: fatal,
        // Ended sessions, one batch per timer tick (or more at stop), for the flow log
        // the main thread writes. Never per session.
        onFlows: (batch) => parent.post({ type: "flows", batch }),
      });
      relay.start();
      parent.post({ type: "started", notifyHandle: relay.notifyHandle });
      faultWorkerCrash();
    } catch (err) {
      relay = null;
      const privilege = err instanceof StartError && err.privilege;
      parent.post({ type: "error", message: (err as Error).message, privilege });
    }
    return;
  }
  if (relay === null) {
    parent.post({ type: "error", message: "UDP worker not started", privilege: false });
    return;
  }
  relay.messageHandled(); // every message after "start" was announced (Poller.notify)
  if (m.type === "reconfigure") {
    configureLog(m.config.log);
    relay.reconfigure(m.config);
    parent.post({ type: "reconfigured", id: m.id });
    return;
  }
  if (m.type === "snapshot") {
    const data = relay.snapshot(m.sessionsListed, m.query);
    parent.post({ type: "snapshot", id: m.id, data });
    return;
  }
  const data = relay.snapshot(m.sessionsListed);
  relay.stop();
  relay = null;
  parent.post({ type: "stopped", id: m.id, data });
});

// Only from here on is a message heard. Under Bun one that arrived while this module was
// still loading could go to no handler and be lost (a start that never came: seen with
// several workers), so the main thread posts "start" after this (src/udp/plane.ts).
parent.post({ type: "loaded" });
