/*
 * udp_gso.c: UDP segmentation offload on send (UDP_SEGMENT) and receive offload (UDP_GRO).
 *
 * Send: rl_send_batch prepares one mmsghdr per datagram of a socket (send_iovs[j] is the
 * iovec of send_msgs[j]); udp_send_group() then folds each run of datagrams to one
 * destination (same name, same source, same size; the last may be shorter) into its first
 * message: msg_iovlen grows over the run's iovecs, which are already adjacent, and a
 * UDP_SEGMENT cmsg gives the size. The kernel cuts the message into the same datagrams,
 * in order, at the cost of one. Nothing is copied.
 *
 * Receive: with UDP_GRO the kernel may hand one buffer of up to 64 datagrams of one
 * size; rl_recv_batch_gro() receives into 64-slot spans of the slab and splits each buffer
 * into consecutive slots with one rl_meta each, so everything above sees datagrams.
 */
#include "internal.h"

#include <errno.h>
#include <netinet/udp.h>
#include <string.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* include/linux/udp.h UDP_MAX_SEGMENTS (and UDP_GRO_CNT_MAX on receive). */
#define GSO_SEGMENTS_MAX 64
/* The largest IPv4 UDP payload: a message is one IP datagram before segmentation. */
#define GSO_BYTES_MAX 65507

/* Per-thread switch (rl_udp_gso_enable) and counters (rl_udp_offload_stats). */
static __thread int gso_enabled;
static __thread uint64_t stat_gso_messages;
static __thread uint64_t stat_gso_datagrams;
static __thread uint64_t stat_gso_fallbacks;
static __thread uint64_t stat_gro_buffers;
static __thread uint64_t stat_gro_datagrams;

/* Sockets whose GSO send failed (the route's device lacks checksum offload: EIO; a size
 * past the path MTU: EINVAL): sent one datagram per message from then on, so the failure
 * is paid once per socket. Shared by all threads (a descriptor number is process-wide);
 * rl_close clears the mark so the next socket on that number starts fresh. */
#define NO_GSO_FDS 65536
static _Atomic uint8_t no_gso_fd[NO_GSO_FDS];

void udp_gso_forget(int32_t fd) {
  if (fd >= 0 && fd < NO_GSO_FDS) atomic_store_explicit(&no_gso_fd[fd], 0, memory_order_relaxed);
}

static int gso_allowed(int32_t fd) {
  if (!gso_enabled) return 0;
  return fd >= NO_GSO_FDS || atomic_load_explicit(&no_gso_fd[fd], memory_order_relaxed) == 0;
}

int32_t rl_udp_offload_probe(void) {
  int32_t found = 0;
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int size = 1200;
  if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, sizeof(size)) == 0) found |= 1;
  int on = 1;
  if (setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on)) == 0) found |= 2;
  close(fd);
  return found;
}

int32_t rl_udp_gso_enable(int32_t enabled) {
  gso_enabled = enabled != 0;
  return gso_enabled;
}

int32_t rl_udp_gro(int32_t fd, int32_t enabled) {
  int on = enabled != 0;
  return setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on)) == 0 ? 0 : -errno;
}

int32_t rl_udp_offload_stats(double *out) {
  out[0] = (double)stat_gso_messages;
  out[1] = (double)stat_gso_datagrams;
  out[2] = (double)stat_gso_fallbacks;
  out[3] = (double)stat_gro_buffers;
  out[4] = (double)stat_gro_datagrams;
  stat_gso_messages = stat_gso_datagrams = stat_gso_fallbacks = 0;
  stat_gro_buffers = stat_gro_datagrams = 0;
  return 5;
}

/* Whether entry b may follow entry a in one GSO message: same destination, flags and
 * source; a's size is the run's (b may be shorter only as the run's last, checked by the
 * caller). */
static int same_flow(const struct rl_send *a, const struct rl_send *b) {
  if (a->target_port != b->target_port || a->flags != b->flags ||
      a->target_scope != b->target_scope)
    return 0;
  if (memcmp(a->target_addr, b->target_addr, 16) != 0) return 0;
  if ((a->flags & RL_SEND_SOURCE) && memcmp(a->source_addr, b->source_addr, 16) != 0) return 0;
  return 1;
}

/* Appends a UDP_SEGMENT cmsg after whatever control data h already has (room for it is
 * in SEND_CMSG_BYTES of udp_batch.c). */
static void add_segment_cmsg(struct msghdr *h, uint16_t size) {
  struct cmsghdr *c = (struct cmsghdr *)((uint8_t *)h->msg_control + h->msg_controllen);
  c->cmsg_level = SOL_UDP;
  c->cmsg_type = UDP_SEGMENT;
  c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
  memcpy(CMSG_DATA(c), &size, sizeof(size));
  h->msg_controllen += CMSG_SPACE(sizeof(uint16_t));
}

/* The datagrams of message m (built for GSO) one message each: the kernel refused the
 * segmentation. entry[0..count) are its entries. Returns how many went. */
static int32_t send_singly(int32_t fd, const struct msghdr *m, int count, struct rl_send *sends,
                           const int32_t *entry) {
  struct msghdr h = *m;
  h.msg_controllen -= CMSG_SPACE(sizeof(uint16_t)); /* the pktinfo stays, if any */
  if (h.msg_controllen == 0) h.msg_control = NULL;
  h.msg_iovlen = 1;
  int32_t sent = 0;
  for (int t = 0; t < count; t++) {
    h.msg_iov = &m->msg_iov[t];
    ssize_t k = sendmsg(fd, &h, MSG_DONTWAIT);
    struct rl_send *s = &sends[entry[t]];
    if (k >= 0) {
      s->result = (int32_t)k;
      sent++;
    } else {
      s->result = -errno;
    }
  }
  return sent;
}

static int fallback_errno(int err) {
  return err == EIO || err == EINVAL || err == ENOTSUP || err == EOPNOTSUPP;
}

int32_t udp_send_group(int32_t fd, struct mmsghdr *msgs, struct rl_send *sends,
                       const int32_t *entry, int prepared) {
  /* unit_first[u]: the prepared index of message u's first datagram; unit_count[u]: how
   * many datagrams it carries (1: an ordinary message). msgs[u] is compacted in place:
   * u <= unit_first[u], so a message is moved down before its slot is read again. */
  int32_t unit_first[RL_BATCH_COUNT_MAX];
  int32_t unit_count[RL_BATCH_COUNT_MAX];
  int units = 0;
  const int gso = prepared > 1 && gso_allowed(fd);
  for (int j = 0; j < prepared;) {
    int run = 1;
    const struct rl_send *head = &sends[entry[j]];
    const uint32_t size = head->length;
    if (gso && size > 0) {
      uint32_t bytes = size;
      while (j + run < prepared && run < GSO_SEGMENTS_MAX) {
        const struct rl_send *next = &sends[entry[j + run]];
        if (next->length == 0 || next->length > size || bytes + next->length > GSO_BYTES_MAX ||
            !same_flow(head, next))
          break;
        bytes += next->length;
        run++;
        if (next->length < size) break; /* a shorter datagram ends the run */
      }
    }
    if (units != j) msgs[units] = msgs[j];
    if (run > 1) {
      msgs[units].msg_hdr.msg_iovlen = (size_t)run;
      add_segment_cmsg(&msgs[units].msg_hdr, (uint16_t)size);
    }
    unit_first[units] = j;
    unit_count[units] = run;
    units++;
    j += run;
  }
  /* Each pass sends at least one message or fails exactly one datagram, so the loop ends
   * after at most `prepared` passes. After a refused segmentation (singly) the rest of
   * the socket's runs go one datagram per message too. */
  int32_t sent = 0;
  int done = 0;
  int singly = 0;
  while (done < units) {
    if (singly && unit_count[done] > 1) {
      sent += send_singly(fd, &msgs[done].msg_hdr, unit_count[done], sends,
                          entry + unit_first[done]);
      done += 1;
      continue;
    }
    int end = units;
    if (singly) {
      end = done + 1;
      while (end < units && unit_count[end] == 1) end++;
    }
    int k = sendmmsg(fd, msgs + done, (unsigned)(end - done), MSG_DONTWAIT);
    if (k > 0) {
      for (int u = done; u < done + k; u++) {
        const int32_t first = unit_first[u];
        if (unit_count[u] == 1) {
          sends[entry[first]].result = (int32_t)msgs[u].msg_len;
          sent += 1;
          continue;
        }
        for (int t = 0; t < unit_count[u]; t++) {
          struct rl_send *s = &sends[entry[first + t]];
          s->result = (int32_t)s->length;
        }
        sent += unit_count[u];
        stat_gso_messages++;
        stat_gso_datagrams += (uint64_t)unit_count[u];
      }
      done += k;
      continue;
    }
    const int err = k < 0 ? errno : EIO;
    const int32_t first = unit_first[done];
    const int32_t count = unit_count[done];
    if (count > 1 && fallback_errno(err)) {
      /* The kernel refused the segmentation, not the datagrams: send them one by one, and
       * on this socket never try GSO again. */
      stat_gso_fallbacks++;
      if (fd < NO_GSO_FDS) atomic_store_explicit(&no_gso_fd[fd], 1, memory_order_relaxed);
      singly = 1;
      continue;
    }
    /* The first datagram of the rest failed: record it, skip it, go on (the rest of its
     * run stays one message, one datagram shorter). */
    sends[entry[first]].result = -err;
    if (count == 1) {
      done += 1;
      continue;
    }
    struct msghdr *h = &msgs[done].msg_hdr;
    h->msg_iov += 1;
    h->msg_iovlen -= 1;
    unit_first[done] = first + 1;
    unit_count[done] = count - 1;
    if (count - 1 == 1) { /* a lone datagram: no segmentation cmsg */
      h->msg_controllen -= CMSG_SPACE(sizeof(uint16_t));
      if (h->msg_controllen == 0) h->msg_control = NULL;
    }
  }
  return sent;
}

/* Control space for one received buffer: rl_recv_batch's, plus the GRO segment size. */
#define GRO_CMSG_BYTES                                                                         \
  (CMSG_SPACE(sizeof(struct sockaddr_in6)) + CMSG_SPACE(sizeof(uint32_t)) +                   \
   CMSG_SPACE(sizeof(int)))
/* A coalesced buffer is one IP datagram's worth: at most 64 segments and 64 KiB. */
#define GRO_BUFFER_BYTES 65535

static __thread struct mmsghdr gro_msgs[RL_BATCH_COUNT_MAX];
static __thread struct iovec gro_iovs[RL_BATCH_COUNT_MAX];
static __thread struct sockaddr_storage gro_names[RL_BATCH_COUNT_MAX];
static __thread uint64_t gro_cmsgs[RL_BATCH_COUNT_MAX][(GRO_CMSG_BYTES + 7) / 8];

int32_t rl_gro_span_slots(int32_t slot_bytes) {
  if (slot_bytes <= 0) return -EINVAL;
  int32_t span = (GRO_BUFFER_BYTES + slot_bytes - 1) / slot_bytes;
  return span > GSO_SEGMENTS_MAX ? span : GSO_SEGMENTS_MAX;
}

/* Fills the header of meta m from received message h (source, original destination,
 * queue drops) and returns its flags; *segment gets UDP_GRO's size, 0 without one. */
static uint16_t gro_parse(struct msghdr *h, struct rl_meta *m, int *segment) {
  uint16_t flags = 0;
  int sport = sockaddr_to_addr((struct sockaddr *)h->msg_name, m->source_addr, &m->source_scope);
  m->source_port = sport < 0 ? 0 : (uint16_t)sport;
  m->target_port = 0;
  m->target_scope = 0;
  m->queue_drops = 0;
  *segment = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
      memcpy(segment, CMSG_DATA(c), sizeof(*segment));
      continue;
    }
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
      memcpy(&m->queue_drops, CMSG_DATA(c), sizeof(m->queue_drops));
      flags |= RL_META_HAS_DROPS;
      continue;
    }
    int v4 = c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR;
    int v6 = c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR;
    if (!v4 && !v6) continue;
    int tport = sockaddr_to_addr((struct sockaddr *)CMSG_DATA(c), m->target_addr, &m->target_scope);
    if (tport >= 0) {
      m->target_port = (uint16_t)tport;
      flags |= RL_META_HAS_ORIGDST;
    }
  }
  return flags;
}

int32_t rl_recv_batch_gro(int32_t fd, uint8_t *slab, int32_t slot_bytes, int32_t count,
                          struct rl_meta *meta) {
  if (count <= 0 || count > RL_BATCH_COUNT_MAX || slot_bytes <= 0) return -EINVAL;
  const int32_t span = rl_gro_span_slots(slot_bytes);
  const int32_t buffers = count / span;
  if (buffers == 0) return -ENOBUFS;
  const size_t span_bytes = (size_t)span * (size_t)slot_bytes;
  for (int i = 0; i < buffers; i++) {
    gro_iovs[i].iov_base = slab + (size_t)i * span_bytes;
    gro_iovs[i].iov_len = span_bytes < GRO_BUFFER_BYTES ? span_bytes : GRO_BUFFER_BYTES;
    struct msghdr *h = &gro_msgs[i].msg_hdr;
    h->msg_name = &gro_names[i];
    h->msg_namelen = sizeof(gro_names[i]);
    h->msg_iov = &gro_iovs[i];
    h->msg_iovlen = 1;
    h->msg_control = gro_cmsgs[i];
    h->msg_controllen = sizeof(gro_cmsgs[i]);
    h->msg_flags = 0;
    gro_msgs[i].msg_len = 0;
  }
  int n = recvmmsg(fd, gro_msgs, (unsigned)buffers, MSG_DONTWAIT | MSG_TRUNC, NULL);
  if (n < 0) {
    int err = errno;
    return (err == EAGAIN || err == EWOULDBLOCK) ? 0 : -err;
  }
  /* Each buffer becomes its datagrams in slots out, out + 1, ...: first spread inside its
   * own span (slot t of the span <- byte t * segment; a segment is never larger than a
   * slot there, so moving from the last down never overwrites one not yet moved), then
   * moved down to the first free slot (out <= the span's first slot, since a span yields at
   * most span datagrams). */
  int32_t out = 0;
  for (int i = 0; i < n; i++) {
    struct msghdr *h = &gro_msgs[i].msg_hdr;
    const uint32_t wire = gro_msgs[i].msg_len;
    const int32_t base = i * span;
    struct rl_meta head;
    memset(&head, 0, sizeof(head));
    int segment = 0;
    uint16_t flags = gro_parse(h, &head, &segment);
    const int truncated = (h->msg_flags & MSG_TRUNC) || wire > gro_iovs[i].iov_len;
    uint32_t stored = wire > gro_iovs[i].iov_len ? (uint32_t)gro_iovs[i].iov_len : wire;
    int32_t pieces = 1;
    uint32_t size = stored;
    if (segment > 0 && (uint32_t)segment < stored) {
      size = (uint32_t)segment;
      pieces = (int32_t)((stored + size - 1) / size);
      if (pieces > span) pieces = span; /* not from a kernel that keeps UDP_GRO_CNT_MAX */
      stat_gro_buffers++;
      stat_gro_datagrams += (uint64_t)pieces;
    }
    uint8_t *from = slab + (size_t)base * (size_t)slot_bytes;
    for (int32_t t = pieces - 1; t >= 0; t--) {
      const uint32_t at = (uint32_t)t * size;
      uint32_t length = t == pieces - 1 ? stored - at : size;
      uint16_t f = flags;
      uint32_t length_wire = length;
      if (pieces == 1) length_wire = wire;
      if (truncated && pieces == 1) f |= RL_META_TRUNCATED;
      if (length > (uint32_t)slot_bytes) {
        f |= RL_META_TRUNCATED;
        length = (uint32_t)slot_bytes;
      }
      /* A segment larger than a slot is dropped above unread: not moved. */
      if (pieces > 1 && size <= (uint32_t)slot_bytes && t > 0)
        memmove(slab + (size_t)(base + t) * (size_t)slot_bytes, from + at, length);
      struct rl_meta *m = &meta[out + t];
      *m = head;
      if (t != 0) m->queue_drops = 0;
      if (t != 0) f &= (uint16_t)~RL_META_HAS_DROPS;
      m->flags = f;
      m->length = length;
      m->length_wire = length_wire;
    }
    if (out != base) {
      for (int32_t t = 0; t < pieces; t++)
        memmove(slab + (size_t)(out + t) * slot_bytes, slab + (size_t)(base + t) * slot_bytes,
                meta[out + t].length);
    }
    out += pieces;
  }
  return out;
}

/* ---- Test-only hook (relay.h: rl_test_*); the relay never calls it ---- */

/* SO_NO_CHECK: the kernel refuses a GSO send on such a socket (EINVAL), as it does when the
 * route's device lacks checksum offload (EIO): the fallback, on loopback. */
int32_t rl_test_udp_no_check(int32_t fd) {
  int on = 1;
  return setsockopt(fd, SOL_SOCKET, SO_NO_CHECK, &on, sizeof(on)) == 0 ? 0 : -errno;
}
