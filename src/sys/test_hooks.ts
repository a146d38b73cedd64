// Test-only bindings: the rl_test_* hooks of ffi/relay.h, which put the C side into
// states a test cannot reach in reasonable time (a counter past 2^32, a dead engine).
// The relay never imports this file; src/sys/ffi.ts does not bind these symbols.
import { libraryPath, loadFfi, openLibrary } from "./ffi.ts";
import type { Library } from "./ffi_symbols.ts";

const testSymbols = {
  rl_test_poll_stat_set: { args: ["i32", "i32", "f64"], returns: "i32" },
  rl_test_poll_break: { args: ["i32"], returns: "i32" },
  rl_test_tcp_engine_stat_set: { args: ["i32", "i32", "f64"], returns: "i32" },
  rl_test_tcp_engine_event_delay: { args: ["i32", "i32"], returns: "i32" },
  rl_test_tcp_engine_break: { args: ["i32"], returns: "i32" },
  rl_test_udp_no_check: { args: ["i32"], returns: "i32" },
} as const;

export type TestHooks = Library<typeof testSymbols>;

let loaded: TestHooks | null = null;

/** The same library as loadFfi() (dlopen returns the loaded copy: one set of globals). */
export function loadTestHooks(): TestHooks {
  if (loaded) return loaded;
  loadFfi(); // the ABI and layout checks first
  loaded = openLibrary(libraryPath(), testSymbols);
  return loaded;
}
