// Fits the configured bounds under the process's descriptor limit (RLIMIT_NOFILE), so
// the relay sheds load by its own rules (the session table evicts the least recently
// used flow, TCP resets at connectionsMax) before the kernel says EMFILE, which would
// refuse every new flow of every client alike.
//
// Descriptors per unit of each bound:
//   UDP: one upstream socket per session at most (fewer with endpoint-independent
//        mapping) + one per reply socket;
//   TCP: two sockets and two pipes (two descriptors each) per connection + the pipe
//        pool (ffi/relay.c TCP_PIPE_POOL_MAX pipes).
// Both protocols share one process limit: each gets half when both have listeners.
import type { Config } from "./load.ts";

/** stdio, Bun's own (event loop, workers), epoll and event fds, netlink, listeners. */
export const RESERVED_DESCRIPTORS = 256;
export const TCP_DESCRIPTORS_PER_CONNECTION = 6;
/** The splice engine's pipe pool: 1024 pipes of two descriptors (ffi/relay.c). */
export const TCP_PIPE_POOL_DESCRIPTORS = 2 * 1024;
/**
 * Each UDP worker past the first (udp.workers): its own listener sockets, plus its epoll
 * and event fds, address watch, reject sockets, and the rounding up of its table share
 * (src/udp/multi_plane.ts), with room to spare.
 */
const UDP_WORKER_DESCRIPTORS = 16;
/** Schema minimums (src/config/schema.ts): below them the relay cannot run usefully. */
const UDP_SESSIONS_MIN = 16;
const UDP_REPLY_SOCKETS_MIN = 1;
const TCP_CONNECTIONS_MIN = 1;

export interface Fitted {
  config: Config;
  /** One line per bound that was lowered, for the start-up log. */
  notes: string[];
}

/** Descriptors the configured bounds may need at most (what to ask RLIMIT_NOFILE for). */
export function descriptorsWanted(config: Config): number {
  let wanted = RESERVED_DESCRIPTORS + config.listeners.length + extraWorkerDescriptors(config);
  if (config.listeners.some((l) => l.protocol === "udp")) {
    wanted += config.udp.sessionsMax + config.udp.replySocketsMax;
  }
  if (config.listeners.some((l) => l.protocol === "tcp")) {
    wanted += config.tcp.connectionsMax * TCP_DESCRIPTORS_PER_CONNECTION;
    wanted += TCP_PIPE_POOL_DESCRIPTORS;
  }
  return wanted;
}

/**
 * The config with its bounds lowered to fit `nofileLimit` descriptors. Throws when even
 * the minimums do not fit (the message says which limit to raise).
 */
export function fitToDescriptors(config: Config, nofileLimit: number): Fitted {
  const notes: string[] = [];
  const hasUdp = config.listeners.some((l) => l.protocol === "udp");
  const hasTcp = config.listeners.some((l) => l.protocol === "tcp");
  const available =
    nofileLimit - RESERVED_DESCRIPTORS - config.listeners.length - extraWorkerDescriptors(config);
  const udpShare = hasUdp ? (hasTcp ? Math.floor(available / 2) : available) : 0;
  const tcpShare = hasTcp ? available - udpShare : 0;
  const why = `RLIMIT_NOFILE is ${nofileLimit}`;
  const udp = { ...config.udp };
  const tcp = { ...config.tcp };

  if (hasUdp && udp.sessionsMax + udp.replySocketsMax > udpShare) {
    // A quarter of the share for reply sockets at most: sessions are what flows need.
    const replies = Math.min(udp.replySocketsMax, Math.floor(udpShare / 4));
    const sessions = Math.min(udp.sessionsMax, udpShare - replies);
    if (sessions < UDP_SESSIONS_MIN || replies < UDP_REPLY_SOCKETS_MIN) {
      throw new Error(
        `${why}: too low for the UDP relay (needs at least ` +
          `${RESERVED_DESCRIPTORS + UDP_SESSIONS_MIN * 2} descriptors; ` +
          `raise LimitNOFILE / ulimit -n)`,
      );
    }
    if (sessions < udp.sessionsMax) {
      notes.push(`udp.sessionsMax ${udp.sessionsMax} lowered to ${sessions} (${why})`);
      udp.sessionsMax = sessions;
    }
    if (replies < udp.replySocketsMax) {
      notes.push(`udp.replySocketsMax ${udp.replySocketsMax} lowered to ${replies} (${why})`);
      udp.replySocketsMax = replies;
    }
  }
  // A per-client bound above the whole table bounds nothing: say what applies.
  udp.sessionsPerClientMax = Math.min(udp.sessionsPerClientMax, udp.sessionsMax);
  udp.replySocketsPerClientMax = Math.min(udp.replySocketsPerClientMax, udp.replySocketsMax);

  if (hasTcp) {
    const needed = tcp.connectionsMax * TCP_DESCRIPTORS_PER_CONNECTION + TCP_PIPE_POOL_DESCRIPTORS;
    if (needed > tcpShare) {
      const pool = Math.min(TCP_PIPE_POOL_DESCRIPTORS, Math.floor(tcpShare / 4));
      const connections = Math.floor((tcpShare - pool) / TCP_DESCRIPTORS_PER_CONNECTION);
      if (connections < TCP_CONNECTIONS_MIN) {
        throw new Error(`${why}: too low for the TCP relay (raise LimitNOFILE / ulimit -n)`);
      }
      notes.push(`tcp.connectionsMax ${tcp.connectionsMax} lowered to ${connections} (${why})`);
      tcp.connectionsMax = connections;
    }
  }
  return { config: { ...config, udp, tcp }, notes };
}

/** What UDP workers past the first hold besides their share of the table bounds. */
function extraWorkerDescriptors(config: Config): number {
  const udpListeners = config.listeners.filter((l) => l.protocol === "udp").length;
  if (udpListeners === 0) return 0;
  return (config.udp.workers - 1) * (udpListeners + UDP_WORKER_DESCRIPTORS);
}
