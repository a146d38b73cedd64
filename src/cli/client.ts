// The client side of the control socket (src/control/socket.ts): connect, send one
// request frame, await one reply frame. Used by `relay stats`, `sessions` and `top`.
import type { Packr } from "msgpackr";
import { encodeFrame, FrameReader, REPLY_FRAME_BYTES_MAX } from "../control/frame.ts";
import { connectUnix, type StreamSocket } from "../sys/net.ts";

/** A relay answers between two waits of its data path: seconds mean it is stuck. */
const REPLY_TIMEOUT_MS = 15_000;
/** Frames that arrived with no request waiting (the relay's refusal at connect). */
const EARLY_REPLIES_MAX = 4;

/** Why the relay could not be asked: printed as is, then exit 1. */
export class ControlClientError extends Error {}

type Reply = Record<string, unknown>;

export class ControlClient {
  private readonly reader = new FrameReader(REPLY_FRAME_BYTES_MAX);
  private readonly early: Reply[] = [];
  private waiter: { resolve: (r: Reply) => void; reject: (e: Error) => void } | null = null;
  private unsent: Uint8Array | null = null;
  private ended: string | null = null;
  private socket: StreamSocket<undefined> | null = null;

  private constructor(
    readonly path: string,
    private readonly packr: Packr,
  ) {}

  /** Connects to the relay at `path`; a relay that is not running is a clear error. */
  static async connect(path: string, packr: Packr): Promise<ControlClient> {
    const client = new ControlClient(path, packr);
    try {
      client.socket = await connectUnix<undefined>(path, {
        data: (_socket, chunk) => client.onData(chunk),
        drain: (socket) => client.flush(socket),
        close: () => client.onEnd("the relay closed the control connection"),
        error: (_socket, err) => client.onEnd(`control connection: ${err.message}`),
      });
    } catch (err) {
      throw new ControlClientError(connectError(path, err as NodeJS.ErrnoException));
    }
    return client;
  }

  /** Sends `request` and returns the relay's reply; an {error} reply is thrown. */
  async request(request: Reply): Promise<Reply> {
    if (this.waiter !== null) throw new Error("ControlClient: one request at a time");
    const reply =
      this.early.shift() ??
      (await new Promise<Reply>((resolve, reject) => {
        if (this.ended !== null) {
          reject(new ControlClientError(this.ended));
          return;
        }
        const timer = setTimeout(() => {
          this.waiter = null;
          reject(new ControlClientError(`no reply from the relay within ${REPLY_TIMEOUT_MS} ms`));
        }, REPLY_TIMEOUT_MS);
        this.waiter = {
          resolve: (r) => {
            clearTimeout(timer);
            resolve(r);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        this.unsent = encodeFrame(this.packr, request);
        if (this.socket) this.flush(this.socket);
      }));
    if (typeof reply.error === "string") throw new ControlClientError(`relay: ${reply.error}`);
    return reply;
  }

  close(): void {
    this.ended ??= "closed";
    this.socket?.end();
  }

  private flush(socket: StreamSocket<undefined>): void {
    if (this.unsent === null) return;
    const written = socket.write(this.unsent);
    this.unsent = written >= this.unsent.length ? null : this.unsent.subarray(Math.max(0, written));
  }

  private onData(chunk: Uint8Array): void {
    const refused = this.reader.push(chunk, (payload) => {
      let reply: Reply;
      try {
        reply = this.packr.unpack(payload) as Reply;
      } catch (err) {
        reply = { error: `malformed reply: ${(err as Error).message}` };
      }
      if (typeof reply !== "object" || reply === null) reply = { error: "malformed reply" };
      const waiter = this.waiter;
      this.waiter = null;
      if (waiter) waiter.resolve(reply);
      else if (this.early.length < EARLY_REPLIES_MAX) this.early.push(reply);
    });
    if (refused !== null) {
      this.onEnd(`reply refused: ${refused}`);
      this.socket?.terminate();
    }
  }

  private onEnd(reason: string): void {
    this.ended ??= reason;
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.reject(new ControlClientError(this.ended));
  }
}

/** What a failed connect means for someone who typed `relay stats`. */
function connectError(path: string, err: NodeJS.ErrnoException): string {
  const where =
    "(the path comes from --control PATH, else control.socketPath of --config FILE, " +
    "else the default)";
  switch (err.code) {
    case "ENOENT":
      return `no relay is running with control socket ${path}: no such file ${where}`;
    case "ECONNREFUSED":
      return `no relay is answering on ${path}: a stale socket file, its relay is gone ${where}`;
    case "EACCES":
    case "EPERM":
      return (
        `permission denied on ${path}: the control socket is mode 0600, for the ` +
        "relay's own user (run this as that user, e.g. with sudo)"
      );
    default:
      return `cannot connect to ${path}: ${err.code ?? err.message} ${where}`;
  }
}
