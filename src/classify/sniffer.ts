// The sniffer: parses a flow's first datagrams in place (in the WASM packet area, where
// recvmmsg wrote them) as the protocol its destination port promises, and records what
// it found on the session: the DNS query name, the QUIC ClientHello's SNI. Runs only
// for the first datagrams of a flow (the session's sniffLeft budget), never after.
import type { Config } from "../config/load.ts";
import { PROTOCOL_DNS, PROTOCOL_QUIC, PROTOCOL_UNKNOWN, type SessionTable } from "../flow/table.ts";
import type { UdpCounters } from "../metrics.ts";
import { DnsParser } from "./dns.ts";
import { Code } from "./layout.ts";
import { QuicParser } from "./quic.ts";
import type { Parsers } from "./wasm.ts";

export class Sniffer {
  private readonly dns: DnsParser;
  private readonly quic: QuicParser;
  /** Per destination port: PROTOCOL_DNS / PROTOCOL_QUIC when its first datagrams are parsed. */
  private readonly byPort = new Uint8Array(65536);
  private quicPacketsMax = 0;

  constructor(
    parsers: Parsers,
    config: Config,
    private readonly counters: UdpCounters,
  ) {
    this.dns = new DnsParser(parsers);
    this.quic = new QuicParser(parsers);
    this.configure(config);
  }

  /**
   * Which ports are parsed, and how many datagrams. Also on a reload: it decides for new
   * flows only (a flow's protocol and budget were set when it began).
   */
  configure(config: Config): void {
    this.byPort.fill(PROTOCOL_UNKNOWN);
    for (const port of config.udp.quicPorts) this.byPort[port] = PROTOCOL_QUIC;
    for (const port of config.udp.dnsPorts) this.byPort[port] = PROTOCOL_DNS;
    // A post-quantum ClientHello (Chrome) spans 2 or more Initial packets.
    this.quicPacketsMax = config.udp.sniffPacketsMax;
  }

  /** Whether flows to destination `port` are sniffed (their name may become known). */
  parses(port: number): boolean {
    return this.byPort[port] !== PROTOCOL_UNKNOWN;
  }

  /** Marks a new session of destination `port` for sniffing (protocol, datagram budget). */
  begin(sessions: SessionTable, s: number, port: number): void {
    const protocol = this.byPort[port];
    if (protocol === PROTOCOL_UNKNOWN) return;
    sessions.protocol[s] = protocol;
    sessions.sniffLeft[s] = protocol === PROTOCOL_DNS ? 1 : this.quicPacketsMax;
  }

  /**
   * Parses the datagram at `offset` (in WASM memory), `length` bytes, for session s,
   * whose sniffLeft is not 0, and records the name.
   */
  sniff(sessions: SessionTable, s: number, offset: number, length: number): void {
    const c = this.counters;
    sessions.sniffLeft[s]--;
    if (sessions.protocol[s] === PROTOCOL_DNS) {
      const r = this.dns.parse(offset, length);
      if (r.code === Code.ok && r.qr === 0) {
        sessions.name[s] = r.name();
        c.sniffedDns++;
      } else {
        sessions.protocol[s] = PROTOCOL_UNKNOWN;
        c.sniffMalformed++;
      }
      return;
    }
    const r = this.quic.parseInitial(offset, length);
    if (r.code === Code.ok) {
      sessions.name[s] = r.sni();
      sessions.sniffLeft[s] = 0;
      c.sniffedQuic++;
    } else if (r.code === Code.short) {
      // More Initials of this connection to come (a hello over several packets).
      if (sessions.sniffLeft[s] === 0) c.sniffIncomplete++;
    } else {
      sessions.protocol[s] = PROTOCOL_UNKNOWN;
      sessions.sniffLeft[s] = 0;
      c.sniffMalformed++;
    }
  }
}
