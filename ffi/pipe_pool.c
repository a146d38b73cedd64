/*
 * pipe_pool.c: the splice engine's pipes. Making a pipe costs pipe2 + two fcntl; a
 * short connection needs two, so ended connections give theirs back here for reuse
 * (HAProxy keeps its pipe pool apart from the stream code for the same reason).
 * Bounded by PIPE_POOL_MAX; only the engine thread acquires and releases.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* The kernel's default pipe size, when F_GETPIPE_SZ cannot tell. */
#define PIPE_BYTES_DEFAULT 65536u

int pipe_pool_init(struct pipe_pool *pool, int32_t pipe_bytes) {
  pool->pooled = calloc(PIPE_POOL_MAX, sizeof(*pool->pooled));
  if (pool->pooled == NULL) return -ENOMEM;
  pool->pipe_bytes = pipe_bytes;
  atomic_store(&pool->count, 0);
  atomic_store(&pool->in_use, 0);
  return 0;
}

void pipe_pool_free(struct pipe_pool *pool) {
  if (pool->pooled == NULL) return;
  const int32_t count = atomic_load(&pool->count);
  for (int32_t i = 0; i < count; i++) {
    close(pool->pooled[i].fd_r);
    close(pool->pooled[i].fd_w);
  }
  free(pool->pooled);
  pool->pooled = NULL;
  atomic_store(&pool->count, 0);
}

int pipe_acquire(struct pipe_pool *pool, struct rl_pipe *p) {
  const int32_t count = atomic_load_explicit(&pool->count, memory_order_relaxed);
  if (count > 0) {
    *p = pool->pooled[count - 1];
    atomic_store_explicit(&pool->count, count - 1, memory_order_relaxed);
  } else {
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -errno;
    /* Best effort: without the privilege for larger pipes the default (64 KiB) stays. */
    (void)fcntl(fds[1], F_SETPIPE_SZ, pool->pipe_bytes);
    p->fd_r = fds[0];
    p->fd_w = fds[1];
    const int cap = fcntl(p->fd_w, F_GETPIPE_SZ);
    p->cap = cap > 0 ? (uint32_t)cap : PIPE_BYTES_DEFAULT;
  }
  atomic_fetch_add(&pool->in_use, 1);
  return 0;
}

void pipe_release(struct pipe_pool *pool, struct rl_pipe *p, int empty) {
  if (p->fd_r < 0) return;
  const int32_t count = atomic_load_explicit(&pool->count, memory_order_relaxed);
  /* Only an empty pipe is reusable; one holding bytes of a reset connection is closed. */
  if (empty && count < PIPE_POOL_MAX) {
    pool->pooled[count] = *p;
    atomic_store_explicit(&pool->count, count + 1, memory_order_relaxed);
  } else {
    close(p->fd_r);
    close(p->fd_w);
  }
  p->fd_r = p->fd_w = -1;
  atomic_fetch_sub(&pool->in_use, 1);
}
