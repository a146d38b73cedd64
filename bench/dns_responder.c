/*
 * dns_responder: an authoritative-style DNS responder for benchmarks, one thread,
 * epoll + recvmmsg/sendmmsg, answers built in place in the receive slot.
 *
 *   dns_responder --bind ADDR:PORT [--bind ADDR:PORT ...] [--a 198.18.1.100]
 *                 [--aaaa 2001:2::100] [--batch N] [--duration-ms N]
 *
 * Why: dnsmasq answers about 40k queries/s on one core here, less than kernel forwarding
 * can carry, so a benchmark of DNS proxies with dnsmasq behind them measures dnsmasq.
 * This answers every well-formed query (one question, QR clear, opcode QUERY) for any
 * name: A -> the --a address, AAAA -> the --aaaa address, other types NOERROR with no
 * answer; TTL 60, AA set, RD copied, RA set; the query's additional section (EDNS OPT)
 * is not echoed. Anything else is counted and dropped. Replies leave from the address
 * the query was sent to (bind each address explicitly, no wildcard).
 *
 * Prints {"event":"ready"} once bound and {"event":"final",...} with its counters on
 * SIGTERM/SIGINT or after --duration-ms, then exits 0.
 */
#include "bench_common.h"

#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#define ENDPOINT_COUNT_MAX 16
#define BATCH_COUNT_MAX 256
#define DRAIN_BATCHES_MAX 16
/* A query longer than this is dropped: benchmark queries are ~40 bytes, and the answer
 * (question + one AAAA record: 28 bytes) must fit behind the question in the slot. */
#define SLOT_BYTES 1024
#define QUERY_BYTES_MAX (SLOT_BYTES - 64)
#define HEADER_BYTES 12
#define EPOLL_EVENTS_MAX 16
#define POLL_TIMEOUT_MS 100
#define RUNTIME_MS_MAX (4 * 3600 * 1000L)

struct counters {
  uint64_t queries;   /* datagrams received */
  uint64_t answered;  /* answers sent */
  uint64_t malformed; /* not one question of a standard query, or too long */
  uint64_t dropped;   /* sendmmsg refused (EAGAIN, ENOBUFS) */
};

static volatile sig_atomic_t stop_requested;
static void on_term(int sig) { (void)sig; stop_requested = 1; }

static struct mmsghdr msgs[BATCH_COUNT_MAX];
static struct mmsghdr out[BATCH_COUNT_MAX];
static struct iovec iovs[BATCH_COUNT_MAX];
static struct sockaddr_storage names[BATCH_COUNT_MAX];
static uint8_t slots[BATCH_COUNT_MAX][SLOT_BYTES];
static uint8_t addr4[4] = {198, 18, 1, 100};
static uint8_t addr6[16] = {0x20, 0x01, 0x00, 0x02, [14] = 0x01};

/* Turns the query in slot (len bytes) into its answer; returns the answer's length or 0. */
static uint32_t answer(uint8_t *m, uint32_t len) {
  if (len < HEADER_BYTES + 5 || len > QUERY_BYTES_MAX) return 0;
  if ((m[2] & 0xf8) != 0) return 0; /* QR set or opcode not QUERY */
  if (m[4] != 0 || m[5] != 1) return 0; /* QDCOUNT = 1 */
  uint32_t p = HEADER_BYTES;
  for (;;) { /* the name: labels only, bounded by len */
    if (p >= len) return 0;
    uint8_t label = m[p];
    if (label > 63) return 0;
    p += 1u + label;
    if (label == 0) break;
  }
  if (p + 4 > len) return 0;
  uint16_t type = (uint16_t)((m[p] << 8) | m[p + 1]);
  p += 4;
  const uint8_t *rdata = type == 1 ? addr4 : type == 28 ? addr6 : NULL;
  uint16_t rdlength = type == 1 ? 4 : 16;
  m[2] = (uint8_t)(0x84 | (m[2] & 0x01)); /* QR, AA, RD copied */
  m[3] = 0x80;                            /* RA, NOERROR */
  m[6] = 0;
  m[7] = rdata ? 1 : 0;
  memset(m + 8, 0, 4); /* NSCOUNT, ARCOUNT */
  if (!rdata) return p;
  static const uint8_t rr_head[] = {0xc0, 0x0c, 0, 0, 0, 1, 0, 0, 0, 60, 0, 0};
  memcpy(m + p, rr_head, sizeof(rr_head));
  m[p + 3] = (uint8_t)type;
  m[p + 11] = (uint8_t)rdlength;
  p += sizeof(rr_head);
  memcpy(m + p, rdata, rdlength);
  return p + rdlength;
}

static void drain(int fd, int batch_count, struct counters *c) {
  for (int round = 0; round < DRAIN_BATCHES_MAX; round++) {
    for (int i = 0; i < batch_count; i++) {
      iovs[i].iov_base = slots[i];
      iovs[i].iov_len = SLOT_BYTES;
      msgs[i].msg_hdr = (struct msghdr){.msg_name = &names[i], .msg_namelen = sizeof(names[i]),
                                        .msg_iov = &iovs[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(fd, msgs, (unsigned)batch_count, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      die("recvmmsg");
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
      c->queries++;
      uint32_t length = answer(slots[i], msgs[i].msg_len);
      if (length == 0) {
        c->malformed++;
        continue;
      }
      iovs[i].iov_len = length;
      out[k++].msg_hdr = msgs[i].msg_hdr;
    }
    int sent = 0;
    while (sent < k) {
      int s = sendmmsg(fd, out + sent, (unsigned)(k - sent), MSG_DONTWAIT);
      if (s <= 0) break; /* EAGAIN, ENOBUFS, EINTR: the rest of the batch is dropped */
      sent += s;
    }
    c->answered += (uint64_t)sent;
    c->dropped += (uint64_t)(k - sent);
    if (n < batch_count) return;
  }
}

static void usage(void) {
  die_msg("usage: dns_responder --bind ADDR:PORT [--bind ...] [--a IPV4] [--aaaa IPV6] "
          "[--batch N] [--duration-ms N]");
}

int main(int argc, char **argv) {
  const char *binds[ENDPOINT_COUNT_MAX];
  int bind_count = 0;
  long duration_ms = 0;
  int batch_count = 64;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    if (strcmp(a, "--bind") == 0) {
      if (bind_count == ENDPOINT_COUNT_MAX) die_msg("too many --bind (max 16)");
      binds[bind_count++] = v;
    } else if (strcmp(a, "--a") == 0) {
      if (inet_pton(AF_INET, v, addr4) != 1) die_msg("--a: not an IPv4 address");
    } else if (strcmp(a, "--aaaa") == 0) {
      if (inet_pton(AF_INET6, v, addr6) != 1) die_msg("--aaaa: not an IPv6 address");
    } else if (strcmp(a, "--batch") == 0) {
      batch_count = (int)parse_long("--batch", v, 1, BATCH_COUNT_MAX);
    } else if (strcmp(a, "--duration-ms") == 0) {
      duration_ms = parse_long("--duration-ms", v, 0, RUNTIME_MS_MAX);
    } else {
      usage();
    }
    i++;
  }
  if (bind_count == 0) usage();

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  int fds[ENDPOINT_COUNT_MAX];
  for (int i = 0; i < bind_count; i++) {
    struct sockaddr_storage sa;
    socklen_t sa_len = 0;
    if (parse_endpoint(binds[i], &sa, &sa_len) != 0) die_msg("bad --bind endpoint");
    int fd = socket(sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    set_buffers(fd, 8 << 20, 8 << 20);
    if (bind(fd, (struct sockaddr *)&sa, sa_len) != 0) {
      fprintf(stderr, "bind %s: %s\n", binds[i], strerror(errno));
      return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    fds[i] = fd;
  }
  struct sigaction sa_term = {.sa_handler = on_term};
  sigaction(SIGTERM, &sa_term, NULL);
  sigaction(SIGINT, &sa_term, NULL);
  printf("{\"event\":\"ready\"}\n");
  fflush(stdout);

  struct counters c = {0};
  uint64_t started = now_ns();
  uint64_t limit_ns = (uint64_t)(duration_ms > 0 ? duration_ms : RUNTIME_MS_MAX) * 1000000ull;
  struct epoll_event events[EPOLL_EVENTS_MAX];
  while (!stop_requested && now_ns() - started < limit_ns) {
    int n = epoll_wait(ep, events, EPOLL_EVENTS_MAX, POLL_TIMEOUT_MS);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) drain(fds[events[i].data.u32], batch_count, &c);
  }
  printf("{\"event\":\"final\",\"queries\":%llu,\"answered\":%llu,\"malformed\":%llu,"
         "\"dropped\":%llu}\n",
         (unsigned long long)c.queries, (unsigned long long)c.answered,
         (unsigned long long)c.malformed, (unsigned long long)c.dropped);
  return 0;
}
