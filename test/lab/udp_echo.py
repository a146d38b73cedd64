#!/usr/bin/env python3
"""UDP echo server for the lab: udp_echo.py [--stamp] ADDR:PORT...

Echoes every datagram to its sender. With --stamp the reply starts with the address
the server saw ("198.18.1.1:40123|"), so tests can assert who the server talked to.
Prints {"event": "ready"} once every socket is bound; on SIGTERM prints
{"event": "final", "echoed": N} and exits.

Independent of the relay's own code on purpose (a peer must not share the relay's
bugs). Socket buffers are raised with SO_RCVBUFFORCE (root) so a burst from many
flows is never lost here: the tests assert the relay loses nothing.
"""
import json
import selectors
import signal
import socket
import sys

SO_RCVBUFFORCE = 33  # linux/asm-generic/socket.h
SO_SNDBUFFORCE = 32
BUFFER_BYTES = 8 << 20
DATAGRAM_BYTES_MAX = 65535


def endpoint(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main():
    stamp = "--stamp" in sys.argv
    endpoints = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not endpoints:
        print("usage: udp_echo.py [--stamp] ADDR:PORT...", file=sys.stderr)
        return 2
    selector = selectors.DefaultSelector()
    for text in endpoints:
        host, port = endpoint(text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        for option, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                s.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, fallback, BUFFER_BYTES)
        s.bind((host, port))
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
    echoed = 0

    def final(*_):
        print(json.dumps({"event": "final", "echoed": echoed}), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, final)
    print(json.dumps({"event": "ready", "endpoints": endpoints}), flush=True)
    while True:
        for key, _ in selector.select():
            s = key.fileobj
            # Drain what is waiting, bounded per wake-up so every socket gets its turn.
            for _ in range(1024):
                try:
                    data, source = s.recvfrom(DATAGRAM_BYTES_MAX)
                except BlockingIOError:
                    break
                echoed += 1
                if stamp:
                    who = f"[{source[0]}]:{source[1]}" if s.family == socket.AF_INET6 else f"{source[0]}:{source[1]}"
                    data = who.encode() + b"|" + data
                try:
                    s.sendto(data, source)
                except BlockingIOError:
                    pass  # 8 MiB send buffer full: cannot happen at test rates


if __name__ == "__main__":
    sys.exit(main())
