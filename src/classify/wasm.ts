// Loads the parsers module (wasm/, built to build/wasm/bin/parsers.wasm) once, and exposes its
// fixed memory layout through views made at startup. Per-packet calls allocate nothing: they
// pass numbers in, get a code back, and read fields out of preallocated Uint32Array views.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PROJECT_ROOT } from "../sys/runtime.ts";
import { ALPN_BYTES_MAX, DESCRIPTOR_WORDS, NAME_BYTES_MAX, RESULT_WORDS } from "./layout.ts";

export interface ParsersExports {
  memory: WebAssembly.Memory;
  packet_area_offset(): number;
  packet_area_size(): number;
  descriptor_table_offset(): number;
  descriptor_size(): number;
  batch_count_limit(): number;
  result_table_offset(): number;
  result_size(): number;
  result_single_index(): number;
  text_table_offset(): number;
  text_size(): number;
  tls_context_limit(): number;
  quic_context_limit(): number;
  dns_parse(offset: number, bytes: number): number;
  quic_header_parse(offset: number, bytes: number, shortDcidBytes: number): number;
  quic_initial_parse(offset: number, bytes: number): number;
  tls_parse(offset: number, bytes: number): number;
  tls_stream_parse(contextIndex: number, offset: number, bytes: number): number;
  tls_stream_reset(contextIndex: number): number;
  quic_contexts_reset(): void;
  quic_scratch_header_offset(): number;
  quic_scratch_plain_offset(): number;
  quic_client_keys_derive(version: number, offset: number, bytes: number): number;
  batch_parse(count: number): number;
}

export const WASM_PATH_DEFAULT = join(PROJECT_ROOT, "build", "wasm", "bin", "parsers.wasm");

function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(`classify/wasm: ${message}`);
}

/**
 * C writes packets straight into the linear memory at addresses taken once (ptr() of
 * its buffer, on Bun and on Node): a memory that could grow would move and detach them.
 * The module is built with initial == max memory, so growing by a page must fail.
 */
function assertFixedMemory(memory: WebAssembly.Memory): void {
  try {
    memory.grow(1);
  } catch {
    return; // at its maximum: fixed, as built
  }
  throw new Error("classify/wasm: parsers.wasm memory can grow (build it with initial == max)");
}

/** The module's memory and layout. One per process (see parsersLoad). */
export class Parsers {
  readonly exports: ParsersExports;
  readonly memory: WebAssembly.Memory;
  /** The whole linear memory; fixed-size, so this view never detaches. */
  readonly bytes: Uint8Array;
  readonly packetArea: { offset: number; bytesMax: number };
  readonly batchCountMax: number;
  readonly tlsContextCount: number;
  readonly quicContextCount: number;
  /** Record index the single-packet calls write to. */
  readonly singleIndex: number;
  /** Descriptor table: 4 words per entry (offset, bytes, kind, argument). */
  readonly descriptorWords: Uint32Array;
  /** Result table: RESULT_WORDS words per record, batchCountMax + 1 records. */
  readonly resultWords: Uint32Array;
  readonly textOffset: number;
  readonly textBytes: number;

  constructor(module: WebAssembly.Module) {
    const instance = new WebAssembly.Instance(module, {});
    this.exports = instance.exports as unknown as ParsersExports;
    const e = this.exports;
    this.memory = e.memory;
    assertFixedMemory(this.memory);
    this.bytes = new Uint8Array(this.memory.buffer);
    this.packetArea = { offset: e.packet_area_offset(), bytesMax: e.packet_area_size() };
    this.batchCountMax = e.batch_count_limit();
    this.tlsContextCount = e.tls_context_limit();
    this.quicContextCount = e.quic_context_limit();
    this.singleIndex = e.result_single_index();
    // Startup checks that the Zig layout matches the constants this side was written for.
    assert(e.descriptor_size() === DESCRIPTOR_WORDS * 4, "descriptor size");
    assert(e.result_size() === RESULT_WORDS * 4, "result size");
    assert(e.text_size() === NAME_BYTES_MAX + ALPN_BYTES_MAX, "text size");
    assert(this.packetArea.offset % 64 === 0, "packet area alignment");
    assert(this.singleIndex === this.batchCountMax, "single record index");
    this.descriptorWords = new Uint32Array(
      this.memory.buffer,
      e.descriptor_table_offset(),
      this.batchCountMax * DESCRIPTOR_WORDS,
    );
    this.resultWords = new Uint32Array(
      this.memory.buffer,
      e.result_table_offset(),
      (this.batchCountMax + 1) * RESULT_WORDS,
    );
    this.textOffset = e.text_table_offset();
    this.textBytes = e.text_size();
  }

  /** Writes descriptor `index` for the next batchParse call. */
  describe(index: number, offset: number, bytes: number, kind: number, argument = 0): void {
    const word = index * DESCRIPTOR_WORDS;
    this.descriptorWords[word] = offset;
    this.descriptorWords[word + 1] = bytes;
    this.descriptorWords[word + 2] = kind;
    this.descriptorWords[word + 3] = argument;
  }

  /** Parses descriptors [0, count); returns how many were parsed (at most batchCountMax). */
  batchParse(count: number): number {
    return this.exports.batch_parse(count);
  }

  /** Copies bytes into the packet area at `areaOffset` (tests, benches; the relay's C helper
   * writes there directly). Returns the absolute memory offset to pass to a parser. */
  place(data: Uint8Array, areaOffset = 0): number {
    assert(areaOffset + data.length <= this.packetArea.bytesMax, "place beyond packet area");
    const offset = this.packetArea.offset + areaOffset;
    this.bytes.set(data, offset);
    return offset;
  }

  /** Latin-1 string of memory bytes; only for callers that want a name as a string. */
  text(offset: number, bytes: number): string {
    let out = "";
    for (let i = 0; i < bytes; i++) out += String.fromCharCode(this.bytes[offset + i]);
    return out;
  }

  /** Splits a wire-form ALPN list (RFC 7301 3.1) into names. */
  alpnList(offset: number, bytes: number): string[] {
    const names: string[] = [];
    let index = 0;
    while (index < bytes) {
      const length = this.bytes[offset + index];
      names.push(this.text(offset + index + 1, length));
      index += 1 + length;
    }
    return names;
  }
}

let loaded: Parsers | null = null;

/** Loads the module once per process; later calls return the same instance. */
export function parsersLoad(path = WASM_PATH_DEFAULT): Parsers {
  if (loaded === null) loaded = new Parsers(new WebAssembly.Module(readFileSync(path)));
  return loaded;
}

/** A fresh instance with its own memory (tests that need isolated parser state). */
export function parsersInstantiate(path = WASM_PATH_DEFAULT): Parsers {
  return new Parsers(new WebAssembly.Module(readFileSync(path)));
}
