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
#define RECV_CMSG_BYTES CMSG_SPACE(sizeof(struct sockaddr_in6))
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
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
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

/* ---- The epoll thread ---- */

#define POLLERS_MAX 8
#define POLL_EVENTS_MAX 64
#define POLL_STOP_TOKEN UINT64_MAX

struct poller {
  int epfd;
  int stopfd;
  int started;
  pthread_t thread;
  rl_wake_fn wake;
  atomic_uint wakes;
};

static struct poller pollers[POLLERS_MAX];
static pthread_mutex_t pollers_lock = PTHREAD_MUTEX_INITIALIZER;
static int pollers_used[POLLERS_MAX];

int32_t rl_poll_open(void) {
  pthread_mutex_lock(&pollers_lock);
  int index = -1;
  for (int i = 0; i < POLLERS_MAX; i++) {
    if (!pollers_used[i]) {
      index = i;
      break;
    }
  }
  if (index < 0) {
    pthread_mutex_unlock(&pollers_lock);
    return -EMFILE;
  }
  struct poller *p = &pollers[index];
  memset(p, 0, sizeof(*p));
  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (p->epfd < 0) {
    int err = errno;
    pthread_mutex_unlock(&pollers_lock);
    return -err;
  }
  p->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->stopfd < 0) {
    int err = errno;
    close(p->epfd);
    pthread_mutex_unlock(&pollers_lock);
    return -err;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = POLL_STOP_TOKEN};
  if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->stopfd, &ev) != 0) {
    int err = errno;
    close(p->stopfd);
    close(p->epfd);
    pthread_mutex_unlock(&pollers_lock);
    return -err;
  }
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
  struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = (uint32_t)token};
  return epoll_ctl(p->epfd, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev) == 0 ? 0 : -errno;
}

int32_t rl_poll_add(int32_t poller, int32_t fd, int32_t token) {
  return poll_ctl(poller, EPOLL_CTL_ADD, fd, token);
}
int32_t rl_poll_rearm(int32_t poller, int32_t fd, int32_t token) {
  return poll_ctl(poller, EPOLL_CTL_MOD, fd, token);
}
int32_t rl_poll_del(int32_t poller, int32_t fd) { return poll_ctl(poller, EPOLL_CTL_DEL, fd, 0); }

static void *poll_main(void *arg) {
  struct poller *p = arg;
  struct epoll_event events[POLL_EVENTS_MAX];
  for (;;) {
    int n = epoll_wait(p->epfd, events, POLL_EVENTS_MAX, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return NULL; /* EBADF/EINVAL: the poller is being torn down */
    }
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 == POLL_STOP_TOKEN) return NULL;
      atomic_fetch_add_explicit(&p->wakes, 1, memory_order_relaxed);
      /* Bit 30 tells JS that EPOLLERR is set (an ICMP error is queued). */
      uint32_t token = (uint32_t)events[i].data.u64;
      if (events[i].events & EPOLLERR) token |= 0x40000000u;
      p->wake((int32_t)token);
    }
  }
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
  pthread_mutex_lock(&pollers_lock);
  pollers_used[index] = 0;
  pthread_mutex_unlock(&pollers_lock);
  return 0;
}

int32_t rl_poll_wakes(int32_t index) {
  struct poller *p = poller_get(index);
  if (p == NULL) return -EBADF;
  return (int32_t)(atomic_load_explicit(&p->wakes, memory_order_relaxed) & 0x7fffffff);
}
