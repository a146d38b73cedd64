// `bun run relay doctor [--config FILE] [--json] [--no-self-test]`: can this host run the
// relay as configured (src/doctor/)? Exit status: 0 every check passed (warnings
// allowed); 1 a check failed; 2 bad arguments or configuration.
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { ControlClient } from "./client.ts";
import { ConfigError, loadConfigFile, parseConfig } from "../config/load.ts";
import { createPackr } from "../control/frame.ts";
import type { Host } from "../doctor/check.ts";
import { formatText, runDoctor, summary } from "../doctor/doctor.ts";
import type { RunResult } from "../rules/apply.ts";

const USAGE = "usage: bun run relay doctor [--config FILE] [--json] [--no-self-test]";
/** One probe command gets this long (they answer in milliseconds). */
const COMMAND_TIMEOUT_MS = 30_000;

function run(argv: string[], input?: string): RunResult {
  const r = spawnSync(argv[0], argv.slice(1), {
    input,
    encoding: "utf8",
    timeout: COMMAND_TIMEOUT_MS,
  });
  const missing = r.error && (r.error as NodeJS.ErrnoException).code === "ENOENT";
  return {
    status: r.status ?? -1,
    stdout: r.stdout ?? "",
    stderr: missing ? `${argv[0]} not found` : (r.stderr ?? ""),
  };
}

async function relayAnswers(path: string): Promise<boolean> {
  let client: ControlClient | null = null;
  try {
    client = await ControlClient.connect(path, createPackr());
    await client.request({ cmd: "stats" });
    return true;
  } catch {
    return false;
  } finally {
    client?.close();
  }
}

/** This process on this host: what `relay doctor` looks at. */
const HOST: Host = {
  run,
  readFile: (path) => {
    try {
      return readFileSync(path, "utf8");
    } catch {
      return null;
    }
  },
  listDir: (path) => {
    try {
      return readdirSync(path);
    } catch {
      return [];
    }
  },
  relayAnswers,
};

export async function doctorCommand(argv: string[]): Promise<number> {
  let configPath: string | null = null;
  let json = false;
  let selfTest = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--config" && i + 1 < argv.length) configPath = argv[++i];
    else if (a === "--json") json = true;
    else if (a === "--no-self-test") selfTest = false;
    else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      return 0;
    } else {
      console.error(`relay doctor: unknown argument ${JSON.stringify(a)}\n${USAGE}`);
      return 2;
    }
  }
  let config: ReturnType<typeof parseConfig>;
  try {
    config = configPath ? loadConfigFile(configPath) : parseConfig({});
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(`relay doctor: invalid configuration:\n  ${err.problems.join("\n  ")}`);
    return 2;
  }
  const checks = await runDoctor(config, HOST, { configPath, selfTest });
  const text = json ? `${JSON.stringify(checks, null, 2)}\n` : formatText(checks);
  await new Promise<void>((resolve) => process.stdout.write(text, () => resolve()));
  if (json) console.error(summary(checks));
  return checks.some((c) => c.status === "fail") ? 1 : 0;
}
