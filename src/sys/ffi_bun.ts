// The bun:ffi binding (Bun): ~2 ns a call, pointers as numbers, and the epoll thread
// wakes JS through a threadsafe JSCallback (DESIGN.md "Waking JS").
import {
  dlopen,
  FFIType,
  JSCallback,
  type Pointer as BunPointer,
  ptr,
  toArrayBuffer,
} from "bun:ffi";
import type { ArgType, Binding, Library, Pointer, SymbolTable } from "./ffi_symbols.ts";

const TYPES: Record<ArgType, FFIType> = {
  i32: FFIType.i32,
  u32: FFIType.u32,
  f64: FFIType.f64,
  ptr: FFIType.ptr,
  fn: FFIType.function,
};

function open<S extends SymbolTable>(path: string, symbols: S): Library<S> {
  const specs: Record<string, { args: FFIType[]; returns: FFIType }> = {};
  for (const [name, spec] of Object.entries(symbols)) {
    specs[name] = { args: spec.args.map((a) => TYPES[a]), returns: FFIType.i32 };
  }
  return dlopen(path, specs).symbols as unknown as Library<S>;
}

export const binding: Binding = {
  runtime: "bun",
  open,
  ptr: ptr as (view: ArrayBufferView | ArrayBuffer) => Pointer,
  readBytes(address, length) {
    return new Uint8Array(toArrayBuffer(address as BunPointer, 0, length).slice(0));
  },
  startPollThread(lib, poller, wake) {
    const callback = new JSCallback(wake, {
      args: [FFIType.i32],
      returns: FFIType.void,
      threadsafe: true,
    });
    const rc = lib.rl_poll_start(poller, callback.ptr);
    if (rc < 0) {
      callback.close();
      return rc;
    }
    // Calling it after close() segfaults: the owner closes only after rl_poll_stop.
    return { close: () => callback.close() };
  },
};
