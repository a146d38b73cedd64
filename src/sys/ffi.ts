// The C helper (ffi/relay.h), bound the fastest way on the runtime that runs us: bun:ffi
// under Bun, koffi under Node.js (never koffi under Bun: several times slower there).
// The rest of src/ sees one interface: RelayLib's functions, ptr(), readBytes(),
// startPollThread(). The symbols are in src/sys/ffi_symbols.ts.
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Binding, Library, PollThread, SymbolTable } from "./ffi_symbols.ts";
import { SYMBOLS, type Pointer, type RelayLib } from "./ffi_symbols.ts";
import { ABI_VERSION, LAYOUT_TUPLES_MAX, layoutDifferences } from "./layout.ts";
import { PROJECT_ROOT, RUNTIME } from "./runtime.ts";

export type { Pointer, PollThread, RelayLib };

// Chosen once, at start-up. Under Node the bundle (scripts/build_node.ts) has no bun:ffi.
const binding: Binding =
  RUNTIME === "bun"
    ? (await import("./ffi_bun.ts")).binding
    : (await import("./ffi_node.ts")).binding;

/** The address of a typed array's (or ArrayBuffer's) own memory, as a number; no copy. */
export const ptr: (view: ArrayBufferView | ArrayBuffer) => Pointer = binding.ptr;

/** A copy of `length` bytes at `address` (C memory, or JS memory known by address). */
export const readBytes: (address: Pointer, length: number) => Uint8Array = binding.readBytes;

/** Starts a poller's epoll thread, which wakes `wake` on this thread; -errno on failure. */
export const startPollThread: Binding["startPollThread"] = binding.startPollThread;

/** Binds another symbol table of the helper (test hooks) the same way. */
export function openLibrary<S extends SymbolTable>(path: string, symbols: S): Library<S> {
  return binding.open(path, symbols);
}

/** Where the built library lives: build/librelay.so, or $RELAY_FFI_LIB (e.g. the ASan build). */
export function libraryPath(): string {
  const fromEnv = process.env.RELAY_FFI_LIB;
  if (fromEnv) return fromEnv;
  return join(PROJECT_ROOT, "build", "librelay.so");
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
  const lib = binding.open(path, SYMBOLS);
  const abi = lib.rl_abi_version();
  if (abi !== ABI_VERSION) {
    throw new Error(`C helper ABI ${abi} != ${ABI_VERSION}: rebuild it (bash scripts/build.sh)`);
  }
  checkLayouts(lib);
  loaded = lib;
  return lib;
}
