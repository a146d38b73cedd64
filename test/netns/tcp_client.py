# TCP client cases for test/netns/tcp_relay.test.ts, run in the client namespace:
#   python3 tcp_client.py CASE HOST PORT [ARG]
# Prints one JSON line with what the client saw. Every wait is bounded by a timeout.
import hashlib
import json
import os
import select
import socket
import sys
import time

TIMEOUT_S = 10.0


def connect(host, port, timeout=TIMEOUT_S):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def read_line(s):
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def read_all(s, limit=1 << 30):
    parts = []
    total = 0
    while total < limit:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def error_name(fn):
    try:
        fn()
        return None
    except OSError as err:
        return type(err).__name__


def case_peer(host, port, arg):
    """Echo through a half-close: the client's FIN must come after all its bytes."""
    size = int(arg or 100_000)
    payload = os.urandom(size)
    s = connect(host, port)
    peer = read_line(s).split()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    rest = read_all(s)
    s.close()
    echoed = rest[:size]
    bye = rest[size:].decode().strip()
    return {"peer": peer[1] if len(peer) > 1 else None, "local": peer[3] if len(peer) > 3 else None,
            "echoOk": echoed == payload, "bye": bye}


def case_reset(host, port, arg):
    s = connect(host, port)
    s.sendall(b"please reset\n")
    err = error_name(lambda: read_all(s))
    s.close()
    return {"error": err}


def case_halfclose(host, port, arg):
    """The server half-closes first; the client can still send afterwards."""
    size = int(arg or 50_000)
    s = connect(host, port)
    hello = read_all(s)  # ends at the server's FIN
    s.sendall(b"y" * size)
    s.shutdown(socket.SHUT_WR)
    tail = read_all(s)
    s.close()
    return {"hello": hello.decode().strip(), "afterEof": len(tail)}


def case_slow(host, port, arg):
    """The server does not read for 1.5 s: how much does the path take before the
    client's send blocks? Then everything must arrive intact."""
    stall_s = float(arg or 1.0)
    s = connect(host, port)
    s.setblocking(False)
    block = os.urandom(65536)
    digest = hashlib.sha256()
    sent = 0
    end = time.monotonic() + stall_s
    while time.monotonic() < end:
        _, writable, _ = select.select([], [s], [], 0.01)
        if not writable:
            continue
        try:
            n = s.send(block)
        except BlockingIOError:
            continue
        digest.update(block[:n])
        sent += n
    accepted_in_stall = sent
    s.setblocking(True)
    s.settimeout(TIMEOUT_S)
    for _ in range(16):  # 1 MiB more once the reader wakes up
        s.sendall(block)
        digest.update(block)
        sent += len(block)
    s.shutdown(socket.SHUT_WR)
    done = read_line(s).split()
    s.close()
    ok = len(done) == 3 and int(done[1]) == sent and done[2] == digest.hexdigest()
    return {"acceptedInStall": accepted_in_stall, "sent": sent, "doneOk": ok}


def case_vanish(host, port, arg):
    """Read part of a bulk transfer, then disappear with a RST."""
    want = int(arg or (4 << 20))
    s = connect(host, port)
    got = 0
    while got < want:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    return {"read": got}


def case_quiet(host, port, arg):
    """Connect, send nothing, read to the end: closed (error None) or reset."""
    try:
        s = connect(host, port)
    except OSError as err:
        # A reset close behind the handshake is reported by connect() itself.
        return {"error": type(err).__name__, "received": 0}
    data = []
    err = error_name(lambda: data.append(read_all(s)))
    s.close()
    return {"error": err, "received": len(data[0]) if data else 0}


def case_line(host, port, arg):
    """Connect, read the server's first line, close: the line, or the error instead."""
    s = connect(host, port)
    line = []
    err = error_name(lambda: line.append(read_line(s)))
    s.close()
    return {"error": err, "line": line[0] if line else None}


def case_lines(host, port, arg):
    """Connect, read ARG lines, close (with a reset when bytes are left unread)."""
    s = connect(host, port)
    lines = []
    err = error_name(lambda: [lines.append(read_line(s)) for _ in range(int(arg or 1))])
    s.close()
    return {"error": err, "lines": lines}


def case_fails(host, port, arg):
    """Upstream refuses or never answers: the client's accepted connection must end."""
    start = time.monotonic()
    try:
        s = connect(host, port)
    except OSError as err:
        # With a timeout Python connects non-blocking and reads SO_ERROR afterwards: a
        # reset that follows the handshake closely is reported by connect() itself.
        return {"error": type(err).__name__, "atConnect": True,
                "elapsedMs": round((time.monotonic() - start) * 1000)}
    err = error_name(lambda: read_all(s))
    s.close()
    return {"error": err, "atConnect": False, "elapsedMs": round((time.monotonic() - start) * 1000)}


def case_limit(host, port, arg):
    """Hold `arg` connections open, then try one more."""
    count = int(arg)
    held = []
    for _ in range(count):
        s = connect(host, port)
        if read_line(s).startswith("PEER"):
            held.append(s)
    extra_error = None
    extra_line = ""
    try:
        extra = connect(host, port, timeout=3.0)
        try:
            extra_line = read_line(extra)
            if not extra_line:
                extra_error = "EOF"
        finally:
            extra.close()
    except OSError as err:  # at connect() too: see case_fails
        extra_error = type(err).__name__
    for s in held:
        s.close()
    return {"held": len(held), "extraError": extra_error, "extraLine": extra_line}


def case_idle(host, port, arg):
    start = time.monotonic()
    s = connect(host, port, timeout=float(arg))
    read_line(s)  # PEER
    err = error_name(lambda: read_all(s))
    s.close()
    return {"error": err, "elapsedMs": round((time.monotonic() - start) * 1000)}


def case_grace(host, port, arg):
    """Two connections across a relay shutdown: one finishes within the grace period
    (port: a "late" peer), one stays idle (port arg: a "peer" peer) and is reset. The late
    exchange finishes only after the test, once the relay is shutting down, writes a line
    to stdin."""
    late = connect(host, port)
    idle = connect(host, int(arg))
    read_line(idle)  # PEER
    late.sendall(b"question\n")
    print(json.dumps({"event": "connected"}), flush=True)
    sys.stdin.readline()  # the relay is shutting down
    late.sendall(b"go on\n")
    answer = read_line(late)
    late.close()
    idle_error = error_name(lambda: read_all(idle))
    idle.close()
    return {"lateAnswer": answer, "idleError": idle_error}


def port_in_use(port):
    """Whether a TCP socket of this namespace, in any state, has local port `port`."""
    suffix = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as table:
            next(table)  # header
            if any(line.split()[1].endswith(suffix) for line in table):
                return True
    return False


def wait_until(condition, what, timeout_s=TIMEOUT_S):
    """Polls `condition` until it holds; raises TimeoutError (an OSError) at the deadline."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"no {what} within {timeout_s} s")
        time.sleep(0.005)


def case_reuse(host, port, arg):
    """Two connections from the same client port, one after the other, to a server that
    closes first: the relay then closes first towards the client and keeps the 4-tuple
    in TIME_WAIT. The second SYN must still reach the relay's listener at once (the test
    checks that no SYN was retransmitted)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    source_port = int(arg)
    hellos = []
    for _ in range(2):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(TIMEOUT_S)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))
        s.connect((host, port))
        hellos.append(read_all(s).decode().strip())  # HELLO, then the server's FIN
        s.shutdown(socket.SHUT_WR)
        read_all(s)
        s.close()
        # The client's own socket must leave LAST_ACK (the 4-tuple free on this side);
        # the relay's TIME_WAIT (60 s) is still there for the second SYN.
        wait_until(lambda: not port_in_use(source_port), f"release of client port {source_port}")
    return {"hellos": hellos}


CASES = {
    "reuse": case_reuse,
    "peer": case_peer,
    "reset": case_reset,
    "halfclose": case_halfclose,
    "slow": case_slow,
    "vanish": case_vanish,
    "fails": case_fails,
    "quiet": case_quiet,
    "line": case_line,
    "lines": case_lines,
    "limit": case_limit,
    "idle": case_idle,
    "grace": case_grace,
}

if __name__ == "__main__":
    name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    try:
        result = CASES[name](host, port, arg)
    except OSError as err:
        result = {"clientError": type(err).__name__, "detail": str(err)}
    print(json.dumps({"event": "result", **result}), flush=True)
