// The listeners' ports (and the metrics port) are free, or held by a running relay whose
// control socket answers: a relay restarted while another runs would fail to bind.
import type { Config } from "../config/load.ts";
import { type Check, complaint, type Host } from "./check.ts";

interface Wanted {
  name: string;
  protocol: "udp" | "tcp";
  address: string;
  port: number;
}

const WILDCARDS = new Set(["*", "0.0.0.0", "::"]);

/** "127.0.0.1:53", "[::1]:53", "*:53", "127.0.0.1%lo:53" -> [address, port]. */
export function splitEndpoint(text: string): [string, number] {
  const colon = text.lastIndexOf(":");
  const address = text
    .slice(0, colon)
    .replace(/^\[|\]$/g, "")
    .replace(/%.*$/, "");
  return [address, Number(text.slice(colon + 1))];
}

/** The sockets in `ss -Hln` output that `wanted` would collide with, as ss shows them. */
export function collisions(ss: string, wanted: Wanted): string[] {
  const v6 = wanted.address.includes(":");
  return ss
    .split("\n")
    .filter((l) => l.trim() !== "")
    .filter((line) => {
      const [address, port] = splitEndpoint(line.trim().split(/\s+/)[3] ?? "");
      if (port !== wanted.port) return false;
      if (WILDCARDS.has(wanted.address) || address === "*") return true;
      if (address === wanted.address) return true;
      return address === (v6 ? "::" : "0.0.0.0");
    })
    .map((line) => line.trim().replace(/\s+/g, " "));
}

export async function ports(config: Config, host: Host): Promise<Check[]> {
  const wanted: Wanted[] = config.listeners.map((l) => ({
    name: `listener ${l.name}`,
    protocol: l.protocol,
    address: l.address,
    port: l.port,
  }));
  if (config.metrics.port !== 0) {
    const m = config.metrics;
    wanted.push({ name: "metrics", protocol: "tcp", address: m.address, port: m.port });
  }
  const socketPath = config.control.socketPath;
  let answers: boolean | null = null;
  const checks: Check[] = [];
  for (const w of wanted) {
    const where = w.address.includes(":") ? `[${w.address}]:${w.port}` : `${w.address}:${w.port}`;
    const name = `port ${w.protocol} ${where} (${w.name})`;
    const flag = w.protocol === "udp" ? "-Hlnup" : "-Hlntp";
    const r = host.run(["ss", flag, "sport", "=", `:${w.port}`]);
    if (r.status !== 0) {
      checks.push({ name, status: "warn", detail: `not checked: ss: ${complaint(r)}` });
      continue;
    }
    const held = collisions(r.stdout, w);
    if (held.length === 0) {
      checks.push({ name, status: "pass", detail: "free" });
      continue;
    }
    if (answers === null) answers = socketPath !== "" && (await host.relayAnswers(socketPath));
    if (answers) {
      checks.push({
        name,
        status: "pass",
        detail: `held, and a relay answers on ${socketPath}: presumably that relay`,
      });
      continue;
    }
    checks.push({
      name,
      status: "fail",
      detail: `in use by another socket: ${held.slice(0, 2).join(" | ")}`,
      fix: "stop that process, or give this listener another port (listeners[].port)",
    });
  }
  return checks;
}
