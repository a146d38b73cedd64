// bun:ffi bindings for the C helper (ffi/relay.h). Every symbol returns i32: n >= 0 or
// -errno (DESIGN.md: a u64 return costs ~16 ns and a BigInt; an i32 costs ~2 ns).
import { dlopen, FFIType } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ABI_VERSION, LAYOUT_TUPLES_MAX, layoutDifferences } from "./layout.ts";

const { i32, u32, ptr } = FFIType;

const symbols = {
  rl_abi_version: { args: [], returns: i32 },
  rl_layout_describe: { args: [ptr, i32], returns: i32 },
  rl_raise_nofile: { args: [i32], returns: i32 },
  rl_socket: { args: [i32, ptr, i32, i32, i32, i32], returns: i32 },
  rl_close: { args: [i32], returns: i32 },
  rl_udp_connect: { args: [i32, ptr, i32, i32], returns: i32 },
  rl_listen: { args: [i32, i32], returns: i32 },
  rl_local_port: { args: [i32, ptr], returns: i32 },
  rl_icmp_open: { args: [i32], returns: i32 },
  rl_icmp_unreachable: { args: [i32, ptr, i32, i32, ptr, i32, ptr, i32], returns: i32 },
  rl_bind_device: { args: [i32, ptr, i32], returns: i32 },
  rl_stream_send: { args: [i32, ptr, i32], returns: i32 },
  rl_stream_recv: { args: [i32, ptr, i32], returns: i32 },
  rl_socket_error: { args: [i32], returns: i32 },
  rl_send_wrapped: { args: [i32, ptr, i32, ptr, i32, ptr, i32, i32], returns: i32 },
  rl_recv_batch: { args: [i32, ptr, i32, i32, ptr], returns: i32 },
  rl_recv_errors: { args: [i32, i32, ptr], returns: i32 },
  rl_send_batch: { args: [ptr, u32, ptr, i32], returns: i32 },
  rl_original_dst: { args: [i32, ptr], returns: i32 },
  rl_poll_open: { args: [i32], returns: i32 },
  rl_poll_add: { args: [i32, i32, i32], returns: i32 },
  rl_poll_rearm: { args: [i32, i32, i32], returns: i32 },
  rl_poll_del: { args: [i32, i32], returns: i32 },
  rl_poll_arm_out: { args: [i32, i32, i32, i32], returns: i32 },
  rl_poll_arm_both: { args: [i32, i32, i32], returns: i32 },
  rl_poll_start: { args: [i32, FFIType.function], returns: i32 },
  rl_poll_take: { args: [i32, ptr, i32], returns: i32 },
  rl_poll_sleep: { args: [i32], returns: i32 },
  rl_poll_wait: { args: [i32, i32], returns: i32 },
  rl_poll_level_triggered: { args: [i32], returns: i32 },
  rl_poll_stop: { args: [i32], returns: i32 },
  rl_poll_stats: { args: [i32, ptr], returns: i32 },
  rl_poll_failed: { args: [i32], returns: i32 },
  // TCP (issue 4): accept/connect for TypeScript's decisions, a splice engine for bytes.
  rl_tcp_accept: { args: [i32, ptr], returns: i32 },
  rl_tcp_connect: { args: [ptr, i32, i32, ptr, i32, i32], returns: i32 },
  rl_tcp_connect_via: { args: [ptr, i32, i32, ptr, i32, i32, ptr], returns: i32 },
  rl_tcp_connect_result: { args: [i32], returns: i32 },
  rl_tcp_recv: { args: [i32, ptr, i32], returns: i32 },
  rl_tcp_send: { args: [i32, ptr, i32], returns: i32 },
  rl_tcp_abort: { args: [i32], returns: i32 },
  rl_tcp_peek: { args: [i32, ptr, i32], returns: i32 },
  rl_tcp_rcvlowat: { args: [i32, i32], returns: i32 },
  rl_tcp_engine_open: { args: [i32, i32, i32, i32, i32], returns: i32 },
  rl_tcp_engine_set_timeouts: { args: [i32, i32, i32], returns: i32 },
  rl_tcp_engine_event_fd: { args: [i32], returns: i32 },
  rl_tcp_engine_failed: { args: [i32], returns: i32 },
  rl_tcp_engine_add: { args: [i32, i32, i32, i32], returns: i32 },
  rl_tcp_engine_events: { args: [i32, ptr, i32], returns: i32 },
  rl_tcp_engine_abort_all: { args: [i32], returns: i32 },
  rl_tcp_engine_stats: { args: [i32, ptr], returns: i32 },
  rl_tcp_engine_close: { args: [i32], returns: i32 },
  // Local destinations (ffi/local_addr.c): the kernel's local routing table, and a watch.
  rl_local_routes: { args: [ptr, i32], returns: i32 },
  rl_addr_watch_open: { args: [], returns: i32 },
  rl_addr_watch_drain: { args: [i32], returns: i32 },
} as const;

export type RelayLib = ReturnType<typeof dlopen<typeof symbols>>["symbols"];

/** Where the built library lives: build/librelay.so, or $RELAY_FFI_LIB (e.g. the ASan build). */
export function libraryPath(): string {
  const fromEnv = process.env.RELAY_FFI_LIB;
  if (fromEnv) return fromEnv;
  return join(import.meta.dir, "..", "..", "build", "librelay.so");
}

let loaded: RelayLib | null = null;

/** Every field of every record, as C sees it, must be what src/sys/layout.ts says. */
function checkLayouts(lib: RelayLib): void {
  const described = new Int32Array(LAYOUT_TUPLES_MAX * 4);
  const tuples = lib.rl_layout_describe(described, LAYOUT_TUPLES_MAX);
  if (tuples < 0) throw new Error(`rl_layout_describe: ${tuples}`);
  const differences = layoutDifferences(described.subarray(0, tuples * 4));
  if (differences.length > 0) {
    throw new Error(
      `C helper record layout differs from src/sys/layout.ts (rebuild it: ` +
        `bash scripts/build.sh): ${differences.join("; ")}`,
    );
  }
}

/** Loads the helper once and checks that both sides agree on the ABI. */
export function loadFfi(): RelayLib {
  if (loaded) return loaded;
  const path = libraryPath();
  if (!existsSync(path)) {
    throw new Error(`C helper not built: ${path} is missing (run: bash scripts/setup.sh)`);
  }
  const lib = dlopen(path, symbols).symbols;
  const abi = lib.rl_abi_version();
  if (abi !== ABI_VERSION) {
    throw new Error(`C helper ABI ${abi} != ${ABI_VERSION}: rebuild it (bash scripts/build.sh)`);
  }
  checkLayouts(lib);
  loaded = lib;
  return lib;
}
