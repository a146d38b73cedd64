// The C helper's symbols (ffi/relay.h), in a form both bindings read: bun:ffi under Bun
// (src/sys/ffi_bun.ts), koffi under Node (src/sys/ffi_node.ts). Every symbol returns i32:
// n >= 0 or -errno (DESIGN.md: a u64 return costs ~16 ns and a BigInt; an i32 costs ~2 ns).
// "ptr" parameters take a Pointer (a number, from ptr()) or a typed array.

/** i32/u32/f64: numbers; ptr: an address; fn: a C function pointer (Bun's JSCallback). */
export type ArgType = "i32" | "u32" | "f64" | "ptr" | "fn";

export interface SymbolSpec {
  readonly args: readonly ArgType[];
  readonly returns: "i32";
}

export type SymbolTable = Readonly<Record<string, SymbolSpec>>;

/** A memory address as a number (exact: user-space addresses are below 2^47). */
export type Pointer = number;

/** What a "ptr" parameter accepts: an address, or a typed array (its own memory). */
export type PointerArg = Pointer | ArrayBufferView | null;

type ArgValue<T> = T extends "ptr" ? PointerArg : T extends "fn" ? unknown : number;
type ArgValues<A extends readonly ArgType[]> = { [K in keyof A]: ArgValue<A[K]> };

/** The callable functions of a symbol table. */
export type Library<S extends SymbolTable> = {
  [K in keyof S]: (...args: ArgValues<S[K]["args"]>) => number;
};

export const SYMBOLS = {
  rl_abi_version: { args: [], returns: "i32" },
  rl_layout_describe: { args: ["ptr", "i32"], returns: "i32" },
  rl_raise_nofile: { args: ["i32"], returns: "i32" },
  rl_socket: { args: ["i32", "ptr", "i32", "i32", "i32", "i32"], returns: "i32" },
  rl_close: { args: ["i32"], returns: "i32" },
  rl_udp_connect: { args: ["i32", "ptr", "i32", "i32"], returns: "i32" },
  rl_listen: { args: ["i32", "i32"], returns: "i32" },
  rl_local_port: { args: ["i32", "ptr"], returns: "i32" },
  rl_icmp_open: { args: ["i32"], returns: "i32" },
  rl_icmp_unreachable: {
    args: ["i32", "ptr", "i32", "i32", "ptr", "i32", "ptr", "i32"],
    returns: "i32",
  },
  rl_bind_device: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_stream_send: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_stream_recv: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_socket_error: { args: ["i32"], returns: "i32" },
  rl_send_wrapped: {
    args: ["i32", "ptr", "i32", "ptr", "i32", "ptr", "i32", "i32"],
    returns: "i32",
  },
  rl_recv_batch: { args: ["i32", "ptr", "i32", "i32", "ptr"], returns: "i32" },
  rl_recv_errors: { args: ["i32", "i32", "ptr"], returns: "i32" },
  rl_send_batch: { args: ["ptr", "u32", "ptr", "i32"], returns: "i32" },
  rl_original_dst: { args: ["i32", "ptr"], returns: "i32" },
  rl_poll_open: { args: ["i32"], returns: "i32" },
  rl_poll_add: { args: ["i32", "i32", "i32"], returns: "i32" },
  rl_poll_rearm: { args: ["i32", "i32", "i32"], returns: "i32" },
  rl_poll_del: { args: ["i32", "i32"], returns: "i32" },
  rl_poll_arm_out: { args: ["i32", "i32", "i32", "i32"], returns: "i32" },
  rl_poll_arm_both: { args: ["i32", "i32", "i32"], returns: "i32" },
  rl_poll_start: { args: ["i32", "fn"], returns: "i32" },
  rl_poll_start_pipe: { args: ["i32"], returns: "i32" },
  rl_poll_take: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_poll_sleep: { args: ["i32"], returns: "i32" },
  rl_poll_wait: { args: ["i32", "i32"], returns: "i32" },
  rl_poll_level_triggered: { args: ["i32"], returns: "i32" },
  rl_poll_stop: { args: ["i32"], returns: "i32" },
  rl_poll_stats: { args: ["i32", "ptr"], returns: "i32" },
  rl_poll_failed: { args: ["i32"], returns: "i32" },
  // TCP (issue 4): accept/connect for TypeScript's decisions, a splice engine for bytes.
  rl_tcp_accept: { args: ["i32", "ptr"], returns: "i32" },
  rl_tcp_connect: { args: ["ptr", "i32", "i32", "ptr", "i32", "i32"], returns: "i32" },
  rl_tcp_connect_via: {
    args: ["ptr", "i32", "i32", "ptr", "i32", "i32", "ptr"],
    returns: "i32",
  },
  rl_tcp_connect_result: { args: ["i32"], returns: "i32" },
  rl_tcp_recv: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_tcp_send: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_tcp_abort: { args: ["i32"], returns: "i32" },
  rl_tcp_peek: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_tcp_rcvlowat: { args: ["i32", "i32"], returns: "i32" },
  rl_tcp_engine_open: { args: ["i32", "i32", "i32", "i32", "i32", "i32"], returns: "i32" },
  rl_tcp_engine_set_timeouts: { args: ["i32", "i32", "i32"], returns: "i32" },
  rl_tcp_engine_event_fd: { args: ["i32"], returns: "i32" },
  rl_tcp_engine_failed: { args: ["i32"], returns: "i32" },
  rl_tcp_engine_add: { args: ["i32", "i32", "i32", "i32"], returns: "i32" },
  rl_tcp_engine_events: { args: ["i32", "ptr", "i32"], returns: "i32" },
  rl_tcp_engine_abort_all: { args: ["i32"], returns: "i32" },
  rl_tcp_engine_stats: { args: ["i32", "ptr"], returns: "i32" },
  rl_tcp_engine_close: { args: ["i32"], returns: "i32" },
  // Local destinations (ffi/local_addr.c): the kernel's local routing table, and a watch.
  rl_local_routes: { args: ["ptr", "i32"], returns: "i32" },
  rl_addr_watch_open: { args: [], returns: "i32" },
  rl_addr_watch_drain: { args: ["i32"], returns: "i32" },
  // Inline pollers: another thread's notice that a message is on its way (ffi/poller.c).
  rl_poll_notify: { args: ["i32"], returns: "i32" },
  rl_poll_notified: { args: ["i32"], returns: "i32" },
  // UDP offload (ffi/udp_gso.c): GSO runs in rl_send_batch, GRO receive and split.
  rl_udp_offload_probe: { args: [], returns: "i32" },
  rl_udp_gso_enable: { args: ["i32"], returns: "i32" },
  rl_udp_gro: { args: ["i32", "i32"], returns: "i32" },
  rl_gro_span_slots: { args: ["i32"], returns: "i32" },
  rl_recv_batch_gro: { args: ["i32", "ptr", "i32", "i32", "ptr"], returns: "i32" },
  rl_udp_offload_stats: { args: ["ptr"], returns: "i32" },
  // The io_uring UDP data plane (ffi/uring.c, src/udp/uring_plane.ts).
  rl_uring_probe: { args: [], returns: "i32" },
  rl_uring_open: { args: ["i32", "i32", "i32", "i32", "i32"], returns: "i32" },
  rl_uring_close: { args: ["i32"], returns: "i32" },
  rl_uring_add: { args: ["i32", "i32", "i32"], returns: "i32" },
  rl_uring_del: { args: ["i32", "i32"], returns: "i32" },
  rl_uring_watch: { args: ["i32", "i32"], returns: "i32" },
  rl_uring_wait: { args: ["i32", "i32", "ptr", "i32", "ptr"], returns: "i32" },
  rl_uring_recv: { args: ["i32", "i32", "ptr", "i32", "i32", "ptr"], returns: "i32" },
  rl_uring_send_batch: { args: ["i32", "ptr", "u32", "ptr", "i32", "ptr"], returns: "i32" },
  rl_uring_submit: { args: ["i32"], returns: "i32" },
  rl_uring_stats: { args: ["i32", "ptr"], returns: "i32" },
  rl_poll_fd: { args: ["i32"], returns: "i32" },
  // The splice engine inline, in its owner's thread (ffi/tcp_engine.c, tcp.dataPlane worker).
  rl_tcp_engine_epoll_fd: { args: ["i32"], returns: "i32" },
  rl_tcp_engine_run: { args: ["i32", "i32"], returns: "i32" },
} as const satisfies SymbolTable;

export type RelayLib = Library<typeof SYMBOLS>;

/** The epoll thread of a poller (ffi/poller.c), started the way this runtime wakes best. */
export interface PollThread {
  /** After rl_poll_stop() joined the thread: frees what woke JS (callback, pipe). */
  close(): void;
}

/** One runtime's way to the C helper: src/sys/ffi.ts picks one at start-up. */
export interface Binding {
  readonly runtime: "bun" | "node";
  /** dlopen(path) and bind `symbols`. */
  open<S extends SymbolTable>(path: string, symbols: S): Library<S>;
  /** The address of a typed array's (or ArrayBuffer's) memory; no copy. */
  ptr(view: ArrayBufferView | ArrayBuffer): Pointer;
  /** A copy of `length` bytes at `address`. */
  readBytes(address: Pointer, length: number): Uint8Array;
  /**
   * Starts the poller's epoll thread, which calls `wake` on this thread when JS is idle
   * and sockets are ready. Returns -errno when it cannot start.
   */
  startPollThread(lib: RelayLib, poller: number, wake: () => void): PollThread | number;
}
