// What a proxy under test costs per unit of work (issue 14): CPU time, system calls and
// context switches of one process (all its threads) over a measured window, and the
// extra relay paths `--variant NAME=<JSON>` and `--baseline DIR` that bench/udp.ts,
// bench/tcp.ts and bench/run.ts share.
//
// CPU: utime+stime of all threads (/proc/PID/stat). Context switches:
// voluntary + nonvoluntary of every thread (/proc/PID/task/*/status). System calls:
// `perf stat -e raw_syscalls:sys_enter -p PID` (all threads), attached before the window
// with its counters off, switched on and off at the window's edges through its control
// FIFO (--delay -1 --control). perf is a measurement, not a test: when it is missing or
// fails the count is NaN (the report prints "-") and the bench goes on.
import type { Subprocess } from "bun";
import {
  closeSync,
  constants,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** USER_HZ: /proc/PID/stat counts in 1/100 s on Linux. */
const TICKS_PER_SECOND = 100;
/** perf gets this long to print its counts after SIGINT before it is killed. */
const PERF_STOP_TIMEOUT_MS = 3000;
/** perf acknowledges enable/disable on its control FIFO within this (it attaches first). */
const PERF_ACK_TIMEOUT_MS = 1000;
const PERF_ACK_POLL_MS = 2;
/** At most this many --variant paths (each needs its own ports). */
export const VARIANTS_MAX = 8;
const VARIANT_NAME = /^[a-z][a-z0-9_-]{0,23}$/;
/** Names the benches use for their own paths. */
const RESERVED_NAMES = ["kernel", "relay", "bun", "c", "obs", "node", "haproxy", "bunstream",
  "before"];

/** One --variant: a relay path NAME whose config is the bench's with `patch` merged over it. */
export interface Variant {
  name: string;
  patch: Record<string, unknown>;
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Parses `NAME=<JSON object>` (the value of one --variant). */
export function parseVariant(spec: string): Variant {
  const at = spec.indexOf("=");
  if (at < 0) throw new Error(`--variant ${spec}: expected NAME=<JSON object>`);
  const name = spec.slice(0, at);
  if (!VARIANT_NAME.test(name)) {
    throw new Error(`--variant ${name}: the name must match ${VARIANT_NAME.source}`);
  }
  if (RESERVED_NAMES.includes(name)) {
    throw new Error(`--variant ${name}: the name is a path of the bench itself`);
  }
  let patch: unknown;
  try {
    patch = JSON.parse(spec.slice(at + 1));
  } catch (err) {
    throw new Error(`--variant ${name}: not JSON: ${(err as Error).message}`);
  }
  if (!isObject(patch)) throw new Error(`--variant ${name}: the JSON must be an object`);
  return { name, patch };
}

/** Appends one parsed --variant to `variants`, refusing duplicates and too many. */
export function addVariant(variants: Variant[], spec: string | undefined): void {
  const v = parseVariant(spec ?? "");
  if (variants.some((x) => x.name === v.name)) throw new Error(`--variant ${v.name}: given twice`);
  if (variants.length >= VARIANTS_MAX) throw new Error(`--variant: at most ${VARIANTS_MAX}`);
  variants.push(v);
}

/** Checks a --baseline DIR: another checkout with its own entry point and built library. */
export function checkBaseline(dir: string | undefined): string {
  if (!dir) throw new Error("--baseline: a checkout directory is required");
  for (const f of ["src/main.ts", "build/librelay.so"]) {
    if (!existsSync(join(dir, f))) throw new Error(`--baseline ${dir}: ${f} is missing (build it)`);
  }
  return dir;
}

/** The variant/baseline flags as given, for a report's command line or a pass-through. */
export function extraPathArgs(variants: Variant[], baseline: string | null): string[] {
  return [...variants.flatMap((v) => ["--variant", `${v.name}=${JSON.stringify(v.patch)}`]),
    ...(baseline ? ["--baseline", baseline] : [])];
}

/**
 * `patch` merged over `base`: objects merge key by key, recursively; arrays and scalars in
 * `patch` replace what `base` has (a listener list is replaced whole, not merged by index).
 * Neither argument is changed.
 */
export function deepMerge(base: Record<string, unknown>,
  patch: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(patch)) {
    const old = out[k];
    out[k] = isObject(v) && isObject(old) ? deepMerge(old, v) : v;
  }
  return out;
}

/** count / units, NaN when either is not a finite count (no data is not zero). */
export function perUnit(count: number, units: number): number {
  if (!Number.isFinite(count) || !Number.isFinite(units) || units <= 0) return Number.NaN;
  return count / units;
}

/** The counts of `perf stat -x,` (its stderr): event name -> count, NaN when not counted. */
export function parsePerfCsv(text: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of text.split("\n")) {
    // count,unit,event,running-time,percent,...
    const f = line.split(",");
    if (f.length < 3 || f[2] === "") continue;
    const n = Number(f[0]);
    counts[f[2]] = f[0] !== "" && Number.isFinite(n) ? n : Number.NaN;
  }
  return counts;
}

function threads(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
}

/**
 * utime + stime of `pid` in seconds: /proc/PID/stat sums every thread, those that have
 * ended included (NaN once the process is gone).
 */
export function cpuSecondsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / TICKS_PER_SECOND; // proc(5) fields 14, 15
  } catch {
    return Number.NaN;
  }
}

/** Voluntary + nonvoluntary context switches of every thread of `pid`. */
export function contextSwitchesOf(pid: number): number {
  let n = 0;
  const tids = threads(pid);
  for (const tid of tids) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8");
      for (const m of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s*(\d+)$/gm)) {
        n += Number(m[1]);
      }
    } catch {
      // the thread ended meanwhile
    }
  }
  return tids.length ? n : Number.NaN;
}

/** What one process did over a window. */
export interface WindowCounts {
  cpuSeconds: number;
  syscalls: number;
  contextSwitches: number;
}

/** Per unit of work (a relayed datagram, a connection, a GB): CPU us and counts. */
export interface UnitCost {
  cpuUs: number;
  syscalls: number;
  contextSwitches: number;
}

export function costPerUnit(w: WindowCounts, units: number): UnitCost {
  return {
    cpuUs: perUnit(w.cpuSeconds * 1e6, units),
    syscalls: perUnit(w.syscalls, units),
    contextSwitches: perUnit(w.contextSwitches, units),
  };
}

/**
 * Counts one process over a window. prepare() early (perf attaches with its counters
 * disabled, which takes tens of ms), start() at the window's start (perf's counters are
 * enabled through its control FIFO and acknowledged, so the window is exact), stop() at
 * its end. `perf` false (or perf failing) leaves the system calls NaN.
 */
export class ProcessWindow {
  private cpu0 = 0;
  private ctx0 = 0;
  private perf: Subprocess<"ignore", "ignore", "pipe"> | null = null;
  private dir: string | null = null;
  private ctl = -1;
  private ack = -1;
  /** perf acknowledged "enable": its count covers the window. */
  private counting = false;

  constructor(
    readonly pid: number,
    private readonly usePerf: boolean,
  ) {}

  prepare(): void {
    if (!this.usePerf || this.perf) return;
    try {
      this.dir = mkdtempSync(join(tmpdir(), "bench-perf-"));
      const ctl = join(this.dir, "ctl");
      const ack = join(this.dir, "ack");
      const made = Bun.spawnSync(["mkfifo", ctl, ack], { stdout: "ignore", stderr: "ignore" });
      if (made.exitCode !== 0) throw new Error("mkfifo failed");
      // O_RDWR: opening either end never blocks, whether perf has opened it yet or not.
      const mode = constants.O_RDWR | constants.O_NONBLOCK;
      this.ctl = openSync(ctl, mode);
      this.ack = openSync(ack, mode);
      this.perf = Bun.spawn(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter",
        "--delay", "-1", "--control", `fifo:${ctl},${ack}`, "-p", `${this.pid}`],
        { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
    } catch {
      this.cleanup(); // no perf: the column says "-"
    }
  }

  /** Sends `command` to perf and waits (bounded) for its "ack". */
  private async control(command: string): Promise<boolean> {
    if (this.ctl < 0 || this.ack < 0) return false;
    const buf = Buffer.alloc(64);
    while (readAck(this.ack, buf) > 0) {
      // a stale acknowledgement: drop it
    }
    try {
      writeSync(this.ctl, `${command}\n`);
    } catch {
      return false;
    }
    const deadline = performance.now() + PERF_ACK_TIMEOUT_MS;
    let got = "";
    while (performance.now() < deadline) {
      const n = readAck(this.ack, buf);
      if (n > 0) got += buf.toString("utf8", 0, n);
      if (got.includes("ack")) return true;
      await Bun.sleep(PERF_ACK_POLL_MS);
    }
    return false;
  }

  /** The window starts now (CPU, switches); perf's count once it acknowledges (~1 ms). */
  async start(): Promise<void> {
    this.prepare();
    this.cpu0 = cpuSecondsOf(this.pid);
    this.ctx0 = contextSwitchesOf(this.pid);
    this.counting = this.perf !== null && (await this.control("enable"));
  }

  async stop(): Promise<WindowCounts> {
    const counted = this.counting && (await this.control("disable"));
    const cpuSeconds = cpuSecondsOf(this.pid) - this.cpu0;
    const contextSwitches = contextSwitchesOf(this.pid) - this.ctx0;
    let syscalls = Number.NaN;
    const perf = this.perf;
    if (perf) {
      perf.kill("SIGINT");
      const code = await Promise.race([perf.exited,
        Bun.sleep(PERF_STOP_TIMEOUT_MS).then(() => null)]);
      if (code === null) perf.kill("SIGKILL");
      else if (counted) {
        syscalls = parsePerfCsv(await new Response(perf.stderr).text())["raw_syscalls:sys_enter"] ??
          Number.NaN;
      }
    }
    this.cleanup();
    return { cpuSeconds, syscalls, contextSwitches };
  }

  private cleanup(): void {
    for (const fd of [this.ctl, this.ack]) {
      if (fd >= 0) closeSync(fd);
    }
    this.ctl = -1;
    this.ack = -1;
    this.perf = null;
    this.counting = false;
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = null;
  }
}

/** Non-blocking read of perf's acknowledgement FIFO: bytes read, 0 when nothing is there. */
function readAck(fd: number, buf: Buffer): number {
  try {
    return readSync(fd, buf, 0, buf.length, null);
  } catch {
    return 0; // EAGAIN: nothing yet
  }
}

/** Whether `perf stat` can count the syscall tracepoint here (else the columns say "-"). */
export function perfAvailable(): boolean {
  try {
    const r = Bun.spawnSync(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"],
      { stdout: "ignore", stderr: "pipe", timeout: 10_000 });
    return r.exitCode === 0 &&
      Number.isFinite(parsePerfCsv(r.stderr.toString())["raw_syscalls:sys_enter"]);
  } catch {
    return false;
  }
}
