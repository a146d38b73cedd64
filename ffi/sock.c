/*
 * sock.c: socket set-up (rl_socket and its options), the 16-byte address form, and
 * the descriptor limit.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

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

socklen_t addr_to_sockaddr(const uint8_t *addr, uint16_t port, uint32_t scope,
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

int sockaddr_to_addr(const struct sockaddr *sa, uint8_t *addr, uint32_t *scope) {
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

int set_int(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof(value));
}

int32_t rl_socket(int32_t flags, const uint8_t *addr, int32_t port, int32_t mark,
                  int32_t receive_bytes, int32_t send_bytes) {
  const int v6 = (flags & RL_SOCK_IPV6) != 0;
  const int family = v6 ? AF_INET6 : AF_INET;
  const int type = (flags & RL_SOCK_STREAM) ? SOCK_STREAM : SOCK_DGRAM;
  if (flags & ~RL_SOCK_FLAGS_ALL) return -((RL_STEP_SOCKET << 16) | EINVAL);
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

int32_t rl_close(int32_t fd) {
  udp_gso_forget(fd); /* the next socket on this number may do GSO again */
  return close(fd) == 0 ? 0 : -errno;
}

int32_t rl_udp_connect(int32_t fd, const uint8_t *addr, int32_t port, int32_t scope) {
  if (port <= 0 || port > 65535) return -EINVAL;
  struct sockaddr_storage ss;
  socklen_t len = addr_to_sockaddr(addr, (uint16_t)port, (uint32_t)scope, &ss);
  return connect(fd, (struct sockaddr *)&ss, len) == 0 ? 0 : -errno;
}

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
