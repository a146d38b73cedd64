// DNS queries per second (issue 5): dnsperf in the client namespace against dnsmasq in
// the server namespace, through plain kernel forwarding and through the relay, back to
// back in one lab (the order rotates per repetition).
//
//   kernel   dnsmasq on 198.18.1.2:5300, not intercepted
//   relay    dnsmasq on 198.18.1.2:53, intercepted by nft TPROXY (the relay parses the
//            first datagram of each flow as DNS: dnsPorts [53], its default)
//
// dnsperf: DNSPERF_CLIENTS sockets (= relay sessions), DNSPERF_OUTSTANDING queries in
// flight, for -l seconds, over a file of A/AAAA questions for names dnsmasq answers.
// Generator-bound: dnsperf's user+sys CPU was >= 90% of one CPU over its run (it had no
// time to wait for answers; same threshold as bench/udp_gen.c).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { parseConfig } from "../src/config/load.ts";
import { LAB, Lab, labUnavailableReason } from "../test/lab/netns.ts";
import { RelayProcess } from "../test/lab/relay_process.ts";
import { nftRuleset, policyRoutingCommands } from "../src/rules/nft.ts";

export type DnsPath = "kernel" | "relay";
const PORT: Record<DnsPath, number> = { kernel: 5300, relay: 53 };
const LISTENER_PORT = 12353;
const DNSPERF_CLIENTS = 16;
const DNSPERF_OUTSTANDING = 200;
const SECONDS = { full: 5, quick: 1 };
const NAMES = 64;
const GENERATOR_BUSY_FRACTION = 0.9;
const READY_TIMEOUT_MS = 5000;

export interface DnsSample {
  qps: number;
  lostFraction: number;
  latencyMs: number;
  dnsperfCpu: number;
  generatorBound: boolean;
}

export interface DnsResult {
  seconds: number;
  clients: number;
  outstanding: number;
  samples: Record<DnsPath, DnsSample[]>;
  relayCounters: Record<string, number>;
}

function dnsperf(lab: Lab, file: string, port: number, seconds: number): DnsSample {
  const argv = ["ip", "netns", "exec", lab.client, "dnsperf", "-s", LAB.server4, "-p", `${port}`,
    "-d", file, "-l", `${seconds}`, "-c", `${DNSPERF_CLIENTS}`, "-q", `${DNSPERF_OUTSTANDING}`,
    "-T", "1", "-t", "2"];
  const started = performance.now();
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", timeout: (seconds + 15) * 1000 });
  const wallS = (performance.now() - started) / 1000;
  const out = r.stdout.toString();
  if (r.exitCode !== 0) throw new Error(`dnsperf exit ${r.exitCode}: ${out}${r.stderr}`);
  const num = (re: RegExp) => {
    const m = re.exec(out);
    if (!m) throw new Error(`dnsperf output without ${re}:\n${out}`);
    return Number(m[1]);
  };
  const sent = num(/Queries sent:\s+(\d+)/);
  const lost = num(/Queries lost:\s+(\d+)/);
  const cpu = Number(r.resourceUsage.cpuTime.user + r.resourceUsage.cpuTime.system) / 1e6 / wallS;
  return {
    qps: num(/Queries per second:\s+([\d.]+)/),
    lostFraction: sent > 0 ? lost / sent : 1,
    latencyMs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1000,
    dnsperfCpu: cpu,
    generatorBound: cpu >= GENERATOR_BUSY_FRACTION,
  };
}

/**
 * The names the DNS benchmarks ask: dnsmasq's --host-record options (n<i>.bench.test
 * answers 198.18.1.<100+i> and 2001:2:0:2::<100+i>; n0 is what the readiness checks ask)
 * and dnsperf's query file (A and AAAA of each), written into `dir`.
 */
export function benchNames(dir: string): { records: string[]; queryFile: string } {
  const records: string[] = [];
  const questions: string[] = [];
  for (let i = 0; i < NAMES; i++) {
    records.push(`--host-record=n${i}.bench.test,198.18.1.${100 + i},2001:2:0:2::${100 + i}`);
    questions.push(`n${i}.bench.test A`, `n${i}.bench.test AAAA`);
  }
  const queryFile = join(dir, "queries.txt");
  writeFileSync(queryFile, `${questions.join("\n")}\n`);
  return { records, queryFile };
}

async function waitReady(lab: Lab, port: number): Promise<void> {
  const deadline = performance.now() + READY_TIMEOUT_MS;
  while (performance.now() < deadline) {
    const r = lab.exec(lab.client, ["kdig", `@${LAB.server4}`, "-p", `${port}`, "+short",
      "+timeout=1", "+retry=0", "n0.bench.test", "A"], undefined, true);
    if (r.stdout.trim() === "198.18.1.100") return;
    await Bun.sleep(100);
  }
  throw new Error(`dnsmasq on port ${port} does not answer within ${READY_TIMEOUT_MS} ms`);
}

/** Runs `reps` repetitions of kernel and relay in one lab. Needs root, dnsperf, dnsmasq. */
export async function runDns(quick: boolean, reps: number,
  log: (line: string) => void): Promise<DnsResult> {
  const reason = labUnavailableReason();
  if (reason) throw new Error(`bench/dns.ts: ${reason}`);
  const seconds = quick ? SECONDS.quick : SECONDS.full;
  const tmp = mkdtempSync(join(tmpdir(), "relay-bench-dns-"));
  const lab = Lab.create();
  const children: Subprocess[] = [];
  let relay: RelayProcess | null = null;
  try {
    const raw = {
      listeners: [{ name: "dns4", address: "127.0.0.1", port: LISTENER_PORT }],
      intercept: [{ listener: "dns4", ports: [PORT.relay], interfaces: [LAB.routerClientIf] }],
    };
    const config = parseConfig(raw);
    lab.installRules(nftRuleset(config), policyRoutingCommands(config));
    const configPath = join(tmp, "relay.json");
    writeFileSync(configPath, JSON.stringify(raw));
    const { records, queryFile } = benchNames(tmp);
    for (const path of ["kernel", "relay"] as DnsPath[]) {
      children.push(lab.spawn(lab.server, ["dnsmasq", "--keep-in-foreground", "--no-resolv",
        "--no-hosts", "--bind-interfaces", `--listen-address=${LAB.server4}`,
        `--port=${PORT[path]}`, "--user=root", "--pid-file", "--log-facility=-",
        "--dns-forward-max=10000", ...records]));
    }
    relay = await RelayProcess.start(lab, configPath);
    lab.warmNeighbours();
    for (const path of ["kernel", "relay"] as DnsPath[]) await waitReady(lab, PORT[path]);

    const samples: Record<DnsPath, DnsSample[]> = { kernel: [], relay: [] };
    const paths: DnsPath[] = ["kernel", "relay"];
    for (let rep = 0; rep < reps; rep++) {
      for (const path of paths.map((_, i) => paths[(i + rep) % paths.length])) {
        const s = dnsperf(lab, queryFile, PORT[path], seconds);
        samples[path].push(s);
        log(`[bench] dns rep ${rep + 1}/${reps} ${path.padEnd(6)} ${s.qps.toFixed(0)} q/s, ` +
          `lost ${(s.lostFraction * 100).toFixed(2)}%, latency ${s.latencyMs.toFixed(2)} ms, ` +
          `dnsperf cpu ${s.dnsperfCpu.toFixed(2)}${s.generatorBound ? " (generator-bound)" : ""}`);
      }
    }
    const udp = (await relay.metrics()).udp;
    const relayCounters: Record<string, number> = {};
    for (const [k, v] of Object.entries(udp)) {
      if (typeof v === "number" && v > 0 && /^dropped/.test(k)) relayCounters[k] = v;
    }
    return { seconds, clients: DNSPERF_CLIENTS, outstanding: DNSPERF_OUTSTANDING, samples,
      relayCounters };
  } finally {
    if (relay) await relay.stop().catch(() => undefined);
    for (const c of children) c.kill("SIGKILL");
    lab.destroy();
    rmSync(tmp, { recursive: true, force: true });
  }
}
