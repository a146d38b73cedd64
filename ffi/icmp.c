/*
 * icmp.c: ICMP "port unreachable" to a client, sent from the flow's original
 * destination, for the policy's `reject` action on UDP: a client's connected socket
 * gets ECONNREFUSED at once instead of waiting out its timeout (a blocked QUIC fails
 * fast). Also SO_BINDTODEVICE for an outbound's `interface`.
 *
 * IPv4: a raw IPPROTO_RAW socket (IP_HDRINCL is implied): we write the IP header, with
 * the original destination as its source (no local-address check with IP_HDRINCL).
 * IPv6: a raw ICMPv6 socket with IPV6_TRANSPARENT, the source given per message in
 * IPV6_PKTINFO (allowed for a non-local address on a transparent socket); the kernel
 * computes the ICMPv6 checksum. Both need CAP_NET_RAW.
 *
 * The message quotes the client's datagram as RFC 792 / RFC 4443 require: its IP
 * header, its UDP header (with a correct checksum) and as much payload as fits in 576
 * bytes (IPv4, RFC 1812) or 1280 bytes (IPv6, the minimum MTU).
 */
#include "internal.h"

#include <errno.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <string.h>
#include <unistd.h>

#define IPV4_ICMP_BYTES_MAX 576
#define IPV6_ICMP_BYTES_MAX 1280

/* One's complement sum of len bytes, added to sum (RFC 1071). */
static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum) {
  size_t i = 0;
  for (; i + 1 < len; i += 2) sum += (uint32_t)((p[i] << 8) | p[i + 1]);
  if (i < len) sum += (uint32_t)(p[i] << 8);
  return sum;
}

static uint16_t fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

/* The UDP checksum of the client's datagram (pseudo header of the family). */
static uint16_t udp_checksum(int v6, const uint8_t *src, const uint8_t *dst, const uint8_t *udp,
                             const uint8_t *payload, size_t length) {
  uint32_t sum = 0;
  const size_t udp_len = 8 + length;
  if (v6) {
    sum = sum16(src, 16, sum);
    sum = sum16(dst, 16, sum);
    sum += (uint32_t)(udp_len >> 16) + (uint32_t)(udp_len & 0xffff) + IPPROTO_UDP;
  } else {
    sum = sum16(src + 12, 4, sum);
    sum = sum16(dst + 12, 4, sum);
    sum += (uint32_t)udp_len + IPPROTO_UDP;
  }
  sum = sum16(udp, 8, sum);
  sum = sum16(payload, length, sum);
  uint16_t c = fold(sum);
  return c == 0 ? 0xffff : c;
}

int32_t rl_icmp_open(int32_t ipv6) {
  int fd;
  if (ipv6) {
    fd = socket(AF_INET6, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_ICMPV6);
    if (fd < 0) return -errno;
    if (set_int(fd, SOL_IPV6, IPV6_TRANSPARENT, 1) != 0) {
      int e = errno;
      close(fd);
      return -e;
    }
    /* Send only: a raw ICMPv6 socket gets a copy of every ICMPv6 message unless
     * filtered. */
    struct icmp6_filter filter;
    ICMP6_FILTER_SETBLOCKALL(&filter);
    if (setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &filter, sizeof(filter)) != 0) {
      int e = errno;
      close(fd);
      return -e;
    }
  } else {
    /* IPPROTO_RAW: send only (it receives nothing), IP_HDRINCL implied. */
    fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_RAW);
    if (fd < 0) return -errno;
  }
  return fd;
}

int32_t rl_icmp_unreachable(int32_t fd, const uint8_t *client_addr, int32_t client_port,
                            int32_t client_scope, const uint8_t *target_addr, int32_t target_port,
                            const uint8_t *payload, int32_t length) {
  if (fd < 0 || length < 0 || client_port < 0 || client_port > 65535 || target_port < 0 ||
      target_port > 65535)
    return -EINVAL;
  const int v6 = memcmp(client_addr, v4_mapped_prefix, 12) != 0;
  if (v6 != (memcmp(target_addr, v4_mapped_prefix, 12) != 0)) return -EAFNOSUPPORT;
  uint8_t buf[IPV6_ICMP_BYTES_MAX];
  memset(buf, 0, sizeof(buf));
  uint8_t udp[8];
  put16(udp, (uint32_t)client_port);
  put16(udp + 2, (uint32_t)target_port);
  put16(udp + 4, (uint32_t)(8 + length) & 0xffff);
  put16(udp + 6, 0);
  /* The checksum covers the whole datagram, not only the quoted part. */
  put16(udp + 6, udp_checksum(v6, client_addr, target_addr, udp, payload, (size_t)length));

  struct sockaddr_storage to;
  socklen_t to_len = addr_to_sockaddr(client_addr, 0, (uint32_t)client_scope, &to);
  if (!v6) {
    /* IP header (20) + ICMP (8) + quoted IP header (20) + UDP header (8) + payload. */
    size_t quote = (size_t)length;
    if (quote > IPV4_ICMP_BYTES_MAX - 56) quote = IPV4_ICMP_BYTES_MAX - 56;
    const size_t total = 56 + quote;
    uint8_t *ip = buf;
    ip[0] = 0x45;
    put16(ip + 2, (uint32_t)total);
    ip[8] = 64;
    ip[9] = IPPROTO_ICMP;
    memcpy(ip + 12, target_addr + 12, 4); /* from the original destination */
    memcpy(ip + 16, client_addr + 12, 4);
    uint8_t *icmp = buf + 20;
    icmp[0] = 3; /* destination unreachable */
    icmp[1] = 3; /* port unreachable */
    uint8_t *quoted = icmp + 8;
    quoted[0] = 0x45;
    put16(quoted + 2, (uint32_t)(28 + length) & 0xffff);
    quoted[8] = 64;
    quoted[9] = IPPROTO_UDP;
    memcpy(quoted + 12, client_addr + 12, 4);
    memcpy(quoted + 16, target_addr + 12, 4);
    put16(quoted + 10, fold(sum16(quoted, 20, 0)));
    memcpy(quoted + 20, udp, 8);
    memcpy(quoted + 28, payload, quote);
    put16(icmp + 2, fold(sum16(icmp, total - 20, 0)));
    /* The IP header checksum and (with id 0) the id are filled in by the kernel. */
    ssize_t n = sendto(fd, buf, total, 0, (struct sockaddr *)&to, to_len);
    return n < 0 ? -errno : (int32_t)n;
  }
  /* ICMPv6 (8) + quoted IPv6 header (40) + UDP header (8) + payload; the kernel writes
   * the IPv6 header and the ICMPv6 checksum. */
  size_t quote = (size_t)length;
  if (quote > IPV6_ICMP_BYTES_MAX - 40 - 56) quote = IPV6_ICMP_BYTES_MAX - 40 - 56;
  const size_t total = 56 + quote;
  uint8_t *icmp = buf;
  icmp[0] = ICMP6_DST_UNREACH;
  icmp[1] = ICMP6_DST_UNREACH_NOPORT;
  uint8_t *quoted = icmp + 8;
  quoted[0] = 0x60;
  put16(quoted + 4, (uint32_t)(8 + length) & 0xffff);
  quoted[6] = IPPROTO_UDP;
  quoted[7] = 64;
  memcpy(quoted + 8, client_addr, 16);
  memcpy(quoted + 24, target_addr, 16);
  memcpy(quoted + 40, udp, 8);
  memcpy(quoted + 48, payload, quote);
  ((struct sockaddr_in6 *)&to)->sin6_port = 0;

  struct iovec iov = {.iov_base = buf, .iov_len = total};
  union {
    char buf[CMSG_SPACE(sizeof(struct in6_pktinfo))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr msg = {0};
  msg.msg_name = &to;
  msg.msg_namelen = to_len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof(control.buf);
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = IPPROTO_IPV6;
  cm->cmsg_type = IPV6_PKTINFO;
  cm->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
  struct in6_pktinfo info;
  memset(&info, 0, sizeof(info));
  memcpy(&info.ipi6_addr, target_addr, 16); /* from the original destination */
  info.ipi6_ifindex = (unsigned)client_scope;
  memcpy(CMSG_DATA(cm), &info, sizeof(info));
  ssize_t n = sendmsg(fd, &msg, 0);
  return n < 0 ? -errno : (int32_t)n;
}

int32_t rl_bind_device(int32_t fd, const uint8_t *name, int32_t length) {
  if (length <= 0 || length >= IFNAMSIZ) return -EINVAL;
  char ifname[IFNAMSIZ];
  memcpy(ifname, name, (size_t)length);
  ifname[length] = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)length + 1) != 0)
    return -errno;
  return 0;
}
