// Dante (Debian's dante-server, /usr/sbin/danted) as the lab's SOCKS5 server: a real peer
// with CONNECT and UDP ASSOCIATE over IPv4 and IPv6, run in a lab namespace with its own
// config and pid file (never the system service, never /etc/danted.conf).
//
// Authentication is "none" only: Dante's "username" method checks the system password
// file (danted.conf(5): "must match the username and password given in the system
// password file") and "pam.username" needs PAM, so a test of RFC 1929 would have to add
// system users. Username/password is tested against a small in-test server instead
// (test/netns/socks5_codec.test.ts).
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Lab } from "./netns.ts";
import { waitFor } from "./wait_for.ts";

export const DANTED = "/usr/sbin/danted";

/** Why dante cannot run here, or null. */
export function danteUnavailableReason(): string | null {
  return existsSync(DANTED) ? null : `needs ${DANTED} (Debian: apt-get install dante-server)`;
}

export interface DanteOptions {
  /** Addresses the server listens on (its "internal" side), each on `port`. */
  listen: string[];
  port: number;
  /** Interface whose addresses connect out (its "external" side). */
  externalInterface: string;
  /** Client CIDRs allowed to CONNECT and UDP ASSOCIATE (and to get UDP replies). */
  clients: string[];
  logPath: string;
}

/** danted.conf(5) text: no authentication, the given clients, everything else blocked. */
export function danteConfig(o: DanteOptions): string {
  const lines = [
    `logoutput: ${o.logPath}`,
    ...o.listen.map((address) => `internal: ${address} port = ${o.port}`),
    `external: ${o.externalInterface}`,
    "clientmethod: none",
    "socksmethod: none",
    // Root for binding, nobody for the rest: Dante drops privileges when it can.
    "user.privileged: root",
    "user.unprivileged: nobody",
  ];
  // One keyword a line: Dante's lexer ends a command list at the newline.
  const rule = (kind: string, from: string, to: string, command: string | null, log: string) => {
    lines.push(`${kind} {`, `  from: ${from} to: ${to}`);
    if (command) lines.push(`  command: ${command}`);
    lines.push(`  log: ${log}`, "}");
  };
  for (const cidr of o.clients) rule("client pass", cidr, "0/0", null, "error");
  for (const cidr of o.clients) {
    rule("socks pass", cidr, "0/0", "connect udpassociate", "error");
    // A datagram from a destination back to the client is its own rule in Dante.
    rule("socks pass", "0/0", cidr, "udpreply", "error");
  }
  rule("client block", "0/0", "0/0", null, "connect error");
  rule("socks block", "0/0", "0/0", null, "connect error");
  return `${lines.join("\n")}\n`;
}

export interface Dante {
  proc: ReturnType<Lab["spawn"]>;
  logPath: string;
  configPath: string;
}

/**
 * Starts danted in namespace `ns` (foreground, one process tree; killed by the caller or
 * by the lab's destroy()) and waits until it listens on o.port.
 */
export async function startDante(lab: Lab, ns: string, dir: string, o: DanteOptions) {
  const configPath = join(dir, "danted.conf");
  writeFileSync(configPath, danteConfig(o));
  // -V: a config error is reported here, with Dante's message, not as a silent exit.
  lab.exec(ns, [DANTED, "-V", "-f", configPath]);
  const proc = lab.spawn(ns, [DANTED, "-f", configPath, "-p", join(dir, "danted.pid"), "-N", "1"]);
  await waitFor(
    () => {
      if (proc.exitCode !== null) throw new Error(`danted exited with ${proc.exitCode}`);
      return lab.exec(ns, ["ss", "-Htln", `sport = :${o.port}`], undefined, true).stdout;
    },
    (listening) => listening.split("\n").filter((l) => l.trim()).length >= o.listen.length,
    { what: `danted listening on port ${o.port} in ${ns}`, timeoutMs: 10_000 },
  );
  return { proc, logPath: o.logPath, configPath } satisfies Dante;
}
