/*
 * internal.h: what the files of the C helper share and nothing outside it sees.
 * relay.h is the contract with TypeScript; this header is the glue between
 *
 *   abi.c         ABI version and the record layouts TypeScript checks at start-up
 *   sock.c        socket set-up, address helpers (sockaddr <-> 16 bytes), fd limit
 *   udp_batch.c   rl_recv_batch, rl_send_batch, rl_recv_errors (recvmmsg/sendmmsg)
 *   udp_gso.c     UDP_SEGMENT runs inside rl_send_batch, UDP_GRO receive and split
 *   poller.c      the epoll thread that wakes JavaScript (and its inline mode)
 *   tcp.c         accept, connect, abort, SO_ORIGINAL_DST
 *   tcp_engine.c  the splice engine thread
 *   pipe_pool.c   the engine's pipes, kept for reuse
 *   copy_pool.c   the engine's copy buffers (a connection's first bytes, spliceMode auto)
 *   handles.c     the one handle table behind poller and engine handles; RL_ASSERT
 *   icmp.c        ICMP port unreachable for UDP reject; SO_BINDTODEVICE
 *   stream.c      a SOCKS5 UDP association's control connection I/O, wrapped sends
 *
 * Everything declared here is hidden from the shared object's symbol table: only the
 * rl_* functions of relay.h are exported.
 */
#ifndef RELAY_INTERNAL_H
#define RELAY_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "relay.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h, which clashes with netinet/in.h */
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */
#endif
#ifndef IP_ORIGDSTADDR
#define IP_ORIGDSTADDR 20
#endif
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR IP_ORIGDSTADDR
#endif
#ifndef IPV6_ORIGDSTADDR
#define IPV6_ORIGDSTADDR 74
#endif
#ifndef IPV6_RECVORIGDSTADDR
#define IPV6_RECVORIGDSTADDR IPV6_ORIGDSTADDR
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif
#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#pragma GCC visibility push(hidden)

/* The first 12 bytes of an IPv4 address in the 16-byte form (::ffff:a.b.c.d). */
extern const uint8_t v4_mapped_prefix[12];

/* Failures of rl_socket() and rl_tcp_connect() carry the step that failed so the
 * caller can say which option was refused (an EPERM on IP_TRANSPARENT means "no
 * CAP_NET_ADMIN"). Encoding: -(step << 16 | errno); errno values are < 4096.
 * Mirrored in src/sys/errno.ts. */
enum rl_step {
  RL_STEP_SOCKET = 1,
  RL_STEP_TRANSPARENT = 2,
  RL_STEP_RECVORIGDST = 3,
  RL_STEP_REUSEADDR = 4,
  RL_STEP_REUSEPORT = 5,
  RL_STEP_FREEBIND = 6,
  RL_STEP_RECVERR = 7,
  RL_STEP_V6ONLY = 8,
  RL_STEP_MARK = 9,
  RL_STEP_RCVBUF = 10,
  RL_STEP_SNDBUF = 11,
  RL_STEP_BIND = 12,
  RL_STEP_CONNECT = 13, /* rl_tcp_connect's connect() */
  RL_STEP_RXQ_OVFL = 14,
  RL_STEP_BINDTODEVICE = 15, /* rl_tcp_connect_via's SO_BINDTODEVICE */
};

/* Closes fd and returns the step's error: the failure path of a set-up sequence. */
#define STEP_FAIL(step)                                                                   \
  do {                                                                                    \
    int err_ = errno;                                                                     \
    close(fd);                                                                            \
    return -(((step) << 16) | err_);                                                      \
  } while (0)

/* Aborts with a message: for broken invariants (programmer errors), never for input. */
#define RL_ASSERT(cond)                                                                   \
  do {                                                                                    \
    if (!(cond)) rl_assert_fail(#cond, __FILE__, __LINE__);                               \
  } while (0)
_Noreturn void rl_assert_fail(const char *what, const char *file, int line);

/* ---- handles.c: the handle table ---- */

/* Slots per table at most (a table may use fewer: slots_max). */
#define HANDLES_SLOTS_MAX 16

/* Invariant: items[i] != NULL exactly while slot i is in use; generation[i] is the
 * generation of the handle that slot hands out (or handed out, while in use). */
struct rl_handles {
  pthread_mutex_t lock;
  int32_t slots_max;
  void *_Atomic items[HANDLES_SLOTS_MAX];
  _Atomic uint32_t generation[HANDLES_SLOTS_MAX];
};
#define RL_HANDLES_INIT(max) {.lock = PTHREAD_MUTEX_INITIALIZER, .slots_max = (max)}

/* Stores item (not NULL) and returns its handle (>= 0), or -EMFILE when all slots are
 * in use. */
int32_t handles_put(struct rl_handles *t, void *item);
/* The item of a live handle, or NULL (never issued, or closed since). */
void *handles_get(struct rl_handles *t, int32_t handle);
/* Removes a live handle and returns its item, or NULL; the handle is dead from now on. */
void *handles_take(struct rl_handles *t, int32_t handle);

/* ---- sock.c: addresses and options ---- */

/* The 16-byte form into a sockaddr (v4-mapped becomes AF_INET). Returns its length. */
socklen_t addr_to_sockaddr(const uint8_t *addr, uint16_t port, uint32_t scope,
                           struct sockaddr_storage *ss);
/* A sockaddr into the 16-byte form. Returns the port, or -1 for another family. */
int sockaddr_to_addr(const struct sockaddr *sa, uint8_t *addr, uint32_t *scope);
int set_int(int fd, int level, int name, int value);

/* ---- udp_batch.c: shared with uring.c ---- */

/* Control space for one received datagram: the original destination (the larger, IPv6,
 * form) and SO_RXQ_OVFL's counter. */
#define RECV_CMSG_BYTES (CMSG_SPACE(sizeof(struct sockaddr_in6)) + CMSG_SPACE(sizeof(uint32_t)))
/* Control space for one sent datagram: the larger pktinfo. */
/* Control space for one sent datagram: the larger pktinfo, and a UDP_SEGMENT size for
 * the first of a GSO run (udp_gso.c). */
#define SEND_CMSG_BYTES (CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(uint16_t)))
/* One received control message into *m (original destination, drop counter): the
 * RL_META_* flag it sets, or 0. */
uint16_t udp_meta_cmsg(struct rl_meta *m, const struct cmsghdr *c);
/* A send entry into a msghdr (name, IP_PKTINFO source, connected), its payload at
 * `payload`. cmsg: SEND_CMSG_BYTES, 8-byte aligned. */
void udp_send_fill(struct msghdr *h, struct iovec *iov, struct sockaddr_storage *name,
                   uint64_t *cmsg, uint8_t *payload, const struct rl_send *s);

/* ---- tcp.c ---- */

/* Closes with SO_LINGER 0: the peer gets a RST. */
void close_with_reset(int fd);

/* ---- pipe_pool.c ---- */

/* Pipes kept for reuse at most (each is two fds; src/relay/tcp.ts counts them in its
 * descriptor budget). */
#define PIPE_POOL_MAX 1024

struct rl_pipe {
  int fd_r;
  int fd_w;
  uint32_t cap; /* capacity in bytes (F_GETPIPE_SZ) */
};

/* Invariant: 0 <= count <= PIPE_POOL_MAX. count is written by the engine thread only
 * and read by JS as a gauge (relaxed atomics: a racy but defined read). */
struct pipe_pool {
  struct rl_pipe *pooled;
  _Atomic int32_t count;
  atomic_int in_use; /* pipes handed out and not yet released */
  int32_t pipe_bytes;  /* the size asked for new pipes (F_SETPIPE_SZ) */
};

/* Returns 0, or -ENOMEM. */
int pipe_pool_init(struct pipe_pool *pool, int32_t pipe_bytes);
/* Closes the pooled pipes (not those in use: their connections close them). */
void pipe_pool_free(struct pipe_pool *pool);
/* A pooled pipe or a new one into *p; returns 0 or -errno (EMFILE, ENFILE...). */
int pipe_acquire(struct pipe_pool *pool, struct rl_pipe *p);
/* Gives p back (pooled when empty and there is room, else closed); p->fd_r < 0 after.
 * A pipe never acquired (fd_r < 0) is left alone. */
void pipe_release(struct pipe_pool *pool, struct rl_pipe *p, int empty);

/* ---- copy_pool.c ---- */

/* Invariant: 0 <= free_count <= count; a buffer is either on the free stack or held by
 * exactly one direction. Only the engine thread takes and gives; in_use (count -
 * free_count) is read by JS as a gauge. count 0: no pool (spliceMode always). */
struct copy_pool {
  uint8_t *slab; /* count * buffer_bytes, mmap'd at engine open */
  uint8_t **free; /* stack of free buffers, most recently given on top */
  int32_t count;
  int32_t free_count;
  uint32_t buffer_bytes;
  atomic_int in_use;
};

/* Makes the slab (count buffers of buffer_bytes; count 0: none). 0 or -errno. */
int copy_pool_init(struct copy_pool *pool, int32_t count, uint32_t buffer_bytes);
void copy_pool_free(struct copy_pool *pool);
/* A free buffer, or NULL when every one is held. */
uint8_t *copy_take(struct copy_pool *pool);
void copy_give(struct copy_pool *pool, uint8_t *buffer);

/* Test-only (rl_test_*_break): makes the next epoll_wait on epfd fail with EINVAL. */
int epoll_break(int epfd);

/* udp_gso.c: sends one socket's prepared messages msgs[0..prepared) (entry[j]: the index
 * in sends of message j), folding runs of one flow into GSO messages when enabled; writes
 * each entry's result and returns how many went. udp_gso_forget: rl_close's hook. */
int32_t udp_send_group(int32_t fd, struct mmsghdr *msgs, struct rl_send *sends,
                       const int32_t *entry, int prepared);
void udp_gso_forget(int32_t fd);

#pragma GCC visibility pop

#endif
