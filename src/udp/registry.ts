// The UDP data path's socket registry: token -> what a ready socket is (a listener, an
// upstream socket, a reply socket, the address watch), its fd and its owner's index.
// The poller reports tokens, never fds: a token is freed only after its socket left
// epoll, so a late wake-up for a closed socket finds Free instead of a reused fd.
//
// Registration is all or nothing: a token is taken only when epoll_ctl accepted the
// socket; on failure nothing is held and the caller still owns (and closes) the fd.
import { assert, assertionFailed } from "../sys/assert.ts";
import type { Poller } from "../sys/poller.ts";
import { faultEpollAdd } from "../sys/test_faults.ts";
import type { UringPlane } from "./uring_plane.ts";

export const enum SocketKind {
  Free = 0,
  Listener = 1,
  Upstream = 2,
  Reply = 3,
  /** The netlink socket that reports address changes (LocalTargets). */
  AddressWatch = 4,
  /** The TCP control connection of a SOCKS5 UDP association (src/egress/socks5_udp.ts). */
  Socks5Control = 5,
  /** An upstream socket of the DNS forwarder (src/dns/forwarder.ts). */
  DnsUpstream = 6,
}

export class SocketRegistry {
  private readonly kinds: Uint8Array;
  private readonly fds: Int32Array;
  private readonly refs: Int32Array;
  private readonly freeTokens: Int32Array;
  private freeCount: number;
  /** errno of the last failed register() (for the caller's message). */
  lastErrno = 0;

  /**
   * tokensMax: every socket the bounds allow, at once (running out is a bug). uring: the
   * io_uring plane, which receives on the UDP data sockets (listeners, upstream, reply
   * and DNS upstream sockets); the rest stays on the poller. null: epoll for all.
   */
  constructor(
    private readonly poller: Poller,
    readonly tokensMax: number,
    private readonly uring: UringPlane | null = null,
  ) {
    this.kinds = new Uint8Array(tokensMax);
    this.fds = new Int32Array(tokensMax).fill(-1);
    this.refs = new Int32Array(tokensMax).fill(-1);
    this.freeTokens = new Int32Array(tokensMax);
    for (let i = 0; i < tokensMax; i++) this.freeTokens[i] = tokensMax - 1 - i;
    this.freeCount = tokensMax;
  }

  /** Tokens in use (sockets registered). */
  get used(): number {
    return this.tokensMax - this.freeCount;
  }

  /** Registers fd under a fresh token: the token, or -1 with nothing taken (lastErrno). */
  register(kind: SocketKind, fd: number, ref: number): number {
    assert(this.freeCount > 0, "socket registry full: tokens are sized for every socket");
    if (fd < 0) assertionFailed(`register: fd ${fd}`);
    const token = this.freeTokens[this.freeCount - 1];
    const rc =
      faultEpollAdd() ||
      (this.onRing(kind) ? (this.uring as UringPlane).add(fd, token) : this.poller.add(fd, token));
    if (rc < 0) {
      this.lastErrno = -rc;
      return -1;
    }
    this.freeCount--;
    this.kinds[token] = kind;
    this.fds[token] = fd;
    this.refs[token] = ref;
    return token;
  }

  /** Removes the socket from epoll (before the caller closes it) and frees its token. */
  unregister(token: number): void {
    if (this.kinds[token] === SocketKind.Free)
      assertionFailed(`unregister: token ${token} is free`);
    if (this.onRing(this.kinds[token] as SocketKind)) (this.uring as UringPlane).remove(token);
    else this.poller.remove(this.fds[token]);
    this.kinds[token] = SocketKind.Free;
    this.fds[token] = -1;
    this.refs[token] = -1;
    this.freeTokens[this.freeCount++] = token;
  }

  /** Whether the socket's datagrams come through the io_uring plane. */
  private onRing(kind: SocketKind): boolean {
    return (
      this.uring !== null && kind !== SocketKind.AddressWatch && kind !== SocketKind.Socks5Control
    );
  }

  kind(token: number): SocketKind {
    return this.kinds[token] as SocketKind;
  }

  fd(token: number): number {
    return this.fds[token];
  }

  ref(token: number): number {
    return this.refs[token];
  }

  setRef(token: number, ref: number): void {
    this.refs[token] = ref;
  }
}
