/*
 * relay.c: see relay.h for the contract. Everything here is bounded: batches by
 * RL_BATCH_COUNT_MAX, error-queue drains by the caller's count, pollers by
 * POLLERS_MAX. No function allocates after rl_poll_open().
 */
#define _GNU_SOURCE
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/errqueue.h>
#include <linux/types.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

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

_Static_assert(sizeof(struct rl_meta) == 64, "rl_meta is 64 bytes");
_Static_assert(sizeof(struct rl_send) == 64, "rl_send is 64 bytes");
_Static_assert(offsetof(struct rl_meta, length) == 40, "rl_meta.length at 40");
_Static_assert(offsetof(struct rl_send, result) == 48, "rl_send.result at 48");

/* Failures of rl_udp_socket() carry the step that failed so the caller can say which
 * option was refused (an EPERM on IP_TRANSPARENT means "no CAP_NET_ADMIN").
 * Encoding: -(step << 16 | errno); errno values are < 4096. */
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
  RL_STEP_RXQ_OVFL = 14, /* 13 is rl_tcp_connect's connect() */
};

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int32_t rl_abi_version(void) { return RL_ABI_VERSION; }

int32_t rl_layout_check(int32_t meta_bytes, int32_t send_bytes, int32_t meta_length_offset,
                        int32_t send_result_offset) {
  if (meta_bytes != (int32_t)sizeof(struct rl_meta)) return -EINVAL;
  if (send_bytes != (int32_t)sizeof(struct rl_send)) return -EINVAL;
  if (meta_length_offset != (int32_t)offsetof(struct rl_meta, length)) return -EINVAL;
  if (send_result_offset != (int32_t)offsetof(struct rl_send, result)) return -EINVAL;
  return 0;
}

int32_t rl_raise_nofile(int32_t want) {
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return -errno;
  rlim_t target = (rlim_t)want;
  if (lim.rlim_max != RLIM_INFINITY && target > lim.rlim_max) target = lim.rlim_max;
  if (target > lim.rlim_cur) {
    lim.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) return -errno;
  }
  return (int32_t)(lim.rlim_cur > INT32_MAX ? INT32_MAX : lim.rlim_cur);
}

/* sockaddr <-> 16-byte form. Returns the sockaddr length. */
static socklen_t addr_to_sockaddr(const uint8_t *addr, uint16_t port, uint32_t scope,
                                  struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (memcmp(addr, v4_mapped_prefix, 12) == 0) {
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    memcpy(&sin->sin_addr, addr + 12, 4);
    return sizeof(*sin);
  }
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  sin6->sin6_scope_id = scope;
  memcpy(&sin6->sin6_addr, addr, 16);
  return sizeof(*sin6);
}

/* Returns the port, or -1 for a family we do not handle. */
static int sockaddr_to_addr(const struct sockaddr *sa, uint8_t *addr, uint32_t *scope) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
    memcpy(addr, v4_mapped_prefix, 12);
    memcpy(addr + 12, &sin->sin_addr, 4);
    if (scope) *scope = 0;
    return ntohs(sin->sin_port);
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
    memcpy(addr, &sin6->sin6_addr, 16);
    if (scope) *scope = sin6->sin6_scope_id;
    return ntohs(sin6->sin6_port);
  }
  return -1;
}

static int set_int(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof(value));
}

#define STEP_FAIL(step)                                                                   \
  do {                                                                                    \
    int err_ = errno;                                                                     \
    close(fd);                                                                            \
    return -(((step) << 16) | err_);                                                      \
  } while (0)

int32_t rl_udp_socket(int32_t flags, const uint8_t *addr, int32_t port, int32_t mark,
                      int32_t receive_bytes, int32_t send_bytes) {
  const int v6 = (flags & RL_SOCK_IPV6) != 0;
  const int family = v6 ? AF_INET6 : AF_INET;
  const int type = (flags & RL_SOCK_STREAM) ? SOCK_STREAM : SOCK_DGRAM;
  if (port < 0 || port > 65535) return -((RL_STEP_BIND << 16) | EINVAL);

  int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -((RL_STEP_SOCKET << 16) | errno);

  if (v6 && (flags & RL_SOCK_V6ONLY) && set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1) != 0)
    STEP_FAIL(RL_STEP_V6ONLY);
  if (flags & RL_SOCK_TRANSPARENT) {
    int rc = v6 ? set_int(fd, SOL_IPV6, IPV6_TRANSPARENT, 1)
                : set_int(fd, SOL_IP, IP_TRANSPARENT, 1);
    if (rc != 0) STEP_FAIL(RL_STEP_TRANSPARENT);
  }
  if (flags & RL_SOCK_RECVORIGDST) {
    int rc = v6 ? set_int(fd, SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
                : set_int(fd, SOL_IP, IP_RECVORIGDSTADDR, 1);
    if (rc != 0) STEP_FAIL(RL_STEP_RECVORIGDST);
  }
  if ((flags & RL_SOCK_REUSEADDR) && set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1) != 0)
    STEP_FAIL(RL_STEP_REUSEADDR);
  if ((flags & RL_SOCK_REUSEPORT) && set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1) != 0)
    STEP_FAIL(RL_STEP_REUSEPORT);
  if (flags & RL_SOCK_FREEBIND) {
    int rc = v6 ? set_int(fd, SOL_IPV6, IPV6_FREEBIND, 1) : set_int(fd, SOL_IP, IP_FREEBIND, 1);
    if (rc != 0) STEP_FAIL(RL_STEP_FREEBIND);
  }
  if (flags & RL_SOCK_RECVERR) {
    int rc = v6 ? set_int(fd, SOL_IPV6, IPV6_RECVERR, 1) : set_int(fd, SOL_IP, IP_RECVERR, 1);
    if (rc != 0) STEP_FAIL(RL_STEP_RECVERR);
  }
  if (mark != 0 && set_int(fd, SOL_SOCKET, SO_MARK, mark) != 0) STEP_FAIL(RL_STEP_MARK);
  if ((flags & RL_SOCK_RXQ_OVFL) && set_int(fd, SOL_SOCKET, SO_RXQ_OVFL, 1) != 0)
    STEP_FAIL(RL_STEP_RXQ_OVFL);
  /* SO_*BUFFORCE ignores net.core.[rw]mem_max when we have CAP_NET_ADMIN; fall back to
   * the capped option otherwise. */
  if (receive_bytes > 0 && set_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, receive_bytes) != 0 &&
      set_int(fd, SOL_SOCKET, SO_RCVBUF, receive_bytes) != 0)
    STEP_FAIL(RL_STEP_RCVBUF);
  if (send_bytes > 0 && set_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, send_bytes) != 0 &&
      set_int(fd, SOL_SOCKET, SO_SNDBUF, send_bytes) != 0)
    STEP_FAIL(RL_STEP_SNDBUF);

  struct sockaddr_storage ss;
  socklen_t len;
  if (v6) {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    memset(&ss, 0, sizeof(ss));
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    memcpy(&sin6->sin6_addr, addr, 16);
    len = sizeof(*sin6);
  } else {
    len = addr_to_sockaddr(addr, (uint16_t)port, 0, &ss);
    if (ss.ss_family != AF_INET) {
      close(fd);
      return -((RL_STEP_BIND << 16) | EAFNOSUPPORT);
    }
  }
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) STEP_FAIL(RL_STEP_BIND);
  return fd;
}

int32_t rl_close(int32_t fd) { return close(fd) == 0 ? 0 : -errno; }

int32_t rl_listen(int32_t fd, int32_t backlog) {
  return listen(fd, backlog) == 0 ? 0 : -errno;
}

int32_t rl_local_port(int32_t fd, uint8_t *addr_out) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -errno;
  int port = sockaddr_to_addr((struct sockaddr *)&ss, addr_out, NULL);
  return port < 0 ? -EAFNOSUPPORT : port;
}

/* Control space for one received datagram: the original destination (the larger,
 * IPv6, form). Anything else that arrives sets MSG_CTRUNC and is reported. */
#define RECV_CMSG_BYTES (CMSG_SPACE(sizeof(struct sockaddr_in6)) + CMSG_SPACE(sizeof(uint32_t)))
/* Control space for one sent datagram: the larger pktinfo. */
#define SEND_CMSG_BYTES CMSG_SPACE(sizeof(struct in6_pktinfo))

/* The JS thread (or each worker thread) owns one set; __thread keeps scale-out by
 * Workers safe without locks. Sized once: RL_BATCH_COUNT_MAX entries. */
static __thread struct mmsghdr recv_msgs[RL_BATCH_COUNT_MAX];
static __thread struct iovec recv_iovs[RL_BATCH_COUNT_MAX];
static __thread struct sockaddr_storage recv_names[RL_BATCH_COUNT_MAX];
static __thread uint64_t recv_cmsgs[RL_BATCH_COUNT_MAX][(RECV_CMSG_BYTES + 7) / 8];

static __thread struct mmsghdr send_msgs[RL_BATCH_COUNT_MAX];
static __thread struct iovec send_iovs[RL_BATCH_COUNT_MAX];
static __thread struct sockaddr_storage send_names[RL_BATCH_COUNT_MAX];
static __thread uint64_t send_cmsgs[RL_BATCH_COUNT_MAX][(SEND_CMSG_BYTES + 7) / 8];

int32_t rl_recv_batch(int32_t fd, uint8_t *slab, int32_t slot_bytes, int32_t count,
                      struct rl_meta *meta) {
  if (count <= 0 || count > RL_BATCH_COUNT_MAX || slot_bytes <= 0) return -EINVAL;
  for (int i = 0; i < count; i++) {
    recv_iovs[i].iov_base = slab + (size_t)i * (size_t)slot_bytes;
    recv_iovs[i].iov_len = (size_t)slot_bytes;
    struct msghdr *h = &recv_msgs[i].msg_hdr;
    h->msg_name = &recv_names[i];
    h->msg_namelen = sizeof(recv_names[i]);
    h->msg_iov = &recv_iovs[i];
    h->msg_iovlen = 1;
    h->msg_control = recv_cmsgs[i];
    h->msg_controllen = sizeof(recv_cmsgs[i]);
    h->msg_flags = 0;
    recv_msgs[i].msg_len = 0;
  }
  /* MSG_TRUNC makes msg_len the datagram's real length, so truncation is visible. */
  int n = recvmmsg(fd, recv_msgs, (unsigned)count, MSG_DONTWAIT | MSG_TRUNC, NULL);
  if (n < 0) {
    int err = errno;
    return (err == EAGAIN || err == EWOULDBLOCK) ? 0 : -err;
  }
  for (int i = 0; i < n; i++) {
    struct rl_meta *m = &meta[i];
    struct msghdr *h = &recv_msgs[i].msg_hdr;
    uint32_t wire = recv_msgs[i].msg_len;
    uint16_t flags = 0;
    if ((h->msg_flags & MSG_TRUNC) || wire > (uint32_t)slot_bytes) flags |= RL_META_TRUNCATED;
    if (h->msg_flags & MSG_CTRUNC) flags |= RL_META_CTRUNCATED;
    int sport = sockaddr_to_addr((struct sockaddr *)&recv_names[i], m->source_addr,
                                 &m->source_scope);
    m->source_port = sport < 0 ? 0 : (uint16_t)sport;
    m->target_port = 0;
    m->target_scope = 0;
    m->queue_drops = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
        memcpy(&m->queue_drops, CMSG_DATA(c), sizeof(m->queue_drops));
        flags |= RL_META_HAS_DROPS;
        continue;
      }
      int v4 = c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR;
      int v6 = c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR;
      if (!v4 && !v6) continue;
      int tport = sockaddr_to_addr((struct sockaddr *)CMSG_DATA(c), m->target_addr,
                                   &m->target_scope);
      if (tport >= 0) {
        m->target_port = (uint16_t)tport;
        flags |= RL_META_HAS_ORIGDST;
      }
    }
    m->flags = flags;
    m->length = wire > (uint32_t)slot_bytes ? (uint32_t)slot_bytes : wire;
    m->length_wire = wire;
  }
  return n;
}

int32_t rl_recv_errors(int32_t fd, int32_t count, struct rl_meta *meta) {
  if (count <= 0 || count > RL_BATCH_COUNT_MAX) return -EINVAL;
  int drained = 0;
  for (; drained < count; drained++) {
    struct sockaddr_storage name;
    uint64_t control[64];
    uint8_t scratch[64];
    struct iovec iov = {.iov_base = scratch, .iov_len = sizeof(scratch)};
    struct msghdr h = {.msg_name = &name,
                       .msg_namelen = sizeof(name),
                       .msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = control,
                       .msg_controllen = sizeof(control)};
    if (recvmsg(fd, &h, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      return drained > 0 ? drained : -err;
    }
    struct rl_meta *m = &meta[drained];
    memset(m, 0, sizeof(*m));
    int port = sockaddr_to_addr((struct sockaddr *)&name, m->source_addr, &m->source_scope);
    m->source_port = port < 0 ? 0 : (uint16_t)port;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c != NULL; c = CMSG_NXTHDR(&h, c)) {
      int v4 = c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR;
      int v6 = c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR;
      if (!v4 && !v6) continue;
      struct sock_extended_err ee;
      memcpy(&ee, CMSG_DATA(c), sizeof(ee));
      m->length = ee.ee_errno;
      m->length_wire = ((uint32_t)ee.ee_type << 8) | ee.ee_code;
      const struct sockaddr *off = SO_EE_OFFENDER((struct sock_extended_err *)CMSG_DATA(c));
      if (off->sa_family == AF_INET || off->sa_family == AF_INET6) {
        int oport = sockaddr_to_addr(off, m->target_addr, &m->target_scope);
        m->target_port = oport < 0 ? 0 : (uint16_t)oport;
        m->flags = RL_META_HAS_ORIGDST;
      }
    }
  }
  return drained;
}

/* Fills send_msgs[j] from sends[i]. */
static void send_prepare(uint8_t *slab, struct rl_send *s, int j) {
  struct msghdr *h = &send_msgs[j].msg_hdr;
  send_iovs[j].iov_base = slab + s->offset;
  send_iovs[j].iov_len = s->length;
  h->msg_name = &send_names[j];
  h->msg_namelen = addr_to_sockaddr(s->target_addr, s->target_port, s->target_scope,
                                    &send_names[j]);
  h->msg_iov = &send_iovs[j];
  h->msg_iovlen = 1;
  h->msg_flags = 0;
  h->msg_control = NULL;
  h->msg_controllen = 0;
  if (s->flags & RL_SEND_SOURCE) {
    h->msg_control = send_cmsgs[j];
    struct cmsghdr *c = (struct cmsghdr *)send_cmsgs[j];
    if (send_names[j].ss_family == AF_INET) {
      struct in_pktinfo info;
      memset(&info, 0, sizeof(info));
      memcpy(&info.ipi_spec_dst, s->source_addr + 12, 4);
      c->cmsg_level = SOL_IP;
      c->cmsg_type = IP_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(info));
      memcpy(CMSG_DATA(c), &info, sizeof(info));
      h->msg_controllen = CMSG_SPACE(sizeof(info));
    } else {
      struct in6_pktinfo info;
      memset(&info, 0, sizeof(info));
      memcpy(&info.ipi6_addr, s->source_addr, 16);
      c->cmsg_level = SOL_IPV6;
      c->cmsg_type = IPV6_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(info));
      memcpy(CMSG_DATA(c), &info, sizeof(info));
      h->msg_controllen = CMSG_SPACE(sizeof(info));
    }
  }
  send_msgs[j].msg_len = 0;
}

int32_t rl_send_batch(uint8_t *slab, struct rl_send *sends, int32_t count) {
  if (count < 0 || count > RL_BATCH_COUNT_MAX) return -EINVAL;
  int32_t sent = 0;
  int run_start = 0;
  while (run_start < count) {
    /* A run: consecutive entries on the same socket, one sendmmsg each try. */
    const int fd = sends[run_start].fd;
    int run_end = run_start + 1;
    while (run_end < count && sends[run_end].fd == fd) run_end++;
    const int run_count = run_end - run_start;
    for (int j = 0; j < run_count; j++) send_prepare(slab, &sends[run_start + j], j);
    /* Each pass sends at least one datagram or fails exactly one, so the loop ends
     * after at most run_count passes. */
    int done = 0;
    while (done < run_count) {
      int k = sendmmsg(fd, send_msgs + done, (unsigned)(run_count - done), MSG_DONTWAIT);
      if (k > 0) {
        for (int j = done; j < done + k; j++)
          sends[run_start + j].result = (int32_t)send_msgs[j].msg_len;
        sent += k;
        done += k;
      } else {
        /* The first datagram of the rest failed: record it, skip it, go on. */
        sends[run_start + done].result = k < 0 ? -errno : -EIO;
        done += 1;
      }
    }
    run_start = run_end;
  }
  return sent;
}

int32_t rl_original_dst(int32_t fd, uint8_t *addr_out) {
  struct sockaddr_storage local;
  socklen_t len = sizeof(local);
  if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) return -errno;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  len = sizeof(ss);
  int rc;
  if (local.ss_family == AF_INET6)
    rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &ss, &len);
  else
    rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &ss, &len);
  if (rc != 0) return -errno;
  int port = sockaddr_to_addr((struct sockaddr *)&ss, addr_out, NULL);
  return port < 0 ? -EAFNOSUPPORT : port;
}

/* ---- The epoll thread ----
 *
 * The thread pushes every ready socket's token into a single-producer/single-consumer
 * ring and calls the JS callback only when JS said it is going idle (`sleeping`). Under
 * load one callback carries many sockets, and JS handles them in one round (one
 * sendmmsg for all their replies) instead of one hop per socket. Sockets are armed
 * EPOLLIN|EPOLLONESHOT, so a token is in the ring at most once until JS re-arms it:
 * the ring never holds more than the registered sockets.
 */

#define POLLERS_MAX 8
#define POLL_EVENTS_MAX 64
#define POLL_STOP_TOKEN UINT64_MAX
#define POLL_ERROR_FLAG 0x40000000u

struct poller {
  int epfd;
  int stopfd;
  int started;
  pthread_t thread;
  rl_wake_fn wake;
  uint32_t *ring;
  uint32_t ring_mask;
  _Atomic uint32_t head; /* next to take (JS) */
  _Atomic uint32_t tail; /* next to fill (thread) */
  atomic_int sleeping;   /* 1: JS waits for a wake call */
  int level_triggered;   /* inline mode: no EPOLLONESHOT, no re-arm syscalls */
  atomic_uint wakes;
  atomic_uint events;
  atomic_uint overflows;
};

static struct poller pollers[POLLERS_MAX];
static pthread_mutex_t pollers_lock = PTHREAD_MUTEX_INITIALIZER;
static int pollers_used[POLLERS_MAX];

int32_t rl_poll_open(int32_t tokens_max) {
  if (tokens_max <= 0 || tokens_max > (1 << 24)) return -EINVAL;
  /* Room for every registered socket once, plus the stray duplicates a direct drain
   * (the JS timer's) can add, rounded to a power of two. */
  uint32_t ring_size = 1024;
  while (ring_size < (uint32_t)tokens_max * 2u + 1024u) ring_size *= 2;
  uint32_t *ring = calloc(ring_size, sizeof(uint32_t));
  if (ring == NULL) return -ENOMEM;
  pthread_mutex_lock(&pollers_lock);
  int index = -1;
  for (int i = 0; i < POLLERS_MAX; i++) {
    if (!pollers_used[i]) {
      index = i;
      break;
    }
  }
  int err = 0;
  struct poller *p = index >= 0 ? &pollers[index] : NULL;
  if (p == NULL) {
    err = EMFILE;
  } else {
    memset(p, 0, sizeof(*p));
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) err = errno;
  }
  if (err == 0) {
    p->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->stopfd < 0) {
      err = errno;
      close(p->epfd);
    }
  }
  if (err == 0) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = POLL_STOP_TOKEN};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->stopfd, &ev) != 0) {
      err = errno;
      close(p->stopfd);
      close(p->epfd);
    }
  }
  if (err != 0) {
    pthread_mutex_unlock(&pollers_lock);
    free(ring);
    return -err;
  }
  p->ring = ring;
  p->ring_mask = ring_size - 1;
  atomic_store(&p->sleeping, 1);
  pollers_used[index] = 1;
  pthread_mutex_unlock(&pollers_lock);
  return index;
}

static struct poller *poller_get(int32_t index) {
  if (index < 0 || index >= POLLERS_MAX || !pollers_used[index]) return NULL;
  return &pollers[index];
}

static int32_t poll_ctl(int32_t index, int op, int32_t fd, int32_t token) {
  struct poller *p = poller_get(index);
  if (p == NULL) return -EBADF;
  uint32_t events = p->level_triggered ? EPOLLIN : EPOLLIN | EPOLLONESHOT;
  struct epoll_event ev = {.events = events, .data.u64 = (uint32_t)token};
  return epoll_ctl(p->epfd, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev) == 0 ? 0 : -errno;
}

int32_t rl_poll_level_triggered(int32_t index) {
  struct poller *p = poller_get(index);
  if (p == NULL) return -EBADF;
  if (p->started) return -EBUSY; /* the epoll thread relies on EPOLLONESHOT */
  p->level_triggered = 1;
  return 0;
}

int32_t rl_poll_add(int32_t poller, int32_t fd, int32_t token) {
  return poll_ctl(poller, EPOLL_CTL_ADD, fd, token);
}
int32_t rl_poll_rearm(int32_t poller, int32_t fd, int32_t token) {
  return poll_ctl(poller, EPOLL_CTL_MOD, fd, token);
}
int32_t rl_poll_del(int32_t poller, int32_t fd) { return poll_ctl(poller, EPOLL_CTL_DEL, fd, 0); }

/* Pushes ready events into the ring; returns how many, or -1 on the stop token. */
static int poll_push(struct poller *p, const struct epoll_event *events, int n) {
  int pushed = 0;
  uint32_t tail = atomic_load_explicit(&p->tail, memory_order_relaxed);
  const uint32_t head = atomic_load_explicit(&p->head, memory_order_acquire);
  for (int i = 0; i < n; i++) {
    if (events[i].data.u64 == POLL_STOP_TOKEN) return -1;
    /* Bit 30 tells JS that EPOLLERR is set (an ICMP error is queued). */
    uint32_t token = (uint32_t)events[i].data.u64;
    if (events[i].events & EPOLLERR) token |= POLL_ERROR_FLAG;
    if (tail - head > p->ring_mask) {
      /* Cannot happen while the ring holds 2x the sockets; counted, never silent. */
      atomic_fetch_add_explicit(&p->overflows, 1, memory_order_relaxed);
      continue;
    }
    p->ring[tail & p->ring_mask] = token;
    tail++;
    pushed++;
  }
  atomic_store_explicit(&p->tail, tail, memory_order_release);
  atomic_fetch_add_explicit(&p->events, (unsigned)pushed, memory_order_relaxed);
  return pushed;
}

static void *poll_main(void *arg) {
  struct poller *p = arg;
  struct epoll_event events[POLL_EVENTS_MAX];
  for (;;) {
    int n = epoll_wait(p->epfd, events, POLL_EVENTS_MAX, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return NULL; /* EBADF/EINVAL: the poller is being torn down */
    }
    int pushed = poll_push(p, events, n);
    if (pushed < 0) return NULL;
    if (pushed > 0 && atomic_exchange(&p->sleeping, 0) == 1) {
      atomic_fetch_add_explicit(&p->wakes, 1, memory_order_relaxed);
      p->wake(pushed);
    }
  }
}

int32_t rl_poll_wait(int32_t index, int32_t timeout_ms) {
  struct poller *p = poller_get(index);
  if (p == NULL) return -EBADF;
  if (p->started) return -EBUSY; /* the thread owns epoll_wait */
  struct epoll_event events[POLL_EVENTS_MAX];
  int n = epoll_wait(p->epfd, events, POLL_EVENTS_MAX, timeout_ms);
  if (n < 0) return errno == EINTR ? 0 : -errno;
  atomic_fetch_add_explicit(&p->wakes, 1, memory_order_relaxed);
  int pushed = poll_push(p, events, n);
  return pushed < 0 ? -ECANCELED : pushed;
}

int32_t rl_poll_take(int32_t index, uint32_t *out, int32_t count) {
  struct poller *p = poller_get(index);
  if (p == NULL || count <= 0) return -EINVAL;
  const uint32_t head = atomic_load_explicit(&p->head, memory_order_relaxed);
  const uint32_t tail = atomic_load_explicit(&p->tail, memory_order_acquire);
  uint32_t n = tail - head;
  if (n > (uint32_t)count) n = (uint32_t)count;
  for (uint32_t i = 0; i < n; i++) out[i] = p->ring[(head + i) & p->ring_mask];
  atomic_store_explicit(&p->head, head + n, memory_order_release);
  return (int32_t)n;
}

int32_t rl_poll_sleep(int32_t index) {
  struct poller *p = poller_get(index);
  if (p == NULL) return -EBADF;
  atomic_store(&p->sleeping, 1);
  /* A token pushed before the flag was seen: take the flag back and go on, unless the
   * thread already took it (then its wake call is on the way). */
  if (atomic_load(&p->tail) != atomic_load(&p->head) && atomic_exchange(&p->sleeping, 0) == 1) {
    return 1;
  }
  return 0;
}

int32_t rl_poll_start(int32_t index, rl_wake_fn wake) {
  struct poller *p = poller_get(index);
  if (p == NULL || wake == NULL) return -EINVAL;
  if (p->started) return -EALREADY;
  p->wake = wake;
  int rc = pthread_create(&p->thread, NULL, poll_main, p);
  if (rc != 0) return -rc;
  p->started = 1;
  return 0;
}

int32_t rl_poll_stop(int32_t index) {
  struct poller *p = poller_get(index);
  if (p == NULL) return -EBADF;
  if (p->started) {
    uint64_t one = 1;
    if (write(p->stopfd, &one, sizeof(one)) != sizeof(one)) return -errno;
    pthread_join(p->thread, NULL);
    p->started = 0;
  }
  close(p->stopfd);
  close(p->epfd);
  free(p->ring);
  p->ring = NULL;
  pthread_mutex_lock(&pollers_lock);
  pollers_used[index] = 0;
  pthread_mutex_unlock(&pollers_lock);
  return 0;
}

int32_t rl_poll_stat(int32_t index, int32_t which) {
  struct poller *p = poller_get(index);
  if (p == NULL) return -EBADF;
  unsigned v;
  switch (which) {
    case 0: v = atomic_load_explicit(&p->wakes, memory_order_relaxed); break;
    case 1: v = atomic_load_explicit(&p->events, memory_order_relaxed); break;
    case 2: v = atomic_load_explicit(&p->overflows, memory_order_relaxed); break;
    default: return -EINVAL;
  }
  return (int32_t)(v & 0x7fffffff);
}

/* ---- TCP (see relay.h): accept, connect, and the splice engine ---- */

#include <netinet/tcp.h>
#include <stdlib.h>
#include <time.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

_Static_assert(sizeof(struct rl_tcp_event) == 40, "rl_tcp_event is 40 bytes");
_Static_assert(offsetof(struct rl_tcp_event, connect_ms) == 32, "rl_tcp_event.connect_ms at 32");
_Static_assert(offsetof(struct rl_tcp_event, error) == 8, "rl_tcp_event.error at 8");
_Static_assert(offsetof(struct rl_tcp_event, bytes_up) == 16, "rl_tcp_event.bytes_up at 16");

/* rl_tcp_connect() failure step for connect() itself (after RL_STEP_BIND = 12). */
#define TCP_STEP_CONNECT 13

int32_t rl_tcp_accept(int32_t listener_fd, struct rl_meta *meta) {
  struct sockaddr_storage peer;
  socklen_t peer_len = sizeof(peer);
  int fd = accept4(listener_fd, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return -(err == EWOULDBLOCK ? EAGAIN : err);
  }
  memset(meta, 0, sizeof(*meta));
  struct sockaddr_storage local;
  socklen_t local_len = sizeof(local);
  if (getsockname(fd, (struct sockaddr *)&local, &local_len) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  int sport = sockaddr_to_addr((struct sockaddr *)&peer, meta->source_addr, &meta->source_scope);
  int tport = sockaddr_to_addr((struct sockaddr *)&local, meta->target_addr, &meta->target_scope);
  if (sport < 0 || tport < 0) {
    close(fd);
    return -EAFNOSUPPORT;
  }
  meta->source_port = (uint16_t)sport;
  meta->target_port = (uint16_t)tport;
  meta->flags = RL_META_HAS_ORIGDST;
  /* The relay adds no delay of its own: each side's writes keep their timing. */
  (void)set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  return fd;
}

int32_t rl_tcp_connect(const uint8_t *target_addr, int32_t target_port, int32_t target_scope,
                       const uint8_t *source_addr, int32_t flags, int32_t mark) {
  if (target_port <= 0 || target_port > 65535) return -((TCP_STEP_CONNECT << 16) | EINVAL);
  struct sockaddr_storage target;
  socklen_t target_len =
      addr_to_sockaddr(target_addr, (uint16_t)target_port, (uint32_t)target_scope, &target);
  const int v6 = target.ss_family == AF_INET6;
  int fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -((RL_STEP_SOCKET << 16) | errno);
  if (flags & RL_TCP_TRANSPARENT) {
    int rc = v6 ? set_int(fd, SOL_IPV6, IPV6_TRANSPARENT, 1)
                : set_int(fd, SOL_IP, IP_TRANSPARENT, 1);
    if (rc != 0) STEP_FAIL(RL_STEP_TRANSPARENT);
  }
  if (mark != 0 && set_int(fd, SOL_SOCKET, SO_MARK, mark) != 0) STEP_FAIL(RL_STEP_MARK);
  if ((flags & RL_SOCK_RXQ_OVFL) && set_int(fd, SOL_SOCKET, SO_RXQ_OVFL, 1) != 0)
    STEP_FAIL(RL_STEP_RXQ_OVFL);
  (void)set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  if (flags & RL_TCP_SOURCE_BIND) {
    struct sockaddr_storage source;
    socklen_t source_len = addr_to_sockaddr(source_addr, 0, 0, &source);
    if (source.ss_family != target.ss_family) {
      close(fd);
      return -((RL_STEP_BIND << 16) | EAFNOSUPPORT);
    }
    /* The port is chosen at connect() with the whole 4-tuple known, so one source
     * address can carry more than 64k connections to different targets. */
    (void)set_int(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1);
    if (bind(fd, (struct sockaddr *)&source, source_len) != 0) STEP_FAIL(RL_STEP_BIND);
  }
  if (connect(fd, (struct sockaddr *)&target, target_len) != 0 && errno != EINPROGRESS)
    STEP_FAIL(TCP_STEP_CONNECT);
  return fd;
}

static void close_with_reset(int fd) {
  struct linger lin = {.l_onoff = 1, .l_linger = 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
  close(fd);
}

int32_t rl_tcp_abort(int32_t fd) {
  if (fd < 0) return -EBADF;
  close_with_reset(fd);
  return 0;
}

#define TCP_ENGINES_MAX 4
/* Pump rounds (each: splice in + splice out, both directions) one connection gets per
 * turn; with more work left it goes to the back of the ready queue (fairness). */
#define TCP_ROUNDS_MAX 16
#define TCP_EPOLL_EVENTS_MAX 256
/* Timeout sweeps run at most this far apart (and at least 10 ms apart). */
#define TCP_SWEEP_MS_MAX 250
#define TCP_SWEEP_MS_MIN 10
/* Pipes kept for reuse at most (each is two fds). */
#define TCP_PIPE_POOL_MAX 1024
#define TCP_CMD_TOKEN UINT64_MAX

enum tcp_state { TCP_FREE = 0, TCP_CONNECTING = 1, TCP_OPEN = 2 };

/* One direction: source socket -> pipe -> target socket.
 * Invariant: 0 <= used <= cap; dst_shut implies src_eof and used == 0. */
struct tcp_dir {
  int pipe_r;
  int pipe_w;
  uint32_t used; /* bytes in the pipe: read from the source, not yet delivered */
  uint32_t cap;  /* pipe capacity (F_GETPIPE_SZ) */
  uint8_t src_eof;
  uint8_t dst_shut;
  uint64_t bytes; /* delivered to the target */
};

struct tcp_conn {
  int32_t state;
  int fd[2]; /* 0: client, 1: upstream */
  struct tcp_dir dir[2]; /* 0: client -> upstream, 1: upstream -> client */
  int64_t start_ms;
  int64_t active_ms;
  uint32_t connect_ms; /* UINT32_MAX until connected */
  /* Edge-triggered readiness per socket, set by epoll events and cleared by EAGAIN, so
   * a pump does not spend syscalls on a side that has nothing to give or take. */
  uint8_t readable[2];
  uint8_t writable[2];
  uint8_t queued; /* in the ready queue exactly once while set */
};

struct tcp_cmd {
  int32_t id;
  int32_t client_fd;
  int32_t upstream_fd;
};

struct tcp_engine {
  int epfd;
  int cmdfd; /* JS -> engine: commands wait */
  int evfd;  /* engine -> JS: events wait */
  pthread_t thread;
  int started;
  int32_t slots;
  int32_t pipe_bytes;
  int32_t connect_timeout_ms;
  int32_t idle_timeout_ms;
  int32_t sweep_ms;
  struct tcp_conn *conns;
  /* Guarded by lock: the command ring (JS -> engine) and the event ring (engine -> JS). */
  pthread_mutex_t lock;
  struct tcp_cmd *cmds;
  int32_t cmd_head;
  int32_t cmd_count; /* <= slots: one add per free id */
  struct rl_tcp_event *events;
  int32_t ev_head;
  int32_t ev_count;
  int32_t ev_cap; /* slots: one event per id, ids reused after it is read */
  atomic_int abort_all;
  atomic_int stop;
  /* Engine thread only. */
  int *pool; /* pooled pipes: read fd, write fd, capacity (3 ints each) */
  int32_t pool_count;
  int32_t *ready; /* ring of ids */
  int32_t ready_head;
  int32_t ready_count;
  /* Read by JS at any time. */
  _Atomic uint64_t bytes_up;
  _Atomic uint64_t bytes_down;
  atomic_int open_count;
  atomic_int pipes_in_use;
  atomic_int events_lost;
};

static struct tcp_engine *tcp_engines[TCP_ENGINES_MAX];
static pthread_mutex_t tcp_engines_lock = PTHREAD_MUTEX_INITIALIZER;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct tcp_engine *engine_get(int32_t index) {
  if (index < 0 || index >= TCP_ENGINES_MAX) return NULL;
  return tcp_engines[index];
}

static uint32_t clamp_ms(int64_t ms) {
  return (uint32_t)(ms < 0 ? 0 : ms >= UINT32_MAX ? UINT32_MAX - 1 : ms);
}

static void engine_push_event(struct tcp_engine *e, uint32_t id, uint16_t kind, uint16_t reason,
                              int32_t error, int64_t duration_ms, uint64_t up, uint64_t down,
                              uint32_t connect_ms) {
  pthread_mutex_lock(&e->lock);
  int was_empty = e->ev_count == 0;
  if (e->ev_count == e->ev_cap) {
    atomic_fetch_add(&e->events_lost, 1);
    pthread_mutex_unlock(&e->lock);
    return;
  }
  struct rl_tcp_event *ev = &e->events[(e->ev_head + e->ev_count) % e->ev_cap];
  ev->id = id;
  ev->kind = kind;
  ev->reason = reason;
  ev->error = error;
  ev->duration_ms = clamp_ms(duration_ms);
  ev->connect_ms = connect_ms;
  ev->reserved = 0;
  ev->bytes_up = (double)up;
  ev->bytes_down = (double)down;
  e->ev_count++;
  pthread_mutex_unlock(&e->lock);
  if (was_empty) {
    uint64_t one = 1;
    (void)!write(e->evfd, &one, sizeof(one));
  }
}

/* A pipe from the pool or a new one; returns 0 or -errno. */
static int pipe_acquire(struct tcp_engine *e, struct tcp_dir *d) {
  if (e->pool_count > 0) {
    e->pool_count--;
    d->pipe_r = e->pool[e->pool_count * 3];
    d->pipe_w = e->pool[e->pool_count * 3 + 1];
    d->cap = (uint32_t)e->pool[e->pool_count * 3 + 2];
  } else {
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return -errno;
    /* Best effort: without the privilege for larger pipes the default (64 KiB) stays. */
    (void)fcntl(p[1], F_SETPIPE_SZ, e->pipe_bytes);
    d->pipe_r = p[0];
    d->pipe_w = p[1];
    int cap = fcntl(d->pipe_w, F_GETPIPE_SZ);
    d->cap = cap > 0 ? (uint32_t)cap : 65536u;
  }
  d->used = 0;
  atomic_fetch_add(&e->pipes_in_use, 1);
  return 0;
}

static void pipe_release(struct tcp_engine *e, struct tcp_dir *d) {
  if (d->pipe_r < 0) return;
  /* Only an empty pipe is reusable; one holding bytes of a reset connection is closed. */
  if (d->used == 0 && e->pool_count < TCP_PIPE_POOL_MAX) {
    e->pool[e->pool_count * 3] = d->pipe_r;
    e->pool[e->pool_count * 3 + 1] = d->pipe_w;
    e->pool[e->pool_count * 3 + 2] = (int)d->cap;
    e->pool_count++;
  } else {
    close(d->pipe_r);
    close(d->pipe_w);
  }
  d->pipe_r = d->pipe_w = -1;
  atomic_fetch_sub(&e->pipes_in_use, 1);
}

/* Ends a connection: RST where the reason calls for it, FIN (plain close) elsewhere. */
static void conn_end(struct tcp_engine *e, int32_t id, uint16_t reason, int32_t error,
                     int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  if (c->state == TCP_FREE) return;
  int reset_client = 0;
  int reset_upstream = 0;
  switch (reason) {
  case RL_TCP_END_CLOSED: break;
  case RL_TCP_END_CLIENT_RESET: reset_upstream = 1; break;
  case RL_TCP_END_UPSTREAM_RESET: reset_client = 1; break;
  case RL_TCP_END_CONNECT_REFUSED:
  case RL_TCP_END_CONNECT_TIMEOUT:
  case RL_TCP_END_CONNECT_FAILED: reset_client = 1; break;
  default: reset_client = reset_upstream = 1; break;
  }
  if (reset_client) close_with_reset(c->fd[0]);
  else close(c->fd[0]);
  if (reset_upstream) close_with_reset(c->fd[1]);
  else close(c->fd[1]);
  c->fd[0] = c->fd[1] = -1;
  pipe_release(e, &c->dir[0]);
  pipe_release(e, &c->dir[1]);
  c->state = TCP_FREE;
  atomic_fetch_sub(&e->open_count, 1);
  engine_push_event(e, (uint32_t)id, RL_TCP_EVENT_CLOSED, reason, error, now - c->start_ms,
                    c->dir[0].bytes, c->dir[1].bytes, c->connect_ms);
}

static void conn_queue(struct tcp_engine *e, int32_t id) {
  struct tcp_conn *c = &e->conns[id];
  if (c->queued) return;
  c->queued = 1;
  e->ready[(e->ready_head + e->ready_count) % e->slots] = id;
  e->ready_count++;
}

/* One step of one direction. Returns 1 on progress, 0 without, -1 when the connection
 * ended (the failing side decides the reason). */
static int dir_step(struct tcp_engine *e, int32_t id, int d, int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  struct tcp_dir *dir = &c->dir[d];
  const int src = c->fd[d];
  const int dst = c->fd[1 - d];
  int progress = 0;
  if (!dir->src_eof && dir->used < dir->cap && c->readable[d]) {
    ssize_t n = splice(src, NULL, dir->pipe_w, NULL, dir->cap - dir->used,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      dir->used += (uint32_t)n;
      progress = 1;
    } else if (n == 0) {
      dir->src_eof = 1;
      progress = 1;
    } else if (errno == EAGAIN) {
      /* With bytes in the pipe, EAGAIN may mean "pipe slots full" rather than "socket
       * empty": keep the flag, the next round retries once the pipe drained. */
      if (dir->used == 0) c->readable[d] = 0;
    } else if (errno != EINTR) {
      int err = errno;
      conn_end(e, id, d == 0 ? RL_TCP_END_CLIENT_RESET : RL_TCP_END_UPSTREAM_RESET, err, now);
      return -1;
    }
  }
  if (dir->used > 0 && c->writable[1 - d]) {
    ssize_t n = splice(dir->pipe_r, NULL, dst, NULL, dir->used, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      dir->used -= (uint32_t)n;
      dir->bytes += (uint64_t)n;
      atomic_fetch_add_explicit(d == 0 ? &e->bytes_up : &e->bytes_down, (uint64_t)n,
                                memory_order_relaxed);
      progress = 1;
    } else if (n < 0 && errno == EAGAIN) {
      c->writable[1 - d] = 0;
    } else if (n < 0 && errno != EINTR) {
      int err = errno;
      conn_end(e, id, d == 0 ? RL_TCP_END_UPSTREAM_RESET : RL_TCP_END_CLIENT_RESET, err, now);
      return -1;
    }
  }
  if (dir->src_eof && dir->used == 0 && !dir->dst_shut) {
    /* Half-close: the source's FIN goes on once every byte before it has. */
    if (shutdown(dst, SHUT_WR) != 0 && errno != ENOTCONN) {
      int err = errno;
      conn_end(e, id, d == 0 ? RL_TCP_END_UPSTREAM_RESET : RL_TCP_END_CLIENT_RESET, err, now);
      return -1;
    }
    dir->dst_shut = 1;
    progress = 1;
  }
  return progress;
}

static void conn_pump(struct tcp_engine *e, int32_t id, int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  if (c->state != TCP_OPEN) return;
  int round = 0;
  for (; round < TCP_ROUNDS_MAX; round++) {
    int progress = 0;
    for (int d = 0; d < 2; d++) {
      int r = dir_step(e, id, d, now);
      if (r < 0) return;
      progress |= r;
    }
    if (!progress) break;
    c->active_ms = now;
  }
  if (c->dir[0].dst_shut && c->dir[1].dst_shut) {
    conn_end(e, id, RL_TCP_END_CLOSED, 0, now);
    return;
  }
  if (round == TCP_ROUNDS_MAX) conn_queue(e, id);
}

static int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

static void conn_event(struct tcp_engine *e, int32_t id, int side, uint32_t events, int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  if (c->state == TCP_FREE) return; /* a late event of a connection ended in this batch */
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->readable[side] = 1;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->writable[side] = 1;
  if (c->state == TCP_CONNECTING) {
    if (side != 1 || !(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = socket_error(c->fd[1]);
    if (err == 0 && (events & (EPOLLERR | EPOLLHUP))) err = ECONNREFUSED;
    if (err != 0) {
      uint16_t reason = err == ECONNREFUSED ? RL_TCP_END_CONNECT_REFUSED
                        : err == ETIMEDOUT  ? RL_TCP_END_CONNECT_TIMEOUT
                                            : RL_TCP_END_CONNECT_FAILED;
      conn_end(e, id, reason, err, now);
      return;
    }
    c->state = TCP_OPEN;
    c->active_ms = now;
    c->connect_ms = clamp_ms(now - c->start_ms);
  } else if (events & EPOLLERR) {
    int err = socket_error(c->fd[side]);
    if (err != 0) {
      conn_end(e, id, side == 0 ? RL_TCP_END_CLIENT_RESET : RL_TCP_END_UPSTREAM_RESET, err, now);
      return;
    }
  }
  conn_pump(e, id, now);
}

static void conn_add(struct tcp_engine *e, const struct tcp_cmd *cmd, int64_t now) {
  struct tcp_conn *c = &e->conns[cmd->id];
  if (c->state != TCP_FREE) {
    /* The caller reused a busy id: a bookkeeping bug on its side. Refuse the pair. */
    close_with_reset(cmd->client_fd);
    close_with_reset(cmd->upstream_fd);
    atomic_fetch_add(&e->events_lost, 1);
    return;
  }
  c->state = TCP_CONNECTING;
  c->fd[0] = cmd->client_fd;
  c->fd[1] = cmd->upstream_fd;
  c->start_ms = c->active_ms = now;
  c->connect_ms = UINT32_MAX;
  /* epoll reports the current state on ADD (edge-triggered too); start optimistic. */
  c->readable[0] = c->readable[1] = 1;
  c->writable[0] = c->writable[1] = 1;
  for (int d = 0; d < 2; d++) {
    c->dir[d] = (struct tcp_dir){.pipe_r = -1, .pipe_w = -1};
  }
  atomic_fetch_add(&e->open_count, 1);
  for (int d = 0; d < 2; d++) {
    int rc = pipe_acquire(e, &c->dir[d]);
    if (rc < 0) {
      conn_end(e, cmd->id, RL_TCP_END_RESOURCES, -rc, now);
      return;
    }
  }
  for (int side = 0; side < 2; side++) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.u64 = ((uint64_t)cmd->id << 1) | (uint64_t)side};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, c->fd[side], &ev) != 0) {
      conn_end(e, cmd->id, RL_TCP_END_RESOURCES, errno, now);
      return;
    }
  }
}

static void engine_commands(struct tcp_engine *e, int64_t now) {
  uint64_t count;
  (void)!read(e->cmdfd, &count, sizeof(count));
  /* Bounded: at most slots commands can wait (one per free id). */
  for (;;) {
    pthread_mutex_lock(&e->lock);
    if (e->cmd_count == 0) {
      pthread_mutex_unlock(&e->lock);
      break;
    }
    struct tcp_cmd cmd = e->cmds[e->cmd_head];
    e->cmd_head = (e->cmd_head + 1) % e->slots;
    e->cmd_count--;
    pthread_mutex_unlock(&e->lock);
    conn_add(e, &cmd, now);
  }
  if (atomic_exchange(&e->abort_all, 0)) {
    for (int32_t id = 0; id < e->slots; id++) conn_end(e, id, RL_TCP_END_ABORTED, 0, now);
  }
}

static void engine_sweep(struct tcp_engine *e, int64_t now) {
  for (int32_t id = 0; id < e->slots; id++) {
    struct tcp_conn *c = &e->conns[id];
    if (c->state == TCP_CONNECTING && now - c->start_ms >= e->connect_timeout_ms) {
      conn_end(e, id, RL_TCP_END_CONNECT_TIMEOUT, ETIMEDOUT, now);
    } else if (c->state == TCP_OPEN && e->idle_timeout_ms > 0 &&
               now - c->active_ms >= e->idle_timeout_ms) {
      conn_end(e, id, RL_TCP_END_IDLE_TIMEOUT, ETIMEDOUT, now);
    }
  }
}

static void *engine_main(void *arg) {
  struct tcp_engine *e = arg;
  struct epoll_event events[TCP_EPOLL_EVENTS_MAX];
  int64_t next_sweep = now_ms() + e->sweep_ms;
  while (!atomic_load(&e->stop)) {
    int64_t before = now_ms();
    int timeout = e->ready_count > 0 ? 0 : (int)(next_sweep > before ? next_sweep - before : 0);
    int n = epoll_wait(e->epfd, events, TCP_EPOLL_EVENTS_MAX, timeout);
    if (n < 0 && errno != EINTR) break;
    int64_t now = now_ms();
    for (int i = 0; i < n; i++) {
      uint64_t token = events[i].data.u64;
      if (token == TCP_CMD_TOKEN) {
        engine_commands(e, now);
        continue;
      }
      conn_event(e, (int32_t)(token >> 1), (int)(token & 1), events[i].events, now);
    }
    /* Connections that used their rounds: one more turn each, in order. */
    int32_t queued = e->ready_count;
    for (int32_t k = 0; k < queued; k++) {
      int32_t id = e->ready[e->ready_head];
      e->ready_head = (e->ready_head + 1) % e->slots;
      e->ready_count--;
      e->conns[id].queued = 0;
      conn_pump(e, id, now);
    }
    if (now >= next_sweep) {
      engine_sweep(e, now);
      next_sweep = now + e->sweep_ms;
    }
  }
  return NULL;
}

static void engine_free(struct tcp_engine *e) {
  if (e->epfd >= 0) close(e->epfd);
  if (e->cmdfd >= 0) close(e->cmdfd);
  if (e->evfd >= 0) close(e->evfd);
  for (int32_t i = 0; i < e->pool_count; i++) {
    close(e->pool[i * 3]);
    close(e->pool[i * 3 + 1]);
  }
  pthread_mutex_destroy(&e->lock);
  free(e->conns);
  free(e->cmds);
  free(e->events);
  free(e->pool);
  free(e->ready);
  free(e);
}

int32_t rl_tcp_engine_open(int32_t slots, int32_t pipe_bytes, int32_t connect_timeout_ms,
                           int32_t idle_timeout_ms) {
  if (slots <= 0 || slots > (1 << 24) || pipe_bytes < 4096 || connect_timeout_ms <= 0 ||
      idle_timeout_ms < 0)
    return -EINVAL;
  struct tcp_engine *e = calloc(1, sizeof(*e));
  if (e == NULL) return -ENOMEM;
  e->epfd = e->cmdfd = e->evfd = -1;
  pthread_mutex_init(&e->lock, NULL);
  e->slots = slots;
  e->pipe_bytes = pipe_bytes;
  e->connect_timeout_ms = connect_timeout_ms;
  e->idle_timeout_ms = idle_timeout_ms;
  int32_t sweep = TCP_SWEEP_MS_MAX;
  if (connect_timeout_ms / 4 < sweep) sweep = connect_timeout_ms / 4;
  if (idle_timeout_ms > 0 && idle_timeout_ms / 4 < sweep) sweep = idle_timeout_ms / 4;
  e->sweep_ms = sweep < TCP_SWEEP_MS_MIN ? TCP_SWEEP_MS_MIN : sweep;
  e->ev_cap = slots;
  e->conns = calloc((size_t)slots, sizeof(*e->conns));
  e->cmds = calloc((size_t)slots, sizeof(*e->cmds));
  e->events = calloc((size_t)e->ev_cap, sizeof(*e->events));
  e->pool = calloc(TCP_PIPE_POOL_MAX * 3, sizeof(int));
  e->ready = calloc((size_t)slots, sizeof(int32_t));
  int err = ENOMEM;
  if (!e->conns || !e->cmds || !e->events || !e->pool || !e->ready) goto fail;
  for (int32_t i = 0; i < slots; i++) e->conns[i].fd[0] = e->conns[i].fd[1] = -1;
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (e->epfd < 0) goto fail_errno;
  e->cmdfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (e->cmdfd < 0) goto fail_errno;
  e->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (e->evfd < 0) goto fail_errno;
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TCP_CMD_TOKEN};
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->cmdfd, &ev) != 0) goto fail_errno;

  pthread_mutex_lock(&tcp_engines_lock);
  int index = -1;
  for (int i = 0; i < TCP_ENGINES_MAX; i++) {
    if (tcp_engines[i] == NULL) {
      index = i;
      break;
    }
  }
  if (index < 0) {
    pthread_mutex_unlock(&tcp_engines_lock);
    err = EMFILE;
    goto fail;
  }
  int rc = pthread_create(&e->thread, NULL, engine_main, e);
  if (rc != 0) {
    pthread_mutex_unlock(&tcp_engines_lock);
    err = rc;
    goto fail;
  }
  e->started = 1;
  tcp_engines[index] = e;
  pthread_mutex_unlock(&tcp_engines_lock);
  return index;

fail_errno:
  err = errno;
fail:
  engine_free(e);
  return -err;
}

int32_t rl_tcp_engine_event_fd(int32_t engine) {
  struct tcp_engine *e = engine_get(engine);
  return e == NULL ? -EBADF : e->evfd;
}

int32_t rl_tcp_engine_add(int32_t engine, int32_t id, int32_t client_fd, int32_t upstream_fd) {
  struct tcp_engine *e = engine_get(engine);
  int32_t result = 0;
  if (e == NULL) result = -EBADF;
  else if (id < 0 || id >= e->slots || client_fd < 0 || upstream_fd < 0) result = -EINVAL;
  if (result == 0) {
    pthread_mutex_lock(&e->lock);
    if (e->cmd_count == e->slots) {
      result = -ENOBUFS;
    } else {
      e->cmds[(e->cmd_head + e->cmd_count) % e->slots] =
          (struct tcp_cmd){.id = id, .client_fd = client_fd, .upstream_fd = upstream_fd};
      e->cmd_count++;
    }
    pthread_mutex_unlock(&e->lock);
  }
  if (result != 0) {
    if (client_fd >= 0) close_with_reset(client_fd);
    if (upstream_fd >= 0) close_with_reset(upstream_fd);
    return result;
  }
  uint64_t one = 1;
  if (write(e->cmdfd, &one, sizeof(one)) != sizeof(one)) return -errno;
  return 0;
}

int32_t rl_tcp_engine_events(int32_t engine, struct rl_tcp_event *out, int32_t count) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  if (count <= 0) return -EINVAL;
  uint64_t value;
  (void)!read(e->evfd, &value, sizeof(value)); /* reset before copying: no lost wake-up */
  pthread_mutex_lock(&e->lock);
  int32_t n = e->ev_count < count ? e->ev_count : count;
  for (int32_t i = 0; i < n; i++) out[i] = e->events[(e->ev_head + i) % e->ev_cap];
  e->ev_head = (e->ev_head + n) % e->ev_cap;
  e->ev_count -= n;
  int left = e->ev_count > 0;
  pthread_mutex_unlock(&e->lock);
  if (left) {
    uint64_t one = 1;
    (void)!write(e->evfd, &one, sizeof(one));
  }
  return n;
}

int32_t rl_tcp_engine_abort_all(int32_t engine) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  atomic_store(&e->abort_all, 1);
  uint64_t one = 1;
  return write(e->cmdfd, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}

int32_t rl_tcp_engine_stats(int32_t engine, double *out) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  out[0] = (double)atomic_load_explicit(&e->bytes_up, memory_order_relaxed);
  out[1] = (double)atomic_load_explicit(&e->bytes_down, memory_order_relaxed);
  out[2] = (double)atomic_load(&e->open_count);
  out[3] = (double)atomic_load(&e->pipes_in_use);
  out[4] = (double)e->pool_count; /* engine-thread field: a racy read is fine for a gauge */
  out[5] = (double)atomic_load(&e->events_lost);
  return 0;
}

int32_t rl_tcp_engine_close(int32_t engine) {
  pthread_mutex_lock(&tcp_engines_lock);
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) {
    pthread_mutex_unlock(&tcp_engines_lock);
    return -EBADF;
  }
  tcp_engines[engine] = NULL;
  pthread_mutex_unlock(&tcp_engines_lock);
  if (e->started) {
    atomic_store(&e->stop, 1);
    uint64_t one = 1;
    (void)!write(e->cmdfd, &one, sizeof(one));
    pthread_join(e->thread, NULL);
  }
  /* The thread is gone: hand-offs still queued and open connections are reset here. */
  int64_t now = now_ms();
  for (int32_t k = 0; k < e->cmd_count; k++) {
    struct tcp_cmd *cmd = &e->cmds[(e->cmd_head + k) % e->slots];
    close_with_reset(cmd->client_fd);
    close_with_reset(cmd->upstream_fd);
  }
  e->cmd_count = 0;
  for (int32_t id = 0; id < e->slots; id++) conn_end(e, id, RL_TCP_END_ABORTED, 0, now);
  engine_free(e);
  return 0;
}
