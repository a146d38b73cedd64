// `bun run relay stats|sessions|top`: the control socket's command line. Finds the
// socket (--control PATH, else control.socketPath of --config FILE, else the default),
// asks the running relay, prints, exits: 0 done, 1 no relay answering (or it refused),
// 2 bad arguments.
import { ConfigError, loadConfigFile, parseConfig } from "../config/load.ts";
import { createPackr } from "../control/frame.ts";
import { SESSIONS_LIMIT_MAX, SORT_KEYS } from "../control/query.ts";
import { ControlClient, ControlClientError } from "./client.ts";
import { statsText } from "./stats.ts";
import { sessionsJsonLines, sessionsText } from "./sessions.ts";
import { runTop } from "./top.ts";

const USAGE = `usage: bun run relay stats    [--control PATH | --config FILE] [--json]
       bun run relay sessions [--control PATH | --config FILE] [--client X] [--target X]
                              [--name X] [--listener X] [--sort bytes|packets|age|idle]
                              [--limit N] [--json]
       bun run relay top      [--control PATH | --config FILE] [--interval-ms N]
       bun run relay reload   [--control PATH | --config FILE] [--json]

  --control PATH   the relay's control socket (default: control.socketPath of --config,
                   else /run/transparent-relay/control.sock)
  --config FILE    the relay's configuration, for its control.socketPath
  --json           JSON lines instead of tables (stats: one line; sessions: one a session)
  filters          X is a substring of the client, target (ip:port, [ipv6]:port), DNS
                   name or QUIC SNI, or listener name; =X matches exactly
  --sort KEY       descending: bytes (default), packets, age (oldest), idle (longest)
  --limit N        sessions listed per protocol, 0-${SESSIONS_LIMIT_MAX} (default 50)
  --interval-ms N  top: refresh period, 200-60000 (default 1000); q or Ctrl-C quits

reload: as SIGHUP, the relay re-reads the config file it was started with and applies
its live changes, or none (exit 1 and why: a field that needs a restart, or invalid).`;

const EXIT = { ok: 0, failed: 1, usage: 2 } as const;
const INTERVAL_MS_MIN = 200;
const INTERVAL_MS_MAX = 60_000;

export type Command = "stats" | "sessions" | "top" | "reload";

interface Options {
  control: string | null;
  config: string | null;
  json: boolean;
  intervalMs: number;
  request: Record<string, unknown>;
}

class UsageError extends Error {}

function parseOptions(command: Command, argv: string[]): Options {
  const options: Options = {
    control: null,
    config: null,
    json: false,
    intervalMs: 1000,
    request: { cmd: command === "top" ? "stats" : command },
  };
  const value = (i: number, name: string): string => {
    const v = argv[i];
    if (v === undefined || v.startsWith("--")) throw new UsageError(`${name} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--help" || a === "-h") throw new UsageError("");
    if (a === "--control") options.control = value(++i, a);
    else if (a === "--config") options.config = value(++i, a);
    else if (a === "--json" && command !== "top") options.json = true;
    else if (command === "sessions" && ["--client", "--target", "--name", "--listener"].includes(a))
      options.request[a.slice(2)] = value(++i, a);
    else if (command === "sessions" && a === "--sort") {
      const sort = value(++i, a);
      if (!(SORT_KEYS as readonly string[]).includes(sort))
        throw new UsageError(`--sort: one of ${SORT_KEYS.join(", ")}`);
      options.request.sort = sort;
    } else if (command === "sessions" && a === "--limit") {
      const n = Number(value(++i, a));
      if (!Number.isInteger(n) || n < 0 || n > SESSIONS_LIMIT_MAX)
        throw new UsageError(`--limit: an integer 0-${SESSIONS_LIMIT_MAX}`);
      options.request.limit = n;
    } else if (command === "top" && a === "--interval-ms") {
      const n = Number(value(++i, a));
      if (!Number.isInteger(n) || n < INTERVAL_MS_MIN || n > INTERVAL_MS_MAX)
        throw new UsageError(`--interval-ms: an integer ${INTERVAL_MS_MIN}-${INTERVAL_MS_MAX}`);
      options.intervalMs = n;
    } else throw new UsageError(`unknown argument ${JSON.stringify(a)} for ${command}`);
  }
  return options;
}

/** The socket path: --control, else the config's control.socketPath, else the default. */
function socketPath(options: Options): string {
  if (options.control !== null) return options.control;
  const config = options.config !== null ? loadConfigFile(options.config) : parseConfig({});
  const path = config.control.socketPath;
  if (path === "") {
    throw new ControlClientError(
      `${options.config}: control.socketPath is "": that relay has no control socket`,
    );
  }
  return path;
}

/** Runs `command`; returns the exit status. */
export async function runCommand(command: Command, argv: string[]): Promise<number> {
  // `relay sessions | head`: a reader gone is the end of the output, not an error.
  process.stdout.on("error", () => process.exit(EXIT.ok));
  let options: Options;
  let path: string;
  try {
    options = parseOptions(command, argv);
    path = socketPath(options);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(err.message ? `relay ${command}: ${err.message}\n${USAGE}` : USAGE);
      return err.message ? EXIT.usage : EXIT.ok;
    }
    if (err instanceof ConfigError) {
      console.error(`relay ${command}: ${err.describe()}`);
      return EXIT.usage;
    }
    console.error(`relay ${command}: ${(err as Error).message}`);
    return EXIT.failed;
  }
  const packr = createPackr();
  let client: ControlClient | null = null;
  try {
    client = await ControlClient.connect(path, packr);
    if (command === "top") return await runTop(client, options.intervalMs);
    const reply = await client.request(options.request);
    if (command === "reload") {
      const text = options.json ? JSON.stringify(reply) : String(reply.message ?? reply.error);
      await new Promise<void>((resolve) => process.stdout.write(`${text}\n`, () => resolve()));
      return reply.result === "applied" ? EXIT.ok : EXIT.failed;
    }
    const lines =
      command === "stats"
        ? options.json
          ? [JSON.stringify(reply)]
          : statsText(reply, process.stdout.columns || undefined)
        : options.json
          ? sessionsJsonLines(reply)
          : sessionsText(reply);
    // The caller exits at once: wait until the text is handed to the kernel.
    if (lines.length > 0) {
      await new Promise<void>((resolve) =>
        process.stdout.write(`${lines.join("\n")}\n`, () => resolve()),
      );
    }
    return EXIT.ok;
  } catch (err) {
    if (!(err instanceof ControlClientError)) throw err;
    console.error(`relay ${command}: ${err.message}`);
    return EXIT.failed;
  } finally {
    client?.close();
  }
}
