# Broken SOCKS5 servers for test/netns/tcp_policy.test.ts, run in the server namespace:
#   python3 socks_fakes.py PORT:MODE ...
# Each port listens dual-stack on [::]. Modes (after reading the client's greeting):
#   refuse   choose "no authentication", read the request, answer REP 0x05 (refused)
#   close    close the connection without a word
#   garbage  answer an HTTP error, as a web server on the wrong port would
#   silent   answer nothing, ever (the client's connectTimeoutMs ends it)
# Prints {"event": "ready"} once every port listens, and {"port", "event": "greeted"} per
# greeting read.
import json
import socket
import sys
import threading

TIMEOUT_S = 30.0
lock = threading.Lock()


def log(**fields):
    with lock:
        print(json.dumps(fields), flush=True)


def read_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def serve(conn, port, mode):
    try:
        head = read_exactly(conn, 2)
        if len(head) == 2:
            read_exactly(conn, head[1])
        log(port=port, event="greeted")
        if mode == "refuse":
            conn.sendall(b"\x05\x00")
            req = read_exactly(conn, 4)
            rest = {1: 4, 4: 16}.get(req[3] if len(req) == 4 else 1, 4) + 2
            read_exactly(conn, rest)
            conn.sendall(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
        elif mode == "garbage":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        elif mode == "silent":
            conn.recv(1)  # until the client gives up (EOF or reset)
    except OSError:
        pass
    finally:
        conn.close()


def listen(port, mode):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(64)

    def loop():
        while True:
            conn, _ = s.accept()
            conn.settimeout(TIMEOUT_S)
            threading.Thread(target=serve, args=(conn, port, mode), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def main(argv):
    for spec in argv[1:]:
        port, mode = spec.split(":")
        listen(int(port), mode)
    log(event="ready")
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv)
