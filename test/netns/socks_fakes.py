# Broken SOCKS5 servers for test/netns/tcp_policy.test.ts, run in the server namespace:
#   python3 socks_fakes.py PORT:MODE ...
# Each port listens dual-stack on [::]. Modes (after reading the client's greeting):
#   refuse   choose "no authentication", read the request, answer REP 0x05 (refused)
#   close    close the connection without a word
#   garbage  answer an HTTP error, as a web server on the wrong port would
#   silent   answer nothing, ever (the client's connectTimeoutMs ends it)
#   auth     a working proxy that wants username "relay", password "s3cret" (RFC 1929;
#            a wrong one gets status 1 and the connection closed); after a CONNECT it
#            sends "EARLY\n" in the same write as its reply (bytes a server may send
#            before the destination's), then relays both ways
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


def proxy(conn):
    conn.sendall(b"\x05\x02")
    ver, ulen = read_exactly(conn, 2)
    user = read_exactly(conn, ulen).decode()
    plen = read_exactly(conn, 1)[0]
    password = read_exactly(conn, plen).decode()
    if ver != 1 or user != "relay" or password != "s3cret":
        conn.sendall(b"\x01\x01")
        return
    conn.sendall(b"\x01\x00")
    _, cmd, _, atyp = read_exactly(conn, 4)
    raw = read_exactly(conn, 4 if atyp == 1 else 16)
    port = int.from_bytes(read_exactly(conn, 2), "big")
    family = socket.AF_INET if atyp == 1 else socket.AF_INET6
    host = socket.inet_ntop(family, raw)
    upstream = socket.create_connection((host, port), timeout=TIMEOUT_S)
    conn.sendall(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00EARLY\n")

    def pump(src, dst):
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
    back.start()
    pump(conn, upstream)
    back.join(TIMEOUT_S)
    upstream.close()


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
        elif mode == "auth":
            proxy(conn)
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
