// QUIC connection IDs -> sessions, so a QUIC flow follows its connection when the
// client's address or port changes (NAT rebinding, RFC 9000 §9.3) instead of opening a
// second session and upstream socket that the server would see as a new path.
//
// What the relay can see: the server's long-header packets (Initial, Handshake) carry
// its Source Connection ID in the clear, and that is the Destination Connection ID the
// client puts on its packets from then on, short headers included (whose DCID length is
// not on the wire: it is the length the server chose). So: learn (server SCID ->
// session) from replies, and when a datagram from an unknown client endpoint arrives on
// a QUIC port, look its DCID up at each length servers have used. IDs a server hands out
// later (NEW_CONNECTION_ID frames) are encrypted; a client that migrates on purpose
// switches to one of those (§9.5), and then looks like a new flow, as it does to any
// middlebox. NAT rebinding keeps the DCID, and that is the case followed here.
//
// Bounded: at most one ID per session (the latest the server used), a fixed-capacity
// index allocated once; parsing reads only within the datagram's length.
import { HashIndex } from "./hash_index.ts";

/** RFC 9000 §17.2: connection IDs are 0-20 bytes in QUIC v1 and v2. */
export const CID_BYTES_MAX = 20;
/** Key: the length, then the bytes in 5 big-endian words (zero padded). */
const KEY_WORDS = 6;

export class QuicConnectionIds {
  private readonly index: HashIndex;
  /** Per index slot: the session it belongs to. */
  private readonly sessionOf: Int32Array;
  /** Per session: its index slot, or -1. */
  private readonly slotOf: Int32Array;
  /** Lengths (1-20) servers have chosen so far: bit L. */
  private lengthsSeen = 0;

  constructor(sessionsMax: number) {
    this.index = new HashIndex(KEY_WORDS, sessionsMax);
    this.sessionOf = new Int32Array(sessionsMax).fill(-1);
    this.slotOf = new Int32Array(sessionsMax).fill(-1);
  }

  get count(): number {
    return this.index.count;
  }

  /**
   * A reply of session s (`length` bytes at `offset` of `bytes`): if it is a long-header
   * packet, its Source Connection ID now names session s. Returns true when it was new.
   */
  learn(s: number, bytes: Uint8Array, offset: number, length: number): boolean {
    // Long header: flags(1) version(4) dcil(1) dcid scil(1) scid ...; version 0 is
    // Version Negotiation, whose IDs echo the client's and name nothing of the server.
    if (length < 7 || (bytes[offset] & 0x80) === 0) return false;
    if ((bytes[offset + 1] | bytes[offset + 2] | bytes[offset + 3] | bytes[offset + 4]) === 0) {
      return false;
    }
    const dcil = bytes[offset + 5];
    if (dcil > CID_BYTES_MAX) return false;
    const scilAt = 6 + dcil;
    if (scilAt >= length) return false;
    const scil = bytes[offset + scilAt];
    if (scil === 0 || scil > CID_BYTES_MAX || scilAt + 1 + scil > length) return false;
    this.setKey(bytes, offset + scilAt + 1, scil);
    const old = this.slotOf[s];
    const found = this.index.find();
    if (found >= 0 && found === old) return false;
    if (old >= 0) this.drop(old);
    if (found >= 0) this.drop(found); // another session's stale claim: the newest wins
    const slot = this.index.insert();
    if (slot < 0) return false; // cannot happen: at most one ID per session
    this.sessionOf[slot] = s;
    this.slotOf[s] = slot;
    this.lengthsSeen |= 1 << scil;
    return true;
  }

  /**
   * The session whose connection a client datagram belongs to, by its Destination
   * Connection ID, or -1. Short headers are tried at every length servers have used.
   */
  sessionOfClientPacket(bytes: Uint8Array, offset: number, length: number): number {
    if (length < 2) return -1;
    const first = bytes[offset];
    if ((first & 0x80) !== 0) {
      if (length < 7) return -1;
      const dcil = bytes[offset + 5];
      if (dcil === 0 || dcil > CID_BYTES_MAX || 6 + dcil > length) return -1;
      this.setKey(bytes, offset + 6, dcil);
      const slot = this.index.find();
      return slot < 0 ? -1 : this.sessionOf[slot];
    }
    // A short header. Its fixed bit (0x40) is not checked: peers that agreed to grease
    // it (RFC 9287; ngtcp2 does) clear it at random.
    for (let cidLength = 1; cidLength <= CID_BYTES_MAX; cidLength++) {
      if ((this.lengthsSeen & (1 << cidLength)) === 0) continue;
      if (1 + cidLength > length) break;
      this.setKey(bytes, offset + 1, cidLength);
      const slot = this.index.find();
      if (slot >= 0) return this.sessionOf[slot];
    }
    return -1;
  }

  /** Session s ended: its ID names nothing any more. */
  forget(s: number): void {
    const slot = this.slotOf[s];
    if (slot >= 0) this.drop(slot);
  }

  private drop(slot: number): void {
    const s = this.sessionOf[slot];
    if (s >= 0 && this.slotOf[s] === slot) this.slotOf[s] = -1;
    this.sessionOf[slot] = -1;
    this.index.remove(slot);
  }

  private setKey(bytes: Uint8Array, at: number, cidLength: number): void {
    const key = this.index.scratch;
    key.fill(0);
    key[0] = cidLength;
    for (let i = 0; i < cidLength; i++) {
      const w = 1 + (i >>> 2);
      key[w] = (key[w] | (bytes[at + i] << (24 - 8 * (i & 3)))) >>> 0;
    }
  }
}
