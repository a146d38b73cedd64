/*
 * relay.h: the C helper behind bun:ffi. It owns the syscalls of the data path and
 * keeps no policy: socket set-up, batched receive/send with control messages, the
 * epoll thread that wakes JavaScript, TCP accept/connect and the splice engine.
 * (ffi/internal.h lists the file of each.)
 *
 * Contract: every function returns n >= 0 on success or -errno on failure, captured
 * right after the failing call. Nothing reads a global errno later.
 *
 * Pollers and engines are named by handles (>= 0) that carry a generation: once
 * closed, a handle stays invalid (-EBADF) even after another open reuses its slot.
 *
 * Addresses cross the boundary as 16 bytes: IPv6 as is, IPv4 as the v4-mapped form
 * ::ffff:a.b.c.d, so one key layout serves both families. Ports are in host order.
 * The record layouts below are mirrored in src/sys/layout.ts; rl_layout_describe() lets
 * TypeScript assert at start-up that both sides agree on every field.
 */
#ifndef RELAY_H
#define RELAY_H

#include <stdint.h>

#define RL_ABI_VERSION 4

/* Largest batch one recv/send call handles: the static mmsghdr/iovec/cmsg arrays are
 * sized by it. 256 follows the kernel selftest's drain budget. */
#define RL_BATCH_COUNT_MAX 256

/* rl_socket() option flags. */
#define RL_SOCK_TRANSPARENT   0x0001 /* IP_TRANSPARENT / IPV6_TRANSPARENT */
#define RL_SOCK_RECVORIGDST   0x0002 /* IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR */
#define RL_SOCK_REUSEADDR     0x0004 /* SO_REUSEADDR */
#define RL_SOCK_REUSEPORT     0x0008 /* SO_REUSEPORT */
#define RL_SOCK_FREEBIND      0x0010 /* IP_FREEBIND / IPV6_FREEBIND */
#define RL_SOCK_RECVERR       0x0020 /* IP_RECVERR / IPV6_RECVERR: ICMP errors reach us */
#define RL_SOCK_IPV6          0x0040 /* AF_INET6 socket (else AF_INET) */
#define RL_SOCK_V6ONLY        0x0080 /* IPV6_V6ONLY */
#define RL_SOCK_STREAM        0x0100 /* SOCK_STREAM (TCP listener) instead of SOCK_DGRAM */
#define RL_SOCK_RXQ_OVFL      0x0200 /* SO_RXQ_OVFL: datagrams dropped on a full queue */
#define RL_SOCK_FLAGS_ALL     0x03ff /* any other bit: -(RL_STEP_SOCKET << 16 | EINVAL) */

/* rl_socket() failures are -(step << 16 | errno): the step names the option that
 * was refused (see enum rl_step in internal.h, mirrored in src/sys/errno.ts). */

/* rl_meta.flags */
#define RL_META_TRUNCATED     0x0001 /* MSG_TRUNC: datagram larger than its slot */
/* 0x0002 is unused (it was MSG_CTRUNC, which nothing read: see rl_recv_batch). */
#define RL_META_HAS_ORIGDST   0x0004 /* target_addr/target_port hold the original dst */
#define RL_META_HAS_DROPS     0x0008 /* queue_drops holds SO_RXQ_OVFL's counter */

/* One received datagram, written by rl_recv_batch() (64 bytes). */
struct rl_meta {
  uint8_t  source_addr[16]; /* 0: sender (v4-mapped for IPv4) */
  uint8_t  target_addr[16]; /* 16: original destination, if RL_META_HAS_ORIGDST */
  uint16_t source_port;     /* 32 */
  uint16_t target_port;     /* 34 */
  uint16_t flags;           /* 36: RL_META_* */
  uint16_t reserved0;       /* 38 */
  uint32_t length;          /* 40: bytes stored in the slot (<= slot size) */
  uint32_t length_wire;     /* 44: datagram length on the wire (> length if truncated) */
  uint32_t source_scope;    /* 48: IPv6 scope id of the sender */
  uint32_t target_scope;    /* 52: IPv6 scope id of the original destination */
  uint32_t queue_drops;     /* 56: datagrams the socket dropped so far (SO_RXQ_OVFL) */
  uint32_t reserved1;       /* 60 */
};

/* rl_send.flags */
#define RL_SEND_SOURCE        0x0001 /* set the source address with IP_PKTINFO/IPV6_PKTINFO */
/* The fd is connected (rl_udp_connect) to the entry's target: sent without a name, so
 * the kernel uses the route cached on the socket instead of a lookup per datagram. */
#define RL_SEND_CONNECTED     0x0002

/* One datagram to send, read (and result written) by rl_send_batch() (64 bytes). */
struct rl_send {
  uint8_t  target_addr[16]; /* 0: destination (v4-mapped for IPv4) */
  uint8_t  source_addr[16]; /* 16: source address when RL_SEND_SOURCE */
  uint16_t target_port;     /* 32 */
  uint16_t flags;           /* 34: RL_SEND_* */
  int32_t  fd;              /* 36: socket to send on */
  uint32_t offset;          /* 40: payload offset from the slab base */
  uint32_t length;          /* 44: payload bytes */
  int32_t  result;          /* 48: out: bytes sent or -errno */
  uint32_t target_scope;    /* 52: IPv6 scope id of the destination */
  uint32_t reserved[2];     /* 56 */
};

int32_t rl_abi_version(void);
/* The address of p, as a number: how the koffi binding (Node) learns where a typed
 * array's memory is, to pass it later as a plain uintptr_t (as bun:ffi's ptr() does). */
uintptr_t rl_addr(const void *p);

/* Records rl_layout_describe() reports (struct rl_tcp_event is defined further down). */
#define RL_RECORD_META      1
#define RL_RECORD_SEND      2
#define RL_RECORD_TCP_EVENT 3
/* Writes one (record, field, offset, size) tuple of int32 per entry into out (room for
 * count tuples): for each record first field 0, the record itself (offset 0, its size),
 * then every field in declaration order, numbered from 1. Returns the number of tuples,
 * or -ENOSPC (nothing written) when count is too small. TypeScript compares them all
 * with src/sys/layout.ts at start-up. */
int32_t rl_layout_describe(int32_t *out, int32_t count);

/* Raises RLIMIT_NOFILE soft limit to min(hard, want); returns the new soft limit. */
int32_t rl_raise_nofile(int32_t want);

/* Creates, configures and binds a socket (non-blocking, close-on-exec).
 * addr: 16 bytes (v4-mapped for IPv4), port in host order. mark: SO_MARK (0: unset).
 * Buffer sizes of 0 keep the kernel default; SO_*BUFFORCE is tried first (root). */
int32_t rl_socket(int32_t flags, const uint8_t *addr, int32_t port, int32_t mark,
                  int32_t receive_bytes, int32_t send_bytes);
int32_t rl_close(int32_t fd);
/* connect() of a UDP socket to addr (16 bytes, v4-mapped for IPv4):port%scope. The
 * kernel then keeps the route and delivers only that peer's datagrams; send to it with
 * RL_SEND_CONNECTED. 0 or -errno. */
int32_t rl_udp_connect(int32_t fd, const uint8_t *addr, int32_t port, int32_t scope);
/* listen(2) for a TCP listener made by rl_socket(RL_SOCK_STREAM ...). */
int32_t rl_listen(int32_t fd, int32_t backlog);
/* Writes the bound address (16 bytes) into addr_out and returns the bound port. */
int32_t rl_local_port(int32_t fd, uint8_t *addr_out);

/* Receives up to count datagrams into slots slab[i * slot_bytes] and fills meta[i].
 * Returns the number received, 0 when nothing is waiting, or -errno (an ICMP error
 * queued by IP_RECVERR shows up here as -ECONNREFUSED, -EHOSTUNREACH, ...). */
int32_t rl_recv_batch(int32_t fd, uint8_t *slab, int32_t slot_bytes, int32_t count,
                      struct rl_meta *meta);

/* Drains the socket's error queue (MSG_ERRQUEUE), at most count entries. Writes the
 * offender (the address our datagram was sent to) into meta[i].source_* and the errno
 * into meta[i].length. Returns the number drained. */
int32_t rl_recv_errors(int32_t fd, int32_t count, struct rl_meta *meta);

/* Sends sends[0..count): the entries of each fd go out together, in their order, in
 * one sendmmsg (entries of different fds are not ordered between them). A datagram
 * that fails gets result = -errno and the rest still go. An entry whose payload
 * [offset, offset + length) is not inside slab[0..slab_bytes) is not sent (result
 * -EFAULT), nor is one with fd < 0 (-EBADF). Returns the number of datagrams sent
 * successfully. */
int32_t rl_send_batch(uint8_t *slab, uint32_t slab_bytes, struct rl_send *sends, int32_t count);

/* ICMP port unreachable for the policy's UDP `reject` (icmp.c). rl_icmp_open(ipv6)
 * returns a send-only raw socket (CAP_NET_RAW) or -errno. rl_icmp_unreachable() sends one
 * to the client (16-byte addresses, ports in host order, the client's IPv6 scope) from
 * target_addr, the original destination, quoting the client's datagram (its header and
 * payload's start); returns bytes sent or -errno. */
int32_t rl_icmp_open(int32_t ipv6);
int32_t rl_icmp_unreachable(int32_t fd, const uint8_t *client_addr, int32_t client_port,
                            int32_t client_scope, const uint8_t *target_addr, int32_t target_port,
                            const uint8_t *payload, int32_t length);
/* SO_BINDTODEVICE to the interface name[0..length) (an outbound's `interface`). */
int32_t rl_bind_device(int32_t fd, const uint8_t *name, int32_t length);

/* SOCKS5 UDP associations (stream.c): non-blocking send/recv on the TCP control
 * connection (recv: 0 at EOF), the pending error of a socket (a connect's result: 0 or
 * -errno), and one datagram sent as header + payload (two iovecs, no copy) to addr:port.
 * Each returns n >= 0 or -errno. */
int32_t rl_stream_send(int32_t fd, const uint8_t *buf, int32_t length);
int32_t rl_stream_recv(int32_t fd, uint8_t *buf, int32_t capacity);
int32_t rl_socket_error(int32_t fd);
int32_t rl_send_wrapped(int32_t fd, const uint8_t *header, int32_t header_length,
                        const uint8_t *payload, int32_t payload_length, const uint8_t *addr,
                        int32_t port, int32_t scope);

/* TCP helpers: original destination under REDIRECT/DNAT (SO_ORIGINAL_DST). */
int32_t rl_original_dst(int32_t fd, uint8_t *addr_out);

/* The epoll thread. rl_poll_open(tokens_max) returns a poller handle (>= 0). Sockets
 * are armed EPOLLIN|EPOLLONESHOT with a token (< 2^30). The thread pushes each ready
 * token (bit 30 set when EPOLLERR) into a ring and calls wake(count) only when JS is
 * idle. JS then loops: rl_poll_take() tokens, drain each socket, rl_poll_rearm() it;
 * when rl_poll_take() returns 0, rl_poll_sleep(): 0 means idle (a wake call will come),
 * 1 means more arrived meanwhile (keep going). rl_poll_stop() joins the thread: only
 * after it returns may JS close the callback. */
typedef void (*rl_wake_fn)(int32_t count);
int32_t rl_poll_open(int32_t tokens_max);
int32_t rl_poll_add(int32_t poller, int32_t fd, int32_t token);
int32_t rl_poll_rearm(int32_t poller, int32_t fd, int32_t token);
int32_t rl_poll_del(int32_t poller, int32_t fd);
/* Arms fd for writability instead (EPOLLOUT, one-shot unless the poller is
 * level-triggered): a connect in progress completes, or a full send buffer drains; errors
 * and hang-ups are reported whatever is armed. add: 1 to register fd (EPOLL_CTL_ADD), 0 to
 * re-arm a registered one. rl_poll_rearm() arms it for reading again. */
int32_t rl_poll_arm_out(int32_t poller, int32_t fd, int32_t token, int32_t add);
/* Re-arms fd for reading and writing at once (a stream with output pending that must
 * keep reading, so neither side can wait on the other forever). */
int32_t rl_poll_arm_both(int32_t poller, int32_t fd, int32_t token);
int32_t rl_poll_start(int32_t poller, rl_wake_fn wake);
/* The same thread, for a runtime whose callbacks cannot be called from another thread
 * without blocking it (koffi under Node): instead of calling wake(), the thread writes one
 * byte to a pipe whose read end (returned, >= 0) the caller watches on its event loop and
 * owns (closes after rl_poll_stop). The write end is non-blocking and closed by
 * rl_poll_stop: a full pipe already holds a wake-up. */
int32_t rl_poll_start_pipe(int32_t poller);
int32_t rl_poll_take(int32_t poller, uint32_t *out, int32_t count);
int32_t rl_poll_sleep(int32_t poller);
/* Inline mode, for a thread that may block (a Worker's): no epoll thread is started;
 * one epoll_wait in the calling thread, up to timeout_ms, pushes what is ready into the
 * ring and returns how many (-ECANCELED once rl_poll_stop's token is seen). */
int32_t rl_poll_wait(int32_t poller, int32_t timeout_ms);
/* Inline mode only, before any rl_poll_add: sockets are armed level-triggered without
 * EPOLLONESHOT. One thread both waits and drains, so a socket cannot be reported twice
 * at once, and the re-arm syscall per socket per round goes away. */
int32_t rl_poll_level_triggered(int32_t poller);
/* Inline mode: a message for the thread that owns the poller is on its way. Another
 * thread calls rl_poll_notify (an eventfd in the poller's epoll set) BEFORE it posts the
 * message; the owner's rl_poll_wait then returns with the ring token
 * RL_POLL_NOTIFY_RING_TOKEN, and rl_poll_notified takes how many notifications arrived
 * since the last call (it resets the count). */
#define RL_POLL_NOTIFY_RING_TOKEN 0x3fffffffu
int32_t rl_poll_notify(int32_t poller);
int32_t rl_poll_notified(int32_t poller);
int32_t rl_poll_stop(int32_t poller);
/* Counters, 64-bit, written to out[0..RL_POLL_STATS_COUNT) as doubles (exact to 2^53).
 * Returns RL_POLL_STATS_COUNT. */
#define RL_POLL_STAT_WAKES     0 /* wake calls (threaded) or waits (inline) */
#define RL_POLL_STAT_EVENTS    1 /* ready events pushed into the ring */
#define RL_POLL_STAT_OVERFLOWS 2 /* ring overflows (must stay 0) */
#define RL_POLL_STATS_COUNT    3
int32_t rl_poll_stats(int32_t poller, double *out);
/* 0 while the epoll thread runs; -errno once epoll_wait failed and the thread left (it
 * then calls wake(0) once, so JS asks at once). Never silent. */
int32_t rl_poll_failed(int32_t poller);

/* ---- TCP (issue 4) ----
 * Bun decides, C copies. Accepting, the original destination and the upstream
 * connect are separate calls so TypeScript decides per connection (limit, mode,
 * source address). A connected pair is then handed to a splice engine: one thread
 * with its own epoll that moves bytes socket -> pipe -> socket (splice(2), no copy
 * through user space), forwards half-closes and resets, and enforces the connect and
 * idle timeouts. With a copy buffer size (tcp.spliceMode "auto"), each direction first
 * copies through a small buffer (recv + send: one call each way per message, no pipe)
 * and takes its pipe only once it proves bulk (HAProxy's splice-auto). It reports to
 * TypeScript through an event ring and an eventfd that JS watches with its own poller. */

/* rl_tcp_connect() flags */
#define RL_TCP_SOURCE_BIND    0x0001 /* bind source_addr (port 0) before connecting */
#define RL_TCP_TRANSPARENT    0x0002 /* IP_TRANSPARENT: source_addr need not be local
                                        (HAProxy "usesrc clientip") */
#define RL_TCP_FLAGS_ALL      0x0003 /* any other bit: -(step 13 << 16 | EINVAL) */

/* One engine event (40 bytes), read by rl_tcp_engine_events(). A connection makes
 * exactly one, when it ends (a separate "connected" event would double the wake-ups
 * of short connections for no decision). */
struct rl_tcp_event {
  uint32_t id;          /* 0: the caller's connection id given to rl_tcp_engine_add() */
  uint16_t kind;        /* 4: RL_TCP_EVENT_* */
  uint16_t reason;      /* 6: RL_TCP_END_* */
  int32_t  error;       /* 8: errno behind the reason, 0 if none */
  uint32_t duration_ms; /* 12: lifetime, from rl_tcp_engine_add() */
  double   bytes_up;    /* 16: client -> upstream bytes delivered */
  double   bytes_down;  /* 24: upstream -> client bytes delivered */
  uint32_t connect_ms;  /* 32: upstream connect time; UINT32_MAX: never connected */
  uint32_t reserved;    /* 36 */
};

#define RL_TCP_EVENT_CLOSED    2

/* Why a connection ended. Resets and aborts are forwarded as RST (SO_LINGER 0). */
#define RL_TCP_END_CLOSED          1 /* both directions ended with FIN, all bytes delivered */
#define RL_TCP_END_CLIENT_RESET    2 /* client reset or vanished (read/write error); RST upstream */
#define RL_TCP_END_UPSTREAM_RESET  3 /* upstream reset or vanished; RST to the client */
#define RL_TCP_END_CONNECT_REFUSED 4 /* upstream answered RST to the SYN; RST to the client */
#define RL_TCP_END_CONNECT_TIMEOUT 5 /* no answer within connect_timeout_ms; RST to the client */
#define RL_TCP_END_CONNECT_FAILED  6 /* other connect error (unreachable...); RST to the client */
#define RL_TCP_END_IDLE_TIMEOUT    7 /* no byte either way for idle_timeout_ms; RST both */
#define RL_TCP_END_ABORTED         8 /* rl_tcp_engine_abort_all() (end of shutdown grace) */
#define RL_TCP_END_RESOURCES       9 /* no pipe could be made (EMFILE/ENFILE/ENOMEM), at the
                                         hand-off or (copy mode) when a direction proved bulk */

/* Accepts one connection (non-blocking, close-on-exec, TCP_NODELAY). Fills
 * meta->source_* with the peer and meta->target_* with the local address, which is
 * the original destination under TPROXY. Returns the fd, or -EAGAIN when none wait. */
int32_t rl_tcp_accept(int32_t listener_fd, struct rl_meta *meta);

/* Opens a non-blocking TCP connection to target (SO_MARK mark unless 0,
 * TCP_NODELAY), optionally bound to source_addr first (see flags). Returns the fd
 * with the connect in progress, or -(step << 16 | errno) like rl_socket() with
 * step 13 for connect(). */
int32_t rl_tcp_connect(const uint8_t *target_addr, int32_t target_port, int32_t target_scope,
                       const uint8_t *source_addr, int32_t flags, int32_t mark);

/* rl_tcp_connect, plus SO_BINDTODEVICE to device (a NUL-terminated interface name; NULL
 * or "" for none) before the connect: an outbound's "interface". Step 15 on failure. */
int32_t rl_tcp_connect_via(const uint8_t *target_addr, int32_t target_port,
                           int32_t target_scope, const uint8_t *source_addr, int32_t flags,
                           int32_t mark, const uint8_t *device);
/* A connect in progress, once the socket is writable: 0 when it succeeded, else the
 * connect's -errno (SO_ERROR: -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH...). */
int32_t rl_tcp_connect_result(int32_t fd);
/* Non-blocking recv/send for a SOCKS5 handshake run by TypeScript: bytes moved (recv 0:
 * the peer closed), or -errno (-EAGAIN: not now). send never raises SIGPIPE. */
int32_t rl_tcp_recv(int32_t fd, uint8_t *buf, int32_t cap);
int32_t rl_tcp_send(int32_t fd, const uint8_t *buf, int32_t len);

/* Closes with SO_LINGER 0: the peer gets a RST (refusing a connection at the limit). */
int32_t rl_tcp_abort(int32_t fd);

/* Copies up to cap bytes the client has sent, without consuming them (MSG_PEEK,
 * non-blocking): while the relay reads a ClientHello the kernel's receive queue is the
 * hold buffer, and the splice engine later moves the same bytes upstream. Returns the
 * bytes copied (0: the client closed), or -errno (-EAGAIN: nothing yet). */
int32_t rl_tcp_peek(int32_t fd, uint8_t *buf, int32_t cap);

/* SO_RCVLOWAT = bytes: epoll reports the socket readable only once that many bytes are
 * queued (or at EOF or an error), so waiting for the rest of a ClientHello whose prefix
 * was peeked does not wake the relay on the bytes it has already seen. */
int32_t rl_tcp_rcvlowat(int32_t fd, int32_t bytes);

/* Starts an engine for ids 0..slots-1 with pipes of pipe_bytes per direction (the
 * bound on what the relay holds per direction). Returns a handle >= 0.
 * copy_bytes 0: every direction splices from its first byte (two pipes per connection,
 * taken at the hand-off). Else (RL_TCP_COPY_BYTES_MIN..pipe_bytes): each direction
 * starts by copying through a buffer of copy_bytes, and switches to splice for good once
 * one read fills that buffer (the source had that much waiting: bulk); bytes buffered
 * are sent before any spliced byte. The buffers come from a pool of min(slots, 1024)
 * made at open; a direction finding it empty splices at once.
 * inline_mode 0: a thread of its own. 1: no thread; the caller runs the engine from its
 * poller (rl_tcp_engine_epoll_fd, rl_tcp_engine_run), on one thread. */
#define RL_TCP_COPY_BYTES_MIN 1024
int32_t rl_tcp_engine_open(int32_t slots, int32_t pipe_bytes, int32_t connect_timeout_ms,
                           int32_t idle_timeout_ms, int32_t copy_bytes, int32_t inline_mode);
/* New timeouts for every connection, open ones included, from the engine's next sweep
 * (a reload): a connection already idle past the new idle timeout ends at that sweep.
 * The sweep period follows them (the next period is the old one). */
int32_t rl_tcp_engine_set_timeouts(int32_t engine, int32_t connect_timeout_ms,
                                   int32_t idle_timeout_ms);
/* The eventfd that becomes readable when events wait (register it with rl_poll_add),
 * and also when the engine thread dies (see rl_tcp_engine_failed). */
int32_t rl_tcp_engine_event_fd(int32_t engine);
/* 0 while the engine thread runs; -errno of the error that ended its loop (epoll_wait
 * failed), after which no connection moves: the caller must treat it as fatal.
 * -EBADF also for a handle that is not open. */
int32_t rl_tcp_engine_failed(int32_t engine);
/* Hands a pair to the engine, which owns both fds from now on (also on failure,
 * where it closes them). id must be free: ids are reused only after their closed
 * event was read. upstream_fd's connect may still be in progress. */
int32_t rl_tcp_engine_add(int32_t engine, int32_t id, int32_t client_fd, int32_t upstream_fd);
/* Copies up to count waiting events to out; returns how many. */
int32_t rl_tcp_engine_events(int32_t engine, struct rl_tcp_event *out, int32_t count);
/* Resets every open connection (each gets a closed event, RL_TCP_END_ABORTED). */
int32_t rl_tcp_engine_abort_all(int32_t engine);
/* Writes out[0..RL_TCP_STATS_COUNT) as doubles (counters are 64-bit, exact to 2^53);
 * returns RL_TCP_STATS_COUNT. */
#define RL_TCP_STAT_BYTES_UP     0 /* client -> upstream bytes delivered, all time */
#define RL_TCP_STAT_BYTES_DOWN   1 /* upstream -> client bytes delivered, all time */
#define RL_TCP_STAT_OPEN         2 /* gauge: open connections */
#define RL_TCP_STAT_PIPES_IN_USE 3 /* gauge */
#define RL_TCP_STAT_PIPES_POOLED 4 /* gauge */
#define RL_TCP_STAT_EVENTS_LOST  5 /* counter, must stay 0 */
#define RL_TCP_STAT_SPLICE_SWITCHES  6 /* counter: directions that proved bulk and spliced */
#define RL_TCP_STAT_COPY_ONLY        7 /* counter: connections ended without taking a pipe */
#define RL_TCP_STAT_COPY_IN_USE      8 /* gauge: copy buffers holding bytes */
#define RL_TCP_STAT_COPY_POOL_EMPTY  9 /* counter: directions that found no copy buffer
                                          free and spliced at once */
#define RL_TCP_STATS_COUNT           10
int32_t rl_tcp_engine_stats(int32_t engine, double *out);
/* Joins the thread and closes every fd it still holds (RST to open peers). */
int32_t rl_tcp_engine_close(int32_t engine);
/* Inline mode: the engine's epoll fd. Readable (level-triggered) while the engine has
 * work; register it in the caller's poller and call rl_tcp_engine_run then. */
int32_t rl_tcp_engine_epoll_fd(int32_t engine);
/* Inline mode: one round without waiting (up to max_events socket events, the queued
 * connections' turns, the timeout sweep when due); ended connections' events wait for
 * rl_tcp_engine_events (no eventfd write). Returns the events handled, or -errno when
 * epoll_wait failed (fatal, as rl_tcp_engine_failed then says). -EINVAL for a threaded
 * engine. Call it also from a timer (the timeouts run here, with no thread). */
int32_t rl_tcp_engine_run(int32_t engine, int32_t max_events);

/* ---- Local destinations (ffi/local_addr.c) ----
 * The kernel's local routing table (255): what `fib daddr type local` matches. The
 * relay refuses to relay to any of it (a flow to the host itself would loop). */

/* One entry of the local table (20 bytes). */
struct rl_local_route {
  uint8_t addr[16];    /* 0: prefix (v4-mapped for IPv4) */
  uint8_t prefix_bits; /* 16: prefix length over the 128-bit form (IPv4: 96 + len) */
  uint8_t type;        /* 17: RTN_LOCAL 2, RTN_BROADCAST 3, RTN_ANYCAST 4 */
  uint8_t reserved[2]; /* 18 */
};

/* Dumps the local table (IPv4 and IPv6) into out[0..count). Returns the number of
 * entries, or -ENOSPC when there are more than count, or -errno. */
int32_t rl_local_routes(struct rl_local_route *out, int32_t count);
/* A netlink socket (non-blocking) that becomes readable when an address is added or
 * removed anywhere on the host: register it with the poller, then dump again. */
int32_t rl_addr_watch_open(void);
/* Reads every pending notification; returns how many, or -errno (-ENOBUFS: some were
 * lost, which only means "dump again"). */
int32_t rl_addr_watch_drain(int32_t fd);

/* ---- Test-only hooks ----
 * For test/unit only (src/sys/test_hooks.ts binds them; src/sys/ffi.ts does not): they
 * put the C side into states a test cannot reach in reasonable time. */

/* Sets a poller counter (RL_POLL_STAT_*) to value (0..2^53), e.g. just past 2^32. */
int32_t rl_test_poll_stat_set(int32_t poller, int32_t which, double value);
/* Breaks the poller's epoll descriptor (an eventfd takes its number): after the next
 * event, the thread's epoll_wait fails with EINVAL, as on any epoll_wait error. */
int32_t rl_test_poll_break(int32_t poller);
/* Sets an engine counter (RL_TCP_STAT_BYTES_UP, _BYTES_DOWN, _EVENTS_LOST,
 * _SPLICE_SWITCHES, _COPY_ONLY, _COPY_POOL_EMPTY). */
int32_t rl_test_tcp_engine_stat_set(int32_t engine, int32_t which, double value);
/* Makes the engine thread pause delay_us (0..100000) after each epoll event it handles:
 * JS then reuses an ended connection's id while the engine is still in that batch. */
int32_t rl_test_tcp_engine_event_delay(int32_t engine, int32_t delay_us);
/* Breaks the engine's epoll descriptor (an eventfd takes its number): the thread's loop
 * ends with EINVAL, as it would on any epoll_wait error. */
int32_t rl_test_tcp_engine_break(int32_t engine);

/* UDP offload (udp_gso.c). rl_udp_offload_probe: which of UDP_SEGMENT (1) and UDP_GRO (2)
 * this kernel accepts on a test socket, or -errno. rl_udp_gso_enable: whether this
 * thread's rl_send_batch folds runs of equal-size datagrams of one flow (same socket,
 * destination and source) into one UDP_SEGMENT message (up to 64 datagrams, 65507 bytes);
 * a socket whose GSO send the kernel refuses (EIO, EINVAL, ENOTSUP) gets its datagrams
 * one by one and is not tried again until rl_close. rl_udp_gro: UDP_GRO on fd.
 * rl_recv_batch_gro: rl_recv_batch for a socket with UDP_GRO: receives into spans of
 * rl_gro_span_slots(slot_bytes) slots (count / span buffers; -ENOBUFS when count < span)
 * and splits each coalesced buffer into its datagrams, one slot and rl_meta each; returns
 * the datagrams (at most count). rl_udp_offload_stats: writes this thread's counters
 * since the last call (GSO messages, datagrams in them, GSO fallbacks, GRO buffers,
 * datagrams split from them) as 5 doubles; returns 5. */
int32_t rl_udp_offload_probe(void);
int32_t rl_udp_gso_enable(int32_t enabled);
int32_t rl_udp_gro(int32_t fd, int32_t enabled);
int32_t rl_gro_span_slots(int32_t slot_bytes);
int32_t rl_recv_batch_gro(int32_t fd, uint8_t *slab, int32_t slot_bytes, int32_t count,
                          struct rl_meta *meta);
int32_t rl_udp_offload_stats(double *out);

/* Sets SO_NO_CHECK on fd: the kernel then refuses GSO sends (EINVAL), to test the fallback. */
int32_t rl_test_udp_no_check(int32_t fd);

/* ---- uring.c: the io_uring UDP data plane (issue 14) ---- */

/* rl_uring_stats() slots. */
#define RL_URING_STAT_ENTERS        0 /* rl_uring_wait calls (one io_uring_enter each) */
#define RL_URING_STAT_COMPLETIONS   1 /* CQEs handled */
#define RL_URING_STAT_NO_BUFFERS    2 /* multishot recvmsg ended: the buffer ring ran empty */
#define RL_URING_STAT_SENDS_QUEUED  3 /* datagrams sent as sendmsg SQEs */
#define RL_URING_STAT_SENDS_DIRECT  4 /* sent by sendmsg at once: no send slot free */
#define RL_URING_STAT_COUNT         5
/* The token rl_uring_wait reports when the watched epoll fd is readable. */
#define RL_URING_WATCH_TOKEN 0x3fffffffu

/* 0 when this kernel runs the plane (ring, buffer ring, multishot recvmsg), or -errno. */
int32_t rl_uring_probe(void);
/* A ring: SQ entries, tokens (0..tokens_max-1), provided buffers (a power of two) that
 * hold a datagram of slot_bytes each, send slots of slot_bytes. A handle or -errno. */
int32_t rl_uring_open(int32_t entries, int32_t tokens_max, int32_t buf_count,
                      int32_t slot_bytes, int32_t send_count);
int32_t rl_uring_close(int32_t handle);
/* Arms a multishot recvmsg on fd under token. */
int32_t rl_uring_add(int32_t handle, int32_t fd, int32_t token);
/* Cancels the token's receive and gives its buffers back; submits now (before close). */
int32_t rl_uring_del(int32_t handle, int32_t token);
/* Watches an epoll fd (the sockets that stay on epoll): RL_URING_WATCH_TOKEN when ready. */
int32_t rl_uring_watch(int32_t handle, int32_t fd);
/* The round's one system call: submits what is queued, waits up to timeout_ms for a
 * completion, writes the tokens with datagrams (or an error) waiting, returns their
 * count. completions: [count, slot, result, ...], room for 1 + 2 x send slots. */
int32_t rl_uring_wait(int32_t handle, int32_t timeout_ms, uint32_t *tokens, int32_t tokens_max,
                      int32_t *completions);
/* The token's waiting datagrams into slab slots and meta, as rl_recv_batch: the count,
 * 0 when none, or once -errno for a receive error (the error queue has its detail). */
int32_t rl_uring_recv(int32_t handle, int32_t token, uint8_t *slab, int32_t slot_bytes,
                      int32_t count, struct rl_meta *meta);
/* Queues the entries as sendmsg SQEs (payloads copied): slots_out[i] is the send slot
 * whose completion carries entry i's result, or -1 when result holds it already. */
int32_t rl_uring_send_batch(int32_t handle, uint8_t *slab, uint32_t slab_bytes,
                            struct rl_send *sends, int32_t count, int32_t *slots_out);
/* Submits what is queued now (no wait). */
int32_t rl_uring_submit(int32_t handle);
int32_t rl_uring_stats(int32_t handle, double *out);
/* The poller's epoll descriptor (the io_uring plane watches it), or -EBADF. */
int32_t rl_poll_fd(int32_t handle);

#endif
