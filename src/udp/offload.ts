// UDP segmentation offload (docs/udp_gso.md). GSO: rl_send_batch folds each run of
// equal-size datagrams of one flow on one socket into one UDP_SEGMENT message (the kernel
// cuts it back into the same datagrams, in order), a switch of the data-path thread.
// GRO: UDP_GRO on upstream sockets, where the servers' bulk replies arrive; the kernel may
// then hand over up to 64 datagrams of one size as one buffer, which rl_recv_batch_gro
// receives into a span of slots and splits, so sessions, parsers and counters still see
// datagrams. The C side counts per thread; values() folds the counts in.
import type { Pointer, RelayLib } from "../sys/ffi.ts";
import { ptr } from "../sys/ffi.ts";
import type { UdpCounters } from "../metrics.ts";
import { groSpanSlots } from "./gro_span.ts";

/** rl_udp_offload_probe() bits. */
const PROBE_GSO = 1;
const PROBE_GRO = 2;
export interface UdpOffload {
  /** GSO runs in this thread's rl_send_batch. */
  readonly gso: boolean;
  /** Slots a GRO receive needs (0: GRO off). */
  readonly groSpanSlots: number;
  /** Why a configured offload is off (the kernel lacks it), for the log; else null. */
  readonly note: string | null;
}

/**
 * Probes the kernel and switches GSO for the calling thread (the data path's: the switch
 * and counters are thread-local in C). Configured offloads the kernel lacks are off.
 */
export function setUpOffload(
  lib: RelayLib,
  udp: { gso: boolean; gro: boolean },
  slotBytes: number,
): UdpOffload {
  const probe = lib.rl_udp_offload_probe();
  const found = Math.max(probe, 0); // -errno: no socket to probe with, so neither
  const gso = udp.gso && (found & PROBE_GSO) !== 0;
  const gro = udp.gro && (found & PROBE_GRO) !== 0;
  lib.rl_udp_gso_enable(gso ? 1 : 0);
  const missing = [
    udp.gso && !gso ? "UDP_SEGMENT (udp.gso)" : "",
    udp.gro && !gro ? "UDP_GRO (udp.gro)" : "",
  ].filter((m) => m !== "");
  return {
    gso,
    groSpanSlots: gro ? groSpanSlots(slotBytes) : 0,
    note: missing.length === 0 ? null : `the kernel refuses ${missing.join(" and ")}: off`,
  };
}

/** Reads the C side's counts since the last read into the counters. */
export class OffloadCounters {
  private readonly out = new Float64Array(new ArrayBuffer(5 * 8));
  private readonly outPtr: Pointer = ptr(this.out);

  constructor(private readonly lib: RelayLib) {}

  fold(c: UdpCounters): void {
    const out = this.out;
    this.lib.rl_udp_offload_stats(this.outPtr);
    c.gsoMessages += out[0] ?? 0;
    c.gsoDatagrams += out[1] ?? 0;
    c.gsoFallbacks += out[2] ?? 0;
    c.groBuffers += out[3] ?? 0;
    c.groDatagrams += out[4] ?? 0;
  }
}
