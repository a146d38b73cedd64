/*
 * poller.c: the epoll thread that wakes JavaScript, and its inline mode for a thread
 * that may block (a Worker's).
 *
 * The thread pushes every ready socket's token into a single-producer/single-consumer
 * ring and calls the JS callback only when JS said it is going idle (`sleeping`). Under
 * load one callback carries many sockets, and JS handles them in one round (one
 * sendmmsg for all their replies) instead of one hop per socket. Sockets are armed
 * EPOLLIN|EPOLLONESHOT, so a token is in the ring at most once until JS re-arms it:
 * the ring never holds more than the registered sockets.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define POLLERS_MAX 8
#define POLL_EVENTS_MAX 64
#define POLL_STOP_TOKEN UINT64_MAX
#define POLL_NOTIFY_TOKEN (UINT64_MAX - 1)
#define POLL_ERROR_FLAG 0x40000000u

struct poller {
  int epfd;
  int stopfd;
  /* Inline mode: another thread's "a message is on its way" (rl_poll_notify), so the
   * owner's loop turns its event loop only when there is something to deliver. */
  int notifyfd;
  _Atomic uint64_t notified;
  int started;
  pthread_t thread;
  rl_wake_fn wake;
  int wake_pipe; /* rl_poll_start_pipe: the write end, else -1 */
  uint32_t *ring;
  uint32_t ring_mask;
  _Atomic uint32_t head; /* next to take (JS) */
  _Atomic uint32_t tail; /* next to fill (thread) */
  atomic_int sleeping;   /* 1: JS waits for a wake call */
  int level_triggered;   /* inline mode: no EPOLLONESHOT, no re-arm syscalls */
  /* Counters: 64 bits end to end (a wake-up a microsecond wraps 32 bits in 72 min). */
  _Atomic uint64_t wakes;
  _Atomic uint64_t events;
  _Atomic uint64_t overflows;
  /* 0 while the thread runs; -errno once epoll_wait failed and the thread left. */
  atomic_int failed;
};

static struct rl_handles pollers = RL_HANDLES_INIT(POLLERS_MAX);

static void poller_free(struct poller *p) {
  if (p->wake_pipe >= 0) close(p->wake_pipe);
  if (p->stopfd >= 0) close(p->stopfd);
  if (p->notifyfd >= 0) close(p->notifyfd);
  if (p->epfd >= 0) close(p->epfd);
  free(p->ring);
  free(p);
}

int32_t rl_poll_open(int32_t tokens_max) {
  if (tokens_max <= 0 || tokens_max > (1 << 24)) return -EINVAL;
  struct poller *p = calloc(1, sizeof(*p));
  if (p == NULL) return -ENOMEM;
  p->epfd = p->stopfd = p->notifyfd = p->wake_pipe = -1;
  /* Room for every registered socket once, plus the stray duplicates a direct drain
   * (the JS timer's) can add, rounded to a power of two. */
  uint32_t ring_size = 1024;
  while (ring_size < (uint32_t)tokens_max * 2u + 1024u) ring_size *= 2;
  p->ring = calloc(ring_size, sizeof(uint32_t));
  p->ring_mask = ring_size - 1;
  atomic_store(&p->sleeping, 1);
  int err = 0;
  if (p->ring == NULL) err = ENOMEM;
  if (err == 0) {
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) err = errno;
  }
  if (err == 0) {
    p->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->stopfd < 0) err = errno;
  }
  if (err == 0) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = POLL_STOP_TOKEN};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->stopfd, &ev) != 0) err = errno;
  }
  if (err == 0) {
    p->notifyfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->notifyfd < 0) err = errno;
  }
  if (err == 0) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = POLL_NOTIFY_TOKEN};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->notifyfd, &ev) != 0) err = errno;
  }
  if (err != 0) {
    poller_free(p);
    return -err;
  }
  const int32_t handle = handles_put(&pollers, p);
  if (handle < 0) poller_free(p);
  return handle;
}

static struct poller *poller_get(int32_t handle) { return handles_get(&pollers, handle); }

static int32_t poll_ctl_events(int32_t handle, int op, int32_t fd, int32_t token,
                               uint32_t wanted) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  uint32_t events = p->level_triggered ? wanted : wanted | EPOLLONESHOT;
  struct epoll_event ev = {.events = events, .data.u64 = (uint32_t)token};
  return epoll_ctl(p->epfd, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev) == 0 ? 0 : -errno;
}

static int32_t poll_ctl(int32_t handle, int op, int32_t fd, int32_t token) {
  return poll_ctl_events(handle, op, fd, token, EPOLLIN);
}

int32_t rl_poll_arm_out(int32_t poller, int32_t fd, int32_t token, int32_t add) {
  return poll_ctl_events(poller, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, token, EPOLLOUT);
}

int32_t rl_poll_arm_both(int32_t poller, int32_t fd, int32_t token) {
  return poll_ctl_events(poller, EPOLL_CTL_MOD, fd, token, EPOLLIN | EPOLLOUT);
}

int32_t rl_poll_level_triggered(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  if (p->started) return -EBUSY; /* the epoll thread relies on EPOLLONESHOT */
  p->level_triggered = 1;
  return 0;
}

int32_t rl_poll_add(int32_t poller, int32_t fd, int32_t token) {
  return poll_ctl(poller, EPOLL_CTL_ADD, fd, token);
}
int32_t rl_poll_rearm(int32_t poller, int32_t fd, int32_t token) {
  return poll_ctl(poller, EPOLL_CTL_MOD, fd, token);
}
int32_t rl_poll_del(int32_t poller, int32_t fd) { return poll_ctl(poller, EPOLL_CTL_DEL, fd, 0); }

/* Pushes ready events into the ring; returns how many, or -1 on the stop token. */
static int poll_push(struct poller *p, const struct epoll_event *events, int n) {
  int pushed = 0;
  uint32_t tail = atomic_load_explicit(&p->tail, memory_order_relaxed);
  const uint32_t head = atomic_load_explicit(&p->head, memory_order_acquire);
  for (int i = 0; i < n; i++) {
    if (events[i].data.u64 == POLL_STOP_TOKEN) return -1;
    uint32_t token = (uint32_t)events[i].data.u64;
    if (events[i].data.u64 == POLL_NOTIFY_TOKEN) {
      /* Take the count now (the eventfd is level-triggered: unread, it would report again
       * at once); JS reads it with rl_poll_notified when it meets the ring token. */
      uint64_t count = 0;
      if (read(p->notifyfd, &count, sizeof(count)) == sizeof(count)) {
        atomic_fetch_add_explicit(&p->notified, count, memory_order_relaxed);
      }
      token = RL_POLL_NOTIFY_RING_TOKEN;
    }
    /* Bit 30 tells JS that EPOLLERR is set (an ICMP error is queued). */
    if (events[i].events & EPOLLERR) token |= POLL_ERROR_FLAG;
    if (tail - head > p->ring_mask) {
      /* Cannot happen while the ring holds 2x the sockets; counted, never silent. */
      atomic_fetch_add_explicit(&p->overflows, 1, memory_order_relaxed);
      continue;
    }
    p->ring[tail & p->ring_mask] = token;
    tail++;
    pushed++;
  }
  atomic_store_explicit(&p->tail, tail, memory_order_release);
  atomic_fetch_add_explicit(&p->events, (uint64_t)pushed, memory_order_relaxed);
  return pushed;
}

/* Wakes JS: its callback, or a byte into its pipe (EAGAIN: a byte waits there already). */
static void poll_wake(struct poller *p, int32_t count) {
  if (p->wake != NULL) {
    p->wake(count);
    return;
  }
  const char byte = 1;
  ssize_t rc;
  do rc = write(p->wake_pipe, &byte, 1);
  while (rc < 0 && errno == EINTR);
}

static void *poll_main(void *arg) {
  struct poller *p = arg;
  struct epoll_event events[POLL_EVENTS_MAX];
  for (;;) {
    int n = epoll_wait(p->epfd, events, POLL_EVENTS_MAX, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      /* Never silent: record why, and wake JS (count 0) so it asks rl_poll_failed.
       * A normal stop comes through the stop token below, not here. */
      atomic_store(&p->failed, -errno);
      if (atomic_exchange(&p->sleeping, 0) == 1) poll_wake(p, 0);
      return NULL;
    }
    int pushed = poll_push(p, events, n);
    if (pushed < 0) return NULL;
    if (pushed > 0 && atomic_exchange(&p->sleeping, 0) == 1) {
      atomic_fetch_add_explicit(&p->wakes, 1, memory_order_relaxed);
      poll_wake(p, pushed);
    }
  }
}

int32_t rl_poll_wait(int32_t handle, int32_t timeout_ms) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  if (p->started) return -EBUSY; /* the thread owns epoll_wait */
  struct epoll_event events[POLL_EVENTS_MAX];
  int n = epoll_wait(p->epfd, events, POLL_EVENTS_MAX, timeout_ms);
  if (n < 0) return errno == EINTR ? 0 : -errno;
  /* A wake-up: a wait that may have slept. A look that did not wait and found nothing
   * (busy polling's spins, the io_uring plane's epoll checks) is not one. */
  if (n > 0 || timeout_ms != 0) atomic_fetch_add_explicit(&p->wakes, 1, memory_order_relaxed);
  int pushed = poll_push(p, events, n);
  return pushed < 0 ? -ECANCELED : pushed;
}

int32_t rl_poll_notify(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  const uint64_t one = 1;
  ssize_t rc;
  do rc = write(p->notifyfd, &one, sizeof(one));
  while (rc < 0 && errno == EINTR);
  return rc == sizeof(one) ? 0 : -errno;
}

int32_t rl_poll_notified(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  const uint64_t n = atomic_exchange_explicit(&p->notified, 0, memory_order_relaxed);
  return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

int32_t rl_poll_take(int32_t handle, uint32_t *out, int32_t count) {
  struct poller *p = poller_get(handle);
  if (p == NULL || count <= 0) return -EINVAL;
  const uint32_t head = atomic_load_explicit(&p->head, memory_order_relaxed);
  const uint32_t tail = atomic_load_explicit(&p->tail, memory_order_acquire);
  uint32_t n = tail - head;
  if (n > (uint32_t)count) n = (uint32_t)count;
  for (uint32_t i = 0; i < n; i++) out[i] = p->ring[(head + i) & p->ring_mask];
  atomic_store_explicit(&p->head, head + n, memory_order_release);
  return (int32_t)n;
}

int32_t rl_poll_sleep(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  atomic_store(&p->sleeping, 1);
  /* A token pushed before the flag was seen: take the flag back and go on, unless the
   * thread already took it (then its wake call is on the way). */
  if (atomic_load(&p->tail) != atomic_load(&p->head) && atomic_exchange(&p->sleeping, 0) == 1) {
    return 1;
  }
  return 0;
}

int32_t rl_poll_start(int32_t handle, rl_wake_fn wake) {
  struct poller *p = poller_get(handle);
  if (p == NULL || wake == NULL) return -EINVAL;
  if (p->started) return -EALREADY;
  p->wake = wake;
  int rc = pthread_create(&p->thread, NULL, poll_main, p);
  if (rc != 0) return -rc;
  p->started = 1;
  return 0;
}

int32_t rl_poll_start_pipe(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EINVAL;
  if (p->started) return -EALREADY;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return -errno;
  p->wake = NULL;
  p->wake_pipe = fds[1];
  int rc = pthread_create(&p->thread, NULL, poll_main, p);
  if (rc != 0) {
    close(fds[0]);
    close(fds[1]);
    p->wake_pipe = -1;
    return -rc;
  }
  p->started = 1;
  return fds[0];
}

int32_t rl_poll_stop(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  if (p->started) {
    uint64_t one = 1;
    if (write(p->stopfd, &one, sizeof(one)) != sizeof(one)) return -errno;
    pthread_join(p->thread, NULL);
    p->started = 0;
  }
  /* The thread is gone: nothing else holds p. */
  const struct poller *taken = handles_take(&pollers, handle);
  RL_ASSERT(taken == p);
  poller_free(p);
  return 0;
}

int32_t rl_poll_failed(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  return atomic_load(&p->failed);
}

int epoll_break(int epfd) {
  /* An eventfd takes the epoll fd's number: a thread's next epoll_wait (after the event
   * it waits for now, on the old instance it still holds) fails with EINVAL, and the
   * owner still closes exactly one descriptor under that number. */
  int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = dup3(fd, epfd, O_CLOEXEC) < 0 ? -errno : 0;
  close(fd);
  return rc;
}

int32_t rl_test_poll_break(int32_t handle) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  return epoll_break(p->epfd);
}

/* Doubles hold every integer up to 2^53 exactly: no counter wraps on its way to JS. */
int32_t rl_poll_stats(int32_t handle, double *out) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  out[RL_POLL_STAT_WAKES] = (double)atomic_load_explicit(&p->wakes, memory_order_relaxed);
  out[RL_POLL_STAT_EVENTS] = (double)atomic_load_explicit(&p->events, memory_order_relaxed);
  out[RL_POLL_STAT_OVERFLOWS] =
      (double)atomic_load_explicit(&p->overflows, memory_order_relaxed);
  return RL_POLL_STATS_COUNT;
}

/* ---- Test-only hooks (relay.h: rl_test_*); the relay never calls them ---- */

int32_t rl_test_poll_stat_set(int32_t handle, int32_t which, double value) {
  struct poller *p = poller_get(handle);
  if (p == NULL) return -EBADF;
  if (!(value >= 0 && value <= 9007199254740992.0)) return -EINVAL; /* 2^53 */
  switch (which) {
  case RL_POLL_STAT_WAKES: atomic_store(&p->wakes, (uint64_t)value); break;
  case RL_POLL_STAT_EVENTS: atomic_store(&p->events, (uint64_t)value); break;
  case RL_POLL_STAT_OVERFLOWS: atomic_store(&p->overflows, (uint64_t)value); break;
  default: return -EINVAL;
  }
  return 0;
}


int32_t rl_poll_fd(int32_t handle) {
  const struct poller *p = poller_get(handle);
  return p == NULL ? -EBADF : p->epfd;
}
