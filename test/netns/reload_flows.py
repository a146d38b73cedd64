#!/usr/bin/env python3
"""Long-lived flows for test/netns/reload.test.ts, run in the client namespace:

  reload_flows.py SERVER UDP_PORT TCP_PORT

One UDP socket (one session through the relay) and one TCP connection (to a tcp_peers.py
"peer"), both exchanging a message every 100 ms for at most 120 s. After the TCP peer's
greeting, prints {"event": "ready", "udpSource": PORT, "peer": GREETING}; then one line
per round: {"n": N, "udp": the UDP echo's stamp (who the server saw) or null, "tcp":
true when the TCP echo came back intact}. Exits on the first TCP failure (printing it).
"""
import json
import socket
import sys
import time

ROUNDS_MAX = 1200
PERIOD_S = 0.1
TIMEOUT_S = 2


def main():
    server, udp_port, tcp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(TIMEOUT_S)
    udp.connect((server, udp_port))
    tcp = socket.create_connection((server, tcp_port), timeout=TIMEOUT_S)
    reader = tcp.makefile("rb")
    greeting = reader.readline().decode().strip()
    print(json.dumps({"event": "ready", "udpSource": udp.getsockname()[1], "peer": greeting}),
          flush=True)
    for n in range(1, ROUNDS_MAX + 1):
        payload = b"u%d" % n
        udp.send(payload)
        stamp = None
        try:
            # An echo of an earlier round (late) is skipped: only this round's counts.
            for _ in range(4):
                data = udp.recv(2048)
                seen, _, echoed = data.partition(b"|")
                if echoed == payload:
                    stamp = seen.decode()
                    break
        except socket.timeout:
            pass
        line = b"t%d\n" % n
        try:
            tcp.sendall(line)
            tcp_ok = reader.readline() == line
        except OSError as err:
            print(json.dumps({"n": n, "udp": stamp, "tcp": False, "error": str(err)}), flush=True)
            return
        print(json.dumps({"n": n, "udp": stamp, "tcp": tcp_ok}), flush=True)
        if not tcp_ok:
            return
        time.sleep(PERIOD_S)


if __name__ == "__main__":
    main()
