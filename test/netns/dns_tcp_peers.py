"""DNS over TCP peers for test/netns/dns_tcp.test.ts. Every mode prints JSON lines.

  resolver ADDR...        a fake resolver on ADDR:53, UDP and TCP: over UDP it answers
                          every query with TC=1 and no answer (too big for UDP), over TCP
                          with the full answer (A 198.18.1.99 / AAAA 2001:2:0:2::99),
                          several messages per connection. Prints {"event": "ready"}.
  pipeline HOST NAME...   one TCP connection to HOST:53, every query (type A) sent back to
                          back in one write, then reads as many answers; prints
                          {"answers": [{"id", "name", "rcode", "addresses"}...]}.
  stall HOST              sends a 2-byte length prefix and nothing more; reports how the
                          connection ended ({"ended": "closed"|"reset"|"open"}) within 30 s.
  malformed HOST [KIND]   sends a length-prefixed message that is no query (KIND: short,
                          5 bytes of garbage; answer, QR set; noquestion, QDCOUNT 0;
                          badname, a label length of 64); reports what came back before
                          the connection ended.
  unread HOST NAME COUNT  pipelines COUNT queries for NAME (64 a write), never reads the
                          answers; reports how the connection ended (the relay gives up).
"""
import json
import random
import select
import socket
import struct
import sys
import threading
import time


def out(obj):
    print(json.dumps(obj), flush=True)


def qname_end(msg, offset):
    while msg[offset] != 0:
        offset += 1 + msg[offset]
    return offset + 1


def read_name(msg, offset):
    labels = []
    while msg[offset] != 0:
        length = msg[offset]
        labels.append(msg[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    return ".".join(labels)


def query(name, qid, qtype=1):
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", qtype, 1)


def answer(msg, truncated):
    qid, flags = struct.unpack("!HH", msg[:4])
    end = qname_end(msg, 12) + 4
    question = msg[12:end]
    qtype = struct.unpack("!H", msg[end - 4 : end - 2])[0]
    rdata = None
    if qtype == 1:
        rdata = socket.inet_pton(socket.AF_INET, "198.18.1.99")
    elif qtype == 28:
        rdata = socket.inet_pton(socket.AF_INET6, "2001:2:0:2::99")
    out_flags = 0x8180 | (flags & 0x0100)
    count = 0 if truncated or rdata is None else 1
    if truncated:
        out_flags |= 0x0200
    reply = struct.pack("!HHHHHH", qid, out_flags, 1, count, 0, 0) + question
    if count:
        reply += struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata
    return reply


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_tcp_conn(conn):
    with conn:
        conn.settimeout(10)
        try:
            while True:
                head = recv_exact(conn, 2)
                if head is None:
                    return
                msg = recv_exact(conn, struct.unpack("!H", head)[0])
                if msg is None:
                    return
                reply = answer(msg, truncated=False)
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def resolver(addresses):
    socks = []
    for addr in addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.bind((addr, 53))
        t = socket.socket(family, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, 53))
        t.listen(64)
        socks += [u, t]
    out({"event": "ready"})
    while True:
        readable, _, _ = select.select(socks, [], [])
        for s in readable:
            if s.type == socket.SOCK_DGRAM:
                msg, peer = s.recvfrom(4096)
                try:
                    s.sendto(answer(msg, truncated=True), peer)
                except (IndexError, struct.error):
                    pass
            else:
                conn, _ = s.accept()
                threading.Thread(target=serve_tcp_conn, args=(conn,), daemon=True).start()


def connect(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((host, 53))
    return s


def parse_answer(msg):
    qid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    name = read_name(msg, 12)
    offset = qname_end(msg, 12) + 4
    addresses = []
    for _ in range(an):
        offset = offset + 2 if msg[offset] & 0xC0 == 0xC0 else qname_end(msg, offset)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[offset : offset + 10])
        rdata = msg[offset + 10 : offset + 10 + rdlen]
        if rtype == 1:
            addresses.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            addresses.append(socket.inet_ntop(socket.AF_INET6, rdata))
        offset += 10 + rdlen
    return {"id": qid, "name": name, "rcode": flags & 0x0F, "addresses": addresses}


def pipeline(host, names):
    s = connect(host)
    ids = random.sample(range(1, 65535), len(names))
    wire = b""
    for name, qid in zip(names, ids):
        q = query(name, qid)
        wire += struct.pack("!H", len(q)) + q
    s.sendall(wire)
    answers = []
    for _ in names:
        head = recv_exact(s, 2)
        if head is None:
            break
        answers.append(parse_answer(recv_exact(s, struct.unpack("!H", head)[0])))
    s.close()
    out({"sent": [{"id": i, "name": n} for i, n in zip(ids, names)], "answers": answers})


def wait_end(s, seconds):
    """How the connection ended within `seconds`, and the bytes received before."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            break
        except ConnectionResetError:
            return "reset", received
        if not chunk:
            return "closed", received
        received += chunk
    return "open", received


def stall(host):
    s = connect(host)
    s.sendall(b"\x00\x40")
    started = time.monotonic()
    ended, received = wait_end(s, 30)
    out({"ended": ended, "received": len(received), "ms": (time.monotonic() - started) * 1000})


def malformed(host, kind):
    s = connect(host)
    q = bytearray(query("bad.relay.test", 4242))
    if kind == "short":
        garbage = bytes([0xFF] * 5)
    elif kind == "answer":
        q[2] |= 0x80
        garbage = bytes(q)
    elif kind == "noquestion":
        q[5] = 0
        garbage = bytes(q)
    elif kind == "badname":
        q[12] = 64
        garbage = bytes(q)
    else:
        sys.exit(f"unknown malformed kind {kind}")
    s.sendall(struct.pack("!H", len(garbage)) + garbage)
    ended, received = wait_end(s, 30)
    out({"ended": ended, "received": len(received)})


def unread(host, name, count):
    s = connect(host)
    # The default receive buffer: a tiny one makes the kernel drop the relay's ACKs while
    # this socket is busy sending (its backlog is bounded by its buffers), a stall of its
    # own making.
    q = query(name, 1)
    # 64 queries a write: full segments (a stream of tiny ones stalls in the kernel on
    # its own, their buffer overhead filling the receive memory).
    wire = (struct.pack("!H", len(q)) + q) * 64
    s.setblocking(False)
    sent = 0
    pending = b""
    deadline = time.monotonic() + 30
    ended = "open"
    while time.monotonic() < deadline:
        if not pending and sent < count:
            pending = wire
            sent += 64
        if pending:
            try:
                pending = pending[s.send(pending) :]
                continue
            except BlockingIOError:
                pass
            except (ConnectionResetError, BrokenPipeError):
                ended = "reset"
                break
        # Never read: the relay's reset shows as the socket's pending error.
        select.select([], [], [], 0.05)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            ended = "reset"
            break
    out({"ended": ended, "sent": sent})


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "resolver":
        resolver(args)
    elif mode == "pipeline":
        pipeline(args[0], args[1:])
    elif mode == "stall":
        stall(args[0])
    elif mode == "malformed":
        malformed(args[0], args[1] if len(args) > 1 else "short")
    elif mode == "unread":
        unread(args[0], args[1], int(args[2]))
    else:
        sys.exit(f"unknown mode {mode}")
