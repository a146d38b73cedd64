/*
 * tcp.c: the TCP calls TypeScript makes per connection: accept (with the original
 * destination under TPROXY), SO_ORIGINAL_DST (under REDIRECT), the upstream connect,
 * and the abort that answers with a RST.
 */
#include "internal.h"

#include <errno.h>
#include <net/if.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

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
  return rl_tcp_connect_via(target_addr, target_port, target_scope, source_addr, flags, mark,
                            NULL);
}

int32_t rl_tcp_connect_via(const uint8_t *target_addr, int32_t target_port,
                           int32_t target_scope, const uint8_t *source_addr, int32_t flags,
                           int32_t mark, const uint8_t *device) {
  /* Socket options of listeners (RL_SOCK_*) have no meaning here: refused, not ignored. */
  if (flags & ~RL_TCP_FLAGS_ALL) return -((RL_STEP_CONNECT << 16) | EINVAL);
  if (target_port <= 0 || target_port > 65535) return -((RL_STEP_CONNECT << 16) | EINVAL);
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
  if (device != NULL && device[0] != 0) {
    /* A NUL-terminated interface name; the kernel bounds it (IFNAMSIZ) with ENODEV. */
    size_t len = strnlen((const char *)device, IFNAMSIZ);
    if (len >= IFNAMSIZ) {
      close(fd);
      return -((RL_STEP_BINDTODEVICE << 16) | EINVAL);
    }
    if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, device, (socklen_t)len) != 0)
      STEP_FAIL(RL_STEP_BINDTODEVICE);
  }
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
    STEP_FAIL(RL_STEP_CONNECT);
  return fd;
}

void close_with_reset(int fd) {
  struct linger lin = {.l_onoff = 1, .l_linger = 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
  close(fd);
}

int32_t rl_tcp_abort(int32_t fd) {
  if (fd < 0) return -EBADF;
  close_with_reset(fd);
  return 0;
}

int32_t rl_tcp_peek(int32_t fd, uint8_t *buf, int32_t cap) {
  if (fd < 0) return -EBADF;
  if (cap <= 0) return -EINVAL;
  ssize_t n = recv(fd, buf, (size_t)cap, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 ? -errno : (int32_t)n;
}

int32_t rl_tcp_rcvlowat(int32_t fd, int32_t bytes) {
  if (fd < 0) return -EBADF;
  if (bytes < 1) return -EINVAL;
  int v = bytes;
  return setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof(v)) == 0 ? 0 : -errno;
}

int32_t rl_tcp_connect_result(int32_t fd) {
  if (fd < 0) return -EBADF;
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -errno;
  return -err;
}

int32_t rl_tcp_recv(int32_t fd, uint8_t *buf, int32_t cap) {
  if (fd < 0) return -EBADF;
  if (cap <= 0) return -EINVAL;
  ssize_t n = recv(fd, buf, (size_t)cap, MSG_DONTWAIT);
  return n < 0 ? -errno : (int32_t)n;
}

int32_t rl_tcp_send(int32_t fd, const uint8_t *buf, int32_t len) {
  if (fd < 0) return -EBADF;
  if (len <= 0) return -EINVAL;
  ssize_t n = send(fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
  return n < 0 ? -errno : (int32_t)n;
}
