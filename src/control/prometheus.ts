// The relay's metrics in the Prometheus text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/), rendered from the
// relays' snapshots at scrape time. The data path only bumps plain numbers
// (src/metrics.ts); every name, label and line is made here, on the control plane.
//
// Every counter lands in a family. Those named dropped<Reason>, send<Kind>, icmp<Kind>
// and sniff<Result> land in theirs by name, so a new drop reason shows up with no edit
// here. Every other name is placed by a table whose type lists all of them: a counter
// added to UdpCounters or TcpCounters does not type-check until it has a place.
import type { FlowLogCounters } from "./flow_log.ts";
import { BATCH_BUCKET_UPPER } from "../metrics.ts";
import type { TcpRelay } from "../tcp/relay.ts";
import type { UdpSnapshot, UdpValues } from "../udp/relay.ts";
import type { LoopLagSample } from "./loop_lag.ts";
import type { ProcessStats } from "./process_stats.ts";
import type { ReloadState } from "./reloader.ts";

/** Content-Type of the 0.0.4 text format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type TcpValues = ReturnType<TcpRelay["snapshot"]>;

/** What one scrape shows. */
export interface ScrapeInput {
  udp: UdpSnapshot;
  /** null without TCP listeners. */
  tcp: TcpValues | null;
  process: ProcessStats;
  loopLag: LoopLagSample;
  /** The flow log writer's counters; null without a flow log. */
  flowLog: FlowLogCounters | null;
  /** The config's generation and reload results (absent: not shown). */
  config?: ReloadState | null;
}

type MetricType = "counter" | "gauge" | "histogram" | "summary";

interface Family {
  name: string;
  type: MetricType;
  help: string;
}

const family = (name: string, type: MetricType, help: string): Family => ({ name, type, help });

/** Every family, in the order of the output. */
const F = {
  packets: family(
    "relay_packets_total",
    "counter",
    "Datagrams by protocol and direction: from_clients -> to_targets, from_targets -> " +
      "to_clients. Each pair differs by the drops and the send errors.",
  ),
  bytes: family(
    "relay_bytes_total",
    "counter",
    "Payload bytes by protocol and direction (UDP: as read, dropped datagrams included; " +
      "TCP: delivered, open connections included).",
  ),
  sessionsActive: family(
    "relay_sessions_active",
    "gauge",
    "Sessions open now: UDP flows, TCP connections.",
  ),
  sessionsLimit: family(
    "relay_sessions_limit",
    "gauge",
    "Sessions held at most (udp.sessionsMax, tcp.connectionsMax, as fitted to " +
      "RLIMIT_NOFILE). Past it UDP evicts the least recently used, TCP refuses.",
  ),
  sessionsCreated: family("relay_sessions_created_total", "counter", "Sessions opened."),
  sessionsExpired: family(
    "relay_sessions_expired_total",
    "counter",
    "Sessions ended by their idle timeout.",
  ),
  sessionsEvicted: family(
    "relay_sessions_evicted_total",
    "counter",
    "Sessions ended early because the table was full (least recently used first): " +
      "consider a larger udp.sessionsMax.",
  ),
  flowLogDropped: family(
    "relay_flow_log_dropped_total",
    "counter",
    "Flow records dropped before the writer: the data path's bounded buffer was full.",
  ),
  flowLogRecords: family("relay_flow_log_records_total", "counter", "Flow records written."),
  flowLogBytes: family("relay_flow_log_bytes_total", "counter", "Bytes written to the flow log."),
  flowLogLost: family(
    "relay_flow_log_records_lost_total",
    "counter",
    "Flow records not written: an open, write or rotation step failed (disk full, EIO).",
  ),
  flowLogWriteErrors: family(
    "relay_flow_log_write_errors_total",
    "counter",
    "Failed writes, opens and renames of the flow log.",
  ),
  flowLogRotations: family("relay_flow_log_rotations_total", "counter", "Flow log rotations."),
  configReloads: family(
    "relay_config_reloads_total",
    "counter",
    "Reloads (SIGHUP, relay reload) by result: applied (every live change), refused (a " +
      "field that needs a restart changed, or the host rules failed: nothing applied), " +
      "invalid (the file did not validate: nothing applied).",
  ),
  configGeneration: family(
    "relay_config_generation",
    "gauge",
    "The running configuration: 1 at start, one more for each reload that changed it.",
  ),
  udpSessionsLocal: family(
    "relay_udp_sessions_ended_local_target_total",
    "counter",
    "UDP sessions ended because their original destination became an address of this host.",
  ),
  udpReplyPath: family(
    "relay_udp_sessions_reply_path_total",
    "counter",
    "UDP sessions opened, by reply path: pktinfo (the listener, source set by IP_PKTINFO) " +
      "or socket (a reply socket bound to the original destination).",
  ),
  udpSessionsHeld: family(
    "relay_udp_sessions_held_total",
    "counter",
    "UDP sessions whose first datagrams were held while a rule waited for the name.",
  ),
  udpHoldReleased: family(
    "relay_udp_hold_released_total",
    "counter",
    "Held UDP sessions decided, by how: named (the name was sniffed), unnamed (sniffing " +
      "gave up), timeout (udp.holdTimeoutMs).",
  ),
  udpHoldBytes: family(
    "relay_udp_hold_bytes",
    "gauge",
    "Bytes of the hold arena in use (whole slots of udp.datagramBytesMax).",
  ),
  udpSessionsHolding: family("relay_udp_sessions_holding", "gauge", "UDP sessions held now."),
  udpRejectIcmp: family(
    "relay_udp_reject_icmp_total",
    "counter",
    "ICMP port unreachable for rejected UDP flows, by result: sent, rate_limited " +
      "(udp.rejectIcmpPerSecondMax), failed.",
  ),
  udpSocks5: family(
    "relay_udp_socks5_associations_total",
    "counter",
    "SOCKS5 UDP associations by event: opened (connect begun), failed (connect, " +
      "handshake or connectTimeoutMs), control_lost (the proxy ended the control connection).",
  ),
  udpSocks5Open: family(
    "relay_udp_socks5_associations",
    "gauge",
    "SOCKS5 UDP associations open now (each holds a TCP control connection).",
  ),
  udpSessionsSocks5: family(
    "relay_udp_sessions_ended_socks5_total",
    "counter",
    "UDP sessions ended because their SOCKS5 association failed or ended.",
  ),
  udpForward: family(
    "relay_udp_forward_events_total",
    "counter",
    "Forward outbounds: answer_timeout (a datagram unanswered in answerTimeoutMs), " +
      "target_down (failuresMax in a row: the target is skipped for retryIntervalMs).",
  ),
  udpDropped: family(
    "relay_udp_dropped_total",
    "counter",
    "UDP datagrams dropped, by reason (listener_queue_full: by the kernel, before the " +
      "relay read them).",
  ),
  udpSendErrors: family(
    "relay_udp_send_errors_total",
    "counter",
    "UDP datagrams whose send failed, by kind.",
  ),
  udpIcmpErrors: family(
    "relay_udp_icmp_errors_total",
    "counter",
    "ICMP errors reported on upstream sockets (IP_RECVERR), by kind.",
  ),
  udpReceiveErrors: family(
    "relay_udp_receive_errors_total",
    "counter",
    "recvmmsg errors other than ICMP reports.",
  ),
  udpGsoMessages: family(
    "relay_udp_gso_messages_total",
    "counter",
    "UDP_SEGMENT messages sent, each a run of 2 to 64 datagrams of one flow (udp.gso).",
  ),
  udpGsoDatagrams: family(
    "relay_udp_gso_datagrams_total",
    "counter",
    "Datagrams sent inside UDP_SEGMENT messages (also in relay_packets_total).",
  ),
  udpGsoFallbacks: family(
    "relay_udp_gso_fallbacks_total",
    "counter",
    "UDP_SEGMENT messages the kernel refused, sent one datagram each instead; " +
      "that socket does not try again.",
  ),
  udpGroBuffers: family(
    "relay_udp_gro_buffers_total",
    "counter",
    "Coalesced buffers received with UDP_GRO on upstream sockets (udp.gro).",
  ),
  udpGroDatagrams: family(
    "relay_udp_gro_datagrams_total",
    "counter",
    "Datagrams split out of coalesced UDP_GRO buffers (also in relay_packets_total).",
  ),
  udpOffload: family(
    "relay_udp_offload_enabled",
    "gauge",
    "1 when the UDP offload runs: udp.gso (and the kernel has UDP_SEGMENT), udp.gro.",
  ),
  udpSniff: family(
    "relay_udp_sniff_total",
    "counter",
    "First datagrams parsed, by result: dns, quic (name recorded), malformed (not that " +
      "protocol on its port), incomplete (QUIC ClientHello unfinished after " +
      "udp.sniffPacketsMax datagrams).",
  ),
  tcpSniff: family(
    "relay_tcp_sniff_total",
    "counter",
    "Connections whose first bytes were read (tcp.sniffPorts, or for a policy rule on " +
      "names) by what they were: tls (SNI recorded), " +
      "malformed (not a TLS ClientHello), incomplete (unfinished within " +
      "tcp.sniffTimeoutMs or tcp.sniffBytesMax, or the client closed first).",
  ),
  tcpSocks5: family(
    "relay_tcp_socks5_handshakes_total",
    "counter",
    "TCP connections sent to a socks5 outbound, by how the handshake ended: connected, " +
      "busy (associationsMax in progress), refused/unreachable (no TCP connection to the " +
      "server), closed (mid-handshake), protocol_errors (not SOCKS5), auth_failed, " +
      "reply_errors (the server's REP said no), timeouts (connectTimeoutMs).",
  ),
  tcpForward: family(
    "relay_tcp_forward_target_events_total",
    "counter",
    "forward outbounds: target_failures (a connect to a target failed), " +
      "targets_marked_down (healthCheck.failuresMax failures in a row).",
  ),
  tcpDns: family(
    "relay_tcp_dns_total",
    "counter",
    "DNS over TCP read per message (tcp.dnsPorts), by event: connections, over_limit " +
      "(tcp.dnsConnectionsMax open: relayed as bytes), queries, forwarded, direct, " +
      "answered, answered_locally (dnsAnswer), dropped, rejected, socks5 (tunnelled " +
      "whole), socks5_not_first, upstreams_exceeded, upstream_failed, answers_unmatched, " +
      "malformed, incomplete, stalled, timed_out, idle_closed, client_resets.",
  ),
  tcpDnsConnections: family(
    "relay_tcp_dns_connections",
    "gauge",
    "DNS over TCP connections read per message now (at most tcp.dnsConnectionsMax).",
  ),
  udpQuicIds: family(
    "relay_udp_quic_connection_ids_learned_total",
    "counter",
    "Server connection IDs learned from QUIC long-header replies (udp.quicFollowConnectionIds).",
  ),
  udpQuicRebinds: family(
    "relay_udp_quic_rebinds_total",
    "counter",
    "Datagrams from a new client endpoint naming a session's QUIC connection ID: followed " +
      "(the session and its upstream socket moved there) or refused (a new session instead).",
  ),
  udpBatch: family(
    "relay_udp_batch_datagrams",
    "histogram",
    "Datagrams read per recvmmsg batch (at most udp.batchCountMax).",
  ),
  udpDnsQueries: family(
    "relay_udp_dns_queries_total",
    "counter",
    "Forced DNS: forwarded, answered, answered_locally (dnsAnswer), spoofed and late " +
      "(answers dropped), retried, timed_out, in_flight_full, ids_exhausted, malformed, " +
      "socket_failed.",
  ),
  udpDnsUpstreamSockets: family(
    "relay_udp_dns_upstream_sockets",
    "gauge",
    "Forced DNS: open upstream sockets (udp.dnsUpstreamSocketsPerTarget per resolver).",
  ),
  udpDnsInFlight: family(
    "relay_udp_dns_queries_in_flight",
    "gauge",
    "Forced DNS: queries awaiting their answer (at most udp.dnsQueriesInFlightMax).",
  ),
  udpUpstreamSockets: family(
    "relay_udp_upstream_sockets",
    "gauge",
    "Open upstream sockets (toward original destinations).",
  ),
  udpReplySockets: family(
    "relay_udp_reply_sockets",
    "gauge",
    "Open reply sockets (bound to original destinations), busy and idle.",
  ),
  udpRegistered: family(
    "relay_udp_sockets_registered",
    "gauge",
    "Sockets registered with the poller: listeners, the address watch, upstream and reply " +
      "sockets.",
  ),
  udpIoBackend: family(
    "relay_udp_io_backend",
    "gauge",
    "The UDP data plane's I/O as it runs (udp.ioBackend): 1 on the backend in use.",
  ),
  udpUring: family(
    "relay_udp_uring_events_total",
    "counter",
    "The io_uring data plane: io_uring_enter calls (enter), completions handled, " +
      "multishot receives ended by an empty buffer ring (no_buffers), sends queued as " +
      "SQEs (send_queued) or sent at once with every send slot in flight (send_direct).",
  ),
  pollWakes: family(
    "relay_poll_wakes_total",
    "counter",
    "Thread wake-ups of the poller (epoll waits that returned, or callbacks; not a " +
      "look that did not wait and found nothing, such as a busy-polling spin).",
  ),
  pollEvents: family(
    "relay_poll_events_total",
    "counter",
    "Ready sockets the poller reported (many per wake-up under load).",
  ),
  pollOverflows: family(
    "relay_poll_ring_overflows_total",
    "counter",
    "Ready events lost to a full ring (an invariant: always 0).",
  ),
  udpPortsQuarantined: family(
    "relay_udp_upstream_ports_quarantined_total",
    "counter",
    "Upstream sockets closed unused because the kernel gave them a local port whose " +
      "socket closed under 2 s ago (a late reply to the ended flow would reach a new one).",
  ),
  udpBusyPolls: family(
    "relay_udp_busy_polls_total",
    "counter",
    "Busy polling (udp.busyPollUs): waits that did not block, being within the window " +
      "of the last packets, and found nothing (spins).",
  ),
  readyHandled: family(
    "relay_ready_handled_total",
    "counter",
    "Ready sockets handled: poller events plus the timer's recovery drains.",
  ),
  tcpAccepted: family(
    "relay_tcp_connections_accepted_total",
    "counter",
    "TCP connections accepted. Each is still open or counted once in " +
      "relay_tcp_connections_ended_total.",
  ),
  tcpEnded: family(
    "relay_tcp_connections_ended_total",
    "counter",
    "TCP connections ended, by reason: refused at once (limit, no_original_dst, " +
      "to_listener, local_target, multicast_target, upstream_no_descriptors, " +
      "upstream_socket_failed) or after the hand-off (closed: FIN both ways, and the rest).",
  ),
  tcpAcceptErrors: family(
    "relay_tcp_accept_errors_total",
    "counter",
    "accept() failures: no_descriptors (the listener pauses a tick), other (connections " +
      "that died in the backlog).",
  ),
  tcpConnect: family(
    "relay_tcp_connect_seconds",
    "summary",
    "Time to establish upstream connections (counted when the connection ends).",
  ),
  tcpEndedBytes: family(
    "relay_tcp_ended_connections_bytes_total",
    "counter",
    "Bytes delivered by TCP connections that have ended, by direction.",
  ),
  tcpPipes: family(
    "relay_tcp_pipes",
    "gauge",
    "Splice pipes: in_use by connections, pooled for reuse.",
  ),
  tcpSpliceSwitches: family(
    "relay_tcp_splice_switches_total",
    "counter",
    "Connection directions that copied their first bytes through a buffer, proved bulk " +
      "(a read filled it) and splice from then on (tcp.spliceMode auto).",
  ),
  tcpCopyOnly: family(
    "relay_tcp_copy_only_connections_total",
    "counter",
    "TCP connections that ended without taking a splice pipe: every byte copied " +
      "(tcp.spliceMode auto).",
  ),
  tcpCopyBuffers: family(
    "relay_tcp_copy_buffers_in_use",
    "gauge",
    "Copy buffers holding bytes a target has not taken yet (tcp.spliceMode auto).",
  ),
  tcpCopyPoolEmpty: family(
    "relay_tcp_copy_pool_empty_total",
    "counter",
    "Connection directions that found every copy buffer held and spliced from their " +
      "first byte.",
  ),
  tcpEventsLost: family(
    "relay_tcp_engine_events_lost_total",
    "counter",
    "Splice-engine events lost (an invariant: always 0).",
  ),
  uptime: family("relay_uptime_seconds", "gauge", "Time since the relay started."),
  loopLag: family(
    "relay_event_loop_lag_seconds",
    "gauge",
    "How late the main thread's last lag timer fired (TCP, the control plane, and UDP " +
      "with udp.dataPlane callback run there).",
  ),
  loopLagMax: family(
    "relay_event_loop_lag_max_seconds",
    "gauge",
    "The largest event-loop lag since the previous scrape.",
  ),
  residentBytes: family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
  openFds: family("process_open_fds", "gauge", "Number of open file descriptors."),
  maxFds: family(
    "process_max_fds",
    "gauge",
    "Maximum number of open file descriptors (RLIMIT_NOFILE, as raised at start).",
  ),
} as const;

type Labels = Readonly<Record<string, string>>;

/** Where one value goes: its family, labels, and (histogram, summary) sample suffix. */
interface Place {
  family: Family;
  labels?: Labels;
  suffix?: "_sum" | "_count";
  /** Multiplies the value (milliseconds to seconds). */
  scale?: number;
}

/** Rendered with the histogram's buckets (batchDatagrams), not on its own. */
const WITH_HISTOGRAM = "histogram" as const;

/** A family that takes counters by name: dropped<Reason> -> {reason="<reason>"}. */
interface ByPrefix {
  prefix: string;
  family: Family;
  label: string;
}

const udp = (labels: Record<string, string> = {}): Labels => ({ protocol: "udp", ...labels });
const tcp = (labels: Record<string, string> = {}): Labels => ({ protocol: "tcp", ...labels });

const UDP_BY_PREFIX: readonly ByPrefix[] = [
  { prefix: "dropped", family: F.udpDropped, label: "reason" },
  { prefix: "send", family: F.udpSendErrors, label: "kind" },
  { prefix: "icmp", family: F.udpIcmpErrors, label: "kind" },
  // "sniffed" before "sniff": sniffedDns is {result="dns"}.
  { prefix: "sniffed", family: F.udpSniff, label: "result" },
  { prefix: "sniff", family: F.udpSniff, label: "result" },
];
type UdpByPrefix = `dropped${string}` | `send${string}` | `icmp${string}` | `sniff${string}`;

/** Every other UDP value: the type names each (batchDatagrams is the histogram itself). */
const UDP_PLACED: Record<
  Exclude<keyof UdpValues, UdpByPrefix | "batchDatagrams">,
  Place | typeof WITH_HISTOGRAM
> = {
  packetsFromClients: { family: F.packets, labels: udp({ direction: "from_clients" }) },
  bytesFromClients: { family: F.bytes, labels: udp({ direction: "from_clients" }) },
  packetsToTargets: { family: F.packets, labels: udp({ direction: "to_targets" }) },
  bytesToTargets: { family: F.bytes, labels: udp({ direction: "to_targets" }) },
  packetsFromTargets: { family: F.packets, labels: udp({ direction: "from_targets" }) },
  bytesFromTargets: { family: F.bytes, labels: udp({ direction: "from_targets" }) },
  packetsToClients: { family: F.packets, labels: udp({ direction: "to_clients" }) },
  bytesToClients: { family: F.bytes, labels: udp({ direction: "to_clients" }) },
  sessionsCreated: { family: F.sessionsCreated, labels: udp() },
  sessionsReplyPktinfo: { family: F.udpReplyPath, labels: { path: "pktinfo" } },
  sessionsReplySocket: { family: F.udpReplyPath, labels: { path: "socket" } },
  sessionsExpired: { family: F.sessionsExpired, labels: udp() },
  sessionsEvicted: { family: F.sessionsEvicted, labels: udp() },
  // The first datagram of a destination whose reply socket could not bind: a drop too
  // (later ones within udp.replyBindRetryMs are droppedReplyBindCached).
  replySocketBindFailed: { family: F.udpDropped, labels: { reason: "reply_socket_bind_failed" } },
  sessionsEndedLocalTarget: { family: F.udpSessionsLocal },
  quicConnectionIdsLearned: { family: F.udpQuicIds },
  quicRebindsFollowed: { family: F.udpQuicRebinds, labels: { result: "followed" } },
  quicRebindsRefused: { family: F.udpQuicRebinds, labels: { result: "refused" } },
  flowLogDropped: { family: F.flowLogDropped, labels: udp() },
  sessionsHeld: { family: F.udpSessionsHeld },
  holdReleasedNamed: { family: F.udpHoldReleased, labels: { reason: "named" } },
  holdReleasedUnnamed: { family: F.udpHoldReleased, labels: { reason: "unnamed" } },
  holdReleasedTimeout: { family: F.udpHoldReleased, labels: { reason: "timeout" } },
  holdBytes: { family: F.udpHoldBytes },
  sessionsHolding: { family: F.udpSessionsHolding },
  rejectIcmpSent: { family: F.udpRejectIcmp, labels: { result: "sent" } },
  rejectIcmpRateLimited: { family: F.udpRejectIcmp, labels: { result: "rate_limited" } },
  rejectIcmpFailed: { family: F.udpRejectIcmp, labels: { result: "failed" } },
  socks5AssociationsOpened: { family: F.udpSocks5, labels: { event: "opened" } },
  socks5AssociationsFailed: { family: F.udpSocks5, labels: { event: "failed" } },
  socks5ControlLost: { family: F.udpSocks5, labels: { event: "control_lost" } },
  sessionsEndedSocks5: { family: F.udpSessionsSocks5 },
  socks5Associations: { family: F.udpSocks5Open },
  forwardAnswerTimeouts: { family: F.udpForward, labels: { event: "answer_timeout" } },
  forwardTargetsDown: { family: F.udpForward, labels: { event: "target_down" } },
  receiveErrors: { family: F.udpReceiveErrors },
  wakes: { family: F.readyHandled, labels: udp() },
  batches: WITH_HISTOGRAM,
  sessionsActive: { family: F.sessionsActive, labels: udp() },
  sessionsMax: { family: F.sessionsLimit, labels: udp() },
  dnsQueriesForwarded: { family: F.udpDnsQueries, labels: { event: "forwarded" } },
  dnsQueriesAnsweredLocally: { family: F.udpDnsQueries, labels: { event: "answered_locally" } },
  dnsAnswersRelayed: { family: F.udpDnsQueries, labels: { event: "answered" } },
  dnsAnswersSpoofed: { family: F.udpDnsQueries, labels: { event: "spoofed" } },
  dnsAnswersLate: { family: F.udpDnsQueries, labels: { event: "late" } },
  dnsQueriesRetried: { family: F.udpDnsQueries, labels: { event: "retried" } },
  dnsQueriesTimedOut: { family: F.udpDnsQueries, labels: { event: "timed_out" } },
  dnsQueriesDroppedInFlightFull: { family: F.udpDnsQueries, labels: { event: "in_flight_full" } },
  dnsQueriesDroppedIdsExhausted: { family: F.udpDnsQueries, labels: { event: "ids_exhausted" } },
  dnsQueriesMalformed: { family: F.udpDnsQueries, labels: { event: "malformed" } },
  dnsUpstreamSocketFailed: { family: F.udpDnsQueries, labels: { event: "socket_failed" } },
  dnsUpstreamSockets: { family: F.udpDnsUpstreamSockets },
  dnsQueriesInFlight: { family: F.udpDnsInFlight },
  upstreamSockets: { family: F.udpUpstreamSockets },
  replySockets: { family: F.udpReplySockets },
  socketsRegistered: { family: F.udpRegistered },
  pollWakes: { family: F.pollWakes, labels: udp() },
  pollEvents: { family: F.pollEvents, labels: udp() },
  pollRingOverflows: { family: F.pollOverflows, labels: udp() },
  pollBusyPolls: { family: F.udpBusyPolls },
  upstreamPortsQuarantined: { family: F.udpPortsQuarantined },
  gsoMessages: { family: F.udpGsoMessages },
  gsoDatagrams: { family: F.udpGsoDatagrams },
  gsoFallbacks: { family: F.udpGsoFallbacks },
  groBuffers: { family: F.udpGroBuffers },
  groDatagrams: { family: F.udpGroDatagrams },
  gsoEnabled: { family: F.udpOffload, labels: { offload: "gso" } },
  groEnabled: { family: F.udpOffload, labels: { offload: "gro" } },
  ioBackendEpoll: { family: F.udpIoBackend, labels: { backend: "epoll" } },
  ioBackendUring: { family: F.udpIoBackend, labels: { backend: "io_uring" } },
  uringEnters: { family: F.udpUring, labels: { event: "enter" } },
  uringCompletions: { family: F.udpUring, labels: { event: "completion" } },
  uringNoBuffers: { family: F.udpUring, labels: { event: "no_buffers" } },
  uringSendsQueued: { family: F.udpUring, labels: { event: "send_queued" } },
  uringSendsDirect: { family: F.udpUring, labels: { event: "send_direct" } },
};

const TCP_BY_PREFIX: readonly ByPrefix[] = [
  { prefix: "dropped", family: F.tcpEnded, label: "reason" },
  // "sniffed" before "sniff": sniffedTls is {result="tls"}.
  { prefix: "sniffed", family: F.tcpSniff, label: "result" },
  { prefix: "sniff", family: F.tcpSniff, label: "result" },
  { prefix: "socks5", family: F.tcpSocks5, label: "result" },
  { prefix: "forward", family: F.tcpForward, label: "event" },
  { prefix: "dnsTcp", family: F.tcpDns, label: "event" },
];
type TcpByPrefix =
  | `dropped${string}`
  | `sniff${string}`
  | `socks5${string}`
  | `forward${string}`
  | `dnsTcp${string}`;

const ended = (reason: string): Place => ({ family: F.tcpEnded, labels: { reason } });

const TCP_PLACED: Record<Exclude<keyof TcpValues, TcpByPrefix>, Place> = {
  accepted: { family: F.tcpAccepted },
  flowLogDropped: { family: F.flowLogDropped, labels: tcp() },
  rejectedLimit: ended("limit"),
  rejectedByRule: ended("rejected_by_rule"),
  acceptNoDescriptors: { family: F.tcpAcceptErrors, labels: { reason: "no_descriptors" } },
  acceptErrors: { family: F.tcpAcceptErrors, labels: { reason: "other" } },
  upstreamNoDescriptors: ended("upstream_no_descriptors"),
  upstreamSocketFailed: ended("upstream_socket_failed"),
  connected: { family: F.tcpConnect, suffix: "_count" },
  connectMsTotal: { family: F.tcpConnect, suffix: "_sum", scale: 1 / 1000 },
  connectRefused: ended("connect_refused"),
  connectTimeouts: ended("connect_timeout"),
  connectFailed: ended("connect_failed"),
  closed: ended("closed"),
  clientResets: ended("client_reset"),
  upstreamResets: ended("upstream_reset"),
  idleTimeouts: ended("idle_timeout"),
  abortedAtShutdown: ended("aborted_at_shutdown"),
  resourceFailures: ended("resource_failure"),
  bytesToTargetsClosed: { family: F.tcpEndedBytes, labels: { direction: "to_targets" } },
  bytesToClientsClosed: { family: F.tcpEndedBytes, labels: { direction: "to_clients" } },
  wakes: { family: F.readyHandled, labels: tcp() },
  connectionsActive: { family: F.sessionsActive, labels: tcp() },
  connectionsMax: { family: F.sessionsLimit, labels: tcp() },
  dnsConnectionsActive: { family: F.tcpDnsConnections },
  bytesToTargets: { family: F.bytes, labels: tcp({ direction: "to_targets" }) },
  bytesToClients: { family: F.bytes, labels: tcp({ direction: "to_clients" }) },
  pipesInUse: { family: F.tcpPipes, labels: { state: "in_use" } },
  pipesPooled: { family: F.tcpPipes, labels: { state: "pooled" } },
  eventsLost: { family: F.tcpEventsLost },
  spliceSwitches: { family: F.tcpSpliceSwitches },
  copyOnlyConnections: { family: F.tcpCopyOnly },
  copyBuffersInUse: { family: F.tcpCopyBuffers },
  copyPoolEmpty: { family: F.tcpCopyPoolEmpty },
  pollWakes: { family: F.pollWakes, labels: tcp() },
};

/** The exposition being built: each family's samples, kept together as the format asks. */
class Exposition {
  private readonly samples = new Map<Family, string[]>();

  add(f: Family, value: number, labels?: Labels, suffix = ""): void {
    let lines = this.samples.get(f);
    if (!lines) this.samples.set(f, (lines = []));
    lines.push(`${f.name}${suffix}${formatLabels(labels)} ${formatValue(value)}`);
  }

  place(p: Place, value: number): void {
    this.add(p.family, p.scale === undefined ? value : value * p.scale, p.labels, p.suffix);
  }

  /** Places `values` by name: the prefix families first, then the table. */
  placeAll(
    values: Record<string, unknown>,
    byPrefix: readonly ByPrefix[],
    placed: Readonly<Record<string, Place | typeof WITH_HISTOGRAM>>,
  ): void {
    for (const [name, value] of Object.entries(values)) {
      if (typeof value !== "number") continue;
      const rule = byPrefix.find((r) => isPrefixOf(r.prefix, name));
      if (rule) {
        const label = snakeCase(name.slice(rule.prefix.length));
        this.add(rule.family, value, { [rule.label]: label });
        continue;
      }
      const p = placed[name];
      if (p !== undefined && p !== WITH_HISTOGRAM) this.place(p, value);
    }
  }

  text(): string {
    const out: string[] = [];
    for (const f of Object.values(F)) {
      const lines = this.samples.get(f);
      if (!lines) continue;
      out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`, ...lines);
    }
    return `${out.join("\n")}\n`;
  }
}

/** The whole exposition for one scrape. */
export function renderPrometheus(input: ScrapeInput): string {
  const e = new Exposition();
  const u = input.udp.udp;
  e.placeAll(u, UDP_BY_PREFIX, UDP_PLACED);
  // Cumulative buckets; +Inf and _count are the batches (bumped beside the buckets), and
  // _sum the datagrams read: every one is counted once, from clients or from targets.
  let cumulative = 0;
  BATCH_BUCKET_UPPER.forEach((upper, i) => {
    cumulative += u.batchDatagrams[i] ?? 0;
    e.add(F.udpBatch, cumulative, { le: `${upper}` }, "_bucket");
  });
  e.add(F.udpBatch, u.batches, { le: "+Inf" }, "_bucket");
  e.add(F.udpBatch, u.packetsFromClients + u.packetsFromTargets, undefined, "_sum");
  e.add(F.udpBatch, u.batches, undefined, "_count");
  if (input.tcp) e.placeAll(input.tcp, TCP_BY_PREFIX, TCP_PLACED);
  const flows = input.flowLog;
  if (flows) {
    e.add(F.flowLogRecords, flows.records);
    e.add(F.flowLogBytes, flows.bytes);
    e.add(F.flowLogLost, flows.recordsLost);
    e.add(F.flowLogWriteErrors, flows.writeErrors);
    e.add(F.flowLogRotations, flows.rotations);
  }
  const config = input.config;
  if (config) {
    for (const [result, count] of Object.entries(config.reloads)) {
      e.add(F.configReloads, count, { result });
    }
    e.add(F.configGeneration, config.generation);
  }

  e.add(F.uptime, input.udp.uptimeMs / 1000);
  e.add(F.loopLag, input.loopLag.lastMs / 1000);
  e.add(F.loopLagMax, input.loopLag.maxMs / 1000);
  const p = input.process;
  if (p.residentBytes !== null) e.add(F.residentBytes, p.residentBytes);
  if (p.openFds !== null) e.add(F.openFds, p.openFds);
  if (p.maxFds !== null) e.add(F.maxFds, p.maxFds);
  return e.text();
}

const CHAR_A_UPPER = 65;
const CHAR_Z_UPPER = 90;
/** 'a' - 'A' */
const CASE_OFFSET = 32;

const isUpper = (code: number) => code >= CHAR_A_UPPER && code <= CHAR_Z_UPPER;

/** "send" is a prefix of "sendWouldBlock" (a word ends there), not of "sender". */
function isPrefixOf(prefix: string, name: string): boolean {
  return (
    name.length > prefix.length &&
    name.startsWith(prefix) &&
    isUpper(name.charCodeAt(prefix.length))
  );
}

/** "ListenerQueueFull" -> "listener_queue_full". */
export function snakeCase(name: string): string {
  let out = "";
  for (let i = 0; i < name.length; i++) {
    const code = name.charCodeAt(i);
    if (!isUpper(code)) {
      out += name[i];
      continue;
    }
    if (i > 0) out += "_";
    out += String.fromCharCode(code + CASE_OFFSET);
  }
  return out;
}

/**
 * Counters are doubles: String() prints every integer up to 2^53 exactly (and beyond,
 * the nearest double, in a form Prometheus parses); the format spells the specials.
 */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}

function formatLabels(labels: Labels | undefined): string {
  if (!labels) return "";
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
}

/** Label values escape backslash, double quote and line feed (the 0.0.4 format). */
function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

/** HELP text escapes backslash and line feed. */
function escapeHelp(text: string): string {
  return text.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");
}
