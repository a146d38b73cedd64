/*
 * local_addr.c: which destinations are this host's own (DESIGN.md "Never relay to
 * ourselves"). The relay must never relay a flow whose original destination is local:
 * a datagram sent straight to a listener, or to one of the host's addresses, would
 * otherwise be relayed to itself and circulate at full CPU.
 *
 * The kernel's own answer is the `local` routing table (RT_TABLE_LOCAL, 255): every
 * address of every interface (/32, /128), 127.0.0.0/8, subnet broadcasts, IPv6
 * anycast, and any AnyIP range an operator added (`ip route add local X/Y dev lo`).
 * nft's `fib daddr type local` consults the same table, so the relay and its rules
 * agree. rl_local_routes() dumps it over rtnetlink; rl_addr_watch_open() returns a
 * socket that becomes readable when an address is added or removed, so the caller
 * can dump again without polling.
 *
 * Bounded: a dump reads at most DUMP_READS_MAX datagrams and writes at most `count`
 * records; a larger table returns -ENOSPC rather than a silent prefix of it.
 */
#include "internal.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Datagrams read per dump at most: each holds up to ~100 routes (32 KiB), so this
 * bounds a local table at ~100k entries, far past any real host. */
#define DUMP_READS_MAX 1024
#define DUMP_BUFFER_BYTES (32 * 1024)

_Static_assert(sizeof(struct rl_local_route) == 20, "rl_local_route is 20 bytes");

static int netlink_socket(uint32_t groups) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
  if (fd < 0) return -errno;
  struct sockaddr_nl local = {.nl_family = AF_NETLINK, .nl_groups = groups};
  if (bind(fd, (struct sockaddr *)&local, sizeof(local)) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

int32_t rl_addr_watch_open(void) {
  return netlink_socket(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR);
}

int32_t rl_addr_watch_drain(int32_t fd) {
  static __thread uint8_t buffer[DUMP_BUFFER_BYTES];
  int32_t messages = 0;
  for (int reads = 0; reads < DUMP_READS_MAX; reads++) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return messages;
      /* ENOBUFS: the kernel dropped notifications; the caller dumps anyway. */
      return -errno;
    }
    messages++;
  }
  return messages;
}

/* One dump of a family's routes; appends the local table's local, broadcast and anycast
 * entries to out[*written..count). Returns 0 or -errno. */
static int dump_family(int fd, uint8_t family, struct rl_local_route *out, int32_t count,
                       int32_t *written, uint32_t seq) {
  struct {
    struct nlmsghdr header;
    struct rtmsg route;
  } request;
  memset(&request, 0, sizeof(request));
  request.header.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
  request.header.nlmsg_type = RTM_GETROUTE;
  request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.header.nlmsg_seq = seq;
  request.route.rtm_family = family;
  request.route.rtm_table = RT_TABLE_LOCAL;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(fd, &request, request.header.nlmsg_len, 0, (struct sockaddr *)&kernel,
             sizeof(kernel)) < 0) {
    return -errno;
  }
  static __thread uint8_t buffer[DUMP_BUFFER_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
  for (int reads = 0; reads < DUMP_READS_MAX; reads++) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    int remaining = (int)n;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buffer; NLMSG_OK(h, remaining);
         h = NLMSG_NEXT(h, remaining)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        return e->error < 0 ? e->error : -EPROTO;
      }
      if (h->nlmsg_type != RTM_NEWROUTE) continue;
      const struct rtmsg *r = NLMSG_DATA(h);
      uint32_t table = r->rtm_table;
      int attr_bytes = (int)RTM_PAYLOAD(h);
      const uint8_t *dst = NULL;
      for (const struct rtattr *a = RTM_RTA(r); RTA_OK(a, attr_bytes);
           a = RTA_NEXT(a, attr_bytes)) {
        if (a->rta_type == RTA_TABLE && RTA_PAYLOAD(a) >= 4) memcpy(&table, RTA_DATA(a), 4);
        if (a->rta_type == RTA_DST) dst = RTA_DATA(a);
      }
      if (table != RT_TABLE_LOCAL) continue;
      if (r->rtm_type != RTN_LOCAL && r->rtm_type != RTN_BROADCAST &&
          r->rtm_type != RTN_ANYCAST) {
        continue;
      }
      if (r->rtm_family != AF_INET && r->rtm_family != AF_INET6) continue;
      if (*written >= count) return -ENOSPC;
      struct rl_local_route *o = &out[*written];
      memset(o, 0, sizeof(*o));
      if (r->rtm_family == AF_INET) {
        memcpy(o->addr, v4_mapped_prefix, 12);
        if (dst) memcpy(o->addr + 12, dst, 4);
        o->prefix_bits = (uint8_t)(96 + (r->rtm_dst_len > 32 ? 32 : r->rtm_dst_len));
      } else {
        if (dst) memcpy(o->addr, dst, 16);
        o->prefix_bits = r->rtm_dst_len > 128 ? 128 : r->rtm_dst_len;
      }
      o->type = r->rtm_type;
      (*written)++;
    }
  }
  return -EOVERFLOW; /* the dump never ended within DUMP_READS_MAX datagrams */
}

int32_t rl_local_routes(struct rl_local_route *out, int32_t count) {
  if (count < 0) return -EINVAL;
  int fd = netlink_socket(0);
  if (fd < 0) return fd;
  int32_t written = 0;
  int rc = dump_family(fd, AF_INET, out, count, &written, 1);
  if (rc == 0) rc = dump_family(fd, AF_INET6, out, count, &written, 2);
  close(fd);
  return rc < 0 ? rc : written;
}
