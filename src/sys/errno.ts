// errno values the C helper returns (as -errno), and what each means to the relay.
// Linux x86-64/arm64 numbering (asm-generic/errno-base.h, errno.h).
import { log } from "../control/log.ts";

export const E = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EINVAL: 22,
  ENOSPC: 28,
  ENFILE: 23,
  EMFILE: 24,
  EMSGSIZE: 90,
  ENOPROTOOPT: 92,
  EPROTONOSUPPORT: 93,
  EOPNOTSUPP: 95,
  EAFNOSUPPORT: 97,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENETDOWN: 100,
  ENETUNREACH: 101,
  ECONNRESET: 104,
  ENOBUFS: 105,
  EISCONN: 106,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EHOSTDOWN: 112,
  EHOSTUNREACH: 113,
  EALREADY: 114,
} as const;

const NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(E).map(([name, code]) => [code, name]),
);

export function errnoName(code: number): string {
  return NAMES[code] ?? `errno ${code}`;
}

/** rl_socket() and rl_tcp_connect() failure steps (enum rl_step in ffi/internal.h). */
export const SOCKET_STEPS: Record<number, string> = {
  1: "socket()",
  2: "IP_TRANSPARENT",
  3: "IP_RECVORIGDSTADDR",
  4: "SO_REUSEADDR",
  5: "SO_REUSEPORT",
  6: "IP_FREEBIND",
  7: "IP_RECVERR",
  8: "IPV6_V6ONLY",
  9: "SO_MARK",
  10: "SO_RCVBUF",
  11: "SO_SNDBUF",
  12: "bind()",
  13: "connect()", // rl_tcp_connect only
  14: "SO_RXQ_OVFL",
  15: "SO_BINDTODEVICE", // rl_tcp_connect_via only
};

/** A socket set-up failure, decoded from -(step << 16 | errno). */
export interface SocketError {
  step: string;
  errno: number;
}

export function decodeSocketError(result: number): SocketError {
  if (result >= 0) throw new Error(`decodeSocketError: ${result} is not a failure`);
  const packed = -result;
  const errno = packed & 0xffff;
  const stepIndex = packed >>> 16;
  return { step: SOCKET_STEPS[stepIndex] ?? `step ${stepIndex}`, errno };
}

export function describeSocketError(err: SocketError, ipv6: boolean): string {
  let step = err.step;
  if (ipv6) step = step.replace(/^IP_/, "IPV6_");
  const name = errnoName(err.errno);
  if (isPrivilegeErrno(err.errno)) {
    const privileged = step.includes("TRANSPARENT") || step === "SO_MARK";
    return privileged
      ? `${step}: ${name}: needs CAP_NET_ADMIN (run as root, or grant it: ` +
          `AmbientCapabilities=CAP_NET_ADMIN in a systemd unit)`
      : `${step}: ${name}: not permitted (a port below 1024 needs CAP_NET_BIND_SERVICE)`;
  }
  if (err.errno === E.EADDRINUSE && step === "bind()") {
    return (
      `${step}: ${name}: the address and port are already in use (another relay, or ` +
      `another service: ss -lnp shows which); the relay does not share its listeners`
    );
  }
  return `${step}: ${name}`;
}

/** The kernel refused for lack of privilege (a capability): exit status 77. */
export function isPrivilegeErrno(code: number): boolean {
  return code === E.EPERM || code === E.EACCES;
}

/** Out of descriptors or kernel memory: a resource limit, not a fault of the flow. */
export function isResourceErrno(code: number): boolean {
  return code === E.EMFILE || code === E.ENFILE || code === E.ENOMEM || code === E.ENOBUFS;
}

/** A start-up failure; `privilege` marks one that needs a capability (exit 77). */
export class StartError extends Error {
  constructor(
    message: string,
    readonly privilege: boolean,
  ) {
    super(message);
    this.name = "StartError";
  }
}

/** Send/receive results on the data path: what each errno means for the datagram. */
export const enum IoOutcome {
  /** Nothing to do now (socket buffer full or empty): the datagram is dropped, counted. */
  WouldBlock,
  /** The network said no (ICMP or local route): counted per reason, flow goes on. */
  Unreachable,
  /** The datagram itself was refused (too large for the path/socket). */
  TooLarge,
  /** Kernel resources: buffers or descriptors. */
  Resources,
  /** A bug on our side (bad fd, bad pointer, bad argument): must never happen. */
  ProgrammerError,
  Other,
}

export function classifyIoErrno(code: number): IoOutcome {
  switch (code) {
    case E.EAGAIN: // socket buffer full (send) or empty (receive)
    case E.EINTR: // a signal; the next wake-up retries
      return IoOutcome.WouldBlock;
    case E.ECONNREFUSED: // ICMP port unreachable, reported through IP_RECVERR
    case E.EHOSTUNREACH: // ICMP host unreachable, or no neighbour
    case E.ENETUNREACH: // ICMP net unreachable, or no route
    case E.EHOSTDOWN:
    case E.ENETDOWN:
    case E.EADDRNOTAVAIL: // source address not usable for this destination
    case E.EACCES: // a firewall (nft reject / prohibited) said no
    case E.EPERM: // an nft/iptables drop on output
      return IoOutcome.Unreachable;
    case E.EMSGSIZE: // larger than the path MTU with DF, or than the socket allows
      return IoOutcome.TooLarge;
    case E.ENOBUFS: // qdisc or skb allocation
    case E.ENOMEM:
    case E.EMFILE:
    case E.ENFILE:
      return IoOutcome.Resources;
    case E.EBADF: // we used a closed descriptor: a bookkeeping bug
    case E.EFAULT: // a pointer outside our buffers
    case E.EINVAL: // a malformed argument from our own code
      return IoOutcome.ProgrammerError;
    default:
      return IoOutcome.Other;
  }
}

/** Logs an errno we did not expect, with both its name and its number. */
export function unexpectedErrno(label: string, code: number): void {
  log.error(`unexpected errno in ${label}: ${errnoName(code)} (${code})`, { label, errno: code });
}
