// bun run relay [--config FILE] [--print-rules] [--check-config]
// bun run relay doctor ...                (can this host run it: src/doctor/)
// bun run relay stats|sessions|top|reload ...   (the control socket's client: src/cli/)
// bun run relay log ...                   (the flow log's reader: src/cli/log.ts)
// bun run relay service print ...         (the systemd unit: src/cli/service.ts)
// Wiring only: parse arguments, load config, check privileges, apply the host rules
// (firewall.manage), start the relay and its control socket, print metrics on SIGUSR1
// and at exit, reload on SIGHUP, stop cleanly on SIGINT/SIGTERM.
import { readFileSync } from "node:fs";
import { ConfigError, loadConfigFile, parseConfig, type Config } from "./config/load.ts";
import { configJsonSchemaText } from "./config/json_schema.ts";
import { descriptorsWanted, fitToDescriptors } from "./config/limits.ts";
import { controlCommands } from "./control/commands.ts";
import { FlowLog } from "./control/flow_log.ts";
import { configureLog, log } from "./control/log.ts";
import { type MetricsServer, startMetricsServer } from "./control/metrics_server.ts";
import { ControlSocket } from "./control/socket.ts";
import { guardOutput, outputErrors } from "./control/output.ts";
import { type ReloadState, Reloader } from "./control/reloader.ts";
import { createTcpPlane, type TcpPlane, type TcpSnapshot } from "./tcp/plane.ts";
import type { UdpSnapshot } from "./udp/relay.ts";
import { createUdpPlane, udpPlaneConfig } from "./udp/plane.ts";
import { applyRules, RulesError, removeRules } from "./rules/apply.ts";
import { rulesScript } from "./rules/nft.ts";
import { runCommand } from "./sys/command.ts";
import { StartError } from "./sys/errno.ts";
import { loadFfi } from "./sys/ffi.ts";
import { RUNTIME } from "./sys/runtime.ts";
import {
  CAP,
  effectiveCapabilities,
  hasCapability,
  privilegedPortReason,
} from "./sys/capabilities.ts";

const USAGE = `usage: bun run relay [--config FILE] [--print-rules] [--check-config]
       bun run relay stats|sessions|top|reload [--control PATH | --config FILE] ...
       bun run relay rules apply|remove|print [--config FILE]   (the host's TPROXY rules:
                   firewall.backend nft|iptables, firewall.mode gateway|local|both)
       bun run relay doctor [--config FILE] [--json] [--no-self-test]   (can this host run it?)
       bun run relay service print [--config FILE] [--user NAME] [--group NAME]
                   (the systemd unit of this checkout, run as its own user; see the README)

  --config FILE    JSON configuration (default: built-in: TPROXY listeners on
                   127.0.0.1:12345 and [::1]:12345, relay to the original destination)
  --print-rules    print the firewall rules (nft or iptables, as firewall.backend says) and
                   policy routing for this config as a shell script, then exit
  --check-config   validate the configuration, print it, then exit
  --print-schema   print the configuration's JSON Schema (for editors), then exit
  --sessions N     with SIGUSR1: how many sessions to list (default 32)

Metrics: GET /metrics on config.metrics.address:port (Prometheus text; port 0: none).

On Node.js (20.15+, 22.2+, 23+; docs/node.md): npm run relay:node -- ARGS, or
node dist/node/main.js ARGS (bash scripts/build.sh writes dist/node; koffi is the FFI).

bun run relay log --help: reading the flow log (flowLog.path).

doctor checks kernel support (TPROXY, socket match, policy routing), CAP_NET_ADMIN, the
descriptor limit, the sysctls (forwarding, rp_filter), our rules and routes against the
config, the listeners' ports, and (unless --no-self-test) relays a datagram through
throwaway namespaces. Each failure comes with its fix; exit 0 all passed, 1 a check
failed, 2 bad arguments or configuration.

A running relay answers on its control socket (control.socketPath, default
/run/transparent-relay/control.sock, mode 0600):
  stats            its counters and gauges (as the SIGUSR1 line, without sessions)
  sessions         UDP sessions and TCP connections: [--client X] [--target X] [--name X]
                   [--listener X] [--sort bytes|packets|age|idle] [--limit N] [--json]
  top              a live view: flows/s, packets/s, drops, busiest sessions (q quits)
  reload           as SIGHUP: re-read --config, apply live changes or none (says why)
  (bun run relay stats --help for the details)

Signals: SIGUSR1 prints metrics and sessions as one JSON line on stdout;
SIGINT/SIGTERM stop the relay (threads joined, sockets closed) and print final metrics;
SIGHUP reloads --config: live changes (timeouts, limits, intercept, firewall, log...)
are applied without dropping flows; if a changed field needs a restart (listeners,
udp.sessionsMax, ...) or the file is invalid, nothing is applied and the log says why
(also: bun run relay reload [--control PATH | --config FILE]).

firewall.manage true: the host rules are applied at start (replacing any left by a
crash), re-applied by a reload that changes them, removed at exit (signal or 70).

Exit status: 0 stopped by a signal; 1 could not start (a listener or the metrics port
in use, another relay on the control socket, the helper not built, descriptors, the
host rules failed); 2 bad arguments or configuration; 70 the data path failed (a bug:
final metrics line, then exit, so a service manager restarts it); 77 missing privilege
(CAP_NET_ADMIN; CAP_NET_RAW when a rule rejects UDP).`;

/** sysexits.h: the codes service managers and scripts already know. */
const EXIT = {
  startFailed: 1,
  usage: 2,
  software: 70, // EX_SOFTWARE
  noPermission: 77, // EX_NOPERM
} as const;

/**
 * The effective capability set. Read even as root: a root process can run with its
 * capabilities dropped (a container, capsh --drop), and then the sockets would fail half
 * way instead of here with a clear message.
 */
function effectiveMask(): bigint {
  try {
    return effectiveCapabilities(readFileSync("/proc/self/status", "utf8")) ?? 0n;
  } catch {
    return 0n;
  }
}

function fail(message: string, code: number = EXIT.usage): never {
  console.error(`relay: ${message}`);
  process.exit(code);
}

interface Args {
  configPath: string | null;
  printRules: boolean;
  checkConfig: boolean;
  printSchema: boolean;
  sessionsListed: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    configPath: null,
    printRules: false,
    checkConfig: false,
    printSchema: false,
    sessionsListed: 32,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--config") {
      args.configPath = argv[++i] ?? fail("--config needs a file path");
    } else if (a === "--print-rules") {
      args.printRules = true;
    } else if (a === "--check-config") {
      args.checkConfig = true;
    } else if (a === "--print-schema") {
      args.printSchema = true;
    } else if (a === "--sessions") {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 0 || n > 100_000)
        fail("--sessions needs an integer 0-100000");
      args.sessionsListed = n;
    } else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else {
      fail(`unknown argument ${JSON.stringify(a)}\n${USAGE}`);
    }
  }
  return args;
}

async function snapshot(
  udp: UdpSnapshot,
  tcp: TcpPlane | null,
  flowLog: FlowLog | null,
  sessionsListed: number,
  event: string,
  config: ReloadState | null,
) {
  const tcpView = tcp ? await tcp.snapshot(sessionsListed) : null;
  return {
    event,
    timeMs: Date.now(),
    uptimeMs: udp.uptimeMs,
    udp: udp.udp,
    sessions: udp.sessions,
    // udp.workers > 1: packets and sessions of each worker (absent with one).
    workers: udp.workers,
    // null without TCP listeners; connections: the first `--sessions N` open ones.
    tcp: tcpView ? { ...tcpView.tcp, connections: tcpView.connections } : null,
    flowLog: flowLog ? { ...flowLog.counters } : null,
    // The config generation and reload results (null until the relay runs).
    config,
  };
}

async function main(): Promise<void> {
  const command = process.argv[2];
  if (command === "rules") {
    const { rulesCommand } = await import("./cli/rules.ts");
    process.exit(rulesCommand(process.argv.slice(3)));
  }
  if (command === "doctor") {
    const { doctorCommand } = await import("./cli/doctor.ts");
    process.exit(await doctorCommand(process.argv.slice(3)));
  }
  if (command === "service") {
    const { serviceCommand } = await import("./cli/service.ts");
    process.exit(serviceCommand(process.argv.slice(3)));
  }
  if (command === "stats" || command === "sessions" || command === "top" || command === "reload") {
    const { runCommand } = await import("./cli/main.ts");
    process.exit(await runCommand(command, process.argv.slice(3)));
  }
  guardOutput();
  const args = parseArgs(process.argv.slice(2));
  if (args.printSchema) {
    process.stdout.write(configJsonSchemaText());
    return;
  }
  let config: Config;
  try {
    config = args.configPath ? loadConfigFile(args.configPath) : parseConfig({});
  } catch (err) {
    if (err instanceof ConfigError) fail(err.describe());
    throw err;
  }
  configureLog(config.log);
  if (args.printRules) {
    process.stdout.write(rulesScript(config));
    return;
  }
  if (args.checkConfig) {
    console.log(
      JSON.stringify(
        { ...config, timeoutClassByPort: undefined },
        (_k, v) => (v instanceof Uint8Array ? undefined : v),
        2,
      ),
    );
    return;
  }
  // A SIGHUP while starting (a `systemctl reload` racing the start) must not end the
  // relay: Bun's default would exit 129, leaving the host rules of firewall.manage.
  let onHangUp = () => log.warn("SIGHUP while starting: ignored (reload once the relay runs)");
  process.on("SIGHUP", () => onHangUp());
  const capabilities = effectiveMask();
  if (!hasCapability(capabilities, CAP.netAdmin)) {
    fail(
      "missing privilege: CAP_NET_ADMIN is not in the effective set. TPROXY listeners " +
        "need it (IP_TRANSPARENT) and upstream sockets need it (SO_MARK). Run as root, " +
        "or give this process that one capability: systemd AmbientCapabilities=" +
        "CAP_NET_ADMIN (bun run relay service print), or setpriv --ambient-caps=+net_admin " +
        "(see the README). Never setcap the bun binary: every Bun script would get it.",
      EXIT.noPermission,
    );
  }
  const lowPort = privilegedPortReason(config);
  if (lowPort !== null && !hasCapability(capabilities, CAP.netBindService)) {
    // Not fatal: a listener below 1024 fails its bind at once (exit 77), but reply sockets
    // bind per flow, and those flows' replies would be lost (replySocketBindFailed).
    log.warn(
      `CAP_NET_BIND_SERVICE is not in the effective set, but the config binds a port ` +
        `below 1024 (${lowPort}): replies from there will fail to bind. Grant it with ` +
        "AmbientCapabilities (bun run relay service print adds it) or setpriv.",
    );
  }

  let lib: ReturnType<typeof loadFfi>;
  try {
    lib = loadFfi();
  } catch (err) {
    fail((err as Error).message, EXIT.startFailed);
  }
  for (const warning of config.warnings) log.warn(warning);
  // Descriptors: ask for what the bounds may need, then fit the bounds under what we got.
  const nofileLimit = lib.rl_raise_nofile(Math.min(descriptorsWanted(config), 0x7fffffff));
  try {
    const fitted = fitToDescriptors(config, nofileLimit);
    config = fitted.config;
    for (const note of fitted.notes) log.warn(note);
    // A policy rule that can never match (src/policy/config.ts) loads, with a warning.
    for (const warning of config.warnings) log.warn(warning);
  } catch (err) {
    fail((err as Error).message, EXIT.startFailed);
  }

  // The flow log's file is opened now: a path that cannot be written fails the start.
  let flowLog: FlowLog | null = null;
  if (config.flowLog.path !== "") {
    try {
      flowLog = new FlowLog(config.flowLog);
    } catch (err) {
      fail((err as Error).message, EXIT.startFailed);
    }
  }
  const onFlows = flowLog ? flowLog.write.bind(flowLog) : null;

  // firewall.manage: the host rules go in before the listeners are bound (applyRules
  // replaces whatever a crashed run left) and out at every exit after this point.
  let rulesApplied: Config | null = null;
  const removeManagedRules = () => {
    if (rulesApplied === null) return;
    try {
      const removed = removeRules(rulesApplied, runCommand);
      log.info(`firewall.manage: removed ${removed.join(", ") || "nothing (already gone)"}`);
    } catch (err) {
      log.error(`firewall.manage: could not remove the host rules: ${(err as Error).message}`);
    }
    rulesApplied = null;
  };
  const startFailed = (message: string, code: number): never => {
    removeManagedRules();
    return fail(message, code);
  };
  if (config.firewall.manage) {
    try {
      applyRules(config, runCommand);
    } catch (err) {
      if (!(err instanceof RulesError)) throw err;
      fail(
        `firewall.manage: the host rules could not be applied: ${err.message}`,
        err.privilege ? EXIT.noPermission : EXIT.startFailed,
      );
    }
    rulesApplied = config;
    log.info("firewall.manage: host rules applied (removed again at exit)");
  }

  let tcp: TcpPlane | null = null;
  let lastUdp: UdpSnapshot | null = null;
  const onFatal = (message: string, last: UdpSnapshot | null, lastTcp?: TcpSnapshot | null) => {
    // Never half alive: the last counters, the reason, a non-zero status.
    const final = {
      event: "final",
      fatal: message,
      timeMs: Date.now(),
      udp: (last ?? lastUdp)?.udp ?? null,
      tcp: lastTcp ?? tcp?.latest() ?? null,
      outputErrors,
    };
    process.stdout.write(JSON.stringify(final) + "\n");
    log.error(`fatal: ${message}`);
    removeManagedRules();
    process.exit(EXIT.software);
  };
  // Each relay gets the listeners of its protocol (listener indexes are per relay).
  const udpConfig = udpPlaneConfig;
  const udp = createUdpPlane(lib, udpConfig(config), onFatal, onFlows);
  tcp = createTcpPlane(lib, config, (message, last) => onFatal(message, null, last), onFlows);
  let metrics: MetricsServer | null = null;
  let control: ControlSocket | null = null;
  let metricsTimer: ReturnType<typeof setInterval> | null = null;
  const reloader = new Reloader(args.configPath, config, nofileLimit, {
    applyRules: (next) => {
      const before = rulesApplied;
      try {
        // Another backend's rules would not be replaced by this one's: remove them first.
        if (before && before.firewall.backend !== next.firewall.backend) {
          removeRules(before, runCommand);
          rulesApplied = null;
        }
        applyRules(next, runCommand);
        rulesApplied = next;
      } catch (err) {
        // A failed apply removed everything of ours: put the running rules back.
        rulesApplied = null;
        let restored = "";
        if (before) {
          try {
            applyRules(before, runCommand);
            rulesApplied = before;
            restored = "; the previous rules were put back";
          } catch (again) {
            restored = `; putting the previous rules back failed too: ${(again as Error).message}`;
          }
        }
        throw new Error(`${(err as Error).message}${restored}`);
      }
    },
    applyLive: async (next) => {
      await udp.reconfigure(udpConfig(next));
      await tcp?.reconfigure(next);
      configureLog(next.log);
      flowLog?.setRotation(next.flowLog.fileBytesMax, next.flowLog.filesMax);
      if (next.metrics.logIntervalMs !== reloader.config.metrics.logIntervalMs) {
        startMetricsTimer(next.metrics.logIntervalMs);
      }
      if (!next.firewall.manage) rulesApplied = null; // no longer ours to remove
    },
  });
  try {
    await udp.start();
    await tcp?.start();
    metrics = await startMetricsServer(
      config.metrics,
      udp,
      tcp,
      () => flowLog?.counters ?? null,
      () => reloader.state(),
    );
    control = await ControlSocket.start(
      config.control.socketPath,
      controlCommands({ udp, tcp, reloader }),
    );
  } catch (err) {
    const privilege = err instanceof StartError && err.privilege;
    startFailed((err as Error).message, privilege ? EXIT.noPermission : EXIT.startFailed);
  }
  for (const l of config.listeners) {
    const where = l.ipv6 ? `[${l.address}]:${l.port}` : `${l.address}:${l.port}`;
    const how =
      l.protocol === "udp"
        ? `reply ${l.reply}, source ${l.source}`
        : `${l.mode}, source ${l.source}`;
    log.info(`listening ${l.protocol} ${where} (${l.name}, ${how})`);
  }
  if (tcp) {
    const how =
      config.tcp.dataPlane === "worker"
        ? "one Worker thread: accept, decide, connect and the splice engine inline"
        : "main thread, splice engine on its own thread";
    log.info(`tcp data plane ${config.tcp.dataPlane} (${how})`);
  }
  log.info(
    `sessions max ${config.udp.sessionsMax} (${config.udp.sessionsPerClientMax} per ` +
      `client), mapping ${config.udp.mapping}, udp workers ${config.udp.workers}, ` +
      `upstream mark 0x${config.mark.toString(16)}, ` +
      `descriptors ${nofileLimit}, metrics ${metrics ? metrics.url : "off (metrics.port 0)"}`,
  );

  const write = async (event: string, data: UdpSnapshot) => {
    lastUdp = data;
    process.stdout.write(
      JSON.stringify({
        ...(await snapshot(data, tcp, flowLog, args.sessionsListed, event, reloader.state())),
        outputErrors,
      }) + "\n",
    );
  };
  const print = (event: string) =>
    udp.snapshot(args.sessionsListed).then(
      (data) => write(event, data),
      (err) => log.warn(`metrics: ${(err as Error).message}`),
    );
  process.on("SIGUSR1", () => print("metrics"));
  // SIGHUP (`systemctl reload`, kill -HUP) reloads; it never ends the relay (Bun's
  // default for SIGHUP would be to exit 129 without final metrics).
  let stopping = false;
  onHangUp = () => {
    if (!stopping) void reloader.reload();
  };
  function startMetricsTimer(intervalMs: number): void {
    if (metricsTimer) clearInterval(metricsTimer);
    metricsTimer = intervalMs > 0 ? setInterval(() => print("metrics"), intervalMs) : null;
  }
  startMetricsTimer(config.metrics.logIntervalMs);
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    // Scrapes end first: none races the data path's own stop.
    metrics?.stop();
    // TCP first: no new connections, open ones get tcp.shutdownGraceMs to finish.
    void (tcp ? tcp.stop(reloader.config.tcp.shutdownGraceMs) : Promise.resolve())
      .then(async () => {
        if (metricsTimer) clearInterval(metricsTimer);
        // No control request may reach the UDP worker once it is asked to stop.
        control?.stop();
        const last = await udp.stop(args.sessionsListed);
        // Every flow has ended by now (its record handed over): on disk before the final line.
        flowLog?.close();
        await write("final", last);
        removeManagedRules();
        log.info(`stopped (${signal})`);
        process.exit(0);
      })
      .catch((err) => {
        log.error(`stop: ${(err as Error).message}`);
        removeManagedRules();
        process.exit(EXIT.startFailed);
      });
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
  // Ready marker for scripts and tests: printed once every listener is bound.
  const ready = { event: "ready", pid: process.pid, runtime: RUNTIME };
  process.stdout.write(JSON.stringify(ready) + "\n");
}

// `relay log ...` only reads the flow log: no privileges, no sockets (src/cli/log.ts).
if (process.argv[2] === "log") {
  const { runLog } = await import("./cli/log.ts");
  process.exit(await runLog(process.argv.slice(3)));
} else {
  await main();
}
