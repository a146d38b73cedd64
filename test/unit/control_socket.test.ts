// The control socket, in process with a stand-in handler: its file (mode, directory,
// removal), a stale file replaced and a live one refused, and each bound reached
// (oversized frame, clients, queued requests, request rate) without the relay failing.
import { afterEach, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ControlHandler } from "../../src/control/commands.ts";
import { createPackr, encodeFrame, FrameReader } from "../../src/control/frame.ts";
import { CONTROL_LIMITS, ControlSocket, ControlSocketError } from "../../src/control/socket.ts";
import { waitFor } from "../lab/wait_for.ts";

const packr = createPackr();
const WAIT = { timeoutMs: 10_000 };

/** A raw client: writes bytes, collects decoded reply frames, notes the close. */
class RawClient {
  readonly replies: any[] = [];
  closed = false;
  private readonly reader = new FrameReader(16 << 20);
  private constructor(readonly socket: Awaited<ReturnType<typeof Bun.connect>>) {}

  static async open(path: string): Promise<RawClient> {
    let client: RawClient | null = null;
    const pending: Uint8Array[] = [];
    const socket = await Bun.connect({
      unix: path,
      socket: {
        data: (_s, chunk) => {
          if (client) client.onData(chunk);
          else pending.push(chunk);
        },
        close: () => {
          if (client) client.closed = true;
        },
      },
    });
    client = new RawClient(socket);
    for (const chunk of pending) client.onData(chunk);
    return client;
  }

  send(value: unknown): void {
    this.socket.write(encodeFrame(packr, value));
  }

  /** Waits for the reply number `n` (1-based) and returns it. */
  async reply(n: number, what = `reply ${n}`): Promise<any> {
    await waitFor(
      () => this.replies.length,
      (count) => count >= n,
      { what, ...WAIT },
    );
    return this.replies[n - 1];
  }

  waitClosed(what: string) {
    return waitFor(
      () => this.closed,
      (closed) => closed,
      { what, ...WAIT },
    );
  }

  private onData(chunk: Uint8Array): void {
    this.reader.push(chunk, (payload) => this.replies.push(packr.unpack(payload)));
  }
}

const dirs: string[] = [];
const sockets: ControlSocket[] = [];

function tempPath(): string {
  const dir = mkdtempSync(join(tmpdir(), "relay-control-"));
  dirs.push(dir);
  return join(dir, "run", "control.sock");
}

/** Echoes the request back, counted: enough to see ordering and bounds. */
const echo: ControlHandler = async (request) => ({ echo: request as Record<string, unknown> });

/** What the socket logged (start-up lines), per test. */
const logged: string[] = [];
const log = (line: string) => logged.push(line);

async function start(path: string, handler = echo, limits = CONTROL_LIMITS) {
  const control = await ControlSocket.start(path, handler, { limits, log });
  if (!control) throw new Error("no control socket");
  sockets.push(control);
  return control;
}

afterEach(() => {
  logged.length = 0;
  for (const s of sockets.splice(0)) s.stop();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("control socket", () => {
  test("answers requests; the socket is 0600 in a 0750 directory; removed at stop", async () => {
    const path = tempPath();
    const control = await start(path);
    expect(statSync(path).isSocket()).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(path, "..")).mode & 0o777).toBe(0o750);
    const client = await RawClient.open(path);
    client.send({ cmd: "stats" });
    client.send({ cmd: "sessions", limit: 3 });
    expect(await client.reply(2)).toEqual({ echo: { cmd: "sessions", limit: 3 } });
    expect(client.replies[0]).toEqual({ echo: { cmd: "stats" } });
    control.stop();
    expect(existsSync(path)).toBe(false);
    await client.waitClosed("the client to be closed at stop");
  });

  test('"" is no socket', async () => {
    expect(await ControlSocket.start("", echo, { log })).toBeNull();
  });

  test("a stale socket file (nobody listening) is replaced", async () => {
    const path = tempPath();
    // What a relay killed with SIGKILL leaves: a bound socket file, no listener.
    const dir = join(path, "..");
    spawnSync("mkdir", ["-p", dir]);
    const made = spawnSync("python3", [
      "-c",
      `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)})`,
    ]);
    expect(made.status).toBe(0);
    expect(statSync(path).isSocket()).toBe(true);
    await start(path);
    expect(logged).toEqual([
      `[relay] control socket ${path}: replaced a stale socket file`,
      `[relay] control socket ${path} (mode 0600)`,
    ]);
    const client = await RawClient.open(path);
    client.send({ cmd: "stats" });
    expect(await client.reply(1)).toEqual({ echo: { cmd: "stats" } });
  });

  test("a socket a running relay answers on is refused; that relay goes on", async () => {
    const path = tempPath();
    await start(path);
    const second = ControlSocket.start(path, echo, { log });
    await expect(second).rejects.toThrow(ControlSocketError);
    await expect(second).rejects.toThrow(
      `control socket ${path}: another relay answers on it (a connect succeeded); two ` +
        "relays never share one",
    );
    const client = await RawClient.open(path);
    client.send({ cmd: "stats" });
    expect(await client.reply(1)).toEqual({ echo: { cmd: "stats" } });
  });

  test("a file that is not a socket is never replaced", async () => {
    const path = tempPath();
    spawnSync("mkdir", ["-p", join(path, "..")]);
    writeFileSync(path, "not a socket");
    await expect(ControlSocket.start(path, echo, { log })).rejects.toThrow(
      "exists and is not a socket",
    );
    expect(readFileSync(path, "utf8")).toBe("not a socket");
  });

  test("an oversized frame: an error frame, that client closed, the others served", async () => {
    const path = tempPath();
    await start(path);
    const bad = await RawClient.open(path);
    const good = await RawClient.open(path);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, (64 << 10) + 1);
    bad.socket.write(header);
    expect(await bad.reply(1)).toEqual({
      error: "frame of 65537 bytes exceeds the bound of 65536 bytes",
    });
    await bad.waitClosed("the client with an oversized frame to be closed");
    good.send({ cmd: "stats" });
    expect(await good.reply(1)).toEqual({ echo: { cmd: "stats" } });
  });

  test("malformed msgpack and bad requests get error replies; the client goes on", async () => {
    const path = tempPath();
    const failing: ControlHandler = async (request) => {
      if ((request as any)?.cmd === "boom") throw new Error("handler broke");
      return { ok: true };
    };
    await start(path, failing);
    const client = await RawClient.open(path);
    // A whole frame holding a truncated value: an array of 2 with one element.
    client.socket.write(new Uint8Array([0, 0, 0, 2, 0x92, 0x01]));
    client.send({ cmd: "boom" });
    client.send({ cmd: "stats" });
    expect((await client.reply(1)).error).toContain("malformed request (not msgpack)");
    expect(await client.reply(2)).toEqual({ error: "request failed: handler broke" });
    expect(await client.reply(3)).toEqual({ ok: true });
    expect(client.closed).toBe(false);
  });

  test("at most clientsMax clients: the next gets an error frame and is closed", async () => {
    const path = tempPath();
    const control = await start(path, echo, { ...CONTROL_LIMITS, clientsMax: 3 });
    const clients = await Promise.all([1, 2, 3].map(() => RawClient.open(path)));
    await waitFor(
      () => control.clientCount,
      (n) => n === 3,
      { what: "3 clients connected", ...WAIT },
    );
    const extra = await RawClient.open(path);
    expect(await extra.reply(1)).toEqual({ error: "too many control clients (at most 3 at once)" });
    await extra.waitClosed("the client past the bound to be closed");
    clients[0].send({ cmd: "stats" });
    expect(await clients[0].reply(1)).toEqual({ echo: { cmd: "stats" } });
  });

  test("requests queued behind a slow one are bounded: past it, the client is closed", async () => {
    const path = tempPath();
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    const slow: ControlHandler = async (request) => {
      await held;
      return { echo: request as Record<string, unknown> };
    };
    await start(path, slow, { ...CONTROL_LIMITS, requestsQueuedMax: 2 });
    const client = await RawClient.open(path);
    // One with the handler, two queued, the fourth is one too many.
    for (let i = 0; i < 4; i++) client.send({ cmd: "stats", i });
    expect(await client.reply(1)).toEqual({ error: "more than 2 requests waiting" });
    await client.waitClosed("the client past the queue bound to be closed");
    release();
  });

  test("past the request rate: an error reply, the connection stays", async () => {
    const path = tempPath();
    await start(path, echo, { ...CONTROL_LIMITS, requestsPerSecondMax: 1 });
    const client = await RawClient.open(path);
    // Sent together, answered within far less than the second a new token takes.
    client.send({ cmd: "stats" });
    client.send({ cmd: "stats" });
    expect(await client.reply(1)).toEqual({ echo: { cmd: "stats" } });
    expect(await client.reply(2)).toEqual({ error: "too many requests: at most 1 per second" });
    expect(client.closed).toBe(false);
  });
});
