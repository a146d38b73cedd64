// The configuration schema (TypeBox), compiled once at start-up. Every field has a
// default, so `{}` is a valid configuration; see README "Configuration reference".
import { type Static, Type } from "@sinclair/typebox";

const Port = Type.Integer({ minimum: 1, maximum: 65535 });

export const ListenerSchema = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 32, pattern: "^[A-Za-z0-9_.-]+$" }),
    protocol: Type.Union([Type.Literal("udp"), Type.Literal("tcp")], { default: "udp" }),
    /**
     * TCP only. "tproxy": nft TPROXY, the accepted socket's local address is the original
     * destination. "redirect": nft REDIRECT/DNAT to this listener, the original
     * destination comes from SO_ORIGINAL_DST (conntrack).
     */
    mode: Type.Union([Type.Literal("tproxy"), Type.Literal("redirect")], { default: "tproxy" }),
    /**
     * Source address of upstream traffic: "relay" (upstream.bindAddress4/6) or "client"
     * (the client's own address, IP_TRANSPARENT: HAProxy `usesrc clientip`; TCP with a
     * kernel-chosen port, UDP with the client's own port; needs the return-path rules,
     * see README "TCP" and docs/udp_client_source.md).
     */
    source: Type.Union([Type.Literal("relay"), Type.Literal("client")], { default: "relay" }),
    /** Address the TPROXY listener binds (nft: `tproxy to ADDRESS:PORT`). */
    address: Type.String({ minLength: 2, maxLength: 45 }),
    port: Port,
    /**
     * How replies leave from the original destination: "pktinfo" sends them on the
     * listener with IP_PKTINFO (needs listener port == original port), "socket" uses
     * the bounded pool of transparent reply sockets, "auto" picks per flow.
     */
    reply: Type.Union([Type.Literal("auto"), Type.Literal("pktinfo"), Type.Literal("socket")], {
      default: "auto",
    }),
    reusePort: Type.Boolean({ default: false }),
  },
  { additionalProperties: false },
);

export const InterceptSchema = Type.Object(
  {
    /** Listener (by name) that receives this traffic. */
    listener: Type.String({ minLength: 1 }),
    /** Destination ports, as numbers or "low-high" ranges. */
    ports: Type.Array(Type.Union([Port, Type.String({ pattern: "^[0-9]{1,5}-[0-9]{1,5}$" })]), {
      minItems: 1,
      maxItems: 64,
    }),
    /**
     * Input interfaces to intercept on (gateway mode). Empty: all but loopback. Names
     * as Linux accepts them (1-15 characters, no "/", ":" or whitespace), and printable
     * ASCII without quotes or backslashes, so a generated rules script stays safe.
     */
    interfaces: Type.Array(Type.String({ minLength: 1, maxLength: 15 }), {
      default: [],
      maxItems: 16,
    }),
  },
  { additionalProperties: false },
);

const UdpIoBackendSchema = Type.Union(
  [Type.Literal("auto"), Type.Literal("epoll"), Type.Literal("io_uring")],
  { default: "epoll" },
);

export const UdpSchema = Type.Object(
  {
    /**
     * Sessions (flows) the table holds; the least recently used is evicted beyond it.
     * Lowered at start to fit RLIMIT_NOFILE (each session may hold a socket), so the
     * table evicts before descriptors run out (src/config/limits.ts).
     */
    sessionsMax: Type.Integer({ minimum: 16, maximum: 1_048_576, default: 65_536 }),
    /**
     * Sessions one client address may hold: a client that opens thousands of flows
     * exhausts its own share, not the table (its new flows are dropped, counted). At
     * sessionsMax or more there is no per-client bound (the table's LRU eviction only).
     */
    sessionsPerClientMax: Type.Integer({ minimum: 1, maximum: 1_048_576, default: 8192 }),
    /** Distinct reply sockets one client address may pin in the pool. */
    replySocketsPerClientMax: Type.Integer({ minimum: 1, maximum: 262_144, default: 1024 }),
    /**
     * RFC 4787 mapping: "endpoint-independent" uses one upstream port per client
     * ip:port for every destination; "address-and-port-dependent" one per client
     * ip:port and destination. Filtering is address-and-port-dependent either way (a
     * reply is relayed only from a destination the client sent to: "port-restricted").
     */
    mapping: Type.Union(
      [Type.Literal("endpoint-independent"), Type.Literal("address-and-port-dependent")],
      { default: "endpoint-independent" },
    ),
    idleTimeoutMs: Type.Integer({ minimum: 100, maximum: 86_400_000, default: 60_000 }),
    /**
     * Per destination port. DNS answers come within seconds; QUIC connections idle for
     * up to their max_idle_timeout (RFC 9000 §10.1; browsers use 30 s and ping).
     */
    idleTimeoutMsByPort: Type.Record(
      Type.String({ pattern: "^[0-9]{1,5}$" }),
      Type.Integer({ minimum: 100, maximum: 86_400_000 }),
      { default: { "53": 10_000, "443": 120_000 } },
    ),
    /** Receive slot size: larger datagrams are counted and dropped (droppedOversized). */
    datagramBytesMax: Type.Integer({ minimum: 512, maximum: 65_535, default: 4096 }),
    /** Datagrams per recvmmsg/sendmmsg call. */
    batchCountMax: Type.Integer({ minimum: 1, maximum: 256, default: 64 }),
    /**
     * UDP GSO (docs/udp_gso.md): a round's run of equal-size datagrams of one flow leaves
     * as one UDP_SEGMENT message. Off by itself where the kernel lacks it.
     */
    gso: Type.Boolean({ default: true }),
    /**
     * UDP GRO on upstream sockets: coalesced replies are split back into datagrams. An
     * upstream read then takes 64-slot spans, fewer datagrams per call when nothing
     * coalesces; needs udp.batchCountMax >= 64 (and >= 64 KiB of slots).
     */
    gro: Type.Boolean({ default: false }),
    /** Batches drained per wake-up before yielding to other sockets. */
    drainBatchesMax: Type.Integer({ minimum: 1, maximum: 1024, default: 16 }),
    /** Reply sockets (one per original destination ip:port, when "socket" replies). */
    replySocketsMax: Type.Integer({ minimum: 1, maximum: 262_144, default: 4096 }),
    replySocketIdleMs: Type.Integer({ minimum: 100, maximum: 86_400_000, default: 60_000 }),
    /** After a reply socket fails to bind, don't retry that ip:port for this long. */
    replyBindRetryMs: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 5_000 }),
    /** SO_RCVBUF/SO_SNDBUF of listeners (0: kernel default). */
    listenerReceiveBytes: Type.Integer({ minimum: 0, maximum: 1 << 30, default: 8 << 20 }),
    listenerSendBytes: Type.Integer({ minimum: 0, maximum: 1 << 30, default: 8 << 20 }),
    /** SO_RCVBUF/SO_SNDBUF of upstream and reply sockets (0: kernel default). */
    socketReceiveBytes: Type.Integer({ minimum: 0, maximum: 1 << 30, default: 0 }),
    socketSendBytes: Type.Integer({ minimum: 0, maximum: 1 << 30, default: 0 }),
    /** Ports whose first datagram is parsed as DNS: the session records the name asked. */
    dnsPorts: Type.Array(Port, { default: [53], maxItems: 64 }),
    /**
     * Forced DNS (docs/dns.md): a query on dnsPorts that a rule sends to a forward
     * outbound leaves on one of this many sockets per resolver, its ID remapped.
     */
    dnsUpstreamSocketsPerTarget: Type.Integer({ minimum: 1, maximum: 64, default: 4 }),
    /** Forced DNS queries awaiting their answer at once (the table is allocated at start). */
    dnsQueriesInFlightMax: Type.Integer({ minimum: 1, maximum: 1_048_576, default: 65_536 }),
    /** Ports whose first datagrams are parsed as QUIC Initials: the session records the SNI. */
    quicPorts: Type.Array(Port, { default: [443], maxItems: 64 }),
    /**
     * QUIC sessions follow their connection ID: when a client's NAT rebinds its address
     * or port mid-connection, its datagrams stay on the same session and upstream socket.
     */
    quicFollowConnectionIds: Type.Boolean({ default: true }),
    /**
     * Datagrams per flow offered to the QUIC parser before giving up: a post-quantum
     * ClientHello (Chrome) spans 2 or more Initial packets.
     */
    sniffPacketsMax: Type.Integer({ minimum: 1, maximum: 16, default: 4 }),
    /**
     * The hold buffer: while a policy rule waits for a flow's name (DNS qname, QUIC SNI),
     * the flow's datagrams are copied here and released in order once it is decided.
     * holdBytesMax is the whole arena, allocated at start (in slots of datagramBytesMax).
     */
    holdBytesMax: Type.Integer({ minimum: 65_536, maximum: 1 << 30, default: 4 << 20 }),
    /** Datagrams and bytes one flow may hold: past either, its datagrams are dropped. */
    holdPacketsPerFlowMax: Type.Integer({ minimum: 1, maximum: 64, default: 8 }),
    holdBytesPerFlowMax: Type.Integer({ minimum: 1_500, maximum: 1 << 20, default: 16_384 }),
    /** A held flow is decided without its name after this long. */
    holdTimeoutMs: Type.Integer({ minimum: 10, maximum: 10_000, default: 300 }),
    /** ICMP port unreachable messages sent per second at most for the `reject` action. */
    rejectIcmpPerSecondMax: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 100 }),
    /**
     * Where the UDP data path runs: "worker", a thread of its own (Bun Worker or Node
     * worker_threads) blocking in epoll_wait (one thread wake-up per burst, lowest
     * latency); "callback", the main thread woken by the C epoll thread.
     */
    dataPlane: Type.Union([Type.Literal("worker"), Type.Literal("callback")], {
      default: "worker",
    }),
    /**
     * How the worker data plane does its I/O (docs/io_uring.md): "io_uring", one
     * io_uring_enter per round (multishot receives, sends as SQEs); "epoll", epoll_wait,
     * recvmmsg and sendmmsg; "auto", io_uring when the start-up probe succeeds, else
     * epoll. "io_uring" that cannot run is a start-up error.
     */
    ioBackend: UdpIoBackendSchema,
    /**
     * Data-path workers (dataPlane "worker" only), each with its own listener sockets in
     * one SO_REUSEPORT group, its own sessions and sockets: the kernel spreads client
     * endpoints over them (docs/udp_workers.md). Table bounds are split between them.
     */
    workers: Type.Integer({ minimum: 1, maximum: 64, default: 1 }),
    /**
     * Busy polling (dataPlane "worker" only; HAProxy's busy-polling): for this many µs
     * after a wait found packets, the data path's waits do not block, so the next packet
     * is seen without a wake-up. Lower latency and more request/response transactions
     * per second, for a core kept busy while packets come less than this far apart.
     * 0: off (docs/performance.md "Busy polling").
     */
    busyPollUs: Type.Integer({ minimum: 0, maximum: 100_000, default: 0 }),
  },
  { additionalProperties: false },
);

export type UdpIoBackendSetting = Static<typeof UdpIoBackendSchema>;

export const TcpSchema = Type.Object(
  {
    /** Upstream connect must complete within this, or the client gets a RST. */
    connectTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 5_000 }),
    /** A connection with no byte either way for this long is reset (0: never). */
    idleTimeoutMs: Type.Integer({ minimum: 0, maximum: 86_400_000, default: 300_000 }),
    /** Open connections at most; beyond it new clients are reset at once (counted). */
    connectionsMax: Type.Integer({ minimum: 1, maximum: 1_048_576, default: 4096 }),
    /**
     * Bytes the relay holds per direction per connection (the splice pipe; a power of
     * two): a slow reader stalls its writer instead of growing a buffer.
     */
    bufferBytesMax: Type.Integer({ minimum: 4096, maximum: 16 << 20, default: 256 << 10 }),
    /**
     * How the splice engine moves bytes: "auto" copies each direction's first bytes
     * through a 16 KiB buffer (one recv and one send per message, no pipe) and splices
     * once a direction proves bulk (a read fills the buffer); "always" splices every byte
     * through two pipes per connection taken at the hand-off (the behaviour before
     * "auto", kept for comparison).
     */
    spliceMode: Type.Union([Type.Literal("auto"), Type.Literal("always")], { default: "auto" }),
    /**
     * Where the TCP path runs: "worker", one thread (a Worker) that accepts, decides,
     * connects and moves the bytes itself (the splice engine runs inline, no hand-off
     * between threads: docs/tcp_single_thread.md); "main", the main thread woken by the C
     * epoll thread, handing each connection to the splice engine's own thread.
     */
    dataPlane: Type.Union([Type.Literal("worker"), Type.Literal("main")], { default: "worker" }),
    /** On SIGTERM: open connections get this long to finish, then they are reset. */
    shutdownGraceMs: Type.Integer({ minimum: 0, maximum: 600_000, default: 5_000 }),
    /** listen(2) backlog of TCP listeners. */
    listenBacklog: Type.Integer({ minimum: 1, maximum: 65_535, default: 1024 }),
    /**
     * Destination ports whose first bytes are read as a TLS ClientHello before the
     * upstream connect: the connection records the SNI. The bytes stay in the kernel's
     * receive queue (peeked, not read), so nothing is copied or lost.
     */
    sniffPorts: Type.Array(Port, { default: [443], maxItems: 64 }),
    /**
     * A connection on a sniff port that has not sent a whole ClientHello within this
     * long is relayed without a name (a server-speaks-first protocol waits this long).
     */
    sniffTimeoutMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 1000 }),
    /** Bytes of a ClientHello read at most; a larger one is relayed without a name. */
    sniffBytesMax: Type.Integer({ minimum: 512, maximum: 65_536, default: 16_384 }),
    /**
     * Destination ports whose connections carry DNS (docs/dns_tcp.md): read per message,
     * each query decided by the policy on its name. []: relayed as bytes, undecoded.
     */
    dnsPorts: Type.Array(Port, { default: [53], maxItems: 64 }),
    /**
     * Connections read per DNS message at once (each holds buffers as it uses them, and
     * up to 3 descriptors); past it, a new one is relayed as bytes, decided without a name.
     */
    dnsConnectionsMax: Type.Integer({ minimum: 1, maximum: 65_536, default: 1024 }),
    /**
     * A DNS connection with no progress for this long is closed: no byte from the client
     * and none delivered to it (RFC 7766 6.2.3 suggests seconds, not minutes).
     */
    dnsIdleTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 10_000 }),
  },
  { additionalProperties: false },
);

const OutboundName = Type.String({ minLength: 1, maxLength: 32, pattern: "^[A-Za-z0-9_.-]+$" });
/** "IP:PORT" or "[IPv6]:PORT": an address literal, never a host name (no DNS at start). */
const Endpoint = Type.String({ minLength: 3, maxLength: 53 });
const Cidr = Type.String({ minLength: 2, maxLength: 49 });
const PortOrRange = Type.Union([Port, Type.String({ pattern: "^[0-9]{1,5}-[0-9]{1,5}$" })]);
/** A DNS name as a rule matches it (checked in src/policy/domain_list.ts). */
const DomainName = Type.String({ minLength: 1, maxLength: 254 });

/** To the flow's original destination, as without a policy. */
export const DirectOutboundSchema = Type.Object(
  {
    name: OutboundName,
    type: Type.Literal("direct"),
    /** Source address of upstream sockets (default: config.upstream.bindAddress4/6). */
    bindAddress4: Type.Optional(Type.String({ minLength: 2, maxLength: 45 })),
    bindAddress6: Type.Optional(Type.String({ minLength: 2, maxLength: 45 })),
    /** SO_BINDTODEVICE: upstream traffic leaves by this interface. */
    interface: Type.Optional(Type.String({ minLength: 1, maxLength: 15 })),
    /** SO_MARK of upstream sockets (default: config.mark). */
    mark: Type.Optional(Type.Integer({ minimum: 1, maximum: 0x7fffffff })),
  },
  { additionalProperties: false },
);

/** To fixed addresses instead of the original destination (e.g. DNS to a chosen resolver). */
export const ForwardOutboundSchema = Type.Object(
  {
    name: OutboundName,
    type: Type.Literal("forward"),
    /** "IP:PORT" targets; each flow keeps one (a stable choice), failing over when it dies. */
    targets: Type.Array(Endpoint, { minItems: 1, maxItems: 16 }),
    healthCheck: Type.Object(
      {
        /** A UDP flow unanswered this long (or a TCP connect failing) counts as a failure. */
        answerTimeoutMs: Type.Integer({ minimum: 100, maximum: 60_000, default: 2_000 }),
        /** Consecutive failures after which a target is down: its flows go to the next. */
        failuresMax: Type.Integer({ minimum: 1, maximum: 1000, default: 3 }),
        /** A down target is offered flows again after this long. */
        retryIntervalMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 30_000 }),
      },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false },
);

/** Through a SOCKS5 server (RFC 1928): TCP by CONNECT, UDP by UDP ASSOCIATE. */
export const Socks5OutboundSchema = Type.Object(
  {
    name: OutboundName,
    type: Type.Literal("socks5"),
    /** "IP:PORT" of the server (an address literal). */
    server: Endpoint,
    /** RFC 1929 username/password authentication: both or neither, 1-255 bytes each. */
    username: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
    password: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
    /** Carry UDP flows (UDP ASSOCIATE); false: UDP flows matching this outbound are dropped. */
    udp: Type.Boolean({ default: true }),
    /** UDP associations (each a TCP control connection) open at most. */
    associationsMax: Type.Integer({ minimum: 1, maximum: 65_536, default: 1024 }),
    /** TCP connect plus SOCKS5 handshake must complete within this. */
    connectTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 5_000 }),
  },
  { additionalProperties: false },
);

/**
 * Answers a DNS query in place (docs/dns.md), never upstream: for a rule that matches
 * queries on udp.dnsPorts or tcp.dnsPorts (e.g. blocked names).
 */
export const DnsAnswerOutboundSchema = Type.Object(
  {
    name: OutboundName,
    type: Type.Literal("dnsAnswer"),
    rcode: Type.Union(
      [Type.Literal("NXDOMAIN"), Type.Literal("REFUSED"), Type.Literal("NOERROR")],
      {
        default: "NXDOMAIN",
      },
    ),
    /** With rcode NOERROR: the A record of an A query (none: an empty answer). */
    address4: Type.Optional(Type.String({ minLength: 2, maxLength: 45 })),
    /** With rcode NOERROR: the AAAA record of an AAAA query (none: an empty answer). */
    address6: Type.Optional(Type.String({ minLength: 2, maxLength: 45 })),
    /** TTL of the record. */
    ttlS: Type.Integer({ minimum: 0, maximum: 86_400, default: 60 }),
  },
  { additionalProperties: false },
);

export const OutboundSchema = Type.Union([
  DirectOutboundSchema,
  ForwardOutboundSchema,
  Socks5OutboundSchema,
  DnsAnswerOutboundSchema,
]);

export const RuleSchema = Type.Object(
  {
    /** Shown in logs and the session list (default: "rules[INDEX]"). */
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    protocol: Type.Optional(Type.Union([Type.Literal("udp"), Type.Literal("tcp")])),
    /** Listener name(s) the flow arrived on. */
    listener: Type.Optional(
      Type.Union([
        Type.String({ minLength: 1 }),
        Type.Array(Type.String(), { minItems: 1, maxItems: 64 }),
      ]),
    ),
    /** Client address CIDRs (IPv4 or IPv6; a bare address is a /32 or /128). */
    sources: Type.Optional(Type.Array(Cidr, { minItems: 1, maxItems: 262_144 })),
    /** Original destination CIDRs. */
    destinations: Type.Optional(Type.Array(Cidr, { minItems: 1, maxItems: 262_144 })),
    /** Original destination ports, as numbers or "low-high" ranges. */
    ports: Type.Optional(Type.Array(PortOrRange, { minItems: 1, maxItems: 1024 })),
    /** The sniffed name (DNS qname, TLS SNI, QUIC SNI); any of these matches. */
    names: Type.Optional(
      Type.Object(
        {
          /** The name itself. */
          exact: Type.Optional(Type.Array(DomainName, { maxItems: 1_000_000 })),
          /** The name or any name under it ("example.com" matches "a.example.com"). */
          suffix: Type.Optional(Type.Array(DomainName, { maxItems: 1_000_000 })),
          /** Domain list files (one name a line; full:/domain: prefixes; # comments). */
          lists: Type.Optional(
            Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), {
              maxItems: 64,
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    /** An outbound's name, "drop" or "reject". */
    action: Type.String({ minLength: 1, maxLength: 32 }),
  },
  { additionalProperties: false },
);

export const ConfigSchema = Type.Object(
  {
    /** The JSON Schema an editor validates the file against (dist/relay.schema.json). */
    $schema: Type.Optional(Type.String({ maxLength: 4096 })),
    listeners: Type.Array(ListenerSchema, {
      minItems: 1,
      maxItems: 64,
      default: [
        { name: "udp4", address: "127.0.0.1", port: 12345 },
        { name: "udp6", address: "::1", port: 12345 },
      ],
    }),
    intercept: Type.Array(InterceptSchema, { default: [], maxItems: 64 }),
    udp: Type.Object(UdpSchema.properties, { additionalProperties: false, default: {} }),
    tcp: Type.Object(TcpSchema.properties, { additionalProperties: false, default: {} }),
    /** SO_MARK on every upstream socket, so rules can exempt the relay's own traffic. */
    mark: Type.Integer({ minimum: 1, maximum: 0x7fffffff, default: 0x1ee7 }),
    /** fwmark that TPROXY sets and policy routing matches (ip rule fwmark MARK). */
    tproxyMark: Type.Integer({ minimum: 1, maximum: 0x7fffffff, default: 1 }),
    /** Routing table with `local default dev lo` for marked packets. */
    routeTable: Type.Integer({ minimum: 1, maximum: 0x7ffffffe, default: 100 }),
    /**
     * Priority of the `ip rule fwmark tproxyMark lookup routeTable` rule (before main,
     * 32766): a fixed priority makes the rule ours to find, replace and remove.
     */
    rulePriority: Type.Integer({ minimum: 1, maximum: 32_765, default: 32_000 }),
    /**
     * The host's interception rules (`bun run relay rules apply|remove|print`, README
     * "Installing the TPROXY rules"): which firewall, which traffic, what is never
     * intercepted.
     */
    firewall: Type.Object(
      {
        /** "nft" (one nftables table), or "iptables" (iptables-nft/ip6tables chains). */
        backend: Type.Union([Type.Literal("nft"), Type.Literal("iptables")], { default: "nft" }),
        /**
         * "gateway": traffic routed through this host (prerouting on intercept[].interfaces);
         * "local": this host's own outgoing traffic (output chain, rerouted to the relay);
         * "both".
         */
        mode: Type.Union([Type.Literal("gateway"), Type.Literal("local"), Type.Literal("both")], {
          default: "gateway",
        }),
        /**
         * The relay applies the rules at start (replacing any left by a crash), re-applies
         * them on reload, and removes them at exit.
         */
        manage: Type.Boolean({ default: false }),
        /** Local mode: this user's traffic (name or uid) is never intercepted (the relay's). */
        exemptUser: Type.String({ maxLength: 32, default: "" }),
        /** Local mode: traffic of this cgroup v2 path is never intercepted (e.g. its service). */
        exemptCgroup: Type.String({ maxLength: 256, default: "" }),
        /** What is never intercepted, besides the host's own addresses. */
        bypass: Type.Object(
          {
            /** Destination CIDRs (IPv4 or IPv6) never intercepted. */
            destinations: Type.Array(Type.String({ minLength: 2, maxLength: 49 }), {
              default: [],
              maxItems: 4096,
            }),
            /** Source CIDRs (clients) never intercepted. */
            sources: Type.Array(Type.String({ minLength: 2, maxLength: 49 }), {
              default: [],
              maxItems: 4096,
            }),
            /** Destination ports never intercepted (numbers or "low-high"). */
            ports: Type.Array(
              Type.Union([Port, Type.String({ pattern: "^[0-9]{1,5}-[0-9]{1,5}$" })]),
              { default: [], maxItems: 64 },
            ),
            /**
             * Private and reserved destinations (RFC 1918, CGNAT, link-local, loopback, ULA,
             * multicast...: README lists them) are never intercepted. Off by default: a
             * gateway may well proxy to private servers.
             */
            reservedRanges: Type.Boolean({ default: false }),
          },
          { additionalProperties: false, default: {} },
        ),
      },
      { additionalProperties: false, default: {} },
    ),
    /**
     * Where flows may go besides their original destination (README "Policy"). A built-in
     * "direct" outbound exists unless one is named so.
     */
    outbounds: Type.Array(OutboundSchema, { default: [], maxItems: 256 }),
    /** Per-flow policy: the first rule that matches decides; none: defaultAction. */
    rules: Type.Array(RuleSchema, { default: [], maxItems: 4096 }),
    /** What a flow no rule matches gets: an outbound's name, "drop" or "reject". */
    defaultAction: Type.String({ minLength: 1, maxLength: 32, default: "direct" }),
    upstream: Type.Object(
      {
        bindAddress4: Type.String({ default: "0.0.0.0" }),
        bindAddress6: Type.String({ default: "::" }),
      },
      { additionalProperties: false, default: {} },
    ),
    metrics: Type.Object(
      {
        /** Print a metrics line (JSON) this often; 0: only on SIGUSR1 and at exit. */
        logIntervalMs: Type.Integer({ minimum: 0, maximum: 86_400_000, default: 0 }),
        /** Prometheus endpoint (GET /metrics): the address it binds (loopback by default). */
        address: Type.String({ minLength: 2, maxLength: 45, default: "127.0.0.1" }),
        /** Its TCP port; 0: no endpoint. */
        port: Type.Integer({ minimum: 0, maximum: 65535, default: 9477 }),
      },
      { additionalProperties: false, default: {} },
    ),
    control: Type.Object(
      {
        /**
         * Unix socket of the control channel (relay stats / sessions / top); "": none.
         * A stale socket file is replaced; one a running relay answers on is refused.
         */
        socketPath: Type.String({ maxLength: 107, default: "/run/transparent-relay/control.sock" }),
      },
      { additionalProperties: false, default: {} },
    ),
    flowLog: Type.Object(
      {
        /** File of one record per ended flow (msgpackr); "": no flow log. */
        path: Type.String({ maxLength: 4096, default: "" }),
        /** Past this size the file is rotated (path.1, path.2, ...). */
        fileBytesMax: Type.Integer({ minimum: 4096, maximum: 2 ** 40, default: 64 << 20 }),
        /** Rotated files kept besides the current one. */
        filesMax: Type.Integer({ minimum: 1, maximum: 100, default: 4 }),
      },
      { additionalProperties: false, default: {} },
    ),
    log: Type.Object(
      {
        /** Least severe level printed. */
        level: Type.Union(
          [
            Type.Literal("debug"),
            Type.Literal("info"),
            Type.Literal("warn"),
            Type.Literal("error"),
          ],
          { default: "info" },
        ),
        /** "text" for a terminal, "json" (one object per line) for a collector. */
        format: Type.Union([Type.Literal("text"), Type.Literal("json")], { default: "text" }),
      },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false },
);

export type ConfigInput = Static<typeof ConfigSchema>;
