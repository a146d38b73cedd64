// Micro-benchmarks (tinybench), one baseline per group, ratios task/baseline and a checksum:
//   ffi call       bun:ffi call costs: rl_abi_version() (no arguments) is the baseline, then
//                  a pointer argument passed as a typed array and as a ready pointer number,
//                  and recvmmsg on an empty socket (a real syscall that finds nothing).
//   udp batch io   rl_send_batch + rl_recv_batch of 64 B datagrams over loopback, one
//                  datagram per call (baseline) against 64 and 256 per call; ns per datagram.
//   session table  src/flow/table.ts with 32k live sessions: find (hit) is the baseline,
//                  find (miss), create + end, touch, create + expire; ns per operation.
//   policy         src/policy/policy.ts: decide() for a new flow with no rules (baseline),
//                  10,000 suffix names (half the names hit), 10,000 destination CIDRs.
//   parsers        bench/parsers.bench.ts (WASM per packet, per batch, the TS oracle).
//
// Sockets only exist inside a network namespace this process makes (`trl-<id>-micro`,
// loopback only): the parent creates it, runs itself there with --child, deletes it.
//
//   node_modules/.bin/bun bench/micro.bench.ts [--small] [--reps N]
//
// bench/run.ts imports runMicro().
import { type Pointer, ptr } from "bun:ffi";
import { randomBytes } from "node:crypto";
import { Bench } from "tinybench";
import { EndReason, SessionTable } from "../src/flow/table.ts";
import { parseConfig } from "../src/config/load.ts";
import { compilePolicy, PolicyFlow } from "../src/policy/policy.ts";
import { run } from "../test/lab/netns.ts";
import { mapIPv4 } from "../src/sys/addr.ts";
import { loadFfi } from "../src/sys/ffi.ts";
import { META_BYTES, SEND, SEND_BYTES, SEND_WORDS } from "../src/sys/layout.ts";
import { runParsers } from "./parsers.bench.ts";

const TIME_MS = { small: 30, full: 400 };
const WARMUP_MS = { small: 10, full: 100 };
/** FFI calls per task iteration, so timer overhead is spread out. */
const CALLS = 1000;
const DATAGRAM_BYTES = 64;
const SLOT_BYTES = 2048;
const BATCH_SIZES = [1, 64, 256];
/** Datagrams per task iteration in the batch group (a multiple of every batch size). */
const DATAGRAMS = 256;
const TABLE_CAPACITY = 65_536;
const TABLE_LIVE = 32_768;
const TABLE_OPS = 256;
const REPS_MAX = 20;
const POLICY_ENTRIES = 10_000;
const POLICY_FLOWS = 256;
const CHILD_TIMEOUT_MS = 300_000;

export interface MicroRow {
  group: string;
  task: string;
  baseline: boolean;
  unit: string;
  /** ns per unit, one value per repetition. */
  ns: number[];
}

export interface MicroResult {
  rows: MicroRow[];
  checksum: number;
  reps: number;
  timeMs: number;
  bun: string;
}

interface Group {
  name: string;
  baseline: string;
  unit: string;
  bench: Bench;
  /** Units (calls, datagrams, operations) per iteration of each task. */
  perIteration: Map<string, number>;
  cleanup: () => void;
}

let checksum = 0;

function group(name: string, baseline: string, unit: string, small: boolean): Group {
  return {
    name, baseline, unit, perIteration: new Map(), cleanup: () => {},
    bench: new Bench({ time: small ? TIME_MS.small : TIME_MS.full,
      warmupTime: small ? WARMUP_MS.small : WARMUP_MS.full }),
  };
}

function add(g: Group, task: string, units: number, fn: () => void): void {
  g.bench.add(task, fn);
  g.perIteration.set(task, units);
}

const lib = loadFfi();
const loopback4 = mapIPv4(new Uint8Array([127, 0, 0, 1]));

/** A UDP socket on 127.0.0.1 with a 4 MiB receive buffer (the batches must all fit). */
function socket(): number {
  const fd = lib.rl_socket(0, loopback4, 0, 0, 4 << 20, 4 << 20);
  if (fd < 0) throw new Error(`rl_socket: ${fd}`);
  return fd;
}

function ffiGroup(small: boolean): Group {
  const g = group("ffi call", "rl_abi_version()", "call", small);
  const fd = socket();
  g.cleanup = () => lib.rl_close(fd);
  // Arrays whose pointer is cached live on their own ArrayBuffer (see test/unit/ffi.test.ts).
  const addr = new Uint8Array(new ArrayBuffer(16));
  const addrPtr = ptr(addr);
  const slab = new Uint8Array(new ArrayBuffer(SLOT_BYTES * 64));
  const meta = new Uint8Array(new ArrayBuffer(META_BYTES * 64));
  const slabPtr = ptr(slab);
  const metaPtr = ptr(meta);
  add(g, "rl_abi_version()", CALLS, () => {
    for (let i = 0; i < CALLS; i++) checksum += lib.rl_abi_version();
  });
  add(g, "rl_local_port(fd, Uint8Array)", CALLS, () => {
    for (let i = 0; i < CALLS; i++) checksum += lib.rl_local_port(fd, addr);
  });
  add(g, "rl_local_port(fd, pointer)", CALLS, () => {
    for (let i = 0; i < CALLS; i++) checksum += lib.rl_local_port(fd, addrPtr);
  });
  add(g, "rl_recv_batch(empty socket, 64)", CALLS, () => {
    for (let i = 0; i < CALLS; i++) {
      checksum += lib.rl_recv_batch(fd, slabPtr, SLOT_BYTES, 64, metaPtr);
    }
  });
  return g;
}

function batchGroup(small: boolean): Group {
  const g = group("udp batch io (64 B, loopback)", "1 per call", "datagram", small);
  const receiver = socket();
  const sender = socket();
  g.cleanup = () => {
    lib.rl_close(receiver);
    lib.rl_close(sender);
  };
  const port = lib.rl_local_port(receiver, new Uint8Array(16));
  const slab = new Uint8Array(new ArrayBuffer(SLOT_BYTES * DATAGRAMS));
  const sends = new Uint8Array(new ArrayBuffer(SEND_BYTES * DATAGRAMS));
  const meta = new Uint8Array(new ArrayBuffer(META_BYTES * DATAGRAMS));
  const recvSlab = new Uint8Array(new ArrayBuffer(SLOT_BYTES * DATAGRAMS));
  const sendWords = new Uint32Array(sends.buffer);
  const sendHalves = new Uint16Array(sends.buffer);
  for (let i = 0; i < DATAGRAMS; i++) {
    sends.set(loopback4, i * SEND_BYTES);
    sendHalves[i * (SEND_BYTES / 2) + SEND.targetPortHalf] = port;
    sendWords[i * SEND_WORDS + SEND.fdWord] = sender;
    sendWords[i * SEND_WORDS + SEND.offsetWord] = i * SLOT_BYTES;
    sendWords[i * SEND_WORDS + SEND.lengthWord] = DATAGRAM_BYTES;
    slab.fill(i & 0xff, i * SLOT_BYTES, i * SLOT_BYTES + DATAGRAM_BYTES);
  }
  const slabPtr = ptr(slab);
  const recvPtr = ptr(recvSlab);
  const metaPtr = ptr(meta);
  const sendsBase = ptr(sends);
  for (const batch of BATCH_SIZES) {
    add(g, batch === 1 ? "1 per call" : `${batch} per call`, DATAGRAMS, () => {
      for (let done = 0; done < DATAGRAMS; done += batch) {
        const sendsPtr = (sendsBase + done * SEND_BYTES) as Pointer;
        const sent = lib.rl_send_batch(slabPtr, slab.byteLength, sendsPtr, batch);
        if (sent !== batch) throw new Error(`rl_send_batch: ${sent} of ${batch}`);
        // Loopback delivers during sendmmsg, so the datagrams are queued already;
        // bounded: one call per datagram at most.
        let received = 0;
        for (let call = 0; call < batch && received < batch; call++) {
          const n = lib.rl_recv_batch(receiver, recvPtr, SLOT_BYTES, batch - received, metaPtr);
          if (n <= 0) throw new Error(`rl_recv_batch: ${n} with ${batch - received} expected`);
          received += n;
        }
        checksum += received + recvSlab[0];
      }
    });
  }
  return g;
}

function tableGroup(small: boolean): Group {
  const g = group("session table (32k live)", "find (hit)", "op", small);
  // Class 0 holds the live sessions, last seen "in the future" so they never expire;
  // class 1 is for the create + expire task.
  const table = new SessionTable(TABLE_CAPACITY, [60_000, 1_000]);
  const key = table.key;
  const setKey = (i: number) => {
    key[0] = 0xffff;
    key[1] = 0xc612_0000 + (i >>> 16); // 198.18.x.y style words, distinct per i
    key[2] = i;
    key[3] = Math.imul(i, 0x9e3779b1) >>> 0;
    key[4] = 0xffff;
    key[5] = 0xc612_0102;
    key[6] = 0;
    key[7] = 0;
    key[8] = ((i & 0xffff) << 16) | 443;
  };
  const future = 1e12;
  const slots = new Int32Array(TABLE_LIVE);
  for (let i = 0; i < TABLE_LIVE; i++) {
    setKey(i);
    slots[i] = table.create(future, 0);
  }
  let cursor = 0;
  let fresh = TABLE_LIVE;
  let now = 0;
  let touched = 0;
  add(g, "find (hit)", TABLE_OPS, () => {
    for (let i = 0; i < TABLE_OPS; i++) {
      setKey(cursor);
      cursor = (cursor + 7919) % TABLE_LIVE;
      checksum += table.find();
    }
  });
  add(g, "find (miss)", TABLE_OPS, () => {
    for (let i = 0; i < TABLE_OPS; i++) {
      setKey(TABLE_LIVE + cursor);
      cursor = (cursor + 7919) % TABLE_LIVE;
      checksum += table.find() + 1;
    }
  });
  add(g, "create + end", TABLE_OPS, () => {
    for (let i = 0; i < TABLE_OPS; i++) {
      setKey(fresh++);
      const slot = table.create(future, 0);
      table.end(slot, EndReason.Closed);
      checksum += slot;
    }
  });
  add(g, "touch", TABLE_OPS, () => {
    for (let i = 0; i < TABLE_OPS; i++) {
      table.touch(slots[cursor], future + ++touched);
      cursor = (cursor + 7919) % TABLE_LIVE;
    }
    checksum += table.count;
  });
  add(g, "create + expire", TABLE_OPS, () => {
    now += 10_000;
    for (let i = 0; i < TABLE_OPS; i++) {
      setKey(fresh++);
      table.create(now, 1);
    }
    const ended = table.expire(now + 1_000, TABLE_OPS);
    if (ended !== TABLE_OPS) throw new Error(`expire ended ${ended} of ${TABLE_OPS}`);
    checksum += ended;
  });
  g.cleanup = () => table.invariants();
  return g;
}

/** Policy decisions, as the data path makes one per new flow. */
function policyGroup(small: boolean): Group {
  const g = group("policy decide", "no rules", "flow", small);
  const suffix = Array.from({ length: POLICY_ENTRIES }, (_, i) => `site${i}.example`);
  const cidrs = Array.from({ length: POLICY_ENTRIES }, (_, i) =>
    `10.${(i >>> 8) & 0xff}.${i & 0xff}.0/24`);
  const none = compilePolicy(parseConfig({}));
  const names = compilePolicy(parseConfig({
    rules: [{ ports: [443], names: { suffix }, action: "drop" }] }));
  const addresses = compilePolicy(parseConfig({
    rules: [{ destinations: cidrs, action: "drop" }] }));
  const flow = new PolicyFlow();
  flow.words.set(new Uint32Array(mapIPv4(Uint8Array.of(198, 18, 0, 2)).buffer), 0);
  flow.words.set(new Uint32Array(mapIPv4(Uint8Array.of(198, 18, 1, 2)).buffer), 4);
  flow.port = 443;
  const hosts = Array.from({ length: POLICY_FLOWS }, (_, i) =>
    i % 2 ? `www.site${i * 37}.example` : `www.miss${i}.example`);
  // Destination word 3 (little-endian): 10.a.b.c, about half of them in the set.
  const targets = Uint32Array.from({ length: POLICY_FLOWS }, (_, i) =>
    (10 | ((i % 80) << 8) | ((i * 7) & 0xff) << 16 | (i & 0xff) << 24) >>> 0);
  const task = (policy: typeof none) => () => {
    for (let i = 0; i < POLICY_FLOWS; i++) {
      flow.name = hosts[i];
      flow.words[7] = targets[i];
      checksum += policy.decide(flow);
    }
  };
  add(g, "no rules", POLICY_FLOWS, task(none));
  add(g, "10k suffix names", POLICY_FLOWS, task(names));
  add(g, "10k destination CIDRs", POLICY_FLOWS, task(addresses));
  return g;
}

/** One repetition of every group in this process (which must be in its own namespace). */
async function runGroups(small: boolean): Promise<Array<Omit<MicroRow, "ns"> & { ns: number }>> {
  const rows: Array<Omit<MicroRow, "ns"> & { ns: number }> = [];
  for (const setup of [ffiGroup, batchGroup, tableGroup, policyGroup]) {
    const g = setup(small);
    try {
      await g.bench.run();
    } finally {
      g.cleanup();
    }
    for (const task of g.bench.tasks) {
      const r = task.result;
      if (!("latency" in r)) throw new Error(`${g.name} ${task.name}: ${r.state}`);
      rows.push({ group: g.name, task: task.name, baseline: task.name === g.baseline,
        unit: g.unit, ns: r.latency.mean * 1e6 / g.perIteration.get(task.name)! });
    }
  }
  const parsers = await runParsers(small);
  checksum += parsers.checksum;
  for (const p of parsers.rows) {
    rows.push({ group: `parser: ${p.group}`, task: p.task, baseline: p.baseline, unit: "packet",
      ns: p.nsPerPacket });
  }
  return rows;
}

async function child(small: boolean, reps: number): Promise<MicroResult> {
  const byTask = new Map<string, MicroRow>();
  for (let rep = 0; rep < reps; rep++) {
    for (const row of await runGroups(small)) {
      const k = `${row.group}|${row.task}`;
      const have = byTask.get(k);
      if (have) have.ns.push(row.ns);
      else byTask.set(k, { ...row, ns: [row.ns] });
    }
    process.stderr.write(`[bench] micro rep ${rep + 1}/${reps} done\n`);
  }
  return { rows: [...byTask.values()], checksum: checksum >>> 0, reps,
    timeMs: small ? TIME_MS.small : TIME_MS.full, bun: Bun.version };
}

/**
 * Makes a namespace with only loopback, runs the groups there in a child process
 * (`reps` times each), deletes the namespace. Needs root.
 */
export async function runMicro(opts: { small: boolean; reps: number }): Promise<MicroResult> {
  const ns = `trl-${randomBytes(4).toString("hex")}-micro`;
  run(["ip", "netns", "add", ns]);
  try {
    run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    const proc = Bun.spawn(["ip", "netns", "exec", ns, process.execPath, import.meta.path,
      "--child", "--reps", `${opts.reps}`, ...(opts.small ? ["--small"] : [])],
      { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
    const timer = setTimeout(() => proc.kill("SIGKILL"), CHILD_TIMEOUT_MS);
    const code = await proc.exited;
    clearTimeout(timer);
    if (proc.signalCode === "SIGKILL") {
      throw new Error(`micro benchmarks did not finish within ${CHILD_TIMEOUT_MS} ms`);
    }
    const out = await new Response(proc.stdout).text();
    if (code !== 0) throw new Error(`micro benchmarks exit ${code}`);
    return JSON.parse(out.trim().split("\n").at(-1)!) as MicroResult;
  } finally {
    const pids = run(["ip", "netns", "pids", ns], undefined, true).stdout.trim();
    if (pids) run(["kill", "-9", ...pids.split(/\s+/)], undefined, true);
    run(["ip", "netns", "del", ns], undefined, true);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** "ns/unit median [min-max]" and the ratio to the group's baseline, one line per task. */
export function microLines(r: MicroResult): string[] {
  const lines = ["group                              task                               " +
    "ns/unit median [min-max]     ratio"];
  for (const row of r.rows) {
    const base = r.rows.find((x) => x.group === row.group && x.baseline)!;
    const value = `${median(row.ns).toFixed(1)} [${Math.min(...row.ns).toFixed(1)}-` +
      `${Math.max(...row.ns).toFixed(1)}] /${row.unit}`;
    lines.push(`${row.group.padEnd(34)} ${row.task.padEnd(34)} ${value.padEnd(28)} ` +
      `${(median(row.ns) / median(base.ns)).toFixed(2).padStart(5)}`);
  }
  lines.push(`checksum ${r.checksum}`);
  return lines;
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const small = argv.includes("--small");
  const repsAt = argv.indexOf("--reps");
  const reps = repsAt >= 0 ? Number(argv[repsAt + 1]) : small ? 1 : 3;
  if (!Number.isInteger(reps) || reps < 1 || reps > REPS_MAX) {
    console.error(`--reps: 1-${REPS_MAX}`);
    process.exit(2);
  }
  if (argv.includes("--child")) {
    console.log(JSON.stringify(await child(small, reps)));
  } else {
    if (process.getuid?.() !== 0) {
      console.error("bench/micro.bench.ts: needs root (it makes a network namespace)");
      process.exit(77);
    }
    const result = await runMicro({ small, reps });
    console.log(`micro bench: ${small ? "small" : "full"} run, ${result.reps} rep(s), ` +
      `${result.timeMs} ms per task, Bun ${result.bun}`);
    for (const line of microLines(result)) console.log(line);
  }
}
