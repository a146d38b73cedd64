/*
 * stream.c: what the UDP data path needs for a SOCKS5 UDP association (RFC 1928 §7):
 * byte I/O on its TCP control connection, the connect's result, and a datagram sent
 * as two parts (the SOCKS5 UDP header, then the payload where it was received), so the
 * payload is never copied.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

int32_t rl_stream_send(int32_t fd, const uint8_t *buf, int32_t length) {
  if (length < 0) return -EINVAL;
  ssize_t n = send(fd, buf, (size_t)length, MSG_NOSIGNAL | MSG_DONTWAIT);
  return n < 0 ? -errno : (int32_t)n;
}

int32_t rl_stream_recv(int32_t fd, uint8_t *buf, int32_t capacity) {
  if (capacity <= 0) return -EINVAL;
  ssize_t n = recv(fd, buf, (size_t)capacity, MSG_DONTWAIT);
  return n < 0 ? -errno : (int32_t)n;
}

int32_t rl_socket_error(int32_t fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -errno;
  return -err;
}

int32_t rl_send_wrapped(int32_t fd, const uint8_t *header, int32_t header_length,
                        const uint8_t *payload, int32_t payload_length, const uint8_t *addr,
                        int32_t port, int32_t scope) {
  if (header_length < 0 || payload_length < 0 || port < 0 || port > 65535) return -EINVAL;
  struct sockaddr_storage to;
  socklen_t to_len = addr_to_sockaddr(addr, (uint16_t)port, (uint32_t)scope, &to);
  struct iovec iov[2] = {
      {.iov_base = (void *)header, .iov_len = (size_t)header_length},
      {.iov_base = (void *)payload, .iov_len = (size_t)payload_length},
  };
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_name = &to;
  msg.msg_namelen = to_len;
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT);
  return n < 0 ? -errno : (int32_t)n;
}
