/*
 * udp_batch.c: datagrams in and out in batches. rl_recv_batch (recvmmsg into caller
 * memory plus one rl_meta per datagram), rl_send_batch (one sendmmsg per socket
 * in the batch), rl_recv_errors (the MSG_ERRQUEUE drain). Bounded by RL_BATCH_COUNT_MAX and
 * the caller's count; nothing allocates.
 */
#include "internal.h"

#include <errno.h>
#include <linux/errqueue.h>
#include <string.h>

/* Control space for one received datagram: the original destination (the larger,
 * IPv6, form) and SO_RXQ_OVFL's counter. Anything else that arrives is cut off
 * (MSG_CTRUNC); should the original destination be the part lost, the datagram comes
 * without RL_META_HAS_ORIGDST and is counted as such. */
/* (RECV_CMSG_BYTES and SEND_CMSG_BYTES: internal.h, shared with uring.c.) */

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

uint16_t udp_meta_cmsg(struct rl_meta *m, const struct cmsghdr *c) {
  if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
    memcpy(&m->queue_drops, CMSG_DATA(c), sizeof(m->queue_drops));
    return RL_META_HAS_DROPS;
  }
  int v4 = c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR;
  int v6 = c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR;
  if (!v4 && !v6) return 0;
  int tport = sockaddr_to_addr((const struct sockaddr *)CMSG_DATA(c), m->target_addr,
                               &m->target_scope);
  if (tport < 0) return 0;
  m->target_port = (uint16_t)tport;
  return RL_META_HAS_ORIGDST;
}

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
    int sport = sockaddr_to_addr((struct sockaddr *)&recv_names[i], m->source_addr,
                                 &m->source_scope);
    m->source_port = sport < 0 ? 0 : (uint16_t)sport;
    m->target_port = 0;
    m->target_scope = 0;
    m->queue_drops = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c))
      flags |= udp_meta_cmsg(m, c);
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

/* Fills send_msgs[j] from *s, whose payload was checked to lie inside the slab. */
static void send_prepare(uint8_t *slab, struct rl_send *s, int j) {
  udp_send_fill(&send_msgs[j].msg_hdr, &send_iovs[j], &send_names[j], send_cmsgs[j],
                slab + s->offset, s);
  send_msgs[j].msg_len = 0;
}

void udp_send_fill(struct msghdr *h, struct iovec *iov, struct sockaddr_storage *name,
                   uint64_t *cmsg, uint8_t *payload, const struct rl_send *s) {
  iov->iov_base = payload;
  iov->iov_len = s->length;
  h->msg_name = name;
  h->msg_namelen = addr_to_sockaddr(s->target_addr, s->target_port, s->target_scope, name);
  if (s->flags & RL_SEND_CONNECTED) {
    h->msg_name = NULL;
    h->msg_namelen = 0;
  }
  h->msg_iov = iov;
  h->msg_iovlen = 1;
  h->msg_flags = 0;
  /* Set even without a pktinfo: udp_gso.c may append its UDP_SEGMENT here. */
  h->msg_control = cmsg;
  h->msg_controllen = 0;
  if (s->flags & RL_SEND_SOURCE) {
    struct cmsghdr *c = (struct cmsghdr *)cmsg;
    if (name->ss_family == AF_INET) {
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
}

/* Whether [offset, offset + length) lies inside the slab. The sum is taken in 64 bits,
 * where two uint32_t cannot overflow (in 32 bits 0xfffffffc + 8 would wrap to 4). */
static int send_in_bounds(const struct rl_send *s, uint32_t slab_bytes) {
  return (uint64_t)s->offset + (uint64_t)s->length <= (uint64_t)slab_bytes;
}

/* Groups the entries of one rl_send_batch by socket: order[] lists the entry indexes
 * socket by socket (sockets in order of first appearance, entries of one socket in
 * their queued order) and group_end[g] is where group g ends in order[]. Datagrams on
 * different sockets have no order between them on the wire, so sending each socket's
 * entries together costs nothing in meaning and makes one sendmmsg per socket instead of
 * one per run: the DNS forwarder's queries alternate between its upstream sockets.
 * Linear: an open-addressing table from fd to its group, reset by a generation stamp. */
#define GROUP_SLOTS 512 /* a power of two, at least 2 x RL_BATCH_COUNT_MAX */
_Static_assert(GROUP_SLOTS >= 2 * RL_BATCH_COUNT_MAX, "the fd table must stay half empty");
static __thread uint32_t group_stamp[GROUP_SLOTS];
static __thread int32_t group_fd[GROUP_SLOTS];
static __thread int32_t group_of_slot[GROUP_SLOTS];
static __thread uint32_t group_generation;

static int group_by_socket(const struct rl_send *sends, int32_t count, int32_t *order,
                           int32_t *group_end) {
  int32_t group_size[RL_BATCH_COUNT_MAX];
  int32_t group_of_entry[RL_BATCH_COUNT_MAX];
  int groups = 0;
  if (++group_generation == 0) { /* wrapped: old stamps could match again */
    memset(group_stamp, 0, sizeof(group_stamp));
    group_generation = 1;
  }
  for (int i = 0; i < count; i++) {
    const int32_t fd = sends[i].fd;
    uint32_t h = ((uint32_t)fd * 2654435761u) & (GROUP_SLOTS - 1);
    while (group_stamp[h] == group_generation && group_fd[h] != fd)
      h = (h + 1) & (GROUP_SLOTS - 1);
    if (group_stamp[h] != group_generation) {
      group_stamp[h] = group_generation;
      group_fd[h] = fd;
      group_of_slot[h] = groups;
      group_size[groups++] = 0;
    }
    group_of_entry[i] = group_of_slot[h];
    group_size[group_of_slot[h]]++;
  }
  /* group_end as running sums, then each entry placed at its group's next place. */
  int32_t next[RL_BATCH_COUNT_MAX];
  int32_t at = 0;
  for (int g = 0; g < groups; g++) {
    next[g] = at;
    at += group_size[g];
    group_end[g] = at;
  }
  for (int i = 0; i < count; i++) order[next[group_of_entry[i]]++] = i;
  return groups;
}

int32_t rl_send_batch(uint8_t *slab, uint32_t slab_bytes, struct rl_send *sends, int32_t count) {
  if (count < 0 || count > RL_BATCH_COUNT_MAX) return -EINVAL;
  int32_t order[RL_BATCH_COUNT_MAX];
  int32_t group_end[RL_BATCH_COUNT_MAX];
  const int groups = group_by_socket(sends, count, order, group_end);
  /* entry[j]: the index in sends of send_msgs[j] (entries refused up front are left out
   * of the group's messages). */
  int32_t entry[RL_BATCH_COUNT_MAX];
  int32_t sent = 0;
  int32_t group_start = 0;
  for (int g = 0; g < groups; g++) {
    const int32_t fd = sends[order[group_start]].fd;
    /* Never trust the records: an entry outside the slab is a bookkeeping bug of the
     * caller (-EFAULT, which TypeScript treats as one), and it is not sent. */
    int prepared = 0;
    for (int32_t o = group_start; o < group_end[g]; o++) {
      const int32_t i = order[o];
      struct rl_send *s = &sends[i];
      if (fd < 0) {
        s->result = -EBADF;
      } else if (!send_in_bounds(s, slab_bytes)) {
        s->result = -EFAULT;
      } else {
        send_prepare(slab, s, prepared);
        entry[prepared] = i;
        prepared++;
      }
    }
    sent += udp_send_group(fd, send_msgs, sends, entry, prepared);
    group_start = group_end[g];
  }
  return sent;
}
