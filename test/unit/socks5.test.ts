// The SOCKS5 codec (RFC 1928, RFC 1929): byte layouts as the RFCs draw them, replies in
// pieces, malformed and refusing servers, the UDP header in place, and the handshake
// state machine driven by partial writes and reads.
import { describe, expect, test } from "bun:test";
import {
  ATYP_DOMAIN,
  buildAuthRequest,
  buildGreeting,
  buildRequest,
  CMD_CONNECT,
  CMD_UDP_ASSOCIATE,
  METHOD_NONE,
  METHOD_USERNAME,
  parseAuthReply,
  parseMethodChoice,
  parseReply,
  parseUdpHeader,
  REPLY_NAMES,
  Socks5Handshake,
  type SocksAddress,
  UDP_BAD_ADDRESS,
  UDP_FRAGMENTED,
  UDP_TRUNCATED,
  UdpSource,
  udpHeaderBytes,
  writeUdpHeader,
} from "../../src/egress/socks5.ts";
import { formatAddress, parseAddress } from "../../src/sys/addr.ts";

const bytes = (...values: number[]) => Uint8Array.from(values);
const ip = (text: string, port: number): SocksAddress => ({
  kind: "ip",
  addr: parseAddress(text)!,
  port,
});
const ascii = (text: string) => [...Buffer.from(text, "latin1")];

describe("RFC 1928 and RFC 1929 messages", () => {
  test("greeting: VER NMETHODS METHODS", () => {
    expect(buildGreeting([METHOD_NONE])).toEqual(bytes(5, 1, 0));
    expect(buildGreeting([METHOD_USERNAME, METHOD_NONE])).toEqual(bytes(5, 2, 2, 0));
  });

  test("method choice: VER METHOD", () => {
    expect(parseMethodChoice(bytes(), [0])).toEqual({ status: "need", bytes: 2 });
    expect(parseMethodChoice(bytes(5), [0])).toEqual({ status: "need", bytes: 1 });
    expect(parseMethodChoice(bytes(5, 0), [0])).toEqual({ status: "ok", value: 0, used: 2 });
    expect(parseMethodChoice(bytes(5, 2), [2, 0])).toEqual({ status: "ok", value: 2, used: 2 });
    expect(parseMethodChoice(bytes(5, 0xff), [0])).toMatchObject({
      status: "error",
      message: "no acceptable authentication method (the server wants credentials?)",
    });
    expect(parseMethodChoice(bytes(5, 2), [0])).toMatchObject({
      status: "error",
      message: "the server chose method 0x2, which was not offered",
    });
    expect(parseMethodChoice(bytes(4, 0), [0])).toMatchObject({
      message: "not a SOCKS5 server (version byte 0x04)",
    });
    expect(parseMethodChoice(Uint8Array.from(ascii("HTTP/1.1 400")), [0])).toMatchObject({
      message: "not a SOCKS5 server (version byte 0x48)",
    });
  });

  test("username/password: VER ULEN UNAME PLEN PASSWD, reply VER STATUS", () => {
    expect(buildAuthRequest("user", "pw")).toEqual(
      bytes(1, 4, ...ascii("user"), 2, ...ascii("pw")),
    );
    expect(buildAuthRequest("ü", "x")).toEqual(bytes(1, 2, 0xc3, 0xbc, 1, 0x78));
    expect(() => buildAuthRequest("x".repeat(256), "p")).toThrow("username must be 1-255 bytes");
    expect(parseAuthReply(bytes(1))).toEqual({ status: "need", bytes: 1 });
    expect(parseAuthReply(bytes(1, 0))).toEqual({ status: "ok", value: true, used: 2 });
    expect(parseAuthReply(bytes(5, 0))).toMatchObject({ status: "ok" });
    expect(parseAuthReply(bytes(1, 1))).toMatchObject({
      status: "error",
      message: "authentication failed (status 0x1)",
    });
    expect(parseAuthReply(bytes(0x48, 0x54))).toMatchObject({ status: "error" });
  });

  test("requests: VER CMD RSV ATYP DST.ADDR DST.PORT", () => {
    expect(buildRequest(CMD_CONNECT, ip("198.18.1.2", 7))).toEqual(
      bytes(5, 1, 0, 1, 198, 18, 1, 2, 0, 7),
    );
    expect(buildRequest(CMD_CONNECT, ip("2001:2:0:2::2", 443))).toEqual(
      bytes(5, 1, 0, 4, 0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0xbb),
    );
    expect(buildRequest(CMD_CONNECT, { kind: "domain", name: "example.com", port: 443 })).toEqual(
      bytes(5, 1, 0, 3, 11, ...ascii("example.com"), 1, 0xbb),
    );
    expect(buildRequest(CMD_UDP_ASSOCIATE, ip("0.0.0.0", 0))).toEqual(
      bytes(5, 3, 0, 1, 0, 0, 0, 0, 0, 0),
    );
  });

  test("a success reply arriving one byte at a time: need counts, then the bound address", () => {
    const reply = bytes(5, 0, 0, 1, 198, 18, 1, 2, 0x04, 0x38);
    const needs: number[] = [];
    for (let n = 0; n < reply.length; n++) {
      const r = parseReply(reply.subarray(0, n));
      if (r.status !== "need") throw new Error(`at ${n}: ${JSON.stringify(r)}`);
      needs.push(r.bytes);
    }
    expect(needs).toEqual([2, 1, 2, 1, 6, 5, 4, 3, 2, 1]);
    const r = parseReply(reply);
    if (r.status !== "ok" || r.value.kind !== "ip") throw new Error(JSON.stringify(r));
    expect([formatAddress(r.value.addr), r.value.port, r.used]).toEqual(["198.18.1.2", 1080, 10]);
    // Bytes after the reply are not part of it.
    expect(parseReply(bytes(...reply, 0x41))).toMatchObject({ status: "ok", used: 10 });
  });

  test("success replies with IPv6 and domain-name addresses", () => {
    const v6 = parseReply(
      bytes(5, 0, 0, 4, 0x20, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80),
    );
    if (v6.status !== "ok" || v6.value.kind !== "ip") throw new Error(JSON.stringify(v6));
    expect([formatAddress(v6.value.addr), v6.value.port, v6.used]).toEqual([
      "2001:2:0:2::1",
      80,
      22,
    ]);
    const partial = parseReply(bytes(5, 0, 0, 3, 9, ...ascii("proxy")));
    expect(partial).toEqual({ status: "need", bytes: 6 });
    const name = parseReply(bytes(5, 0, 0, 3, 9, ...ascii("proxy.lab"), 0, 53));
    expect(name).toMatchObject({
      status: "ok",
      value: { kind: "domain", name: "proxy.lab", port: 53 },
      used: 16,
    });
  });

  test("refusals name the server's reply code, from the first two bytes", () => {
    for (let code = 1; code <= 8; code++) {
      const r = parseReply(bytes(5, code));
      const hex = code.toString(16).padStart(2, "0");
      expect(r).toEqual({
        status: "error",
        message: `the server replied ${REPLY_NAMES[code]} (REP 0x${hex})`,
        replyCode: code,
      });
    }
    expect(parseReply(bytes(5, 5, 0, 1, 0, 0, 0, 0, 0, 0))).toMatchObject({
      message: "the server replied connection refused (REP 0x05)",
    });
    expect(parseReply(bytes(5, 0x42))).toMatchObject({
      message: "the server replied unassigned reply code (REP 0x42)",
      replyCode: 0x42,
    });
  });

  test("malformed replies: wrong version, unknown address type, garbage", () => {
    expect(parseReply(bytes(4, 0x5a, 0, 0))).toMatchObject({
      status: "error",
      message: "not a SOCKS5 server (version byte 0x04)",
      replyCode: -1,
    });
    expect(parseReply(bytes(5, 0, 0, 9, 1, 2, 3))).toMatchObject({
      status: "error",
      message: "malformed reply: unknown address type 0x9",
    });
    expect(parseReply(Uint8Array.from(ascii("<html>")))).toMatchObject({ status: "error" });
  });
});

describe("the UDP request header (RFC 1928 §7)", () => {
  test("written in front of the payload, parsed back in place", () => {
    const buffer = new Uint8Array(100);
    const payload = Uint8Array.from(ascii("query"));
    for (const [address, port, headerBytes] of [
      ["198.18.1.2", 53, 10],
      ["2001:2:0:2::2", 443, 22],
    ] as const) {
      buffer.fill(0xee);
      buffer.set(payload, 40);
      const addr = new Uint8Array(32);
      addr.set(parseAddress(address)!, 16);
      expect(udpHeaderBytes(addr, 16)).toBe(headerBytes);
      const start = writeUdpHeader(buffer, 40, addr, 16, port);
      expect(start).toBe(40 - headerBytes);
      expect([...buffer.subarray(start, start + 4)]).toEqual([0, 0, 0, headerBytes === 10 ? 1 : 4]);
      const source = new UdpSource();
      const at = parseUdpHeader(buffer, start, headerBytes + payload.length, source);
      expect(at).toBe(40);
      expect([formatAddress(source.addr), source.port, source.domain]).toEqual([
        address,
        port,
        null,
      ]);
      expect(buffer.subarray(at, at + payload.length)).toEqual(payload);
    }
    expect(() => writeUdpHeader(buffer, 9, parseAddress("198.18.1.2")!, 0, 1)).toThrow(
      "no room for the SOCKS5 UDP header before the payload",
    );
  });

  test("the v4 datagram bytes", () => {
    const buffer = new Uint8Array(12);
    buffer.set([0x61, 0x62], 10);
    writeUdpHeader(buffer, 10, parseAddress("198.18.1.2")!, 0, 7);
    expect(buffer).toEqual(bytes(0, 0, 0, 1, 198, 18, 1, 2, 0, 7, 0x61, 0x62));
  });

  test("fragments, truncation, unknown address types and domain-named sources", () => {
    const source = new UdpSource();
    const fragment = bytes(0, 0, 1, 1, 198, 18, 1, 2, 0, 7, 0x61);
    expect(parseUdpHeader(fragment, 0, fragment.length, source)).toBe(UDP_FRAGMENTED);
    const whole = bytes(0, 0, 0, 1, 198, 18, 1, 2, 0, 7, 0x61);
    for (let n = 0; n < 10; n++) expect(parseUdpHeader(whole, 0, n, source)).toBe(UDP_TRUNCATED);
    expect(parseUdpHeader(whole, 0, 10, source)).toBe(10); // an empty payload
    expect(parseUdpHeader(bytes(0, 0, 0, 7, 1, 2, 3, 4, 0, 0), 0, 10, source)).toBe(
      UDP_BAD_ADDRESS,
    );
    const named = bytes(9, 9, 0, 0, 0, ATYP_DOMAIN, 3, ...ascii("lab"), 0, 53, 0x61);
    expect(parseUdpHeader(named, 2, named.length - 2, source)).toBe(named.length - 1);
    expect([source.domain, source.port]).toEqual(["lab", 53]);
  });
});

/** Drives a handshake against scripted server bytes; returns what the client sent. */
function drive(h: Socks5Handshake, serverChunks: Uint8Array[], writeLimit = 1000): number[] {
  const sent: number[] = [];
  for (const chunk of serverChunks) {
    for (let out = h.output(); out.length > 0; out = h.output()) {
      const n = Math.min(writeLimit, out.length);
      sent.push(...out.subarray(0, n));
      h.written(n);
    }
    h.received(chunk);
  }
  for (let out = h.output(); out.length > 0; out = h.output()) {
    sent.push(...out);
    h.written(out.length);
  }
  return sent;
}

describe("the handshake state machine", () => {
  test("CONNECT, no authentication, one-byte writes, the reply in pieces, stream bytes kept", () => {
    const h = new Socks5Handshake({ command: CMD_CONNECT, address: ip("198.18.1.2", 7) });
    const sent = drive(
      h,
      [bytes(5), bytes(0), bytes(5, 0, 0, 1, 198), bytes(18, 1, 1, 0x9c, 0x40, 0x68, 0x69)],
      1,
    );
    expect(sent).toEqual([5, 1, 0, 5, 1, 0, 1, 198, 18, 1, 2, 0, 7]);
    expect(h.done).toBe(true);
    expect(h.bound).toMatchObject({ kind: "ip", port: 40000 });
    expect([...h.rest()]).toEqual([0x68, 0x69]);
    h.received(bytes(0x6a));
    expect([...h.rest()]).toEqual([0x68, 0x69, 0x6a]);
  });

  test("UDP ASSOCIATE with username/password", () => {
    const h = new Socks5Handshake({
      command: CMD_UDP_ASSOCIATE,
      address: ip("0.0.0.0", 0),
      username: "relay",
      password: "secret",
    });
    const sent = drive(h, [bytes(5, 2), bytes(1, 0), bytes(5, 0, 0, 1, 198, 18, 1, 2, 0x80, 0)]);
    expect(sent).toEqual([
      ...[5, 2, 2, 0],
      ...[1, 5, ...ascii("relay"), 6, ...ascii("secret")],
      ...[5, 3, 0, 1, 0, 0, 0, 0, 0, 0],
    ]);
    expect(h.done).toBe(true);
    if (h.bound?.kind !== "ip") throw new Error("bound");
    expect([formatAddress(h.bound.addr), h.bound.port]).toEqual(["198.18.1.2", 0x8000]);
  });

  test("credentials offered, the server takes no authentication", () => {
    const h = new Socks5Handshake({
      command: CMD_CONNECT,
      address: ip("198.18.1.2", 7),
      username: "u",
      password: "p",
    });
    drive(h, [bytes(5, 0, 5, 0, 0, 1, 1, 2, 3, 4, 0, 1)]);
    expect(h.done).toBe(true);
  });

  test("failures: wrong password, refusal, garbage, a server that closes mid-handshake", () => {
    const auth = { username: "u", password: "wrong" };
    const target = { command: CMD_CONNECT, address: ip("198.18.1.2", 7) };
    const denied = new Socks5Handshake({ ...target, ...auth });
    drive(denied, [bytes(5, 2), bytes(1, 1)]);
    expect([denied.failed, denied.error]).toEqual([true, "authentication failed (status 0x1)"]);
    expect(denied.output().length).toBe(0);

    const refused = new Socks5Handshake(target);
    drive(refused, [bytes(5, 0), bytes(5, 5)]);
    expect([refused.failed, refused.replyCode, refused.error]).toEqual([
      true,
      5,
      "the server replied connection refused (REP 0x05)",
    ]);

    const garbage = new Socks5Handshake(target);
    drive(garbage, [Uint8Array.from(ascii("SSH-2.0-OpenSSH\r\n"))]);
    expect(garbage.error).toBe("not a SOCKS5 server (version byte 0x53)");

    const wantsAuth = new Socks5Handshake(target);
    drive(wantsAuth, [bytes(5, 0xff)]);
    expect(wantsAuth.error).toStartWith("no acceptable authentication method");

    const closedEarly = new Socks5Handshake(target);
    drive(closedEarly, [bytes(5, 0), bytes(5, 0, 0)]);
    expect(closedEarly.done).toBe(false);
    closedEarly.closed();
    expect(closedEarly.error).toBe(
      "the server closed the connection during the handshake (a truncated request reply)",
    );
    const closedAtOnce = new Socks5Handshake(target);
    closedAtOnce.closed();
    expect(closedAtOnce.error).toBe(
      "the server closed the connection during the handshake (no method choice)",
    );
    expect(closedAtOnce.rest().length).toBe(0);
  });
});
