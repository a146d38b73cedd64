// One flow log record: what the file holds per ended UDP session or TCP connection, as
// a msgpack array (field names are not repeated per record; docs/observability.md "Flow log" lists
// the positions). Position 0 is the layout's version, so a reader can refuse a record
// it does not know instead of misreading it. Version 2 added the DNS query log's three
// fields at the end (qtype, rcode, resolver); version 1 files are still read (null there).

export const FLOW_RECORD_VERSION = 2;
/** The first layout: 19 fields, no query log fields. */
const FLOW_RECORD_VERSION_1 = 1;
const FLOW_RECORD_FIELDS_1 = 19;

/** Positions in the record array. */
export const FIELD = {
  version: 0,
  startMs: 1,
  endMs: 2,
  protocol: 3,
  client: 4,
  clientPort: 5,
  listener: 6,
  target: 7,
  targetPort: 8,
  packetsToTarget: 9,
  bytesToTarget: 10,
  packetsToClient: 11,
  bytesToClient: 12,
  name: 13,
  parsed: 14,
  rule: 15,
  outbound: 16,
  end: 17,
  reply: 18,
  qtype: 19,
  rcode: 20,
  resolver: 21,
} as const;
export const FLOW_RECORD_FIELDS = 22;

/** msgpack "array 16" (0xdc + 2-byte count): how a record of 16 or more fields starts. */
const MSGPACK_ARRAY16 = 0xdc;

export interface FlowRecord {
  /** Wall clock, ms since the epoch. */
  startMs: number;
  endMs: number;
  protocol: "udp" | "tcp";
  client: string;
  clientPort: number;
  /** The relay listener that took the flow. */
  listener: string;
  /** The original destination. */
  target: string;
  targetPort: number;
  /** null for TCP (the splice engine counts bytes, not segments). */
  packetsToTarget: number | null;
  bytesToTarget: number;
  packetsToClient: number | null;
  bytesToClient: number;
  /** The DNS query name or QUIC SNI, when parsing found one. */
  name: string | null;
  /** The protocol parsing recognised ("dns", "quic"), or null. */
  parsed: string | null;
  /** The policy rule that decided the flow ("default": none matched; null: unknown). */
  rule: string | null;
  /** Where the flow went ("direct": to its original destination). */
  outbound: string;
  /** Why it ended: UDP idle/evicted/closed/local-target; TCP the engine's reason. */
  end: string;
  /** UDP: how replies left (IP_PKTINFO on the listener, or a reply socket); TCP: null. */
  reply: "pktinfo" | "socket" | null;
  /** DNS records (version 2): the question's type number, else null. */
  qtype: number | null;
  /** DNS records (version 2): the answer's response code; null: none (a timeout). */
  rcode: number | null;
  /** DNS records (version 2): the resolver that answered, "address:port", else null. */
  resolver: string | null;
}

/** Whether a payload (possibly only its first bytes) starts like a record of this layout. */
export function looksLikeRecord(payload: Uint8Array): boolean {
  if (payload.length >= 1 && payload[0] !== MSGPACK_ARRAY16) return false;
  if (payload.length >= 2 && payload[1] !== 0) return false;
  if (payload.length < 3) return true;
  // A positive fixint is its own byte.
  if (payload[2] === FLOW_RECORD_FIELDS) return payload.length < 4 || payload[3] === 2;
  if (payload[2] === FLOW_RECORD_FIELDS_1) {
    return payload.length < 4 || payload[3] === FLOW_RECORD_VERSION_1;
  }
  return false;
}

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const isText = (v: unknown): v is string => typeof v === "string";
const isTextOrNull = (v: unknown): v is string | null => v === null || typeof v === "string";
const isCountOrNull = (v: unknown): v is number | null => v === null || isNumber(v);

/**
 * The record an unpacked array holds, or why not (the file is input: validated, never
 * trusted).
 */
export function recordFromArray(value: unknown): FlowRecord | string {
  if (!Array.isArray(value)) return "not an array";
  const version = value[FIELD.version];
  const v2 = value.length === FLOW_RECORD_FIELDS && version === FLOW_RECORD_VERSION;
  const v1 = value.length === FLOW_RECORD_FIELDS_1 && version === FLOW_RECORD_VERSION_1;
  if (!v1 && !v2) {
    return `unknown record layout (version ${JSON.stringify(value[FIELD.version])})`;
  }
  const v = value;
  const protocol = v[FIELD.protocol];
  const reply = v[FIELD.reply];
  const ok =
    isNumber(v[FIELD.startMs]) &&
    isNumber(v[FIELD.endMs]) &&
    (protocol === "udp" || protocol === "tcp") &&
    isText(v[FIELD.client]) &&
    isNumber(v[FIELD.clientPort]) &&
    isText(v[FIELD.listener]) &&
    isText(v[FIELD.target]) &&
    isNumber(v[FIELD.targetPort]) &&
    isCountOrNull(v[FIELD.packetsToTarget]) &&
    isNumber(v[FIELD.bytesToTarget]) &&
    isCountOrNull(v[FIELD.packetsToClient]) &&
    isNumber(v[FIELD.bytesToClient]) &&
    isTextOrNull(v[FIELD.name]) &&
    isTextOrNull(v[FIELD.parsed]) &&
    isTextOrNull(v[FIELD.rule]) &&
    isText(v[FIELD.outbound]) &&
    isText(v[FIELD.end]) &&
    (reply === null || reply === "pktinfo" || reply === "socket") &&
    (v1 || (isCountOrNull(v[FIELD.qtype]) && isCountOrNull(v[FIELD.rcode]))) &&
    (v1 || isTextOrNull(v[FIELD.resolver]));
  if (!ok) return "a field of the wrong type";
  return {
    startMs: v[FIELD.startMs],
    endMs: v[FIELD.endMs],
    protocol,
    client: v[FIELD.client],
    clientPort: v[FIELD.clientPort],
    listener: v[FIELD.listener],
    target: v[FIELD.target],
    targetPort: v[FIELD.targetPort],
    packetsToTarget: v[FIELD.packetsToTarget],
    bytesToTarget: v[FIELD.bytesToTarget],
    packetsToClient: v[FIELD.packetsToClient],
    bytesToClient: v[FIELD.bytesToClient],
    name: v[FIELD.name],
    parsed: v[FIELD.parsed],
    rule: v[FIELD.rule],
    outbound: v[FIELD.outbound],
    end: v[FIELD.end],
    reply,
    qtype: v2 ? v[FIELD.qtype] : null,
    rcode: v2 ? v[FIELD.rcode] : null,
    resolver: v2 ? v[FIELD.resolver] : null,
  };
}

const QTYPE_NAMES: Record<number, string> = {
  1: "A",
  2: "NS",
  5: "CNAME",
  6: "SOA",
  12: "PTR",
  15: "MX",
  16: "TXT",
  28: "AAAA",
  33: "SRV",
  64: "SVCB",
  65: "HTTPS",
  255: "ANY",
};
const RCODE_NAMES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];

/** A DNS type's mnemonic (RFC 1035 and successors), or TYPE<n> (RFC 3597). */
export function qtypeName(qtype: number): string {
  return QTYPE_NAMES[qtype] ?? `TYPE${qtype}`;
}

/** A DNS response code's mnemonic, or RCODE<n>. */
export function rcodeName(rcode: number): string {
  return RCODE_NAMES[rcode] ?? `RCODE${rcode}`;
}
