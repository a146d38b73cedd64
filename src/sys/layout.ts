// Record layouts shared with ffi/relay.h, defined once here: every field's id, offset
// and size, with C's field names. loadFfi() compares each of them with what the C
// helper reports (rl_layout_describe) and refuses to run on any difference; the word
// and half-word indices the data path uses are derived from these offsets.

export interface FieldLayout {
  /** The field's number in rl_layout_describe() (declaration order, from 1). */
  readonly id: number;
  readonly offset: number;
  readonly size: number;
}

export interface RecordLayout {
  /** The C struct's name, for messages. */
  readonly name: string;
  /** RL_RECORD_* in relay.h. */
  readonly id: number;
  readonly bytes: number;
  readonly fields: Readonly<Record<string, FieldLayout>>;
}

/** struct rl_meta: one received datagram (64 bytes). */
export const META_RECORD = {
  name: "rl_meta",
  id: 1,
  bytes: 64,
  fields: {
    source_addr: { id: 1, offset: 0, size: 16 }, // sender (v4-mapped for IPv4)
    target_addr: { id: 2, offset: 16, size: 16 }, // original destination
    source_port: { id: 3, offset: 32, size: 2 },
    target_port: { id: 4, offset: 34, size: 2 },
    flags: { id: 5, offset: 36, size: 2 }, // META_FLAG_*
    reserved0: { id: 6, offset: 38, size: 2 },
    length: { id: 7, offset: 40, size: 4 }, // bytes stored in the slot
    length_wire: { id: 8, offset: 44, size: 4 }, // length on the wire
    source_scope: { id: 9, offset: 48, size: 4 },
    target_scope: { id: 10, offset: 52, size: 4 },
    queue_drops: { id: 11, offset: 56, size: 4 }, // SO_RXQ_OVFL's counter
    reserved1: { id: 12, offset: 60, size: 4 },
  },
} as const satisfies RecordLayout;

/** struct rl_send: one datagram to send (64 bytes). */
export const SEND_RECORD = {
  name: "rl_send",
  id: 2,
  bytes: 64,
  fields: {
    target_addr: { id: 1, offset: 0, size: 16 },
    source_addr: { id: 2, offset: 16, size: 16 }, // with SEND_FLAG_SOURCE
    target_port: { id: 3, offset: 32, size: 2 },
    flags: { id: 4, offset: 34, size: 2 },
    fd: { id: 5, offset: 36, size: 4 },
    offset: { id: 6, offset: 40, size: 4 }, // payload offset from the slab base
    length: { id: 7, offset: 44, size: 4 },
    result: { id: 8, offset: 48, size: 4 }, // out: bytes sent or -errno
    target_scope: { id: 9, offset: 52, size: 4 },
    reserved: { id: 10, offset: 56, size: 8 },
  },
} as const satisfies RecordLayout;

/** struct rl_tcp_event: one per TCP connection, when it ends (40 bytes). */
export const TCP_EVENT_RECORD = {
  name: "rl_tcp_event",
  id: 3,
  bytes: 40,
  fields: {
    id: { id: 1, offset: 0, size: 4 },
    kind: { id: 2, offset: 4, size: 2 },
    reason: { id: 3, offset: 6, size: 2 },
    error: { id: 4, offset: 8, size: 4 },
    duration_ms: { id: 5, offset: 12, size: 4 },
    bytes_up: { id: 6, offset: 16, size: 8 }, // double
    bytes_down: { id: 7, offset: 24, size: 8 }, // double
    connect_ms: { id: 8, offset: 32, size: 4 },
    reserved: { id: 9, offset: 36, size: 4 },
  },
} as const satisfies RecordLayout;

export const RECORDS: readonly RecordLayout[] = [META_RECORD, SEND_RECORD, TCP_EVENT_RECORD];

/** The index of a scalar field in a view of unitBytes-sized elements (asserts it fits). */
export function fieldIndex(field: FieldLayout, unitBytes: 2 | 4 | 8): number {
  if (field.size !== unitBytes || field.offset % unitBytes !== 0) {
    throw new Error(
      `layout: field at ${field.offset} (${field.size} bytes) is no ${unitBytes}-byte unit`,
    );
  }
  return field.offset / unitBytes;
}

/** The u32 index where a 16-byte address starts. */
function addressWord(field: FieldLayout): number {
  if (field.size !== 16 || field.offset % 4 !== 0) {
    throw new Error(`layout: field at ${field.offset} is no 16-byte address`);
  }
  return field.offset / 4;
}

const m = META_RECORD.fields;
export const META_BYTES = META_RECORD.bytes;
export const META_WORDS = META_BYTES / 4;
export const META = {
  sourceAddrWord: addressWord(m.source_addr),
  targetAddrWord: addressWord(m.target_addr),
  sourcePortHalf: fieldIndex(m.source_port, 2),
  targetPortHalf: fieldIndex(m.target_port, 2),
  flagsHalf: fieldIndex(m.flags, 2),
  lengthWord: fieldIndex(m.length, 4),
  lengthWireWord: fieldIndex(m.length_wire, 4),
  sourceScopeWord: fieldIndex(m.source_scope, 4),
  targetScopeWord: fieldIndex(m.target_scope, 4),
  queueDropsWord: fieldIndex(m.queue_drops, 4), // when META_FLAG_HAS_DROPS
} as const;

export const META_FLAG_TRUNCATED = 0x0001;
export const META_FLAG_HAS_ORIGDST = 0x0004;
export const META_FLAG_HAS_DROPS = 0x0008;

const s = SEND_RECORD.fields;
export const SEND_BYTES = SEND_RECORD.bytes;
export const SEND_WORDS = SEND_BYTES / 4;
export const SEND = {
  targetAddrWord: addressWord(s.target_addr),
  sourceAddrWord: addressWord(s.source_addr),
  targetPortHalf: fieldIndex(s.target_port, 2),
  flagsHalf: fieldIndex(s.flags, 2),
  fdWord: fieldIndex(s.fd, 4),
  offsetWord: fieldIndex(s.offset, 4),
  lengthWord: fieldIndex(s.length, 4),
  resultWord: fieldIndex(s.result, 4),
  targetScopeWord: fieldIndex(s.target_scope, 4),
} as const;
export const SEND_FLAG_SOURCE = 0x0001;
/** The entry's fd is connected to its target (rl_udp_connect): sent without a name. */
export const SEND_FLAG_CONNECTED = 0x0002;

/** Tuples rl_layout_describe() may report at most (room for the buffer). */
export const LAYOUT_TUPLES_MAX = 64;

/**
 * Every difference between the layouts the C helper describes (tuples of record, field,
 * offset, size) and `records`, each naming its field; empty when they agree on all.
 */
export function layoutDifferences(
  described: Int32Array,
  records: readonly RecordLayout[] = RECORDS,
): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  for (let t = 0; t + 4 <= described.length; t += 4) {
    const [recordId, fieldId, offset, size] = described.subarray(t, t + 4);
    const record = records.find((r) => r.id === recordId);
    if (record === undefined) {
      problems.push(`record ${recordId} of the C helper is unknown to TypeScript`);
      continue;
    }
    seen.add(`${recordId}.${fieldId}`);
    if (fieldId === 0) {
      if (size !== record.bytes) {
        problems.push(`${record.name}: C has ${size} bytes, TypeScript ${record.bytes}`);
      }
      continue;
    }
    const entry = Object.entries(record.fields).find(([, f]) => f.id === fieldId);
    if (entry === undefined) {
      problems.push(
        `${record.name} field ${fieldId} (offset ${offset}, size ${size}) ` +
          `is unknown to TypeScript`,
      );
      continue;
    }
    const [name, field] = entry;
    if (field.offset !== offset || field.size !== size) {
      problems.push(
        `${record.name}.${name}: C has offset ${offset} size ${size}, ` +
          `TypeScript offset ${field.offset} size ${field.size}`,
      );
    }
  }
  for (const record of records) {
    if (!seen.has(`${record.id}.0`)) problems.push(`${record.name}: not described by C`);
    for (const [name, field] of Object.entries(record.fields)) {
      if (!seen.has(`${record.id}.${field.id}`)) {
        problems.push(`${record.name}.${name}: not described by C`);
      }
    }
  }
  return problems;
}

/** rl_socket() flags. */
export const SOCK = {
  transparent: 0x0001,
  recvOrigDst: 0x0002,
  reuseAddr: 0x0004,
  reusePort: 0x0008,
  freeBind: 0x0010,
  recvErr: 0x0020,
  ipv6: 0x0040,
  v6Only: 0x0080,
  stream: 0x0100,
  rxqOverflow: 0x0200,
} as const;

/** Largest batch per call: RL_BATCH_COUNT_MAX in relay.h. */
export const BATCH_COUNT_MAX = 256;
export const ABI_VERSION = 4;
