// Unix stream sockets for the control socket and its client, in the shape of Bun's
// socket API (handlers per event; write() returns the bytes taken): Bun.listen and
// Bun.connect under Bun, node:net under Node.js.
import { createConnection, createServer, type Socket as NetSocket } from "node:net";
import { RUNTIME } from "./runtime.ts";

export interface StreamSocket<T> {
  /** The owner's per-connection state. */
  data: T;
  /** Bytes taken (the rest waits for the drain handler). */
  write(bytes: Uint8Array): number;
  /** Closes after what was written. */
  end(): void;
  /** Closes at once. */
  terminate(): void;
  /** Idle timeout in seconds: the timeout handler runs after that long without traffic. */
  timeout(seconds: number): void;
}

export interface StreamHandlers<T> {
  open?(socket: StreamSocket<T>): void;
  data?(socket: StreamSocket<T>, chunk: Uint8Array): void;
  drain?(socket: StreamSocket<T>): void;
  close?(socket: StreamSocket<T>): void;
  error?(socket: StreamSocket<T>, err: Error): void;
  timeout?(socket: StreamSocket<T>): void;
}

export interface StreamListener {
  /** Stops accepting; open connections stay (their owner closes them). */
  stop(): void;
}

/**
 * node:net, made to look like a Bun socket. Node's write() queues everything it is given;
 * to keep the owner's backpressure, once Node says its queue is past its mark, write()
 * takes nothing more until the drain event.
 */
class NodeStream<T> implements StreamSocket<T> {
  data = undefined as T;
  private blocked = false;

  constructor(
    private readonly socket: NetSocket,
    handlers: StreamHandlers<T>,
  ) {
    socket.on("data", (chunk: Buffer) => handlers.data?.(this, chunk));
    socket.on("drain", () => {
      this.blocked = false;
      handlers.drain?.(this);
    });
    socket.on("close", () => handlers.close?.(this));
    socket.on("error", (err) => handlers.error?.(this, err));
    socket.on("timeout", () => handlers.timeout?.(this));
  }

  write(bytes: Uint8Array): number {
    if (this.blocked || this.socket.destroyed) return 0;
    if (!this.socket.write(bytes)) this.blocked = true;
    return bytes.length;
  }

  end(): void {
    this.socket.end();
  }

  terminate(): void {
    this.socket.destroy();
  }

  timeout(seconds: number): void {
    this.socket.setTimeout(seconds * 1000);
  }
}

/** Listens on the unix socket `path`; rejects with the error (its code) when it cannot. */
export async function listenUnix<T>(
  path: string,
  handlers: StreamHandlers<T>,
): Promise<StreamListener> {
  if (RUNTIME === "bun") {
    const listener = Bun.listen<T>({
      unix: path,
      socket: handlers as Parameters<typeof Bun.listen<T>>[0]["socket"],
    });
    return { stop: () => listener.stop(true) };
  }
  const server = createServer((socket) => {
    const stream = new NodeStream<T>(socket, handlers);
    handlers.open?.(stream);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return { stop: () => server.close() };
}

/** Connects to the unix socket `path`; rejects with the error (its code) when it cannot. */
export async function connectUnix<T>(
  path: string,
  handlers: StreamHandlers<T>,
): Promise<StreamSocket<T>> {
  if (RUNTIME === "bun") {
    const socket = await Bun.connect<T>({
      unix: path,
      socket: handlers as Parameters<typeof Bun.connect<T>>[0]["socket"],
    });
    return socket as unknown as StreamSocket<T>;
  }
  const socket = createConnection(path);
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve();
    });
  });
  const stream = new NodeStream<T>(socket, handlers);
  handlers.open?.(stream);
  return stream;
}
