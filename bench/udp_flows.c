/*
 * udp_flows: opens many UDP flows, one datagram each, for the session-memory benchmark
 * (bench/memory.ts). Source port i is (SOURCE, PORT_FIRST + i): a socket bound to it
 * sends one datagram to each of TARGET's port .. port + TARGET_PORTS - 1 (so
 * COUNT x TARGET_PORTS flows) and is closed again. The generator never holds more than
 * one descriptor, while the relay (or the kernel's conntrack) keeps one entry per flow
 * until it idles out. Sending a range again is harmless: a flow that exists is only
 * refreshed, so the caller can resend a range whose datagrams were dropped.
 *
 *   udp_flows --source ADDR --port-first P --count N --target ADDR:PORT
 *             [--target-ports D] [--size BYTES]
 *
 * Output: one JSON line {"sent":..,"failed":..,"bindFailed":..,"seconds":..}.
 * Ports P .. P+N-1 must lie in 1..65535. Bounded: exactly N x D sends.
 */
#include "bench_common.h"

#include <unistd.h>

#define SIZE_BYTES_MAX 1200
#define SIZE_BYTES_DEFAULT 32
#define TARGET_PORTS_MAX 64

static void usage(void) {
  fprintf(stderr, "usage: udp_flows --source ADDR --port-first P --count N "
                  "--target ADDR:PORT [--target-ports D] [--size BYTES]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *source = NULL;
  const char *target = NULL;
  long port_first = 0;
  long count = 0;
  long size = SIZE_BYTES_DEFAULT;
  long target_ports = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--source") == 0) source = argv[i + 1];
    else if (strcmp(argv[i], "--target") == 0) target = argv[i + 1];
    else if (strcmp(argv[i], "--port-first") == 0)
      port_first = parse_long("--port-first", argv[i + 1], 1, 65535);
    else if (strcmp(argv[i], "--count") == 0) count = parse_long("--count", argv[i + 1], 1, 65535);
    else if (strcmp(argv[i], "--target-ports") == 0)
      target_ports = parse_long("--target-ports", argv[i + 1], 1, TARGET_PORTS_MAX);
    else if (strcmp(argv[i], "--size") == 0)
      size = parse_long("--size", argv[i + 1], 1, SIZE_BYTES_MAX);
    else usage();
  }
  if (source == NULL || target == NULL || port_first == 0 || count == 0) usage();
  if (port_first + count - 1 > 65535) usage();

  struct sockaddr_storage to;
  socklen_t to_len = 0;
  if (parse_endpoint(target, &to, &to_len) != 0) usage();
  uint16_t target_port_first = to.ss_family == AF_INET
                                   ? ntohs(((struct sockaddr_in *)&to)->sin_port)
                                   : ntohs(((struct sockaddr_in6 *)&to)->sin6_port);
  if (target_port_first + target_ports - 1 > 65535) usage();
  struct sockaddr_storage from;
  socklen_t from_len = 0;
  char source_endpoint[128];
  snprintf(source_endpoint, sizeof source_endpoint,
           strchr(source, ':') != NULL ? "[%s]:1" : "%s:1", source);
  if (parse_endpoint(source_endpoint, &from, &from_len) != 0) usage();
  if (from.ss_family != to.ss_family) usage();

  static uint8_t payload[SIZE_BYTES_MAX];
  memset(payload, 0x5a, sizeof payload);
  uint64_t started = now_ns();
  long sent = 0, failed = 0, bind_failed = 0;
  for (long i = 0; i < count; i++) {
    int fd = socket(from.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      failed++;
      continue;
    }
    uint16_t port = htons((uint16_t)(port_first + i));
    if (from.ss_family == AF_INET) ((struct sockaddr_in *)&from)->sin_port = port;
    else ((struct sockaddr_in6 *)&from)->sin6_port = port;
    if (bind(fd, (struct sockaddr *)&from, from_len) != 0) {
      bind_failed++;
      close(fd);
      continue;
    }
    for (long t = 0; t < target_ports; t++) {
      uint16_t to_port = htons((uint16_t)(target_port_first + t));
      if (to.ss_family == AF_INET) ((struct sockaddr_in *)&to)->sin_port = to_port;
      else ((struct sockaddr_in6 *)&to)->sin6_port = to_port;
      if (sendto(fd, payload, (size_t)size, 0, (struct sockaddr *)&to, to_len) == (ssize_t)size) {
        sent++;
      } else {
        failed++;
      }
    }
    close(fd);
  }
  double seconds = (double)(now_ns() - started) / 1e9;
  printf("{\"sent\":%ld,\"failed\":%ld,\"bindFailed\":%ld,\"seconds\":%.3f}\n", sent, failed,
         bind_failed, seconds);
  return 0;
}
