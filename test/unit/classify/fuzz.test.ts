// Seeded, bounded, reproducible mutation fuzz over every fixture. A WASM trap (a failed
// bounds check in the ReleaseSafe build, an out-of-memory access, integer overflow) throws a
// WebAssembly.RuntimeError in JS: we count them and require zero. DNS and QUIC headers are
// also checked differentially: WASM and the TS reference must give the same code, and the
// same fields when ok. FUZZ_SEED and FUZZ_MUTATIONS override the defaults.
import { describe, expect, test } from "bun:test";
import { Code } from "../../../src/classify/layout.ts";
import { QuicParser } from "../../../src/classify/quic.ts";
import { TlsParser } from "../../../src/classify/tls.ts";
import { parsersInstantiate } from "../../../src/classify/wasm.ts";
import { clientInitial } from "../../fixtures/classify/build.ts";
import {
  dnsFixtures,
  initialPlainFixture,
  quicHeaderFixtures,
  quicInitialFixtures,
  tlsFixtures,
} from "../../fixtures/classify/corpus.ts";
import { refImpl, wasmImpl } from "./impls.ts";

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed1234) >>> 0;
const MUTATIONS_PER_FIXTURE = Number(process.env.FUZZ_MUTATIONS ?? 20000);
/** Re-encrypting with node:crypto costs ~10 us; fewer rounds keep the run under a second. */
const PLAIN_MUTATIONS = Math.min(MUTATIONS_PER_FIXTURE, 5000);
/** Mutated packets are at most this long (room for inserts), and always fit a slot. */
const MUTANT_BYTES_MAX = 4096;
const INTERESTING = [0x00, 0x01, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xff];

console.log(`fuzz: seed 0x${SEED.toString(16)}, ${MUTATIONS_PER_FIXTURE} mutations per fixture`);

/** xorshift32: tiny, seedable, same sequence everywhere. */
class Rng {
  constructor(private state: number) {
    if (this.state === 0) this.state = 1;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
  below(n: number): number {
    return n <= 0 ? 0 : this.next() % n;
  }
}

const scratch = new Uint8Array(MUTANT_BYTES_MAX);

/** Applies 1..4 random edits to a copy of `source` in `scratch`; returns the mutant view. */
function mutate(rng: Rng, source: Uint8Array): Uint8Array {
  let length = Math.min(source.length, MUTANT_BYTES_MAX);
  scratch.set(source.subarray(0, length));
  const edits = 1 + rng.below(4);
  for (let e = 0; e < edits; e++) {
    const at = rng.below(Math.max(1, length));
    switch (rng.below(7)) {
      case 0: // flip a bit
        if (length > 0) scratch[at] ^= 1 << rng.below(8);
        break;
      case 1: // random byte
        if (length > 0) scratch[at] = rng.below(256);
        break;
      case 2: // boundary values of length and varint prefixes
        if (length > 0) scratch[at] = INTERESTING[rng.below(INTERESTING.length)];
        break;
      case 3: // truncate
        length = rng.below(length + 1);
        break;
      case 4: {
        // insert random bytes
        const count = Math.min(1 + rng.below(8), MUTANT_BYTES_MAX - length);
        scratch.copyWithin(at + count, at, length);
        for (let i = 0; i < count; i++) scratch[at + i] = rng.below(256);
        length += count;
        break;
      }
      case 5: {
        // delete a range
        const count = Math.min(1 + rng.below(16), length - at);
        scratch.copyWithin(at, at + count, length);
        length -= count;
        break;
      }
      default: {
        // duplicate a range elsewhere
        const count = Math.min(1 + rng.below(16), length - at, MUTANT_BYTES_MAX - length);
        const to = rng.below(length + 1);
        const chunk = scratch.slice(at, at + count);
        scratch.copyWithin(to + count, to, length);
        scratch.set(chunk, to);
        length += count;
      }
    }
  }
  return scratch.subarray(0, length);
}

function tally(counts: number[], code: number): void {
  counts[code] = (counts[code] ?? 0) + 1;
}

test("harness: a WASM trap throws in JS (so counting throws counts traps)", () => {
  // A module whose one export executes `unreachable`, the instruction Zig's ReleaseSafe
  // panics (failed bounds checks, overflow) compile to on wasm32-freestanding.
  const bytes = Uint8Array.of(
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00, // magic, version
    0x01,
    0x04,
    0x01,
    0x60,
    0x00,
    0x00, // type section: () -> ()
    0x03,
    0x02,
    0x01,
    0x00, // function section
    0x07,
    0x08,
    0x01,
    0x04,
    0x74,
    0x72,
    0x61,
    0x70,
    0x00,
    0x00, // export "trap"
    0x0a,
    0x05,
    0x01,
    0x03,
    0x00,
    0x00,
    0x0b, // code: unreachable; end
  );
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
  const trap = instance.exports.trap as () => void;
  expect(() => trap()).toThrow(WebAssembly.RuntimeError);
});

describe("mutation fuzz", () => {
  const parsers = parsersInstantiate();
  const wasm = wasmImpl(parsers);
  const ref = refImpl();
  const quic = new QuicParser(parsers);
  const tls = new TlsParser(parsers);

  test("DNS: no trap, WASM equals TS reference", () => {
    const rng = new Rng(SEED);
    let traps = 0;
    let mismatches = 0;
    const counts: number[] = [];
    for (const fixture of dnsFixtures) {
      for (let i = 0; i < MUTATIONS_PER_FIXTURE; i++) {
        const mutant = mutate(rng, fixture.bytes);
        try {
          const a = wasm.dns(mutant);
          const b = ref.dns(mutant);
          tally(counts, a.code);
          const same =
            a.code === b.code && (a.code !== Code.ok || JSON.stringify(a) === JSON.stringify(b));
          if (!same && mismatches++ < 3) {
            console.log("DNS mismatch", Buffer.from(mutant).toString("hex"), a, b);
          }
        } catch (error) {
          if (traps++ < 3) console.log("DNS trap", Buffer.from(mutant).toString("hex"), error);
        }
      }
    }
    console.log(
      `DNS fuzz: ${dnsFixtures.length} fixtures, codes ok/short/malformed/unsup =`,
      counts.join("/"),
    );
    expect(traps).toBe(0);
    expect(mismatches).toBe(0);
  });

  test("QUIC header: no trap, WASM equals TS reference", () => {
    const rng = new Rng(SEED ^ 0x9e3779b9);
    let traps = 0;
    let mismatches = 0;
    const counts: number[] = [];
    for (const fixture of quicHeaderFixtures) {
      for (let i = 0; i < MUTATIONS_PER_FIXTURE; i++) {
        const mutant = mutate(rng, fixture.bytes);
        const shortDcidBytes = rng.below(22);
        try {
          const a = wasm.quicHeader(mutant, shortDcidBytes);
          const b = ref.quicHeader(mutant, shortDcidBytes);
          tally(counts, a.code);
          const same =
            a.code === b.code && (a.code !== Code.ok || JSON.stringify(a) === JSON.stringify(b));
          if (!same && mismatches++ < 3) {
            console.log("QUIC mismatch", Buffer.from(mutant).toString("hex"), a, b);
          }
        } catch (error) {
          if (traps++ < 3) console.log("QUIC trap", Buffer.from(mutant).toString("hex"), error);
        }
      }
    }
    console.log("QUIC header fuzz: codes ok/short/malformed/unsup =", counts.join("/"));
    expect(traps).toBe(0);
    expect(mismatches).toBe(0);
  });

  test("QUIC Initial (protected bytes mutated): no trap, never a wrong SNI", () => {
    const rng = new Rng(SEED ^ 0x85ebca6b);
    let traps = 0;
    let wrongOk = 0;
    const counts: number[] = [];
    for (const fixture of quicInitialFixtures) {
      for (let i = 0; i < MUTATIONS_PER_FIXTURE; i++) {
        if (i % 64 === 0) quic.resetContexts();
        const source = fixture.packets[rng.below(fixture.packets.length)];
        const mutant = mutate(rng, source);
        try {
          const r = quic.parseInitial(parsers.place(mutant, 0), mutant.length);
          tally(counts, r.code);
          // AEAD authenticates everything but padding after the tag; an ok hello must be
          // the fixture's own.
          if (r.code === Code.ok && r.sni() !== fixture.sni) wrongOk++;
        } catch (error) {
          if (traps++ < 3) console.log("Initial trap", Buffer.from(mutant).toString("hex"), error);
        }
      }
    }
    console.log("QUIC Initial fuzz: codes ok/short/malformed/unsup =", counts.join("/"));
    expect(traps).toBe(0);
    expect(wrongOk).toBe(0);
  });

  test("QUIC Initial (plaintext frames mutated, then protected): no trap", () => {
    const rng = new Rng(SEED ^ 0xc2b2ae35);
    let traps = 0;
    const counts: number[] = [];
    for (let i = 0; i < PLAIN_MUTATIONS; i++) {
      quic.resetContexts();
      const frames = mutate(rng, initialPlainFixture.frames).slice();
      const packet = clientInitial({
        version: rng.below(2) ? 0x00000001 : 0x6b3343cf,
        dcid: initialPlainFixture.dcid,
        scid: new Uint8Array(0),
        packetNumber: rng.below(4),
        frames: frames.length > 0 ? frames : Uint8Array.of(0x01),
      });
      try {
        tally(counts, quic.parseInitial(parsers.place(packet, 0), packet.length).code);
      } catch (error) {
        if (traps++ < 3) console.log("plaintext trap", Buffer.from(frames).toString("hex"), error);
      }
    }
    console.log(
      `QUIC plaintext fuzz (${PLAIN_MUTATIONS}): codes ok/short/malformed/unsup =`,
      counts.join("/"),
    );
    expect(traps).toBe(0);
  });

  test("TLS: one buffer and random segmentation, no trap", () => {
    const rng = new Rng(SEED ^ 0x27d4eb2f);
    let traps = 0;
    const counts: number[] = [];
    for (const fixture of tlsFixtures) {
      for (let i = 0; i < MUTATIONS_PER_FIXTURE; i++) {
        const mutant = mutate(rng, fixture.bytes);
        try {
          const offset = parsers.place(mutant, 0);
          tally(counts, tls.parse(offset, mutant.length).code);
          const context = rng.below(parsers.tlsContextCount);
          tls.reset(context);
          // Feed in 1..4 segments of random sizes; the hello straddles segment boundaries.
          let index = 0;
          for (let s = 0; s < 4 && index < mutant.length; s++) {
            const size = s === 3 ? mutant.length - index : 1 + rng.below(mutant.length - index);
            tls.feed(context, offset + index, size);
            index += size;
          }
        } catch (error) {
          if (traps++ < 3) console.log("TLS trap", Buffer.from(mutant).toString("hex"), error);
        }
      }
    }
    console.log("TLS fuzz: codes ok/short/malformed/unsup =", counts.join("/"));
    expect(traps).toBe(0);
  });
});
