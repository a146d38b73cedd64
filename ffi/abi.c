/*
 * abi.c: what TypeScript checks at start-up before it trusts this library: the ABI
 * version, and the complete layout of every record that crosses the boundary (each
 * field's offset and size), described by rl_layout_describe().
 */
#include "internal.h"

#include <errno.h>
#include <stddef.h>

/* The sizes relay.h promises; the fields are checked one by one through the table. */
_Static_assert(sizeof(struct rl_meta) == 64, "rl_meta is 64 bytes");
_Static_assert(sizeof(struct rl_send) == 64, "rl_send is 64 bytes");
_Static_assert(sizeof(struct rl_tcp_event) == 40, "rl_tcp_event is 40 bytes");

struct layout_entry {
  int32_t record;
  int32_t field;
  int32_t offset;
  int32_t size;
};

#define RECORD(record, type) {(record), 0, 0, (int32_t)sizeof(type)}
#define FIELD(record, id, type, member)                                                   \
  {(record), (id), (int32_t)offsetof(type, member), (int32_t)sizeof(((type *)0)->member)}

/* Per record: the record itself (field 0), then every field in declaration order, with
 * the ids src/sys/layout.ts uses. */
static const struct layout_entry layout[] = {
    RECORD(RL_RECORD_META, struct rl_meta),
    FIELD(RL_RECORD_META, 1, struct rl_meta, source_addr),
    FIELD(RL_RECORD_META, 2, struct rl_meta, target_addr),
    FIELD(RL_RECORD_META, 3, struct rl_meta, source_port),
    FIELD(RL_RECORD_META, 4, struct rl_meta, target_port),
    FIELD(RL_RECORD_META, 5, struct rl_meta, flags),
    FIELD(RL_RECORD_META, 6, struct rl_meta, reserved0),
    FIELD(RL_RECORD_META, 7, struct rl_meta, length),
    FIELD(RL_RECORD_META, 8, struct rl_meta, length_wire),
    FIELD(RL_RECORD_META, 9, struct rl_meta, source_scope),
    FIELD(RL_RECORD_META, 10, struct rl_meta, target_scope),
    FIELD(RL_RECORD_META, 11, struct rl_meta, queue_drops),
    FIELD(RL_RECORD_META, 12, struct rl_meta, reserved1),

    RECORD(RL_RECORD_SEND, struct rl_send),
    FIELD(RL_RECORD_SEND, 1, struct rl_send, target_addr),
    FIELD(RL_RECORD_SEND, 2, struct rl_send, source_addr),
    FIELD(RL_RECORD_SEND, 3, struct rl_send, target_port),
    FIELD(RL_RECORD_SEND, 4, struct rl_send, flags),
    FIELD(RL_RECORD_SEND, 5, struct rl_send, fd),
    FIELD(RL_RECORD_SEND, 6, struct rl_send, offset),
    FIELD(RL_RECORD_SEND, 7, struct rl_send, length),
    FIELD(RL_RECORD_SEND, 8, struct rl_send, result),
    FIELD(RL_RECORD_SEND, 9, struct rl_send, target_scope),
    FIELD(RL_RECORD_SEND, 10, struct rl_send, reserved),

    RECORD(RL_RECORD_TCP_EVENT, struct rl_tcp_event),
    FIELD(RL_RECORD_TCP_EVENT, 1, struct rl_tcp_event, id),
    FIELD(RL_RECORD_TCP_EVENT, 2, struct rl_tcp_event, kind),
    FIELD(RL_RECORD_TCP_EVENT, 3, struct rl_tcp_event, reason),
    FIELD(RL_RECORD_TCP_EVENT, 4, struct rl_tcp_event, error),
    FIELD(RL_RECORD_TCP_EVENT, 5, struct rl_tcp_event, duration_ms),
    FIELD(RL_RECORD_TCP_EVENT, 6, struct rl_tcp_event, bytes_up),
    FIELD(RL_RECORD_TCP_EVENT, 7, struct rl_tcp_event, bytes_down),
    FIELD(RL_RECORD_TCP_EVENT, 8, struct rl_tcp_event, connect_ms),
    FIELD(RL_RECORD_TCP_EVENT, 9, struct rl_tcp_event, reserved),
};

#define LAYOUT_COUNT ((int32_t)(sizeof(layout) / sizeof(layout[0])))

/* Invariant of the table: each record's fields tile it, in order, without gaps (the
 * records have explicit reserved fields and no padding). A field missing from the table
 * (or a struct grown without it) breaks the tiling; caught here, before TS compares. */
static void layout_invariants(void) {
  int32_t record = -1;
  int32_t record_bytes = 0;
  int32_t end = 0;
  for (int32_t i = 0; i < LAYOUT_COUNT; i++) {
    const struct layout_entry *f = &layout[i];
    if (f->field == 0) {
      RL_ASSERT(record < 0 || end == record_bytes);
      record = f->record;
      record_bytes = f->size;
      end = 0;
      continue;
    }
    RL_ASSERT(f->record == record);
    RL_ASSERT(f->offset == end);
    end = f->offset + f->size;
  }
  RL_ASSERT(end == record_bytes);
}

int32_t rl_abi_version(void) { return RL_ABI_VERSION; }

uintptr_t rl_addr(const void *p) { return (uintptr_t)p; }

int32_t rl_layout_describe(int32_t *out, int32_t count) {
  layout_invariants();
  if (count < LAYOUT_COUNT) return -ENOSPC;
  for (int32_t i = 0; i < LAYOUT_COUNT; i++) {
    out[i * 4 + 0] = layout[i].record;
    out[i * 4 + 1] = layout[i].field;
    out[i * 4 + 2] = layout[i].offset;
    out[i * 4 + 3] = layout[i].size;
  }
  return LAYOUT_COUNT;
}
