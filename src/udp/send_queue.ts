// The send queue: the one writer of send entries (struct rl_send), for both directions.
// Datagrams received this round are queued as entries that point into the receive slab
// (no copy) and go out together in one rl_send_batch: the entries of each socket become
// one sendmmsg (in their order; sockets are not ordered between them), so 256 flows'
// replies through one listener leave in a handful of system calls, and so do queries
// spread over the DNS forwarder's upstream sockets.
//
// Invariants, asserted before each write (a typed-array write past the end is silently
// dropped in JS and then read past by C): count < capacity; every entry's payload lies
// inside the slab; its fd is a real descriptor. rl_send_batch checks the slab bounds
// again on the C side and never trusts an entry.
import { type Pointer, ptr, type RelayLib } from "../sys/ffi.ts";
import type { UdpCounters } from "../metrics.ts";
import { assert, assertionFailed } from "../sys/assert.ts";
import { classifyIoErrno, errnoName, IoOutcome } from "../sys/errno.ts";
import { SEND, SEND_FLAG_CONNECTED, SEND_FLAG_SOURCE, SEND_WORDS } from "../sys/layout.ts";
import type { UringPlane } from "./uring_plane.ts";

export const enum Direction {
  ToClient = 0,
  ToTarget = 1,
}

export class SendQueue {
  private readonly sends: Uint8Array;
  private readonly sendsPtr: Pointer;
  private readonly send32: Uint32Array;
  private readonly sendI32: Int32Array;
  private readonly send16: Uint16Array;
  /** Per queued entry: 1 to a target, 0 to a client (for the counters). */
  private readonly toTargetFlag: Uint8Array;
  private count = 0;
  /** The io_uring plane (its sends complete later), or null: rl_send_batch. Set once. */
  uring: UringPlane | null = null;

  constructor(
    private readonly lib: RelayLib,
    /** The receive slab the payloads live in, and its pointer. */
    private readonly slabPtr: Pointer,
    private readonly slabBytes: number,
    readonly capacity: number,
    private readonly counters: UdpCounters,
    private readonly log: (reason: string, message: string) => void,
  ) {
    // On its own ArrayBuffer: JSC moves a small typed array's bytes when `.buffer` is
    // first read, which would leave a cached ptr() pointing at freed memory.
    this.sends = new Uint8Array(new ArrayBuffer(SEND_WORDS * 4 * capacity));
    this.sendsPtr = ptr(this.sends);
    this.send32 = new Uint32Array(this.sends.buffer);
    this.sendI32 = new Int32Array(this.sends.buffer);
    this.send16 = new Uint16Array(this.sends.buffer);
    this.toTargetFlag = new Uint8Array(capacity);
  }

  get queued(): number {
    return this.count;
  }

  /**
   * Queues a datagram to address (w0..w3), port, scope on socket fd: a client's
   * datagram to its target on the flow's upstream socket (Direction.ToTarget), or a
   * reply on the reply socket bound to the original destination (Direction.ToClient).
   * Returns the entry's first word.
   */
  push(
    direction: Direction,
    fd: number,
    w0: number,
    w1: number,
    w2: number,
    w3: number,
    port: number,
    scope: number,
    offset: number,
    length: number,
  ): number {
    assert(this.count < this.capacity, "send queue full: it holds one entry per slab slot");
    if (fd < 0) assertionFailed(`send entry on fd ${fd}`);
    if (offset + length > this.slabBytes) {
      assertionFailed(`send entry ${offset}+${length} past the ${this.slabBytes}-byte slab`);
    }
    const k = this.count++;
    const d = k * SEND_WORDS;
    const send32 = this.send32;
    this.toTargetFlag[k] = direction;
    send32[d] = w0;
    send32[d + 1] = w1;
    send32[d + 2] = w2;
    send32[d + 3] = w3;
    this.send16[d * 2 + SEND.targetPortHalf] = port;
    this.send16[d * 2 + SEND.flagsHalf] = 0;
    this.sendI32[d + SEND.fdWord] = fd;
    send32[d + SEND.offsetWord] = offset;
    send32[d + SEND.lengthWord] = length;
    send32[d + SEND.targetScopeWord] = scope;
    return d;
  }

  /** A datagram to a target on a socket connected to it (rl_udp_connect): no name. */
  toConnected(
    fd: number,
    w0: number,
    w1: number,
    w2: number,
    w3: number,
    port: number,
    offset: number,
    length: number,
  ): void {
    const d = this.push(Direction.ToTarget, fd, w0, w1, w2, w3, port, 0, offset, length);
    this.send16[d * 2 + SEND.flagsHalf] = SEND_FLAG_CONNECTED;
  }

  /**
   * A reply to a client on a listener, sent from s0..s3 (IP_PKTINFO / IPV6_PKTINFO):
   * the original destination, which is not an address of this host.
   */
  toClientFrom(
    fd: number,
    w0: number,
    w1: number,
    w2: number,
    w3: number,
    port: number,
    scope: number,
    s0: number,
    s1: number,
    s2: number,
    s3: number,
    offset: number,
    length: number,
  ): void {
    const d = this.push(Direction.ToClient, fd, w0, w1, w2, w3, port, scope, offset, length);
    this.send16[d * 2 + SEND.flagsHalf] = SEND_FLAG_SOURCE;
    const send32 = this.send32;
    send32[d + SEND.sourceAddrWord] = s0;
    send32[d + SEND.sourceAddrWord + 1] = s1;
    send32[d + SEND.sourceAddrWord + 2] = s2;
    send32[d + SEND.sourceAddrWord + 3] = s3;
  }

  /** Sends everything queued (both directions) and counts each result by kind. */
  flush(): void {
    const count = this.count;
    if (count === 0) return;
    this.count = 0;
    const uring = this.uring;
    if (uring === null) {
      this.lib.rl_send_batch(this.slabPtr, this.slabBytes, this.sendsPtr, count);
    } else {
      uring.send(this.slabPtr, this.slabBytes, this.sendsPtr, count);
    }
    for (let k = 0; k < count; k++) {
      // In flight in the ring: counted at its completion (countResult).
      if (uring?.queued(k, this.toTargetFlag[k])) continue;
      this.countResult(this.toTargetFlag[k], this.sendI32[k * SEND_WORDS + SEND.resultWord], k);
    }
  }

  /**
   * Counts one send's result (bytes or -errno), to a target (1) or to a client (0);
   * entry: its index in the batch (-1: completed in the ring).
   */
  countResult(toTarget: number, result: number, entry = -1): void {
    const c = this.counters;
    if (result < 0) {
      this.onError(entry, -result);
    } else if (toTarget === 1) {
      c.packetsToTargets++;
      c.bytesToTargets += result;
    } else {
      c.packetsToClients++;
      c.bytesToClients += result;
    }
  }

  /** Counts a send made outside the queue (a SOCKS5 wrapped datagram) that failed. */
  countError(errno: number): void {
    this.onError(-1, errno);
  }

  private onError(k: number, errno: number): void {
    const c = this.counters;
    switch (classifyIoErrno(errno)) {
      case IoOutcome.WouldBlock:
        c.sendWouldBlock++;
        return;
      case IoOutcome.Unreachable:
        c.sendUnreachable++;
        return;
      case IoOutcome.TooLarge:
        c.sendTooLarge++;
        return;
      case IoOutcome.Resources:
        c.sendResources++;
        return;
      case IoOutcome.ProgrammerError:
        throw new Error(`sendmmsg entry ${k}: ${errnoName(errno)} (a bookkeeping bug)`);
      default:
        c.sendOther++;
        this.log(`send-${errno}`, `sendmmsg: ${errnoName(errno)} (${errno})`);
    }
  }
}
