// bun run relay [--config FILE] [--print-rules] [--check-config]
// bun run relay stats|sessions|top ...   (the control socket's client: src/cli/)
// bun run relay log ...                   (the flow log's reader: src/cli/log.ts)
// bun run relay service print ...         (the systemd unit: src/cli/service.ts)
// Wiring only: parse arguments, load config, check privileges, start the relay and its
// control socket, print metrics on SIGUSR1 and at exit, stop cleanly on SIGINT/SIGTERM.
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
import { TcpRelay } from "./tcp/relay.ts";
import type { UdpSnapshot } from "./udp/relay.ts";
import { createUdpPlane } from "./udp/plane.ts";
import { rulesScript } from "./rules/nft.ts";
import { StartError } from "./sys/errno.ts";
import { loadFfi } from "./sys/ffi.ts";

const USAGE = `usage: bun run relay [--config FILE] [--print-rules] [--check-config]
       bun run relay stats|sessions|top [--control PATH | --config FILE] ...
       bun run relay rules apply|remove|print [--config FILE]   (the host's TPROXY rules)
       bun run relay service print [--config FILE] [--user NAME] [--group NAME]
                   (the systemd unit of this checkout, run as its own user; see the README)

  --config FILE    JSON configuration (default: built-in: TPROXY listeners on
                   127.0.0.1:12345 and [::1]:12345, relay to the original destination)
  --print-rules    print the nftables rules and policy routing for this config, then exit
  --check-config   validate the configuration, print it, then exit
  --print-schema   print the configuration's JSON Schema (for editors), then exit
  --sessions N     with SIGUSR1: how many sessions to list (default 32)

Metrics: GET /metrics on config.metrics.address:port (Prometheus text; port 0: none).

bun run relay log --help: reading the flow log (flowLog.path).

A running relay answers on its control socket (control.socketPath, default
/run/transparent-relay/control.sock, mode 0600):
  stats            its counters and gauges (as the SIGUSR1 line, without sessions)
  sessions         UDP sessions and TCP connections: [--client X] [--target X] [--name X]
                   [--listener X] [--sort bytes|packets|age|idle] [--limit N] [--json]
  top              a live view: flows/s, packets/s, drops, busiest sessions (q quits)
  (bun run relay stats --help for the details)

Signals: SIGUSR1 prints metrics and sessions as one JSON line on stdout;
SIGINT/SIGTERM stop the relay (threads joined, sockets closed) and print final metrics;
SIGHUP is logged and ignored (this version does not reload: restart to apply changes).

Exit status: 0 stopped by a signal; 1 could not start (a listener or the metrics port
in use, another relay on the control socket, the helper not built, descriptors); 2 bad
arguments or configuration; 70 the data path failed (a bug: final metrics line, then
exit, so a service manager restarts it); 77 missing privilege (CAP_NET_ADMIN).`;

/** sysexits.h: the codes service managers and scripts already know. */
const EXIT = {
  startFailed: 1,
  usage: 2,
  software: 70, // EX_SOFTWARE
  noPermission: 77, // EX_NOPERM
} as const;

/** CAP_NET_ADMIN is bit 12 of CapEff (linux/capability.h). */
const CAP_NET_ADMIN_BIT = 12n;

/**
 * Whether the effective set holds CAP_NET_ADMIN. Read even as root: a root process can
 * run with its capabilities dropped (a container, capsh --drop), and then the sockets
 * would fail half way instead of here with a clear message.
 */
function hasNetAdmin(): boolean {
  try {
    const status = readFileSync("/proc/self/status", "utf8");
    const line = status.split("\n").find((l) => l.startsWith("CapEff:"));
    if (!line) return false;
    const caps = BigInt(`0x${line.slice(7).trim()}`);
    return ((caps >> CAP_NET_ADMIN_BIT) & 1n) === 1n;
  } catch {
    return false;
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
  tcp: TcpRelay | null,
  flowLog: FlowLog | null,
  sessionsListed: number,
  event: string,
) {
  return {
    event,
    timeMs: Date.now(),
    uptimeMs: udp.uptimeMs,
    udp: udp.udp,
    sessions: udp.sessions,
    // null without TCP listeners; connections: the first `--sessions N` open ones.
    tcp: tcp ? { ...tcp.snapshot(), connections: tcp.connectionViews(sessionsListed) } : null,
    flowLog: flowLog ? { ...flowLog.counters } : null,
  };
}

async function main(): Promise<void> {
  const command = process.argv[2];
  if (command === "rules") {
    const { rulesCommand } = await import("./cli/rules.ts");
    process.exit(rulesCommand(process.argv.slice(3)));
  }
  if (command === "service") {
    const { serviceCommand } = await import("./cli/service.ts");
    process.exit(serviceCommand(process.argv.slice(3)));
  }
  if (command === "stats" || command === "sessions" || command === "top") {
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
    if (err instanceof ConfigError) fail(`invalid configuration:\n  ${err.problems.join("\n  ")}`);
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
  if (!hasNetAdmin()) {
    fail(
      "missing privilege: CAP_NET_ADMIN is not in the effective set. TPROXY listeners " +
        "need it (IP_TRANSPARENT) and upstream sockets need it (SO_MARK). Run as root, " +
        "or give this process that one capability: systemd AmbientCapabilities=" +
        "CAP_NET_ADMIN (bun run relay service print), or setpriv --ambient-caps=+net_admin " +
        "(see the README). Never setcap the bun binary: every Bun script would get it.",
      EXIT.noPermission,
    );
  }

  let lib: ReturnType<typeof loadFfi>;
  try {
    lib = loadFfi();
  } catch (err) {
    fail((err as Error).message, EXIT.startFailed);
  }
  // Descriptors: ask for what the bounds may need, then fit the bounds under what we got.
  const nofileLimit = lib.rl_raise_nofile(Math.min(descriptorsWanted(config), 0x7fffffff));
  try {
    const fitted = fitToDescriptors(config, nofileLimit);
    config = fitted.config;
    for (const note of fitted.notes) log.warn(note);
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

  let tcp: TcpRelay | null = null;
  let lastUdp: UdpSnapshot | null = null;
  const onFatal = (message: string, last: UdpSnapshot | null) => {
    // Never half alive: the last counters, the reason, a non-zero status.
    const final = {
      event: "final",
      fatal: message,
      timeMs: Date.now(),
      udp: (last ?? lastUdp)?.udp ?? null,
      tcp: tcp ? tcp.snapshot() : null,
      outputErrors,
    };
    process.stdout.write(JSON.stringify(final) + "\n");
    log.error(`fatal: ${message}`);
    process.exit(EXIT.software);
  };
  // Each relay gets the listeners of its protocol (listener indexes are per relay).
  const udpListeners = config.listeners.filter((l) => l.protocol === "udp");
  const udp = createUdpPlane(lib, { ...config, listeners: udpListeners }, onFatal, onFlows);
  tcp = config.listeners.some((l) => l.protocol === "tcp")
    ? new TcpRelay(lib, config, {
        onFatal: (message) => onFatal(message, null),
        onFlows: onFlows ?? undefined,
      })
    : null;
  let metrics: MetricsServer | null = null;
  let control: ControlSocket | null = null;
  try {
    await udp.start();
    tcp?.start();
    metrics = startMetricsServer(config.metrics, udp, tcp, () => flowLog?.counters ?? null);
    control = await ControlSocket.start(config.control.socketPath, controlCommands({ udp, tcp }));
  } catch (err) {
    const privilege = err instanceof StartError && err.privilege;
    fail((err as Error).message, privilege ? EXIT.noPermission : EXIT.startFailed);
  }
  for (const l of config.listeners) {
    const where = l.ipv6 ? `[${l.address}]:${l.port}` : `${l.address}:${l.port}`;
    const how = l.protocol === "udp" ? `reply ${l.reply}` : `${l.mode}, source ${l.source}`;
    log.info(`listening ${l.protocol} ${where} (${l.name}, ${how})`);
  }
  log.info(
    `sessions max ${config.udp.sessionsMax} (${config.udp.sessionsPerClientMax} per ` +
      `client), mapping ${config.udp.mapping}, upstream mark 0x${config.mark.toString(16)}, ` +
      `descriptors ${nofileLimit}, metrics ${metrics ? metrics.url : "off (metrics.port 0)"}`,
  );

  const write = async (event: string, data: UdpSnapshot) => {
    lastUdp = data;
    process.stdout.write(
      JSON.stringify({
        ...(await snapshot(data, tcp, flowLog, args.sessionsListed, event)),
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
  // No reload in this version: a SIGHUP (a closed terminal, `systemctl reload`) must
  // not end the relay (Bun's default for SIGHUP is to exit 129 without final metrics).
  process.on("SIGHUP", () => {
    log.warn("SIGHUP ignored: this version does not reload; restart to apply changes");
  });
  let metricsTimer: ReturnType<typeof setInterval> | null = null;
  if (config.metrics.logIntervalMs > 0) {
    metricsTimer = setInterval(() => print("metrics"), config.metrics.logIntervalMs);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    // Scrapes end first: none races the data path's own stop.
    metrics?.stop();
    // TCP first: no new connections, open ones get tcp.shutdownGraceMs to finish.
    void (tcp ? tcp.stop(config.tcp.shutdownGraceMs) : Promise.resolve())
      .then(async () => {
        if (metricsTimer) clearInterval(metricsTimer);
        // No control request may reach the UDP worker once it is asked to stop.
        control?.stop();
        const last = await udp.stop(args.sessionsListed);
        // Every flow has ended by now (its record handed over): on disk before the final line.
        flowLog?.close();
        await write("final", last);
        log.info(`stopped (${signal})`);
        process.exit(0);
      })
      .catch((err) => {
        log.error(`stop: ${(err as Error).message}`);
        process.exit(EXIT.startFailed);
      });
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
  // Ready marker for scripts and tests: printed once every listener is bound.
  process.stdout.write(JSON.stringify({ event: "ready", pid: process.pid }) + "\n");
}

// `relay log ...` only reads the flow log: no privileges, no sockets (src/cli/log.ts).
if (process.argv[2] === "log") {
  const { runLog } = await import("./cli/log.ts");
  process.exit(await runLog(process.argv.slice(3)));
} else {
  await main();
}
