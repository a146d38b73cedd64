// End-to-end TCP benchmark (issue 4, acceptance point 3): iperf3 single-stream
// throughput and connections per second through the relay, through HAProxy 2.6 and
// through plain kernel forwarding, in one lab run.
//
//   node_modules/.bin/bun bench/tcp.ts [--quick] [--reps N] [--no-haproxy] [--no-bun-stream]
//       [--node] [--no-pin] [--variant NAME=<JSON>]... [--baseline DIR]
//
//   client ns (iperf3 -c | tcp_load client) ── router ns ── server ns (iperf3 -s | tcp_load server)
//
// The paths differ only by destination port, so nothing is reinstalled between runs:
//   kernel forwarding  5201 (iperf3) / 7201 (cps)   not intercepted: plain routing
//   relay              5202 / 7202                  nft TPROXY -> relay listener 127.0.0.1:12346
//   HAProxy 2.6        5203 / 7203                  nft TPROXY -> haproxy `bind ... transparent`
//   pure-Bun relay     5204 / 7204                  nft TPROXY -> bench/tcp_bun_stream.ts (the
//                                                   baseline the C splice engine replaced)
//   relay on Node.js   5205 / 7205                  --node: the same relay on Node.js (issue 15),
//                                                   listener 127.0.0.1:12352
//   relay before       5206 / 7206                  --baseline DIR: the relay of another built
//                                                   checkout (its src/main.ts, build/, wasm),
//                                                   same config, listener 127.0.0.1:12353
//   variant i          5210+i / 7210+i              --variant NAME=<JSON>: this checkout's relay
//                                                   with the JSON deep-merged over its config,
//                                                   listener 127.0.0.1:12360+i
// Pinned by default (--no-pin: the scheduler's choice): the load generators (iperf3 client
// and server, tcp_load client and server) on cpu0, every proxy (all threads) on cpu1.
// Per proxy path and run: CPU, system calls (perf stat) and context switches per GB
// (iperf3) and per connection (tcp_load), bench/proxy_stats.ts.
// Both proxies connect upstream from the router's address (the default source) and
// HAProxy runs with its default settings (no splice options, nbthread = CPUs).
//
// cps: tcp_load keeps `concurrency` transactions in flight: connect, 64 B request,
// 64 B response, the server closes, the client closes. Counted in the measured window.
// Each repetition runs the paths back to back in an order that rotates per repetition;
// the table shows medians with min-max and the ratios to kernel forwarding. Results
// also go to bench/results/tcp-latest.md.
//
// bench/run.ts imports runTcp() (measurements as data) and renderTcpReport().
//
// Generator-bound (the number may describe the load generator, not the path): the
// iperf3 sender used >= 90% of a CPU (its cpu_utilization_percent.host_total; one
// stream is one thread), or tcp_load's user+sys CPU was >= 90% of its wall time (one
// thread that hardly ever waited in epoll). Same threshold as bench/udp_gen.c.
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../src/config/load.ts";
import { LAB, Lab, labUnavailableReason, run } from "../test/lab/netns.ts";
import { envRuntime, RelayProcess } from "../test/lab/relay_process.ts";
import { nftRuleset, policyRoutingCommands } from "../src/rules/nft.ts";
import {
  addVariant,
  checkBaseline,
  costPerUnit,
  deepMerge,
  ProcessWindow,
  perfAvailable,
  type UnitCost,
  type Variant,
} from "./proxy_stats.ts";

const ROOT = join(import.meta.dir, "..");
const LOAD_SOURCE = join(import.meta.dir, "tcp_load.c");
const LOAD = join(ROOT, "build", "bench", "tcp_load");
const RESULTS = join(import.meta.dir, "results", "tcp-latest.md");

/** The fixed paths, "before" (--baseline) or a --variant's name. */
type PathName = string;
const FIXED_LABEL: Record<string, string> = {
  kernel: "kernel",
  relay: "relay",
  haproxy: "HAProxy 2.6",
  bunstream: "pure-Bun relay",
  node: "relay on Node.js",
  before: "relay before",
};
const PATH_LABEL = (p: PathName) => FIXED_LABEL[p] ?? `variant ${p}`;
const FIXED_IPERF_PORT: Record<string, number> = {
  kernel: 5201,
  relay: 5202,
  haproxy: 5203,
  bunstream: 5204,
  node: 5205,
  before: 5206,
};
const FIXED_CPS_PORT: Record<string, number> = {
  kernel: 7201,
  relay: 7202,
  haproxy: 7203,
  bunstream: 7204,
  node: 7205,
  before: 7206,
};
/** --variant i (0-based): iperf3 5210+i, tcp_load 7210+i, relay listener 12360+i. */
const VARIANT_PORT_OFFSET = 10;
const VARIANT_LISTENER_PORT = 12360;
const BEFORE_LISTENER_PORT = 12353;
/** Variant names in --variant order, so each gets its own ports. */
let variantOrder: string[] = [];
function variantIndex(p: PathName): number {
  const i = variantOrder.indexOf(p);
  if (i < 0) throw new Error(`unknown path ${p}`);
  return i;
}
const IPERF_PORT = (p: PathName) =>
  FIXED_IPERF_PORT[p] ?? FIXED_IPERF_PORT.kernel - 1 + VARIANT_PORT_OFFSET + variantIndex(p);
const CPS_PORT = (p: PathName) =>
  FIXED_CPS_PORT[p] ?? FIXED_CPS_PORT.kernel - 1 + VARIANT_PORT_OFFSET + variantIndex(p);
const NODE_LISTENER_PORT = 12352;
const RELAY_LISTENER_PORT = 12346;
const HAPROXY_LISTENER_PORT = 12350;
const BUN_STREAM_LISTENER_PORT = 12351;
const BUN_STREAM = join(import.meta.dir, "tcp_bun_stream.ts");
const CPS_CONCURRENCY = 64;
const REPS_MAX = 20;
/** Targets from the issue: HAProxy 2.6 reaches about these shares of kernel forwarding. */
const TARGET_RATIO = { iperf: 0.45, cps: 0.6 };
/** A generator that used this share of a CPU was (close to) saturated: bench/udp_gen.c. */
const GENERATOR_BUSY_FRACTION = 0.9;

export interface Args {
  /** The arguments as given (for the report's command line). */
  argv: string[];
  quick: boolean;
  reps: number;
  haproxy: boolean;
  bunStream: boolean;
  /** The same relay on Node.js as a path of its own (issue 15). */
  node: boolean;
  /** Generators on cpu0, proxies on cpu1 (the default; --no-pin). */
  pin: boolean;
  /** --variant NAME=<JSON>: more relays of this checkout with their config patched. */
  variants: Variant[];
  /** --baseline DIR: the relay of another checkout, path "before". */
  baseline: string | null;
}

export function parseArgs(argv: string[]): Args {
  const args: Args = { argv, quick: false, reps: 3, haproxy: true, bunStream: true, node: false,
    pin: true, variants: [], baseline: null };
  let repsGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--quick") args.quick = true;
    else if (a === "--no-haproxy") args.haproxy = false;
    else if (a === "--no-bun-stream") args.bunStream = false;
    else if (a === "--node") args.node = true;
    else if (a === "--pin") args.pin = true;
    else if (a === "--no-pin") args.pin = false;
    else if (a === "--variant") addVariant(args.variants, argv[++i]);
    else if (a === "--baseline") args.baseline = checkBaseline(argv[++i]);
    else if (a === "--reps") {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1 || n > REPS_MAX) throw new Error(`--reps: 1-${REPS_MAX}`);
      args.reps = n;
      repsGiven = true;
    } else {
      throw new Error(`unknown argument ${a}\nusage: bun bench/tcp.ts [--quick] [--reps N] ` +
        `[--no-haproxy] [--no-bun-stream] [--node] [--no-pin] [--variant NAME=<JSON>]... ` +
        `[--baseline DIR]`);
    }
  }
  if (args.quick && !repsGiven) args.reps = 1;
  return args;
}

/** Builds tcp_load when missing or older than its source. */
export function buildLoad(): void {
  const stale = (() => {
    try {
      return statSync(LOAD).mtimeMs < statSync(LOAD_SOURCE).mtimeMs;
    } catch {
      return true;
    }
  })();
  if (!stale) return;
  mkdirSync(join(ROOT, "build", "bench"), { recursive: true });
  run(["cc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wshadow", "-o", LOAD, LOAD_SOURCE]);
}

function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export async function waitForTcpPort(lab: Lab, ns: string, port: number, timeoutMs = 5000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (performance.now() < end) {
    const r = lab.exec(ns, ["ss", "-Htln", `sport = :${port}`], undefined, true);
    if (r.stdout.trim().length > 0) return;
    await Bun.sleep(20);
  }
  throw new Error(`nothing listens on tcp port ${port} in ${ns} within ${timeoutMs} ms`);
}

/** taskset prefix that keeps a load generator on cpu0 (pinned runs), else nothing. */
const onCpu0 = (pin: boolean) => (pin ? ["taskset", "-c", "0"] : []);

export function iperf(lab: Lab, port: number, seconds: number, pin = false) {
  const r = lab.exec(lab.client, [...onCpu0(pin), "iperf3", "-c", LAB.server4, "-p", `${port}`,
    "-t", `${seconds}`, "-O", "1", "-J"]);
  const report = JSON.parse(r.stdout);
  // The whole run's bytes (the omitted first second included), for CPU per byte.
  const bytes = report.end.sum_sent.bytes + (report.intervals as any[])
    .filter((i) => i.sum.omitted).reduce((n, i) => n + i.sum.bytes, 0);
  const senderCpu = Number(report.end.cpu_utilization_percent?.host_total ?? NaN) / 100;
  return { gbps: report.end.sum_received.bits_per_second / 1e9, bytes, senderCpu };
}

export function cps(lab: Lab, port: number, warmupMs: number, measureMs: number, pin = false) {
  const argv = ["ip", "netns", "exec", lab.client, ...onCpu0(pin), LOAD, "client", LAB.server4,
    `${port}`, `${CPS_CONCURRENCY}`, `${warmupMs}`, `${measureMs}`];
  const started = performance.now();
  // Bun.spawnSync for the child's rusage (`ip netns exec` execs tcp_load: same process).
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  const wallS = (performance.now() - started) / 1000;
  if (r.exitCode !== 0) throw new Error(`${argv.join(" ")} -> exit ${r.exitCode}: ${r.stderr}`);
  const u = r.resourceUsage.cpuTime;
  const out = JSON.parse(r.stdout.toString().trim().split("\n").pop()!) as {
    cps: number;
    completed: number;
    failedSocket: number;
    failedReset: number;
    failedShort: number;
  };
  return { ...out, cpuFraction: Number(u.user + u.system) / 1e6 / wallS };
}

const HAPROXY_CONFIG = `global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend tproxy_in
  bind 127.0.0.1:${HAPROXY_LISTENER_PORT} transparent
  default_backend original_destination
backend original_destination
  # 0.0.0.0 and no port: the connection's original destination (TPROXY)
  server original 0.0.0.0:0
`;

export interface TcpResult {
  args: Args;
  paths: PathName[];
  iperfSeconds: number;
  cpsWarmupMs: number;
  cpsMeasureMs: number;
  /** Per path, one value per repetition. */
  gbps: Record<string, number[]>;
  cps: Record<string, number[]>;
  cpuPerGb: Record<string, number[]>;
  cpuPerConnUs: Record<string, number[]>;
  /** Per proxy path, one per repetition: CPU us, system calls, context switches per GB. */
  costPerGb: Record<string, UnitCost[]>;
  /** The same per connection (tcp_load; warmup included, like cpuPerConnUs). */
  costPerConn: Record<string, UnitCost[]>;
  /** Whether system calls were counted (perf stat). */
  perf: boolean;
  pinning: string;
  /** Per path and repetition: was the generator saturated (rule at the top)? */
  iperfGeneratorBound: Record<string, boolean[]>;
  cpsGeneratorBound: Record<string, boolean[]>;
  failures: Record<string, number>;
  relayMetrics: any;
  bufferBytesMax: number;
  elapsedS: number;
}

/** Runs the lab and every repetition; `log` gets one progress line per run. */
export async function runTcp(args: Args, log: (line: string) => void): Promise<TcpResult> {
  const reason = labUnavailableReason();
  if (reason) throw new Error(`bench/tcp.ts: ${reason}`);
  if (args.haproxy && run(["sh", "-c", "command -v haproxy"], undefined, true).status !== 0) {
    throw new Error("bench/tcp.ts: haproxy missing (apt-get install haproxy, or --no-haproxy)");
  }
  buildLoad();
  const iperfSeconds = args.quick ? 2 : 5;
  const cpsWarmupMs = args.quick ? 300 : 500;
  const cpsMeasureMs = args.quick ? 1500 : 3000;
  const paths: PathName[] = ["kernel", "relay"];
  if (args.haproxy) paths.push("haproxy");
  if (args.bunStream) paths.push("bunstream");
  if (args.node) paths.push("node");
  if (args.baseline) paths.push("before");
  variantOrder = args.variants.map((v) => v.name);
  paths.push(...variantOrder);
  /** The proxies intercepted by bench_others (the relays are in the relay's own rules). */
  const others = paths.filter((p) => p === "haproxy" || p === "bunstream");
  const perf = perfAvailable();
  if (!perf) log("[bench] tcp: perf stat cannot count raw_syscalls here: no system call counts");

  const dir = mkdtempSync(join(tmpdir(), "relay-bench-tcp-"));
  const lab = Lab.create();
  let relay: RelayProcess | null = null;
  let onNode: RelayProcess | null = null;
  /** The "before" relay and the variants, by path name. */
  const extraRelays = new Map<PathName, RelayProcess>();
  const started = performance.now();
  try {
    // Short-lived connections: ports from the whole range, TIME_WAIT reuse on connect.
    for (const ns of [lab.client, lab.router]) {
      lab.exec(ns, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
      lab.exec(ns, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    }
    // The router namespace tracks every connection (a proxy's twice: client side and
    // upstream side) and keeps a closed one 120 s in TIME_WAIT: with the C relay, HAProxy,
    // "before" and variants each making ~45k connections a repetition, its 262144-entry
    // conntrack table filled in the second repetition ("nf_conntrack: table full,
    // dropping packet": SYNs lost, 0 connections/s, an iperf3 stuck in SYN-SENT). The
    // table size is the host's; the timeout is this namespace's own.
    lab.exec(lab.router, ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"]);
    const raw = {
      listeners: [{ name: "tcp4", protocol: "tcp", address: "127.0.0.1", port: RELAY_LISTENER_PORT }],
      intercept: [{ listener: "tcp4", ports: [FIXED_IPERF_PORT.relay, FIXED_CPS_PORT.relay] }],
    };
    const rawNode = {
      listeners: [{ name: "node4", protocol: "tcp", address: "127.0.0.1", port: NODE_LISTENER_PORT }],
      intercept: [{ listener: "node4", ports: [FIXED_IPERF_PORT.node, FIXED_CPS_PORT.node] }],
      // Beside the other relay: no metrics endpoint (both would want port 9477).
      metrics: { port: 0 },
    };
    /** The relay's config on path `p`'s own listener and ports (before and the variants). */
    const relayOn = (p: PathName, port: number) => ({
      ...raw,
      listeners: [{ name: `${p}_tcp4`, protocol: "tcp", address: "127.0.0.1", port }],
      intercept: [{ listener: `${p}_tcp4`, ports: [IPERF_PORT(p), CPS_PORT(p)] }],
      // Beside the relay: no metrics endpoint (both would want port 9477).
      metrics: { port: 0 },
    });
    const extraConfigs = new Map<PathName, Record<string, any>>();
    if (args.baseline) extraConfigs.set("before", relayOn("before", BEFORE_LISTENER_PORT));
    for (const [i, v] of args.variants.entries()) {
      extraConfigs.set(v.name, deepMerge(relayOn(v.name, VARIANT_LISTENER_PORT + i), v.patch));
    }
    const extras = [...extraConfigs.values()];
    // One rule set for every relay (each listener intercepts its own ports).
    const config = parseConfig({
      metrics: { port: 0 },
      listeners: [...raw.listeners, ...(args.node ? rawNode.listeners : []),
        ...extras.flatMap((c) => c.listeners)],
      intercept: [...raw.intercept, ...(args.node ? rawNode.intercept : []),
        ...extras.flatMap((c) => c.intercept)],
    });
    lab.installRules(nftRuleset(config), policyRoutingCommands(config));
    // The other proxies' interception in their own table; the relay's table already
    // delivers packets of established transparent sockets (theirs included) locally.
    const listenerOf: Partial<Record<PathName, number>> = {
      haproxy: HAPROXY_LISTENER_PORT,
      bunstream: BUN_STREAM_LISTENER_PORT,
    };
    lab.exec(lab.router, ["nft", "-f", "-"], [
      "table inet bench_others {",
      "  chain prerouting {",
      "    type filter hook prerouting priority mangle; policy accept;",
      ...others.map((p) => `    iifname "${LAB.routerClientIf}" meta nfproto ipv4 tcp dport ` +
        `{ ${IPERF_PORT(p)}, ${CPS_PORT(p)} } tproxy ip to 127.0.0.1:${listenerOf[p]} ` +
        `meta mark set ${config.tproxyMark} accept`),
      "  }",
      "}",
    ].join("\n") + "\n");

    // The generators' server halves share cpu0 with their clients when pinned.
    const gen = onCpu0(args.pin);
    for (const p of paths) {
      lab.spawn(lab.server, [...gen, "iperf3", "-s", "-p", `${IPERF_PORT(p)}`]);
    }
    lab.spawn(lab.server, [...gen, LOAD, "server", ...paths.map((p) => `${CPS_PORT(p)}`)]);
    const configPath = join(dir, "relay.json");
    writeFileSync(configPath, JSON.stringify(raw));
    relay = await RelayProcess.start(lab, configPath);
    // `ip netns exec` execs its command: each spawned pid is the proxy's own.
    const proxyPid: Partial<Record<PathName, number>> = { relay: relay.proc.pid };
    if (args.node) {
      const nodePath = join(dir, "node.json");
      writeFileSync(nodePath, JSON.stringify(rawNode));
      onNode = await RelayProcess.start(lab, nodePath, undefined, [], "node");
      proxyPid.node = onNode.proc.pid;
    }
    if (args.haproxy) {
      const haproxyPath = join(dir, "haproxy.cfg");
      writeFileSync(haproxyPath, HAPROXY_CONFIG);
      proxyPid.haproxy = lab.spawn(lab.router, ["haproxy", "-f", haproxyPath, "-db"]).pid;
      await waitForTcpPort(lab, lab.router, HAPROXY_LISTENER_PORT);
    }
    if (args.bunStream) {
      proxyPid.bunstream = lab.spawn(lab.router, [process.execPath, BUN_STREAM, "127.0.0.1",
        `${BUN_STREAM_LISTENER_PORT}`]).pid;
      await waitForTcpPort(lab, lab.router, BUN_STREAM_LISTENER_PORT);
    }
    for (const [p, c] of extraConfigs) {
      const path = join(dir, `${p}.json`);
      writeFileSync(path, JSON.stringify(c));
      const r = await RelayProcess.start(lab, path, undefined, [],
        p === "before" ? "bun" : envRuntime(), p === "before" ? args.baseline : null);
      extraRelays.set(p, r);
      proxyPid[p] = r.proc.pid;
    }
    if (args.pin) {
      for (const pid of Object.values(proxyPid)) {
        run(["taskset", "-a", "-p", "-c", "1", `${pid}`]);
      }
    }
    const pinning = args.pin
      ? "iperf3 client and server, tcp_load client and server on cpu0; every proxy (all " +
        "threads) on cpu1 (taskset)"
      : "none (scheduler's choice)";
    const windowOf = (p: PathName) =>
      proxyPid[p] === undefined ? null : new ProcessWindow(proxyPid[p]!, perf);
    for (const p of paths) {
      await waitForTcpPort(lab, lab.server, IPERF_PORT(p));
      await waitForTcpPort(lab, lab.server, CPS_PORT(p));
    }
    lab.warmNeighbours();

    const gbps: Record<string, number[]> = {};
    const rate: Record<string, number[]> = {};
    /** Proxy CPU seconds per GB relayed (iperf3) and CPU microseconds per connection. */
    const cpuPerGb: Record<string, number[]> = {};
    const cpuPerConnUs: Record<string, number[]> = {};
    const costPerGb: Record<string, UnitCost[]> = {};
    const costPerConn: Record<string, UnitCost[]> = {};
    const failures: Record<string, number> = {};
    const iperfGeneratorBound: Record<string, boolean[]> = {};
    const cpsGeneratorBound: Record<string, boolean[]> = {};
    for (const p of paths) {
      gbps[p] = [];
      rate[p] = [];
      cpuPerGb[p] = [];
      cpuPerConnUs[p] = [];
      costPerGb[p] = [];
      costPerConn[p] = [];
      failures[p] = 0;
      iperfGeneratorBound[p] = [];
      cpsGeneratorBound[p] = [];
    }
    for (let rep = 0; rep < args.reps; rep++) {
      const order = paths.map((_, i) => paths[(i + rep) % paths.length]);
      for (const p of order) {
        // The proxy's counters cover each generator's whole run (iperf3's omitted first
        // second and tcp_load's warmup included): the units are counted the same way.
        const iperfWindow = windowOf(p);
        await iperfWindow?.start();
        const t = iperf(lab, IPERF_PORT(p), iperfSeconds, args.pin);
        const iperfCounts = await iperfWindow?.stop();
        gbps[p].push(t.gbps);
        if (iperfCounts) {
          const cost = costPerUnit(iperfCounts, t.bytes / 1e9);
          costPerGb[p].push(cost);
          cpuPerGb[p].push(cost.cpuUs / 1e6);
        }
        const cpsWindow = windowOf(p);
        await cpsWindow?.start();
        const c = cps(lab, CPS_PORT(p), cpsWarmupMs, cpsMeasureMs, args.pin);
        const cpsCounts = await cpsWindow?.stop();
        rate[p].push(c.cps);
        // Warmup connections included: counts over the whole run / every connection in it.
        const conns = c.completed * (cpsWarmupMs + cpsMeasureMs) / cpsMeasureMs;
        if (cpsCounts) {
          const cost = costPerUnit(cpsCounts, conns);
          costPerConn[p].push(cost);
          cpuPerConnUs[p].push(cost.cpuUs);
        }
        failures[p] += c.failedSocket + c.failedReset + c.failedShort;
        iperfGeneratorBound[p].push(t.senderCpu >= GENERATOR_BUSY_FRACTION);
        cpsGeneratorBound[p].push(c.cpuFraction >= GENERATOR_BUSY_FRACTION);
        log(`[bench] tcp rep ${rep + 1}/${args.reps} ${PATH_LABEL(p)}: ` +
          `${gbps[p].at(-1)!.toFixed(2)} Gbit/s (iperf3 sender cpu ${t.senderCpu.toFixed(2)}), ` +
          `${Math.round(c.cps)} conn/s (tcp_load cpu ${c.cpuFraction.toFixed(2)})`);
      }
    }
    const relayMetrics = (await relay.metrics()).tcp;
    return {
      args, paths, iperfSeconds, cpsWarmupMs, cpsMeasureMs, gbps, cps: rate, cpuPerGb,
      cpuPerConnUs, costPerGb, costPerConn, perf, pinning, iperfGeneratorBound,
      cpsGeneratorBound, failures, relayMetrics,
      bufferBytesMax: config.tcp.bufferBytesMax, elapsedS: (performance.now() - started) / 1000,
    };
  } finally {
    if (relay) await relay.stop().catch(() => {});
    if (onNode) await onNode.stop().catch(() => {});
    for (const r of extraRelays.values()) await r.stop().catch(() => {});
    lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The markdown report of one runTcp() result (also bench/results/tcp-latest.md). */
export function renderTcpReport(r: TcpResult): string {
  const { args, paths, iperfSeconds, cpsWarmupMs, cpsMeasureMs, relayMetrics, failures } = r;
  const command = `node_modules/.bin/bun bench/tcp.ts${args.argv.map((a) => ` ${a}`).join("")}`;
  const others = paths.filter((p) => p !== "kernel" && p !== "relay");
  const node = paths.includes("node");
  const gbps = r.gbps;
  const rate = r.cps;
  const cpuPerGb = r.cpuPerGb;
  const cpuPerConnUs = r.cpuPerConnUs;
  const fmtRange = (v: number[], digits: number) =>
    `${median(v).toFixed(digits)} [${Math.min(...v).toFixed(digits)}-${Math.max(...v).toFixed(digits)}]`;
  const ratio = (p: PathName, v: Record<string, number[]>, target: number) => {
    const r = median(v[p]) / median(v.kernel);
    return `**${r.toFixed(2)}** (${r >= target ? ">=" : "<"} ${target})`;
  };
  /** a / b: ratio of medians, then [min-max] of the per-repetition ratios. */
  const paired = (a: PathName, b: PathName, v: Record<string, number[]>) => {
    const per = v[a].map((x, i) => x / v[b][i]);
    const range = per.length > 1
      ? ` [${Math.min(...per).toFixed(2)}-${Math.max(...per).toFixed(2)}]`
      : "";
    return `**${(median(v[a]) / median(v[b])).toFixed(2)}**${range}`;
  };
  // Beside relay/kernel: relay/HAProxy, after/before, and each variant to the relay and
  // to HAProxy.
  const pairs: Array<[PathName, PathName, string]> = [];
  if (args.haproxy) pairs.push(["relay", "haproxy", "relay/HAProxy"]);
  if (paths.includes("before")) pairs.push(["relay", "before", "after/before"]);
  for (const v of variantOrder.filter((p) => paths.includes(p))) {
    pairs.push([v, "relay", `${v}/relay`]);
    if (args.haproxy) pairs.push([v, "haproxy", `${v}/HAProxy`]);
  }
  const header = ["metric", ...paths.map((p) => `${PATH_LABEL(p)} median [min-max]`),
    "relay/kernel", ...others.map((p) => `${PATH_LABEL(p)}/kernel`),
    ...pairs.map(([, , label]) => label), ...(node ? ["Node.js/Bun"] : []), "gen-bound"];
  const bound = (b: Record<string, boolean[]>) => {
    const parts = paths.filter((p) => b[p].some((x) => x))
      .map((p) => `${PATH_LABEL(p)} ${b[p].filter((x) => x).length}/${b[p].length}`);
    return parts.join(", ") || "no";
  };
  const row = (name: string, v: Record<string, number[]>, digits: number, target: number,
    b: Record<string, boolean[]>) => [
    name, ...paths.map((p) => fmtRange(v[p], digits)), ratio("relay", v, target),
    ...others.map((p) => ratio(p, v, target)),
    ...pairs.map(([a, b]) => paired(a, b, v)),
    ...(node ? [`**${(median(v.node) / median(v.relay)).toFixed(2)}**`] : []), bound(b),
  ];
  const table = [
    `| ${header.join(" | ")} |`,
    `|${header.map(() => "---").join("|")}|`,
    `| ${row("iperf3 1 stream (Gbit/s)", gbps, 2, TARGET_RATIO.iperf, r.iperfGeneratorBound)
      .join(" | ")} |`,
    `| ${row(`conn/s (${CPS_CONCURRENCY} in flight, 64 B each way)`, rate, 0, TARGET_RATIO.cps,
      r.cpsGeneratorBound).join(" | ")} |`,
  ];
  const cpuRow = (name: string, v: Record<string, number[]>, digits: number) =>
    `| ${name} | ${paths.map((p) => (p === "kernel" ? "-" : fmtRange(v[p], digits))).join(" | ")} |`;
  const cpuTable = [
    `| proxy CPU (user+sys, all threads) | ${paths.map((p) => PATH_LABEL(p)).join(" | ")} |`,
    `|${["", ...paths].map(() => "---").join("|")}|`,
    cpuRow("iperf3: CPU s per GB relayed", cpuPerGb, 3),
    cpuRow("conn/s: CPU us per connection", cpuPerConnUs, 0),
  ];
  const proxies = paths.filter((p) => p !== "kernel");
  const costCell = (costs: UnitCost[], f: (c: UnitCost) => number, digits: number) => {
    const v = median(costs.map(f));
    return Number.isFinite(v) ? v.toFixed(digits) : "-";
  };
  const costRow = (name: string, costs: Record<string, UnitCost[]>, digits: number[]) =>
    `| ${name} | ${proxies.map((p) => [costCell(costs[p], (c) => c.cpuUs, digits[0]),
      costCell(costs[p], (c) => c.syscalls, digits[1]),
      costCell(costs[p], (c) => c.contextSwitches, digits[2])].join(" / ")).join(" | ")} |`;
  const costTable = [
    `| CPU us / system calls / context switches | ${proxies.map(PATH_LABEL).join(" | ")} |`,
    `|${["", ...proxies].map(() => "---").join("|")}|`,
    costRow("iperf3: per GB relayed", r.costPerGb, [0, 0, 0]),
    costRow("conn/s: per connection", r.costPerConn, [1, 1, 2]),
  ];
  const report = [
    "## TCP relay benchmark",
    "",
    `- command: \`${command}\``,
    `- date ${new Date().toISOString()}, kernel ${release()}, ${cpus().length} CPUs ` +
      `(${cpus()[0]?.model.trim() ?? "?"}), load average at end ${loadavg().map((l) => l.toFixed(2)).join(" ")}`,
    `- ${args.reps} repetition(s); iperf3 -t ${iperfSeconds} (-O 1 omitted), cps warmup ${cpsWarmupMs} ms ` +
      `+ measured ${cpsMeasureMs} ms; paths rotate per repetition; total ` +
      `${Math.round(r.elapsedS)} s`,
    `- CPU pinning: ${r.pinning}`,
    "- ratios: ratio of medians, then [min-max] of the per-repetition ratios (the paths of a " +
      "repetition ran back to back)",
    `- targets (ratio to kernel forwarding): iperf3 >= ${TARGET_RATIO.iperf}, conn/s >= ${TARGET_RATIO.cps}`,
    `- gen-bound: runs (count/reps) where iperf3's sender or tcp_load used >= ` +
      `${GENERATOR_BUSY_FRACTION * 100}% of a CPU (rule at the top of bench/tcp.ts)`,
    `- relay: TCP splice engine (C thread), tcp.bufferBytesMax ${r.bufferBytesMax} B per ` +
      `direction; HAProxy 2.6 default settings; pure-Bun relay: bench/tcp_bun_stream.ts ` +
      `(Bun.listen({fd}) + Bun.connect, bytes through JavaScript)`,
    "",
    ...table,
    "",
    "Proxy CPU during the same runs (the kernel's own forwarding work is not attributed to a process;",
    "softirq work done while a proxy thread sends is charged to that proxy):",
    "",
    ...cpuTable,
    "",
    "Per unit of work, each proxy process (all threads), medians over repetitions: CPU us " +
      "(utime+stime), system calls (`perf stat -e raw_syscalls:sys_enter -p PID`, attached " +
      `the same way to every path${r.perf ? "" : "; perf unavailable: \"-\""}) and ` +
      "context switches (voluntary + nonvoluntary, /proc/PID/task/*/status). Counted over " +
      "each generator's whole run (iperf3's omitted second, tcp_load's warmup included).",
    "",
    ...costTable,
    "",
    `Failed transactions (socket/reset/short, all reps): ` +
      paths.map((p) => `${PATH_LABEL(p)} ${failures[p]}`).join(", "),
    "",
    `Relay counters at the end: accepted ${relayMetrics.accepted}, connected ${relayMetrics.connected}, ` +
      `closed ${relayMetrics.closed}, clientResets ${relayMetrics.clientResets}, upstreamResets ` +
      `${relayMetrics.upstreamResets}, rejectedLimit ${relayMetrics.rejectedLimit}, connectRefused ` +
      `${relayMetrics.connectRefused}, eventsLost ${relayMetrics.eventsLost}. (tcp_load exits with its ` +
      `${CPS_CONCURRENCY} transactions in flight when its window ends; the kernel resets those with ` +
      `unread data, which the relay counts as clientResets.)`,
    "",
  ].join("\n");
  return report;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const reason = labUnavailableReason();
  if (reason) {
    console.error(`bench/tcp.ts: ${reason}`);
    return process.env.CI === "true" ? 1 : 77;
  }
  const result = await runTcp(args, (line) => console.error(line));
  const report = renderTcpReport(result);
  console.log(report);
  mkdirSync(join(import.meta.dir, "results"), { recursive: true });
  writeFileSync(RESULTS, report);
  return 0;
}

if (import.meta.main) process.exit(await main());
