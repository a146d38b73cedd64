/*
 * tcp_engine.c: the splice engine. One thread with its own epoll moves the bytes of
 * every handed-off connection socket -> pipe -> socket (splice(2), no copy through
 * user space), forwards half-closes and resets, and enforces the connect and idle
 * timeouts. TypeScript hands connections in through a command ring (cmdfd wakes the
 * thread) and reads one event per ended connection from an event ring (evfd wakes JS).
 *
 * Copy mode (copy_bytes > 0, tcp.spliceMode "auto"; HAProxy's splice-auto): a message
 * of a few bytes costs one recv and one send through a small buffer, where splice
 * costs a call into the pipe, one out of it and a pipe per direction. So each direction
 * starts copying, and splices for good once a read fills its buffer (bulk): a short
 * connection never touches a pipe, a long transfer runs zero-copy as before.
 *
 * Inline mode (rl_tcp_engine_open's inline_mode 1): no thread. The owner registers the
 * engine's epoll fd (rl_tcp_engine_epoll_fd) in its own poller and calls
 * rl_tcp_engine_run when it is readable (and from a timer, for the timeouts). Hand-offs
 * register the pair at once, and end events wait in the ring without an eventfd write:
 * the thread that accepts also moves the bytes and reads the ends, with no wake-up
 * crossing threads. Both modes run the same round (engine_round).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define TCP_ENGINES_MAX 4
/* Pump rounds (each: splice in + splice out, both directions) one connection gets per
 * turn; with more work left it goes to the back of the ready queue (fairness). */
#define TCP_ROUNDS_MAX 16
#define TCP_EPOLL_EVENTS_MAX 256
/* Timeout sweeps run at most this far apart (and at least 10 ms apart). */
#define TCP_SWEEP_MS_MAX 250
#define TCP_SWEEP_MS_MIN 10
#define TCP_CMD_TOKEN UINT64_MAX
/* Copy buffers per engine at most (min(slots, this)): a direction holds one only while
 * it has bytes the target has not taken, so this many stalled directions at once before
 * the next ones splice at once. 1024 x 16 KiB = 16 MiB of address space, committed only
 * as buffers are used. */
#define TCP_COPY_BUFFERS_MAX 1024

/* epoll data of a connection's socket: id, side and the connection's generation. An
 * event read in the batch in which its connection ended (and its id was reused) then
 * names a generation that is gone, and is dropped instead of reaching the new owner. */
static uint64_t conn_token(int32_t id, int side, uint32_t generation) {
  return ((uint64_t)generation << 32) | ((uint64_t)(uint32_t)id << 1) | (uint64_t)side;
}

enum tcp_state { TCP_FREE = 0, TCP_CONNECTING = 1, TCP_OPEN = 2 };

/* One direction: source socket -> copy buffer -> target socket while it copies, then
 * source socket -> pipe -> target socket once spliced (for good).
 * Invariants: 0 <= used <= pipe.cap; copy != NULL exactly while copy_used > 0 (a buffer
 * is held only while it holds bytes); !spliced implies no pipe and used == 0; dst_shut
 * implies src_eof, copy_used == 0 and used == 0. Bytes in the buffer were read before
 * any byte in the pipe, so they go out first. */
struct tcp_dir {
  struct rl_pipe pipe;
  uint32_t used; /* bytes in the pipe: read from the source, not yet delivered */
  uint8_t *copy; /* copy buffer holding copy_used bytes from copy_offset */
  uint32_t copy_offset;
  uint32_t copy_used;
  uint8_t spliced;
  uint8_t src_eof;
  uint8_t dst_shut;
  uint64_t bytes; /* delivered to the target */
};

struct tcp_conn {
  int32_t state;
  int fd[2]; /* 0: client, 1: upstream */
  struct tcp_dir dir[2]; /* 0: client -> upstream, 1: upstream -> client */
  int64_t start_ms;
  int64_t active_ms;
  uint32_t connect_ms; /* UINT32_MAX until connected */
  /* Edge-triggered readiness per socket, set by epoll events and cleared by EAGAIN, so
   * a pump does not spend syscalls on a side that has nothing to give or take. */
  uint8_t readable[2];
  uint8_t writable[2];
  /* An event said EOF or an error is pending (EPOLLRDHUP, EPOLLHUP, EPOLLERR): no new
   * edge comes for it, so a short read does not clear readable (copy mode). */
  uint8_t eof_pending[2];
  uint8_t queued; /* in the ready queue exactly once while set */
  uint32_t generation; /* moves on with every connection that takes this id */
};

struct tcp_cmd {
  int32_t id;
  int32_t client_fd;
  int32_t upstream_fd;
};

struct tcp_engine {
  int epfd;
  int cmdfd; /* JS -> engine: commands wait */
  int evfd;  /* engine -> JS: events wait */
  pthread_t thread;
  int started;
  int inline_mode; /* no thread: the owner calls rl_tcp_engine_run (set at open) */
  int64_t next_sweep_ms; /* the engine's loop only (thread or rl_tcp_engine_run) */
  int32_t slots;
  int32_t pipe_bytes;
  uint32_t copy_bytes; /* 0: splice from the first byte */
  /* Written by JS on a reload (rl_tcp_engine_set_timeouts), read by the engine thread
   * at its next sweep: each value is one atomic word, so the thread sees the old or the
   * new one, never a torn mix within a value. */
  atomic_int connect_timeout_ms;
  atomic_int idle_timeout_ms;
  atomic_int sweep_ms;
  struct tcp_conn *conns;
  /* Guarded by lock: the command ring (JS -> engine) and the event ring (engine -> JS). */
  pthread_mutex_t lock;
  struct tcp_cmd *cmds;
  int32_t cmd_head;
  int32_t cmd_count; /* <= slots: one add per free id */
  struct rl_tcp_event *events;
  int32_t ev_head;
  int32_t ev_count;
  int32_t ev_cap; /* slots: one event per id, ids reused after it is read */
  atomic_int abort_all;
  atomic_int stop;
  /* 0 while the thread runs its loop; -errno once it left it on an error (then it also
   * wrote evfd, so JS looks: a dead engine must not go unnoticed). */
  atomic_int failed;
  /* Engine thread only. */
  struct pipe_pool pipes;
  struct copy_pool copies;
  int32_t *ready; /* ring of ids */
  int32_t ready_head;
  int32_t ready_count;
  /* Read by JS at any time. */
  _Atomic uint64_t bytes_up;
  _Atomic uint64_t bytes_down;
  atomic_int open_count;
  _Atomic uint64_t events_lost;
  _Atomic uint64_t splice_switches;
  _Atomic uint64_t copy_only;
  _Atomic uint64_t copy_pool_empty;
  /* Test-only (rl_test_tcp_engine_event_delay): a pause after each epoll event, which
   * widens the window in which JS reuses an id within one of the engine's batches. */
  atomic_int test_event_delay_us;
};

static struct rl_handles tcp_engines = RL_HANDLES_INIT(TCP_ENGINES_MAX);

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct tcp_engine *engine_get(int32_t handle) {
  return handles_get(&tcp_engines, handle);
}

static uint32_t clamp_ms(int64_t ms) {
  return (uint32_t)(ms < 0 ? 0 : ms >= UINT32_MAX ? UINT32_MAX - 1 : ms);
}

static void engine_push_event(struct tcp_engine *e, uint32_t id, uint16_t kind, uint16_t reason,
                              int32_t error, int64_t duration_ms, uint64_t up, uint64_t down,
                              uint32_t connect_ms) {
  pthread_mutex_lock(&e->lock);
  int was_empty = e->ev_count == 0;
  if (e->ev_count == e->ev_cap) {
    atomic_fetch_add(&e->events_lost, 1);
    pthread_mutex_unlock(&e->lock);
    return;
  }
  struct rl_tcp_event *ev = &e->events[(e->ev_head + e->ev_count) % e->ev_cap];
  ev->id = id;
  ev->kind = kind;
  ev->reason = reason;
  ev->error = error;
  ev->duration_ms = clamp_ms(duration_ms);
  ev->connect_ms = connect_ms;
  ev->reserved = 0;
  ev->bytes_up = (double)up;
  ev->bytes_down = (double)down;
  e->ev_count++;
  pthread_mutex_unlock(&e->lock);
  if (was_empty && !e->inline_mode) {
    uint64_t one = 1;
    (void)!write(e->evfd, &one, sizeof(one));
  }
}

/* Ends a connection: RST where the reason calls for it, FIN (plain close) elsewhere. */
static void conn_end(struct tcp_engine *e, int32_t id, uint16_t reason, int32_t error,
                     int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  if (c->state == TCP_FREE) return;
  int reset_client = 0;
  int reset_upstream = 0;
  switch (reason) {
  case RL_TCP_END_CLOSED: break;
  case RL_TCP_END_CLIENT_RESET: reset_upstream = 1; break;
  case RL_TCP_END_UPSTREAM_RESET: reset_client = 1; break;
  case RL_TCP_END_CONNECT_REFUSED:
  case RL_TCP_END_CONNECT_TIMEOUT:
  case RL_TCP_END_CONNECT_FAILED: reset_client = 1; break;
  default: reset_client = reset_upstream = 1; break;
  }
  if (reset_client) close_with_reset(c->fd[0]);
  else close(c->fd[0]);
  if (reset_upstream) close_with_reset(c->fd[1]);
  else close(c->fd[1]);
  c->fd[0] = c->fd[1] = -1;
  for (int d = 0; d < 2; d++) {
    struct tcp_dir *dir = &c->dir[d];
    pipe_release(&e->pipes, &dir->pipe, dir->used == 0);
    if (dir->copy != NULL) copy_give(&e->copies, dir->copy); /* a reset's bytes: dropped */
    dir->copy = NULL;
    dir->copy_used = 0;
  }
  if (e->copy_bytes > 0 && !c->dir[0].spliced && !c->dir[1].spliced) {
    atomic_fetch_add_explicit(&e->copy_only, 1, memory_order_relaxed);
  }
  c->state = TCP_FREE;
  atomic_fetch_sub(&e->open_count, 1);
  engine_push_event(e, (uint32_t)id, RL_TCP_EVENT_CLOSED, reason, error, now - c->start_ms,
                    c->dir[0].bytes, c->dir[1].bytes, c->connect_ms);
}

static void conn_queue(struct tcp_engine *e, int32_t id) {
  struct tcp_conn *c = &e->conns[id];
  if (c->queued) return;
  c->queued = 1;
  e->ready[(e->ready_head + e->ready_count) % e->slots] = id;
  e->ready_count++;
}

/* A read or write error on one side ends the connection: that side reset or vanished,
 * and the other side gets the RST. */
static void conn_side_failed(struct tcp_engine *e, int32_t id, int side, int err, int64_t now) {
  conn_end(e, id, side == 0 ? RL_TCP_END_CLIENT_RESET : RL_TCP_END_UPSTREAM_RESET, err, now);
}

/* From now on the direction splices: its pipe, taken here. Returns 0, or -1 when no pipe
 * could be made (the connection ended, as a hand-off without pipes does). */
static int dir_splice_from_now(struct tcp_engine *e, int32_t id, int d, int64_t now) {
  struct tcp_dir *dir = &e->conns[id].dir[d];
  int rc = pipe_acquire(&e->pipes, &dir->pipe);
  if (rc < 0) {
    conn_end(e, id, RL_TCP_END_RESOURCES, -rc, now);
    return -1;
  }
  dir->used = 0;
  dir->spliced = 1;
  return 0;
}

/* Copy mode's read: only into an empty buffer (back-pressure: while the target has not
 * taken the last read, the source's bytes wait in its socket, under TCP flow control).
 * Returns 1 on progress, 0 without, -1 when the connection ended. */
static int copy_in(struct tcp_engine *e, int32_t id, int d, int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  struct tcp_dir *dir = &c->dir[d];
  if (dir->src_eof || dir->copy_used > 0 || !c->readable[d]) return 0;
  uint8_t *buffer = copy_take(&e->copies);
  if (buffer == NULL) {
    /* Every buffer is held by a stalled direction: this one splices, bounded by its
     * pipe as without copy mode. */
    atomic_fetch_add_explicit(&e->copy_pool_empty, 1, memory_order_relaxed);
    return dir_splice_from_now(e, id, d, now);
  }
  ssize_t n = recv(c->fd[d], buffer, e->copy_bytes, MSG_DONTWAIT);
  if (n > 0) {
    dir->copy = buffer;
    dir->copy_offset = 0;
    dir->copy_used = (uint32_t)n;
    if ((uint32_t)n == e->copy_bytes) {
      /* A whole buffer was waiting: the source outpaces a turn of this loop, so this is
       * bulk. The next read splices (into the pipe, behind the buffered bytes). */
      atomic_fetch_add_explicit(&e->splice_switches, 1, memory_order_relaxed);
      if (dir_splice_from_now(e, id, d, now) < 0) return -1;
    } else if (!c->eof_pending[d]) {
      /* A short read emptied the receive queue, and the next byte brings an edge
       * (EPOLLET): no EAGAIN try until then (nginx's rule, with its pending_eof). TCP
       * urgent data also ends a read early, at its mark; the next segment resumes. */
      c->readable[d] = 0;
    }
    return 1;
  }
  copy_give(&e->copies, buffer);
  if (n == 0) {
    dir->src_eof = 1;
    return 1;
  }
  if (errno == EAGAIN) {
    c->readable[d] = 0;
  } else if (errno != EINTR) {
    conn_side_failed(e, id, d, errno, now);
    return -1;
  }
  return 0;
}

/* Copy mode's write: the buffered bytes to the target. Returns 1 on progress, 0 without,
 * -1 when the connection ended. */
static int copy_out(struct tcp_engine *e, int32_t id, int d, int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  struct tcp_dir *dir = &c->dir[d];
  if (dir->copy_used == 0 || !c->writable[1 - d]) return 0;
  ssize_t n = send(c->fd[1 - d], dir->copy + dir->copy_offset, dir->copy_used,
                   MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n > 0) {
    dir->copy_offset += (uint32_t)n;
    dir->copy_used -= (uint32_t)n;
    dir->bytes += (uint64_t)n;
    atomic_fetch_add_explicit(d == 0 ? &e->bytes_up : &e->bytes_down, (uint64_t)n,
                              memory_order_relaxed);
    if (dir->copy_used == 0) {
      copy_give(&e->copies, dir->copy);
      dir->copy = NULL;
    } else {
      /* A short send filled the socket's send buffer; EPOLLOUT says when it has room. */
      c->writable[1 - d] = 0;
    }
    return 1;
  }
  if (n < 0 && errno == EAGAIN) {
    c->writable[1 - d] = 0;
  } else if (n < 0 && errno != EINTR) {
    conn_side_failed(e, id, 1 - d, errno, now);
    return -1;
  }
  return 0;
}

/* One step of one direction. Returns 1 on progress, 0 without, -1 when the connection
 * ended (the failing side decides the reason). */
static int dir_step(struct tcp_engine *e, int32_t id, int d, int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  struct tcp_dir *dir = &c->dir[d];
  const int src = c->fd[d];
  const int dst = c->fd[1 - d];
  int progress = 0;
  if (!dir->spliced) {
    int r = copy_in(e, id, d, now);
    if (r < 0) return -1;
    progress |= r;
  }
  /* Held per direction: the pipe's bytes plus those still in the copy buffer after the
   * switch, together within the pipe's capacity (the tcp.bufferBytesMax bound). */
  const uint32_t held = dir->used + dir->copy_used;
  if (dir->spliced && !dir->src_eof && held < dir->pipe.cap && c->readable[d]) {
    ssize_t n = splice(src, NULL, dir->pipe.fd_w, NULL, dir->pipe.cap - held,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      dir->used += (uint32_t)n;
      progress = 1;
    } else if (n == 0) {
      dir->src_eof = 1;
      progress = 1;
    } else if (errno == EAGAIN) {
      /* With bytes in the pipe, EAGAIN may mean "pipe slots full" rather than "socket
       * empty": keep the flag, the next round retries once the pipe drained. */
      if (dir->used == 0) c->readable[d] = 0;
    } else if (errno != EINTR) {
      conn_side_failed(e, id, d, errno, now);
      return -1;
    }
  }
  int r = copy_out(e, id, d, now);
  if (r < 0) return -1;
  progress |= r;
  if (dir->copy_used == 0 && dir->used > 0 && c->writable[1 - d]) {
    ssize_t n =
        splice(dir->pipe.fd_r, NULL, dst, NULL, dir->used, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      dir->used -= (uint32_t)n;
      dir->bytes += (uint64_t)n;
      atomic_fetch_add_explicit(d == 0 ? &e->bytes_up : &e->bytes_down, (uint64_t)n,
                                memory_order_relaxed);
      progress = 1;
    } else if (n < 0 && errno == EAGAIN) {
      c->writable[1 - d] = 0;
    } else if (n < 0 && errno != EINTR) {
      conn_side_failed(e, id, 1 - d, errno, now);
      return -1;
    }
  }
  if (dir->src_eof && dir->copy_used == 0 && dir->used == 0 && !dir->dst_shut) {
    /* Half-close: the source's FIN goes on once every byte before it has. When the other
     * direction is already done, the connection ends right after this and close() sends
     * the same FIN (nothing is unread on dst: its own direction read it to its EOF), so
     * the shutdown call is saved. */
    if (!c->dir[1 - d].dst_shut && shutdown(dst, SHUT_WR) != 0 && errno != ENOTCONN) {
      conn_side_failed(e, id, 1 - d, errno, now);
      return -1;
    }
    dir->dst_shut = 1;
    progress = 1;
  }
  return progress;
}

static void conn_pump(struct tcp_engine *e, int32_t id, int64_t now) {
  struct tcp_conn *c = &e->conns[id];
  if (c->state != TCP_OPEN) return;
  int round = 0;
  for (; round < TCP_ROUNDS_MAX; round++) {
    int progress = 0;
    for (int d = 0; d < 2; d++) {
      int r = dir_step(e, id, d, now);
      if (r < 0) return;
      progress |= r;
    }
    if (!progress) break;
    c->active_ms = now;
  }
  if (c->dir[0].dst_shut && c->dir[1].dst_shut) {
    conn_end(e, id, RL_TCP_END_CLOSED, 0, now);
    return;
  }
  if (round == TCP_ROUNDS_MAX) conn_queue(e, id);
}

static int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

static void conn_event(struct tcp_engine *e, uint64_t token, uint32_t events, int64_t now) {
  const int32_t id = (int32_t)((uint32_t)token >> 1);
  const int side = (int)(token & 1);
  RL_ASSERT(id >= 0 && id < e->slots);
  struct tcp_conn *c = &e->conns[id];
  /* A late event of a connection that ended earlier in this batch: its id is free, or
   * owned by a newer connection (another generation). Hand-offs run after the batch,
   * so the second does not arise today; the generation keeps it so in any order. */
  if (c->state == TCP_FREE || (uint32_t)(token >> 32) != c->generation) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->readable[side] = 1;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->eof_pending[side] = 1;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->writable[side] = 1;
  if (c->state == TCP_CONNECTING) {
    if (side != 1 || !(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    /* EPOLLOUT alone: connected (epoll computes the mask when it reports it, and a
     * failed connect always adds EPOLLERR), so SO_ERROR is read only on a failure. */
    int err = 0;
    if (events & (EPOLLERR | EPOLLHUP)) {
      err = socket_error(c->fd[1]);
      if (err == 0) err = ECONNREFUSED;
    }
    if (err != 0) {
      uint16_t reason = err == ECONNREFUSED ? RL_TCP_END_CONNECT_REFUSED
                        : err == ETIMEDOUT  ? RL_TCP_END_CONNECT_TIMEOUT
                                            : RL_TCP_END_CONNECT_FAILED;
      conn_end(e, id, reason, err, now);
      return;
    }
    c->state = TCP_OPEN;
    c->active_ms = now;
    c->connect_ms = clamp_ms(now - c->start_ms);
  } else if (events & EPOLLERR) {
    int err = socket_error(c->fd[side]);
    if (err != 0) {
      conn_end(e, id, side == 0 ? RL_TCP_END_CLIENT_RESET : RL_TCP_END_UPSTREAM_RESET, err, now);
      return;
    }
  }
  conn_pump(e, id, now);
}

static void conn_add(struct tcp_engine *e, const struct tcp_cmd *cmd, int64_t now) {
  struct tcp_conn *c = &e->conns[cmd->id];
  if (c->state != TCP_FREE) {
    /* The caller reused a busy id: a bookkeeping bug on its side. Refuse the pair. */
    close_with_reset(cmd->client_fd);
    close_with_reset(cmd->upstream_fd);
    atomic_fetch_add(&e->events_lost, 1);
    return;
  }
  c->state = TCP_CONNECTING;
  c->generation++;
  c->fd[0] = cmd->client_fd;
  c->fd[1] = cmd->upstream_fd;
  c->start_ms = c->active_ms = now;
  c->connect_ms = UINT32_MAX;
  /* epoll reports the current state on ADD (edge-triggered too), as an event. Splice
   * mode starts optimistic; copy mode waits for that event: a socket with nothing to
   * read costs no EAGAIN try. */
  const uint8_t copying = e->copy_bytes > 0;
  c->readable[0] = c->readable[1] = !copying;
  c->writable[0] = c->writable[1] = 1;
  c->eof_pending[0] = c->eof_pending[1] = 0;
  for (int d = 0; d < 2; d++) {
    c->dir[d] = (struct tcp_dir){.pipe = {.fd_r = -1, .fd_w = -1}, .spliced = !copying};
  }
  atomic_fetch_add(&e->open_count, 1);
  for (int d = 0; d < 2 && !copying; d++) {
    int rc = pipe_acquire(&e->pipes, &c->dir[d].pipe);
    if (rc < 0) {
      conn_end(e, cmd->id, RL_TCP_END_RESOURCES, -rc, now);
      return;
    }
  }
  for (int side = 0; side < 2; side++) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.u64 = conn_token(cmd->id, side, c->generation)};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, c->fd[side], &ev) != 0) {
      conn_end(e, cmd->id, RL_TCP_END_RESOURCES, errno, now);
      return;
    }
  }
}

static void engine_commands(struct tcp_engine *e, int64_t now) {
  uint64_t count;
  (void)!read(e->cmdfd, &count, sizeof(count));
  /* Bounded: at most slots commands can wait (one per free id). */
  for (;;) {
    pthread_mutex_lock(&e->lock);
    if (e->cmd_count == 0) {
      pthread_mutex_unlock(&e->lock);
      break;
    }
    struct tcp_cmd cmd = e->cmds[e->cmd_head];
    e->cmd_head = (e->cmd_head + 1) % e->slots;
    e->cmd_count--;
    pthread_mutex_unlock(&e->lock);
    conn_add(e, &cmd, now);
  }
  if (atomic_exchange(&e->abort_all, 0)) {
    for (int32_t id = 0; id < e->slots; id++) conn_end(e, id, RL_TCP_END_ABORTED, 0, now);
  }
}

static void engine_sweep(struct tcp_engine *e, int64_t now) {
  const int32_t connect_timeout_ms = atomic_load_explicit(&e->connect_timeout_ms,
                                                          memory_order_relaxed);
  const int32_t idle_timeout_ms = atomic_load_explicit(&e->idle_timeout_ms, memory_order_relaxed);
  for (int32_t id = 0; id < e->slots; id++) {
    struct tcp_conn *c = &e->conns[id];
    if (c->state == TCP_CONNECTING && now - c->start_ms >= connect_timeout_ms) {
      conn_end(e, id, RL_TCP_END_CONNECT_TIMEOUT, ETIMEDOUT, now);
    } else if (c->state == TCP_OPEN && idle_timeout_ms > 0 &&
               now - c->active_ms >= idle_timeout_ms) {
      conn_end(e, id, RL_TCP_END_IDLE_TIMEOUT, ETIMEDOUT, now);
    }
  }
}

/* One pass of the engine's loop: waits up to timeout_ms for events, handles them, gives
 * queued connections one more turn, takes the hand-offs and sweeps when due. Returns the
 * number of events, or -errno when epoll_wait failed (nothing a retry mends). */
static int engine_round(struct tcp_engine *e, struct epoll_event *events, int max,
                        int timeout_ms) {
  int n = epoll_wait(e->epfd, events, max, timeout_ms);
  if (n < 0) return errno == EINTR ? 0 : -errno;
  int64_t now = now_ms();
  /* Commands (hand-offs) wait until the batch is done: a hand-off may reuse the id of
   * a connection that ended in this batch, whose later events are still in it. */
  int commands = 0;
  for (int i = 0; i < n; i++) {
    const uint64_t token = events[i].data.u64;
    if (token == TCP_CMD_TOKEN) {
      commands = 1;
      continue;
    }
    conn_event(e, token, events[i].events, now);
    const int delay_us = atomic_load_explicit(&e->test_event_delay_us, memory_order_relaxed);
    if (delay_us > 0) usleep((useconds_t)delay_us);
  }
  /* Connections that used their rounds: one more turn each, in order. */
  int32_t queued = e->ready_count;
  for (int32_t k = 0; k < queued; k++) {
    int32_t id = e->ready[e->ready_head];
    e->ready_head = (e->ready_head + 1) % e->slots;
    e->ready_count--;
    e->conns[id].queued = 0;
    conn_pump(e, id, now);
  }
  if (commands) engine_commands(e, now);
  if (now >= e->next_sweep_ms) {
    engine_sweep(e, now);
    e->next_sweep_ms = now + atomic_load_explicit(&e->sweep_ms, memory_order_relaxed);
  }
  return n;
}

static void *engine_main(void *arg) {
  struct tcp_engine *e = arg;
  struct epoll_event events[TCP_EPOLL_EVENTS_MAX];
  while (!atomic_load(&e->stop)) {
    int64_t before = now_ms();
    int64_t next_sweep = e->next_sweep_ms;
    int timeout = e->ready_count > 0 ? 0 : (int)(next_sweep > before ? next_sweep - before : 0);
    int rc = engine_round(e, events, TCP_EPOLL_EVENTS_MAX, timeout);
    if (rc < 0) {
      /* EBADF/EINVAL/EFAULT: nothing a retry mends. Say so and wake JS, which ends the
       * process (a service manager restarts it) rather than relay half-alive. */
      atomic_store(&e->failed, rc);
      uint64_t one = 1;
      (void)!write(e->evfd, &one, sizeof(one));
      break;
    }
  }
  return NULL;
}

/* The sweep runs at least 4 times per timeout, so a connection ends within 25% of it. */
static void engine_store_timeouts(struct tcp_engine *e, int32_t connect_timeout_ms,
                                  int32_t idle_timeout_ms) {
  int32_t sweep = TCP_SWEEP_MS_MAX;
  if (connect_timeout_ms / 4 < sweep) sweep = connect_timeout_ms / 4;
  if (idle_timeout_ms > 0 && idle_timeout_ms / 4 < sweep) sweep = idle_timeout_ms / 4;
  atomic_store(&e->connect_timeout_ms, connect_timeout_ms);
  atomic_store(&e->idle_timeout_ms, idle_timeout_ms);
  atomic_store(&e->sweep_ms, sweep < TCP_SWEEP_MS_MIN ? TCP_SWEEP_MS_MIN : sweep);
}

static void engine_free(struct tcp_engine *e) {
  if (e->epfd >= 0) close(e->epfd);
  if (e->cmdfd >= 0) close(e->cmdfd);
  if (e->evfd >= 0) close(e->evfd);
  pipe_pool_free(&e->pipes);
  copy_pool_free(&e->copies);
  pthread_mutex_destroy(&e->lock);
  free(e->conns);
  free(e->cmds);
  free(e->events);
  free(e->ready);
  free(e);
}

int32_t rl_tcp_engine_open(int32_t slots, int32_t pipe_bytes, int32_t connect_timeout_ms,
                           int32_t idle_timeout_ms, int32_t copy_bytes, int32_t inline_mode) {
  if (slots <= 0 || slots > (1 << 24) || pipe_bytes < 4096 || connect_timeout_ms <= 0 ||
      idle_timeout_ms < 0 || (inline_mode != 0 && inline_mode != 1))
    return -EINVAL;
  if (copy_bytes != 0 && (copy_bytes < RL_TCP_COPY_BYTES_MIN || copy_bytes > pipe_bytes))
    return -EINVAL;
  struct tcp_engine *e = calloc(1, sizeof(*e));
  if (e == NULL) return -ENOMEM;
  e->epfd = e->cmdfd = e->evfd = -1;
  pthread_mutex_init(&e->lock, NULL);
  e->slots = slots;
  e->pipe_bytes = pipe_bytes;
  e->copy_bytes = (uint32_t)copy_bytes;
  e->inline_mode = inline_mode;
  engine_store_timeouts(e, connect_timeout_ms, idle_timeout_ms);
  e->next_sweep_ms = now_ms() + atomic_load(&e->sweep_ms);
  e->ev_cap = slots;
  e->conns = calloc((size_t)slots, sizeof(*e->conns));
  e->cmds = calloc((size_t)slots, sizeof(*e->cmds));
  e->events = calloc((size_t)e->ev_cap, sizeof(*e->events));
  e->ready = calloc((size_t)slots, sizeof(int32_t));
  int err = ENOMEM;
  if (!e->conns || !e->cmds || !e->events || !e->ready) goto fail;
  if (pipe_pool_init(&e->pipes, pipe_bytes) != 0) goto fail;
  const int32_t copies = copy_bytes == 0             ? 0
                         : slots < TCP_COPY_BUFFERS_MAX ? slots
                                                        : TCP_COPY_BUFFERS_MAX;
  int rc = copy_pool_init(&e->copies, copies, (uint32_t)copy_bytes);
  if (rc < 0) {
    err = -rc;
    goto fail;
  }
  for (int32_t i = 0; i < slots; i++) e->conns[i].fd[0] = e->conns[i].fd[1] = -1;
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (e->epfd < 0) goto fail_errno;
  e->cmdfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (e->cmdfd < 0) goto fail_errno;
  e->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (e->evfd < 0) goto fail_errno;
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TCP_CMD_TOKEN};
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->cmdfd, &ev) != 0) goto fail_errno;

  /* The handle first: a full table is found before there is a thread to stop. */
  const int32_t handle = handles_put(&tcp_engines, e);
  if (handle < 0) {
    err = -handle;
    goto fail;
  }
  if (inline_mode) return handle; /* no thread: the owner runs the rounds */
  rc = pthread_create(&e->thread, NULL, engine_main, e);
  if (rc != 0) {
    const struct tcp_engine *taken = handles_take(&tcp_engines, handle);
    RL_ASSERT(taken == e);
    err = rc;
    goto fail;
  }
  e->started = 1;
  /* Named for top -H and perf --per-thread; best effort (15 characters at most). */
  (void)pthread_setname_np(e->thread, "rl-tcp-engine");
  return handle;

fail_errno:
  err = errno;
fail:
  engine_free(e);
  return -err;
}

int32_t rl_tcp_engine_set_timeouts(int32_t engine, int32_t connect_timeout_ms,
                                   int32_t idle_timeout_ms) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  if (connect_timeout_ms <= 0 || idle_timeout_ms < 0) return -EINVAL;
  engine_store_timeouts(e, connect_timeout_ms, idle_timeout_ms);
  return 0;
}

int32_t rl_tcp_engine_failed(int32_t engine) {
  struct tcp_engine *e = engine_get(engine);
  return e == NULL ? -EBADF : atomic_load(&e->failed);
}

int32_t rl_tcp_engine_event_fd(int32_t engine) {
  struct tcp_engine *e = engine_get(engine);
  return e == NULL ? -EBADF : e->evfd;
}

int32_t rl_tcp_engine_add(int32_t engine, int32_t id, int32_t client_fd, int32_t upstream_fd) {
  struct tcp_engine *e = engine_get(engine);
  int32_t result = 0;
  if (e == NULL) result = -EBADF;
  else if (id < 0 || id >= e->slots || client_fd < 0 || upstream_fd < 0) result = -EINVAL;
  if (result == 0 && e->inline_mode) {
    /* The caller is the engine's loop: register the pair now (never inside a round, so
     * no event of an earlier owner of the id is pending in a batch). */
    conn_add(e, &(struct tcp_cmd){.id = id, .client_fd = client_fd, .upstream_fd = upstream_fd},
             now_ms());
    return 0;
  }
  if (result == 0) {
    pthread_mutex_lock(&e->lock);
    if (e->cmd_count == e->slots) {
      result = -ENOBUFS;
    } else {
      e->cmds[(e->cmd_head + e->cmd_count) % e->slots] =
          (struct tcp_cmd){.id = id, .client_fd = client_fd, .upstream_fd = upstream_fd};
      e->cmd_count++;
    }
    pthread_mutex_unlock(&e->lock);
  }
  if (result != 0) {
    if (client_fd >= 0) close_with_reset(client_fd);
    if (upstream_fd >= 0) close_with_reset(upstream_fd);
    return result;
  }
  uint64_t one = 1;
  if (write(e->cmdfd, &one, sizeof(one)) != sizeof(one)) return -errno;
  return 0;
}

int32_t rl_tcp_engine_events(int32_t engine, struct rl_tcp_event *out, int32_t count) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  if (count <= 0) return -EINVAL;
  uint64_t value;
  /* reset before copying: no lost wake-up (inline: nothing writes it) */
  if (!e->inline_mode) (void)!read(e->evfd, &value, sizeof(value));
  pthread_mutex_lock(&e->lock);
  int32_t n = e->ev_count < count ? e->ev_count : count;
  for (int32_t i = 0; i < n; i++) out[i] = e->events[(e->ev_head + i) % e->ev_cap];
  e->ev_head = (e->ev_head + n) % e->ev_cap;
  e->ev_count -= n;
  int left = e->ev_count > 0;
  pthread_mutex_unlock(&e->lock);
  if (left && !e->inline_mode) {
    uint64_t one = 1;
    (void)!write(e->evfd, &one, sizeof(one));
  }
  return n;
}

int32_t rl_tcp_engine_abort_all(int32_t engine) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  if (e->inline_mode) {
    int64_t now = now_ms();
    for (int32_t id = 0; id < e->slots; id++) conn_end(e, id, RL_TCP_END_ABORTED, 0, now);
    return 0;
  }
  atomic_store(&e->abort_all, 1);
  uint64_t one = 1;
  return write(e->cmdfd, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}

int32_t rl_tcp_engine_stats(int32_t engine, double *out) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  out[RL_TCP_STAT_BYTES_UP] = (double)atomic_load_explicit(&e->bytes_up, memory_order_relaxed);
  out[RL_TCP_STAT_BYTES_DOWN] =
      (double)atomic_load_explicit(&e->bytes_down, memory_order_relaxed);
  out[RL_TCP_STAT_OPEN] = (double)atomic_load(&e->open_count);
  out[RL_TCP_STAT_PIPES_IN_USE] = (double)atomic_load(&e->pipes.in_use);
  out[RL_TCP_STAT_PIPES_POOLED] =
      (double)atomic_load_explicit(&e->pipes.count, memory_order_relaxed);
  out[RL_TCP_STAT_EVENTS_LOST] = (double)atomic_load(&e->events_lost);
  out[RL_TCP_STAT_SPLICE_SWITCHES] =
      (double)atomic_load_explicit(&e->splice_switches, memory_order_relaxed);
  out[RL_TCP_STAT_COPY_ONLY] = (double)atomic_load_explicit(&e->copy_only, memory_order_relaxed);
  out[RL_TCP_STAT_COPY_IN_USE] =
      (double)atomic_load_explicit(&e->copies.in_use, memory_order_relaxed);
  out[RL_TCP_STAT_COPY_POOL_EMPTY] =
      (double)atomic_load_explicit(&e->copy_pool_empty, memory_order_relaxed);
  return RL_TCP_STATS_COUNT;
}

int32_t rl_tcp_engine_close(int32_t engine) {
  struct tcp_engine *e = handles_take(&tcp_engines, engine);
  if (e == NULL) return -EBADF;
  if (e->started) {
    atomic_store(&e->stop, 1);
    uint64_t one = 1;
    (void)!write(e->cmdfd, &one, sizeof(one));
    pthread_join(e->thread, NULL);
  }
  /* The thread is gone: hand-offs still queued and open connections are reset here. */
  int64_t now = now_ms();
  for (int32_t k = 0; k < e->cmd_count; k++) {
    struct tcp_cmd *cmd = &e->cmds[(e->cmd_head + k) % e->slots];
    close_with_reset(cmd->client_fd);
    close_with_reset(cmd->upstream_fd);
  }
  e->cmd_count = 0;
  for (int32_t id = 0; id < e->slots; id++) conn_end(e, id, RL_TCP_END_ABORTED, 0, now);
  engine_free(e);
  return 0;
}

int32_t rl_tcp_engine_epoll_fd(int32_t engine) {
  struct tcp_engine *e = engine_get(engine);
  return e == NULL ? -EBADF : e->epfd;
}

int32_t rl_tcp_engine_run(int32_t engine, int32_t max_events) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  if (!e->inline_mode || max_events <= 0) return -EINVAL;
  struct epoll_event events[TCP_EPOLL_EVENTS_MAX];
  const int max = max_events < TCP_EPOLL_EVENTS_MAX ? max_events : TCP_EPOLL_EVENTS_MAX;
  const int rc = engine_round(e, events, max, 0);
  if (rc < 0) {
    atomic_store(&e->failed, rc);
    return rc;
  }
  if (e->ready_count > 0) {
    /* Connections wait for another turn with no event to come: the command eventfd
     * keeps the engine's epoll fd readable, so the owner's poller calls again soon. */
    uint64_t one = 1;
    (void)!write(e->cmdfd, &one, sizeof(one));
  }
  return rc;
}

/* ---- Test-only hooks (relay.h: rl_test_*); the relay never calls them ---- */

int32_t rl_test_tcp_engine_stat_set(int32_t engine, int32_t which, double value) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  if (!(value >= 0 && value <= 9007199254740992.0)) return -EINVAL; /* 2^53 */
  switch (which) {
  case RL_TCP_STAT_BYTES_UP: atomic_store(&e->bytes_up, (uint64_t)value); break;
  case RL_TCP_STAT_BYTES_DOWN: atomic_store(&e->bytes_down, (uint64_t)value); break;
  case RL_TCP_STAT_EVENTS_LOST: atomic_store(&e->events_lost, (uint64_t)value); break;
  case RL_TCP_STAT_SPLICE_SWITCHES: atomic_store(&e->splice_switches, (uint64_t)value); break;
  case RL_TCP_STAT_COPY_ONLY: atomic_store(&e->copy_only, (uint64_t)value); break;
  case RL_TCP_STAT_COPY_POOL_EMPTY: atomic_store(&e->copy_pool_empty, (uint64_t)value); break;
  default: return -EINVAL; /* the others are gauges */
  }
  return 0;
}

int32_t rl_test_tcp_engine_event_delay(int32_t engine, int32_t delay_us) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  if (delay_us < 0 || delay_us > 100000) return -EINVAL;
  atomic_store(&e->test_event_delay_us, delay_us);
  return 0;
}

int32_t rl_test_tcp_engine_break(int32_t engine) {
  struct tcp_engine *e = engine_get(engine);
  if (e == NULL) return -EBADF;
  int rc = epoll_break(e->epfd);
  if (rc != 0) return rc;
  /* Wake the thread out of its current epoll_wait (on the old instance, which it still
   * holds) so that it reaches the broken one now, not at its next timeout. */
  uint64_t one = 1;
  return write(e->cmdfd, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}
