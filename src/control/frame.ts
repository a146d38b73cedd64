// Frames of the control socket: a 4-byte big-endian length, then that many bytes of one
// msgpack-encoded object. A length prefix (not a delimiter) lets a reader know a frame's
// size before it holds the frame, so an oversized one is refused from its first 4 bytes
// instead of after it filled memory.
import { Packr } from "msgpackr";

export const FRAME_HEADER_BYTES = 4;
/** A request is a small object ({cmd, filters}): 64 KiB is far beyond any real one. */
export const REQUEST_FRAME_BYTES_MAX = 64 << 10;
/**
 * A reply holds at most SESSIONS_LIMIT_MAX sessions and as many TCP connections (about
 * 300 bytes each): well under 1 MiB. 16 MiB bounds what a client ever buffers.
 */
export const REPLY_FRAME_BYTES_MAX = 16 << 20;

/**
 * The one Packr of a process (STYLE.md 2: built at start-up, never per message). Plain
 * msgpack maps, not msgpackr's record extension, so any msgpack client can talk to the
 * socket; 64-bit integers decode as numbers (counters stay below 2^53).
 */
export function createPackr(): Packr {
  return new Packr({ useRecords: false, int64AsType: "number" });
}

/** `value` encoded as one frame (header + payload). The caller checks the size bound. */
export function encodeFrame(packr: Packr, value: unknown): Uint8Array {
  const payload = packr.pack(value);
  // pack() returns a view of the Packr's reused buffer: copy it out at once.
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

/** Bytes of a frame's payload (frame = what encodeFrame returned). */
export function framePayloadBytes(frame: Uint8Array): number {
  return frame.length - FRAME_HEADER_BYTES;
}

/** Bytes a FrameReader holds before it needs more: grown by doubling up to its bound. */
const READER_INITIAL_BYTES = 4096;

/**
 * Reassembles frames from a byte stream, whatever the chunking: a frame split across
 * reads, several frames in one read. Holds at most one frame (header + bytesMax), so a
 * client can never make it grow past that; a header announcing more is an error, and
 * the reader stays failed (the stream cannot be resynchronised after it).
 *
 * Invariant: 0 <= used <= buffer.length <= FRAME_HEADER_BYTES + bytesMax.
 */
export class FrameReader {
  private buffer: Uint8Array;
  private used = 0;
  private failed: string | null = null;

  constructor(private readonly bytesMax: number) {
    this.buffer = new Uint8Array(Math.min(READER_INITIAL_BYTES, FRAME_HEADER_BYTES + bytesMax));
  }

  /**
   * Takes the next bytes of the stream; calls onFrame with each complete payload (a
   * view valid only during the call). Returns null, or why the stream is refused.
   */
  push(chunk: Uint8Array, onFrame: (payload: Uint8Array) => void): string | null {
    if (this.failed !== null) return this.failed;
    let offset = 0;
    // Each pass copies at least one byte or completes a frame: at most chunk.length +
    // (frames in the chunk) passes.
    while (offset < chunk.length) {
      const wanted = this.bytesWanted();
      if (wanted < 0) return this.failed;
      if (this.buffer.length < wanted) this.grow(wanted);
      const n = Math.min(wanted - this.used, chunk.length - offset);
      this.buffer.set(chunk.subarray(offset, offset + n), this.used);
      this.used += n;
      offset += n;
      if (this.used === wanted && wanted > FRAME_HEADER_BYTES) {
        this.used = 0;
        onFrame(this.buffer.subarray(FRAME_HEADER_BYTES, wanted));
      }
    }
    // A header completed by the last bytes: check its bound now, not at the next read.
    if (this.bytesWanted() < 0) return this.failed;
    return null;
  }

  /** Bytes held of an incomplete frame (0 between frames). */
  get pendingBytes(): number {
    return this.used;
  }

  /** How many bytes the current frame needs in all (header included), or -1: refused. */
  private bytesWanted(): number {
    if (this.used < FRAME_HEADER_BYTES) return FRAME_HEADER_BYTES;
    const length = new DataView(this.buffer.buffer, this.buffer.byteOffset).getUint32(0);
    if (length > this.bytesMax) {
      this.failed = `frame of ${length} bytes exceeds the bound of ${this.bytesMax} bytes`;
      return -1;
    }
    // An empty payload is no msgpack value: refused like an oversized one (the stream
    // would otherwise spin on zero-length frames).
    if (length === 0) {
      this.failed = "empty frame (a frame holds one msgpack value)";
      return -1;
    }
    return FRAME_HEADER_BYTES + length;
  }

  private grow(bytes: number): void {
    let size = this.buffer.length;
    while (size < bytes) size *= 2;
    const next = new Uint8Array(Math.min(size, FRAME_HEADER_BYTES + this.bytesMax));
    next.set(this.buffer.subarray(0, this.used));
    this.buffer = next;
  }
}
