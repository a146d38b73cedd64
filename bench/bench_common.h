/*
 * bench_common.h: what udp_gen, udp_sink_echo and c_relay share: the payload header
 * the generator stamps into every datagram, address parsing, the clock, JSON-safe
 * helpers. Header-only (static functions) so each tool stays one .c file.
 *
 * Every datagram starts with struct bench_hdr (32 bytes, host byte order: all tools run
 * on the same machine). The echo returns it unchanged, so the generator computes the
 * round-trip time from sent_ns without any per-request state; the sink counts only
 * datagrams whose phase is BENCH_PHASE_MEASURE, so the receive count covers exactly the
 * generator's measured window, whatever the runner's own timing.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BENCH_MAGIC 0x55444247u /* "GBDU" in little endian: ours, not stray traffic */

enum bench_phase {
  BENCH_PHASE_WARMUP = 0,
  BENCH_PHASE_MEASURE = 1,
};

struct bench_hdr {
  uint32_t magic;   /* 0: BENCH_MAGIC */
  uint32_t run_id;  /* 4: generator run id (--run-id) */
  uint32_t flow;    /* 8: flow index */
  uint16_t epoch;   /* 12: rr: flow generation, bumped when a request times out */
  uint8_t phase;    /* 14: enum bench_phase */
  uint8_t reserved; /* 15 */
  uint64_t seq;     /* 16: per-flow sequence number */
  uint64_t sent_ns; /* 24: CLOCK_MONOTONIC at send */
};
_Static_assert(sizeof(struct bench_hdr) == 32, "bench_hdr is 32 bytes");

/* Smallest payload that carries the header; the largest that fits one IPv4 datagram. */
#define BENCH_PAYLOAD_BYTES_MIN ((int)sizeof(struct bench_hdr))
#define BENCH_PAYLOAD_BYTES_MAX 65507

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void die(const char *what) {
  fprintf(stderr, "%s: %s\n", what, strerror(errno));
  exit(1);
}

static inline void die_msg(const char *what) {
  fprintf(stderr, "%s\n", what);
  exit(2);
}

/* "198.18.1.2:7007" or "[2001:2:0:2::2]:7007" into a sockaddr_storage. */
static inline int parse_endpoint(const char *text, struct sockaddr_storage *out,
                                 socklen_t *out_len) {
  char host[64];
  const char *colon = strrchr(text, ':');
  if (colon == NULL) return -1;
  size_t host_len = (size_t)(colon - text);
  if (host_len == 0 || host_len >= sizeof(host)) return -1;
  memcpy(host, text, host_len);
  host[host_len] = 0;
  char *end = NULL;
  long port = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end != 0 || port < 1 || port > 65535) return -1;
  memset(out, 0, sizeof(*out));
  if (host[0] == '[') {
    if (host_len < 3 || host[host_len - 1] != ']') return -1;
    host[host_len - 1] = 0;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, host + 1, &sin6->sin6_addr) != 1) return -1;
    *out_len = sizeof(*sin6);
    return 0;
  }
  struct sockaddr_in *sin = (struct sockaddr_in *)out;
  sin->sin_family = AF_INET;
  sin->sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) return -1;
  *out_len = sizeof(*sin);
  return 0;
}

/* Strict non-negative integer argument within [low, high]. */
static inline long parse_long(const char *name, const char *text, long low, long high) {
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != 0 || v < low || v > high) {
    fprintf(stderr, "%s: expected an integer in [%ld, %ld], got \"%s\"\n", name, low, high, text);
    exit(2);
  }
  return v;
}

/* Buffer sizes: SO_*BUFFORCE works as root and ignores rmem_max/wmem_max; fall back to
 * the capped option otherwise. Big receive buffers keep bursts from being counted as loss
 * of the path under test. */
static inline void set_buffers(int fd, int receive_bytes, int send_bytes) {
  if (receive_bytes > 0 &&
      setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &receive_bytes, sizeof(receive_bytes)) != 0) {
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_bytes, sizeof(receive_bytes));
  }
  if (send_bytes > 0 &&
      setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &send_bytes, sizeof(send_bytes)) != 0) {
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_bytes, sizeof(send_bytes));
  }
}

#endif
