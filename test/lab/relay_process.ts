// Runs the relay as a child process in a namespace and talks to it through its JSON
// lines on stdout (ready, metrics on SIGUSR1, final on SIGTERM).
import type { Subprocess } from "bun";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { JsonLinesProcess } from "./json_lines.ts";
import type { Lab } from "./netns.ts";

const ROOT = join(import.meta.dir, "..", "..");
export const BUN = join(ROOT, "node_modules", ".bin", "bun");

/**
 * The runtime the relay under test runs on: RELAY_RUNTIME=node runs it on Node.js (the
 * bundle scripts/build_node.ts writes, with $RELAY_NODE or the node on PATH), else Bun.
 * Only the relay: peers, probes and tools stay on Bun.
 */
function nodeBinary(): string {
  const fromEnv = process.env.RELAY_NODE;
  if (fromEnv) return fromEnv;
  const found = Bun.which("node");
  if (found === null) throw new Error("RELAY_RUNTIME=node: no node on PATH (set RELAY_NODE)");
  return found;
}

export type Runtime = "bun" | "node";

/** The runtime RELAY_RUNTIME names (bench --runtime sets it): node, else bun. */
export function envRuntime(): Runtime {
  return process.env.RELAY_RUNTIME === "node" ? "node" : "bun";
}

/** The relay's command on `runtime` (RELAY_RUNTIME's by default): [runtime, entry]. */
export function relayCommand(runtime: Runtime = envRuntime()): [string, string] {
  return runtime === "node"
    ? [nodeBinary(), join(ROOT, "dist", "node", "main.js")]
    : [BUN, join(ROOT, "src", "main.ts")];
}

/** The relay's command at start: RELAY_BIN RELAY_MAIN args... */
export const [RELAY_BIN, RELAY_MAIN] = relayCommand();

/**
 * RELAY_SANITIZE=1 runs the relay (and only the relay: peers are not instrumented) with
 * the ASan/UBSan build of the C helper (`make -C ffi sanitize`), so the end-to-end tests
 * double as a memory-safety run of the data path.
 */
function sanitizerPrefix(): string[] {
  if (process.env.RELAY_SANITIZE !== "1") return [];
  const asan = spawnSync("gcc", ["-print-file-name=libasan.so"], {
    encoding: "utf8",
  }).stdout.trim();
  return [
    "env",
    `LD_PRELOAD=${asan}`,
    `RELAY_FFI_LIB=${join(ROOT, "build", "librelay-asan.so")}`,
    "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1",
    "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1",
  ];
}

/**
 * `raw` with control.socketPath set to `path`, unless it sets one itself; and with
 * RELAY_UDP_IO_BACKEND's udp.ioBackend (envIoBackend) and RELAY_TCP_DATA_PLANE's
 * tcp.dataPlane (withTcpDataPlane), here because every config a lab relay reads, at start
 * or at a reload, goes through this function (a reload that changed either would be
 * refused).
 */
export function withControlSocket(raw: object, path: string): object {
  const backend = envIoBackend(raw);
  const udp = (raw as { udp?: object }).udp;
  const lab = withTcpDataPlane(
    backend === null ? raw : { ...raw, udp: { ...udp, ioBackend: backend } },
  );
  const control = (lab as { control?: { socketPath?: string } }).control;
  if (control?.socketPath !== undefined) return lab;
  return { ...lab, control: { ...control, socketPath: path } };
}
/**
 * RELAY_TCP_DATA_PLANE ("worker" or "main"): the TCP plane of every lab relay whose
 * config does not name one, so that the end-to-end files run on either (scripts/test.sh
 * runs the TCP files again on the one that is not the default). Unset: the default.
 */
function withTcpDataPlane(raw: object): object {
  const plane = process.env.RELAY_TCP_DATA_PLANE;
  if (plane === undefined || plane === "") return raw;
  if (plane !== "worker" && plane !== "main") {
    throw new Error(`RELAY_TCP_DATA_PLANE=${plane}: "worker" or "main"`);
  }
  const tcp = (raw as { tcp?: { dataPlane?: string } }).tcp;
  if (tcp?.dataPlane !== undefined) return raw;
  return { ...raw, tcp: { ...tcp, dataPlane: plane } };
}

/**
 * A relay in the lab never uses the default control socket: a relay on the host may hold
 * it, and two labs at once would collide. Unless its config names one, it gets a config
 * copy with a socket in a temporary directory of its own.
 */
function labConfigPath(configPath: string | null): string {
  const raw = configPath === null ? {} : JSON.parse(readFileSync(configPath, "utf8"));
  // A config that names its socket and that no RELAY_* data-plane variable changes is used
  // as it is.
  const unchanged = JSON.stringify(withControlSocket(raw, "")) === JSON.stringify(raw);
  if (raw.control?.socketPath !== undefined && unchanged) return configPath!;
  const dir = mkdtempSync(join(tmpdir(), "relay-lab-"));
  const path = join(dir, "config.json");
  writeFileSync(path, JSON.stringify(withControlSocket(raw, join(dir, "control.sock"))));
  return path;
}

/**
 * RELAY_UDP_IO_BACKEND (auto, epoll, io_uring): the UDP data plane the lab's relays run
 * on, so that the end-to-end files run on either (scripts/test.sh runs them on both). A
 * config that names udp.ioBackend, or runs UDP on the main thread (udp.dataPlane
 * callback: epoll only), keeps its own. null: the config as it is.
 */
function envIoBackend(raw: { udp?: { ioBackend?: string; dataPlane?: string } }): string | null {
  const backend = process.env.RELAY_UDP_IO_BACKEND;
  if (backend === undefined || backend === "") return null;
  if (!["auto", "epoll", "io_uring"].includes(backend)) {
    throw new Error(`RELAY_UDP_IO_BACKEND=${backend}: auto, epoll or io_uring`);
  }
  if (raw.udp?.ioBackend !== undefined || raw.udp?.dataPlane === "callback") return null;
  return backend;
}

export class RelayProcess extends JsonLinesProcess {
  /** Starts the relay in the router namespace (configPath null: the built-in default). */
  /** prefix: a command the relay runs under (e.g. prlimit --nofile=N --). */
  /** asked: the runtime it runs on (RELAY_RUNTIME's by default; benches run both). */
  /** checkout: run another checkout's src/main.ts on Bun (bench --baseline DIR). */
  static async start(
    lab: Lab,
    configPath: string | null,
    timeoutMs = 10_000,
    prefix: string[] = [],
    asked: Runtime = envRuntime(),
    checkout: string | null = null,
  ): Promise<RelayProcess> {
    const [runtime, main] =
      checkout === null ? relayCommand(asked) : [BUN, join(checkout, "src", "main.ts")];
    if (!existsSync(main)) throw new Error(`${main} is missing: build it (bash scripts/build.sh)`);
    const config = ["--config", labConfigPath(configPath)];
    const proc = lab.spawn(lab.router, [
      ...prefix,
      ...sanitizerPrefix(),
      runtime,
      main,
      ...config,
      "--sessions",
      "1000",
    ]);
    const relay = new RelayProcess("relay", proc as Subprocess<"ignore", "pipe", "pipe">);
    const ready = await relay.waitFor((l) => l.event === "ready", timeoutMs);
    // The runtime asked for is the one that runs it.
    if (ready.runtime !== asked) {
      relay.proc.kill("SIGKILL");
      throw new Error(`relay runs on ${ready.runtime}, not on ${asked} as asked`);
    }
    return relay;
  }

  /** Asks for a metrics snapshot (SIGUSR1) and returns it. */
  metrics(timeoutMs = 5000): Promise<any> {
    return this.request("SIGUSR1", "metrics", timeoutMs);
  }

  /** SIGTERM, then the final snapshot and the exit code. */
  async stop(timeoutMs = 10_000): Promise<{ final: any; exitCode: number | null }> {
    this.proc.kill("SIGTERM");
    const final = await this.waitFor((l) => l.event === "final", timeoutMs).catch(() => null);
    const exitCode = await Promise.race([this.proc.exited, Bun.sleep(timeoutMs).then(() => null)]);
    if (exitCode === null) this.proc.kill("SIGKILL");
    return { final, exitCode };
  }
}
