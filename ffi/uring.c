/*
 * uring.c: the io_uring UDP data plane (issue 14; src/udp/uring_plane.ts drives it).
 *
 * One ring per data-plane thread. Every UDP socket of the relay has a multishot recvmsg
 * armed on it that takes its buffers from one provided-buffer ring (carved from one
 * allocation, made once). Sends are queued as sendmsg SQEs whose msghdr, address,
 * IP_PKTINFO and payload are copied into a send slot the ring owns until the CQE (the
 * caller's slab is reused by the next round). rl_uring_wait is the round's one system
 * call: it submits what was queued and waits for a completion, with a timeout.
 *
 * Received datagrams wait in a FIFO per token (the node is the buffer id: a buffer is
 * held by at most one datagram) until rl_uring_recv copies them into the caller's slab
 * slots and rl_meta records, the layout rl_recv_batch fills, and gives the buffers back
 * to the ring. So the batch handling in TypeScript is the epoll path's, unchanged.
 * (Copying: the provided buffers hold the recvmsg header, name and control data before
 * each payload, which the slab's fixed slots cannot; one memcpy per datagram.)
 *
 * A multishot recvmsg ends (no IORING_CQE_F_MORE) on an error (a pending ICMP error:
 * the caller drains the error queue) or when the buffer ring ran empty (ENOBUFS): the
 * token is re-armed at the start of the next wait, after the caller gave buffers back.
 * Non-UDP sockets (the address watch, SOCKS5 control connections) stay on the caller's
 * epoll instance, whose fd is watched here by a multishot poll.
 *
 * Sends use MSG_DONTWAIT: a full socket buffer completes with -EAGAIN (counted as a
 * drop, as the epoll path's sendmmsg does) instead of waiting in the ring.
 */
#include "internal.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define URINGS_MAX HANDLES_SLOTS_MAX
static struct rl_handles urings = RL_HANDLES_INIT(URINGS_MAX);

/* user_data: kind in the top 2 bits; a receive carries its token and the token's
 * generation (a CQE of a socket unregistered since is recognised and ignored). */
#define UD_KIND_SHIFT 62
#define UD_IGNORE 0ull
#define UD_RECV 1ull
#define UD_SEND 2ull
#define UD_WATCH 3ull
#define UD_GEN_SHIFT 32
#define UD_GEN_MASK 0x3fffffffu

/* The name's room in a provided buffer: a sockaddr_in6, rounded up so the control data
 * after it (and its struct cmsghdr) stays 8-byte aligned. */
#define NAME_BYTES ((sizeof(struct sockaddr_in6) + 7) & ~(size_t)7)
#define BUF_GROUP 0
#define NONE (-1)

struct send_slot {
  struct msghdr h;
  struct iovec iov;
  struct sockaddr_storage name;
  uint64_t cmsg[(SEND_CMSG_BYTES + 7) / 8];
};

struct token_state {
  int32_t fd;
  uint32_t gen;
  int32_t head; /* first buffer id waiting, or NONE */
  int32_t tail;
  int32_t err;  /* a receive error to report (positive errno), or 0 */
  uint8_t live;
  uint8_t need_arm;
  uint8_t in_ready;
  uint8_t in_arm;
};

struct uring {
  struct io_uring ring;
  /* Provided buffers. */
  struct io_uring_buf_ring *br;
  size_t br_bytes;
  uint8_t *bufs;
  size_t bufs_bytes;
  int32_t buf_count;
  int32_t buf_bytes;
  int32_t *buf_next;  /* per buffer id: the next waiting datagram of its token */
  int32_t *buf_res;   /* per buffer id: the CQE's result (bytes in the buffer) */
  int32_t returned;   /* buffers added to the ring, not yet published (advance) */
  struct msghdr recv_template;
  /* Tokens. */
  struct token_state *tokens;
  int32_t tokens_max;
  uint32_t *ready;    /* tokens with datagrams or an error waiting */
  int32_t ready_count;
  uint32_t *arm;      /* tokens to re-arm at the next wait */
  int32_t arm_count;
  /* Sends. */
  struct send_slot *slots;
  uint8_t *send_bytes;
  size_t send_bytes_size;
  int32_t send_count;
  int32_t send_slot_bytes;
  int32_t *free_slots;
  int32_t free_count;
  /* The caller's epoll fd, watched by a multishot poll (or -1), and whether it fired. */
  int32_t watch_fd;
  uint8_t watch_fired;
  uint8_t watch_need_arm;
  /* Counters (rl_uring_stats). */
  uint64_t stats[RL_URING_STAT_COUNT];
};

static struct uring *uring_get(int32_t handle) { return handles_get(&urings, handle); }

static void uring_free(struct uring *u) {
  if (u->br != NULL) {
    io_uring_unregister_buf_ring(&u->ring, BUF_GROUP);
    munmap(u->br, u->br_bytes);
  }
  if (u->ring.ring_fd > 0) io_uring_queue_exit(&u->ring);
  if (u->bufs != NULL) munmap(u->bufs, u->bufs_bytes);
  if (u->send_bytes != NULL) munmap(u->send_bytes, u->send_bytes_size);
  free(u->buf_next);
  free(u->buf_res);
  free(u->tokens);
  free(u->ready);
  free(u->arm);
  free(u->slots);
  free(u->free_slots);
  free(u);
}

static void *map_bytes(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static int ring_init(struct io_uring *ring, unsigned entries, unsigned cq_entries) {
  struct io_uring_params p;
  memset(&p, 0, sizeof(p));
  p.cq_entries = cq_entries;
  /* One thread submits; task work runs when it enters the kernel anyway. */
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
            IORING_SETUP_SINGLE_ISSUER;
  int rc = io_uring_queue_init_params(entries, ring, &p);
  if (rc == -EINVAL) { /* an older kernel: without the optional flags */
    memset(&p, 0, sizeof(p));
    p.cq_entries = cq_entries;
    p.flags = IORING_SETUP_CQSIZE;
    rc = io_uring_queue_init_params(entries, ring, &p);
  }
  return rc;
}

static uint8_t *buf_at(struct uring *u, int32_t bid) {
  return u->bufs + (size_t)bid * (size_t)u->buf_bytes;
}

static void buf_return(struct uring *u, int32_t bid) {
  io_uring_buf_ring_add(u->br, buf_at(u, bid), (unsigned)u->buf_bytes, (unsigned short)bid,
                        io_uring_buf_ring_mask((unsigned)u->buf_count), u->returned);
  u->returned++;
}

static void buf_publish(struct uring *u) {
  if (u->returned == 0) return;
  io_uring_buf_ring_advance(u->br, u->returned);
  u->returned = 0;
}

/* An SQE, submitting what is queued first when the submission queue is full. */
static struct io_uring_sqe *sqe_get(struct uring *u) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (sqe != NULL) return sqe;
  io_uring_submit(&u->ring);
  return io_uring_get_sqe(&u->ring);
}

static uint64_t recv_data(uint32_t token, uint32_t gen) {
  return (UD_RECV << UD_KIND_SHIFT) | ((uint64_t)(gen & UD_GEN_MASK) << UD_GEN_SHIFT) | token;
}

static int arm_recv(struct uring *u, uint32_t token) {
  struct token_state *t = &u->tokens[token];
  struct io_uring_sqe *sqe = sqe_get(u);
  if (sqe == NULL) return -EBUSY;
  /* MSG_TRUNC: the recvmsg header's payloadlen is the datagram's real length. */
  io_uring_prep_recvmsg_multishot(sqe, t->fd, &u->recv_template, MSG_TRUNC);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = BUF_GROUP;
  io_uring_sqe_set_data64(sqe, recv_data(token, t->gen));
  t->need_arm = 0;
  return 0;
}

static int arm_watch(struct uring *u) {
  struct io_uring_sqe *sqe = sqe_get(u);
  if (sqe == NULL) return -EBUSY;
  io_uring_prep_poll_multishot(sqe, u->watch_fd, POLLIN);
  io_uring_sqe_set_data64(sqe, UD_WATCH << UD_KIND_SHIFT);
  u->watch_need_arm = 0;
  return 0;
}

static void mark_ready(struct uring *u, uint32_t token) {
  struct token_state *t = &u->tokens[token];
  if (t->in_ready) return;
  t->in_ready = 1;
  u->ready[u->ready_count++] = token;
}

static void mark_arm(struct uring *u, uint32_t token) {
  struct token_state *t = &u->tokens[token];
  t->need_arm = 1;
  if (t->in_arm) return;
  t->in_arm = 1;
  u->arm[u->arm_count++] = token;
}

static void on_recv(struct uring *u, const struct io_uring_cqe *cqe, uint64_t data) {
  const uint32_t token = (uint32_t)data;
  const uint32_t gen = (uint32_t)(data >> UD_GEN_SHIFT) & UD_GEN_MASK;
  const int has_buf = (cqe->flags & IORING_CQE_F_BUFFER) != 0;
  const int32_t bid = (int32_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
  struct token_state *t = token < (uint32_t)u->tokens_max ? &u->tokens[token] : NULL;
  if (t == NULL || !t->live || (t->gen & UD_GEN_MASK) != gen) {
    /* A socket unregistered since (its cancel's -ECANCELED, or a datagram that raced). */
    if (has_buf) buf_return(u, bid);
    return;
  }
  if (!(cqe->flags & IORING_CQE_F_MORE)) mark_arm(u, token);
  if (cqe->res < 0) {
    if (has_buf) buf_return(u, bid);
    if (cqe->res == -ENOBUFS) {
      u->stats[RL_URING_STAT_NO_BUFFERS]++;
    } else if (cqe->res != -ECANCELED) {
      t->err = -cqe->res;
      mark_ready(u, token);
    }
    return;
  }
  if (!has_buf) return; /* cannot happen with buffer select: nothing to hand over */
  u->buf_res[bid] = cqe->res;
  u->buf_next[bid] = NONE;
  if (t->head == NONE) t->head = bid;
  else u->buf_next[t->tail] = bid;
  t->tail = bid;
  mark_ready(u, token);
}

static void on_send(struct uring *u, const struct io_uring_cqe *cqe, uint64_t data,
                    int32_t *completions) {
  const int32_t slot = (int32_t)(uint32_t)data;
  if (slot < 0 || slot >= u->send_count) return;
  /* completions: [count, slot, result, slot, result ...], room for every slot. */
  const int32_t k = completions[0]++;
  completions[1 + 2 * k] = slot;
  completions[2 + 2 * k] = cqe->res;
  u->free_slots[u->free_count++] = slot;
}

static void on_cqe(struct uring *u, const struct io_uring_cqe *cqe, int32_t *completions) {
  const uint64_t data = io_uring_cqe_get_data64(cqe);
  /* liburing's own timeout (kernels without IORING_FEAT_EXT_ARG): not ours. */
  if (data == LIBURING_UDATA_TIMEOUT) return;
  const uint64_t kind = data >> UD_KIND_SHIFT;
  if (kind == UD_RECV) {
    on_recv(u, cqe, data);
  } else if (kind == UD_SEND) {
    on_send(u, cqe, data, completions);
  } else if (kind == UD_WATCH) {
    if (cqe->res >= 0) u->watch_fired = 1;
    if (!(cqe->flags & IORING_CQE_F_MORE)) u->watch_need_arm = 1;
  }
}

int32_t rl_uring_open(int32_t entries, int32_t tokens_max, int32_t buf_count,
                      int32_t slot_bytes, int32_t send_count) {
  /* buf_count: a power of two (the ring's mask); bounded so buffer ids fit 16 bits. */
  if (entries < 8 || entries > 32768 || tokens_max <= 0 || tokens_max > (1 << 30) ||
      buf_count < 8 || buf_count > 32768 || (buf_count & (buf_count - 1)) != 0 ||
      slot_bytes <= 0 || slot_bytes > 65536 || send_count <= 0 || send_count > 32768)
    return -EINVAL;
  struct uring *u = calloc(1, sizeof(*u));
  if (u == NULL) return -ENOMEM;
  u->ring.ring_fd = -1;
  u->watch_fd = -1;
  /* Completions per wait: a datagram per buffer, a send per slot, and the rest. */
  unsigned cq = 1;
  while (cq < (unsigned)(buf_count + send_count + tokens_max / 4 + 64) && cq < 65536) cq <<= 1;
  int rc = ring_init(&u->ring, (unsigned)entries, cq);
  if (rc < 0) {
    u->ring.ring_fd = -1;
    uring_free(u);
    return rc;
  }
  u->buf_count = buf_count;
  /* A buffer: recvmsg's header, the name, the control data, then the payload. */
  size_t header = sizeof(struct io_uring_recvmsg_out) + NAME_BYTES + RECV_CMSG_BYTES;
  u->buf_bytes = (int32_t)((header + (size_t)slot_bytes + 63) & ~(size_t)63);
  u->bufs_bytes = (size_t)buf_count * (size_t)u->buf_bytes;
  u->bufs = map_bytes(u->bufs_bytes);
  u->br_bytes = (size_t)buf_count * sizeof(struct io_uring_buf);
  u->br = map_bytes(u->br_bytes);
  u->buf_next = calloc((size_t)buf_count, sizeof(int32_t));
  u->buf_res = calloc((size_t)buf_count, sizeof(int32_t));
  u->tokens_max = tokens_max;
  u->tokens = calloc((size_t)tokens_max, sizeof(struct token_state));
  u->ready = calloc((size_t)tokens_max, sizeof(uint32_t));
  u->arm = calloc((size_t)tokens_max, sizeof(uint32_t));
  u->send_count = send_count;
  u->send_slot_bytes = slot_bytes;
  u->slots = calloc((size_t)send_count, sizeof(struct send_slot));
  u->free_slots = calloc((size_t)send_count, sizeof(int32_t));
  u->send_bytes_size = (size_t)send_count * (size_t)slot_bytes;
  u->send_bytes = map_bytes(u->send_bytes_size);
  if (u->bufs == NULL || u->br == NULL || u->buf_next == NULL || u->buf_res == NULL ||
      u->tokens == NULL || u->ready == NULL || u->arm == NULL || u->slots == NULL ||
      u->free_slots == NULL || u->send_bytes == NULL) {
    if (u->br != NULL) munmap(u->br, u->br_bytes);
    u->br = NULL;
    uring_free(u);
    return -ENOMEM;
  }
  io_uring_buf_ring_init(u->br);
  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof(reg));
  reg.ring_addr = (uint64_t)(uintptr_t)u->br;
  reg.ring_entries = (uint32_t)buf_count;
  reg.bgid = BUF_GROUP;
  rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
  if (rc < 0) {
    munmap(u->br, u->br_bytes);
    u->br = NULL;
    uring_free(u);
    return rc;
  }
  for (int32_t b = 0; b < buf_count; b++) buf_return(u, b);
  buf_publish(u);
  u->recv_template.msg_namelen = NAME_BYTES;
  u->recv_template.msg_controllen = RECV_CMSG_BYTES;
  for (int32_t i = 0; i < tokens_max; i++) {
    u->tokens[i].fd = -1;
    u->tokens[i].head = NONE;
    u->tokens[i].tail = NONE;
  }
  for (int32_t s = 0; s < send_count; s++) u->free_slots[s] = send_count - 1 - s;
  u->free_count = send_count;
  const int32_t handle = handles_put(&urings, u);
  if (handle < 0) uring_free(u);
  return handle;
}

int32_t rl_uring_close(int32_t handle) {
  struct uring *u = handles_take(&urings, handle);
  if (u == NULL) return -EBADF;
  uring_free(u); /* io_uring_queue_exit cancels every request still armed */
  return 0;
}

int32_t rl_uring_add(int32_t handle, int32_t fd, int32_t token) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  if (fd < 0 || token < 0 || token >= u->tokens_max) return -EINVAL;
  struct token_state *t = &u->tokens[token];
  if (t->live) return -EEXIST;
  t->fd = fd;
  t->live = 1;
  t->err = 0;
  t->head = t->tail = NONE;
  return arm_recv(u, (uint32_t)token);
}

int32_t rl_uring_del(int32_t handle, int32_t token) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  if (token < 0 || token >= u->tokens_max || !u->tokens[token].live) return -ENOENT;
  struct token_state *t = &u->tokens[token];
  const uint64_t armed = recv_data((uint32_t)token, t->gen);
  t->live = 0;
  t->gen++;
  t->fd = -1;
  t->err = 0;
  t->need_arm = 0;
  for (int32_t b = t->head; b != NONE; b = u->buf_next[b]) buf_return(u, b);
  t->head = t->tail = NONE;
  buf_publish(u);
  struct io_uring_sqe *sqe = sqe_get(u);
  if (sqe == NULL) return -EBUSY;
  io_uring_prep_cancel64(sqe, armed, 0);
  io_uring_sqe_set_data64(sqe, UD_IGNORE);
  /* Now, not at the next wait: the caller closes the fd next, and the sends queued on
   * it must reach the kernel first; the cancel lets go of the socket (a request holds
   * its file, so the port would stay bound). */
  const int rc = io_uring_submit(&u->ring);
  return rc < 0 ? rc : 0;
}

int32_t rl_uring_watch(int32_t handle, int32_t fd) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  if (fd < 0 || u->watch_fd >= 0) return -EINVAL;
  u->watch_fd = fd;
  return arm_watch(u);
}

int32_t rl_uring_wait(int32_t handle, int32_t timeout_ms, uint32_t *tokens, int32_t tokens_max,
                      int32_t *completions) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  if (tokens_max <= 0) return -EINVAL;
  completions[0] = 0;
  buf_publish(u);
  /* Re-arm what ended last time, now that the caller gave buffers back. */
  for (int32_t i = 0; i < u->arm_count; i++) {
    struct token_state *t = &u->tokens[u->arm[i]];
    t->in_arm = 0;
    if (t->live && t->need_arm) arm_recv(u, u->arm[i]);
  }
  u->arm_count = 0;
  if (u->watch_need_arm) arm_watch(u);
  /* Keep the tokens still holding datagrams (the caller reads a bounded amount). */
  int32_t kept = 0;
  for (int32_t i = 0; i < u->ready_count; i++) {
    struct token_state *t = &u->tokens[u->ready[i]];
    if (t->live && (t->head != NONE || t->err != 0)) u->ready[kept++] = u->ready[i];
    else t->in_ready = 0;
  }
  u->ready_count = kept;
  u->stats[RL_URING_STAT_ENTERS]++;
  struct io_uring_cqe *first = NULL;
  /* Work already waiting: submit and collect, never block. */
  const int32_t wait_ms = kept > 0 ? 0 : timeout_ms;
  struct __kernel_timespec ts = {.tv_sec = wait_ms / 1000,
                                 .tv_nsec = (long long)(wait_ms % 1000) * 1000000};
  int rc = io_uring_submit_and_wait_timeout(&u->ring, &first, 1, &ts, NULL);
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return rc;
  unsigned head;
  unsigned seen = 0;
  struct io_uring_cqe *cqe;
  io_uring_for_each_cqe(&u->ring, head, cqe) {
    on_cqe(u, cqe, completions);
    seen++;
  }
  io_uring_cq_advance(&u->ring, seen);
  u->stats[RL_URING_STAT_COMPLETIONS] += seen;
  int32_t n = 0;
  if (u->watch_fired) {
    tokens[n++] = RL_URING_WATCH_TOKEN;
    u->watch_fired = 0;
  }
  for (int32_t i = 0; i < u->ready_count && n < tokens_max; i++) tokens[n++] = u->ready[i];
  return n;
}

int32_t rl_uring_recv(int32_t handle, int32_t token, uint8_t *slab, int32_t slot_bytes,
                      int32_t count, struct rl_meta *meta) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  if (count <= 0 || count > RL_BATCH_COUNT_MAX || slot_bytes <= 0) return -EINVAL;
  if (token < 0 || token >= u->tokens_max) return -EINVAL;
  struct token_state *t = &u->tokens[token];
  if (!t->live) return 0;
  int32_t n = 0;
  while (n < count && t->head != NONE) {
    const int32_t bid = t->head;
    t->head = u->buf_next[bid];
    if (t->head == NONE) t->tail = NONE;
    uint8_t *buf = buf_at(u, bid);
    struct io_uring_recvmsg_out *o =
        io_uring_recvmsg_validate(buf, u->buf_res[bid], &u->recv_template);
    if (o == NULL) { /* shorter than its own header: cannot happen; never read past */
      buf_return(u, bid);
      continue;
    }
    struct rl_meta *m = &meta[n];
    uint16_t flags = 0;
    const uint32_t wire = o->payloadlen;
    const uint32_t held = io_uring_recvmsg_payload_length(o, u->buf_res[bid], &u->recv_template);
    uint32_t length = held < wire ? held : wire;
    if (length > (uint32_t)slot_bytes) length = (uint32_t)slot_bytes;
    if ((o->flags & MSG_TRUNC) || wire > length) flags |= RL_META_TRUNCATED;
    memcpy(slab + (size_t)n * (size_t)slot_bytes,
           io_uring_recvmsg_payload(o, &u->recv_template), length);
    int sport = -1;
    if (o->namelen > 0 && o->namelen <= sizeof(struct sockaddr_in6))
      sport = sockaddr_to_addr((struct sockaddr *)io_uring_recvmsg_name(o), m->source_addr,
                               &m->source_scope);
    if (sport < 0) memset(m->source_addr, 0, sizeof(m->source_addr));
    m->source_port = sport < 0 ? 0 : (uint16_t)sport;
    m->target_port = 0;
    m->target_scope = 0;
    m->queue_drops = 0;
    for (struct cmsghdr *c = io_uring_recvmsg_cmsg_firsthdr(o, &u->recv_template); c != NULL;
         c = io_uring_recvmsg_cmsg_nexthdr(o, &u->recv_template, c))
      flags |= udp_meta_cmsg(m, c);
    m->flags = flags;
    m->length = length;
    m->length_wire = wire;
    buf_return(u, bid);
    n++;
  }
  buf_publish(u);
  if (n == 0 && t->err != 0) {
    const int32_t err = t->err;
    t->err = 0;
    return -err;
  }
  return n;
}

int32_t rl_uring_send_batch(int32_t handle, uint8_t *slab, uint32_t slab_bytes,
                            struct rl_send *sends, int32_t count, int32_t *slots_out) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  if (count < 0 || count > RL_BATCH_COUNT_MAX) return -EINVAL;
  int32_t queued = 0;
  for (int32_t i = 0; i < count; i++) {
    struct rl_send *s = &sends[i];
    slots_out[i] = NONE;
    if (s->fd < 0) {
      s->result = -EBADF;
      continue;
    }
    if ((uint64_t)s->offset + (uint64_t)s->length > (uint64_t)slab_bytes) {
      s->result = -EFAULT;
      continue;
    }
    struct io_uring_sqe *sqe = NULL;
    if (u->free_count > 0 && s->length <= (uint32_t)u->send_slot_bytes) sqe = sqe_get(u);
    if (sqe == NULL) {
      /* No slot (every one in flight) or larger than one: sent now, as rl_send_batch
       * would (the same result, one system call for this datagram). */
      struct msghdr h;
      struct iovec iov;
      struct sockaddr_storage name;
      uint64_t cmsg[(SEND_CMSG_BYTES + 7) / 8];
      udp_send_fill(&h, &iov, &name, cmsg, slab + s->offset, s);
      const ssize_t sent = sendmsg(s->fd, &h, MSG_DONTWAIT);
      s->result = sent < 0 ? -errno : (int32_t)sent;
      u->stats[RL_URING_STAT_SENDS_DIRECT]++;
      continue;
    }
    const int32_t slot = u->free_slots[--u->free_count];
    struct send_slot *d = &u->slots[slot];
    uint8_t *payload = u->send_bytes + (size_t)slot * (size_t)u->send_slot_bytes;
    memcpy(payload, slab + s->offset, s->length);
    udp_send_fill(&d->h, &d->iov, &d->name, d->cmsg, payload, s);
    io_uring_prep_sendmsg(sqe, s->fd, &d->h, MSG_DONTWAIT);
    io_uring_sqe_set_data64(sqe, (UD_SEND << UD_KIND_SHIFT) | (uint32_t)slot);
    s->result = 0;
    slots_out[i] = slot;
    queued++;
  }
  u->stats[RL_URING_STAT_SENDS_QUEUED] += (uint64_t)queued;
  return queued;
}

int32_t rl_uring_submit(int32_t handle) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  const int rc = io_uring_submit(&u->ring);
  return rc < 0 ? rc : 0;
}

int32_t rl_uring_stats(int32_t handle, double *out) {
  struct uring *u = uring_get(handle);
  if (u == NULL) return -EBADF;
  for (int i = 0; i < RL_URING_STAT_COUNT; i++) out[i] = (double)u->stats[i];
  return RL_URING_STAT_COUNT;
}

/* Whether this kernel lets us run the plane: a ring, a provided-buffer ring, and a
 * multishot recvmsg that delivers a datagram into it and stays armed. On a socket pair,
 * so it needs no network (a namespace's loopback may be down). */
int32_t rl_uring_probe(void) {
  int32_t h = rl_uring_open(8, 1, 8, 64, 1);
  if (h < 0) return h;
  struct uring *u = uring_get(h);
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0) {
    const int err = errno;
    rl_uring_close(h);
    return -err;
  }
  int32_t rc = rl_uring_add(h, pair[0], 0);
  const char byte = 'p';
  if (rc == 0 && send(pair[1], &byte, 1, 0) != 1) rc = -errno;
  int got = 0;
  /* Bounded: a few waits of 100 ms for one datagram that is already queued. */
  for (int i = 0; rc == 0 && i < 10 && !got; i++) {
    uint32_t tokens[2];
    int32_t completions[1 + 2];
    const int32_t n = rl_uring_wait(h, 100, tokens, 2, completions);
    if (n < 0) rc = n;
    if (u->tokens[0].err != 0) rc = -u->tokens[0].err;
    if (n > 0 && u->tokens[0].head != NONE) got = 1;
  }
  /* Multishot must still be armed after a datagram (IORING_CQE_F_MORE). */
  if (rc == 0 && (!got || u->tokens[0].need_arm)) rc = -EOPNOTSUPP;
  close(pair[0]);
  close(pair[1]);
  rl_uring_close(h);
  return rc;
}
