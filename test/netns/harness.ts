// Shared set-up for the end-to-end tests: decides whether the lab can run, and
// starts a relay with a given config inside a Lab.
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load.ts";
import { Lab, labUnavailableReason } from "../lab/netns.ts";
import {
  BUN,
  RELAY_BIN,
  RELAY_MAIN,
  RelayProcess,
  withControlSocket,
} from "../lab/relay_process.ts";
import { skipReason } from "../lab/skip_policy.ts";
import { waitFor } from "../lab/wait_for.ts";
import { nftRuleset, policyRoutingCommands } from "../../src/rules/nft.ts";

export { BUN };
export const ROOT = join(import.meta.dir, "..", "..");

/** `bun run relay log` of the flow log at `path` with `args`: its lines. */
export function relayLog(dir: string, path: string, args: string[]): string[] {
  const reader = join(dir, "reader.json");
  writeFileSync(reader, JSON.stringify({ flowLog: { path } }));
  const main = join(ROOT, "src/main.ts");
  const r = Bun.spawnSync([BUN, main, "log", "--config", reader, ...args]);
  return r.stdout
    .toString()
    .split("\n")
    .filter((l) => l !== "");
}

/** `bun run relay log --json` of the flow log at `path`: its records. */
export function flowRecords(dir: string, path: string): any[] {
  return relayLog(dir, path, ["--json"]).map((l) => JSON.parse(l));
}

/**
 * Null when the end-to-end tests are to be registered. Outside CI, when the lab cannot
 * run, the reason (printed here): the caller registers no tests. In CI (CI=true) always
 * null: a missing capability is a failure, so the tests are registered and RelayLab's
 * constructor fails them with the reason (test/lab/skip_policy.ts).
 */
export function labSkipReason(
  unavailable: string | null = labUnavailableReason(),
  env: Record<string, string | undefined> = process.env,
): string | null {
  const reason = skipReason(unavailable, env);
  if (reason !== null) console.warn(`[netns tests skipped] ${reason}`);
  return reason;
}

export class RelayLab {
  readonly lab: Lab;
  relay: RelayProcess | null = null;
  private readonly dir = mkdtempSync(join(tmpdir(), "relay-test-"));
  /**
   * The control socket of every relay this lab starts, unless its config names one: in
   * this lab's own directory, so relays of tests running at once never meet on the
   * default path (and never on a production relay's).
   */
  readonly controlPath = join(this.dir, "control.sock");
  private children: Array<{ kill(signal?: number | string): void }> = [];

  constructor() {
    const reason = labUnavailableReason();
    if (reason) throw new Error(`end-to-end lab unavailable: ${reason}`);
    this.lab = Lab.create();
  }

  /**
   * (Re)starts the relay with `raw` config and installs its rules. prefix: a command the
   * relay runs under (e.g. prlimit). rules "cli": installed by the product itself
   * (`relay rules apply` in the router namespace, with the config's firewall section and
   * backend) instead of the lab's nft-only shortcut.
   */
  async startRelay(
    raw: object,
    prefix: string[] = [],
    options: { rules?: "lab" | "cli" } = {},
  ): Promise<RelayProcess> {
    if (this.relay) await this.relay.stop();
    raw = withControlSocket(raw, this.controlPath);
    const config = parseConfig(raw);
    const path = join(this.dir, `config-${Date.now()}.json`);
    writeFileSync(path, JSON.stringify(raw));
    this.configPath = path;
    if (options.rules === "cli") {
      this.rulesCli("apply", path);
    } else {
      this.lab.installRules(nftRuleset(config), []);
      if (!this.routingInstalled) {
        for (const argv of policyRoutingCommands(config)) this.lab.exec(this.lab.router, argv);
        this.routingInstalled = true;
      }
    }
    this.relay = await RelayProcess.start(this.lab, path, 10_000, prefix);
    return this.relay;
  }
  private routingInstalled = false;
  /** The file the running relay was started with (a reload re-reads it). */
  private configPath = "";

  /**
   * Reloads the running relay with `raw` (through withControlSocket, as startRelay: the
   * RELAY_* data-plane variables the start had, else a reload that changed
   * udp.ioBackend would be refused as needing a restart): the file it started with is
   * rewritten, then SIGHUP; resolves once the relay counts one more applied reload.
   */
  async reload(raw: object, timeoutMs = 10_000): Promise<void> {
    const relay = this.relay;
    if (relay === null) throw new Error("reload: no relay running");
    const applied = (await relay.metrics()).config.reloads.applied;
    writeFileSync(this.configPath, JSON.stringify(withControlSocket(raw, this.controlPath)));
    relay.proc.kill("SIGHUP");
    await waitFor(
      async () => (await relay.metrics()).config.reloads.applied,
      (n) => n > applied,
      { what: "the reload applied", timeoutMs },
    );
  }

  /** `relay rules ACTION --config PATH` in the router namespace; throws unless it exits 0. */
  rulesCli(action: "apply" | "remove" | "print", path: string) {
    return this.lab.exec(this.lab.router, [
      RELAY_BIN,
      RELAY_MAIN,
      "rules",
      action,
      "--config",
      path,
    ]);
  }

  /**
   * The UDP echo server (test/lab/udp_echo.py) in the server namespace, on ADDR:PORT
   * endpoints (with "--stamp" first: replies say who the server saw); killed in close().
   */
  spawnEcho(...args: string[]) {
    return this.spawn(this.lab.server, ["python3", join(ROOT, "test/lab/udp_echo.py"), ...args]);
  }

  /** Starts a process in a namespace; it is killed in close(). */
  spawn(ns: string, argv: string[]) {
    return this.track(this.lab.spawn(ns, argv));
  }

  /** Kills `proc` in close(). */
  track<T extends { kill(signal?: number | string): void }>(proc: T): T {
    this.children.push(proc);
    return proc;
  }

  /** Runs the UDP probe in the client namespace and returns its summary. */
  probe(
    targets: string[],
    options: {
      flows?: number;
      packets?: number;
      size?: number;
      timeoutMs?: number;
      stamped?: boolean;
    } = {},
  ) {
    const argv = [
      BUN,
      join(ROOT, "test/lab/udp_probe.ts"),
      "--targets",
      targets.join(","),
      "--flows",
      `${options.flows ?? 1}`,
      "--packets",
      `${options.packets ?? 4}`,
      "--size",
      `${options.size ?? 64}`,
      "--timeout-ms",
      `${options.timeoutMs ?? 3000}`,
    ];
    if (options.stamped) argv.push("--stamped");
    const r = this.lab.exec(this.lab.client, argv);
    return JSON.parse(r.stdout.trim().split("\n").pop()!);
  }

  /** Where datagrams were lost: the relay's counters and each namespace's UDP drop counters. */
  async diagnose(): Promise<string> {
    const udp = this.relay ? (await this.relay.metrics()).udp : {};
    const lines = [`relay: ${JSON.stringify(udp)}`];
    for (const ns of [this.lab.client, this.lab.router, this.lab.server]) {
      const r = this.lab.exec(ns, ["nstat", "-az"], undefined, true).stdout;
      const drops = r
        .split("\n")
        .filter((l) => /Udp6?(RcvbufErrors|SndbufErrors|InErrors|NoPorts)\s+[1-9]/.test(l));
      lines.push(
        `${ns}: ${drops.map((l) => l.replace(/\s+/g, " ").trim()).join("; ") || "no UDP drops"}`,
      );
    }
    return lines.join("\n");
  }

  python(ns: string, code: string, allowFail = false) {
    return this.lab.exec(ns, ["python3", "-c", code], undefined, allowFail);
  }

  /** Stops the relay (SIGTERM) and checks it exited cleanly with a final report. */
  async close(): Promise<void> {
    try {
      if (this.relay) {
        const { final, exitCode } = await this.relay.stop();
        if (exitCode !== 0 || !final) {
          throw new Error(`relay did not stop cleanly: exit ${exitCode}\n${this.relay.stderr}`);
        }
      }
    } finally {
      for (const c of this.children) c.kill(9);
      this.lab.destroy();
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}
