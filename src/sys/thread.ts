// The UDP data plane's thread: a Bun Worker under Bun, a worker_threads Worker under Node.
// Both block in epoll_wait (Poller inline mode) and hear messages between waits. One
// wrapper, so src/udp/plane.ts and src/udp/worker.ts do not know which runtime runs them.
import { Worker as NodeWorker, parentPort as nodeParentPort } from "node:worker_threads";
import { RUNTIME } from "./runtime.ts";

/** The main thread's side of a data-plane thread. */
export interface DataThread {
  post(message: unknown): void;
  onMessage(handler: (message: unknown) => void): void;
  /** An uncaught error in the thread (its message). */
  onError(handler: (message: string) => void): void;
  /** The thread ended (after terminate(), or by itself). */
  onExit(handler: () => void): void;
  terminate(): void;
}

/** The thread's side: its messages from, and to, the main thread. */
export interface ParentPort {
  post(message: unknown): void;
  onMessage(handler: (message: unknown) => void): void;
}

/**
 * Starts src/udp/worker.ts on its own thread: the source under Bun, and under Node its
 * bundle beside the main one (scripts/build_node.ts writes dist/node/worker.js).
 */
export function startDataThread(): DataThread {
  if (RUNTIME === "bun") {
    const worker = new Worker(new URL("../udp/worker.ts", import.meta.url).href);
    return {
      post: (m) => worker.postMessage(m),
      onMessage: (h) => {
        worker.onmessage = (event: MessageEvent) => h(event.data);
      },
      onError: (h) => {
        worker.onerror = (event) => h(event.message);
      },
      onExit: (h) => worker.addEventListener("close", h),
      terminate: () => worker.terminate(),
    };
  }
  const worker = new NodeWorker(new URL("./worker.js", import.meta.url));
  return {
    post: (m) => worker.postMessage(m),
    onMessage: (h) => worker.on("message", h),
    onError: (h) => worker.on("error", (err: Error) => h(err.message)),
    onExit: (h) => worker.on("exit", h),
    terminate: () => void worker.terminate(),
  };
}

/** In the data-plane thread: the way to the main thread. */
export function parentPort(): ParentPort {
  if (RUNTIME === "bun") {
    const self = globalThis as unknown as Worker;
    return {
      post: (m) => self.postMessage(m),
      onMessage: (h) => {
        self.onmessage = (event: MessageEvent) => h(event.data);
      },
    };
  }
  const port = nodeParentPort;
  if (port === null) throw new Error("src/udp/worker.ts runs only as a worker thread");
  return {
    post: (m) => port.postMessage(m),
    onMessage: (h) => port.on("message", h),
  };
}
