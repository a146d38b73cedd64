/*
 * copy_pool.c: the splice engine's copy buffers (tcp.spliceMode "auto"). A direction
 * starts by copying through user space (recv into a buffer, send out of it) and holds
 * a buffer only while it has bytes in it, so a pool far smaller than two per connection
 * serves every short exchange; the slab is made once at engine open, nothing per
 * connection. Bounded by its count; only the engine thread takes and gives.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

int copy_pool_init(struct copy_pool *pool, int32_t count, uint32_t buffer_bytes) {
  pool->slab = NULL;
  pool->free = NULL;
  pool->count = 0;
  pool->free_count = 0;
  pool->buffer_bytes = buffer_bytes;
  atomic_store(&pool->in_use, 0);
  if (count == 0 || buffer_bytes == 0) return 0;
  const size_t slab_bytes = (size_t)count * buffer_bytes;
  /* Pages are committed on first touch: a slab sized for the worst case costs only the
   * buffers ever used at once, and last-in-first-out reuse keeps those few hot. */
  void *slab = mmap(NULL, slab_bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (slab == MAP_FAILED) return -errno;
  pool->free = calloc((size_t)count, sizeof(*pool->free));
  if (pool->free == NULL) {
    munmap(slab, slab_bytes);
    return -ENOMEM;
  }
  pool->slab = slab;
  pool->count = count;
  /* Stacked so that the first taken is the slab's first buffer. */
  for (int32_t i = 0; i < count; i++) {
    pool->free[i] = pool->slab + (size_t)(count - 1 - i) * buffer_bytes;
  }
  pool->free_count = count;
  return 0;
}

void copy_pool_free(struct copy_pool *pool) {
  if (pool->slab != NULL) munmap(pool->slab, (size_t)pool->count * pool->buffer_bytes);
  free(pool->free);
  pool->slab = NULL;
  pool->free = NULL;
  pool->count = pool->free_count = 0;
}

uint8_t *copy_take(struct copy_pool *pool) {
  if (pool->free_count == 0) return NULL;
  uint8_t *buffer = pool->free[--pool->free_count];
  atomic_store_explicit(&pool->in_use, pool->count - pool->free_count, memory_order_relaxed);
  return buffer;
}

void copy_give(struct copy_pool *pool, uint8_t *buffer) {
  RL_ASSERT(pool->free_count < pool->count);
  RL_ASSERT(buffer >= pool->slab);
  RL_ASSERT(buffer < pool->slab + (size_t)pool->count * pool->buffer_bytes);
  RL_ASSERT((size_t)(buffer - pool->slab) % pool->buffer_bytes == 0);
  pool->free[pool->free_count++] = buffer;
  atomic_store_explicit(&pool->in_use, pool->count - pool->free_count, memory_order_relaxed);
}
