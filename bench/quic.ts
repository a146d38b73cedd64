// QUIC transfer (issue 5): time for ngtcp2's gtlsclient (client namespace) to download
// an N-MiB file over HTTP/3 from gtlsserver (server namespace), through plain kernel
// forwarding and through the relay, back to back in one lab (order rotates per rep).
//
//   kernel   gtlsserver on 198.18.1.2:4433, not intercepted
//   relay    gtlsserver on 198.18.1.2:443, intercepted (quicPorts [443]: the relay
//            parses the Initials for the SNI, quic.relay.test)
//
// The time is gtlsclient's whole run (process start, handshake, transfer, close): MB/s =
// file bytes / that time. Generator-bound: gtlsclient or gtlsserver used >= 90% of a CPU
// over the run (both are single-threaded; same threshold as bench/udp_gen.c).
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../src/config/load.ts";
import { LAB, Lab, labUnavailableReason } from "../test/lab/netns.ts";
import { QuicPeers } from "../test/lab/quic_peers.ts";
import { RelayProcess } from "../test/lab/relay_process.ts";
import { nftRuleset, policyRoutingCommands } from "../src/rules/nft.ts";

export type QuicPath = "kernel" | "relay";
const PORT: Record<QuicPath, number> = { kernel: 4433, relay: 443 };
const LISTENER_PORT = 12443;
const HOST = "quic.relay.test";
export const QUIC_MIB = { full: 32, quick: 2 };
const GENERATOR_BUSY_FRACTION = 0.9;
const TRANSFER_TIMEOUT_MS = 60_000;

export interface QuicSample {
  seconds: number;
  mbPerS: number;
  clientCpu: number;
  serverCpu: number;
  generatorBound: boolean;
}

export interface QuicResult {
  mib: number;
  samples: Record<QuicPath, QuicSample[]>;
  relayCounters: Record<string, number>;
}

/** utime + stime of a process (all threads), in seconds (USER_HZ 100). */
function cpuSeconds(pid: number): number {
  let ticks = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / 100;
}

/** Runs `reps` repetitions of kernel and relay in one lab. Needs root and ngtcp2's peers. */
export async function runQuic(quick: boolean, reps: number,
  log: (line: string) => void): Promise<QuicResult> {
  const reason = labUnavailableReason();
  if (reason) throw new Error(`bench/quic.ts: ${reason}`);
  const mib = quick ? QUIC_MIB.quick : QUIC_MIB.full;
  const lab = Lab.create();
  let peers: QuicPeers | null = null;
  let relay: RelayProcess | null = null;
  const servers: Array<ReturnType<QuicPeers["serve"]>> = [];
  try {
    const raw = {
      listeners: [{ name: "quic4", address: "127.0.0.1", port: LISTENER_PORT }],
      intercept: [{ listener: "quic4", ports: [PORT.relay], interfaces: [LAB.routerClientIf] }],
    };
    const config = parseConfig(raw);
    lab.installRules(nftRuleset(config), policyRoutingCommands(config));
    peers = new QuicPeers(lab);
    const bytes = mib << 20;
    // Not compressible, not all zeros: a pseudo-random file of exactly `bytes`.
    const blob = new Uint8Array(bytes);
    let x = 0x2545f491;
    for (let i = 0; i < bytes; i += 4) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      blob[i] = x & 0xff;
      blob[i + 1] = (x >>> 8) & 0xff;
      blob[i + 2] = (x >>> 16) & 0xff;
      blob[i + 3] = (x >>> 24) & 0xff;
    }
    writeFileSync(join(peers.dir, "htdocs", "blob.bin"), blob);
    const configPath = join(peers.dir, "relay.json");
    writeFileSync(configPath, JSON.stringify(raw));
    const server: Partial<Record<QuicPath, number>> = {};
    for (const path of ["kernel", "relay"] as QuicPath[]) {
      const proc = peers.serve(LAB.server4, PORT[path]);
      servers.push(proc);
      server[path] = proc.pid;
      await lab.waitForUdpPort(lab.server, PORT[path]);
    }
    lab.setHosts(lab.client, [[LAB.server4, HOST]]);
    relay = await RelayProcess.start(lab, configPath);
    lab.warmNeighbours();

    const download = (path: QuicPath): QuicSample => {
      const out = join(peers!.dir, "download", `${path}`);
      rmSync(out, { recursive: true, force: true });
      mkdirSync(out, { recursive: true });
      const argv = ["ip", "netns", "exec", lab.client, "gtlsclient", "-q", "--timeout=5s",
        "--exit-on-all-streams-close", `--download=${out}`, HOST, `${PORT[path]}`,
        `https://${HOST}/blob.bin`];
      const server0 = cpuSeconds(server[path]!);
      const started = performance.now();
      const r = Bun.spawnSync(argv, { stdout: "ignore", stderr: "pipe",
        timeout: TRANSFER_TIMEOUT_MS });
      const seconds = (performance.now() - started) / 1000;
      const serverCpu = (cpuSeconds(server[path]!) - server0) / seconds;
      const got = (() => {
        try {
          return statSync(join(out, "blob.bin")).size;
        } catch {
          return -1;
        }
      })();
      if (r.exitCode !== 0 || got !== bytes) {
        throw new Error(`gtlsclient ${path}: exit ${r.exitCode}, ${got} of ${bytes} bytes\n` +
          r.stderr.toString().slice(-2000));
      }
      const u = r.resourceUsage.cpuTime;
      const clientCpu = Number(u.user + u.system) / 1e6 / seconds;
      return { seconds, mbPerS: bytes / 1e6 / seconds, clientCpu, serverCpu,
        generatorBound: clientCpu >= GENERATOR_BUSY_FRACTION ||
          serverCpu >= GENERATOR_BUSY_FRACTION };
    };
    const samples: Record<QuicPath, QuicSample[]> = { kernel: [], relay: [] };
    const paths: QuicPath[] = ["kernel", "relay"];
    for (let rep = 0; rep < reps; rep++) {
      for (const path of paths.map((_, i) => paths[(i + rep) % paths.length])) {
        const s = download(path);
        samples[path].push(s);
        log(`[bench] quic rep ${rep + 1}/${reps} ${path.padEnd(6)} ${mib} MiB in ` +
          `${s.seconds.toFixed(2)} s (${s.mbPerS.toFixed(1)} MB/s), cpu client ` +
          `${s.clientCpu.toFixed(2)} server ${s.serverCpu.toFixed(2)}` +
          `${s.generatorBound ? " (generator-bound)" : ""}`);
      }
    }
    const udp = (await relay.metrics()).udp;
    const relayCounters: Record<string, number> = {};
    for (const [k, v] of Object.entries(udp)) {
      if (typeof v === "number" && v > 0 && /^dropped/.test(k)) relayCounters[k] = v;
    }
    return { mib, samples, relayCounters };
  } finally {
    if (relay) await relay.stop().catch(() => undefined);
    for (const s of servers) s.kill("SIGKILL");
    lab.destroy();
    peers?.close();
  }
}
