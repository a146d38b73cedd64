/*
 * udp_sink_echo: the server side of the UDP benchmark, one thread, epoll + recvmmsg.
 *
 *   udp_sink_echo --mode echo|sink --bind ADDR:PORT [--bind ADDR:PORT ...]
 *                 [--duration-ms N] [--batch N] [--receive-bytes N]
 *
 * echo: every datagram goes back to its sender (sendmmsg, same socket, same batch), so
 *       the generator measures round trips. Bind each address explicitly: a wildcard
 *       socket would answer from the routing's preferred source, not from the address
 *       the client asked.
 * sink: counts datagrams and bytes; those stamped BENCH_PHASE_MEASURE by udp_gen are
 *       counted apart, so the receive count covers exactly the generator's window.
 *
 * Prints {"event":"ready",...} once every socket is bound, a {"event":"snapshot",...}
 * line on SIGUSR1 (counters are cumulative: the runner takes differences), and
 * {"event":"final",...} on SIGTERM/SIGINT or after --duration-ms, then exits 0.
 */
#include "bench_common.h"

#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#define ENDPOINT_COUNT_MAX 64
#define BATCH_COUNT_MAX 256
/* Batches drained per socket per wake-up before the others get a turn (kernel selftest
 * style budget), so one busy port cannot starve the rest. */
#define DRAIN_BATCHES_MAX 16
#define SLOT_BYTES 65536
#define EPOLL_EVENTS_MAX 64
#define POLL_TIMEOUT_MS 100
#define EINTR_RETRIES_MAX 4
/* Hard cap on the run time, whatever the caller asks: bounded even if never signalled. */
#define RUNTIME_MS_MAX (4 * 3600 * 1000L)

enum mode { MODE_ECHO, MODE_SINK };

struct counters {
  uint64_t packets;          /* every datagram received */
  uint64_t bytes;            /* their payload bytes */
  uint64_t measured_packets; /* sink: with our magic and BENCH_PHASE_MEASURE */
  uint64_t measured_bytes;
  uint64_t foreign_packets;  /* sink: shorter than a header or without our magic */
  uint64_t echoed;           /* echo: datagrams sent back */
  uint64_t echo_dropped;     /* echo: sendmmsg refused (EAGAIN, ENOBUFS, ...) */
  uint64_t wakeups;          /* epoll_wait returns with events */
};

static volatile sig_atomic_t snapshot_requested;
static volatile sig_atomic_t stop_requested;

static void on_usr1(int sig) { (void)sig; snapshot_requested = 1; }
static void on_term(int sig) { (void)sig; stop_requested = 1; }

static struct mmsghdr msgs[BATCH_COUNT_MAX];
static struct iovec iovs[BATCH_COUNT_MAX];
static struct sockaddr_storage names[BATCH_COUNT_MAX];
static uint8_t slots[BATCH_COUNT_MAX][SLOT_BYTES];

static void print_counters(const char *event, const struct counters *c) {
  printf("{\"event\":\"%s\",\"monoNs\":%llu,\"packets\":%llu,\"bytes\":%llu,"
         "\"measuredPackets\":%llu,\"measuredBytes\":%llu,\"foreignPackets\":%llu,"
         "\"echoed\":%llu,\"echoDropped\":%llu,\"wakeups\":%llu}\n",
         event, (unsigned long long)now_ns(), (unsigned long long)c->packets,
         (unsigned long long)c->bytes, (unsigned long long)c->measured_packets,
         (unsigned long long)c->measured_bytes, (unsigned long long)c->foreign_packets,
         (unsigned long long)c->echoed, (unsigned long long)c->echo_dropped,
         (unsigned long long)c->wakeups);
  fflush(stdout);
}

static void reset_slots(int count) {
  for (int i = 0; i < count; i++) {
    iovs[i].iov_base = slots[i];
    iovs[i].iov_len = SLOT_BYTES;
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &names[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
    msgs[i].msg_hdr.msg_control = NULL;
    msgs[i].msg_hdr.msg_controllen = 0;
    msgs[i].msg_hdr.msg_flags = 0;
    msgs[i].msg_len = 0;
  }
}

/* Drains one socket, bounded by DRAIN_BATCHES_MAX batches. */
static void drain(int fd, enum mode mode, int batch_count, struct counters *c) {
  for (int round = 0; round < DRAIN_BATCHES_MAX; round++) {
    reset_slots(batch_count);
    int n = recvmmsg(fd, msgs, (unsigned)batch_count, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      die("recvmmsg");
    }
    if (n == 0) return;
    for (int i = 0; i < n; i++) {
      uint32_t len = msgs[i].msg_len;
      c->packets++;
      c->bytes += len;
      if (mode == MODE_SINK) {
        const struct bench_hdr *h = (const struct bench_hdr *)slots[i];
        if (len < sizeof(*h) || h->magic != BENCH_MAGIC) {
          c->foreign_packets++;
        } else if (h->phase == BENCH_PHASE_MEASURE) {
          c->measured_packets++;
          c->measured_bytes += len;
        }
      } else {
        iovs[i].iov_len = len; /* send back exactly what came in */
      }
    }
    if (mode == MODE_ECHO) {
      int sent_total = 0;
      /* Bounded: each pass sends >= 1 datagram, stops, or is one of EINTR_RETRIES_MAX. */
      for (int retries = 0; sent_total < n && retries <= EINTR_RETRIES_MAX;) {
        int s = sendmmsg(fd, msgs + sent_total, (unsigned)(n - sent_total), MSG_DONTWAIT);
        if (s <= 0) {
          if (s < 0 && errno == EINTR) {
            retries++;
            continue;
          }
          break; /* EAGAIN, ENOBUFS, ...: the rest of the batch is dropped */
        }
        sent_total += s;
      }
      c->echoed += (uint64_t)sent_total;
      c->echo_dropped += (uint64_t)(n - sent_total);
    }
    if (n < batch_count) return; /* the queue is empty */
  }
}

static void usage(void) {
  die_msg("usage: udp_sink_echo --mode echo|sink --bind ADDR:PORT [--bind ...] "
          "[--duration-ms N] [--batch N] [--receive-bytes N]");
}

int main(int argc, char **argv) {
  enum mode mode = MODE_ECHO;
  int mode_given = 0;
  const char *binds[ENDPOINT_COUNT_MAX];
  int bind_count = 0;
  long duration_ms = 0; /* 0: until signalled (still capped by RUNTIME_MS_MAX) */
  int batch_count = 64;
  int receive_bytes = 8 << 20;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--mode") == 0 && v) {
      if (strcmp(v, "echo") == 0) mode = MODE_ECHO;
      else if (strcmp(v, "sink") == 0) mode = MODE_SINK;
      else usage();
      mode_given = 1;
      i++;
    } else if (strcmp(a, "--bind") == 0 && v) {
      if (bind_count == ENDPOINT_COUNT_MAX) die_msg("too many --bind (max 64)");
      binds[bind_count++] = v;
      i++;
    } else if (strcmp(a, "--duration-ms") == 0 && v) {
      duration_ms = parse_long("--duration-ms", v, 0, RUNTIME_MS_MAX);
      i++;
    } else if (strcmp(a, "--batch") == 0 && v) {
      batch_count = (int)parse_long("--batch", v, 1, BATCH_COUNT_MAX);
      i++;
    } else if (strcmp(a, "--receive-bytes") == 0 && v) {
      receive_bytes = (int)parse_long("--receive-bytes", v, 0, 1 << 30);
      i++;
    } else {
      usage();
    }
  }
  if (!mode_given || bind_count == 0) usage();

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  int fds[ENDPOINT_COUNT_MAX];
  for (int i = 0; i < bind_count; i++) {
    struct sockaddr_storage sa;
    socklen_t sa_len = 0;
    if (parse_endpoint(binds[i], &sa, &sa_len) != 0) die_msg("bad --bind endpoint");
    int fd = socket(sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    set_buffers(fd, receive_bytes, receive_bytes);
    if (bind(fd, (struct sockaddr *)&sa, sa_len) != 0) {
      fprintf(stderr, "bind %s: %s\n", binds[i], strerror(errno));
      return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    fds[i] = fd;
  }

  struct sigaction sa_usr1 = {.sa_handler = on_usr1};
  struct sigaction sa_term = {.sa_handler = on_term};
  sigaction(SIGUSR1, &sa_usr1, NULL);
  sigaction(SIGTERM, &sa_term, NULL);
  sigaction(SIGINT, &sa_term, NULL);

  printf("{\"event\":\"ready\",\"mode\":\"%s\",\"sockets\":%d}\n",
         mode == MODE_ECHO ? "echo" : "sink", bind_count);
  fflush(stdout);

  struct counters c = {0};
  const uint64_t start_ns = now_ns();
  const uint64_t limit_ms = duration_ms > 0 ? (uint64_t)duration_ms : (uint64_t)RUNTIME_MS_MAX;
  const uint64_t end_ns = start_ns + limit_ms * 1000000ull;
  struct epoll_event events[EPOLL_EVENTS_MAX];
  /* Bounded by end_ns (at most RUNTIME_MS_MAX) and by the stop signal. */
  while (!stop_requested && now_ns() < end_ns) {
    int n = epoll_wait(ep, events, EPOLL_EVENTS_MAX, POLL_TIMEOUT_MS);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    if (n > 0) c.wakeups++;
    for (int i = 0; i < n; i++) drain(fds[events[i].data.u32], mode, batch_count, &c);
    if (snapshot_requested) {
      snapshot_requested = 0;
      print_counters("snapshot", &c);
    }
  }
  print_counters("final", &c);
  return 0;
}
