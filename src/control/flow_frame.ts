// The flow log's framing, shared by the writer (src/control/flow_log.ts) and the reader
// (src/cli/log.ts). One record is one frame:
//
//   length (4 bytes, big endian) | payload (`length` bytes of msgpack) | CRC-32 (4 bytes, BE)
//
// The CRC-32 (IEEE 802.3, as zlib and gzip) covers the payload. A process killed in the
// middle of a write leaves a last frame whose length says more bytes than the file
// holds, or whose CRC fails: the reader skips it and says so. Every frame before it is
// complete and checked. Damage in the middle (a torn tail that a restarted relay then
// appended after) is skipped by scanning forward for the next offset where a length,
// a payload that starts like a record, and its CRC all check out.

import { crc32 as zlibCrc32 } from "node:zlib";
import { assertionFailed } from "../sys/assert.ts";

export const FRAME_HEAD_BYTES = 4;
export const FRAME_TAIL_BYTES = 4;
/** A payload is 1 byte at least (msgpack's smallest value): a length of 0 is damage. */
export const FRAME_PAYLOAD_BYTES_MIN = 1;
/**
 * Payload bytes at most. A record is well under 1 KiB (two addresses of at most 45
 * characters, a name of at most 256 bytes: src/classify/layout.ts NAME_BYTES_MAX, a
 * listener name of at most 32), so a longer length is damage, not a record.
 */
export const FRAME_PAYLOAD_BYTES_MAX = 4096;
export const FRAME_BYTES_MAX = FRAME_HEAD_BYTES + FRAME_PAYLOAD_BYTES_MAX + FRAME_TAIL_BYTES;
/**
 * How far past damage the reader looks for the next frame. A crash tears at most one
 * frame; a restarted relay appends right after it, so the next frame is within
 * FRAME_BYTES_MAX. The margin covers blocks a file system zero-filled after a power
 * loss; past it the rest of the file is not read as a flow log.
 */
export const RESYNC_BYTES_MAX = 16 << 20;
/** Bytes the reader takes per push() at most (its buffer is this plus one frame). */
export const READ_CHUNK_BYTES_MAX = 1 << 20;

export function crc32(bytes: Uint8Array): number {
  // node:zlib's, so that Bun and Node.js write and read the same flow log.
  return zlibCrc32(bytes) >>> 0;
}

/** Frame bytes of a payload of `payloadBytes`. */
export function frameBytes(payloadBytes: number): number {
  return FRAME_HEAD_BYTES + payloadBytes + FRAME_TAIL_BYTES;
}

/** Writes one frame of `payload` at `offset` of `out`; returns the offset after it. */
export function writeFrame(out: Uint8Array, offset: number, payload: Uint8Array): number {
  const n = payload.length;
  if (n < FRAME_PAYLOAD_BYTES_MIN || n > FRAME_PAYLOAD_BYTES_MAX) {
    assertionFailed(`flow log payload of ${n} bytes`);
  }
  if (offset + frameBytes(n) > out.length) assertionFailed("flow log frame past its buffer");
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  view.setUint32(offset, n);
  out.set(payload, offset + FRAME_HEAD_BYTES);
  view.setUint32(offset + FRAME_HEAD_BYTES + n, crc32(payload));
  return offset + frameBytes(n);
}

export interface FrameSink {
  /** A complete, checked frame; `offset`: where it starts in the stream. */
  frame(payload: Uint8Array, offset: number): void;
  /** Damage skipped, in words: "torn record at byte N: skipped". */
  problem(message: string): void;
}

const enum Check {
  Ok = 0,
  /** The stream ends before the frame does (for now: more bytes may come). */
  Short = 1,
  Bad = 2,
}

/**
 * Splits a byte stream into frames, in bounded memory: push() chunks as they are read,
 * end() at the end of the stream (that is when a short last frame becomes torn). While
 * a file is being followed, a frame the writer has not finished is simply waited for.
 */
export class FrameDecoder {
  /** Unparsed bytes: at most one partial frame plus one chunk. */
  private readonly buffer = new Uint8Array(READ_CHUNK_BYTES_MAX + FRAME_BYTES_MAX);
  private readonly view = new DataView(this.buffer.buffer);
  private start = 0;
  private end_ = 0;
  /** Stream offset of buffer[0]. */
  private base = 0;
  /** Stream offset of the damage being skipped, or -1 (reading frames in order). */
  private damagedAt = -1;
  /** Past RESYNC_BYTES_MAX of damage: the rest of the stream is ignored. */
  private abandoned = false;

  constructor(
    private readonly sink: FrameSink,
    /** A cheap look at a candidate's payload while resynchronising (before its CRC). */
    private readonly plausible: (payload: Uint8Array) => boolean = () => true,
  ) {}

  /** Stream offset up to which every byte is accounted for (frames or reported damage). */
  get position(): number {
    return this.base + this.start;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length > READ_CHUNK_BYTES_MAX) assertionFailed(`chunk of ${chunk.length} bytes`);
    if (this.abandoned) {
      this.base += chunk.length;
      return;
    }
    // Keep the unparsed tail (less than one frame) at the front, then append.
    if (this.start > 0) {
      this.buffer.copyWithin(0, this.start, this.end_);
      this.base += this.start;
      this.end_ -= this.start;
      this.start = 0;
    }
    if (this.end_ + chunk.length > this.buffer.length) assertionFailed("frame buffer overrun");
    this.buffer.set(chunk, this.end_);
    this.end_ += chunk.length;
    this.parse(false);
  }

  /** The stream ended: whatever is left is reported (torn last frame, damage to the end). */
  end(): void {
    if (this.abandoned) return;
    // At the end a short frame is damage too: parse() scans past it for later frames.
    this.parse(true);
    if (this.damagedAt < 0) return;
    this.sink.problem(`torn record at byte ${this.damagedAt}: skipped`);
    this.damagedAt = -1;
  }

  private parse(final: boolean): void {
    for (;;) {
      const at = this.start;
      if (at === this.end_) return;
      const check = this.check(at, this.damagedAt >= 0);
      if (check === Check.Ok) {
        const n = this.view.getUint32(at);
        const offset = this.base + at;
        if (this.damagedAt >= 0) {
          this.sink.problem(
            `corrupt record at byte ${this.damagedAt}: skipped ${offset - this.damagedAt} ` +
              `bytes to the next record at byte ${offset}`,
          );
          this.damagedAt = -1;
        }
        const payloadAt = at + FRAME_HEAD_BYTES;
        this.sink.frame(this.buffer.subarray(payloadAt, payloadAt + n), offset);
        this.start = at + frameBytes(n);
        continue;
      }
      if (check === Check.Short && !final) return;
      // Damage here (or, at the end of the stream, a frame that never completed): look
      // for the next frame one byte further on.
      if (this.damagedAt < 0) this.damagedAt = this.base + at;
      if (this.base + at + 1 - this.damagedAt > RESYNC_BYTES_MAX) {
        this.sink.problem(
          `corrupt record at byte ${this.damagedAt}: no record within ` +
            `${RESYNC_BYTES_MAX} bytes after it: skipped the rest`,
        );
        this.abandoned = true;
        this.base += this.end_;
        this.start = 0;
        this.end_ = 0;
        return;
      }
      this.start = at + 1;
    }
  }

  /** Whether a frame starts at `at`. resync: also require a plausible payload. */
  private check(at: number, resync: boolean): Check {
    const available = this.end_ - at;
    if (available < FRAME_HEAD_BYTES) return Check.Short;
    const n = this.view.getUint32(at);
    if (n < FRAME_PAYLOAD_BYTES_MIN || n > FRAME_PAYLOAD_BYTES_MAX) return Check.Bad;
    const payloadAt = at + FRAME_HEAD_BYTES;
    if (resync) {
      const seen = Math.min(n, available - FRAME_HEAD_BYTES);
      if (!this.plausible(this.buffer.subarray(payloadAt, payloadAt + seen))) return Check.Bad;
    }
    if (available < frameBytes(n)) return Check.Short;
    const crc = this.view.getUint32(payloadAt + n);
    return crc32(this.buffer.subarray(payloadAt, payloadAt + n)) === crc ? Check.Ok : Check.Bad;
  }
}
