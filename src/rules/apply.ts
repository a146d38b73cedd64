// `relay rules apply|remove`: installs and removes what the relay needs from the host,
// from the config it runs with. The same rules as `--print-rules` (src/rules/nft.ts):
//
// - Atomic: the nft table is replaced in one transaction; if a later step (a policy
//   route or rule) fails, everything of ours is removed again, so a failed apply never
//   leaves the host half-configured.
// - Idempotent: applying twice leaves what applying once does (the table is replaced,
//   each route `replace`d, each rule added only when absent).
// - Owned: remove deletes only what is ours: our table (by name), our rules (by
//   fwmark, table and priority) and our two local default routes in our routing table;
//   anything else in that table stays.
import type { Config } from "../config/load.ts";
import { nftRuleset, policyRoutingCommands, TABLE_NAME } from "./nft.ts";

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (argv, optional stdin); the caller supplies it (a namespace in tests). */
export type Runner = (argv: string[], input?: string) => RunResult;

/** Our rules of one family are removed at most this many times (duplicates included). */
const RULE_DELETIONS_MAX = 16;

export class RulesError extends Error {
  constructor(
    message: string,
    /** The kernel said "Operation not permitted": a missing capability (exit 77). */
    readonly privilege: boolean,
  ) {
    super(message);
    this.name = "RulesError";
  }
}

function check(r: RunResult, argv: string[]): void {
  if (r.status === 0) return;
  const why = r.stderr.trim() || `exit ${r.status}`;
  throw new RulesError(`${argv.join(" ")}: ${why}`, /not permitted/i.test(why));
}

/** Installs the rules; on any failure removes everything of ours and throws. */
export function applyRules(config: Config, run: Runner): void {
  try {
    const nft = ["nft", "-f", "-"];
    check(run(nft, nftRuleset(config)), nft);
    for (const argv of policyRoutingCommands(config)) {
      if (argv[2] === "rule") {
        // `ip rule list SELECTOR` prints the rule if it exists: add it only when not.
        const list = [argv[0], argv[1], "rule", "list", ...argv.slice(4)];
        const listed = run(list);
        check(listed, list);
        if (listed.stdout.trim() !== "") continue;
      }
      check(run(argv), argv);
    }
  } catch (err) {
    try {
      removeRules(config, run);
    } catch {
      // Already failing: report the first error; remove is retried by the next start.
    }
    throw err;
  }
}

/** Removes what applyRules installs, and only that. Returns what it removed. */
export function removeRules(config: Config, run: Runner): string[] {
  const removed: string[] = [];
  if (run(["nft", "list", "table", "inet", TABLE_NAME]).status === 0) {
    const argv = ["nft", "delete", "table", "inet", TABLE_NAME];
    check(run(argv), argv);
    removed.push(`nft table inet ${TABLE_NAME}`);
  }
  for (const argv of policyRoutingCommands(config)) {
    const [ip, family, kind] = argv;
    if (kind === "rule") {
      const selector = argv.slice(4);
      for (let n = 0; n < RULE_DELETIONS_MAX; n++) {
        const listed = run([ip, family, "rule", "list", ...selector]);
        if (listed.status !== 0 || listed.stdout.trim() === "") break;
        const del = [ip, family, "rule", "del", ...selector];
        check(run(del), del);
        removed.push(`${family} rule ${selector.join(" ")}`);
      }
      continue;
    }
    // argv: ip -F route replace local PREFIX dev lo table T
    const route = argv.slice(4);
    const table = route[route.length - 1];
    const shown = run([ip, family, "route", "show", "table", table, "type", "local"]);
    if (shown.status !== 0) continue; // no such table: nothing of ours in it
    const prefix = route[1];
    const ours = shown.stdout
      .split("\n")
      .some((l) => /^(local )?(default|0\.0\.0\.0\/0|::\/0) dev lo\b/.test(l.trim()));
    if (!ours) continue;
    const del = [ip, family, "route", "del", ...route];
    check(run(del), del);
    removed.push(`${family} route ${prefix} table ${table}`);
  }
  return removed;
}
