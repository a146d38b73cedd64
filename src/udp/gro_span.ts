// The slots one UDP GRO receive takes (ffi/udp_gso.c rl_gro_span_slots), apart from the
// FFI so that config checks can use it: a coalesced buffer holds up to 64 datagrams
// (include/linux/udp.h UDP_GRO_CNT_MAX) and up to one IP datagram's 64 KiB, and is split
// in place into one slot per datagram, so its span needs both.
const GRO_DATAGRAMS_MAX = 64;
const GRO_BUFFER_BYTES = 65_535;

/** Slots one GRO receive buffer takes: a round needs this many free to read with GRO. */
export function groSpanSlots(slotBytes: number): number {
  return Math.max(GRO_DATAGRAMS_MAX, Math.ceil(GRO_BUFFER_BYTES / slotBytes));
}
