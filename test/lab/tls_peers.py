#!/usr/bin/env python3
"""TLS peers for the lab (test/netns/tcp_sniff.test.ts, and policy tests by name).

  tls_peers.py serve ADDR PORT CERT KEY   HTTPS: GET / answers "sni=<name the client sent>"
      (header X-Served-By: the server's own address)
  tls_peers.py echo ADDR PORT             plain TCP: echoes until the client's FIN
  tls_peers.py hello NAME ADDR PORT [--split N] [--pause]
      connects, sends a real TLS 1.3 ClientHello for NAME (made by Python's ssl module)
      in two writes (the first N bytes, then the rest), or with --pause the first N bytes,
      "part-sent" on stdout, and the rest after a line on stdin; then FIN, reads the echo,
      and prints {"sent": bytes, "echoed": bytes, "equal": bool} as JSON.
  tls_peers.py raw ADDR PORT TEXT         sends TEXT, FIN, prints the same JSON.

ADDR may be IPv4 or IPv6. Every socket operation has a timeout: a test never hangs here.
"""
import http.server
import json
import socket
import socketserver
import ssl
import sys
import threading
import time

TIMEOUT_S = 10


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def client_hello(name):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def exchange(addr, port, parts, pause):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    s.connect((addr, port))
    sent = b""
    for i, part in enumerate(parts):
        if i > 0 and pause:
            print("part-sent", flush=True)
            sys.stdin.readline()
        elif i > 0:
            time.sleep(0.05)  # a second segment, not a second write into the same one
        s.sendall(part)
        sent += part
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    print(json.dumps({"sent": len(sent), "echoed": len(got), "equal": got == sent}), flush=True)


class Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve_tls(addr, port, cert, key):
    names = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"sni={names.get(id(self.connection), '-')}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            # Which server answered (a forward outbound picks among several).
            self.send_header("X-Served-By", self.connection.getsockname()[0])
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, _ctx: names.__setitem__(id(sock), name)

    class Server(Threaded):
        address_family = family(addr)

        def get_request(self):
            conn, peer = self.socket.accept()
            conn.settimeout(TIMEOUT_S)
            return ctx.wrap_socket(conn, server_side=True), peer

    with Server((addr, port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


def serve_echo(addr, port):
    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(TIMEOUT_S)
            while True:
                chunk = self.request.recv(65536)
                if not chunk:
                    break
                self.request.sendall(chunk)

    class Server(Threaded):
        address_family = family(addr)

    with Server((addr, port), Echo) as server:
        print("ready", flush=True)
        server.serve_forever()


def main(argv):
    mode = argv[1]
    if mode == "serve":
        serve_tls(argv[2], int(argv[3]), argv[4], argv[5])
    elif mode == "echo":
        serve_echo(argv[2], int(argv[3]))
    elif mode == "hello":
        name, addr, port = argv[2], argv[3], int(argv[4])
        hello = client_hello(name)
        split = int(argv[argv.index("--split") + 1]) if "--split" in argv else len(hello)
        parts = [hello[:split], hello[split:]] if split < len(hello) else [hello]
        exchange(addr, port, parts, "--pause" in argv)
    elif mode == "raw":
        exchange(argv[2], int(argv[3]), [argv[4].encode()], False)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
