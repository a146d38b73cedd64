/*
 * handles.c: the one handle table behind every long-lived object JavaScript holds by
 * number (pollers, splice engines). A handle is slot | generation << 8: the generation
 * moves on when a slot is freed, so a handle kept past its close never reaches the
 * object that later takes the same slot; it is refused with -EBADF instead of acting
 * on someone else's poller.
 *
 * put and take hold the table's lock; get does not (it runs per batch): it reads the
 * slot's item and generation with acquire loads. A get racing the take of the same
 * handle is a use-after-close by the caller, which owns each handle from one thread.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#define HANDLE_SLOT_BITS 8
#define HANDLE_SLOT_MASK ((1u << HANDLE_SLOT_BITS) - 1u)
/* 23 bits of generation keep every handle a positive int32_t. */
#define HANDLE_GENERATION_MASK ((1u << (31 - HANDLE_SLOT_BITS)) - 1u)

_Static_assert(HANDLES_SLOTS_MAX <= (1 << HANDLE_SLOT_BITS), "slot fits its bits");

int32_t handles_put(struct rl_handles *t, void *item) {
  RL_ASSERT(item != NULL);
  RL_ASSERT(t->slots_max > 0 && t->slots_max <= HANDLES_SLOTS_MAX);
  pthread_mutex_lock(&t->lock);
  int32_t handle = -EMFILE;
  for (int32_t slot = 0; slot < t->slots_max; slot++) {
    if (atomic_load_explicit(&t->items[slot], memory_order_relaxed) != NULL) continue;
    const uint32_t generation = atomic_load_explicit(&t->generation[slot], memory_order_relaxed);
    atomic_store_explicit(&t->items[slot], item, memory_order_release);
    handle = (int32_t)((generation << HANDLE_SLOT_BITS) | (uint32_t)slot);
    break;
  }
  pthread_mutex_unlock(&t->lock);
  return handle;
}

void *handles_get(struct rl_handles *t, int32_t handle) {
  if (handle < 0) return NULL;
  const uint32_t slot = (uint32_t)handle & HANDLE_SLOT_MASK;
  if (slot >= (uint32_t)t->slots_max) return NULL;
  void *item = atomic_load_explicit(&t->items[slot], memory_order_acquire);
  const uint32_t generation = atomic_load_explicit(&t->generation[slot], memory_order_acquire);
  if (item == NULL || ((uint32_t)handle >> HANDLE_SLOT_BITS) != generation) return NULL;
  return item;
}

void *handles_take(struct rl_handles *t, int32_t handle) {
  pthread_mutex_lock(&t->lock);
  void *item = handles_get(t, handle);
  if (item != NULL) {
    const uint32_t slot = (uint32_t)handle & HANDLE_SLOT_MASK;
    const uint32_t generation = atomic_load_explicit(&t->generation[slot], memory_order_relaxed);
    atomic_store_explicit(&t->generation[slot], (generation + 1u) & HANDLE_GENERATION_MASK,
                          memory_order_release);
    atomic_store_explicit(&t->items[slot], NULL, memory_order_release);
  }
  pthread_mutex_unlock(&t->lock);
  return item;
}

void rl_assert_fail(const char *what, const char *file, int line) {
  fprintf(stderr, "[relay] C helper: invariant broken at %s:%d: %s\n", file, line, what);
  abort();
}
