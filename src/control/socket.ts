// The control socket: a Unix stream socket (config control.socketPath) on which `relay
// stats`, `relay sessions` and `relay top` ask a running relay for its counters and
// sessions. Frames: src/control/frame.ts; commands: src/control/commands.ts.
//
// It is the control plane: one Packr built here at start-up, nothing of it on the data
// path (the UDP Worker answers a query between two waits). Everything is bounded, since
// whoever may open the socket may also misbehave on it: request frames (64 KiB), reply
// frames (16 MiB), clients at once (16), requests queued per client (4) and their rate
// (20 per second), idle clients (closed after 2 minutes). Requests run one at a time
// across clients, so the data path answers at most one query at a time.
//
// The socket is the relay's own: created mode 0600 (its directory 0750 when missing), a
// file left by a relay that died (nobody answers a connect) is replaced, one a running
// relay answers on is refused (two relays never share it), and it is removed at exit.
import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import type { Packr } from "msgpackr";
import { connectUnix, listenUnix, type StreamListener, type StreamSocket } from "../sys/net.ts";
import type { ControlHandler, ControlReply } from "./commands.ts";
import {
  createPackr,
  encodeFrame,
  FrameReader,
  framePayloadBytes,
  REPLY_FRAME_BYTES_MAX,
  REQUEST_FRAME_BYTES_MAX,
} from "./frame.ts";

/** The bounds of the socket (tests use smaller ones to reach them). */
export interface ControlLimits {
  /** Clients connected at once; the next one gets an error frame and is closed. */
  clientsMax: number;
  /** Requests of one client waiting behind the one being answered; past it: closed. */
  requestsQueuedMax: number;
  /** Token bucket per client (burst = one second's worth); past it: an error reply. */
  requestsPerSecondMax: number;
  /** A client silent this long is closed. */
  clientIdleS: number;
}

export const CONTROL_LIMITS: ControlLimits = {
  clientsMax: 16,
  requestsQueuedMax: 4,
  // `relay top` at its fastest refresh asks 10 per second.
  requestsPerSecondMax: 20,
  // top's slowest refresh is 60 s.
  clientIdleS: 120,
};
/** How long the start-up probe of an existing socket file waits for a connect. */
const PROBE_TIMEOUT_MS = 2_000;
/** Owner read/write only: the socket shows every flow of the host. */
const SOCKET_MODE = 0o600;
const DIRECTORY_MODE = 0o750;

/** The control socket could not be set up: the message says why (exit 1). */
export class ControlSocketError extends Error {}

interface Client {
  readonly reader: FrameReader;
  /** Decoded requests (or why one did not decode), answered in order. */
  readonly queue: Array<{ request: unknown } | { error: string }>;
  /** A request is with the handler. */
  busy: boolean;
  /** Reply bytes the socket did not take yet (written on drain). */
  unsent: Uint8Array | null;
  /** Close once `unsent` is out; read nothing more. */
  closing: boolean;
  closed: boolean;
  tokens: number;
  tokensAtMs: number;
}

type ClientSocket = StreamSocket<Client | null>;

export class ControlSocket {
  private readonly packr: Packr = createPackr();
  private listener: StreamListener | null = null;
  private readonly clients = new Set<ClientSocket>();
  /** Requests run one at a time, whoever sent them. */
  private chain: Promise<void> = Promise.resolve();
  private inode = -1;
  private readonly onExit = () => this.removeFile();

  private constructor(
    readonly path: string,
    private readonly handler: ControlHandler,
    private readonly limits: ControlLimits,
    private readonly log: (line: string) => void,
  ) {}

  /**
   * Listens on `path` ("": no socket, null). Throws ControlSocketError when a running
   * relay answers there, or the path cannot be used.
   */
  static async start(
    path: string,
    handler: ControlHandler,
    options: { limits?: ControlLimits; log?: (line: string) => void } = {},
  ): Promise<ControlSocket | null> {
    if (path === "") return null;
    const log = options.log ?? ((line: string) => console.error(line));
    const control = new ControlSocket(path, handler, options.limits ?? CONTROL_LIMITS, log);
    await control.prepare();
    await control.listen();
    return control;
  }

  /** Clients connected now. */
  get clientCount(): number {
    return this.clients.size;
  }

  /** Stops listening, closes every client and removes the socket file. */
  stop(): void {
    if (this.listener === null) return;
    this.listener.stop();
    this.listener = null;
    for (const socket of this.clients) socket.terminate();
    this.clients.clear();
    this.removeFile();
    process.off("exit", this.onExit);
  }

  // ---- set-up ----

  private async prepare(): Promise<void> {
    const path = this.path;
    try {
      mkdirSync(dirname(path), { recursive: true, mode: DIRECTORY_MODE });
    } catch (err) {
      throw new ControlSocketError(
        `control socket ${path}: cannot create its directory: ${describe(err)}`,
      );
    }
    let isSocket: boolean;
    try {
      isSocket = lstatSync(path).isSocket();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
      throw new ControlSocketError(`control socket ${path}: ${describe(err)}`);
    }
    if (!isSocket) {
      throw new ControlSocketError(
        `control socket ${path} exists and is not a socket: not replacing it ` +
          "(remove it, or set control.socketPath)",
      );
    }
    const answer = await probe(path);
    if (answer === "stale") {
      // A relay that died without removing it (SIGKILL, a crash): nobody listens.
      try {
        unlinkSync(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
          throw new ControlSocketError(`control socket ${path}: stale, ${describe(err)}`);
        }
      }
      this.log(`[relay] control socket ${path}: replaced a stale socket file`);
      return;
    }
    throw new ControlSocketError(
      `control socket ${path}: another relay answers on it (${answer}); two relays never ` +
        "share one: stop that relay, or give this one its own control.socketPath",
    );
  }

  private async listen(): Promise<void> {
    const path = this.path;
    // The socket file must never exist with a wider mode, not even until a chmod: the
    // umask covers its creation (the process has no other thread creating files now).
    const umaskBefore = process.umask(0o777 & ~SOCKET_MODE);
    try {
      this.listener = await listenUnix<Client | null>(path, {
        open: (socket) => this.onOpen(socket),
        data: (socket, chunk) => this.onData(socket, chunk),
        drain: (socket) => this.onDrain(socket),
        close: (socket) => this.onClose(socket),
        error: (socket) => this.onClose(socket),
        timeout: (socket) => socket.terminate(),
      });
    } catch (err) {
      throw new ControlSocketError(`control socket ${path}: listen: ${describe(err)}`);
    } finally {
      process.umask(umaskBefore);
    }
    try {
      chmodSync(path, SOCKET_MODE);
      this.inode = statSync(path).ino;
    } catch (err) {
      this.stop();
      throw new ControlSocketError(`control socket ${path}: ${describe(err)}`);
    }
    // Removed at any exit (a fatal error's process.exit too), not only on SIGTERM.
    process.on("exit", this.onExit);
    this.log(`[relay] control socket ${path} (mode 0600)`);
  }

  /** Removes the socket file if it is still the one this relay created. */
  private removeFile(): void {
    try {
      if (statSync(this.path).ino === this.inode) unlinkSync(this.path);
    } catch {
      // Already gone (the listener may remove it on stop): nothing to do.
    }
  }

  // ---- clients ----

  private onOpen(socket: ClientSocket): void {
    if (this.listener === null) {
      socket.terminate();
      return;
    }
    if (this.clients.size >= this.limits.clientsMax) {
      socket.data = null;
      const frame = encodeFrame(this.packr, {
        error: `too many control clients (at most ${this.limits.clientsMax} at once)`,
      });
      socket.write(frame);
      socket.end();
      return;
    }
    socket.data = {
      reader: new FrameReader(REQUEST_FRAME_BYTES_MAX),
      queue: [],
      busy: false,
      unsent: null,
      closing: false,
      closed: false,
      tokens: this.limits.requestsPerSecondMax,
      tokensAtMs: performance.now(),
    };
    this.clients.add(socket);
    socket.timeout(this.limits.clientIdleS);
  }

  private onData(socket: ClientSocket, chunk: Uint8Array): void {
    const client = socket.data;
    if (!client || client.closing) return;
    const refused = client.reader.push(chunk, (payload) => {
      if (client.closing) return;
      if (client.queue.length >= this.limits.requestsQueuedMax) {
        this.refuse(socket, client, `more than ${this.limits.requestsQueuedMax} requests waiting`);
        return;
      }
      try {
        client.queue.push({ request: this.packr.unpack(payload) });
      } catch (err) {
        // The frame is whole, so the stream is still in step: answer, then go on.
        client.queue.push({ error: `malformed request (not msgpack): ${describe(err)}` });
      }
    });
    if (refused !== null) this.refuse(socket, client, refused);
    else this.pump(socket, client);
  }

  private onDrain(socket: ClientSocket): void {
    const client = socket.data;
    if (!client || client.unsent === null) return;
    this.write(socket, client, client.unsent);
    if (client.unsent !== null) return;
    if (client.closing) socket.end();
    else this.pump(socket, client);
  }

  private onClose(socket: ClientSocket): void {
    const client = socket.data;
    if (client) client.closed = true;
    this.clients.delete(socket);
  }

  /** An error frame, then the connection closes (the stream cannot go on). */
  private refuse(socket: ClientSocket, client: Client, message: string): void {
    client.closing = true;
    client.queue.length = 0;
    this.write(socket, client, encodeFrame(this.packr, { error: message }));
    if (client.unsent === null) socket.end();
  }

  /** Starts on the next request of `client` unless one is with the handler or unsent. */
  private pump(socket: ClientSocket, client: Client): void {
    if (client.busy || client.closing || client.unsent !== null) return;
    const next = client.queue.shift();
    if (next === undefined) return;
    if ("error" in next) {
      this.reply(socket, client, { error: next.error });
      return;
    }
    if (!this.takeToken(client)) {
      this.reply(socket, client, {
        error: `too many requests: at most ${this.limits.requestsPerSecondMax} per second`,
      });
      return;
    }
    client.busy = true;
    const run = async () => {
      let reply: ControlReply;
      try {
        reply = await this.handler(next.request);
      } catch (err) {
        reply = { error: `request failed: ${describe(err)}` };
      }
      client.busy = false;
      if (!client.closed) this.reply(socket, client, reply);
    };
    this.chain = this.chain.then(run, run);
  }

  private reply(socket: ClientSocket, client: Client, reply: ControlReply): void {
    let frame: Uint8Array;
    try {
      frame = encodeFrame(this.packr, reply);
    } catch (err) {
      frame = encodeFrame(this.packr, { error: `reply not encodable: ${describe(err)}` });
    }
    if (framePayloadBytes(frame) > REPLY_FRAME_BYTES_MAX) {
      frame = encodeFrame(this.packr, {
        error: `reply of ${framePayloadBytes(frame)} bytes exceeds ${REPLY_FRAME_BYTES_MAX}`,
      });
    }
    this.write(socket, client, frame);
    if (client.unsent === null) this.pump(socket, client);
  }

  /** Writes what the socket takes; keeps the rest for the drain callback. */
  private write(socket: ClientSocket, client: Client, bytes: Uint8Array): void {
    if (client.closed) return;
    const written = socket.write(bytes);
    client.unsent = written >= bytes.length ? null : bytes.subarray(Math.max(0, written));
  }

  private takeToken(client: Client): boolean {
    const now = performance.now();
    const perSecond = this.limits.requestsPerSecondMax;
    const refill = ((now - client.tokensAtMs) / 1000) * perSecond;
    client.tokens = Math.min(perSecond, client.tokens + refill);
    client.tokensAtMs = now;
    if (client.tokens < 1) return false;
    client.tokens -= 1;
    return true;
  }
}

/**
 * Whether something answers on the socket file at `path`: "stale" when nothing
 * listens (ECONNREFUSED), else what was seen. A connect that neither succeeds nor
 * fails in time counts as an answer: never remove a socket someone may be using.
 */
async function probe(path: string): Promise<"stale" | string> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<string>((resolve) => {
    const message = `no answer to a connect within ${PROBE_TIMEOUT_MS} ms`;
    timer = setTimeout(() => resolve(message), PROBE_TIMEOUT_MS);
  });
  const connect = connectUnix(path, { data() {} }).then(
    (socket) => {
      socket.end();
      return "a connect succeeded";
    },
    (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ECONNREFUSED" || code === "ENOENT") return "stale";
      return `connect: ${describe(err)}`;
    },
  );
  try {
    return await Promise.race([connect, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code} (${e.message})` : String(e?.message ?? err);
}
