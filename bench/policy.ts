// bun bench/policy.ts [--quick] [--reps N] [--no-udp-socks5]
//
// What policy costs (issue 10), beside kernel forwarding in the same lab and run:
//
//   kernel   the router forwards (no relay): the ceiling
//   relay    the relay with no rules (every flow direct)
//   names    the relay with a rule on 10,000 names (a domain list file) that no flow
//            matches, and defaultAction direct: every new flow is decided against it
//   socks5   the relay with a socks5 outbound to Debian's dante in the server namespace
//            (TCP CONNECT; UDP ASSOCIATE unless --no-udp-socks5)
//
// Cells: UDP request/response 64 B with 1 and 256 flows (bench/udp_gen.c, new source
// ports every run, so the 256-flow cell opens 256 sessions each run and decides each),
// TCP iperf3 one stream, TCP connections/s (bench/tcp_load.c, 64 in flight). Paths run
// back to back in an order that rotates per repetition; the report shows medians with
// min-max and the ratios to kernel forwarding and to the relay without rules. Results go
// to bench/results/policy-latest.md. Never run beside other work (2 vCPUs).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../src/config/load.ts";
import { nftRuleset, policyRoutingCommands } from "../src/rules/nft.ts";
import { startDante } from "../test/lab/dante.ts";
import { LAB, Lab, labUnavailableReason, run } from "../test/lab/netns.ts";
import { RelayProcess } from "../test/lab/relay_process.ts";
import { fmt, median } from "./report.ts";
import { buildLoad, cps, iperf, waitForTcpPort } from "./tcp.ts";
import { startTool, type ToolProcess } from "./udp.ts";

const ROOT = join(import.meta.dir, "..");
const GEN = join(ROOT, "build", "bench", "udp_gen");
const SINK_ECHO = join(ROOT, "build", "bench", "udp_sink_echo");
const RESULTS = join(import.meta.dir, "results", "policy-latest.md");
const USAGE = "usage: bun bench/policy.ts [--quick] [--reps N] [--no-udp-socks5]";

type PathName = "kernel" | "relay" | "names" | "socks5";
const PATHS: PathName[] = ["kernel", "relay", "names", "socks5"];
const LABEL: Record<PathName, string> = {
  kernel: "kernel forwarding",
  relay: "relay, no rules",
  names: "relay, 10,000 names",
  socks5: "relay via SOCKS5 (dante)",
};
/** Per path: UDP echo port, iperf3 port, tcp_load port, and the relay's listener ports. */
const PORT: Record<PathName, { udp: number; iperf: number; cps: number }> = {
  kernel: { udp: 7601, iperf: 5301, cps: 7701 },
  relay: { udp: 7602, iperf: 5302, cps: 7702 },
  names: { udp: 7603, iperf: 5303, cps: 7703 },
  socks5: { udp: 7604, iperf: 5304, cps: 7704 },
};
const LISTENER_TCP: Record<Exclude<PathName, "kernel">, number> = {
  relay: 12402,
  names: 12403,
  socks5: 12404,
};
const DANTE_PORT = 1080;
const NAMES_COUNT = 10_000;
const TARGETS4 = [LAB.server4, ...LAB.serverExtra4];
const UDP_FLOWS = [1, 256];
const UDP_SIZE_BYTES = 64;
const REPS = { full: 3, quick: 1, max: 20 };
const GEN_GRACE_MS = 15_000;
const READY_TIMEOUT_MS = 5000;

interface Args {
  quick: boolean;
  reps: number;
  udpSocks5: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, reps: REPS.full, udpSocks5: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--quick") {
      args.quick = true;
      args.reps = REPS.quick;
    } else if (a === "--reps") {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1 || n > REPS.max) throw new Error(`--reps 1-${REPS.max}`);
      args.reps = n;
    } else if (a === "--no-udp-socks5") {
      args.udpSocks5 = false;
    } else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else {
      throw new Error(`unknown argument ${JSON.stringify(a)}\n${USAGE}`);
    }
  }
  return args;
}

type CellName = "udp rr 64 B 1 flow" | "udp rr 64 B 256 flows" | "tcp iperf3" | "tcp conn/s";
const CELLS: CellName[] = [
  "udp rr 64 B 1 flow",
  "udp rr 64 B 256 flows",
  "tcp iperf3",
  "tcp conn/s",
];
const UNIT: Record<CellName, string> = {
  "udp rr 64 B 1 flow": "transactions/s",
  "udp rr 64 B 256 flows": "transactions/s",
  "tcp iperf3": "Gbit/s",
  "tcp conn/s": "connections/s",
};

/** The relay configs of the three relay paths (each its own process and listeners). */
function relayConfig(path: Exclude<PathName, "kernel">, dir: string, udpSocks5: boolean) {
  const udpListener = { name: `u_${path}`, address: "127.0.0.1", port: PORT[path].udp };
  const tcpListener = {
    name: `t_${path}`,
    protocol: "tcp",
    address: "127.0.0.1",
    port: LISTENER_TCP[path],
  };
  const raw: Record<string, unknown> = {
    listeners: [{ ...udpListener, reply: "pktinfo" }, tcpListener],
    intercept: [
      { listener: udpListener.name, ports: [PORT[path].udp], interfaces: [LAB.routerClientIf] },
      {
        listener: tcpListener.name,
        ports: [PORT[path].iperf, PORT[path].cps],
        interfaces: [LAB.routerClientIf],
      },
    ],
    udp: { idleTimeoutMs: 10_000 },
    metrics: { port: 0 },
    control: { socketPath: join(dir, `${path}.sock`) },
  };
  if (path === "names") {
    const list = join(dir, "names.txt");
    const lines = ["# 10,000 names no flow of the bench asks for"];
    for (let i = 0; i < NAMES_COUNT; i++) lines.push(`domain:host${i}.blocked${i % 97}.example`);
    writeFileSync(list, `${lines.join("\n")}\n`);
    raw.rules = [{ name: "blocked", names: { lists: [list] }, action: "drop" }];
  }
  if (path === "socks5") {
    raw.outbounds = [
      { name: "dante", type: "socks5", server: `${LAB.server4}:${DANTE_PORT}`, udp: udpSocks5 },
    ];
    raw.rules = [{ name: "tcp", protocol: "tcp", action: "dante" }];
    if (udpSocks5) raw.rules = [{ name: "all", action: "dante" }];
  }
  return raw;
}

interface Sample {
  value: number;
  detail: string;
}

async function udpRr(lab: Lab, port: number, flows: number, args: Args): Promise<Sample> {
  const warmupMs = args.quick ? 300 : 1000;
  const durationMs = args.quick ? 700 : 3000;
  const argv = [
    GEN,
    ...["--mode", "rr", ...TARGETS4.flatMap((a) => ["--target", `${a}:${port}`])],
    ...["--flows", `${flows}`, "--size", `${UDP_SIZE_BYTES}`],
    ...["--duration-ms", `${durationMs}`, "--warmup-ms", `${warmupMs}`],
    ...["--run-id", `${Math.floor(Math.random() * 1e9)}`],
  ];
  const proc = lab.spawn(lab.client, argv);
  const limitMs = warmupMs + durationMs + GEN_GRACE_MS;
  const code = await Promise.race([proc.exited, Bun.sleep(limitMs).then(() => null)]);
  if (code === null) {
    proc.kill("SIGKILL");
    throw new Error(`udp_gen did not finish within ${limitMs} ms`);
  }
  const out = await new Response(proc.stdout).text();
  if (code !== 0) throw new Error(`udp_gen exit ${code}: ${await new Response(proc.stderr).text()}`);
  const gen = JSON.parse(out.trim().split("\n").at(-1)!);
  return {
    value: gen.tps,
    detail: `p50/p99 ${gen.p50Us}/${gen.p99Us} us, loss ${(gen.loss * 100).toFixed(1)}%`,
  };
}

async function sample(lab: Lab, cell: CellName, path: PathName, args: Args): Promise<Sample> {
  const p = PORT[path];
  if (cell === "udp rr 64 B 1 flow") return udpRr(lab, p.udp, 1, args);
  if (cell === "udp rr 64 B 256 flows") return udpRr(lab, p.udp, 256, args);
  if (cell === "tcp iperf3") {
    const r = iperf(lab, p.iperf, args.quick ? 2 : 5);
    return { value: r.gbps, detail: `sender CPU ${(r.senderCpu * 100).toFixed(0)}%` };
  }
  const r = cps(lab, p.cps, args.quick ? 300 : 500, args.quick ? 1500 : 3000);
  const failed = r.failedSocket + r.failedReset + r.failedShort;
  return { value: r.cps, detail: `${r.completed} completed, ${failed} failed` };
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const reason = labUnavailableReason();
  if (reason) throw new Error(`bench/policy.ts: ${reason}`);
  run(["make", "-s", "-C", import.meta.dir]);
  buildLoad();
  const dir = mkdtempSync(join(tmpdir(), "relay-bench-policy-"));
  const lab = Lab.create();
  const onSignal = () => {
    lab.destroy();
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const relays: RelayProcess[] = [];
  const tools: ToolProcess[] = [];
  const results = new Map<string, Sample[]>();
  const started = performance.now();
  const load = loadavg()[0];
  try {
    for (const ns of [lab.client, lab.router]) {
      lab.exec(ns, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
      lab.exec(ns, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    }
    // One ruleset for the three relays (each intercepts its own ports).
    const relayPaths = ["relay", "names", "socks5"] as const;
    const raws = relayPaths.map((p) => relayConfig(p, dir, args.udpSocks5));
    const all = parseConfig({
      listeners: raws.flatMap((r) => r.listeners as object[]),
      intercept: raws.flatMap((r) => r.intercept as object[]),
    });
    lab.installRules(nftRuleset(all), policyRoutingCommands(all));

    // Servers: the UDP echo, iperf3 and tcp_load on every path's ports; dante.
    const binds = TARGETS4.flatMap((a) => PATHS.flatMap((p) => ["--bind", `${a}:${PORT[p].udp}`]));
    const echo = startTool(lab, lab.server, "echo", [SINK_ECHO, "--mode", "echo", ...binds]);
    tools.push(echo);
    await echo.waitFor((l) => l.event === "ready", READY_TIMEOUT_MS);
    for (const p of PATHS) lab.spawn(lab.server, ["iperf3", "-s", "-p", `${PORT[p].iperf}`]);
    lab.spawn(lab.server, [
      join(ROOT, "build", "bench", "tcp_load"),
      "server",
      ...PATHS.map((p) => `${PORT[p].cps}`),
    ]);
    for (const p of PATHS) await waitForTcpPort(lab, lab.server, PORT[p].iperf);
    await startDante(lab, lab.server, dir, {
      listen: [LAB.server4],
      port: DANTE_PORT,
      externalInterface: LAB.serverIf,
      clients: ["198.18.0.0/15"],
      logPath: join(dir, "danted.log"),
    });
    for (let i = 0; i < relayPaths.length; i++) {
      const path = join(dir, `${relayPaths[i]}.json`);
      writeFileSync(path, JSON.stringify(raws[i]));
      relays.push(await RelayProcess.start(lab, path));
    }
    lab.warmNeighbours();

    for (let rep = 0; rep < args.reps; rep++) {
      for (const cell of CELLS) {
        // Rotate the order per repetition: no path always runs first (or last).
        const order = PATHS.map((_, k) => PATHS[(k + rep) % PATHS.length]);
        for (const path of order) {
          if (path === "socks5" && cell.startsWith("udp") && !args.udpSocks5) continue;
          const s = await sample(lab, cell, path, args);
          const key = `${cell}|${path}`;
          results.set(key, [...(results.get(key) ?? []), s]);
          process.stderr.write(
            `[policy] rep ${rep + 1}/${args.reps} ${cell} ${path}: ${fmt(s.value)} ` +
              `${UNIT[cell]} (${s.detail})\n`,
          );
        }
      }
    }
    const finals = await Promise.all(relays.map((r) => r.metrics()));
    const socks5Tcp = finals[2].tcp;
    const lines: string[] = [];
    lines.push("# What policy costs: rules on 10,000 names, and the SOCKS5 outbound");
    lines.push("");
    lines.push(
      `\`bun bench/policy.ts${args.quick ? " --quick" : ""}${args.reps !== REPS.full && !args.quick ? ` --reps ${args.reps}` : ""}\`, ` +
        `${new Date().toISOString()}, ${cpus().length} vCPUs (${cpus()[0]?.model ?? "?"}), ` +
        `kernel ${release()}, load average ${load.toFixed(2)} at start, ` +
        `${((performance.now() - started) / 1000).toFixed(0)} s. Medians of ${args.reps} ` +
        "repetition(s) [min-max]; ratios of medians.",
    );
    lines.push("");
    lines.push(
      `| cell | unit | ${PATHS.map((p) => LABEL[p]).join(" | ")} | names / no rules | ` +
        "SOCKS5 / no rules | relay / kernel |",
    );
    lines.push(`|---|---|${PATHS.map(() => "---|").join("")}---|---|---|`);
    for (const cell of CELLS) {
      const med = (p: PathName) => {
        const xs = (results.get(`${cell}|${p}`) ?? []).map((s) => s.value);
        return xs.length ? median(xs) : Number.NaN;
      };
      const cellText = (p: PathName) => {
        const xs = (results.get(`${cell}|${p}`) ?? []).map((s) => s.value);
        if (xs.length === 0) return "-";
        return `${fmt(median(xs))} [${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}]`;
      };
      const ratio = (a: number, b: number) =>
        Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `**${(a / b).toFixed(2)}**` : "-";
      lines.push(
        `| ${cell} | ${UNIT[cell]} | ${PATHS.map(cellText).join(" | ")} | ` +
          `${ratio(med("names"), med("relay"))} | ${ratio(med("socks5"), med("relay"))} | ` +
          `${ratio(med("relay"), med("kernel"))} |`,
      );
    }
    lines.push("");
    lines.push(
      "Relay counters at the end: names relay " +
        `udp sessions created ${finals[1].udp.sessionsCreated}, tcp accepted ` +
        `${finals[1].tcp?.accepted}; SOCKS5 relay handshakes ` +
        `${JSON.stringify(socks5Tcp ? pick(socks5Tcp, /^socks5/) : {})}.`,
    );
    const report = `${lines.join("\n")}\n`;
    mkdirSync(join(import.meta.dir, "results"), { recursive: true });
    writeFileSync(RESULTS, report);
    process.stdout.write(report);
    return 0;
  } finally {
    for (const r of relays) await r.stop().catch(() => {});
    for (const t of tools) t.proc.kill();
    lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

function pick(o: Record<string, unknown>, pattern: RegExp): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([k]) => pattern.test(k)));
}

if (import.meta.main) process.exit(await main());
