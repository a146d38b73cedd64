// A TLS client that stops in the middle of its ClientHello (test/lab/tls_peers.py hello
// --split N --pause): the first N bytes go out, then it waits until told to send the rest.
// For the tests of what the relay does with a hello that never completes in time.
import { join } from "node:path";
import type { Lab } from "./netns.ts";

const TLS_PEERS = join(import.meta.dir, "tls_peers.py");

export interface PausedHello {
  proc: ReturnType<Lab["spawn"]>;
  /** Sends the rest, then returns the client's summary: was every byte echoed intact? */
  finish(): Promise<{ sent: number; echoed: number; equal: boolean }>;
}

/** Starts the client and waits until its first `splitBytes` bytes are sent. */
export async function startPausedHello(
  lab: Lab,
  name: string,
  address: string,
  port: number,
  splitBytes: number,
): Promise<PausedHello> {
  const argv = ["python3", TLS_PEERS, "hello", name, address, `${port}`];
  const proc = lab.spawn(lab.client, [...argv, "--split", `${splitBytes}`, "--pause"], {
    stdin: "pipe",
  });
  const out = proc.stdout.getReader();
  const decoder = new TextDecoder();
  const first = decoder.decode((await out.read()).value);
  if (first.trim() !== "part-sent") throw new Error(`paused hello: said ${first}`);
  return {
    proc,
    async finish() {
      const stdin = proc.stdin as import("bun").FileSink;
      stdin.write("go\n");
      stdin.end();
      let text = "";
      // Bounded: the summary is one short line.
      for (let i = 0; i < 16 && !text.includes("}"); i++) {
        const chunk = await out.read();
        if (chunk.done) break;
        text += decoder.decode(chunk.value);
      }
      await proc.exited;
      return JSON.parse(text.trim());
    },
  };
}
