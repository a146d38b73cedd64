/*
 * tcp_load: connections-per-second load for bench/tcp.ts, one thread, epoll.
 *
 *   tcp_load server PORT [PORT ...]
 *       Listens on [::]:PORT (dual stack) for each port. Per connection: read
 *       REQUEST_BYTES, write RESPONSE_BYTES, close (the server closes first, so
 *       TIME_WAIT lands on the server, never on a port-allocating client).
 *       Prints {"event":"ready"} once listening; runs until SIGTERM/SIGINT.
 *
 *   tcp_load client HOST PORT CONCURRENCY WARMUP_MS MEASURE_MS
 *       Keeps CONCURRENCY transactions in flight: connect, send the request, read the
 *       response and the server's FIN, close. Counts transactions that completed in
 *       the measured window, and failures by kind. Prints one JSON line at the end.
 *
 * Every loop is bounded: the client by its window, the server by a signal (and
 * RUNTIME_MS_MAX), connections by CONNECTIONS_MAX.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_BYTES 64
#define RESPONSE_BYTES 64
#define PORTS_MAX 8
#define CONNECTIONS_MAX 4096
#define EVENTS_MAX 256
#define RUNTIME_MS_MAX (3600 * 1000L)

static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *what) {
  fprintf(stderr, "tcp_load: %s: %s\n", what, strerror(errno));
  exit(1);
}

/* Per-connection state, indexed by fd (fds stay below CONNECTIONS_MAX + a few). */
struct conn {
  uint8_t active;
  uint8_t connected;
  uint16_t done; /* bytes sent (server: received) so far */
  uint16_t got;  /* client: response bytes received */
};
static struct conn conns[CONNECTIONS_MAX + 64];

static int server_main(int argc, char **argv) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  int listeners[PORTS_MAX];
  int count = 0;
  for (int i = 0; i < argc && count < PORTS_MAX; i++) {
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)atoi(argv[i]))};
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) die("bind");
    if (listen(fd, 4096) != 0) die("listen");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)fd | (1ull << 32)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    listeners[count++] = fd;
  }
  (void)listeners;
  printf("{\"event\":\"ready\"}\n");
  fflush(stdout);
  const int64_t end = now_ms() + RUNTIME_MS_MAX;
  uint64_t served = 0;
  struct epoll_event events[EVENTS_MAX];
  char buf[4096];
  static const char response[RESPONSE_BYTES] = {0};
  while (!stop_requested && now_ms() < end) {
    int n = epoll_wait(ep, events, EVENTS_MAX, 200);
    for (int i = 0; i < n; i++) {
      int fd = (int)(uint32_t)events[i].data.u64;
      if (events[i].data.u64 >> 32) {
        for (int k = 0; k < 64; k++) {
          int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          if (c >= CONNECTIONS_MAX + 64) {
            close(c);
            continue;
          }
          int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          conns[c] = (struct conn){.active = 1};
          struct epoll_event cev = {.events = EPOLLIN, .data.u64 = (uint64_t)c};
          if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) != 0) close(c);
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof(buf));
      if (r > 0) {
        conns[fd].done = (uint16_t)(conns[fd].done + r);
        if (conns[fd].done < REQUEST_BYTES) continue;
        if (write(fd, response, sizeof(response)) == (ssize_t)sizeof(response)) served++;
      } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        continue;
      }
      conns[fd].active = 0;
      close(fd);
    }
  }
  printf("{\"event\":\"final\",\"served\":%llu}\n", (unsigned long long)served);
  return 0;
}

static int client_open(int ep, const struct sockaddr_storage *target, socklen_t len,
                       uint64_t *failed_socket) {
  int fd = socket(target->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    (*failed_socket)++;
    return -1;
  }
  if (fd >= CONNECTIONS_MAX + 64) {
    close(fd);
    (*failed_socket)++;
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd, (const struct sockaddr *)target, len) != 0 && errno != EINPROGRESS) {
    close(fd);
    (*failed_socket)++;
    return -1;
  }
  conns[fd] = (struct conn){.active = 1};
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)fd};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    close(fd);
    (*failed_socket)++;
    return -1;
  }
  return fd;
}

static int client_main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: tcp_load client HOST PORT CONCURRENCY WARMUP_MS MEASURE_MS\n");
    return 2;
  }
  struct sockaddr_storage target;
  memset(&target, 0, sizeof(target));
  socklen_t len;
  uint16_t port = (uint16_t)atoi(argv[1]);
  if (strchr(argv[0], ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&target;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    if (inet_pton(AF_INET6, argv[0], &a->sin6_addr) != 1) return 2;
    len = sizeof(*a);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&target;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, argv[0], &a->sin_addr) != 1) return 2;
    len = sizeof(*a);
  }
  int concurrency = atoi(argv[2]);
  if (concurrency < 1 || concurrency > CONNECTIONS_MAX) return 2;
  const int64_t warmup_ms = atol(argv[3]);
  const int64_t measure_ms = atol(argv[4]);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");

  uint64_t completed = 0, failed_socket = 0, failed_reset = 0, failed_short = 0;
  const int64_t start = now_ms();
  const int64_t measure_start = start + warmup_ms;
  const int64_t measure_end = measure_start + measure_ms;
  int open = 0;
  for (int i = 0; i < concurrency; i++)
    if (client_open(ep, &target, len, &failed_socket) >= 0) open++;
  static const char request[REQUEST_BYTES] = {1};
  char buf[4096];
  struct epoll_event events[EVENTS_MAX];
  int64_t now = now_ms();
  while (now < measure_end && !stop_requested) {
    int n = epoll_wait(ep, events, EVENTS_MAX, 100);
    now = now_ms();
    for (int i = 0; i < n; i++) {
      int fd = (int)events[i].data.u64;
      struct conn *c = &conns[fd];
      if (!c->active) continue;
      int finished = 0, failed = 0;
      if (!c->connected && (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) {
          failed = 1;
          failed_reset++;
        } else {
          c->connected = 1;
          if (write(fd, request, sizeof(request)) != (ssize_t)sizeof(request)) {
            failed = 1;
            failed_short++;
          } else {
            struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)fd};
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
          }
        }
      } else if (c->connected && (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        for (int k = 0; k < 4; k++) {
          ssize_t r = read(fd, buf, sizeof(buf));
          if (r > 0) {
            c->got = (uint16_t)(c->got + r);
            continue;
          }
          if (r == 0) {
            if (c->got >= RESPONSE_BYTES) finished = 1;
            else {
              failed = 1;
              failed_short++;
            }
          } else if (errno != EAGAIN && errno != EINTR) {
            failed = 1;
            failed_reset++;
          }
          break;
        }
      }
      if (finished || failed) {
        c->active = 0;
        close(fd);
        open--;
        if (finished && now >= measure_start) completed++;
        if (client_open(ep, &target, len, &failed_socket) >= 0) open++;
      }
    }
  }
  const double seconds = (double)measure_ms / 1000.0;
  printf("{\"event\":\"final\",\"completed\":%llu,\"cps\":%.1f,\"failedSocket\":%llu,"
         "\"failedReset\":%llu,\"failedShort\":%llu,\"open\":%d}\n",
         (unsigned long long)completed, (double)completed / seconds,
         (unsigned long long)failed_socket, (unsigned long long)failed_reset,
         (unsigned long long)failed_short, open);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  signal(SIGPIPE, SIG_IGN);
  if (argc >= 3 && strcmp(argv[1], "server") == 0) return server_main(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "client") == 0) return client_main(argc - 2, argv + 2);
  fprintf(stderr, "usage: tcp_load server PORT... | tcp_load client HOST PORT CONCURRENCY "
                  "WARMUP_MS MEASURE_MS\n");
  return 2;
}
