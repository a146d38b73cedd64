// `bun run bench`: the relay side by side with kernel forwarding (issue 5).
//
//   node_modules/.bin/bun run bench [--quick] [--reps N] [--no-pin] [--no-wait] [--only STEP,...]
//       [--variant NAME=<JSON>]... [--baseline DIR]
//
// UDP cells run the C relay beside the relay, TCP cells HAProxy (issue 14), quick runs too.
// Pinned by default (--no-pin: the scheduler's choice): UDP and TCP load generators on cpu0,
// every proxy under test (relay, C relay, HAProxy, variants, before) on cpu1; the other
// steps are not pinned. --pin is accepted and changes nothing.
// --variant NAME=<JSON> (repeatable): one more relay path NAME in the UDP and TCP steps, this
// checkout with the JSON deep-merged over the bench's relay config (bench/proxy_stats.ts).
// --baseline DIR: one more path "before", the relay of another built checkout DIR, so
// before and after are measured in one run (after/before columns).
// UDP and TCP cells also get each proxy's CPU us, system calls (perf stat) and context
// switches per relayed datagram / per connection / per GB (bench/proxy_stats.ts).
// --chart FILE.json: only redraw the chart FILE.svg from a run's FILE.json.
// --no-wait: UDP runs start without waiting for a quiet machine (bench/udp.ts --no-wait).
//
// Steps (each in its own throwaway namespaces, removed in `finally`):
//   micro    tinybench: FFI call costs, batch send/recv, session table, parsers
//            (bench/micro.bench.ts, bench/parsers.bench.ts)
//   udp      UDP one-way and request/response, 64 B and 1200 B, 1 and 256 flows,
//            batched C generator (bench/udp.ts)
//   dns      dnsperf -> dnsmasq queries/s (bench/dns.ts)
//   quic     ngtcp2 gtlsclient downloading a file over HTTP/3 (bench/quic.ts)
//   tcp      iperf3 Gbit/s and connections/s (bench/tcp.ts)
//   memory   relay RSS and kernel memory per UDP session at 10k and 100k (bench/memory.ts)
// Every end-to-end cell runs kernel forwarding and the relay in the same run, back to back
// per repetition, and reports relay/kernel with the spread over repetitions.
//
// Progress: one line per run on stderr. Output: the markdown report on stdout and in
// bench/results/latest.md, the chart in bench/results/latest.svg, the numbers behind
// both in bench/results/latest.json.
// --quick (CI): 1 repetition, short runs, smaller memory steps; it checks that every
// cell produced a number and exits 1 otherwise. It says nothing about speed, so its
// report goes to build/bench/quick.md and quick.svg (the committed results stay).
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join } from "node:path";
import { labUnavailableReason, run } from "../test/lab/netns.ts";
import { relayCommand } from "../test/lab/relay_process.ts";
import { type DnsResult, runDns } from "./dns.ts";
import { FANOUT, type MemoryRep, runMemory } from "./memory.ts";
import { type MicroResult, microLines, runMicro } from "./micro.bench.ts";
import { type QuicResult, runQuic } from "./quic.ts";
import { addVariant, checkBaseline, extraPathArgs, type UnitCost, type Variant }
  from "./proxy_stats.ts";
import {
  type Cell,
  type CostSamples,
  cellComplete,
  cellTable,
  costTable,
  fmt,
  median,
  ratioChart,
  spread,
} from "./report.ts";
import { parseArgs as tcpArgs, runTcp, type TcpResult } from "./tcp.ts";
import { cellName, type Sample, parseArgs as udpArgs, runUdp, type UdpResult } from "./udp.ts";

const RESULTS = join(import.meta.dir, "results");
const QUICK_RESULTS = join(import.meta.dir, "..", "build", "bench");
const STEPS = ["micro", "udp", "dns", "quic", "tcp", "memory"] as const;
type Step = (typeof STEPS)[number];
const REPS = { full: 3, quick: 1, max: 20 };
const USAGE = "usage: bun run bench [--quick] [--reps N] [--no-pin] [--no-wait] " +
  "[--only micro,udp,dns,quic,tcp,memory] [--runtime bun|node] [--variant NAME=<JSON>]... " +
  "[--baseline DIR]";

interface Args {
  quick: boolean;
  reps: number;
  pin: boolean;
  wait: boolean;
  only: Step[];
  /** The runtime the relay under test runs on (RELAY_RUNTIME, test/lab/relay_process.ts). */
  runtime: "bun" | "node";
  /** Passed to the UDP and TCP steps (bench/proxy_stats.ts). */
  variants: Variant[];
  baseline: string | null;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    quick: false,
    reps: REPS.full,
    pin: true,
    wait: true,
    only: [...STEPS],
    runtime: "bun",
    variants: [],
    baseline: null,
  };
  let repsGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--quick") args.quick = true;
    else if (a === "--pin") args.pin = true;
    else if (a === "--no-pin") args.pin = false;
    else if (a === "--variant") addVariant(args.variants, argv[++i]);
    else if (a === "--baseline") args.baseline = checkBaseline(argv[++i]);
    else if (a === "--no-wait") args.wait = false;
    else if (a === "--reps") {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1 || n > REPS.max) throw new Error(`--reps: 1-${REPS.max}`);
      args.reps = n;
      repsGiven = true;
    } else if (a === "--only") {
      const names = (argv[++i] ?? "").split(",");
      for (const n of names) {
        if (!(STEPS as readonly string[]).includes(n)) {
          throw new Error(`--only: unknown step ${n}\n${USAGE}`);
        }
      }
      args.only = names as Step[];
    } else if (a === "--runtime") {
      const r = argv[++i];
      if (r !== "bun" && r !== "node") throw new Error(`--runtime: bun or node\n${USAGE}`);
      args.runtime = r;
    } else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else {
      throw new Error(`unknown argument ${a}\n${USAGE}`);
    }
  }
  if (args.quick && !repsGiven) args.reps = REPS.quick;
  return args;
}

const log = (line: string) => process.stderr.write(`${line}\n`);

function cpuModel(): string {
  const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
  return m ? m[1].trim() : cpus()[0]?.model ?? "?";
}

// ---- Cells from each step's result -------------------------------------------------

function countBound(flags: Record<string, boolean[]>): string {
  const parts = Object.entries(flags)
    .filter(([, v]) => v.some((x) => x))
    .map(([k, v]) => `${k} ${v.filter((x) => x).length}/${v.length}`);
  return parts.join(", ") || "no";
}

/** Per-repetition costs as columns (NaN where a run had none). */
function costSamples(costs: Array<UnitCost | null>): CostSamples {
  const f = (g: (c: UnitCost) => number) => costs.map((c) => (c ? g(c) : Number.NaN));
  return { cpuUs: f((c) => c.cpuUs), syscalls: f((c) => c.syscalls),
    contextSwitches: f((c) => c.contextSwitches) };
}

/**
 * The extra paths of a step (label by path name) and the ratio columns beside
 * relay/kernel: relay/comparator (C relay or HAProxy), after/before, each variant to the
 * relay and to the comparator.
 */
function extraColumns(paths: string[], labels: Record<string, string>, comparator: string,
  variants: Variant[]): { others: Array<[string, string]>; ratios: Array<[string, string]> } {
  const others = paths.filter((p) => labels[p] !== undefined || variants.some((v) => v.name === p))
    .map((p) => [p, labels[p] ?? p] as [string, string]);
  const has = (label: string) => others.some(([, l]) => l === label);
  const ratios: Array<[string, string]> = [];
  if (has(comparator)) ratios.push(["relay", comparator]);
  if (has("before")) ratios.push(["relay", "before"]);
  for (const v of variants) {
    ratios.push([v.name, "relay"]);
    if (has(comparator)) ratios.push([v.name, comparator]);
  }
  return { others, ratios };
}

const UDP_LABELS: Record<string, string> = { c: "C relay", before: "before" };
const TCP_LABELS: Record<string, string> = { haproxy: "HAProxy", before: "before" };

function udpCells(r: UdpResult): Cell[] {
  const extra = extraColumns(r.paths, UDP_LABELS, "C relay", r.args.variants);
  return r.cells.map((cell) => {
    const get = (p: string) => r.samples.get(`${cellName(cell)}|${p}`) ?? [];
    const k = get("kernel");
    const b = get("bun");
    const m = (xs: Sample[], f: (s: Sample) => number) => median(xs.map(f));
    const note = cell.mode === "rr"
      ? `p50/p99 us: kernel ${m(k, (s) => s.p50Us).toFixed(0)}/` +
        `${m(k, (s) => s.p99Us).toFixed(0)}, ` +
        `relay ${m(b, (s) => s.p50Us).toFixed(0)}/${m(b, (s) => s.p99Us).toFixed(0)}`
      : `loss: kernel ${(m(k, (s) => s.loss) * 100).toFixed(1)}%, relay ` +
        `${(m(b, (s) => s.loss) * 100).toFixed(1)}%`;
    const contended = [...k, ...b].filter((s) => s.otherCpus > 0.3).length;
    return {
      section: "UDP",
      name: `${cell.mode === "rr" ? "req/resp" : "one-way"} ${cell.sizeBytes} B ${cell.flows} ` +
        `flow${cell.flows === 1 ? "" : "s"}`,
      unit: cell.mode === "rr" ? "transactions/s" : "datagrams/s",
      kernel: k.map((s) => s.value),
      relay: b.map((s) => s.value),
      generatorBound: countBound({ kernel: k.map((s) => s.generatorBound),
        relay: b.map((s) => s.generatorBound),
        ...Object.fromEntries(extra.others.map(([p, l]) =>
          [l, get(p).map((s) => s.generatorBound)])) }),
      note: note + (contended > 0 ? `; ${contended} run(s) contended by other load` : ""),
      others: Object.fromEntries(extra.others.map(([p, l]) => [l, get(p).map((s) => s.value)])),
      ratios: extra.ratios,
      costs: Object.fromEntries([["relay", "bun"], ...extra.others.map(([p, l]) => [l, p])]
        .map(([l, p]) => [l, costSamples(get(p).map((s) => s.cost))])),
      costUnit: "relayed datagram",
    };
  });
}

function dnsCells(r: DnsResult): Cell[] {
  const k = r.samples.kernel;
  const x = r.samples.relay;
  return [{
    section: "DNS",
    name: `dnsperf -> dnsmasq, ${r.clients} clients, ${r.outstanding} in flight`,
    unit: "queries/s",
    kernel: k.map((s) => s.qps),
    relay: x.map((s) => s.qps),
    generatorBound: countBound({ kernel: k.map((s) => s.generatorBound),
      relay: x.map((s) => s.generatorBound) }),
    note: `latency ms: kernel ${median(k.map((s) => s.latencyMs)).toFixed(2)}, relay ` +
      `${median(x.map((s) => s.latencyMs)).toFixed(2)}; lost: kernel ` +
      `${(median(k.map((s) => s.lostFraction)) * 100).toFixed(2)}%, relay ` +
      `${(median(x.map((s) => s.lostFraction)) * 100).toFixed(2)}%`,
  }];
}

function quicCells(r: QuicResult): Cell[] {
  const k = r.samples.kernel;
  const x = r.samples.relay;
  return [{
    section: "QUIC",
    name: `HTTP/3 download ${r.mib} MiB (ngtcp2)`,
    unit: "MB/s",
    kernel: k.map((s) => s.mbPerS),
    relay: x.map((s) => s.mbPerS),
    generatorBound: countBound({ kernel: k.map((s) => s.generatorBound),
      relay: x.map((s) => s.generatorBound) }),
    note: `seconds: kernel ${median(k.map((s) => s.seconds)).toFixed(2)}, relay ` +
      `${median(x.map((s) => s.seconds)).toFixed(2)}; peer CPU client/server: kernel ` +
      `${median(k.map((s) => s.clientCpu)).toFixed(2)}/` +
      `${median(k.map((s) => s.serverCpu)).toFixed(2)}` +
      `, relay ${median(x.map((s) => s.clientCpu)).toFixed(2)}/` +
      `${median(x.map((s) => s.serverCpu)).toFixed(2)}`,
  }];
}

function tcpCells(r: TcpResult): Cell[] {
  const extra = extraColumns(r.paths, TCP_LABELS, "HAProxy", r.args.variants);
  const pick = (b: Record<string, boolean[]>) => ({ kernel: b.kernel, relay: b.relay,
    ...Object.fromEntries(extra.others.map(([p, l]) => [l, b[p]])) });
  const others = (v: Record<string, number[]>) =>
    Object.fromEntries(extra.others.map(([p, l]) => [l, v[p]]));
  const costs = (v: Record<string, UnitCost[]>) =>
    Object.fromEntries([["relay", "relay"], ...extra.others.map(([p, l]) => [l, p])]
      .map(([l, p]) => [l, costSamples(v[p] ?? [])]));
  return [{
    section: "TCP",
    name: "iperf3 1 stream",
    unit: "Gbit/s",
    kernel: r.gbps.kernel,
    relay: r.gbps.relay,
    generatorBound: countBound(pick(r.iperfGeneratorBound)),
    note: `relay CPU ${fmt(median(r.cpuPerGb.relay))} s/GB`,
    others: others(r.gbps),
    ratios: extra.ratios,
    costs: costs(r.costPerGb),
    costUnit: "GB",
  }, {
    section: "TCP",
    name: "connections/s, 64 in flight",
    unit: "connections/s",
    kernel: r.cps.kernel,
    relay: r.cps.relay,
    generatorBound: countBound(pick(r.cpsGeneratorBound)),
    note: `relay CPU ${fmt(median(r.cpuPerConnUs.relay))} us/connection; failed: ` +
      `${r.paths.map((p) => `${TCP_LABELS[p] ?? p} ${r.failures[p]}`).join(", ")}`,
    others: others(r.cps),
    ratios: extra.ratios,
    costs: costs(r.costPerConn),
    costUnit: "connection",
  }];
}

function memoryTable(reps: MemoryRep[]): { lines: string[]; complete: boolean } {
  const lines = [
    "| sessions | relay upstream sockets | relay RSS (MiB) | relay RSS B/session | " +
      "relay kernel slab B/session | relay total B/session | kernel fwd slab B/flow | " +
      "relay/kernel |",
    "|---|---|---|---|---|---|---|---|",
  ];
  let complete = reps.length > 0;
  const steps = reps[0]?.relay.map((p) => p.sessions) ?? [];
  steps.forEach((_, i) => {
    const rel = reps.map((r) => r.relay[i]);
    const ker = reps.map((r) => r.kernel[i]);
    const total = rel.map((p) => p.rssPerSession + p.slabPerSession);
    const kernel = ker.map((p) => p.slabPerSession);
    const ratios = total.map((t, j) => t / kernel[j]);
    const values = [...rel.map((p) => p.rssBytes), ...total, ...kernel];
    if (!values.every((v) => Number.isFinite(v) && v > 0)) complete = false;
    lines.push(`| ${fmt(median(rel.map((p) => p.sessions)))} | ` +
      `${fmt(median(rel.map((p) => p.sockets)))} | ` +
      `${spread(rel.map((p) => p.rssBytes / 2 ** 20))} | ` +
      `${spread(rel.map((p) => p.rssPerSession))} | ` +
      `${spread(rel.map((p) => p.slabPerSession))} | ${spread(total)} | ${spread(kernel)} | ` +
      `**${(median(total) / median(kernel)).toFixed(1)}** ` +
      `[${Math.min(...ratios).toFixed(1)}-${Math.max(...ratios).toFixed(1)}] |`);
  });
  if (steps.length === 0) complete = false;
  return { lines, complete };
}

// ---- Main ----------------------------------------------------------------------------

/** Redraws NAME.svg from NAME.json (a finished run's cells), keeping the title's date. */
function redrawChart(jsonPath: string): number {
  const data = JSON.parse(readFileSync(jsonPath, "utf8")) as { command: string; cells: Cell[] };
  const svgPath = jsonPath.replace(/\.json$/, ".svg");
  const old = readFileSync(svgPath, "utf8");
  const title = /font-weight="bold">([^<]*)<\/text>/.exec(old)?.[1] ?? data.command;
  writeFileSync(svgPath, ratioChart(data.cells, title.replace(/&amp;/g, "&")));
  log(`[bench] redrew ${svgPath}`);
  return 0;
}

async function main(): Promise<number> {
  const chartAt = process.argv.indexOf("--chart");
  if (chartAt >= 0) return redrawChart(process.argv[chartAt + 1] ?? "");
  const args = parseArgs(process.argv.slice(2));
  const unavailable = labUnavailableReason();
  if (unavailable) {
    console.error(`bench/run.ts: cannot run: ${unavailable}`);
    return process.env.CI === "true" ? 1 : 77;
  }
  const started = performance.now();
  const loadStart = loadavg();
  const command = ["node_modules/.bin/bun run bench", ...process.argv.slice(2)].join(" ");
  log(`[bench] ${args.quick ? "quick" : "full"} run, ${args.reps} repetition(s), steps ` +
    `${args.only.join(", ")}`);
  run(["make", "-s", "-C", import.meta.dir]);
  if (args.runtime === "node") {
    // Every relay the steps start runs on Node.js, from a fresh bundle (docs/node.md).
    run([process.execPath, join(import.meta.dir, "..", "scripts", "build_node.ts")]);
    process.env.RELAY_RUNTIME = "node";
    log(`[bench] the relay runs on Node.js (${relayCommand()[0]})`);
  }

  const failures: string[] = [];
  const cells: Cell[] = [];
  let micro: MicroResult | null = null;
  let udp: UdpResult | null = null;
  let tcp: TcpResult | null = null;
  let dns: DnsResult | null = null;
  let quic: QuicResult | null = null;
  const memory: MemoryRep[] = [];
  const stepSeconds: Record<string, number> = {};
  for (const [i, step] of args.only.entries()) {
    log(`[bench] step ${i + 1}/${args.only.length}: ${step}`);
    const t0 = performance.now();
    try {
      if (step === "micro") {
        micro = await runMicro({ small: args.quick, reps: args.reps });
      } else if (step === "udp") {
        const a = udpArgs([...(args.quick ? ["--quick"] : []), "--reps", `${args.reps}`,
          ...(args.pin ? [] : ["--no-pin"]), ...(args.wait && !args.quick ? [] : ["--no-wait"]),
          ...extraPathArgs(args.variants, args.baseline)]);
        udp = await runUdp(a, log);
        cells.push(...udpCells(udp));
      } else if (step === "dns") {
        dns = await runDns(args.quick, args.reps, log);
        cells.push(...dnsCells(dns));
      } else if (step === "quic") {
        quic = await runQuic(args.quick, args.reps, log);
        cells.push(...quicCells(quic));
      } else if (step === "tcp") {
        const a = tcpArgs([...(args.quick ? ["--quick"] : []), "--reps", `${args.reps}`,
          "--no-bun-stream", ...(args.pin ? [] : ["--no-pin"]),
          ...extraPathArgs(args.variants, args.baseline)]);
        tcp = await runTcp(a, log);
        cells.push(...tcpCells(tcp));
      } else if (step === "memory") {
        for (let rep = 0; rep < args.reps; rep++) {
          log(`[bench] memory rep ${rep + 1}/${args.reps}`);
          memory.push(await runMemory(args.quick, log));
        }
      }
    } catch (err) {
      failures.push(`${step}: ${(err as Error).message}`);
      log(`[bench] step ${step} FAILED: ${(err as Error).stack ?? err}`);
    }
    stepSeconds[step] = (performance.now() - t0) / 1000;
    log(`[bench] step ${step} took ${stepSeconds[step].toFixed(0)} s`);
  }
  const elapsedS = (performance.now() - started) / 1000;

  // ---- Report ----
  const lines: string[] = [
    "# Relay benchmark: side by side with kernel forwarding",
    "",
    `- command: \`${command}\` (${args.quick ? "quick" : "full"}: ${args.reps} repetition(s); ` +
      `total ${elapsedS.toFixed(0)} s: ${Object.entries(stepSeconds)
        .map(([k, v]) => `${k} ${v.toFixed(0)} s`).join(", ")})`,
    `- date ${new Date().toISOString()}; kernel ${release()}; ${cpus().length} CPUs ` +
      `(${cpuModel()}); ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM; Bun ${Bun.version}`,
    `- load average at start ${loadStart.map((x) => x.toFixed(2)).join(" ")}, at end ` +
      `${loadavg().map((x) => x.toFixed(2)).join(" ")} (the machine is shared: other ` +
      `engineers' tests run on the same CPUs)`,
    args.pin
      ? `- CPU pinning (UDP and TCP steps; the other steps are not pinned): UDP: ` +
        `${udp?.pinning ?? "udp_gen on cpu0, the relays on cpu1"}; TCP: ` +
        `${tcp?.pinning ?? "generators on cpu0, the proxies on cpu1"}`
      : "- CPU pinning: none, every step (--no-pin: the scheduler's choice)",
    "- every cell: kernel forwarding and the relay in the same lab and run, back to back " +
      "per repetition (the order rotates); UDP cells also run the C relay (bench/c_relay.c, " +
      "epoll + recvmmsg/sendmmsg), TCP cells HAProxy 2.6" +
      (args.baseline ? `, and "before": the relay of ${args.baseline} (--baseline)` : "") +
      (args.variants.length
        ? `, and the variants ${args.variants.map((v) => `${v.name} = this relay with ` +
          `\`${JSON.stringify(v.patch)}\` merged over its config`).join("; ")}`
        : "") +
      "; median [min-max] over repetitions; every ratio a/b = a's median / b's median " +
      "(ratio of medians), then [min-max] of the per-repetition ratios",
    "- gen-bound: runs in which the load generator was saturated, so the number may describe " +
      "the generator rather than the path (UDP: rule in bench/udp_gen.c; DNS: dnsperf >= 90% of " +
      "a CPU; QUIC: gtlsclient or gtlsserver >= 90% of a CPU; TCP: iperf3 sender or tcp_load " +
      ">= 90% of a CPU). A kernel run that is generator-bound makes the ratio an upper bound.",
    "",
    "## End-to-end: relay / kernel forwarding",
    "",
    ...[...new Set(cells.map((c) => c.section))].flatMap((section) => [
      `### ${section}`, "", ...cellTable(cells.filter((c) => c.section === section)), ""]),
    "![relay/kernel per cell](latest.svg)",
    "",
  ];
  const costed = cells.filter((c) => c.costs && Object.keys(c.costs).length);
  if (costed.length) {
    const perf = (udp?.perf ?? true) && (tcp?.perf ?? true);
    lines.push("## What each proxy costs per unit of work", "",
      "Per proxy process (all threads), over the measured window, medians over repetitions: " +
        "CPU us = utime+stime (/proc/PID/stat); system calls = `perf stat -e " +
        "raw_syscalls:sys_enter -p PID`, attached with its counters off, switched on " +
        "through its control FIFO after the warmup (UDP) or as the generator starts (TCP) " +
        "and off at the end (perf counts a tracepoint, cheap " +
        "but not free, and is attached the same way to every proxy path" +
        (perf ? "" : "; perf was unavailable here: \"-\"") + "); context switches = " +
        "voluntary + nonvoluntary (/proc/PID/task/*/status). Units: UDP per relayed " +
        "datagram (a request/response transaction is 2, one-way counts what the sink " +
        "received), rate x the counters' window; TCP iperf3 per GB the sender sent " +
        "(its omitted first second included), conn/s per connection (tcp_load's warmup " +
        "included).", "", ...costTable(costed), "");
  }
  if (args.only.includes("memory")) {
    const m = memoryTable(memory);
    if (!m.complete) failures.push("memory: some step produced no number");
    lines.push("## Memory per UDP session", "",
      `${memory.length} repetition(s), median [min-max]; bytes per session = growth since ` +
        "before the first flow / sessions. Relay: VmRSS of the relay process (its session " +
        "table is allocated at start for udp.sessionsMax 131072, lowered at start to fit " +
        "RLIMIT_NOFILE (src/config/limits.ts), so this is what sessions add " +
        "on top) and the machine's kernel slab (/proc/meminfo Slab: upstream sockets and " +
        "conntrack entries). Kernel forwarding: the same flows through the router with the " +
        "same nft rules and no relay: kernel slab per flow (its conntrack entries). Shape: N " +
        "client ports (IPv4) each to 1 destination port (N sessions, one upstream socket " +
        `each), then each to ${FANOUT} destination ports (${FANOUT}N sessions; the default ` +
        "endpoint-independent mapping keeps one upstream socket per client port). 100k " +
        "sockets in one process are out of reach here: RLIMIT_NOFILE's hard limit is 20000 " +
        "in this container and cannot be raised. The slab is machine-wide, so other " +
        "processes' allocations add noise.",
      "", ...m.lines, "");
    const counters = memory.at(-1)?.relayCounters;
    if (counters) {
      lines.push(`Relay counters after the last fill: ${Object.entries(counters)
        .map(([k, v]) => `${k}=${v}`).join(", ")}; base RSS before the first flow ` +
        `${(median(memory.map((r) => r.relayRssBaseBytes)) / 2 ** 20).toFixed(1)} MiB.`, "");
    }
  }
  if (micro) {
    lines.push("## Micro-benchmarks (tinybench)", "",
      `${micro.reps} repetition(s) of ${micro.timeMs} ms per task; ns per unit, median [min-max] ` +
        "over repetitions; ratio = task / the group's baseline (the first task of each group). " +
        "The checksum sums every task's results (it depends on iteration counts; it keeps the " +
        "work observable).", "",
      "```", ...microLines(micro), "```", "");
  }
  if (udp) {
    lines.push(`UDP: ${udp.warmupMs} ms warmup + ${udp.durationMs} ms measured per run, IPv4, ` +
      "flows over 4 server addresses, replies with IP_PKTINFO; req/resp keeps 1 request in " +
      "flight per flow, one-way sends at the maximum rate (udp_gen, sendmmsg batches of 32) and " +
      `counts what the sink received. Router UDP RcvbufErrors over the step: ` +
      `${udp.rcvbufErrors.router}.`, "");
  }
  if (tcp) {
    lines.push(`TCP: iperf3 -t ${tcp.iperfSeconds} (first second omitted); connections/s: ` +
      `tcp_load, ${tcp.cpsWarmupMs} ms warmup + ${tcp.cpsMeasureMs} ms, connect, 64 B each way, ` +
      "close. The pure-Bun relay: `bun bench/tcp.ts`.", "");
  }
  if (dns) {
    lines.push(`DNS: dnsperf -l ${dns.seconds} -c ${dns.clients} -q ${dns.outstanding} -T 1, ` +
      "128 A/AAAA questions dnsmasq answers from --host-record." +
      (Object.keys(dns.relayCounters).length
        ? ` Relay drops: ${JSON.stringify(dns.relayCounters)}.`
        : ""),
    "");
  }
  if (quic) {
    lines.push(`QUIC: gtlsclient downloads ${quic.mib} MiB of random bytes from gtlsserver ` +
      "(HTTP/3, TLS via GnuTLS); MB/s over gtlsclient's whole run (start, handshake, transfer)." +
      (Object.keys(quic.relayCounters).length
        ? ` Relay drops: ${JSON.stringify(quic.relayCounters)}.`
        : ""),
    "");
  }
  const incomplete = cells.filter((c) => !cellComplete(c));
  for (const c of incomplete) failures.push(`${c.section} ${c.name}: no number`);
  if (failures.length) lines.push("## Failures", "", ...failures.map((f) => `- ${f}`), "");
  const report = lines.join("\n");

  console.log(report);
  const dir = args.quick ? QUICK_RESULTS : RESULTS;
  const name = args.quick ? "quick" : "latest";
  mkdirSync(dir, { recursive: true });
  const svgTitle = `relay vs kernel forwarding, ${cpus().length} CPUs, ` +
    `${new Date().toISOString().slice(0, 16)}Z${args.quick ? " (quick)" : ""}`;
  writeFileSync(join(dir, `${name}.md`), report.replace("](latest.svg)", `](${name}.svg)`) + "\n");
  writeFileSync(join(dir, `${name}.svg`), ratioChart(cells, svgTitle));
  // The numbers behind the report, so it can be checked or re-rendered without a rerun.
  writeFileSync(join(dir, `${name}.json`), JSON.stringify({ command, cells, memory, micro,
    failures }, null, 1) + "\n");
  log(`[bench] wrote ${join(dir, name)}.md and .svg in ${elapsedS.toFixed(0)} s`);
  if (failures.length) {
    log(`[bench] ${failures.length} failure(s):\n  ${failures.join("\n  ")}`);
    return 1;
  }
  return 0;
}

process.exit(await main());
