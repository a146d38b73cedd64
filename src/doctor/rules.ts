// Our rules and routes on the host, against what the config produces. The firewall part
// is keyed on config.firewall.backend; policy routing (ip rule, the local routes) is the
// same for both. The expected ruleset is what the generator's script gives when applied
// in a throwaway network namespace (`unshare --net`: gone with the process), listed the
// same way as the live one, so nft's (or iptables-save's) normalisation never shows up
// as a difference.
import type { Config } from "../config/load.ts";
import { iptablesJumps, withJumps } from "../rules/iptables.ts";
import { nftRuleset, policyRoutingCommands, TABLE_NAME } from "../rules/nft.ts";
import { type Check, complaint, type Host, notPermitted } from "./check.ts";

/** A difference is quoted with at most this many lines each way. */
const DIFF_LINES_MAX = 8;

type RulesCheck = (config: Config, host: Host, configPath: string | null) => Check[];

const BACKENDS: Record<Config["firewall"]["backend"], RulesCheck> = {
  nft: nftTable,
  iptables: iptablesChains,
};

function applyFix(configPath: string | null): string {
  return `bun run relay rules apply${configPath ? ` --config ${configPath}` : ""}`;
}

/** Every check of our rules: the firewall's, then policy routing. */
export function rulesChecks(config: Config, host: Host, configPath: string | null): Check[] {
  return [
    ...BACKENDS[config.firewall.backend](config, host, configPath),
    ...routing(config, host, configPath),
  ];
}

/** Counter values differ between two listings of the same rules: never a difference. */
export function normaliseListing(text: string): string[] {
  return text
    .split("\n")
    .map((l) =>
      l
        .replace(/counter packets \d+ bytes \d+/g, "counter")
        .replace(/^(:\S+ \S+) \[\d+:\d+\]/, "$1")
        .replace(/^\[\d+:\d+\] /, "")
        .trimEnd(),
    )
    .filter((l) => l.trim() !== "" && !l.startsWith("#"));
}

/** Lines of `expected` absent from `actual` and the reverse (multisets, order ignored). */
export function listingDiff(expected: string[], actual: string[]): [string[], string[]] {
  const left = new Map<string, number>();
  for (const l of actual) left.set(l, (left.get(l) ?? 0) + 1);
  const missing: string[] = [];
  for (const l of expected) {
    const n = left.get(l) ?? 0;
    if (n > 0) left.set(l, n - 1);
    else missing.push(l);
  }
  const extra = [...left].flatMap(([l, n]) => Array<string>(n).fill(l));
  return [missing, extra];
}

function quoteLines(lines: string[]): string {
  const shown = lines.slice(0, DIFF_LINES_MAX).map((l) => JSON.stringify(l.trim()));
  const more = lines.length > DIFF_LINES_MAX ? ` and ${lines.length - DIFF_LINES_MAX} more` : "";
  return shown.join(", ") + more;
}

/** The comparison of two listings: pass, or a failure naming what differs. */
function compared(
  name: string,
  expected: string[],
  actual: string[],
  fix: string,
  ok: string,
): Check {
  const [missing, extra] = listingDiff(expected, actual);
  if (missing.length > 0 || extra.length > 0) return differences(name, missing, extra, fix);
  // The same lines in another order are other rules: the first match decides.
  const at = expected.findIndex((l, i) => l !== actual[i]);
  if (at < 0) return { name, status: "pass", detail: ok };
  return {
    name,
    status: "fail",
    detail: `the same rules in another order, from ${JSON.stringify(actual[at].trim())} on`,
    fix,
  };
}

function differences(name: string, missing: string[], extra: string[], fix: string): Check {
  const parts: string[] = [];
  if (missing.length > 0) parts.push(`missing ${quoteLines(missing)}`);
  if (extra.length > 0) parts.push(`not from this config ${quoteLines(extra)}`);
  return { name, status: "fail", detail: parts.join("; "), fix };
}

/** Runs `script` (shell) in a throwaway network namespace, `input` on its stdin. */
function inScratchNamespace(host: Host, script: string, input: string) {
  return host.run(["unshare", "--net", "--", "sh", "-c", script], input);
}

function unbuilt(what: string, r: { status: number; stderr: string }): string {
  return `the expected ${what} could not be built in a throwaway namespace (${complaint(r)})`;
}

function nftTable(config: Config, host: Host, configPath: string | null): Check[] {
  const name = `nft table inet ${TABLE_NAME}`;
  const fix = applyFix(configPath);
  const live = host.run(["nft", "list", "table", "inet", TABLE_NAME]);
  if (live.status !== 0) {
    if (notPermitted(live)) {
      return [{ name, status: "warn", detail: `not checked: ${complaint(live)}` }];
    }
    return [{ name, status: "fail", detail: `absent (${complaint(live)})`, fix }];
  }
  const scratch = inScratchNamespace(
    host,
    `nft -f - && nft list table inet ${TABLE_NAME}`,
    nftRuleset(config),
  );
  if (scratch.status !== 0) {
    return [
      {
        name,
        status: "warn",
        detail: `present; not compared: ${unbuilt("table", scratch)}`,
      },
    ];
  }
  const expected = normaliseListing(scratch.stdout);
  const ok = "present, as this config generates it";
  return [compared(name, expected, normaliseListing(live.stdout), fix, ok)];
}

/** iptables-save lines that are ours (our chains, jumps to them), each with its table. */
function ourIptablesLines(save: string): string[] {
  let table = "";
  const ours: string[] = [];
  for (const line of normaliseListing(save)) {
    if (line.startsWith("*")) table = line.slice(1);
    else if (/\bTRELAY_/.test(line)) ours.push(`${table}: ${line}`);
  }
  return ours;
}

function iptablesChains(config: Config, host: Host, configPath: string | null): Check[] {
  const fix = applyFix(configPath);
  const checks: Check[] = [];
  for (const family of [4, 6] as const) {
    const tool = family === 4 ? "iptables" : "ip6tables";
    const name = `${tool} chains TRELAY_*`;
    const live = host.run([`${tool}-save`]);
    if (live.status !== 0) {
      const status = notPermitted(live) ? "warn" : "fail";
      checks.push({ name, status, detail: `${tool}-save: ${complaint(live)}`, fix });
      continue;
    }
    const ours = ourIptablesLines(live.stdout);
    const chains = ours.filter((l) => /: :TRELAY_/.test(l)).map((l) => l.split(" ")[1].slice(1));
    if (chains.length === 0) {
      checks.push({ name, status: "fail", detail: "none of our chains exist", fix });
      continue;
    }
    // What `rules apply` would install on an empty host: our chains and their jumps.
    const scratch = inScratchNamespace(
      host,
      `${tool}-restore --noflush && ${tool}-save`,
      withJumps(config, family, iptablesJumps(config, family)),
    );
    if (scratch.status !== 0) {
      checks.push({
        name,
        status: "warn",
        detail: `present; not compared: ${unbuilt("chains", scratch)}`,
      });
      continue;
    }
    const ok = `present (${chains.join(", ")}), as this config generates them`;
    checks.push(compared(name, ourIptablesLines(scratch.stdout), ours, fix, ok));
  }
  return checks;
}

/** `ip rule fwmark M lookup T priority P` and `local default dev lo` in T, each family. */
function routing(config: Config, host: Host, configPath: string | null): Check[] {
  const fix = applyFix(configPath);
  const checks: Check[] = [];
  for (const argv of policyRoutingCommands(config)) {
    const [ip, family, kind] = argv;
    const ipv = family === "-4" ? "IPv4" : "IPv6";
    if (kind === "rule") {
      const selector = argv.slice(4);
      const name = `ip rule ${ipv}`;
      const listed = host.run([ip, family, "rule", "list", ...selector]);
      const wanted = `${selector.join(" ")}`;
      if (listed.status === 0 && listed.stdout.trim() !== "") {
        checks.push({ name, status: "pass", detail: `present: ${wanted}` });
      } else {
        const why = listed.status === 0 ? "" : ` (${complaint(listed)})`;
        checks.push({
          name,
          status: "fail",
          detail: `missing: ip ${family} rule ${wanted}${why}`,
          fix,
        });
      }
      continue;
    }
    // argv: ip -F route replace local PREFIX dev lo table T
    const table = argv[argv.length - 1];
    const name = `ip route ${ipv} table ${table}`;
    const shown = host.run([ip, family, "route", "show", "table", table, "type", "local"]);
    const ours = shown.stdout
      .split("\n")
      .some((l) => /^(local )?(default|0\.0\.0\.0\/0|::\/0) dev lo\b/.test(l.trim()));
    if (shown.status === 0 && ours) {
      checks.push({ name, status: "pass", detail: "present: local default dev lo" });
    } else {
      const why = shown.status === 0 ? "" : ` (${complaint(shown)})`;
      checks.push({
        name,
        status: "fail",
        detail: `missing: local default dev lo in table ${table}${why}`,
        fix,
      });
    }
  }
  return checks;
}
