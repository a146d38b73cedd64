// promtool, Prometheus' own checker, judges what /metrics serves. scripts/setup.sh puts it
// in .tools/ (out of Debian's prometheus package, never installed). Missing, it follows
// the skip policy (test/lab/skip_policy.ts): a printed skip on a laptop, a failure in CI.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { skipped } from "./skip_policy.ts";

export const PROMTOOL = join(import.meta.dir, "..", "..", ".tools", "promtool");

/** Why promtool cannot run here, or null. */
function promtoolUnavailable(): string | null {
  const r = spawnSync(PROMTOOL, ["--version"], { encoding: "utf8", timeout: 30_000 });
  if (r.status === 0) return null;
  return `no working ${PROMTOOL} (bash scripts/setup.sh installs it): ${
    r.error?.message ?? r.stderr.trim()
  }`;
}

/** Inside a test: true when the caller returns (outside CI, promtool missing); in CI a
 * missing promtool throws. */
export function promtoolMissing(what: string): boolean {
  return skipped(promtoolUnavailable(), what);
}

/** `promtool check metrics` on `text` (its stdin): the exit status and what it said. */
export function promtoolCheck(text: string): { status: number | null; output: string } {
  const r = spawnSync(PROMTOOL, ["check", "metrics"], {
    input: text,
    encoding: "utf8",
    timeout: 30_000,
  });
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}
