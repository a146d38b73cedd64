// What a proxy under test costs per unit of work (issue 14): CPU time, system calls and
// context switches of one process (all its threads) over a measured window, and the
// extra relay paths `--variant NAME=<JSON>` and `--baseline DIR` that bench/udp.ts,
// bench/tcp.ts and bench/run.ts share.
//
// CPU: utime+stime of all threads (/proc/PID/stat). Context switches:
// voluntary + nonvoluntary of every thread (/proc/PID/task/*/status). System calls:
// `perf stat -e raw_syscalls:sys_enter -p PID` (all threads), stopped with SIGINT at the
// end of the window, scaled to the whole window by perf's own running time (it attaches a
// little late). perf is a measurement, not a test: when it is missing or fails the
// count is NaN (the report prints "-") and the bench goes on.
import type { Subprocess } from "bun";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** USER_HZ: /proc/PID/stat counts in 1/100 s on Linux. */
const TICKS_PER_SECOND = 100;
/** perf gets this long to print its counts after SIGINT before it is killed. */
const PERF_STOP_TIMEOUT_MS = 3000;
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

/** One event of `perf stat -x,`: its count and how long it counted (NaN: not counted). */
export interface PerfCount {
  count: number;
  runningS: number;
}

/** The events of `perf stat -x,` (its stderr) by name. */
export function parsePerfCsv(text: string): Record<string, PerfCount> {
  const counts: Record<string, PerfCount> = {};
  for (const line of text.split("\n")) {
    // count,unit,event,running-time-ns,percent,...
    const f = line.split(",");
    if (f.length < 4 || f[2] === "") continue;
    const n = Number(f[0]);
    const ns = Number(f[3]);
    counts[f[2]] = {
      count: f[0] !== "" && Number.isFinite(n) ? n : Number.NaN,
      runningS: f[3] !== "" && Number.isFinite(ns) ? ns / 1e9 : Number.NaN,
    };
  }
  return counts;
}

/**
 * A count over the whole window: perf attaches some tens of ms after the window starts
 * (it is spawned then), so its count is scaled by window / perf's own running time, at the
 * rate it saw. NaN when it did not count.
 */
export function scaleToWindow(c: PerfCount | undefined, windowS: number): number {
  if (!c || !Number.isFinite(c.count)) return Number.NaN;
  if (!(c.runningS > 0) || !(windowS > 0)) return Number.NaN;
  return c.count * Math.max(1, windowS / c.runningS);
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
 * Counts one process over a window: start() at the window's start, stop() at its end.
 * `perf`: false (or perf missing) leaves the system calls NaN.
 */
export class ProcessWindow {
  private cpu0 = 0;
  private ctx0 = 0;
  private startMs = 0;
  private perf: Subprocess<"ignore", "ignore", "pipe"> | null = null;

  constructor(readonly pid: number, private readonly usePerf: boolean) {}

  start(): void {
    this.cpu0 = cpuSecondsOf(this.pid);
    this.ctx0 = contextSwitchesOf(this.pid);
    this.startMs = performance.now();
    if (!this.usePerf) return;
    try {
      this.perf = Bun.spawn(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter",
        "-p", `${this.pid}`], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
    } catch {
      this.perf = null; // no perf: the column says "-"
    }
  }

  async stop(): Promise<WindowCounts> {
    const cpuSeconds = cpuSecondsOf(this.pid) - this.cpu0;
    const contextSwitches = contextSwitchesOf(this.pid) - this.ctx0;
    const windowS = (performance.now() - this.startMs) / 1000;
    let syscalls = Number.NaN;
    const perf = this.perf;
    this.perf = null;
    if (perf) {
      perf.kill("SIGINT");
      const code = await Promise.race([perf.exited,
        Bun.sleep(PERF_STOP_TIMEOUT_MS).then(() => null)]);
      if (code === null) perf.kill("SIGKILL");
      else {
        const counts = parsePerfCsv(await new Response(perf.stderr).text());
        syscalls = scaleToWindow(counts["raw_syscalls:sys_enter"], windowS);
      }
    }
    return { cpuSeconds, syscalls, contextSwitches };
  }
}

/** Whether `perf stat` can count the syscall tracepoint here (else the columns say "-"). */
export function perfAvailable(): boolean {
  try {
    const r = Bun.spawnSync(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"],
      { stdout: "ignore", stderr: "pipe", timeout: 10_000 });
    const c = parsePerfCsv(r.stderr.toString())["raw_syscalls:sys_enter"];
    return r.exitCode === 0 && c !== undefined && Number.isFinite(c.count);
  } catch {
    return false;
  }
}
