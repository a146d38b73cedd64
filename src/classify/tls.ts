// TLS ClientHello results from the WASM parser (wasm/src/tls.zig): a self-contained buffer,
// or a TCP stream fed segment by segment into one of a fixed number of contexts.
import { Field, RESULT_WORDS_SHIFT, WORD_CODE, WORD_FIELD } from "./layout.ts";
import { HelloFields } from "./hello.ts";
import type { Parsers } from "./wasm.ts";

export class TlsResult extends HelloFields {
  code = 0;
  bufferedBytes = 0;
  recordCount = 0;
  consumedBytes = 0;

  read(w: Uint32Array, base: number): void {
    this.code = w[base + WORD_CODE];
    this.readHello(w, base);
    const f = base + WORD_FIELD;
    this.bufferedBytes = w[f + Field.streamBufferedBytes];
    this.recordCount = w[f + Field.streamRecordCount];
    this.consumedBytes = w[f + Field.streamConsumedBytes];
  }
}

export class TlsParser {
  readonly result: TlsResult;

  constructor(private readonly parsers: Parsers) {
    this.result = new TlsResult(parsers);
  }

  /** TLS records holding a whole ClientHello, in one buffer. */
  parse(offset: number, bytes: number): TlsResult {
    this.parsers.exports.tls_parse(offset, bytes);
    return this.read(this.parsers.singleIndex);
  }

  /** Feeds the next in-order stream bytes to context `contextIndex`
   * (0 <= contextIndex < parsers.tlsContextCount). short until the hello is complete. */
  feed(contextIndex: number, offset: number, bytes: number): TlsResult {
    this.parsers.exports.tls_stream_parse(contextIndex, offset, bytes);
    return this.read(this.parsers.singleIndex);
  }

  reset(contextIndex: number): void {
    this.parsers.exports.tls_stream_reset(contextIndex);
  }

  read(index: number): TlsResult {
    this.result.read(this.parsers.resultWords, index << RESULT_WORDS_SHIFT);
    return this.result;
  }
}
