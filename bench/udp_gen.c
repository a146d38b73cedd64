/*
 * udp_gen: batched UDP load generator, one thread (epoll + recvmmsg/sendmmsg).
 *
 *   udp_gen --mode rr|oneway --target ADDR:PORT [--target ...] --flows F --size BYTES
 *           --duration-ms D [--warmup-ms W] [--window N] [--rate PPS] [--batch N]
 *           [--timeout-ms T] [--run-id N]
 *
 * Each flow is its own connected UDP socket, so its own source port; flows take the
 * targets round-robin (flow i -> target i % targets).
 *
 * rr      request/response: every flow keeps --window requests in flight (default 1).
 *         Each response's round-trip time comes from the send timestamp carried in the
 *         payload. A transaction counts when its request was sent in the measured
 *         window and its response arrived before the window ended. A flow silent for
 *         --timeout-ms (default 200) counts its outstanding requests as lost, moves to
 *         a new epoch (late answers to older epochs are ignored) and starts over.
 * oneway  every flow sends batches of --batch datagrams (sendmmsg) round-robin, at the
 *         maximum rate or --rate datagrams/s in total. Datagrams sent in the measured
 *         window carry BENCH_PHASE_MEASURE; udp_sink_echo counts those apart, so
 *         received/sent over the same window gives the loss.
 *
 * The run is warmup (sessions get created, caches fill) then the measured window.
 * Output: one JSON line on stdout (fields below in print_result).
 *
 * "generatorBound" rule (the number may describe the generator, not the path):
 *   busyFraction = 1 - (wall time spent waiting: inside epoll_wait in rr, in the pacing
 *   sleep in oneway) / wall time, over the measured window. The generator is saturated
 *   when busyFraction >= 0.90: it (almost) never waited for the path, so a faster
 *   generator might have measured more. Time this process was runnable but preempted
 *   (2 cores shared with the path under test) counts as busy: the generator was the
 *   limit then too. In rr, saturated means generatorBound. In oneway at the maximum
 *   rate the generator never waits by construction, so the runner (bench/udp.ts) marks a
 *   oneway cell generator-bound only when it is saturated AND the sink received >= 99%
 *   of the datagrams sent in the window (the path kept up with all the generator made).
 *   cpuFraction (user + system CPU from getrusage / wall) is printed for context: softirq
 *   work the kernel does on this CPU while this process sends (veth forwarding runs in
 *   the sender's softirq) lands in it unless the kernel has IRQ time accounting. Send
 *   calls refused with EAGAIN/ENOBUFS are counted in "sendBlocked".
 */
#include "bench_common.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#define TARGET_COUNT_MAX 64
#define FLOW_COUNT_MAX 4096
#define WINDOW_MAX 64
#define BATCH_COUNT_MAX 256
#define SLOT_BYTES 2048 /* rr responses and oneway sends: --size is capped to fit */
#define SIZE_BYTES_MAX SLOT_BYTES
#define DURATION_MS_MAX 60000
#define WARMUP_MS_MAX 10000
#define TIMEOUT_MS_MAX 10000
#define EPOLL_EVENTS_MAX 256
_Static_assert(WINDOW_MAX * 2 <= BATCH_COUNT_MAX, "rr receive batch fits");
/* Batches drained per socket per wake-up, so a busy flow cannot starve the others. */
#define DRAIN_BATCHES_MAX 4
/* rr: how often flows are checked for timeouts. */
#define SCAN_INTERVAL_NS (10 * 1000000ull)
/* Latency histogram: 100 ns buckets up to 100 ms; slower answers land in the last one. */
#define HIST_BUCKET_NS 100
#define HIST_BUCKET_COUNT 1000000
#define BUSY_SATURATED_FRACTION 0.90
#define SEND_RETRIES_MAX 4

enum mode { MODE_RR, MODE_ONEWAY };

struct flow {
  int fd;
  uint16_t epoch;
  uint32_t outstanding; /* rr: requests in flight in the current epoch */
  uint64_t seq;
  uint64_t last_progress_ns; /* rr: last response (or (re)start) */
};

struct stats {
  uint64_t sent_total;      /* datagrams sent, whole run */
  uint64_t sent_measured;   /* sent inside the measured window */
  uint64_t received_total;  /* rr: responses of the current epoch, whole run */
  uint64_t transactions;    /* rr: responses counted in the window */
  uint64_t lost_measured;   /* rr: requests given up on during the window */
  uint64_t lost_total;
  uint64_t late;            /* rr: responses to an older epoch, ignored */
  uint64_t foreign;         /* rr: responses that are not ours (bad magic/run/flow) */
  uint64_t send_blocked;    /* send calls refused with EAGAIN/ENOBUFS */
  uint64_t send_calls;
  uint64_t recv_calls;
};

static struct flow flows[FLOW_COUNT_MAX];
static struct sockaddr_storage targets[TARGET_COUNT_MAX];
static socklen_t target_lens[TARGET_COUNT_MAX];
static uint32_t hist[HIST_BUCKET_COUNT];
static struct mmsghdr msgs[BATCH_COUNT_MAX];
static struct iovec iovs[BATCH_COUNT_MAX];
static uint8_t slots[BATCH_COUNT_MAX][SLOT_BYTES];

struct config {
  enum mode mode;
  int target_count;
  int flow_count;
  int size_bytes;
  long duration_ms;
  long warmup_ms;
  int window;
  long rate_pps; /* oneway; 0 = as fast as possible */
  int batch_count;
  long timeout_ms;
  uint32_t run_id;
};

struct clock_window {
  uint64_t start_ns;   /* warmup starts */
  uint64_t measure_ns; /* measured window starts */
  uint64_t end_ns;     /* everything stops */
};

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void stamp(uint8_t *slot, const struct config *cfg, uint32_t flow_index,
                  struct flow *f, uint8_t phase, uint64_t t_ns) {
  struct bench_hdr *h = (struct bench_hdr *)slot;
  h->magic = BENCH_MAGIC;
  h->run_id = cfg->run_id;
  h->flow = flow_index;
  h->epoch = f->epoch;
  h->phase = phase;
  h->reserved = 0;
  h->seq = f->seq++;
  h->sent_ns = t_ns;
}

static int send_blocked_errno(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS; }

/* Sends `count` fresh datagrams on one flow; returns how many were sent. */
static int send_batch(const struct config *cfg, const struct clock_window *w, uint32_t flow_index,
                      int count, struct stats *st) {
  struct flow *f = &flows[flow_index];
  uint64_t t = now_ns();
  uint8_t phase = t >= w->measure_ns ? BENCH_PHASE_MEASURE : BENCH_PHASE_WARMUP;
  for (int i = 0; i < count; i++) {
    stamp(slots[i], cfg, flow_index, f, phase, t);
    iovs[i].iov_base = slots[i];
    iovs[i].iov_len = (size_t)cfg->size_bytes;
    memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int sent = 0;
  /* Bounded: a pass sends >= 1 datagram, stops, or is one of SEND_RETRIES_MAX retries
   * (EINTR, or a pending ICMP error reported once by the kernel). */
  for (int retries = 0; sent < count && retries <= SEND_RETRIES_MAX;) {
    st->send_calls++;
    int s = sendmmsg(f->fd, msgs + sent, (unsigned)(count - sent), MSG_DONTWAIT);
    if (s > 0) {
      sent += s;
      continue;
    }
    if (s < 0 && (errno == EINTR || errno == ECONNREFUSED)) { /* ECONNREFUSED: earlier ICMP */
      retries++;
      continue;
    }
    if (s == 0 || send_blocked_errno(errno)) {
      st->send_blocked++;
      break;
    }
    die("sendmmsg");
  }
  st->sent_total += (uint64_t)sent;
  if (phase == BENCH_PHASE_MEASURE) st->sent_measured += (uint64_t)sent;
  return sent;
}

/* rr: reads what one flow has, then sends one new request per answered one. */
static void rr_serve(const struct config *cfg, const struct clock_window *w,
                     uint32_t flow_index, struct stats *st) {
  struct flow *f = &flows[flow_index];
  for (int round = 0; round < DRAIN_BATCHES_MAX; round++) {
    /* Room for every answer in flight plus late ones; WINDOW_MAX * 2 <= BATCH_COUNT_MAX. */
    int batch = cfg->window * 2;
    for (int i = 0; i < batch; i++) {
      iovs[i].iov_base = slots[i];
      iovs[i].iov_len = SLOT_BYTES;
      memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    st->recv_calls++;
    int n = recvmmsg(f->fd, msgs, (unsigned)batch, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      if (errno == ECONNREFUSED) continue; /* ICMP port unreachable: the timeout recovers */
      die("recvmmsg");
    }
    if (n == 0) return;
    uint64_t t = now_ns();
    int answered = 0;
    for (int i = 0; i < n; i++) {
      const struct bench_hdr *h = (const struct bench_hdr *)slots[i];
      if (msgs[i].msg_len < sizeof(*h) || h->magic != BENCH_MAGIC || h->run_id != cfg->run_id ||
          h->flow != flow_index) {
        st->foreign++;
        continue;
      }
      if (h->epoch != f->epoch) {
        st->late++;
        continue;
      }
      answered++;
      st->received_total++;
      if (h->sent_ns >= w->measure_ns && t < w->end_ns) {
        st->transactions++;
        uint64_t rtt = t > h->sent_ns ? t - h->sent_ns : 0;
        uint64_t b = rtt / HIST_BUCKET_NS;
        hist[b < HIST_BUCKET_COUNT ? b : HIST_BUCKET_COUNT - 1]++;
      }
    }
    if (answered > 0) {
      f->outstanding -= (uint32_t)answered <= f->outstanding ? (uint32_t)answered : f->outstanding;
      f->last_progress_ns = t;
      if (t < w->end_ns) f->outstanding += (uint32_t)send_batch(cfg, w, flow_index, answered, st);
    }
    if (n < batch) return;
  }
}

/* rr: flows silent for the timeout lose their requests and start a new epoch. */
static void rr_scan(const struct config *cfg, const struct clock_window *w, struct stats *st) {
  uint64_t t = now_ns();
  uint64_t timeout_ns = (uint64_t)cfg->timeout_ms * 1000000ull;
  for (int i = 0; i < cfg->flow_count; i++) {
    struct flow *f = &flows[i];
    if (f->outstanding > 0 && t - f->last_progress_ns > timeout_ns) {
      st->lost_total += f->outstanding;
      if (t >= w->measure_ns) st->lost_measured += f->outstanding;
      f->outstanding = 0;
      f->epoch++;
    }
    if (f->outstanding < (uint32_t)cfg->window) {
      f->last_progress_ns = t;
      f->outstanding +=
          (uint32_t)send_batch(cfg, w, (uint32_t)i, cfg->window - (int)f->outstanding, st);
    }
  }
}

static double percentile_us(uint64_t count, double q) {
  if (count == 0) return -1;
  uint64_t rank = (uint64_t)((double)count * q);
  if (rank >= count) rank = count - 1;
  uint64_t seen = 0;
  for (uint32_t b = 0; b < HIST_BUCKET_COUNT; b++) {
    seen += hist[b];
    if (seen > rank) return ((double)b + 0.5) * HIST_BUCKET_NS / 1000.0;
  }
  return -1;
}

static void usage(void) {
  die_msg("usage: udp_gen --mode rr|oneway --target ADDR:PORT [--target ...] --flows F "
          "--size BYTES --duration-ms D [--warmup-ms W] [--window N] [--rate PPS] "
          "[--batch N] [--timeout-ms T] [--run-id N]");
}

int main(int argc, char **argv) {
  struct config cfg = {.mode = MODE_RR, .flow_count = 1, .size_bytes = 64, .duration_ms = 2000,
                       .warmup_ms = 500, .window = 1, .rate_pps = 0, .batch_count = 32,
                       .timeout_ms = 200, .run_id = 1};
  int mode_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL) usage();
    if (strcmp(a, "--mode") == 0) {
      if (strcmp(v, "rr") == 0) cfg.mode = MODE_RR;
      else if (strcmp(v, "oneway") == 0) cfg.mode = MODE_ONEWAY;
      else usage();
      mode_given = 1;
    } else if (strcmp(a, "--target") == 0) {
      if (cfg.target_count == TARGET_COUNT_MAX) die_msg("too many --target (max 64)");
      if (parse_endpoint(v, &targets[cfg.target_count], &target_lens[cfg.target_count]) != 0) {
        die_msg("bad --target endpoint");
      }
      cfg.target_count++;
    } else if (strcmp(a, "--flows") == 0) {
      cfg.flow_count = (int)parse_long(a, v, 1, FLOW_COUNT_MAX);
    } else if (strcmp(a, "--size") == 0) {
      cfg.size_bytes = (int)parse_long(a, v, BENCH_PAYLOAD_BYTES_MIN, SIZE_BYTES_MAX);
    } else if (strcmp(a, "--duration-ms") == 0) {
      cfg.duration_ms = parse_long(a, v, 1, DURATION_MS_MAX);
    } else if (strcmp(a, "--warmup-ms") == 0) {
      cfg.warmup_ms = parse_long(a, v, 0, WARMUP_MS_MAX);
    } else if (strcmp(a, "--window") == 0) {
      cfg.window = (int)parse_long(a, v, 1, WINDOW_MAX);
    } else if (strcmp(a, "--rate") == 0) {
      cfg.rate_pps = parse_long(a, v, 0, 100000000);
    } else if (strcmp(a, "--batch") == 0) {
      cfg.batch_count = (int)parse_long(a, v, 1, BATCH_COUNT_MAX);
    } else if (strcmp(a, "--timeout-ms") == 0) {
      cfg.timeout_ms = parse_long(a, v, 1, TIMEOUT_MS_MAX);
    } else if (strcmp(a, "--run-id") == 0) {
      cfg.run_id = (uint32_t)parse_long(a, v, 0, 0x7fffffff);
    } else {
      usage();
    }
    i++;
  }
  if (!mode_given || cfg.target_count == 0) usage();
  /* Whatever happens, this process ends: SIGALRM's default action terminates it. */
  alarm((unsigned)((cfg.warmup_ms + cfg.duration_ms) / 1000 + 10));
  signal(SIGPIPE, SIG_IGN);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  for (int i = 0; i < cfg.flow_count; i++) {
    int t = i % cfg.target_count;
    int fd = socket(targets[t].ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket (flows need one fd each: ulimit -n)");
    set_buffers(fd, 1 << 20, 1 << 20);
    if (connect(fd, (struct sockaddr *)&targets[t], target_lens[t]) != 0) die("connect");
    flows[i].fd = fd;
    if (cfg.mode == MODE_RR) {
      struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
      if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    }
  }

  struct stats st = {0};
  struct clock_window w;
  w.start_ns = now_ns();
  w.measure_ns = w.start_ns + (uint64_t)cfg.warmup_ms * 1000000ull;
  w.end_ns = w.measure_ns + (uint64_t)cfg.duration_ms * 1000000ull;
  double cpu_at_measure = -1;
  uint64_t measure_seen_ns = 0;
  uint64_t wait_ns = 0; /* waiting inside the measured window */

  if (cfg.mode == MODE_RR) {
    struct epoll_event events[EPOLL_EVENTS_MAX];
    uint64_t next_scan_ns = 0;
    /* Bounded by end_ns (at most WARMUP_MS_MAX + DURATION_MS_MAX). */
    for (;;) {
      uint64_t t = now_ns();
      if (t >= w.end_ns) break;
      if (cpu_at_measure < 0 && t >= w.measure_ns) {
        cpu_at_measure = cpu_seconds();
        measure_seen_ns = t;
      }
      if (t >= next_scan_ns) {
        rr_scan(&cfg, &w, &st);
        next_scan_ns = t + SCAN_INTERVAL_NS;
      }
      int n = epoll_wait(ep, events, EPOLL_EVENTS_MAX, 1);
      if (n < 0 && errno != EINTR) die("epoll_wait");
      if (cpu_at_measure >= 0) wait_ns += now_ns() - t;
      for (int i = 0; i < n; i++) rr_serve(&cfg, &w, events[i].data.u32, &st);
    }
  } else {
    uint32_t next_flow = 0;
    /* Bounded by end_ns. */
    for (;;) {
      uint64_t t = now_ns();
      if (t >= w.end_ns) break;
      if (cpu_at_measure < 0 && t >= w.measure_ns) {
        cpu_at_measure = cpu_seconds();
        measure_seen_ns = t;
      }
      int count = cfg.batch_count;
      if (cfg.rate_pps > 0) {
        /* Pace on the total: datagrams allowed so far minus datagrams sent. */
        double allowed = (double)(t - w.start_ns) / 1e9 * (double)cfg.rate_pps;
        double credit = allowed - (double)st.sent_total;
        if (credit < 1) {
          struct timespec nap = {0, 20000}; /* 20 us */
          nanosleep(&nap, NULL);
          if (cpu_at_measure >= 0) wait_ns += now_ns() - t;
          continue;
        }
        if (credit < count) count = (int)credit;
      }
      send_batch(&cfg, &w, next_flow, count, &st);
      next_flow = (next_flow + 1) % (uint32_t)cfg.flow_count;
    }
  }
  uint64_t stop_ns = now_ns();
  double cpu_at_end = cpu_seconds();
  if (cpu_at_measure < 0) { /* the window was never reached (cannot happen with D >= 1) */
    cpu_at_measure = cpu_at_end;
    measure_seen_ns = stop_ns;
  }
  /* Rates use the nominal window: only datagrams stamped (oneway) or answered (rr) inside
   * [measure_ns, end_ns) are counted. CPU uses the span this process really observed. */
  double window_s = (double)(w.end_ns - w.measure_ns) / 1e9;
  double observed_s = (double)(stop_ns - measure_seen_ns) / 1e9;
  if (observed_s <= 0) observed_s = 1e-9;
  double cpu_fraction = (cpu_at_end - cpu_at_measure) / observed_s;
  double busy_fraction = 1.0 - (double)wait_ns / 1e9 / observed_s;
  int saturated = busy_fraction >= BUSY_SATURATED_FRACTION;

  double bits_per_datagram = (double)cfg.size_bytes * 8.0;
  if (cfg.mode == MODE_RR) {
    double tps = (double)st.transactions / window_s;
    double lost_fraction = st.sent_measured > 0
                               ? (double)st.lost_measured / (double)st.sent_measured
                               : 0;
    printf("{\"mode\":\"rr\",\"flows\":%d,\"sizeBytes\":%d,\"window\":%d,\"targets\":%d,"
           "\"windowSeconds\":%.6f,\"sent\":%llu,\"received\":%llu,\"sentTotal\":%llu,"
           "\"receivedTotal\":%llu,\"transactions\":%llu,\"tps\":%.1f,\"pps\":%.1f,"
           "\"mbitPerSecond\":%.3f,\"lost\":%llu,\"loss\":%.6f,\"late\":%llu,"
           "\"foreign\":%llu,\"p50Us\":%.1f,\"p99Us\":%.1f,\"sendBlocked\":%llu,"
           "\"sendCalls\":%llu,\"recvCalls\":%llu,\"cpuFraction\":%.3f,\"busyFraction\":%.3f,"
           "\"cpuSecondsTotal\":%.3f,"
           "\"generatorBound\":%s}\n",
           cfg.flow_count, cfg.size_bytes, cfg.window, cfg.target_count, window_s,
           (unsigned long long)st.sent_measured, (unsigned long long)st.transactions,
           (unsigned long long)st.sent_total, (unsigned long long)st.received_total,
           (unsigned long long)st.transactions, tps, tps,
           tps * bits_per_datagram * 2 / 1e6, /* both directions */
           (unsigned long long)st.lost_measured, lost_fraction, (unsigned long long)st.late,
           (unsigned long long)st.foreign, percentile_us(st.transactions, 0.50),
           percentile_us(st.transactions, 0.99), (unsigned long long)st.send_blocked,
           (unsigned long long)st.send_calls, (unsigned long long)st.recv_calls, cpu_fraction,
           busy_fraction, cpu_at_end,
           saturated ? "true" : "false");
  } else {
    double pps = (double)st.sent_measured / window_s;
    printf("{\"mode\":\"oneway\",\"flows\":%d,\"sizeBytes\":%d,\"batch\":%d,\"ratePps\":%ld,"
           "\"targets\":%d,\"windowSeconds\":%.6f,\"sent\":%llu,\"sentTotal\":%llu,"
           "\"pps\":%.1f,\"mbitPerSecond\":%.3f,\"sendBlocked\":%llu,\"sendCalls\":%llu,"
           "\"cpuFraction\":%.3f,\"busyFraction\":%.3f,\"cpuSecondsTotal\":%.3f,"
           "\"generatorBound\":%s}\n",
           cfg.flow_count, cfg.size_bytes, cfg.batch_count, cfg.rate_pps, cfg.target_count,
           window_s, (unsigned long long)st.sent_measured, (unsigned long long)st.sent_total,
           pps, pps * bits_per_datagram / 1e6, (unsigned long long)st.send_blocked,
           (unsigned long long)st.send_calls, cpu_fraction, busy_fraction, cpu_at_end,
           saturated ? "true" : "false");
  }
  return 0;
}
