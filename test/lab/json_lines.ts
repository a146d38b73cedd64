// A child process that reports through JSON lines on stdout (the relay, the bench's C
// tools): lines are parsed as they arrive, and waitFor() awaits one that matches.
import type { Subprocess } from "bun";

export class JsonLinesProcess {
  readonly lines: any[] = [];
  stderr = "";
  private waiters: Array<() => void> = [];

  constructor(
    readonly name: string,
    readonly proc: Subprocess<any, "pipe", "pipe">,
  ) {
    void this.pump();
  }

  private async pump(): Promise<void> {
    const decoder = new TextDecoder();
    void (async () => {
      for await (const chunk of this.proc.stderr) this.stderr += decoder.decode(chunk);
    })();
    let buffer = "";
    for await (const chunk of this.proc.stdout) {
      buffer += decoder.decode(chunk);
      for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        try {
          this.lines.push(JSON.parse(line));
        } catch {
          this.stderr += `(stdout) ${line}\n`;
        }
      }
      for (const w of this.waiters.splice(0)) w();
    }
    for (const w of this.waiters.splice(0)) w();
  }

  /** The first line from index `from` on that matches; bounded by timeoutMs. */
  async waitFor(match: (line: any) => boolean, timeoutMs: number, from = 0): Promise<any> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      for (let i = from; i < this.lines.length; i++) if (match(this.lines[i])) return this.lines[i];
      const left = deadline - performance.now();
      if (left <= 0 || this.proc.exitCode !== null) {
        throw new Error(
          `${this.name}: no matching line within ${timeoutMs} ms ` +
            `(exit ${this.proc.exitCode})\n${this.stderr}`,
        );
      }
      const woken = new Promise<void>((r) => this.waiters.push(r));
      await Promise.race([woken, Bun.sleep(Math.min(left, 100))]);
    }
  }

  /** Sends `signal` and returns the next line whose event is `event`. */
  async request(signal: "SIGUSR1" | "SIGTERM", event: string, timeoutMs: number): Promise<any> {
    const from = this.lines.length;
    this.proc.kill(signal);
    return this.waitFor((l) => l.event === event, timeoutMs, from);
  }
}
