/*
 * c_relay: a hand-written C TPROXY UDP relay, the reference the Bun relay is measured
 * against (issue 2: "a hand-written C recvmmsg/sendmmsg relay reaches about 0.5 of kernel
 * forwarding ..."). Not part of the product: IPv4 only, one thread, no policy.
 *
 *   c_relay --listen ADDR:PORT [--listen ...] [--mark N] [--sessions-max N]
 *           [--idle-ms N] [--batch N] [--coalesce-replies]
 *
 * Same data path and reply strategy as the Bun relay's pktinfo path:
 *   client -> nft tproxy -> listener (IP_TRANSPARENT, IP_RECVORIGDSTADDR; recvmmsg)
 *     -> session (client ip:port, original ip:port) -> its upstream socket (SO_MARK,
 *        connected to the original destination; sendmmsg per run of same-session datagrams)
 *   server -> upstream socket (recvmmsg) -> listener sendmmsg with IP_PKTINFO
 *        ipi_spec_dst = original destination, so the client sees the reply come from it.
 * The listener port must equal the original destination port (the source port of a
 * reply is the listener's). Level-triggered epoll; one drain reads one socket and flushes
 * its sends, like the Bun relay. --coalesce-replies instead gathers the replies of every
 * upstream socket ready in one epoll round into one sendmmsg per listener (an
 * optimisation the Bun relay does not have; off by default to compare like with like).
 *
 * Differences from the Bun relay, on purpose: one upstream socket per session (address-
 * and-port-dependent mapping; the Bun relay defaults to endpoint-independent), replies
 * need no lookup (upstream fd -> session), epoll in the same thread (no wake-up hop).
 *
 * Prints {"event":"ready"} once listening, {"event":"snapshot",...} on SIGUSR1 and
 * {"event":"final",...} on SIGTERM/SIGINT.
 */
#include "bench_common.h"

#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IP_ORIGDSTADDR
#define IP_ORIGDSTADDR 20
#endif
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR IP_ORIGDSTADDR
#endif

#define LISTENER_COUNT_MAX 16
#define SESSIONS_MAX_LIMIT (1 << 20)
#define BATCH_COUNT_MAX 256
/* Receive slot: a whole IPv4 datagram. */
#define SLOT_BYTES 65536
/* Batches drained per socket per wake-up (kernel selftest style budget). */
#define DRAIN_BATCHES_MAX 16
#define EPOLL_EVENTS_MAX 256
#define POLL_TIMEOUT_MS 100
#define EXPIRE_INTERVAL_MS 1000
#define RUNTIME_MS_MAX (4 * 3600 * 1000L)
/* epoll tags: high 32 bits say which kind of socket, low 32 bits its index. */
#define TAG_LISTENER 1ull
#define TAG_UPSTREAM 2ull

struct session {
  int fd;            /* upstream socket, -1 when the slot is free */
  uint16_t listener; /* index into listeners */
  uint16_t client_port;
  uint16_t target_port;
  uint32_t client_addr; /* network order */
  uint32_t target_addr;
  uint64_t last_seen_ms;
};

struct counters {
  uint64_t from_clients, to_targets, from_targets, to_clients;
  uint64_t sessions_created, sessions_expired;
  uint64_t dropped_no_origdst, dropped_table_full, dropped_socket_failed;
  uint64_t dropped_send_to_target, dropped_send_to_client, dropped_truncated;
  uint64_t wakeups;
};

static struct counters c;
static int listener_fds[LISTENER_COUNT_MAX];
static int listener_count;
static int mark;
static int batch_count = 64;
static int coalesce_replies;
static uint64_t idle_ms = 10000;

/* Sessions live in `sessions`; `index` is an open-addressing hash (linear probing,
 * backward-shift deletion) of session numbers, twice as many slots as sessions. */
static struct session *sessions;
static int32_t *index_slots;
static uint32_t index_mask;
static int32_t *free_list;
static int free_count;
static int sessions_max = 65536;

static struct mmsghdr msgs[BATCH_COUNT_MAX];
static struct iovec iovs[BATCH_COUNT_MAX];
static struct sockaddr_in names[BATCH_COUNT_MAX];
static uint8_t controls[BATCH_COUNT_MAX][64];
static uint8_t slots[BATCH_COUNT_MAX][SLOT_BYTES];

/* Replies waiting for one sendmmsg on their listener (--coalesce-replies and normal). */
static struct mmsghdr reply_msgs[BATCH_COUNT_MAX];
static struct iovec reply_iovs[BATCH_COUNT_MAX];
static struct sockaddr_in reply_names[BATCH_COUNT_MAX];
static uint8_t reply_controls[BATCH_COUNT_MAX][64];
static uint8_t reply_slots[BATCH_COUNT_MAX][SLOT_BYTES];
static int reply_pending; /* total queued */
static int reply_listener_of[BATCH_COUNT_MAX];

static volatile sig_atomic_t snapshot_requested;
static volatile sig_atomic_t stop_requested;
static void on_usr1(int sig) { (void)sig; snapshot_requested = 1; }
static void on_term(int sig) { (void)sig; stop_requested = 1; }

static uint64_t now_ms(void) { return now_ns() / 1000000ull; }

static uint32_t hash_key(uint32_t ca, uint16_t cp, uint32_t ta, uint16_t tp) {
  uint64_t h = ((uint64_t)ca << 32 | ta) * 0x9e3779b97f4a7c15ull;
  h ^= ((uint64_t)cp << 16 | tp) * 0xc2b2ae3d27d4eb4full;
  h ^= h >> 29;
  return (uint32_t)h;
}

static int session_find(uint32_t ca, uint16_t cp, uint32_t ta, uint16_t tp, uint32_t *slot_out) {
  uint32_t i = hash_key(ca, cp, ta, tp) & index_mask;
  /* Bounded: the index is at most half full, so a free slot comes within its size. */
  for (uint32_t probes = 0; probes <= index_mask; probes++, i = (i + 1) & index_mask) {
    int32_t s = index_slots[i];
    if (s < 0) {
      *slot_out = i;
      return -1;
    }
    const struct session *x = &sessions[s];
    if (x->client_addr == ca && x->client_port == cp && x->target_addr == ta &&
        x->target_port == tp) {
      *slot_out = i;
      return s;
    }
  }
  *slot_out = 0;
  return -1;
}

static void index_remove(uint32_t i) {
  index_slots[i] = -1;
  uint32_t j = i;
  /* Backward-shift: move later entries of the cluster into the hole. Bounded by size. */
  for (uint32_t probes = 0; probes <= index_mask; probes++) {
    j = (j + 1) & index_mask;
    int32_t s = index_slots[j];
    if (s < 0) return;
    const struct session *x = &sessions[s];
    uint32_t home = hash_key(x->client_addr, x->client_port, x->target_addr, x->target_port) &
                    index_mask;
    /* Move s into the hole unless its home lies cyclically in (i, j]. */
    int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
    if (!stays) {
      index_slots[i] = s;
      index_slots[j] = -1;
      i = j;
    }
  }
}

static void session_close(int s, int ep) {
  struct session *x = &sessions[s];
  uint32_t slot;
  if (session_find(x->client_addr, x->client_port, x->target_addr, x->target_port, &slot) == s) {
    index_remove(slot);
  }
  epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
  close(x->fd);
  x->fd = -1;
  free_list[free_count++] = s;
}

static int session_open(int ep, int listener, uint32_t ca, uint16_t cp, uint32_t ta, uint16_t tp,
                        uint32_t slot) {
  if (free_count == 0) {
    c.dropped_table_full++;
    return -1;
  }
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    c.dropped_socket_failed++;
    return -1;
  }
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = tp, .sin_addr.s_addr = ta};
  if ((mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) ||
      connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) {
    close(fd);
    c.dropped_socket_failed++;
    return -1;
  }
  int s = free_list[--free_count];
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_UPSTREAM << 32 | (uint32_t)s};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl upstream");
  sessions[s] = (struct session){.fd = fd, .listener = (uint16_t)listener, .client_port = cp,
                                 .target_port = tp, .client_addr = ca, .target_addr = ta,
                                 .last_seen_ms = now_ms()};
  index_slots[slot] = s;
  c.sessions_created++;
  return s;
}

static void reset_receive(int count, int with_control) {
  for (int i = 0; i < count; i++) {
    iovs[i].iov_base = slots[i];
    iovs[i].iov_len = SLOT_BYTES;
    struct msghdr *h = &msgs[i].msg_hdr;
    h->msg_name = &names[i];
    h->msg_namelen = sizeof(names[i]);
    h->msg_iov = &iovs[i];
    h->msg_iovlen = 1;
    h->msg_control = with_control ? controls[i] : NULL;
    h->msg_controllen = with_control ? sizeof(controls[i]) : 0;
    h->msg_flags = 0;
  }
}

/* Sends msgs[from, to) on fd; returns how many went. Bounded: each pass sends >= 1 or
 * skips one. */
static int send_run(int fd, struct mmsghdr *m, int count, uint64_t *dropped) {
  int done = 0, sent = 0;
  while (done < count) {
    int k = sendmmsg(fd, m + done, (unsigned)(count - done), MSG_DONTWAIT);
    if (k > 0) {
      done += k;
      sent += k;
    } else {
      (*dropped)++;
      done++;
    }
  }
  return sent;
}

static void drain_listener(int ep, int l) {
  int fd = listener_fds[l];
  uint64_t t = now_ms();
  for (int round = 0; round < DRAIN_BATCHES_MAX; round++) {
    reset_receive(batch_count, 1);
    int n = recvmmsg(fd, msgs, (unsigned)batch_count, MSG_DONTWAIT, NULL);
    if (n <= 0) return;
    c.from_clients += (uint64_t)n;
    /* Turn each datagram into a connected send on its session's upstream socket, then
     * send runs of the same session with one sendmmsg. */
    int sess[BATCH_COUNT_MAX];
    for (int i = 0; i < n; i++) {
      sess[i] = -1;
      struct msghdr *h = &msgs[i].msg_hdr;
      if (h->msg_flags & MSG_TRUNC) {
        c.dropped_truncated++;
        continue;
      }
      const struct sockaddr_in *orig = NULL;
      for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm != NULL; cm = CMSG_NXTHDR(h, cm)) {
        if (cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_ORIGDSTADDR) {
          orig = (const struct sockaddr_in *)CMSG_DATA(cm);
        }
      }
      if (orig == NULL) {
        c.dropped_no_origdst++;
        continue;
      }
      uint32_t slot;
      int s = session_find(names[i].sin_addr.s_addr, names[i].sin_port, orig->sin_addr.s_addr,
                           orig->sin_port, &slot);
      if (s < 0) {
        s = session_open(ep, l, names[i].sin_addr.s_addr, names[i].sin_port,
                         orig->sin_addr.s_addr, orig->sin_port, slot);
        if (s < 0) continue;
      }
      sessions[s].last_seen_ms = t;
      sess[i] = s;
      iovs[i].iov_len = msgs[i].msg_len;
      h->msg_name = NULL; /* connected */
      h->msg_namelen = 0;
      h->msg_control = NULL;
      h->msg_controllen = 0;
    }
    for (int i = 0; i < n;) {
      if (sess[i] < 0) {
        i++;
        continue;
      }
      int j = i + 1;
      while (j < n && sess[j] == sess[i]) j++;
      c.to_targets +=
          (uint64_t)send_run(sessions[sess[i]].fd, msgs + i, j - i, &c.dropped_send_to_target);
      i = j;
    }
    if (n < batch_count) return;
  }
}

static void flush_replies(void) {
  if (reply_pending == 0) return;
  /* Queue order is by arrival; send each listener's replies as runs. */
  for (int i = 0; i < reply_pending;) {
    int l = reply_listener_of[i];
    int j = i + 1;
    while (j < reply_pending && reply_listener_of[j] == l) j++;
    c.to_clients += (uint64_t)send_run(listener_fds[l], reply_msgs + i, j - i,
                                       &c.dropped_send_to_client);
    i = j;
  }
  reply_pending = 0;
}

static void drain_upstream(int s) {
  struct session *x = &sessions[s];
  uint64_t t = now_ms();
  for (int round = 0; round < DRAIN_BATCHES_MAX; round++) {
    if (reply_pending + batch_count > BATCH_COUNT_MAX) flush_replies();
    int base = reply_pending;
    for (int i = 0; i < batch_count; i++) {
      reply_iovs[base + i].iov_base = reply_slots[base + i];
      reply_iovs[base + i].iov_len = SLOT_BYTES;
      memset(&reply_msgs[base + i].msg_hdr, 0, sizeof(struct msghdr));
      reply_msgs[base + i].msg_hdr.msg_iov = &reply_iovs[base + i];
      reply_msgs[base + i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(x->fd, reply_msgs + base, (unsigned)batch_count, MSG_DONTWAIT, NULL);
    if (n <= 0) break;
    c.from_targets += (uint64_t)n;
    x->last_seen_ms = t;
    for (int i = base; i < base + n; i++) {
      struct msghdr *h = &reply_msgs[i].msg_hdr;
      if (h->msg_flags & MSG_TRUNC) { /* cannot happen with 64 KiB slots; count anyway */
        c.dropped_truncated++;
      }
      reply_iovs[i].iov_len = reply_msgs[i].msg_len;
      reply_names[i] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = x->client_port,
                                            .sin_addr.s_addr = x->client_addr};
      h->msg_name = &reply_names[i];
      h->msg_namelen = sizeof(reply_names[i]);
      /* The reply leaves from the original destination: IP_PKTINFO sets the source
       * address; the listener's own port is the original port. */
      struct in_pktinfo info = {0};
      info.ipi_spec_dst.s_addr = x->target_addr;
      h->msg_control = reply_controls[i];
      h->msg_controllen = CMSG_SPACE(sizeof(info));
      struct cmsghdr *cm = CMSG_FIRSTHDR(h);
      cm->cmsg_level = SOL_IP;
      cm->cmsg_type = IP_PKTINFO;
      cm->cmsg_len = CMSG_LEN(sizeof(info));
      memcpy(CMSG_DATA(cm), &info, sizeof(info));
      reply_listener_of[i] = x->listener;
    }
    reply_pending += n;
    if (n < batch_count) break;
  }
  if (!coalesce_replies) flush_replies();
}

static void expire(int ep) {
  uint64_t t = now_ms();
  for (int s = 0; s < sessions_max; s++) {
    if (sessions[s].fd >= 0 && t - sessions[s].last_seen_ms > idle_ms) {
      session_close(s, ep);
      c.sessions_expired++;
    }
  }
}

static void print_counters(const char *event) {
  printf("{\"event\":\"%s\",\"fromClients\":%llu,\"toTargets\":%llu,\"fromTargets\":%llu,"
         "\"toClients\":%llu,\"sessionsCreated\":%llu,\"sessionsExpired\":%llu,"
         "\"sessionsActive\":%d,\"droppedNoOrigDst\":%llu,\"droppedTableFull\":%llu,"
         "\"droppedSocketFailed\":%llu,\"droppedSendToTarget\":%llu,"
         "\"droppedSendToClient\":%llu,\"droppedTruncated\":%llu,\"wakeups\":%llu}\n",
         event, (unsigned long long)c.from_clients, (unsigned long long)c.to_targets,
         (unsigned long long)c.from_targets, (unsigned long long)c.to_clients,
         (unsigned long long)c.sessions_created, (unsigned long long)c.sessions_expired,
         sessions_max - free_count, (unsigned long long)c.dropped_no_origdst,
         (unsigned long long)c.dropped_table_full, (unsigned long long)c.dropped_socket_failed,
         (unsigned long long)c.dropped_send_to_target,
         (unsigned long long)c.dropped_send_to_client, (unsigned long long)c.dropped_truncated,
         (unsigned long long)c.wakeups);
  fflush(stdout);
}

static void usage(void) {
  die_msg("usage: c_relay --listen ADDR:PORT [--listen ...] [--mark N] [--sessions-max N] "
          "[--idle-ms N] [--batch N] [--coalesce-replies]");
}

int main(int argc, char **argv) {
  const char *listens[LISTENER_COUNT_MAX];
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--coalesce-replies") == 0) {
      coalesce_replies = 1;
      continue;
    }
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL) usage();
    if (strcmp(a, "--listen") == 0) {
      if (listener_count == LISTENER_COUNT_MAX) die_msg("too many --listen (max 16)");
      listens[listener_count++] = v;
    } else if (strcmp(a, "--mark") == 0) {
      mark = (int)parse_long(a, v, 0, 0x7fffffff);
    } else if (strcmp(a, "--sessions-max") == 0) {
      sessions_max = (int)parse_long(a, v, 16, SESSIONS_MAX_LIMIT);
    } else if (strcmp(a, "--idle-ms") == 0) {
      idle_ms = (uint64_t)parse_long(a, v, 100, 86400000);
    } else if (strcmp(a, "--batch") == 0) {
      batch_count = (int)parse_long(a, v, 1, BATCH_COUNT_MAX / 2);
    } else {
      usage();
    }
    i++;
  }
  if (listener_count == 0) usage();

  /* All memory up front: sessions, the index (a power of two >= 2 x sessions), free list. */
  uint32_t index_size = 1;
  while (index_size < 2u * (uint32_t)sessions_max) index_size <<= 1;
  index_mask = index_size - 1;
  sessions = calloc((size_t)sessions_max, sizeof(*sessions));
  index_slots = malloc(index_size * sizeof(*index_slots));
  free_list = malloc((size_t)sessions_max * sizeof(*free_list));
  if (!sessions || !index_slots || !free_list) die("malloc");
  for (uint32_t i = 0; i < index_size; i++) index_slots[i] = -1;
  for (int s = 0; s < sessions_max; s++) {
    sessions[s].fd = -1;
    free_list[s] = sessions_max - 1 - s;
  }
  free_count = sessions_max;

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  for (int l = 0; l < listener_count; l++) {
    struct sockaddr_storage sa;
    socklen_t sa_len;
    if (parse_endpoint(listens[l], &sa, &sa_len) != 0 || sa.ss_family != AF_INET) {
      die_msg("bad --listen endpoint (IPv4 ADDR:PORT)");
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) != 0) die("IP_TRANSPARENT");
    if (setsockopt(fd, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof(one)) != 0) {
      die("IP_RECVORIGDSTADDR");
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) die("SO_REUSEADDR");
    /* The Bun relay's listener defaults (listenerReceiveBytes/SendBytes: 8 MiB). */
    set_buffers(fd, 8 << 20, 8 << 20);
    if (bind(fd, (struct sockaddr *)&sa, sa_len) != 0) {
      fprintf(stderr, "bind %s: %s\n", listens[l], strerror(errno));
      return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTENER << 32 | (uint32_t)l};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl listener");
    listener_fds[l] = fd;
  }

  struct sigaction sa_usr1 = {.sa_handler = on_usr1};
  struct sigaction sa_term = {.sa_handler = on_term};
  sigaction(SIGUSR1, &sa_usr1, NULL);
  sigaction(SIGTERM, &sa_term, NULL);
  sigaction(SIGINT, &sa_term, NULL);
  printf("{\"event\":\"ready\",\"listeners\":%d,\"coalesceReplies\":%s}\n", listener_count,
         coalesce_replies ? "true" : "false");
  fflush(stdout);

  const uint64_t end_ms = now_ms() + RUNTIME_MS_MAX;
  uint64_t next_expire_ms = now_ms() + EXPIRE_INTERVAL_MS;
  struct epoll_event events[EPOLL_EVENTS_MAX];
  /* Bounded by the stop signal and RUNTIME_MS_MAX. */
  while (!stop_requested && now_ms() < end_ms) {
    int n = epoll_wait(ep, events, EPOLL_EVENTS_MAX, POLL_TIMEOUT_MS);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    if (n > 0) c.wakeups++;
    for (int i = 0; i < n; i++) {
      uint64_t tag = events[i].data.u64 >> 32;
      uint32_t index = (uint32_t)events[i].data.u64;
      if (tag == TAG_LISTENER) drain_listener(ep, (int)index);
      else if (sessions[index].fd >= 0) drain_upstream((int)index);
    }
    flush_replies();
    if (now_ms() >= next_expire_ms) {
      expire(ep);
      next_expire_ms = now_ms() + EXPIRE_INTERVAL_MS;
    }
    if (snapshot_requested) {
      snapshot_requested = 0;
      print_counters("snapshot");
    }
  }
  print_counters("final");
  return 0;
}
