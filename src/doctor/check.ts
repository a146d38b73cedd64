// What every doctor check returns, and the host it looks at. A check is a small function
// of the config and a Host: the commands it runs go through host.run (a Runner, as
// `relay rules` uses) and the files it reads through host.readFile, so a test runs the
// real checks inside a namespace (`ip netns exec`) or feeds them fixtures.
import type { Runner } from "../rules/apply.ts";

/** warn: the fact is unusual or could not be checked, but is not known to break the relay. */
export type Status = "pass" | "fail" | "warn";

export interface Check {
  name: string;
  status: Status;
  /** What was found, in one line. */
  detail: string;
  /** When not passing: the exact command or config change that fixes it. */
  fix?: string;
}

export interface Host {
  run: Runner;
  /** A file's text (/proc/self/status, /proc/sys/...), or null when it cannot be read. */
  readFile(path: string): string | null;
  /** The names in a directory (/proc/sys/net/ipv4/conf), or [] when it cannot be read. */
  listDir(path: string): string[];
  /** Whether a relay answers on the control socket at `path` (a port it holds is fine). */
  relayAnswers(path: string): Promise<boolean>;
}

/** A sysctl's value (net.ipv4.conf.eth0.rp_filter: segments, as names may hold dots). */
export function readSysctl(host: Host, segments: string[]): string | null {
  const text = host.readFile(`/proc/sys/${segments.join("/")}`);
  return text === null ? null : text.trim();
}

/** The sysctl's name as `sysctl -w` takes it (a dot in an interface name becomes "/"). */
export function sysctlName(segments: string[]): string {
  return segments.map((s) => s.replaceAll(".", "/")).join(".");
}

/**
 * The command's complaint in one line: its error lines (nft and ip start them with
 * "Error:"; nft's echo of the command and its ^^^ marks are left out), else its first
 * lines, else its exit status.
 */
export function complaint(r: { status: number; stderr: string }): string {
  const lines = r.stderr
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const errors = lines.filter((l) => /^error\b/i.test(l));
  const text = errors.length > 0 ? errors : lines.filter((l) => !/^[\s^~]+$/.test(l));
  return text.length > 0 ? text.slice(0, 2).join("; ") : `exit ${r.status}`;
}

/** The kernel refused for want of a capability (so the fact itself is unknown). */
export function notPermitted(r: { stderr: string }): boolean {
  return /not permitted|permission denied/i.test(r.stderr);
}
