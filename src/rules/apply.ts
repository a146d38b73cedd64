// `relay rules apply|remove`: installs and removes what the relay needs from the host,
// from the config it runs with. The same rules as `--print-rules` (src/rules/nft.ts,
// src/rules/iptables.ts), with the backend firewall.backend names:
//
// - Atomic: the nft table is replaced in one transaction; iptables: each family's chains
//   and jump rules in one iptables-restore transaction. If a later step (the other
//   family, a policy route or rule) fails, everything of ours is removed again, so a
//   failed apply never leaves the host half-configured.
// - Idempotent: applying twice leaves what applying once does (the table or our chains
//   replaced, a jump rule added only when absent, each route `replace`d, each rule added
//   only when absent).
// - Owned: remove deletes only what is ours: our nft table (by name), our iptables
//   chains (by the TRELAY_ prefix) and the rules jumping into them, our ip rules (by
//   fwmark, table and priority) and our two local default routes in our routing table;
//   anything else (other tables, chains and rules in mangle, routes) stays. Remove
//   clears both backends' leftovers, so switching backends leaves nothing behind.
import type { Config } from "../config/load.ts";
import {
  deletionLines,
  type Family,
  iptablesCommand,
  iptablesJumps,
  ourIptablesState,
  withJumps,
} from "./iptables.ts";
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
    if (config.firewall.backend === "iptables") {
      for (const family of [4, 6] as const) applyIptables(config, family, run);
    } else {
      const nft = ["nft", "-f", "-"];
      check(run(nft, nftRuleset(config)), nft);
    }
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
    // The other backend's rules, left by an earlier apply with it, would intercept too.
    if (config.firewall.backend === "iptables") removeNftTable(run);
    else for (const family of [4, 6] as const) removeIptables(family, run);
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
  const removed: string[] = [...removeNftTable(run)];
  for (const family of [4, 6] as const) removed.push(...removeIptables(family, run));
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

function removeNftTable(run: Runner): string[] {
  if (run(["nft", "list", "table", "inet", TABLE_NAME]).status !== 0) return [];
  const argv = ["nft", "delete", "table", "inet", TABLE_NAME];
  check(run(argv), argv);
  return [`nft table inet ${TABLE_NAME}`];
}

const IPTABLES_TABLES = ["mangle", "nat"] as const;

/** Our chains and jump rules in each table, as iptables-save shows them (null: no tool). */
function savedIptables(family: Family, run: Runner, required: boolean) {
  const state = new Map<string, ReturnType<typeof ourIptablesState>>();
  for (const table of IPTABLES_TABLES) {
    const argv = [iptablesCommand(family, "-save"), "-t", table];
    const saved = run(argv);
    if (saved.status !== 0 && !required) return null;
    check(saved, argv);
    state.set(table, ourIptablesState(saved.stdout));
  }
  return state;
}

/**
 * One family's chains and missing jump rules, in one iptables-restore transaction; our
 * chains that this config no longer uses (a redirect listener's nat chain) are deleted
 * in it too.
 */
function applyIptables(config: Config, family: Family, run: Runner): void {
  const saved = savedIptables(family, run, true)!;
  const tool = iptablesCommand(family, "");
  const missing = iptablesJumps(config, family).filter((j) => {
    // -C fails (status 1 or 2) when the rule, or our chain it jumps to, is absent.
    return run([tool, "-t", j.table, "-C", j.chain, ...j.spec]).status !== 0;
  });
  const input = withJumps(config, family, missing, saved);
  const argv = [iptablesCommand(family, "-restore"), "--noflush"];
  check(run(argv, input), argv);
}

/** Deletes one family's chains and jump rules of ours, in one transaction. */
function removeIptables(family: Family, run: Runner): string[] {
  const saved = savedIptables(family, run, false);
  if (!saved) return []; // no iptables here: nothing of ours either
  const lines: string[] = [];
  const removed: string[] = [];
  for (const [table, state] of saved) {
    if (state.chains.length + state.jumps.length === 0) continue;
    lines.push(`*${table}`, ...deletionLines(state), "COMMIT");
    removed.push(`${iptablesCommand(family, "")} ${table} ${state.chains.join(" ")}`);
  }
  if (lines.length === 0) return [];
  const argv = [iptablesCommand(family, "-restore"), "--noflush"];
  check(run(argv, lines.join("\n") + "\n"), argv);
  return removed;
}
