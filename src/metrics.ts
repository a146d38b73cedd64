// Counters of the data plane: plain numbers, bumped per packet or per batch, read by
// the control plane (metrics log, /metrics, demo, tests). Every drop has its own reason.
// They are doubles: exact integers up to 2^53, so they never wrap.

/**
 * Upper bound (inclusive) of each bucket of datagrams per recvmmsg batch: powers of two,
 * so the bucket of n is floor(log2 n) (one Math.clz32). The last one also holds 256, the
 * largest udp.batchCountMax (src/config/schema.ts).
 */
export const BATCH_BUCKET_UPPER = [1, 3, 7, 15, 31, 63, 127, 256] as const;
const BATCH_BUCKET_LAST = BATCH_BUCKET_UPPER.length - 1;

/** The bucket of a batch of n datagrams (1 <= n <= 256): floor(log2 n), one clz32. */
export function batchBucket(n: number): number {
  return Math.min(31 - Math.clz32(n), BATCH_BUCKET_LAST);
}

export class UdpCounters {
  // Client -> relay -> original destination
  packetsFromClients = 0;
  bytesFromClients = 0;
  packetsToTargets = 0;
  bytesToTargets = 0;
  // Original destination -> relay -> client
  packetsFromTargets = 0;
  bytesFromTargets = 0;
  packetsToClients = 0;
  bytesToClients = 0;

  sessionsCreated = 0;
  /** Sessions opened (counted with sessionsCreated) by reply path: IP_PKTINFO replies on
   * the listener, or a reply socket bound to the original destination. */
  sessionsReplyPktinfo = 0;
  sessionsReplySocket = 0;
  sessionsExpired = 0;
  /** Sessions ended early because the table was full (least recently used first). */
  sessionsEvicted = 0;

  // Drops, each by reason.
  /**
   * Dropped by the kernel before the relay read them: a listener's receive queue was full
   * (SO_RXQ_OVFL, reported with the next datagram read; raise listenerReceiveBytes).
   */
  droppedListenerQueueFull = 0;
  /** Datagram larger than udp.datagramBytesMax (MSG_TRUNC). */
  droppedOversized = 0;
  /** No original destination in the control data (not TPROXY'd, or MSG_CTRUNC). */
  droppedNoOriginalDst = 0;
  /** A reply from an address the client never sent to (address-dependent filtering). */
  droppedUnsolicitedReply = 0;
  /** listener.reply = "pktinfo" but the original port differs from the listener port. */
  droppedReplyModeMismatch = 0;
  /** Reply socket could not bind the original destination (EADDRINUSE, EADDRNOTAVAIL...). */
  replySocketBindFailed = 0;
  /** Packets refused because a recent bind of that destination failed (negative cache). */
  droppedReplyBindCached = 0;
  /** Reply socket pool full of busy sockets. */
  droppedReplyPoolFull = 0;
  /** A reply socket was made but the poller refused it (epoll_ctl: ENOSPC, ENOMEM). */
  droppedReplySocketFailed = 0;
  /** socket() failed for lack of descriptors (EMFILE/ENFILE) or memory. */
  droppedNoDescriptors = 0;
  /** Upstream socket could not be created for another reason. */
  droppedUpstreamSocketFailed = 0;

  // Loop guards (DESIGN.md "Never relay to ourselves"): checked once per new flow.
  /**
   * Sent straight to a listener's own address and port (no TPROXY on the way): the
   * "original destination" is the listener itself.
   */
  droppedToListener = 0;
  /**
   * The original destination is this host (an interface address, loopback, unspecified,
   * a broadcast address: the kernel's local table). Rules should skip these.
   */
  droppedLocalTarget = 0;
  /** The original destination is a multicast group. */
  droppedMulticastTarget = 0;
  /** A v4-mapped destination or source on an IPv6 listener (a flow never changes family). */
  droppedFamilyMismatch = 0;
  /** The relay's own upstream datagrams came back to a listener (rules without exemption). */
  droppedOwnTraffic = 0;
  /** Sessions ended because their destination became a local address. */
  sessionsEndedLocalTarget = 0;

  // Fairness: one client cannot take what the others need.
  /** A client already held udp.sessionsPerClientMax sessions. */
  droppedClientSessionsLimit = 0;
  /** A client already pinned udp.replySocketsPerClientMax reply sockets. */
  droppedClientReplySocketsLimit = 0;

  // Send failures by kind (classifyIoErrno).
  sendWouldBlock = 0;
  sendUnreachable = 0;
  sendTooLarge = 0;
  sendResources = 0;
  sendOther = 0;

  // ICMP errors reported on upstream sockets (IP_RECVERR), by kind.
  icmpPortUnreachable = 0;
  icmpHostUnreachable = 0;
  icmpNetUnreachable = 0;
  icmpOther = 0;

  // Classification of first datagrams (src/classify, WASM).
  /** DNS queries whose name was recorded. */
  sniffedDns = 0;
  /** QUIC flows whose ClientHello SNI was recorded (possibly across several Initials). */
  sniffedQuic = 0;
  /** First datagrams on a DNS/QUIC port that did not parse (malformed or not that protocol). */
  sniffMalformed = 0;
  /** QUIC flows whose ClientHello was still incomplete after udp.sniffPacketsMax datagrams. */
  sniffIncomplete = 0;

  // QUIC connections followed across client endpoints (src/flow/quic_ids.ts).
  /** Server connection IDs learned from long-header replies. */
  quicConnectionIdsLearned = 0;
  /** A session moved to its client's new address or port (NAT rebinding), same upstream. */
  quicRebindsFollowed = 0;
  /**
   * A datagram named a session's connection ID from a new endpoint, but the session could
   * not move (its upstream socket shared, the new endpoint at its bounds or holding a
   * socket of its own): it opened a new session instead.
   */
  quicRebindsRefused = 0;

  // The policy (src/policy/, decided per new flow in src/udp/relay.ts).
  /** Datagrams of flows a rule drops (the session remembers: later ones too). */
  droppedByRule = 0;
  /** Datagrams of flows a rule rejects (each answered by ICMP, within the rate). */
  droppedRejected = 0;
  /** A held flow's own bound (holdPacketsPerFlowMax / holdBytesPerFlowMax) was full. */
  droppedHoldFull = 0;
  /** The hold arena (udp.holdBytesMax) was full. */
  droppedHoldArenaFull = 0;
  /** The rule's outbound cannot carry UDP here (socks5 UDP is not built yet). */
  droppedOutboundUnavailable = 0;
  /** Sessions whose first datagrams were held while the policy waited for the name. */
  sessionsHeld = 0;
  /** Held sessions decided: with the name, without it (sniffing gave up), on timeout. */
  holdReleasedNamed = 0;
  holdReleasedUnnamed = 0;
  holdReleasedTimeout = 0;
  /** ICMP port unreachable for `reject`: sent, over udp.rejectIcmpPerSecondMax, failed. */
  rejectIcmpSent = 0;
  rejectIcmpRateLimited = 0;
  rejectIcmpFailed = 0;
  /** SOCKS5 UDP associations: opened (connect begun), failed to set up, control lost. */
  socks5AssociationsOpened = 0;
  socks5AssociationsFailed = 0;
  socks5ControlLost = 0;
  /** Sessions ended because their association failed or its control connection ended. */
  sessionsEndedSocks5 = 0;
  /** A new association past the outbound's associationsMax. */
  droppedSocks5AssociationsLimit = 0;
  /** Replies with FRAG != 0 (not reassembled, RFC 1928 §7 allows dropping them). */
  droppedSocks5Fragmented = 0;
  /** Replies whose SOCKS5 UDP header is truncated or names a domain. */
  droppedSocks5Malformed = 0;
  /** Datagrams of sessions whose association failed (held ones included). */
  droppedSocks5Failed = 0;
  /** Forward outbounds: datagrams not answered in answerTimeoutMs; targets marked down. */
  forwardAnswerTimeouts = 0;
  forwardTargetsDown = 0;
  /**
   * Forced DNS (src/dns/forwarder.ts): queries sent upstream with a remapped ID, answers
   * relayed; answers dropped as spoofed (wrong source, unknown ID, wrong question) or late
   * (their query had timed out); queries retried on the next resolver, given up, dropped
   * (in-flight table full, every ID of the resolver's sockets in flight), and first
   * datagrams on dnsPorts that are no DNS query (they go the session way).
   */
  dnsQueriesForwarded = 0;
  /** Queries a dnsAnswer outbound answered in place (never upstream). */
  dnsQueriesAnsweredLocally = 0;
  dnsAnswersRelayed = 0;
  dnsAnswersSpoofed = 0;
  dnsAnswersLate = 0;
  dnsQueriesRetried = 0;
  dnsQueriesTimedOut = 0;
  dnsQueriesDroppedInFlightFull = 0;
  dnsQueriesDroppedIdsExhausted = 0;
  dnsQueriesMalformed = 0;
  dnsUpstreamSocketFailed = 0;

  /** Ended sessions the flow log never got: its buffer was full (src/flow/flow_records.ts). */
  flowLogDropped = 0;

  receiveErrors = 0;
  wakes = 0;
  batches = 0;

  // Segmentation offload (src/udp/offload.ts, docs/udp_gso.md).
  /** UDP_SEGMENT messages sent, each carrying 2 to 64 datagrams. */
  gsoMessages = 0;
  /** Datagrams sent inside those messages (also counted in packetsTo*). */
  gsoDatagrams = 0;
  /** GSO messages the kernel refused (EIO, EINVAL, ENOTSUP): sent one by one instead. */
  gsoFallbacks = 0;
  /** Coalesced buffers received with UDP_GRO on upstream sockets. */
  groBuffers = 0;
  /** Datagrams split out of them (also counted in packetsFromTargets). */
  groDatagrams = 0;
  /**
   * Batches by datagrams read, one bucket per BATCH_BUCKET_UPPER entry (1, 2-3, 4-7, ...,
   * 128-256): how full recvmmsg batches run. Allocated once; bumped once per batch.
   */
  readonly batchDatagrams = new Float64Array(BATCH_BUCKET_UPPER.length);
}
