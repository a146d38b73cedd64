// Runs the relay as a child process in a namespace and talks to it through its JSON
// lines on stdout (ready, metrics on SIGUSR1, final on SIGTERM).
import type { Subprocess } from "bun";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import type { Lab } from "./netns.ts";

const ROOT = join(import.meta.dir, "..", "..");
export const BUN = join(ROOT, "node_modules", ".bin", "bun");
export const RELAY_MAIN = join(ROOT, "src", "main.ts");

/**
 * RELAY_SANITIZE=1 runs the relay (and only the relay: peers are not instrumented) with
 * the ASan/UBSan build of the C helper (`make -C ffi sanitize`), so the end-to-end tests
 * double as a memory-safety run of the data path.
 */
function sanitizerPrefix(): string[] {
  if (process.env.RELAY_SANITIZE !== "1") return [];
  const asan = spawnSync("gcc", ["-print-file-name=libasan.so"], {
    encoding: "utf8",
  }).stdout.trim();
  return [
    "env",
    `LD_PRELOAD=${asan}`,
    `RELAY_FFI_LIB=${join(ROOT, "build", "librelay-asan.so")}`,
    "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1",
    "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1",
  ];
}

export class RelayProcess {
  private readonly lines: any[] = [];
  private waiters: Array<() => void> = [];
  stderr = "";
  private constructor(readonly proc: Subprocess<"ignore", "pipe", "pipe">) {}

  /** Starts the relay in the router namespace (configPath null: the built-in default). */
  static async start(
    lab: Lab,
    configPath: string | null,
    timeoutMs = 10_000,
  ): Promise<RelayProcess> {
    const config = configPath === null ? [] : ["--config", configPath];
    const proc = lab.spawn(lab.router, [
      ...sanitizerPrefix(),
      BUN,
      RELAY_MAIN,
      ...config,
      "--sessions",
      "1000",
    ]);
    const relay = new RelayProcess(proc as Subprocess<"ignore", "pipe", "pipe">);
    relay.pump();
    await relay.waitFor((l) => l.event === "ready", timeoutMs);
    return relay;
  }

  private async pump(): Promise<void> {
    const decoder = new TextDecoder();
    let buffer = "";
    (async () => {
      for await (const chunk of this.proc.stderr) this.stderr += decoder.decode(chunk);
    })();
    for await (const chunk of this.proc.stdout) {
      buffer += decoder.decode(chunk);
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        try {
          this.lines.push(JSON.parse(line));
        } catch {
          this.stderr += `(stdout) ${line}\n`;
        }
        for (const w of this.waiters.splice(0)) w();
      }
    }
    for (const w of this.waiters.splice(0)) w();
  }

  async waitFor(match: (line: any) => boolean, timeoutMs: number, from = 0): Promise<any> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      for (let i = from; i < this.lines.length; i++) if (match(this.lines[i])) return this.lines[i];
      const left = deadline - performance.now();
      if (left <= 0 || this.proc.exitCode !== null) {
        throw new Error(
          `relay: no matching line within ${timeoutMs} ms ` +
            `(exit ${this.proc.exitCode})\n${this.stderr}`,
        );
      }
      await Promise.race([
        new Promise<void>((r) => this.waiters.push(r)),
        Bun.sleep(Math.min(left, 100)),
      ]);
    }
  }

  /** Asks for a metrics snapshot (SIGUSR1) and returns it. */
  async metrics(timeoutMs = 5000): Promise<any> {
    const from = this.lines.length;
    this.proc.kill("SIGUSR1");
    return this.waitFor((l) => l.event === "metrics", timeoutMs, from);
  }

  /** SIGTERM, then the final snapshot and the exit code. */
  async stop(timeoutMs = 10_000): Promise<{ final: any; exitCode: number | null }> {
    this.proc.kill("SIGTERM");
    const final = await this.waitFor((l) => l.event === "final", timeoutMs).catch(() => null);
    const exitCode = await Promise.race([this.proc.exited, Bun.sleep(timeoutMs).then(() => null)]);
    if (exitCode === null) this.proc.kill("SIGKILL");
    return { final, exitCode };
  }
}
