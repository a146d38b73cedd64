// Output that cannot kill the process. stdout may be a pipe whose reader went away
// (`bun run relay | head`, a log collector restarted): a write then fails with EPIPE,
// and an unhandled stream error would end the relay. The relay's job is the traffic,
// not its log: a failed write is counted and reported once on the other stream, and
// the relay goes on.

export interface OutputErrors {
  stdout: number;
  stderr: number;
}

/** Write errors per stream since start (shown in the metrics). */
export const outputErrors: OutputErrors = { stdout: 0, stderr: 0 };

let guarded = false;

/** Installs the handlers once (idempotent). */
export function guardOutput(): void {
  if (guarded) return;
  guarded = true;
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (outputErrors.stdout++ === 0) {
      safeWrite(
        process.stderr,
        `[relay] stdout: ${err.code ?? err.message}: metrics lines are lost from now on; ` +
          `the relay goes on\n`,
      );
    }
  });
  process.stderr.on("error", (err: NodeJS.ErrnoException) => {
    if (outputErrors.stderr++ === 0) {
      const line = { event: "log-error", stream: "stderr", error: err.code ?? err.message };
      safeWrite(process.stdout, `${JSON.stringify(line)}\n`);
    }
  });
}

function safeWrite(stream: NodeJS.WriteStream, text: string): void {
  try {
    stream.write(text);
  } catch {
    // The other stream is gone too: nothing left to tell.
  }
}
