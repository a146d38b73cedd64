// Memory per UDP session (issue 5): the relay holding 10k and 100k sessions, beside
// kernel forwarding holding the same flows.
//
//   relay    a lab with the relay (udp.sessionsMax 131072, idle timeout 10 min); the
//            client opens flows with bench/udp_flows.c (one datagram per flow, then the
//            socket closes), the server's sink swallows them. At each step the relay's
//            VmRSS (/proc/PID/status) and the machine's kernel slab (/proc/meminfo Slab:
//            the relay's upstream sockets and conntrack entries) are read once the relay
//            reports that many sessionsActive.
//   kernel   a fresh lab with the same nft rules (so conntrack tracks forwarded flows as
//            it does beside the relay) and no relay: the same flows to ports that are not
//            intercepted; kernel slab at each step once conntrack holds them all.
// bytes/session = (value at the step - value before the first flow) / sessions.
//
// Shape: PORTS client source ports (IPv4). Step 1 sends each to 1 destination port
// (PORTS sessions, each with its own upstream socket); step 2 sends each to FANOUT
// destination ports (PORTS x FANOUT sessions; with the default endpoint-independent
// mapping a client ip:port keeps one upstream socket for every destination, so the
// socket count stays at PORTS). Why not 100k sockets: every upstream socket is a
// descriptor, and this machine's RLIMIT_NOFILE hard limit (20000 in the container, no
// CAP_SYS_RESOURCE to raise it) caps one process below that.
// The slab is machine-wide: other processes' kernel allocations land in it too (the
// spread over repetitions shows how much).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../src/config/load.ts";
import { LAB, Lab, labUnavailableReason, run } from "../test/lab/netns.ts";
import { RelayProcess } from "../test/lab/relay_process.ts";
import { nftRuleset, policyRoutingCommands } from "../src/rules/nft.ts";
import { startTool, type ToolProcess } from "./udp.ts";

const ROOT = join(import.meta.dir, "..");
const FLOWS = join(ROOT, "build", "bench", "udp_flows");
const SINK = join(ROOT, "build", "bench", "udp_sink_echo");
/** Client source ports; step 2 multiplies them by FANOUT destinations. */
export const MEMORY_PORTS = { full: 10_000, quick: 1_000 };
export const FANOUT = 10;
const SESSIONS_MAX = 131_072;
const RELAY_PORT = 7600; // intercepted: RELAY_PORT .. RELAY_PORT + FANOUT - 1
const KERNEL_PORT = 7620; // forwarded: KERNEL_PORT .. KERNEL_PORT + FANOUT - 1
const LISTENER_PORT = 7600;
const FIRST_PORT = 10_000;
/** Datagrams per udp_flows call: 4096 small ones fit the relay listener's 8 MiB buffer. */
const CHUNK_DATAGRAMS = 4096;
const CHUNK_TRIES_MAX = 4;
const CATCH_UP_MS = 5000;
const POLL_MS = 100;
const SETTLE_MS = 1000;
const READY_TIMEOUT_MS = 5000;

export interface MemoryPoint {
  sessions: number;
  /** Upstream sockets the relay held (0 for kernel forwarding). */
  sockets: number;
  rssBytes: number;
  rssPerSession: number;
  slabPerSession: number;
}

export interface MemoryRep {
  relayRssBaseBytes: number;
  relay: MemoryPoint[];
  kernel: MemoryPoint[];
  relayCounters: Record<string, number>;
}

function kib(text: string, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text);
  if (!m) throw new Error(`no ${key} in ${text.slice(0, 80)}`);
  return Number(m[1]) * 1024;
}

const rss = (pid: number) => kib(readFileSync(`/proc/${pid}/status`, "utf8"), "VmRSS");
const slab = () => kib(readFileSync("/proc/meminfo", "utf8"), "Slab");

/** The chunks of one step: every client port, each to `fanout` destination ports. */
function* chunks(ports: number, fanout: number, port: number) {
  const per = Math.max(1, Math.floor(CHUNK_DATAGRAMS / fanout));
  for (let i = 0; i < ports; i += per) {
    yield { portFirst: FIRST_PORT + i, count: Math.min(per, ports - i), fanout, port };
  }
}

function sendFlows(lab: Lab, c: { portFirst: number; count: number; fanout: number;
  port: number }) {
  const out = lab.exec(lab.client, [FLOWS, "--source", LAB.client4, "--port-first",
    `${c.portFirst}`, "--count", `${c.count}`, "--target", `${LAB.server4}:${c.port}`,
    "--target-ports", `${c.fanout}`]).stdout;
  const r = JSON.parse(out.trim());
  if (r.bindFailed > 0 || r.failed > 0) {
    throw new Error(`udp_flows ${c.portFirst}+${c.count} x ${c.fanout}: ${out.trim()}`);
  }
}

/** Sends every chunk of a step; after each, waits (bounded) until `count()` reaches the
 * flows sent so far, resending the chunk when datagrams were dropped (it only refreshes). */
async function fill(lab: Lab, ports: number, fanout: number, port: number, before: number,
  count: () => Promise<number>): Promise<void> {
  for (const c of chunks(ports, fanout, port)) {
    // Flows of this step so far: ports up to this chunk's end, times the fan-out.
    const expected = Math.max(before, (c.portFirst - FIRST_PORT + c.count) * fanout);
    let reached = false;
    for (let tries = 0; tries < CHUNK_TRIES_MAX && !reached; tries++) {
      sendFlows(lab, c);
      const deadline = performance.now() + CATCH_UP_MS;
      while (performance.now() < deadline) {
        if ((await count()) >= expected) {
          reached = true;
          break;
        }
        await Bun.sleep(POLL_MS);
      }
    }
    if (!reached) throw new Error(`flows stuck at ${await count()} of ${expected}`);
  }
}

function makeLab(tmp: string) {
  // The router keeps its default ephemeral range (32768-60999): upstream sockets bound to
  // port 0 then never take a destination port (7600-7609) that a reply socket needs.
  const lab = Lab.create();
  const raw = {
    listeners: [{ name: "m4", address: "127.0.0.1", port: LISTENER_PORT }],
    intercept: [{ listener: "m4", ports: [`${RELAY_PORT}-${RELAY_PORT + FANOUT - 1}`],
      interfaces: [LAB.routerClientIf] }],
    // One generator opens every flow from one address: no per-client bound here (a bound
    // as large as the table is none), the table itself is what is measured.
    udp: { sessionsMax: SESSIONS_MAX, sessionsPerClientMax: SESSIONS_MAX, idleTimeoutMs: 600_000 },
  };
  const config = parseConfig(raw);
  lab.installRules(nftRuleset(config), policyRoutingCommands(config));
  const configPath = join(tmp, `memory-${lab.id}.json`);
  writeFileSync(configPath, JSON.stringify(raw));
  lab.warmNeighbours();
  return { lab, configPath };
}

async function startSink(lab: Lab, port: number): Promise<ToolProcess> {
  const binds: string[] = [];
  for (let p = port; p < port + FANOUT; p++) binds.push("--bind", `${LAB.server4}:${p}`);
  const sink = startTool(lab, lab.server, "sink", [SINK, "--mode", "sink", ...binds]);
  await sink.waitFor((l) => l.event === "ready", READY_TIMEOUT_MS);
  return sink;
}

/** Fills step 1 (1 destination per port) then step 2 (FANOUT), measuring after each. */
async function steps(lab: Lab, ports: number, port: number, count: () => Promise<number>,
  measure: (sessions: number) => Promise<MemoryPoint>): Promise<MemoryPoint[]> {
  const points: MemoryPoint[] = [];
  let before = 0;
  for (const fanout of [1, FANOUT]) {
    await fill(lab, ports, fanout, port, before, count);
    before = ports * fanout;
    await Bun.sleep(SETTLE_MS);
    points.push(await measure(await count()));
  }
  return points;
}

async function relayPhase(ports: number, tmp: string, log: (s: string) => void) {
  const { lab, configPath } = makeLab(tmp);
  let relay: RelayProcess | null = null;
  let sink: ToolProcess | null = null;
  try {
    sink = await startSink(lab, RELAY_PORT);
    relay = await RelayProcess.start(lab, configPath);
    const pid = relay.proc.pid;
    await Bun.sleep(SETTLE_MS);
    const base = { rss: rss(pid), slab: slab() };
    const r = relay;
    const count = async () => (await r.metrics()).udp.sessionsActive as number;
    const points = await steps(lab, ports, RELAY_PORT, count, async (sessions) => {
      const now = { rss: rss(pid), slab: slab() };
      const sockets = (await r.metrics()).udp.upstreamSockets as number;
      const point = { sessions, sockets, rssBytes: now.rss,
        rssPerSession: (now.rss - base.rss) / sessions,
        slabPerSession: (now.slab - base.slab) / sessions };
      log(`[bench] memory relay ${sessions} sessions, ${sockets} upstream sockets: RSS ` +
        `${(now.rss / 2 ** 20).toFixed(1)} MiB (${point.rssPerSession.toFixed(0)} B/session), ` +
        `kernel slab ${point.slabPerSession.toFixed(0)} B/session`);
      return point;
    }).catch(async (err) => {
      // Which counter the missing sessions went to.
      const udp = (await r.metrics()).udp;
      const nonzero = Object.entries(udp).filter(([k, v]) => /^dropped|Failed|Errors/.test(k) &&
        typeof v === "number" && v > 0);
      throw new Error(`${(err as Error).message}; relay ${JSON.stringify(Object.fromEntries(
        nonzero))}, upstreamSockets ${udp.upstreamSockets}\n${r.stderr.slice(-1500)}`);
    });
    const udp = (await relay.metrics()).udp;
    const relayCounters: Record<string, number> = {};
    for (const [k, v] of Object.entries(udp)) {
      if (typeof v !== "number") continue;
      if (/^dropped/.test(k) ? v > 0 : /^sessions(Created|Max)$/.test(k)) {
        relayCounters[k] = v;
      }
    }
    return { base: base.rss, points, relayCounters };
  } finally {
    if (relay) await relay.stop().catch(() => undefined);
    if (sink) await sink.stop().catch(() => undefined);
    lab.destroy();
  }
}

async function kernelPhase(ports: number, tmp: string, log: (s: string) => void) {
  const { lab } = makeLab(tmp);
  let sink: ToolProcess | null = null;
  try {
    sink = await startSink(lab, KERNEL_PORT);
    const conntrack = () =>
      Number(lab.exec(lab.router, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout);
    await Bun.sleep(SETTLE_MS);
    const base = slab();
    const conntrackBase = conntrack();
    // One conntrack entry per forwarded flow (a resent flow only refreshes its entry).
    const count = async () => conntrack() - conntrackBase;
    return await steps(lab, ports, KERNEL_PORT, count, async (flows) => {
      const perFlow = (slab() - base) / flows;
      log(`[bench] memory kernel ${flows} flows (conntrack entries): kernel slab ` +
        `${perFlow.toFixed(0)} B/flow`);
      return { sessions: flows, sockets: 0, rssBytes: 0, rssPerSession: 0,
        slabPerSession: perFlow };
    });
  } finally {
    if (sink) await sink.stop().catch(() => undefined);
    lab.destroy();
  }
}

/** One repetition: the relay's lab, then kernel forwarding's lab. Needs root. */
export async function runMemory(quick: boolean, log: (s: string) => void): Promise<MemoryRep> {
  const reason = labUnavailableReason();
  if (reason) throw new Error(`bench/memory.ts: ${reason}`);
  run(["make", "-s", "-C", import.meta.dir]);
  const ports = quick ? MEMORY_PORTS.quick : MEMORY_PORTS.full;
  const tmp = mkdtempSync(join(tmpdir(), "relay-bench-memory-"));
  try {
    const relay = await relayPhase(ports, tmp, log);
    const kernel = await kernelPhase(ports, tmp, log);
    return { relayRssBaseBytes: relay.base, relay: relay.points, kernel,
      relayCounters: relay.relayCounters };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
