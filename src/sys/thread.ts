// A data plane's thread (UDP, or TCP with tcp.dataPlane "worker"): a Bun Worker under
// Bun, a worker_threads Worker under Node. Both block in epoll_wait (Poller inline mode)
// and hear messages between waits. One wrapper, so the planes (src/udp/plane.ts,
// src/tcp/plane.ts) and their threads' scripts do not know which runtime runs them.
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
 * Which plane's script: src/udp/worker.ts or src/tcp/tcp_worker.ts (not worker.ts: the
 * Node bundle names each output by its entry's base name, in one directory).
 */
export type DataThreadScript = "udp" | "tcp";

const SCRIPTS = {
  udp: { source: "../udp/worker.ts", bundle: "./worker.js" },
  tcp: { source: "../tcp/tcp_worker.ts", bundle: "./tcp_worker.js" },
} as const;

/**
 * Starts a plane's script on its own thread: the source under Bun, and under Node its
 * bundle beside the main one (scripts/build_node.ts writes dist/node/worker.js and
 * tcp_worker.js).
 */
export function startDataThread(script: DataThreadScript = "udp"): DataThread {
  if (RUNTIME === "bun") {
    const worker = new Worker(new URL(SCRIPTS[script].source, import.meta.url).href);
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
  const worker = new NodeWorker(new URL(SCRIPTS[script].bundle, import.meta.url));
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
  if (port === null) throw new Error("a data plane's script runs only as a worker thread");
  return {
    post: (m) => port.postMessage(m),
    onMessage: (h) => port.on("message", h),
  };
}
