// A SOCKS5 client over real sockets built on the relay's codec (src/egress/socks5.ts): the
// codec's handshake driven by node:net events, and UDP datagrams framed by its header
// functions. For the lab's tests against Dante and in-test servers; the relay's own data
// path will drive the same codec from its poller.
import { connect, type Socket } from "node:net";
import {
  CMD_CONNECT,
  CMD_UDP_ASSOCIATE,
  parseUdpHeader,
  Socks5Handshake,
  type SocksAddress,
  UdpSource,
  writeUdpHeader,
} from "../../src/egress/socks5.ts";
import { formatAddress, isV4Mapped, parseAddress } from "../../src/sys/addr.ts";

export interface Endpoint {
  host: string;
  port: number;
}

/** "198.18.1.2:1080" or "[2001:2::1]:1080". */
export function endpoint(text: string): Endpoint {
  const colon = text.lastIndexOf(":");
  return {
    host: text.slice(0, colon).replace(/^\[|\]$/g, ""),
    port: Number(text.slice(colon + 1)),
  };
}

/** An IP endpoint as a SOCKS address. */
export function ipAddress(host: string, port: number): SocksAddress {
  const addr = parseAddress(host);
  if (!addr) throw new Error(`not an address: ${host}`);
  return { kind: "ip", addr, port };
}

export interface Handshaken {
  socket: Socket;
  handshake: Socks5Handshake;
}

/**
 * Connects to the server and runs one handshake; resolves once the server accepted the
 * request, rejects with the codec's error (a refusal names its REP) or on timeout.
 */
export function handshake(
  server: Endpoint,
  command: number,
  address: SocksAddress,
  credentials: { username: string; password: string } | null = null,
  timeoutMs = 5000,
): Promise<Handshaken> {
  return new Promise((resolve, reject) => {
    const h = new Socks5Handshake({ command, address, ...credentials });
    const socket = connect({ host: server.host, port: server.port });
    const timer = setTimeout(
      () => finish(new Error(`handshake timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    let settled = false;
    const finish = (error: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeAllListeners("data");
      if (error) {
        socket.destroy();
        reject(error);
      } else {
        resolve({ socket, handshake: h });
      }
    };
    // node:net buffers what the kernel does not take at once: written() gets it all.
    const flush = () => {
      const out = h.output();
      if (out.length > 0) {
        socket.write(out);
        h.written(out.length);
      }
    };
    socket.on("connect", flush);
    socket.on("data", (chunk: Buffer) => {
      h.received(chunk);
      if (h.failed) finish(new Error(h.error ?? "handshake failed"));
      else if (h.done) finish(null);
      else flush();
    });
    socket.on("error", (err) => finish(err));
    socket.on("close", () => {
      h.closed();
      finish(new Error(h.error ?? "closed"));
    });
  });
}

/**
 * CONNECT through the server, send `lines`, half-close, and return everything the target
 * sent until it closed (bytes that came with the reply included).
 */
export async function connectRoundTrip(
  server: Endpoint,
  target: SocksAddress,
  lines: string[],
  credentials: { username: string; password: string } | null = null,
  timeoutMs = 5000,
): Promise<{ bound: string; received: string }> {
  const { socket, handshake: h } = await handshake(server, CMD_CONNECT, target, credentials);
  const chunks: Buffer[] = [Buffer.from(h.rest())];
  const received = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no end of stream within ${timeoutMs} ms: ${Buffer.concat(chunks)}`));
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString("utf8"));
    });
    socket.end(lines.join(""));
  });
  return { bound: addressText(h.bound!), received };
}

function addressText(a: SocksAddress): string {
  if (a.kind === "domain") return `${a.name}:${a.port}`;
  const text = formatAddress(a.addr);
  return isV4Mapped(a.addr) ? `${text}:${a.port}` : `[${text}]:${a.port}`;
}

export interface UdpReply {
  /** Where the server says the datagram came from. */
  source: string;
  payload: string;
}

/**
 * UDP ASSOCIATE, then one datagram per payload to `target` through the relay address the
 * server gave, each answered within timeoutMs; the control connection is closed at the
 * end. The association's bound address is returned with the replies.
 */
export async function associateRoundTrip(
  server: Endpoint,
  target: Endpoint,
  payloads: string[],
  timeoutMs = 5000,
): Promise<{ bound: string; replies: UdpReply[] }> {
  const v6 = !isV4Mapped(parseAddress(server.host)!);
  const { socket: control, handshake: h } = await handshake(
    server,
    CMD_UDP_ASSOCIATE,
    ipAddress(v6 ? "::" : "0.0.0.0", 0),
  );
  try {
    const bound = h.bound!;
    if (bound.kind !== "ip") throw new Error("a domain name as the UDP relay address");
    // RFC 1928 §6: an unspecified BND.ADDR means "the address you reached me on".
    const unspecified = bound.addr.every((b, i) => b === 0 || (i >= 10 && i < 12 && b === 0xff));
    const relayHost = unspecified ? server.host : formatAddress(bound.addr);
    const targetAddr = parseAddress(target.host)!;
    const replies: UdpReply[] = [];
    let wake: (() => void) | null = null;
    const udp = await Bun.udpSocket({
      hostname: v6 ? "::" : "0.0.0.0",
      socket: {
        data(_s, data) {
          const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
          const source = new UdpSource();
          const at = parseUdpHeader(bytes, 0, bytes.length, source);
          if (at < 0) throw new Error(`bad SOCKS5 UDP header (${at})`);
          const from = source.domain ?? formatAddress(source.addr);
          replies.push({
            source: `${from}:${source.port}`,
            payload: Buffer.from(bytes.subarray(at)).toString("utf8"),
          });
          wake?.();
        },
      },
    });
    try {
      for (const [i, payload] of payloads.entries()) {
        const body = Buffer.from(payload);
        const datagram = new Uint8Array(22 + body.length);
        datagram.set(body, 22);
        const start = writeUdpHeader(datagram, 22, targetAddr, 0, target.port);
        udp.send(datagram.subarray(start), bound.port, relayHost);
        await new Promise<void>((resolve, reject) => {
          if (replies.length > i) return resolve();
          const timer = setTimeout(
            () => reject(new Error(`no UDP reply ${i} within ${timeoutMs} ms`)),
            timeoutMs,
          );
          wake = () => {
            if (replies.length > i) {
              clearTimeout(timer);
              resolve();
            }
          };
        });
      }
    } finally {
      udp.close();
    }
    return { bound: addressText(bound), replies };
  } finally {
    control.destroy();
  }
}
