// Test-only fault injection, for the failure paths no test could reach otherwise
// (issue 9: "inject the failure and check fds, tokens and counters balance"). Off
// unless RELAY_TEST_FAULTS is set in the relay's environment, which only the tests do:
//
//   RELAY_TEST_FAULTS="epoll_add_fail_after=3,epoll_add_fail_count=2"
//       the 4th and 5th registrations with the poller fail with ENOSPC, as epoll_ctl
//       does at fs.epoll.max_user_watches (a limit that is per user and machine-wide,
//       so a test cannot lower it without touching the host);
//   RELAY_TEST_FAULTS="data_path_throw_after=5"
//       the UDP data path throws on the 6th datagram from a client, as a bug would;
//   RELAY_TEST_FAULTS="worker_crash_after_ms=200"
//       the UDP Worker's thread dies of an uncaught exception outside the data path;
//   RELAY_TEST_FAULTS="uring_probe_fail=1"
//       the io_uring probe fails with EPERM, as with kernel.io_uring_disabled = 2 (a
//       sysctl of the whole machine, which no test may write).
//
// Each check is one comparison with a plain number when the faults are off.

const ENOSPC = 28;
const EPERM = 1;

function parse(text: string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  if (!text) return out;
  for (const item of text.split(",")) {
    const [name, value] = item.split("=");
    const n = Number(value);
    if (!name || !Number.isInteger(n) || n < 0) {
      throw new Error(`RELAY_TEST_FAULTS: bad item ${JSON.stringify(item.slice(0, 40))}`);
    }
    out.set(name, n);
  }
  return out;
}

const settings = parse(process.env.RELAY_TEST_FAULTS);
let epollAddsLeft = settings.get("epoll_add_fail_after") ?? -1;
let epollFailuresLeft = settings.get("epoll_add_fail_count") ?? 1;
let datagramsLeft = settings.get("data_path_throw_after") ?? -1;

/** Arms the injected Worker crash, if any (called once the Worker's relay started). */
export function faultWorkerCrash(): void {
  const afterMs = settings.get("worker_crash_after_ms");
  if (afterMs === undefined) return;
  setTimeout(() => {
    throw new Error("RELAY_TEST_FAULTS: injected worker crash");
  }, afterMs);
}

/** 0, or the -errno an injected poller registration failure returns. */
export function faultEpollAdd(): number {
  if (epollAddsLeft < 0) return 0;
  if (epollAddsLeft > 0) {
    epollAddsLeft--;
    return 0;
  }
  if (epollFailuresLeft <= 0) return 0;
  epollFailuresLeft--;
  return -ENOSPC;
}

/** Throws when the injected data-path bug is due (counts datagrams from clients). */
export function faultDataPath(count: number): void {
  if (datagramsLeft < 0) return;
  datagramsLeft -= count;
  if (datagramsLeft < 0) throw new Error("RELAY_TEST_FAULTS: injected data-path failure");
}

/** 0, or the -errno an injected io_uring probe failure returns. */
export function faultUringProbe(): number {
  return settings.get("uring_probe_fail") === 1 ? -EPERM : 0;
}
