// Ended flows waiting for the flow log (src/control/flow_log.ts): a fixed set of columns
// filled where a UDP session or TCP connection ends, and emptied by the owner's timer,
// which hands them to the writer as one FlowBatch. Nothing here allocates per flow: a
// record is a row of numbers, and its name is a reference to the session's own string.
// When every row is taken the flow is dropped, and the caller counts it (never grows).
//
// Addresses keep the 16-byte form of src/sys/addr.ts (IPv4 v4-mapped), client first:
// the UDP session key's words and the TCP connection's bytes copy in as they are.

import type { Config } from "../config/load.ts";

/** Why there is no reply path (TCP), or which one a UDP session used. */
export const REPLY_NONE = 0;
export const REPLY_PKTINFO = 1;
export const REPLY_SOCKET = 2;

/**
 * Rows of one buffer. The UDP timer (250 ms) ends at most 8192 sessions by expiry
 * (EXPIRE_BUDGET_PER_TICK) plus the evictions of that tick; the TCP timer (100 ms)
 * follows drainEvents' 4096 events per wake-up. Twice the expiry budget covers a
 * mass expiry with room for evictions; ~120 bytes a row, 2 MiB per buffer, allocated
 * only when the flow log is on.
 */
export const FLOW_RECORDS_MAX = 16_384;

/** Bytes of the two addresses of a row: client (16), then original destination (16). */
export const FLOW_ADDR_BYTES = 32;

/** The rows of one hand-over: copies, so the buffer refills at once. Structured-cloneable. */
export interface FlowBatch {
  protocol: "udp" | "tcp";
  count: number;
  /** Listener names by index (the `listener` column indexes it). */
  listeners: string[];
  /** Wall clock (Date.now() scale), ms. */
  startMs: Float64Array;
  endMs: Float64Array;
  /** FLOW_ADDR_BYTES per row. */
  addrs: Uint8Array;
  /** Client port << 16 | original destination port. */
  ports: Uint32Array;
  listener: Int16Array;
  /** TCP: no packet counts (the splice engine counts bytes only): NaN. */
  packetsToTarget: Float64Array;
  bytesToTarget: Float64Array;
  packetsToClient: Float64Array;
  bytesToClient: Float64Array;
  /** UDP: PROTOCOL_* of src/flow/table.ts; TCP: TCP_PARSED_TLS or 0 (src/tcp/layout.ts). */
  parsed: Uint8Array;
  names: Array<string | null>;
  /** UDP: EndReason; TCP: TcpEnd. */
  reason: Uint8Array;
  /** REPLY_*. */
  reply: Uint8Array;
  /** The policy rule that decided the flow (index into ruleNames), or -1: none. */
  rule: Int16Array;
  /** Its action: an outbound index (into outboundNames), or ACTION_DROP / ACTION_REJECT. */
  outbound: Int16Array;
  ruleNames: string[];
  outboundNames: string[];
  /** DNS records: the question's type (0: not a DNS record). */
  qtype: Uint16Array;
  /** DNS records: the answer's response code, or -1 (none: timed out, not DNS). */
  rcode: Int16Array;
  /** DNS records: the resolver that answered, 16 bytes a row (src/sys/addr.ts form). */
  resolverAddrs: Uint8Array;
  /** Its port; 0: no resolver (answered locally, timed out, not DNS). */
  resolverPort: Uint16Array;
}

export class FlowRecords {
  readonly capacity: number;
  readonly startMs: Float64Array;
  readonly endMs: Float64Array;
  readonly addrs: Uint8Array;
  /** The same bytes as `addrs`, 8 words a row (the UDP session key's layout). */
  readonly addrWords: Uint32Array;
  readonly ports: Uint32Array;
  readonly listener: Int16Array;
  readonly packetsToTarget: Float64Array;
  readonly bytesToTarget: Float64Array;
  readonly packetsToClient: Float64Array;
  readonly bytesToClient: Float64Array;
  readonly parsed: Uint8Array;
  readonly names: Array<string | null>;
  readonly reason: Uint8Array;
  readonly reply: Uint8Array;
  readonly rule: Int16Array;
  readonly outbound: Int16Array;
  /** The DNS query log's columns (FlowBatch): set by the forwarder, empty otherwise. */
  readonly qtype: Uint16Array;
  readonly rcode: Int16Array;
  readonly resolverAddrs: Uint8Array;
  /** The same bytes as `resolverAddrs`, 4 words a row (ForwardTargets.words' layout). */
  readonly resolverWords: Uint32Array;
  readonly resolverPort: Uint16Array;
  /** Rows in use (0..capacity). */
  count = 0;

  constructor(
    readonly protocol: "udp" | "tcp",
    private readonly listenerNames: string[],
    capacity = FLOW_RECORDS_MAX,
    /** Rule names by index (config.policy: each rule's name, then "default"). */
    private ruleNames: string[] = [],
    /** Outbound names by index, and the one a row has unless its flow sets another. */
    private outboundNames: string[] = ["direct"],
    private outboundDefault = 0,
  ) {
    this.capacity = capacity;
    this.startMs = new Float64Array(capacity);
    this.endMs = new Float64Array(capacity);
    this.addrs = new Uint8Array(new ArrayBuffer(capacity * FLOW_ADDR_BYTES));
    this.addrWords = new Uint32Array(this.addrs.buffer);
    this.ports = new Uint32Array(capacity);
    this.listener = new Int16Array(capacity);
    this.packetsToTarget = new Float64Array(capacity);
    this.bytesToTarget = new Float64Array(capacity);
    this.packetsToClient = new Float64Array(capacity);
    this.bytesToClient = new Float64Array(capacity);
    this.parsed = new Uint8Array(capacity);
    this.names = new Array<string | null>(capacity).fill(null);
    this.reason = new Uint8Array(capacity);
    this.reply = new Uint8Array(capacity);
    this.rule = new Int16Array(capacity);
    this.outbound = new Int16Array(capacity);
    this.qtype = new Uint16Array(capacity);
    this.rcode = new Int16Array(capacity);
    this.resolverAddrs = new Uint8Array(new ArrayBuffer(capacity * 16));
    this.resolverWords = new Uint32Array(this.resolverAddrs.buffer);
    this.resolverPort = new Uint16Array(capacity);
  }

  get full(): boolean {
    return this.count === this.capacity;
  }

  /**
   * A reload's policy names (flowPolicyNames), for the rows from now on: the caller
   * hands the buffered rows over first (take()), so each batch has its own names.
   */
  setPolicyNames(ruleNames: string[], outboundNames: string[], outboundDefault: number): void {
    this.ruleNames = ruleNames;
    this.outboundNames = outboundNames;
    this.outboundDefault = outboundDefault;
  }

  /** The next free row for the caller to fill, or -1 when full (the caller counts the drop). */
  reserve(): number {
    if (this.count === this.capacity) return -1;
    const r = this.count++;
    this.rule[r] = -1;
    this.outbound[r] = this.outboundDefault;
    this.qtype[r] = 0;
    this.rcode[r] = -1;
    this.resolverPort[r] = 0;
    return r;
  }

  /** Copies the rows out and empties the buffer. Control plane: allocates per batch. */
  take(): FlowBatch {
    const n = this.count;
    const batch: FlowBatch = {
      protocol: this.protocol,
      count: n,
      listeners: this.listenerNames,
      startMs: this.startMs.slice(0, n),
      endMs: this.endMs.slice(0, n),
      addrs: this.addrs.slice(0, n * FLOW_ADDR_BYTES),
      ports: this.ports.slice(0, n),
      listener: this.listener.slice(0, n),
      packetsToTarget: this.packetsToTarget.slice(0, n),
      bytesToTarget: this.bytesToTarget.slice(0, n),
      packetsToClient: this.packetsToClient.slice(0, n),
      bytesToClient: this.bytesToClient.slice(0, n),
      parsed: this.parsed.slice(0, n),
      names: this.names.slice(0, n),
      reason: this.reason.slice(0, n),
      reply: this.reply.slice(0, n),
      rule: this.rule.slice(0, n),
      outbound: this.outbound.slice(0, n),
      ruleNames: this.ruleNames,
      outboundNames: this.outboundNames,
      qtype: this.qtype.slice(0, n),
      rcode: this.rcode.slice(0, n),
      resolverAddrs: this.resolverAddrs.slice(0, n * 16),
      resolverPort: this.resolverPort.slice(0, n),
    };
    // Let the names go with the batch (a buffer of old references would pin them).
    this.names.fill(null, 0, n);
    this.count = 0;
    return batch;
  }
}

/**
 * The names a flow record's rule and outbound indexes stand for, and the outbound of a
 * flow no rule decided (the built-in "direct"): FlowRecords' last constructor arguments.
 */
export function flowPolicyNames(config: Config): [string[], string[], number] {
  const policy = config.policy;
  // dnsAnswer outbound k is row outbound outbounds.length + k (forced DNS records).
  const outboundNames = [...policy.outbounds, ...policy.answers].map((o) => o.name);
  return [
    [...policy.rules.map((r) => r.name), "default"],
    outboundNames,
    Math.max(0, outboundNames.indexOf("direct")),
  ];
}
