# TCP peers for test/netns/tcp_relay.test.ts, run in the server namespace:
#   python3 tcp_peers.py PORT:BEHAVIOUR ...
# Each port listens dual-stack on [::]. Behaviours:
#   peer      send "PEER <ip> <port> <local ip>\n" (who the server sees, and which of
#             its addresses the connection reached), echo until the client's
#             FIN, then "BYE <bytes received>\n" and close (client half-close works)
#   reset     read one line, then close with SO_LINGER 0 (RST to the client)
#   halfclose send "HELLO\n", shutdown(SHUT_WR), count bytes until the client's FIN,
#             then log {"received": n}
#   slow      read nothing for 1.5 s, then read to EOF; answer "DONE <n> <sha256>\n"
#   firehose  send 64 KiB chunks (at most 256 MiB) until an error; log how it ended
#   late      read one line, then a second one (the client sends it once the relay is
#             shutting down), send "LATE\n", close
# Events go to stdout as JSON lines: {"port", "event", ...}; {"event": "ready"} once every
# port listens.
import hashlib
import json
import socket
import sys
import threading
import time

FIREHOSE_BYTES_MAX = 256 << 20
lock = threading.Lock()


def log(**fields):
    with lock:
        print(json.dumps(fields), flush=True)


def peer_text(addr):
    ip = addr[0]
    if ip.startswith("::ffff:"):
        ip = ip[7:]
    return ip, addr[1]


def read_line(conn):
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def serve(conn, addr, port, behaviour):
    ip, cport = peer_text(addr)
    try:
        if behaviour == "peer":
            local, _ = peer_text(conn.getsockname())
            conn.sendall(f"PEER {ip} {cport} {local}\n".encode())
            total = 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                total += len(chunk)
                conn.sendall(chunk)
            conn.sendall(f"BYE {total}\n".encode())
            log(port=port, event="peer", peer=ip, received=total)
        elif behaviour == "reset":
            read_line(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif behaviour == "halfclose":
            conn.sendall(b"HELLO\n")
            conn.shutdown(socket.SHUT_WR)
            total = 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                total += len(chunk)
            log(port=port, event="halfclose", peer=ip, received=total)
        elif behaviour == "slow":
            time.sleep(1.5)
            digest = hashlib.sha256()
            total = 0
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                digest.update(chunk)
            conn.sendall(f"DONE {total} {digest.hexdigest()}\n".encode())
        elif behaviour == "firehose":
            chunk = b"x" * 65536
            sent = 0
            error = None
            try:
                while sent < FIREHOSE_BYTES_MAX:
                    conn.sendall(chunk)
                    sent += len(chunk)
            except OSError as err:
                error = type(err).__name__
            log(port=port, event="firehose", peer=ip, sent=sent, error=error)
        elif behaviour == "late":
            read_line(conn)
            read_line(conn)
            conn.sendall(b"LATE\n")
    except OSError as err:
        log(port=port, event="error", behaviour=behaviour, error=type(err).__name__)
    finally:
        conn.close()


def listen(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(128)
    return s


def accept_loop(s, port, behaviour):
    while True:
        conn, addr = s.accept()
        threading.Thread(target=serve, args=(conn, addr, port, behaviour), daemon=True).start()


# Every port listens before "ready" is printed: the test waits for that line.
listeners = []
for spec in sys.argv[1:]:
    port_text, behaviour = spec.split(":")
    listeners.append((listen(int(port_text)), int(port_text), behaviour))
for s, port, behaviour in listeners:
    threading.Thread(target=accept_loop, args=(s, port, behaviour), daemon=True).start()
log(event="ready")
while True:
    time.sleep(3600)
