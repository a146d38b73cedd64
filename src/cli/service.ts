// `bun run relay service print [--config FILE] [--user NAME] [--group NAME]`: the systemd
// unit that runs this checkout as a service, with its absolute paths (the README's
// "Running as a systemd service"; scripts/install.sh --service installs it). The relay runs
// as an unprivileged user whose only capability is CAP_NET_ADMIN (and CAP_NET_BIND_SERVICE
// when the configuration binds a port below 1024); the rules are applied before it starts
// and removed after it stops (a crash included). Rendered, not templated: LimitNOFILE and
// the writable paths come from the configuration. Exit status: 0 printed; 2 bad arguments
// or configuration.
import { privilegedPortReason, rawSocketReason } from "../sys/capabilities.ts";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { type Config, ConfigError, loadConfigFile, parseConfig } from "../config/load.ts";
import { descriptorsWanted } from "../config/limits.ts";
import { PROJECT_ROOT, RUNTIME } from "../sys/runtime.ts";

const USAGE =
  "usage: bun run relay service print [--config FILE] [--user NAME] [--group NAME]\n" +
  "  prints the systemd unit of this checkout (scripts/install.sh --service installs it)\n" +
  "  --config FILE  the configuration the service runs with\n" +
  "                 (default /etc/transparent-relay/config.json)\n" +
  "  --user NAME    the user it runs as (default transparent-relay), with CAP_NET_ADMIN\n" +
  "                 (and CAP_NET_BIND_SERVICE when the config binds a port below 1024)\n" +
  "  --group NAME   its group (default: the user's name)";

const CHECKOUT = PROJECT_ROOT;
const CONFIG_PATH_DEFAULT = "/etc/transparent-relay/config.json";
const USER_DEFAULT = "transparent-relay";
/** fs.nr_open's default: a higher LimitNOFILE makes the start fail (EPERM). */
const NOFILE_MAX = 1 << 20;
const NOFILE_STEP = 1024;
/** systemd's default TimeoutStopSec; more when TCP connections get longer to finish. */
const STOP_TIMEOUT_S_MIN = 90;
/** useradd's rule for names (NAME_REGEX), and its length limit. */
const NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
/** What a unit can carry without quoting or specifier escapes (no spaces, %, $, quotes). */
const UNIT_PATH = /^\/[A-Za-z0-9._/+,:@-]*$/;

export interface UnitOptions {
  /** The checkout whose Bun, src/main.ts and build/ the unit runs (absolute). */
  checkout: string;
  configPath: string;
  config: Config;
  user: string;
  group: string;
  /**
   * The node binary when the unit runs the relay on Node.js (dist/node/main.js,
   * docs/node.md): `service print` run on Node sets it to its own; else the unit runs Bun.
   */
  node?: string;
}

/**
 * The directories the relay writes (control socket, flow log) as the systemd directives
 * that make them writable under ProtectSystem=strict: under /run, /var/log or /var/lib
 * systemd creates them owned by the service's user; elsewhere they must exist ("-": a
 * missing one fails the relay's own open, whose message names the path).
 */
function writableDirectives(config: Config): string[] {
  const dirs = [config.control.socketPath, config.flowLog.path]
    .filter((path) => path !== "")
    .map((path) => dirname(path));
  const directives = ["RuntimeDirectory=transparent-relay"];
  const managed: Array<[string, string]> = [
    ["/run/", "RuntimeDirectory"],
    ["/var/log/", "LogsDirectory"],
    ["/var/lib/", "StateDirectory"],
  ];
  for (const dir of dirs) {
    const under = managed.find(([prefix]) => dir.startsWith(prefix));
    const line = under ? `${under[1]}=${dir.slice(under[0].length)}` : `ReadWritePaths=-${dir}`;
    if (!directives.includes(line)) directives.push(line);
  }
  return directives;
}

/** Why the unit cannot be rendered for these options (each names the field), or []. */
function unitProblems(o: UnitOptions): string[] {
  const problems: string[] = [];
  const paths: Array<[string, string]> = [
    ["the checkout", o.checkout],
    ["the node binary", o.node ?? ""],
    ["--config", o.configPath],
    ["config.control.socketPath", o.config.control.socketPath],
    ["config.flowLog.path", o.config.flowLog.path],
  ];
  for (const [what, path] of paths) {
    if (path !== "" && !UNIT_PATH.test(path)) {
      problems.push(
        `${what} ${JSON.stringify(path)}: must be an absolute path of letters, digits and ` +
          "._/+,:@- (a unit file would need quoting or escapes)",
      );
    }
  }
  if (!NAME.test(o.user)) problems.push(`--user ${JSON.stringify(o.user)}: not a user name`);
  if (!NAME.test(o.group)) problems.push(`--group ${JSON.stringify(o.group)}: not a group name`);
  return problems;
}

/** The unit file's text. Throws ConfigError when unitProblems has something to say. */
export function serviceUnit(o: UnitOptions): string {
  const problems = unitProblems(o);
  if (problems.length > 0) throw new ConfigError(problems);
  const bun = join(o.checkout, "node_modules", ".bin", "bun");
  const relay =
    o.node === undefined
      ? `${bun} ${join(o.checkout, "src", "main.ts")}`
      : `${o.node} ${join(o.checkout, "dist", "node", "main.js")}`;
  const config = `--config ${o.configPath}`;
  const wanted = descriptorsWanted(o.config);
  const nofile = Math.min(Math.ceil(wanted / NOFILE_STEP) * NOFILE_STEP, NOFILE_MAX);
  const graceS = Math.ceil(o.config.tcp.shutdownGraceMs / 1000);
  const stopTimeoutS = Math.max(STOP_TIMEOUT_S_MIN, graceS + 30);
  // A checkout under a home directory stays readable (ProtectHome=yes would hide it), if
  // the user may enter it at all (scripts/install.sh --service checks).
  const home = /^\/(home|root|run\/user)\//.test(`${o.checkout}/`);
  const bindReason = privilegedPortReason(o.config);
  const rawReason = rawSocketReason(o.config);
  const caps = [
    "CAP_NET_ADMIN",
    ...(bindReason ? ["CAP_NET_BIND_SERVICE"] : []),
    ...(rawReason ? ["CAP_NET_RAW"] : []),
  ].join(" ");
  const bindNote =
    (bindReason ? `# CAP_NET_BIND_SERVICE: a port below 1024: ${bindReason}.\n` : "") +
    (rawReason ? `# CAP_NET_RAW: ${rawReason}.\n` : "");
  return `# transparent-relay, rendered by \`bun run relay service print\` for the checkout
# ${o.checkout} and the configuration ${o.configPath}.
# Render it again after moving the checkout or raising the configuration's bounds.

[Unit]
Description=Transparent UDP/TCP relay for Linux TPROXY
Documentation=file://${o.checkout}/README.md
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=${o.user}
Group=${o.group}
# CAP_NET_ADMIN: TPROXY listeners (IP_TRANSPARENT), the upstream mark (SO_MARK), and the
# nft and ip commands of \`relay rules\`.
${bindNote}# No other capability, and none gained by exec.
AmbientCapabilities=${caps}
CapabilityBoundingSet=${caps}
NoNewPrivileges=yes
# descriptorsWanted for this configuration: ${wanted} (rounded up; at most fs.nr_open's
# default ${NOFILE_MAX}). Past it the relay lowers its bounds and says so at start.
LimitNOFILE=${nofile}
# Bun's transpiler cache would go under the user's home, which it does not have.
Environment=BUN_RUNTIME_TRANSPILER_CACHE_PATH=0
ExecStartPre=${relay} --check-config ${config}
ExecStartPre=${relay} rules apply ${config}
ExecStart=${relay} ${config}
ExecReload=/bin/kill -HUP $MAINPID
# Also after a failed start or a crash: no rule is left steering traffic to nothing.
ExecStopPost=${relay} rules remove ${config}
Restart=on-failure
RestartSec=2s
# Bad configuration (2) and missing privilege (77) do not get better by restarting.
RestartPreventExitStatus=2 77
# SIGTERM: TCP connections get tcp.shutdownGraceMs (${o.config.tcp.shutdownGraceMs}) to finish.
TimeoutStopSec=${stopTimeoutS}s
# Where it writes: the control socket (/run/transparent-relay/control.sock by default, mode
# 0600: root and this user) and the flow log.
${writableDirectives(o.config).join("\n")}
RuntimeDirectoryMode=0750
UMask=0027
ProtectSystem=strict
ProtectHome=${home ? "read-only" : "yes"}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# No MemoryDenyWriteExecute: Bun's JIT writes the machine code it then runs.

[Install]
WantedBy=multi-user.target
`;
}

export function serviceCommand(argv: string[]): number {
  const [action, ...rest] = argv;
  if (action === "--help" || action === "-h") {
    console.log(USAGE);
    return 0;
  }
  if (action !== "print") {
    console.error(USAGE);
    return 2;
  }
  let configPath = CONFIG_PATH_DEFAULT;
  let user = USER_DEFAULT;
  let group: string | null = null;
  for (let i = 0; i < rest.length; i++) {
    const value = rest[i + 1];
    if (value === undefined) {
      console.error(`relay service: ${rest[i]} needs a value\n${USAGE}`);
      return 2;
    }
    if (rest[i] === "--config") configPath = resolve(value);
    else if (rest[i] === "--user") user = value;
    else if (rest[i] === "--group") group = value;
    else {
      console.error(`relay service: unknown argument ${JSON.stringify(rest[i])}\n${USAGE}`);
      return 2;
    }
    i++;
  }
  try {
    let config: Config;
    if (existsSync(configPath)) {
      config = loadConfigFile(configPath);
    } else {
      // The unit may be rendered before the configuration is written.
      console.error(`relay service: ${configPath} does not exist yet: sized for the defaults`);
      config = parseConfig({});
    }
    const options = {
      checkout: CHECKOUT,
      configPath,
      config,
      user,
      group: group ?? user,
      node: RUNTIME === "node" ? process.execPath : undefined,
    };
    process.stdout.write(serviceUnit(options));
    return 0;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(`relay service: cannot render the unit:\n  ${err.problems.join("\n  ")}`);
    return 2;
  }
}
