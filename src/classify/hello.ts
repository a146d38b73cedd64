// ClientHello facts shared by QUIC Initial and TLS results (wasm/src/tls.zig).
import {
  Field,
  HELLO_FLAG_ALPN,
  HELLO_FLAG_ALPN_TRUNCATED,
  HELLO_FLAG_SNI,
  WORD_ALPN_BYTES,
  WORD_ALPN_OFFSET,
  WORD_FIELD,
  WORD_NAME_BYTES,
  WORD_NAME_OFFSET,
} from "./layout.ts";
import type { Parsers } from "./wasm.ts";

export class HelloFields {
  helloBytes = 0;
  legacyVersion = 0;
  cipherSuiteCount = 0;
  extensionCount = 0;
  sniPresent = false;
  alpnPresent = false;
  alpnTruncated = false;
  alpnCount = 0;
  nameOffset = 0;
  nameBytes = 0;
  alpnOffset = 0;
  alpnBytes = 0;

  constructor(protected readonly parsers: Parsers) {}

  /** The server_name host_name, lowercased ("" when absent). */
  sni(): string {
    return this.parsers.text(this.nameOffset, this.nameBytes);
  }

  /** The ALPN protocol names offered, in order. */
  alpn(): string[] {
    return this.parsers.alpnList(this.alpnOffset, this.alpnBytes);
  }

  readHello(w: Uint32Array, base: number): void {
    const f = base + WORD_FIELD;
    this.helloBytes = w[f + Field.helloBytes];
    this.legacyVersion = w[f + Field.helloLegacyVersion];
    this.cipherSuiteCount = w[f + Field.helloCipherSuiteCount];
    this.extensionCount = w[f + Field.helloExtensionCount];
    const flags = w[f + Field.helloFlags];
    this.sniPresent = (flags & HELLO_FLAG_SNI) !== 0;
    this.alpnPresent = (flags & HELLO_FLAG_ALPN) !== 0;
    this.alpnTruncated = (flags & HELLO_FLAG_ALPN_TRUNCATED) !== 0;
    this.alpnCount = w[f + Field.helloAlpnCount];
    this.nameOffset = w[base + WORD_NAME_OFFSET];
    this.nameBytes = w[base + WORD_NAME_BYTES];
    this.alpnOffset = w[base + WORD_ALPN_OFFSET];
    this.alpnBytes = w[base + WORD_ALPN_BYTES];
  }
}
