// The process as the kernel sees it (/proc/self), for process_* metrics: read at scrape
// time only. A field that cannot be read is null and its metric is left out.
import { readdirSync, readFileSync } from "node:fs";

export interface ProcessStats {
  residentBytes: number | null;
  /** Entries of /proc/self/fd, the one listing them included (as client_golang counts). */
  openFds: number | null;
  /** RLIMIT_NOFILE, soft. */
  maxFds: number | null;
}

const KIB = 1024;

export function readProcessStats(): ProcessStats {
  return { residentBytes: residentBytes(), openFds: openFds(), maxFds: maxFds() };
}

/** VmRSS of /proc/self/status, in kB (the kernel means KiB). */
function residentBytes(): number | null {
  const kib = field(read("/proc/self/status"), "VmRSS:");
  return kib === null ? null : kib * KIB;
}

function openFds(): number | null {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return null;
  }
}

/** "Max open files  20000  20000  files": the soft limit, first. */
function maxFds(): number | null {
  return field(read("/proc/self/limits"), "Max open files");
}

function read(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/** The first number after `key` on its line ("unlimited" and the like: null). */
function field(text: string | null, key: string): number | null {
  if (text === null) return null;
  const at = text.indexOf(key);
  if (at < 0) return null;
  const end = text.indexOf("\n", at);
  const words = text
    .slice(at + key.length, end < 0 ? undefined : end)
    .trim()
    .split(/\s+/);
  const n = Number(words[0]);
  return Number.isFinite(n) ? n : null;
}
