// The koffi binding (Node.js). Pointers stay numbers, as under bun:ffi, so the rest of
// src/ passes the same values on both runtimes: "ptr" parameters are declared uintptr_t,
// and ptr(view) asks C for the view's address (rl_addr, called with the typed array:
// koffi passes a typed array's own memory, no copy; test/unit/ffi_node.test.ts checks it).
// A typed array passed where a pointer goes is turned into its address on the way.
//
// The epoll thread does not call into JS here: koffi runs a call from another thread by
// queueing it to the JS thread and blocking the caller until it ran, so a stop (which
// joins that thread) could wait for a call that waits for it. The thread writes a byte
// into a pipe instead (rl_poll_start_pipe), which a net.Socket watches on Node's event loop.
import { createRequire } from "node:module";
import { Socket } from "node:net";
import type { ArgType, Binding, Library, Pointer, PointerArg, SymbolTable } from "./ffi_symbols.ts";

const TYPES: Record<ArgType, string> = {
  i32: "int32_t",
  u32: "uint32_t",
  f64: "double",
  ptr: "uintptr_t",
  fn: "uintptr_t",
};

type Raw = (...args: unknown[]) => number;

/** koffi's module, as far as this file uses it. */
interface Koffi {
  load(path: string): { func(name: string, result: string, args: string[]): Raw };
}

/** Thrown when koffi is not installed: src/main_node.ts checks first, with a clear line. */
class KoffiMissingError extends Error {}

let koffi: Koffi | null = null;

function loadKoffi(): Koffi {
  if (koffi !== null) return koffi;
  try {
    koffi = createRequire(import.meta.url)("koffi") as Koffi;
  } catch (err) {
    throw new KoffiMissingError(
      `koffi (the FFI for Node.js) is not installed: run npm ci in the checkout ` +
        `(${(err as Error).message.split("\n")[0]})`,
    );
  }
  return koffi;
}

// rl_addr and a copy routine, bound once by the first open() (the relay's own library).
let addrOf: ((view: ArrayBufferView | ArrayBuffer) => number) | null = null;
let copyBytes: ((dst: number, src: number, bytes: number) => number) | null = null;

function address(value: PointerArg): number {
  if (typeof value === "number") return value;
  if (value === null) return 0;
  return addrOf!(value);
}

/**
 * The last array passed by value. V8 frees an unreachable array's memory on a background
 * thread, and optimized code may drop an argument once its address was taken: a store
 * after the call keeps each array reachable until C returned (a store to a module
 * variable cannot be optimized away). A pointer number alone never keeps its array alive.
 */
let _held: unknown = null;

/** The function with its pointer arguments turned into addresses (no rest arrays). */
function withAddresses(raw: Raw, spec: readonly ArgType[]): Raw {
  const at = spec.map((t) => t === "ptr");
  if (!at.includes(true)) return raw;
  const a = (v: unknown, i: number) => (at[i] ? address(v as PointerArg) : v);
  const h = (v: unknown) => {
    if (typeof v === "object" && v !== null) _held = v;
  };
  switch (spec.length) {
    case 1:
      return (x0) => {
        const r = raw(a(x0, 0));
        h(x0);
        return r;
      };
    case 2:
      return (x0, x1) => {
        const r = raw(a(x0, 0), a(x1, 1));
        h(x0);
        h(x1);
        return r;
      };
    case 3:
      return (x0, x1, x2) => {
        const r = raw(a(x0, 0), a(x1, 1), a(x2, 2));
        h(x0);
        h(x1);
        h(x2);
        return r;
      };
    case 4:
      return (x0, x1, x2, x3) => {
        const r = raw(a(x0, 0), a(x1, 1), a(x2, 2), a(x3, 3));
        h(x0);
        h(x1);
        h(x2);
        h(x3);
        return r;
      };
    case 5:
      return (x0, x1, x2, x3, x4) => {
        const r = raw(a(x0, 0), a(x1, 1), a(x2, 2), a(x3, 3), a(x4, 4));
        h(x0);
        h(x1);
        h(x2);
        h(x3);
        h(x4);
        return r;
      };
    case 6:
      return (x0, x1, x2, x3, x4, x5) => {
        const r = raw(a(x0, 0), a(x1, 1), a(x2, 2), a(x3, 3), a(x4, 4), a(x5, 5));
        h(x0);
        h(x1);
        h(x2);
        h(x3);
        h(x4);
        h(x5);
        return r;
      };
    case 7:
      return (x0, x1, x2, x3, x4, x5, x6) => {
        const r = raw(a(x0, 0), a(x1, 1), a(x2, 2), a(x3, 3), a(x4, 4), a(x5, 5), a(x6, 6));
        h(x0);
        h(x1);
        h(x2);
        h(x3);
        h(x4);
        h(x5);
        h(x6);
        return r;
      };
    case 8:
      return (x0, x1, x2, x3, x4, x5, x6, x7) => {
        const r = raw(
          a(x0, 0),
          a(x1, 1),
          a(x2, 2),
          a(x3, 3),
          a(x4, 4),
          a(x5, 5),
          a(x6, 6),
          a(x7, 7),
        );
        h(x0);
        h(x1);
        h(x2);
        h(x3);
        h(x4);
        h(x5);
        h(x6);
        h(x7);
        return r;
      };
    default:
      throw new Error("ffi_node: a symbol with more than 8 parameters");
  }
}

function open<S extends SymbolTable>(path: string, symbols: S): Library<S> {
  const lib = loadKoffi().load(path);
  if (addrOf === null) {
    addrOf = lib.func("rl_addr", "uintptr_t", ["const void *"]);
    // memcpy from the C helper's own libc: readBytes() copies out of C (or JS) memory.
    const libc = loadKoffi().load("libc.so.6");
    copyBytes = libc.func("memcpy", "uintptr_t", ["uintptr_t", "uintptr_t", "size_t"]);
  }
  const out: Record<string, Raw> = {};
  for (const [name, spec] of Object.entries(symbols)) {
    const raw = lib.func(
      name,
      "int32_t",
      spec.args.map((t) => TYPES[t]),
    );
    out[name] = withAddresses(raw, spec.args);
  }
  return out as Library<S>;
}

export const binding: Binding = {
  runtime: "node",
  open,
  ptr(view) {
    if (addrOf === null) throw new Error("ptr() before the C helper was loaded (loadFfi)");
    return addrOf(view) as Pointer;
  },
  readBytes(at, length) {
    const out = new Uint8Array(new ArrayBuffer(length));
    copyBytes!(addrOf!(out), at, length);
    return out;
  },
  startPollThread(lib, poller, wake) {
    const fd = lib.rl_poll_start_pipe(poller);
    if (fd < 0) return fd;
    const pipe = new Socket({ fd, readable: true, writable: false });
    // One byte per wake-up; the bytes themselves say nothing.
    pipe.on("data", () => wake());
    // The owner's poller check (its timer) notices a dead thread; never an unhandled error.
    pipe.on("error", () => {});
    // Like Bun's threadsafe JSCallback: the wake-ups alone do not keep the process alive.
    pipe.unref();
    return { close: () => pipe.destroy() };
  },
};
