// bun bench/dns_forced.ts [--quick] [--reps N] [--responder fast|dnsmasq] [--no-pin] [--node]
//
// --node: a fourth path, the same relay on Node.js (dist/node: bash scripts/build.sh) with
// the same rule on port 5354 (TPROXY tells the relays apart by port only), pinned like
// the Bun one; the report adds Node / Bun (issue 15).
// The forced resolver (issue 12) beside kernel forwarding and beside dnsdist, in one lab
// and one run: dnsperf in the client namespace, one responder on E3:5300 in the server
// namespace behind all three paths.
//
// The responder is build/bench/dns_responder by default (bench/dns_responder.c: C,
// recvmmsg/sendmmsg, every name answered): dnsmasq answers about 40k queries/s on one
// core here, below what kernel forwarding carries, so with it behind every path the run
// measures dnsmasq (--responder dnsmasq shows that). Pinning (default; --no-pin: the
// scheduler's choice): dnsperf and the responder on cpu0, the proxy under test (the relay,
// all its threads, or dnsdist, all its threads) alone on cpu1, so each proxy gets one
// core and the same generator.
//
//   kernel    dnsperf -s E3 -p 5300: the router forwards, nothing intercepts (the ceiling)
//   relay     dnsperf -s E5 -p 53 (nothing listens there): nft TPROXY hands udp/53 to the
//             relay, whose rule sends it to a `forward` outbound (E3:5300); answers go
//             back from E5:53. Whatever the relay's forwarder is (per-session sockets or
//             the multiplexed one), this script does not care.
//   dnsdist   dnsperf -s the router's address -p 5353: Debian's dnsdist, started here in
//             the router namespace with its own config file (never the system service),
//             a plain resolver proxy in front of the same dnsmasq. The client addresses
//             it, as a LAN's clients address a dnsdist they are configured with.
//
// dnsperf: DNSPERF_CLIENTS sockets, DNSPERF_OUTSTANDING queries in flight, for -l
// seconds, over A/AAAA questions for names dnsmasq answers, with -v: one line per query
// with its latency, from which p50/p99 (answered queries only) are computed; -v costs
// dnsperf some CPU, the same on every path. Queries/s is dnsperf's own figure; lost %
// its lost/sent. Paths run back to back in an order that rotates per repetition. Results
// to bench/results/dns-forced-latest.md. Never run beside other work (2 vCPUs).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { parseConfig } from "../src/config/load.ts";
import { nftRuleset, policyRoutingCommands } from "../src/rules/nft.ts";
import { LAB, Lab, labUnavailableReason } from "../test/lab/netns.ts";
import { RelayProcess } from "../test/lab/relay_process.ts";
import { benchNames } from "./dns.ts";
import { fmt, median } from "./report.ts";

const RESULTS = join(import.meta.dir, "results", "dns-forced-latest.md");
const USAGE =
  "usage: bun bench/dns_forced.ts [--quick] [--reps N] [--responder fast|dnsmasq] [--no-pin] " +
  "[--node]";

type PathName = "kernel" | "relay" | "dnsdist" | "node";
const LABEL: Record<PathName, string> = {
  kernel: "kernel forwarding",
  relay: "relay, forced mode",
  dnsdist: "dnsdist",
  node: "relay on Node.js, forced mode",
};
const [E3, , E5] = LAB.serverExtra4;
const RESOLVER = { address: E3, port: 5300 };
const DNSDIST = { address: LAB.routerClient4, port: 5353 };
/** Where dnsperf sends, per path. */
const SERVER: Record<PathName, { address: string; port: number }> = {
  kernel: RESOLVER,
  relay: { address: E5, port: 53 },
  dnsdist: DNSDIST,
  node: { address: E5, port: 5354 },
};
const LISTENER_PORT = 12354;
const NODE_LISTENER_PORT = 12355;
/** Offered load of the latency runs: below what every path carries here. */
const LATENCY_QPS = 20_000;
/** sysconf(_SC_CLK_TCK) on Linux: /proc's CPU times are in these. */
const CLOCK_TICKS_PER_S = 100;
const RESPONDER_BIN = join(import.meta.dir, "..", "build", "bench", "dns_responder");
const DNSPERF_CLIENTS = 16;
const DNSPERF_OUTSTANDING = 200;
const SECONDS = { full: 5, quick: 1 };
const REPS = { full: 3, quick: 1, max: 20 };
const READY_TIMEOUT_MS = 10_000;

type Responder = "fast" | "dnsmasq";

interface Args {
  quick: boolean;
  reps: number;
  responder: Responder;
  pin: boolean;
  node: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, reps: REPS.full, responder: "fast", pin: true, node: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--quick") {
      args.quick = true;
      args.reps = REPS.quick;
    } else if (a === "--reps") {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1 || n > REPS.max) throw new Error(`--reps 1-${REPS.max}`);
      args.reps = n;
    } else if (a === "--responder") {
      const r = argv[++i];
      if (r !== "fast" && r !== "dnsmasq") throw new Error(`--responder fast|dnsmasq\n${USAGE}`);
      args.responder = r;
    } else if (a === "--no-pin") {
      args.pin = false;
    } else if (a === "--node") {
      args.node = true;
    } else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else {
      throw new Error(`unknown argument ${JSON.stringify(a)}\n${USAGE}`);
    }
  }
  return args;
}

interface Sample {
  qps: number;
  lostFraction: number;
  p50Ms: number;
  p99Ms: number;
  averageMs: number;
  /** The proxy's CPU time (all threads) per answered query, µs; NaN for kernel. */
  cpuUsPerQuery: number;
}

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** taskset's prefix for a command on `cpu`, or nothing when not pinning. */
function onCpu(pin: boolean, cpu: 0 | 1): string[] {
  return pin ? ["taskset", "-c", `${cpu}`] : [];
}

interface DnsperfRun {
  qps: number;
  lostFraction: number;
  averageMs: number;
  /** Per answered query, in ms (-v only), sorted. */
  latenciesMs: number[];
}

/**
 * One dnsperf run. verbose: -v, one line per query with its latency (costs dnsperf CPU:
 * used only for the latency runs, at a fixed rate). qpsMax: -Q, or 0 for as fast as the
 * DNSPERF_OUTSTANDING window allows.
 */
function dnsperf(
  lab: Lab,
  file: string,
  path: PathName,
  seconds: number,
  pin: boolean,
  verbose: boolean,
  qpsMax: number,
): DnsperfRun {
  const { address, port } = SERVER[path];
  const argv = [
    ...["ip", "netns", "exec", lab.client, ...onCpu(pin, 0)],
    ...["dnsperf", "-s", address, "-p", `${port}`],
    ...["-d", file, "-l", `${seconds}`, "-c", `${DNSPERF_CLIENTS}`],
    ...["-q", `${DNSPERF_OUTSTANDING}`, "-T", "1", "-t", "2"],
    ...(verbose ? ["-v"] : []),
    ...(qpsMax > 0 ? ["-Q", `${qpsMax}`] : []),
  ];
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", timeout: (seconds + 15) * 1000 });
  const out = r.stdout.toString();
  if (r.exitCode !== 0) {
    throw new Error(`dnsperf exit ${r.exitCode}: ${out.slice(-2000)}${r.stderr}`);
  }
  const num = (re: RegExp) => {
    const m = re.exec(out);
    if (!m) throw new Error(`dnsperf output without ${re}:\n${out.slice(-2000)}`);
    return Number(m[1]);
  };
  // -v: "> NOERROR n0.bench.test A 0.000253" per answered query ("> T ..." when lost).
  const latenciesMs: number[] = [];
  for (const m of out.matchAll(/^> [A-Z]+ \S+ \S+ ([\d.]+)$/gm)) {
    latenciesMs.push(Number(m[1]) * 1000);
  }
  latenciesMs.sort((a, b) => a - b);
  const sent = num(/Queries sent:\s+(\d+)/);
  const lost = num(/Queries lost:\s+(\d+)/);
  return {
    qps: num(/Queries per second:\s+([\d.]+)/),
    lostFraction: sent > 0 ? lost / sent : 1,
    averageMs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1000,
    latenciesMs,
  };
}

/** User + system CPU time of a whole process (all its threads), in ms; NaN if gone. */
function cpuMs(pid: number): number {
  try {
    // /proc/PID/stat: "pid (comm) state ..." - fields after the comm's ")" start at 3.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_S;
  } catch {
    return Number.NaN;
  }
}

/**
 * A path's sample: queries/s, lost share and the proxy's CPU per query from a run at full
 * speed without -v; p50/p99 from a second run at LATENCY_QPS with -v, so latency is read
 * at the same offered load on every path (at saturation it measures queue depth).
 */
function measure(
  lab: Lab,
  file: string,
  path: PathName,
  seconds: number,
  pin: boolean,
  proxyPid: number | null,
): Sample {
  const cpuBefore = proxyPid === null ? Number.NaN : cpuMs(proxyPid);
  const full = dnsperf(lab, file, path, seconds, pin, false, 0);
  const cpuUsed = proxyPid === null ? Number.NaN : cpuMs(proxyPid) - cpuBefore;
  const answered = full.qps * seconds * (1 - full.lostFraction);
  const paced = dnsperf(lab, file, path, seconds, pin, true, LATENCY_QPS);
  return {
    qps: full.qps,
    lostFraction: full.lostFraction,
    cpuUsPerQuery: answered > 0 ? (cpuUsed * 1000) / answered : Number.NaN,
    p50Ms: percentile(paced.latenciesMs, 0.5),
    p99Ms: percentile(paced.latenciesMs, 0.99),
    averageMs: paced.averageMs,
  };
}

async function waitAnswers(lab: Lab, path: PathName): Promise<void> {
  const { address, port } = SERVER[path];
  const deadline = performance.now() + READY_TIMEOUT_MS;
  while (performance.now() < deadline) {
    const r = lab.exec(
      lab.client,
      ["kdig", `@${address}`, "-p", `${port}`, "+short", "+timeout=1", "+retry=0"].concat([
        "n0.bench.test",
        "A",
      ]),
      undefined,
      true,
    );
    if (r.stdout.trim() === "198.18.1.100") return;
    await Bun.sleep(100);
  }
  throw new Error(`${path}: no answer from ${address}:${port} within ${READY_TIMEOUT_MS} ms`);
}

function dnsdistConfig(): string {
  return [
    `setLocal("${DNSDIST.address}:${DNSDIST.port}")`,
    // Its default ACL is the private ranges only; the lab's clients are in 198.18.0.0/15.
    'setACL({"198.18.0.0/15", "2001:2::/48"})',
    // The health check asks a name dnsmasq answers (it knows no root servers).
    `newServer({address="${RESOLVER.address}:${RESOLVER.port}", checkName="n0.bench.test."})`,
    'setSecurityPollSuffix("")',
    "",
  ].join("\n");
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const reason = labUnavailableReason();
  if (reason) throw new Error(`bench/dns_forced.ts: ${reason}`);
  const seconds = args.quick ? SECONDS.quick : SECONDS.full;
  const make = Bun.spawnSync(["make", "-s", "-C", import.meta.dir], { stderr: "pipe" });
  if (make.exitCode !== 0) throw new Error(`make -C bench: ${make.stderr}`);
  const dir = mkdtempSync(join(tmpdir(), "relay-bench-dns-forced-"));
  const lab = Lab.create();
  const onSignal = () => {
    lab.destroy();
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const children: Subprocess[] = [];
  let relay: RelayProcess | null = null;
  let onNode: RelayProcess | null = null;
  const paths: PathName[] = ["kernel", "relay", "dnsdist", ...(args.node ? ["node" as const] : [])];
  const started = performance.now();
  const load = loadavg()[0];
  try {
    const relayConfig = (name: string, listenerPort: number, port: number) => ({
      listeners: [{ name, address: "127.0.0.1", port: listenerPort }],
      intercept: [{ listener: name, ports: [port], interfaces: [LAB.routerClientIf] }],
      outbounds: [
        { name: "resolver", type: "forward", targets: [`${RESOLVER.address}:${RESOLVER.port}`] },
      ],
      rules: [{ name: "forced", protocol: "udp", ports: [port], action: "resolver" }],
      udp: { dnsPorts: [port] },
      metrics: { port: 0 },
      control: { socketPath: join(dir, `${name}.sock`) },
    });
    const raw = relayConfig("dns4", LISTENER_PORT, SERVER.relay.port);
    const rawNode = relayConfig("node4", NODE_LISTENER_PORT, SERVER.node.port);
    // One rule set for both relays: each intercepts its own port.
    const config = parseConfig({
      ...raw,
      listeners: [...raw.listeners, ...(args.node ? rawNode.listeners : [])],
      intercept: [...raw.intercept, ...(args.node ? rawNode.intercept : [])],
    });
    lab.installRules(nftRuleset(config), policyRoutingCommands(config));
    const configPath = join(dir, "relay.json");
    writeFileSync(configPath, JSON.stringify(raw));
    const nodeConfigPath = join(dir, "node.json");
    writeFileSync(nodeConfigPath, JSON.stringify(rawNode));

    const { records, queryFile } = benchNames(dir);
    const responder =
      args.responder === "fast"
        ? [RESPONDER_BIN, "--bind", `${RESOLVER.address}:${RESOLVER.port}`]
        : [
            ...["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts"],
            ...["--bind-interfaces", `--listen-address=${RESOLVER.address}`],
            ...[`--port=${RESOLVER.port}`, "--user=root", "--pid-file", "--log-facility=-"],
            ...["--dns-forward-max=10000", ...records],
          ];
    children.push(lab.spawn(lab.server, [...onCpu(args.pin, 0), ...responder]));
    const dnsdistConf = join(dir, "dnsdist.conf");
    writeFileSync(dnsdistConf, dnsdistConfig());
    const dnsdist = lab.spawn(lab.router, [
        ...onCpu(args.pin, 1),
        ...["dnsdist", "--supervised", "--disable-syslog", "-C", dnsdistConf],
    ]);
    children.push(dnsdist);
    relay = await RelayProcess.start(lab, configPath, undefined, onCpu(args.pin, 1));
    if (args.node) {
      onNode = await RelayProcess.start(lab, nodeConfigPath, undefined, onCpu(args.pin, 1), "node");
    }
    lab.warmNeighbours();
    for (const path of paths) await waitAnswers(lab, path);

    const samples: Record<PathName, Sample[]> = { kernel: [], relay: [], dnsdist: [], node: [] };
    // `ip netns exec` and taskset exec: the child's pid is the proxy's.
    const pids: Record<PathName, number | null> = {
      kernel: null,
      relay: relay.proc.pid,
      dnsdist: dnsdist.pid,
      node: onNode?.proc.pid ?? null,
    };
    for (let rep = 0; rep < args.reps; rep++) {
      // Rotate the order per repetition: no path always runs first (or last).
      for (const path of paths.map((_, k) => paths[(k + rep) % paths.length])) {
        const pid = pids[path];
        const s = measure(lab, queryFile, path, seconds, args.pin, pid);
        samples[path].push(s);
        process.stderr.write(
          `[dns-forced] rep ${rep + 1}/${args.reps} ${path.padEnd(7)} ${fmt(s.qps)} q/s, ` +
            `p50/p99 ${fmt(s.p50Ms)}/${fmt(s.p99Ms)} ms at ${fmt(LATENCY_QPS)} q/s, ` +
            `${fmt(s.cpuUsPerQuery)} µs CPU/query, lost ` +
            `${(s.lostFraction * 100).toFixed(2)}%\n`,
        );
      }
    }
    const udp = (await relay.metrics()).udp;

    const range = (xs: number[]) =>
      `${fmt(median(xs))} [${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}]`;
    const med = (p: PathName, f: (s: Sample) => number) => median(samples[p].map(f));
    const ratio = (a: number, b: number) =>
      Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `**${(a / b).toFixed(2)}**` : "-";
    const lines: string[] = [];
    lines.push("# DNS forced mode: the relay beside kernel forwarding and dnsdist");
    lines.push("");
    lines.push(
      `\`bun bench/dns_forced.ts${args.quick ? " --quick" : ""}` +
        `${args.reps !== REPS.full && !args.quick ? ` --reps ${args.reps}` : ""}` +
        `${args.responder !== "fast" ? ` --responder ${args.responder}` : ""}` +
        `${args.pin ? "" : " --no-pin"}${args.node ? " --node" : ""}\`, ` +
        `${new Date().toISOString()}, ${cpus().length} vCPUs (${cpus()[0]?.model ?? "?"}), ` +
        `kernel ${release()}, load average ${load.toFixed(2)} at start, ` +
        `${((performance.now() - started) / 1000).toFixed(0)} s. Queries/s: dnsperf -c ` +
        `${DNSPERF_CLIENTS} -q ${DNSPERF_OUTSTANDING} -l ${seconds}, as fast as it goes; ` +
        `latency: a second run with -Q ${LATENCY_QPS} -v (the same offered load on every ` +
        "path), p50/p99 of its per-query latencies (answered queries) and dnsperf's " +
        "average; CPU/query: the proxy's user + system time (all threads, /proc) over the " +
        "first run's answered queries. Medians of " +
        `${args.reps} repetition(s) [min-max]; ratios of medians. ` +
        `Responder: ${args.responder === "fast" ? "bench/dns_responder.c" : "dnsmasq"}. ` +
        (args.pin
          ? "Pinned: dnsperf and the responder on cpu0, the relay or dnsdist on cpu1."
          : "Not pinned."),
    );
    lines.push("");
    lines.push(
      "| path | queries/s | proxy CPU µs/query | p50 ms | p99 ms | average ms | lost % |",
    );
    lines.push("|---|---|---|---|---|---|---|");
    for (const p of paths) {
      const xs = samples[p];
      lines.push(
        `| ${LABEL[p]} | ${range(xs.map((s) => s.qps))} | ` +
          `${fmt(med(p, (s) => s.cpuUsPerQuery))} | ${fmt(med(p, (s) => s.p50Ms))} | ` +
          `${fmt(med(p, (s) => s.p99Ms))} | ${fmt(med(p, (s) => s.averageMs))} | ` +
          `${(med(p, (s) => s.lostFraction) * 100).toFixed(2)} |`,
      );
    }
    lines.push("");
    const qps = (p: PathName) => med(p, (s) => s.qps);
    const p99 = (p: PathName) => med(p, (s) => s.p99Ms);
    lines.push(
      `queries/s relay/dnsdist ${ratio(qps("relay"), qps("dnsdist"))}, relay/kernel ` +
        `${ratio(qps("relay"), qps("kernel"))}; CPU/query relay/dnsdist ` +
        `${ratio(med("relay", (s) => s.cpuUsPerQuery), med("dnsdist", (s) => s.cpuUsPerQuery))}` +
        `; p99 relay/dnsdist ` +
        `${ratio(p99("relay"), p99("dnsdist"))}, relay/kernel ` +
        `${ratio(p99("relay"), p99("kernel"))}.`,
    );
    if (args.node) {
      lines.push("");
      lines.push(
        `Node.js / Bun (issue 15): queries/s ${ratio(qps("node"), qps("relay"))}, CPU/query ` +
          `${ratio(med("node", (s) => s.cpuUsPerQuery), med("relay", (s) => s.cpuUsPerQuery))}` +
          `, p99 ${ratio(p99("node"), p99("relay"))}.`,
      );
    }
    lines.push("");
    const counters = Object.entries(udp).filter(
      ([k, v]) => typeof v === "number" && v > 0 && /^(dropped|sessionsCreated|dns)/.test(k),
    );
    lines.push(`Relay UDP counters at the end: ${JSON.stringify(Object.fromEntries(counters))}.`);
    const report = `${lines.join("\n")}\n`;
    mkdirSync(join(import.meta.dir, "results"), { recursive: true });
    writeFileSync(RESULTS, report);
    process.stdout.write(report);
    return 0;
  } finally {
    if (relay) await relay.stop().catch(() => undefined);
    if (onNode) await onNode.stop().catch(() => undefined);
    for (const c of children) c.kill("SIGKILL");
    lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) process.exit(await main());
