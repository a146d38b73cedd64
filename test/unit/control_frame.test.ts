// The control socket's framing (4-byte big-endian length + one msgpack value): frames
// reassembled whatever the chunking, several per read, and an oversized or empty one
// refused from its header, before its bytes are held.
import { describe, expect, test } from "bun:test";
import {
  createPackr,
  encodeFrame,
  FRAME_HEADER_BYTES,
  FrameReader,
  REQUEST_FRAME_BYTES_MAX,
} from "../../src/control/frame.ts";

const packr = createPackr();

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Feeds `chunks` to a reader; returns the decoded values and the last refusal. */
function feed(reader: FrameReader, chunks: Uint8Array[]) {
  const values: unknown[] = [];
  let refused: string | null = null;
  for (const chunk of chunks) {
    refused = reader.push(chunk, (payload) => values.push(packr.unpack(payload)));
    if (refused !== null) break;
  }
  return { values, refused };
}

describe("control frames", () => {
  test("a frame is a big-endian length and a plain msgpack map", () => {
    const frame = encodeFrame(packr, { cmd: "stats" });
    const length = new DataView(frame.buffer).getUint32(0);
    expect(length).toBe(frame.length - FRAME_HEADER_BYTES);
    // map16 of 1 entry: a standard msgpack map any client decodes (no msgpackr records).
    expect(Array.from(frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + 3))).toEqual([
      0xde, 0, 1,
    ]);
    expect(packr.unpack(frame.subarray(FRAME_HEADER_BYTES))).toEqual({ cmd: "stats" });
  });

  test("64-bit counters decode as numbers", () => {
    const frame = encodeFrame(packr, { bytes: 2 ** 40 + 3 });
    expect(packr.unpack(frame.subarray(FRAME_HEADER_BYTES))).toEqual({ bytes: 2 ** 40 + 3 });
  });

  test("partial frames: one byte per read still yields each frame once, when complete", () => {
    const a = encodeFrame(packr, { cmd: "sessions", target: "198.18.1.2:7001", limit: 2 });
    const reader = new FrameReader(REQUEST_FRAME_BYTES_MAX);
    const values: unknown[] = [];
    for (let i = 0; i < a.length; i++) {
      expect(values).toEqual([]);
      const refused = reader.push(a.subarray(i, i + 1), (p) => values.push(packr.unpack(p)));
      expect(refused).toBeNull();
    }
    expect(values).toEqual([{ cmd: "sessions", target: "198.18.1.2:7001", limit: 2 }]);
    expect(reader.pendingBytes).toBe(0);
  });

  test("several frames in one read, and split at every possible point", () => {
    const frames = [{ cmd: "stats" }, { cmd: "sessions", sort: "age" }, { cmd: "x".repeat(300) }];
    const stream = concat(...frames.map((f) => encodeFrame(packr, f)));
    expect(feed(new FrameReader(REQUEST_FRAME_BYTES_MAX), [stream])).toEqual({
      values: frames,
      refused: null,
    });
    for (let split = 0; split <= stream.length; split++) {
      const r = feed(new FrameReader(REQUEST_FRAME_BYTES_MAX), [
        stream.subarray(0, split),
        stream.subarray(split),
      ]);
      expect(r).toEqual({ values: frames, refused: null });
    }
  });

  test("a frame larger than the reader's first buffer grows it, up to the bound", () => {
    const big = { cmd: "stats", pad: "p".repeat(20_000) };
    const frame = encodeFrame(packr, big);
    const r = feed(new FrameReader(REQUEST_FRAME_BYTES_MAX), [
      frame.subarray(0, 3),
      frame.subarray(3, 9000),
      frame.subarray(9000),
    ]);
    expect(r).toEqual({ values: [big], refused: null });
  });

  test("a payload of exactly the bound passes; one byte more is refused from its header", () => {
    const bytesMax = 64;
    const exact = new Uint8Array(FRAME_HEADER_BYTES + bytesMax);
    new DataView(exact.buffer).setUint32(0, bytesMax);
    exact[FRAME_HEADER_BYTES] = 0xc4; // bin 8 of 62 bytes: one msgpack value of 64 bytes
    exact[FRAME_HEADER_BYTES + 1] = bytesMax - 2;
    const ok = new FrameReader(bytesMax);
    let seen = 0;
    expect(ok.push(exact, (p) => (seen = p.length))).toBeNull();
    expect(seen).toBe(bytesMax);

    const header = new Uint8Array(FRAME_HEADER_BYTES);
    new DataView(header.buffer).setUint32(0, bytesMax + 1);
    const reader = new FrameReader(bytesMax);
    // The header alone is refused: the reader never waits for (or holds) the body.
    expect(reader.push(header, () => {})).toBe("frame of 65 bytes exceeds the bound of 64 bytes");
    expect(reader.push(new Uint8Array(10), () => {})).toContain("exceeds the bound");
  });

  test("an oversized frame after good ones: the good ones are delivered, then refused", () => {
    const good = encodeFrame(packr, { cmd: "stats" });
    const huge = new Uint8Array(FRAME_HEADER_BYTES + 8);
    new DataView(huge.buffer).setUint32(0, 0xffff_ffff);
    const r = feed(new FrameReader(REQUEST_FRAME_BYTES_MAX), [concat(good, good, huge)]);
    expect(r.values).toEqual([{ cmd: "stats" }, { cmd: "stats" }]);
    expect(r.refused).toBe(`frame of 4294967295 bytes exceeds the bound of 65536 bytes`);
  });

  test("an empty frame is refused (it holds no value)", () => {
    const r = feed(new FrameReader(REQUEST_FRAME_BYTES_MAX), [new Uint8Array(4)]);
    expect(r.refused).toContain("empty frame");
  });
});
