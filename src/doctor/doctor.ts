// `relay doctor`: every check in order, and the report (text or JSON).
import type { Config } from "../config/load.ts";
import type { Check, Host } from "./check.ts";
import { ports } from "./ports.ts";
import { rulesChecks } from "./rules.ts";
import { selfTest } from "./self_test.ts";
import {
  capabilities,
  descriptors,
  forwarding,
  kernelSupport,
  policyRouting,
  routeLocalnet,
  rpFilter,
} from "./system.ts";

export interface DoctorOptions {
  /** The config file, for the fixes' commands (null: the built-in config). */
  configPath: string | null;
  selfTest: boolean;
}

export async function runDoctor(
  config: Config,
  host: Host,
  options: DoctorOptions,
): Promise<Check[]> {
  const checks: Check[] = [
    ...kernelSupport(config, host),
    policyRouting(host),
    capabilities(config, host),
    descriptors(config, host),
    ...forwarding(config, host),
    ...rpFilter(config, host),
    ...routeLocalnet(config, host),
    ...rulesChecks(config, host, options.configPath),
    ...(await ports(config, host)),
  ];
  if (options.selfTest) checks.push(await selfTest(config, host));
  return checks;
}

export function summary(checks: Check[]): string {
  const count = (s: Check["status"]) => checks.filter((c) => c.status === s).length;
  return `${count("pass")} passed, ${count("fail")} failed, ${count("warn")} warnings`;
}

/** One line per check (`PASS  name: detail`), the fix indented under it, then the summary. */
export function formatText(checks: Check[]): string {
  const lines: string[] = [];
  for (const c of checks) {
    lines.push(`${c.status.toUpperCase().padEnd(4)}  ${c.name}: ${c.detail}`);
    if (c.fix && c.status !== "pass") lines.push(`      fix: ${c.fix}`);
  }
  lines.push(summary(checks));
  return lines.join("\n") + "\n";
}
