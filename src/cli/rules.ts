// `bun run relay rules apply|remove|print [--config FILE]`: the host's TPROXY rules (nft
// or iptables: firewall.backend; gateway, local or both: firewall.mode) and policy
// routing for the config the relay runs with (src/rules/apply.ts). Exit status:
// 0 done; 1 a step failed (named; apply left nothing of ours behind); 2 bad arguments or
// configuration; 77 not permitted (CAP_NET_ADMIN).
import { applyRules, RulesError, removeRules } from "../rules/apply.ts";
import { rulesScript, TABLE_NAME } from "../rules/nft.ts";
import { runCommand as run } from "../sys/command.ts";
import { commandConfig } from "./config.ts";

const USAGE = "usage: bun run relay rules apply|remove|print [--config FILE]";

export function rulesCommand(argv: string[]): number {
  const [action, ...rest] = argv;
  let configPath: string | null = null;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--config" && i + 1 < rest.length) configPath = rest[++i];
    else {
      console.error(`relay rules: unknown argument ${JSON.stringify(rest[i])}\n${USAGE}`);
      return 2;
    }
  }
  if (action !== "apply" && action !== "remove" && action !== "print") {
    console.error(USAGE);
    return 2;
  }
  const config = commandConfig("rules", configPath);
  if (config === null) return 2;
  if (action === "print") {
    process.stdout.write(rulesScript(config));
    return 0;
  }
  try {
    if (action === "apply") {
      applyRules(config, run);
      const what =
        config.firewall.backend === "iptables"
          ? "iptables and ip6tables chains"
          : `nft table inet ${TABLE_NAME}`;
      console.error(`relay rules: applied (${what}, policy rules and routes)`);
    } else {
      const removed = removeRules(config, run);
      console.error(`relay rules: removed ${removed.length ? removed.join(", ") : "nothing"}`);
    }
    return 0;
  } catch (err) {
    if (!(err instanceof RulesError)) throw err;
    console.error(`relay rules ${action}: ${err.message}`);
    return err.privilege ? 77 : 1;
  }
}
