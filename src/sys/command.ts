// Runs the host's firewall and routing commands (nft, ip) for src/rules/apply.ts: the
// Runner of `relay rules` and of the relay itself when firewall.manage is true.
import { spawnSync } from "node:child_process";
import type { RunResult } from "../rules/apply.ts";

/** One nft or ip command gets this long (they answer in milliseconds). */
const COMMAND_TIMEOUT_MS = 30_000;

/** Runs argv (stdin: input) and waits; a missing program is a failed run that says so. */
export function runCommand(argv: string[], input?: string): RunResult {
  const r = spawnSync(argv[0], argv.slice(1), {
    input,
    encoding: "utf8",
    timeout: COMMAND_TIMEOUT_MS,
  });
  const missing = r.error && (r.error as NodeJS.ErrnoException).code === "ENOENT";
  return {
    status: r.status ?? -1,
    stdout: r.stdout ?? "",
    stderr: missing
      ? `${argv[0]} not found (Debian: nftables, iptables, iproute2)`
      : (r.stderr ?? ""),
  };
}
