#!/usr/bin/env python3
"""Peers for test/netns/security.test.ts (independent of the relay's code on purpose).

  security_peers.py send HOST PORT COUNT [SOURCE]    COUNT datagrams from one socket
  security_peers.py flood SOURCE SPORT HOST:PORT...  one datagram to each target, one socket
                                                     bound to SOURCE:SPORT (0: any port)
  security_peers.py spread SOURCE HOST PORT FLOWS    one datagram from each of FLOWS sockets
  security_peers.py ask SOURCE HOST PORT FLOWS       one datagram from each of FLOWS sockets,
                                                     then counts the replies (from HOST:PORT?)
  security_peers.py craft6 IFACE MAC SRC DST PORT    one IPv6/UDP frame built by hand
                                                     (AF_PACKET): any destination, even
                                                     one no socket API would send to
  security_peers.py tcpserve HOST:PORT...            answers "saw ADDR" to each connection
  security_peers.py tcpget HOST PORT                 prints what the server said, or the
                                                     error class (ConnectionResetError...)

Every loop is bounded by its arguments; nothing waits longer than 3 s.
"""
import ipaddress
import json
import socket
import struct
import sys


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def endpoint(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def send(host, port, count, source=None):
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    if source:
        s.bind((source, 0))
    for i in range(count):
        s.sendto(b"probe %d" % i, (host, port))
    print(json.dumps({"sent": count}))


def flood(source, source_port, targets):
    s = socket.socket(family_of(source), socket.SOCK_DGRAM)
    s.bind((source, source_port))
    for text in targets:
        s.sendto(b"flood", endpoint(text))
    print(json.dumps({"sent": len(targets)}))


def spread(source, host, port, flows):
    sockets = []
    for _ in range(flows):
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        s.bind((source, 0))
        s.sendto(b"spread", (host, port))
        sockets.append(s)
    print(json.dumps({"sent": flows}))


def ask(source, host, port, flows):
    import selectors
    import time

    selector = selectors.DefaultSelector()
    for i in range(flows):
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        s.bind((source, 0))
        s.setblocking(False)
        s.sendto(b"ask %d" % i, (host, port))
        selector.register(s, selectors.EVENT_READ)
    received = wrong_source = 0
    deadline = time.monotonic() + 3
    while received + wrong_source < flows and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(0, deadline - time.monotonic())):
            _, peer = key.fileobj.recvfrom(2048)
            if peer[0] == host and peer[1] == port:
                received += 1
            else:
                wrong_source += 1
            selector.unregister(key.fileobj)
    print(json.dumps({"received": received, "wrongSource": wrong_source}))


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def craft6(iface, mac, source, target, port):
    src = ipaddress.IPv6Address(source).packed
    dst = ipaddress.IPv6Address(target).packed
    payload = b"crafted"
    length = 8 + len(payload)
    udp = struct.pack("!HHHH", 40000, port, length, 0) + payload
    # RFC 8200 section 8.1: the checksum covers a pseudo-header.
    pseudo = src + dst + struct.pack("!I3xB", length, 17)
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip6 = struct.pack("!IHBB", 6 << 28, length, 17, 64) + src + dst
    with open("/sys/class/net/%s/address" % iface) as f:
        own = bytes.fromhex(f.read().strip().replace(":", ""))
    frame = bytes.fromhex(mac.replace(":", "")) + own + struct.pack("!H", 0x86DD) + ip6 + udp
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    s.send(frame)
    print(json.dumps({"sent": 1}))


def tcpserve(endpoints):
    import selectors

    selector = selectors.DefaultSelector()
    for text in endpoints:
        host, port = endpoint(text)
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(64)
        selector.register(s, selectors.EVENT_READ)
    print(json.dumps({"event": "ready"}), flush=True)
    while True:
        for key, _ in selector.select():
            conn, peer = key.fileobj.accept()
            conn.sendall(("saw %s\n" % peer[0]).encode())
            conn.close()


def tcpget(host, port):
    try:
        s = socket.create_connection((host, port), timeout=3)
        print(s.recv(100).decode().strip() or "closed")
    except OSError as e:
        print(type(e).__name__)


def main():
    a = sys.argv[1:]
    if a[0] == "send":
        send(a[1], int(a[2]), int(a[3]), a[4] if len(a) > 4 else None)
    elif a[0] == "flood":
        flood(a[1], int(a[2]), a[3:])
    elif a[0] == "spread":
        spread(a[1], a[2], int(a[3]), int(a[4]))
    elif a[0] == "ask":
        ask(a[1], a[2], int(a[3]), int(a[4]))
    elif a[0] == "craft6":
        craft6(a[1], a[2], a[3], a[4], int(a[5]))
    elif a[0] == "tcpserve":
        tcpserve(a[1:])
    elif a[0] == "tcpget":
        tcpget(a[1], int(a[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
