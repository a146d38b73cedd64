// `bun run relay doctor [--config FILE] [--json] [--no-self-test]`: can this host run the
// relay as configured (src/doctor/)? Exit status: 0 every check passed (warnings
// allowed); 1 a check failed; 2 bad arguments or configuration.
import { readdirSync, readFileSync } from "node:fs";
import { ControlClient } from "./client.ts";
import { createPackr } from "../control/frame.ts";
import type { Host } from "../doctor/check.ts";
import { formatText, runDoctor, summary } from "../doctor/doctor.ts";
import { runCommand as run } from "../sys/command.ts";
import { commandConfig } from "./config.ts";

const USAGE = "usage: bun run relay doctor [--config FILE] [--json] [--no-self-test]";

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
  const config = commandConfig("doctor", configPath);
  if (config === null) return 2;
  const checks = await runDoctor(config, HOST, { configPath, selfTest });
  const text = json ? `${JSON.stringify(checks, null, 2)}\n` : formatText(checks);
  await new Promise<void>((resolve) => process.stdout.write(text, () => resolve()));
  if (json) console.error(summary(checks));
  return checks.some((c) => c.status === "fail") ? 1 : 0;
}
