#!/usr/bin/env python3
"""Drives a relay process the way an operator's environment would, for process.test.ts.

  relay_driver.py epipe -- RELAY ARGV...    reads the ready line, closes the read end of
                                            the relay's stdout, sends SIGUSR1 (a write to
                                            a pipe nobody reads: EPIPE)
  relay_driver.py sighup -- RELAY ARGV...   reads the ready line, sends SIGHUP (a reload of
                                            an unchanged file)

Then it waits (bounded, 10 s) for the relay's stderr to report the event, checks the
relay is still running, stops it with SIGTERM and prints one JSON line: what stderr
said, whether the relay was alive, its exit code.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

EXPECT = {"epipe": "stdout: EPIPE", "sighup": "reload: nothing changed"}


def main():
    mode = sys.argv[1]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready = p.stdout.readline()
    if mode == "epipe":
        p.stdout.close()
        os.kill(p.pid, signal.SIGUSR1)
    else:
        os.kill(p.pid, signal.SIGHUP)
    stderr = b""
    deadline = time.monotonic() + 10
    while EXPECT[mode].encode() not in stderr and time.monotonic() < deadline:
        ready_fds, _, _ = select.select([p.stderr], [], [], max(0, deadline - time.monotonic()))
        if not ready_fds:
            break
        chunk = os.read(p.stderr.fileno(), 65536)
        if not chunk:
            break
        stderr += chunk
    if mode == "epipe":
        # A second metrics request on the broken pipe: still no crash.
        os.kill(p.pid, signal.SIGUSR1)
    alive = p.poll() is None
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        code = None
    stderr += p.stderr.read()
    print(json.dumps({
        "ready": ready.decode().strip(),
        "alive": alive,
        "exitCode": code,
        "stderr": stderr.decode(errors="replace"),
    }))


if __name__ == "__main__":
    main()
