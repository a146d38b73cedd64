// SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), as a codec: it
// builds and parses bytes and never touches a socket, so the caller's poller owns all
// I/O and nothing blocks. Replies are parsed incrementally (a TCP read may end anywhere):
// a parse answers "need" with the bytes still missing. A server's failure is a value
// naming its reply code, never an exception: a refusing or broken server is ordinary.
//
// The UDP relay header (RFC 1928 §7: RSV RSV FRAG ATYP DST.ADDR DST.PORT) is written in
// front of a payload already in the caller's buffer, and parsed from a received datagram
// in place, without allocating for IP addresses (the data path does this per datagram).
import { assert } from "../sys/assert.ts";
import { isV4Mapped } from "../sys/addr.ts";

const VERSION = 5;
/** RFC 1929 §2: the username/password subnegotiation has its own version. */
const AUTH_VERSION = 1;

export const METHOD_NONE = 0x00;
export const METHOD_USERNAME = 0x02;
const METHOD_NO_ACCEPTABLE = 0xff;

export const CMD_CONNECT = 0x01;
export const CMD_UDP_ASSOCIATE = 0x03;

export const ATYP_IPV4 = 0x01;
export const ATYP_DOMAIN = 0x03;
export const ATYP_IPV6 = 0x04;

/** RFC 1928 §6 REP values, by code. */
export const REPLY_NAMES = [
  "succeeded",
  "general SOCKS server failure",
  "connection not allowed by ruleset",
  "network unreachable",
  "host unreachable",
  "connection refused",
  "TTL expired",
  "command not supported",
  "address type not supported",
] as const;

/** An address as SOCKS5 carries it: an IP (the 16-byte form) or a domain name. */
export type SocksAddress =
  | { kind: "ip"; addr: Uint8Array; port: number }
  | { kind: "domain"; name: string; port: number };

export type Parsed<T> =
  | { status: "need"; bytes: number }
  | { status: "ok"; value: T; used: number }
  /** replyCode: the server's REP (1-255) when it said no, else -1 (a malformed reply). */
  | { status: "error"; message: string; replyCode: number };

function need<T>(bytes: number): Parsed<T> {
  return { status: "need", bytes };
}
function fail<T>(message: string, replyCode = -1): Parsed<T> {
  return { status: "error", message, replyCode };
}

function versionProblem(version: number): string {
  // An HTTP proxy answers "HTTP/1.1 400": 0x48.
  return `not a SOCKS5 server (version byte 0x${version.toString(16).padStart(2, "0")})`;
}

/** The method selection message (§3): the methods offered, in order of preference. */
export function buildGreeting(methods: readonly number[]): Uint8Array {
  assert(methods.length >= 1 && methods.length <= 255, "1-255 methods");
  return Uint8Array.from([VERSION, methods.length, ...methods]);
}

/** The server's choice of method (§3); an error if it chose none, or one not offered. */
export function parseMethodChoice(input: Uint8Array, offered: readonly number[]): Parsed<number> {
  if (input.length < 2) return need(2 - input.length);
  if (input[0] !== VERSION) return fail(versionProblem(input[0]));
  const method = input[1];
  if (method === METHOD_NO_ACCEPTABLE) {
    return fail("no acceptable authentication method (the server wants credentials?)");
  }
  if (!offered.includes(method)) {
    return fail(`the server chose method 0x${method.toString(16)}, which was not offered`);
  }
  return { status: "ok", value: method, used: 2 };
}

/** RFC 1929 §2 request: VER ULEN UNAME PLEN PASSWD (1-255 bytes each, UTF-8). */
export function buildAuthRequest(username: string, password: string): Uint8Array {
  const user = Buffer.from(username, "utf8");
  const pass = Buffer.from(password, "utf8");
  assert(user.length >= 1 && user.length <= 255, "username must be 1-255 bytes");
  assert(pass.length >= 1 && pass.length <= 255, "password must be 1-255 bytes");
  const out = new Uint8Array(3 + user.length + pass.length);
  out[0] = AUTH_VERSION;
  out[1] = user.length;
  out.set(user, 2);
  out[2 + user.length] = pass.length;
  out.set(pass, 3 + user.length);
  return out;
}

/** RFC 1929 §2 reply: VER STATUS, 0 is success. */
export function parseAuthReply(input: Uint8Array): Parsed<true> {
  if (input.length < 2) return need(2 - input.length);
  // Some servers answer with the SOCKS version (5) instead of the subnegotiation's (1):
  // the status byte means the same, so both are taken.
  if (input[0] !== AUTH_VERSION && input[0] !== VERSION) {
    return fail(`malformed authentication reply (version byte 0x${input[0].toString(16)})`);
  }
  if (input[1] !== 0) return fail(`authentication failed (status 0x${input[1].toString(16)})`);
  return { status: "ok", value: true, used: 2 };
}

/** Bytes DST.ADDR takes with its ATYP and port, for an address. */
function addressBytes(address: SocksAddress): number {
  if (address.kind === "domain") return 1 + 1 + Buffer.byteLength(address.name) + 2;
  return 1 + (isV4Mapped(address.addr) ? 4 : 16) + 2;
}

/** Writes ATYP DST.ADDR DST.PORT at `at`; returns the offset after it. */
function writeAddress(out: Uint8Array, at: number, address: SocksAddress): number {
  if (address.kind === "domain") {
    const name = Buffer.from(address.name, "utf8");
    assert(name.length >= 1 && name.length <= 255, "domain name must be 1-255 bytes");
    out[at++] = ATYP_DOMAIN;
    out[at++] = name.length;
    out.set(name, at);
    at += name.length;
  } else if (isV4Mapped(address.addr)) {
    out[at++] = ATYP_IPV4;
    out.set(address.addr.subarray(12, 16), at);
    at += 4;
  } else {
    out[at++] = ATYP_IPV6;
    out.set(address.addr.subarray(0, 16), at);
    at += 16;
  }
  out[at++] = address.port >>> 8;
  out[at++] = address.port & 0xff;
  return at;
}

/**
 * A request (§4): CONNECT to the target, or UDP ASSOCIATE (then the address is where the
 * client will send from; 0.0.0.0:0 when not known yet, which §7 allows).
 */
export function buildRequest(command: number, address: SocksAddress): Uint8Array {
  assert(command === CMD_CONNECT || command === CMD_UDP_ASSOCIATE, "CONNECT or UDP ASSOCIATE");
  assert(address.port >= 0 && address.port <= 65535, "port must be 0-65535");
  const out = new Uint8Array(3 + addressBytes(address));
  out[0] = VERSION;
  out[1] = command;
  out[2] = 0;
  writeAddress(out, 3, address);
  return out;
}

/**
 * Reads ATYP ADDR PORT at `at`, input[end] being the first byte not there. Returns the
 * bytes used, 0 when more are needed (then `needed` says up to which offset), or -1 for
 * an unknown ATYP.
 */
function readAddress(
  input: Uint8Array,
  at: number,
  end: number,
  out: { addr: Uint8Array; port: number; domain: string | null; needed: number },
): number {
  if (end < at + 1) {
    out.needed = at + 1;
    return 0;
  }
  const atyp = input[at];
  let total: number;
  if (atyp === ATYP_IPV4) total = 1 + 4 + 2;
  else if (atyp === ATYP_IPV6) total = 1 + 16 + 2;
  else if (atyp === ATYP_DOMAIN) {
    if (end < at + 2) {
      out.needed = at + 2;
      return 0;
    }
    total = 1 + 1 + input[at + 1] + 2;
  } else {
    return -1;
  }
  if (end < at + total) {
    out.needed = at + total;
    return 0;
  }
  const addr = out.addr;
  if (atyp === ATYP_IPV4) {
    addr.fill(0, 0, 10);
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12] = input[at + 1];
    addr[13] = input[at + 2];
    addr[14] = input[at + 3];
    addr[15] = input[at + 4];
    out.domain = null;
  } else if (atyp === ATYP_IPV6) {
    for (let i = 0; i < 16; i++) addr[i] = input[at + 1 + i];
    out.domain = null;
  } else {
    // Rare (servers reply with addresses), so the string may allocate.
    out.domain = Buffer.from(input.buffer, input.byteOffset + at + 2, input[at + 1]).toString(
      "latin1",
    );
  }
  out.port = (input[at + total - 2] << 8) | input[at + total - 1];
  return total;
}

/** The reply to a request (§6): the server's bound address, or an error naming REP. */
export function parseReply(input: Uint8Array): Parsed<SocksAddress> {
  if (input.length < 2) return need(2 - input.length);
  if (input[0] !== VERSION) return fail(versionProblem(input[0]));
  // An error is known from REP alone: a server may close right after it.
  const code = input[1];
  if (code !== 0) {
    const name = code < REPLY_NAMES.length ? REPLY_NAMES[code] : "unassigned reply code";
    return fail(`the server replied ${name} (REP 0x${code.toString(16).padStart(2, "0")})`, code);
  }
  const out = { addr: new Uint8Array(16), port: 0, domain: null as string | null, needed: 0 };
  const used = readAddress(input, 3, input.length, out);
  if (used < 0) return fail(`malformed reply: unknown address type 0x${input[3].toString(16)}`);
  if (used === 0) return need(out.needed - input.length);
  const value: SocksAddress =
    out.domain !== null
      ? { kind: "domain", name: out.domain, port: out.port }
      : { kind: "ip", addr: out.addr, port: out.port };
  return { status: "ok", value, used: 3 + used };
}

/** Bytes of the UDP header (§7) for a destination in the 16-byte form at `at`. */
export function udpHeaderBytes(addr: Uint8Array, at: number): number {
  return isV4Mapped(addr, at) ? 10 : 22;
}

/**
 * Writes the UDP request header for destination addr[at..at+16):port so that it ends at
 * `payloadAt`, where the payload already is; returns where the datagram now starts. The
 * caller leaves room (22 bytes covers both families).
 */
export function writeUdpHeader(
  buffer: Uint8Array,
  payloadAt: number,
  addr: Uint8Array,
  at: number,
  port: number,
): number {
  const v4 = isV4Mapped(addr, at);
  const start = payloadAt - (v4 ? 10 : 22);
  assert(start >= 0, "no room for the SOCKS5 UDP header before the payload");
  buffer[start] = 0;
  buffer[start + 1] = 0;
  buffer[start + 2] = 0; // FRAG: never fragmented
  if (v4) {
    buffer[start + 3] = ATYP_IPV4;
    buffer[start + 4] = addr[at + 12];
    buffer[start + 5] = addr[at + 13];
    buffer[start + 6] = addr[at + 14];
    buffer[start + 7] = addr[at + 15];
  } else {
    buffer[start + 3] = ATYP_IPV6;
    for (let i = 0; i < 16; i++) buffer[start + 4 + i] = addr[at + i];
  }
  buffer[payloadAt - 2] = port >>> 8;
  buffer[payloadAt - 1] = port & 0xff;
  return start;
}

/** parseUdpHeader results besides a payload offset. */
export const UDP_FRAGMENTED = -1;
export const UDP_TRUNCATED = -2;
export const UDP_BAD_ADDRESS = -3;

/** Where a relayed datagram came from, filled by parseUdpHeader (one per caller, reused). */
export class UdpSource {
  /** 16-byte form (IPv4 v4-mapped); meaningless when domain is set. */
  readonly addr = new Uint8Array(16);
  port = 0;
  /** Set when the server named the source by domain name (ATYP 3). */
  domain: string | null = null;
  /** For readAddress: bytes wanted in all. */
  needed = 0;
}

/**
 * Parses the UDP header of a datagram from the server (buffer[at..at+length)) into
 * `source`; returns the payload's offset in buffer, or UDP_FRAGMENTED (FRAG != 0: this
 * relay does not reassemble, §7 allows dropping), UDP_TRUNCATED or UDP_BAD_ADDRESS.
 */
export function parseUdpHeader(
  buffer: Uint8Array,
  at: number,
  length: number,
  source: UdpSource,
): number {
  if (length < 4) return UDP_TRUNCATED;
  if (buffer[at + 2] !== 0) return UDP_FRAGMENTED;
  const used = readAddress(buffer, at + 3, at + length, source);
  if (used < 0) return UDP_BAD_ADDRESS;
  if (used === 0) return UDP_TRUNCATED;
  return at + 3 + used;
}

const enum Phase {
  Method = 0,
  Auth = 1,
  Reply = 2,
  Done = 3,
  Failed = 4,
}

const PHASE_NAMES = ["method choice", "authentication reply", "request reply", "done", "failed"];

export interface HandshakeOptions {
  command: number;
  /** CONNECT: the target; UDP ASSOCIATE: where datagrams will come from (or 0.0.0.0:0). */
  address: SocksAddress;
  /** RFC 1929 credentials; without them only "no authentication" is offered. */
  username?: string | null;
  password?: string | null;
}

/**
 * One client handshake over one TCP connection, driven by the caller's events:
 *   output() / written(n)  what to send now, and how much of it the socket took;
 *   received(bytes)        bytes read from the server;
 *   closed()               the server closed (or reset) the connection.
 * After "done", `bound` is the server's address (UDP ASSOCIATE: where to send datagrams)
 * and rest() any bytes read past the reply (CONNECT: the start of the stream).
 */
export class Socks5Handshake {
  private phase = Phase.Method;
  private readonly methods: number[];
  private readonly options: HandshakeOptions;
  private pending: Uint8Array;
  private input = new Uint8Array(0);
  /** The server's address from the reply, once done. */
  bound: SocksAddress | null = null;
  /** Why it failed, once failed. */
  error: string | null = null;
  /** The server's REP when it refused the request, else -1. */
  replyCode = -1;

  constructor(options: HandshakeOptions) {
    this.options = options;
    const credentials = options.username != null && options.password != null;
    this.methods = credentials ? [METHOD_USERNAME, METHOD_NONE] : [METHOD_NONE];
    this.pending = buildGreeting(this.methods);
  }

  get done(): boolean {
    return this.phase === Phase.Done;
  }

  get failed(): boolean {
    return this.phase === Phase.Failed;
  }

  /** Bytes to send now (what the socket has not taken yet); empty when nothing. */
  output(): Uint8Array {
    return this.pending;
  }

  /** The socket took the first n bytes of output(). */
  written(n: number): void {
    assert(n >= 0 && n <= this.pending.length, "written more than was pending");
    this.pending = this.pending.subarray(n);
  }

  /** Bytes from the server. Returns true once the handshake ended (done or failed). */
  received(bytes: Uint8Array): boolean {
    if (this.phase >= Phase.Done) {
      // Past the reply the bytes are the stream's: keep them for rest().
      if (this.phase === Phase.Done) this.append(bytes);
      return true;
    }
    this.append(bytes);
    for (;;) {
      if (this.phase === Phase.Method) {
        const r = parseMethodChoice(this.input, this.methods);
        if (r.status !== "ok") return this.settle(r);
        this.consume(r.used);
        if (r.value === METHOD_USERNAME) {
          this.send(buildAuthRequest(this.options.username!, this.options.password!));
          this.phase = Phase.Auth;
        } else {
          this.sendRequest();
        }
      } else if (this.phase === Phase.Auth) {
        const r = parseAuthReply(this.input);
        if (r.status !== "ok") return this.settle(r);
        this.consume(r.used);
        this.sendRequest();
      } else {
        const r = parseReply(this.input);
        if (r.status !== "ok") return this.settle(r);
        this.consume(r.used);
        this.bound = r.value;
        this.phase = Phase.Done;
        return true;
      }
    }
  }

  /** The server closed the connection: unless done, the handshake failed. */
  closed(): void {
    if (this.phase >= Phase.Done) return;
    const missing = this.input.length > 0 ? "a truncated" : "no";
    this.fail(
      `the server closed the connection during the handshake (${missing} ` +
        `${PHASE_NAMES[this.phase]})`,
      -1,
    );
  }

  /** Bytes received after the reply (they belong to the relayed stream). */
  rest(): Uint8Array {
    return this.phase === Phase.Done ? this.input : new Uint8Array(0);
  }

  private sendRequest(): void {
    this.send(buildRequest(this.options.command, this.options.address));
    this.phase = Phase.Reply;
  }

  /** A parse that did not succeed: wait for more, or fail. Returns whether it ended. */
  private settle(r: Parsed<unknown>): boolean {
    if (r.status === "need") return false;
    if (r.status === "error") this.fail(r.message, r.replyCode);
    return true;
  }

  private fail(message: string, replyCode: number): void {
    this.phase = Phase.Failed;
    this.error = message;
    this.replyCode = replyCode;
    this.pending = new Uint8Array(0);
  }

  private send(bytes: Uint8Array): void {
    const joined = new Uint8Array(this.pending.length + bytes.length);
    joined.set(this.pending);
    joined.set(bytes, this.pending.length);
    this.pending = joined;
  }

  private append(bytes: Uint8Array): void {
    const joined = new Uint8Array(this.input.length + bytes.length);
    joined.set(this.input);
    joined.set(bytes, this.input.length);
    this.input = joined;
  }

  private consume(n: number): void {
    this.input = this.input.subarray(n);
  }
}
