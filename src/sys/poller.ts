// The epoll thread's bridge to JavaScript. C runs epoll_wait on every data socket
// (EPOLLONESHOT) and calls one threadsafe JSCallback with the socket's token; the
// handler drains the socket and re-arms it in a `finally` (DESIGN.md: a handler that
// throws before re-arming would stall that socket forever).
import { JSCallback, FFIType } from "bun:ffi";
import type { RelayLib } from "./ffi.ts";

/** Set on the token by the C thread when epoll reported EPOLLERR (ICMP error queued). */
export const WAKE_ERROR_FLAG = 0x40000000;
export const WAKE_TOKEN_MASK = 0x3fffffff;

export class Poller {
  private readonly lib: RelayLib;
  private readonly handle: number;
  private readonly callback: JSCallback;
  private running = false;
  private closed = false;

  constructor(lib: RelayLib, onWake: (token: number) => void) {
    this.lib = lib;
    const handle = lib.rl_poll_open();
    if (handle < 0) throw new Error(`epoll_create1/eventfd failed: ${-handle}`);
    this.handle = handle;
    this.callback = new JSCallback(onWake, {
      args: [FFIType.i32],
      returns: FFIType.void,
      threadsafe: true,
    });
  }

  add(fd: number, token: number): number {
    return this.lib.rl_poll_add(this.handle, fd, token);
  }

  rearm(fd: number, token: number): number {
    return this.lib.rl_poll_rearm(this.handle, fd, token);
  }

  remove(fd: number): number {
    return this.lib.rl_poll_del(this.handle, fd);
  }

  get wakes(): number {
    return this.lib.rl_poll_wakes(this.handle);
  }

  start(): void {
    const rc = this.lib.rl_poll_start(this.handle, this.callback.ptr!);
    if (rc < 0) throw new Error(`poll thread did not start: ${-rc}`);
    this.running = true;
  }

  /** Joins the thread, then closes the callback (calling it after close() segfaults). */
  stop(): void {
    if (this.closed) return;
    this.closed = true;
    const rc = this.lib.rl_poll_stop(this.handle);
    if (rc < 0) throw new Error(`poll thread did not stop: ${-rc}`);
    this.running = false;
    this.callback.close();
  }

  get isRunning(): boolean {
    return this.running;
  }
}
