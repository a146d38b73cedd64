// Reload (SIGHUP, the control socket's `reload`): re-reads the config file the relay was
// started with, validates it, diffs it against the running one (src/config/reload.ts)
// and either applies every live change or nothing:
//
//   invalid  the file cannot be read, parsed or validated: each problem is logged (it
//            names the field and why); the relay goes on with the running config
//   refused  a field that needs a restart changed (named), or the host rules could not
//            be applied (the previous ones are put back): nothing is applied
//   applied  every live change, in one step as the relay sees it: the rules first (the
//            one step that can fail), then the UDP data plane (one message, handled
//            between two batches), the TCP relay, the main thread's own settings
//
// Reloads never overlap: one asked for while another runs is done after it (several
// such requests are one reload: the file is read once more).
import { ConfigError, type Config, loadConfigFile } from "../config/load.ts";
import { fitToDescriptors } from "../config/limits.ts";
import { describeChanges, planReload, rulesChanged } from "../config/reload.ts";
import { log } from "./log.ts";

export type ReloadResult = "applied" | "refused" | "invalid";

export interface ReloadOutcome {
  result: ReloadResult;
  /** The config generation after it: 1 at start, one more for every applied change. */
  generation: number;
  /** What was logged. */
  message: string;
}

/** The `config` object of `relay stats` and of the Prometheus families. */
export interface ReloadState {
  generation: number;
  reloads: Record<ReloadResult, number>;
}

export interface ReloadHooks {
  /**
   * The host rules for `next`, when firewall.manage is true and they changed. Throws
   * with the reason; the reloader then restores the running config's rules.
   */
  applyRules(next: Config, running: Config): void;
  /** Every live change of the data path and main thread; the config becomes `next`. */
  applyLive(next: Config): Promise<void>;
}

export class Reloader {
  private running: Config;
  private generation = 1;
  private readonly counts: Record<ReloadResult, number> = { applied: 0, refused: 0, invalid: 0 };
  private busy: Promise<ReloadOutcome> | null = null;
  private again: Promise<ReloadOutcome> | null = null;

  constructor(
    /** --config, or null for the built-in default (nothing to re-read). */
    private readonly configPath: string | null,
    /** The configuration the relay started with, fitted (its tables' sizes). */
    private readonly started: Config,
    /** RLIMIT_NOFILE as raised at start: a re-read config is fitted under it alike. */
    private readonly nofileLimit: number,
    private readonly hooks: ReloadHooks,
  ) {
    this.running = started;
  }

  get config(): Config {
    return this.running;
  }

  state(): ReloadState {
    return { generation: this.generation, reloads: { ...this.counts } };
  }

  /** Reloads once the reload in progress (if any) is done. Never rejects. */
  reload(): Promise<ReloadOutcome> {
    if (this.busy === null) {
      this.busy = this.run().finally(() => {
        this.busy = null;
      });
      return this.busy;
    }
    // Requests during a reload share the one that follows it.
    this.again ??= this.busy.then(() => {
      this.again = null;
      return this.reload();
    });
    return this.again;
  }

  private async run(): Promise<ReloadOutcome> {
    try {
      return await this.attempt();
    } catch (err) {
      // A live step failed after the checks (a bug or a dead worker): never silent.
      return this.finish("refused", `reload failed while applying: ${(err as Error).message}`);
    }
  }

  private async attempt(): Promise<ReloadOutcome> {
    if (this.configPath === null) {
      return this.finish(
        "refused",
        "reload refused: the relay runs on the built-in default configuration (no " +
          "--config), which has nothing to re-read; restart it with --config FILE",
      );
    }
    let next: Config;
    try {
      next = fitToDescriptors(loadConfigFile(this.configPath), this.nofileLimit).config;
    } catch (err) {
      const problems = err instanceof ConfigError ? err.problems : [(err as Error).message];
      return this.finish(
        "invalid",
        `reload refused: invalid configuration in ${this.configPath} (the relay goes on ` +
          `with generation ${this.generation}):\n  ${problems.join("\n  ")}`,
      );
    }
    const running = this.running;
    const plan = planReload(running, next, this.started);
    if (plan.refusals.length > 0) {
      return this.finish(
        "refused",
        `reload refused: ${plan.refusals.join("; ")}; nothing applied (generation ` +
          `${this.generation} goes on)`,
      );
    }
    if (plan.changes.length === 0) {
      return this.finish("applied", `reload: nothing changed (generation ${this.generation})`);
    }
    const manageTurnedOff = running.firewall.manage && !next.firewall.manage;
    const rulesToApply = rulesChanged(plan.changes);
    if (next.firewall.manage && rulesToApply) {
      try {
        this.hooks.applyRules(next, running);
      } catch (err) {
        return this.finish(
          "refused",
          `reload refused: the host rules could not be applied: ${(err as Error).message}`,
        );
      }
    }
    await this.hooks.applyLive(next);
    this.running = next;
    this.generation++;
    const note = manageTurnedOff
      ? " (firewall.manage is now false: the host rules stay as they are, and are no " +
        "longer removed at exit)"
      : rulesToApply && !next.firewall.manage
        ? " (firewall.manage is false: the host rules were not changed; apply them with " +
          "bun run relay rules apply)"
        : "";
    return this.finish(
      "applied",
      `reload: applied ${describeChanges(plan.changes)} (generation ${this.generation})${note}`,
    );
  }

  private finish(result: ReloadResult, message: string): ReloadOutcome {
    this.counts[result]++;
    if (result === "applied") log.info(message);
    else log.error(message);
    return { result, generation: this.generation, message };
  }
}
