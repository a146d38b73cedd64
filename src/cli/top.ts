// `relay top`: a live view of a running relay, refreshed in place. Plain ANSI (cursor
// home, clear; the alternate screen while it runs), which every terminal and SSH session
// understands; no terminfo. Rates come from two successive `stats` replies. q, Q or
// Ctrl-C quit (the terminal is in raw mode, so Ctrl-C arrives as a byte), as do SIGINT,
// SIGTERM and SIGHUP; the terminal is restored on every way out.
import type { ControlClient } from "./client.ts";
import { drops, duration, type Row, rate, table } from "./format.ts";

const ESC = "\x1b[";
const SCREEN_ENTER = `${ESC}?1049h${ESC}?25l`; // alternate screen, cursor hidden
const SCREEN_LEAVE = `${ESC}?25h${ESC}?1049l`;
const SCREEN_CLEAR = `${ESC}H${ESC}2J`; // cursor home, clear
const CTRL_C = 0x03;
const KEY_Q = 0x71;
const KEY_Q_UPPER = 0x51;

/** Without a terminal (a pipe), the screen is this size. */
const COLUMNS_DEFAULT = 120;
const ROWS_DEFAULT = 40;
/** Lines above the session table; the table gets what is left of the screen. */
const HEADER_LINES_MAX = 16;
/** Sessions asked for at most, whatever the screen (SESSIONS_LIMIT_MAX bounds it too). */
const SESSION_ROWS_MAX = 200;
/** A DNS name may be 253 characters: the table shows its end (the part that differs). */
const NAME_CHARS_MAX = 24;

// Narrower than `relay sessions`' table (no listener, no reply path), so that an IPv4
// row fits 120 columns.
const SESSION_HEADER = [
  "client",
  "target",
  "proto",
  "name",
  "age",
  "idle",
  "pkts up",
  "bytes up",
  "pkts dn",
  "bytes dn",
];

function sessionRow(s: Record<string, any>): Row {
  const name: string = s.name ?? "-";
  return [
    s.client,
    s.target,
    s.protocol,
    name.length > NAME_CHARS_MAX ? `..${name.slice(2 - NAME_CHARS_MAX)}` : name,
    duration(s.ageMs),
    duration(s.idleMs),
    s.packetsToTarget,
    s.bytesToTarget,
    s.packetsToClient,
    s.bytesToClient,
  ];
}

type Stats = Record<string, any>;

export interface TopSample {
  stats: Stats;
  sessions: Record<string, any>;
  /** The client's clock when `stats` arrived (rates need two). */
  atMs: number;
}

/** The screen for `now`, with rates against `before` (null: the first sample). */
export function topScreen(
  now: TopSample,
  before: TopSample | null,
  options: { path: string; intervalMs: number; columns: number; rows: number },
): string[] {
  const udp = now.stats.udp ?? {};
  const tcp = now.stats.tcp ?? null;
  const seconds = before === null ? 0 : (now.atMs - before.atMs) / 1000;
  const perSecond = (pick: (s: Stats) => number): number | null =>
    before === null || seconds <= 0 ? null : (pick(now.stats) - pick(before.stats)) / seconds;
  const udpFlows = perSecond((s) => s.udp?.sessionsCreated ?? 0);
  const udpPackets = perSecond(
    (s) => (s.udp?.packetsFromClients ?? 0) + (s.udp?.packetsFromTargets ?? 0),
  );
  const tcpFlows = perSecond((s) => s.tcp?.accepted ?? 0);

  const lines = [
    `relay top   up ${duration(now.stats.uptimeMs ?? 0)}   every ${duration(options.intervalMs)}` +
      `   ${options.path}   q quits`,
    "",
    `UDP  flows/s ${rate(udpFlows)}   packets/s ${rate(udpPackets)}   sessions ` +
      `${udp.sessionsActive ?? 0} active (max ${udp.sessionsMax ?? 0}), ` +
      `${udp.sessionsCreated ?? 0} created`,
    `     packets from clients ${udp.packetsFromClients ?? 0}   to targets ` +
      `${udp.packetsToTargets ?? 0}   from targets ${udp.packetsFromTargets ?? 0}   to ` +
      `clients ${udp.packetsToClients ?? 0}`,
    tcp === null
      ? "TCP  no TCP listeners"
      : `TCP  flows/s ${rate(tcpFlows)}   connections ${tcp.connectionsActive} active ` +
        `(max ${tcp.connectionsMax}), ${tcp.accepted} accepted   bytes to targets ` +
        `${tcp.bytesToTargets}   to clients ${tcp.bytesToClients}`,
    "",
  ];
  const before0 = before === null ? new Map() : new Map(drops(before.stats.udp, before.stats.tcp));
  const dropRows = drops(udp, tcp)
    .filter(([, value]) => value !== 0)
    .map(([name, value]) => {
      const previous = before0.get(name);
      const r = previous === undefined || seconds <= 0 ? null : (value - previous) / seconds;
      return [name, value, rate(r)];
    });
  if (dropRows.length === 0) lines.push("drops: none");
  else lines.push(...table(["drops", "total", "/s"], dropRows));
  lines.push("");

  const sessions = now.sessions.udp ?? [];
  lines.push(
    `busiest UDP sessions (by bytes): ${sessions.length} of ${now.sessions.udpMatched ?? 0}`,
  );
  const room = Math.max(0, options.rows - lines.length - 1);
  if (sessions.length > 0) {
    lines.push(...table(SESSION_HEADER, sessions.slice(0, room).map(sessionRow)));
  }
  // A line wider than the terminal would wrap and push the screen up: cut it.
  return lines.slice(0, options.rows).map((l) => l.slice(0, options.columns));
}

/** How many sessions to ask for: the rows the screen has left for them. */
function sessionRows(rows: number): number {
  return Math.max(1, Math.min(SESSION_ROWS_MAX, rows - HEADER_LINES_MAX));
}

/** Runs the live view until a quit key or signal; returns the exit status. */
export async function runTop(client: ControlClient, intervalMs: number): Promise<number> {
  const out = process.stdout;
  const stdin = process.stdin;
  const screen = out.isTTY === true;
  let quit: () => void = () => {};
  const quitting = new Promise<void>((resolve) => {
    quit = resolve;
  });
  let done = false;
  quitting.then(() => {
    done = true;
  });
  const onKey = (chunk: Uint8Array) => {
    if (chunk.some((b) => b === KEY_Q || b === KEY_Q_UPPER || b === CTRL_C)) quit();
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const signal of signals) process.on(signal, quit);
  if (stdin.isTTY) {
    stdin.setRawMode(true);
    stdin.on("data", onKey);
    stdin.resume();
  }
  if (screen) out.write(SCREEN_ENTER);
  let before: TopSample | null = null;
  let failure: string | null = null;
  try {
    while (!done) {
      const rows = out.rows || ROWS_DEFAULT;
      const stats = await client.request({ cmd: "stats" });
      const atMs = performance.now();
      const sessions = await client.request({
        cmd: "sessions",
        sort: "bytes",
        limit: sessionRows(rows),
      });
      const now: TopSample = { stats, sessions, atMs };
      const lines = topScreen(now, before, {
        path: client.path,
        intervalMs,
        columns: out.columns || COLUMNS_DEFAULT,
        rows,
      });
      out.write(`${screen ? SCREEN_CLEAR : ""}${lines.join("\r\n")}\r\n`);
      before = now;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        quitting,
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, intervalMs);
        }),
      ]);
      clearTimeout(timer);
    }
  } catch (err) {
    failure = (err as Error).message;
  } finally {
    if (screen) out.write(SCREEN_LEAVE);
    if (stdin.isTTY) {
      stdin.setRawMode(false);
      stdin.off("data", onKey);
      stdin.pause();
    }
    for (const signal of signals) process.off(signal, quit);
  }
  if (failure !== null) {
    console.error(`relay top: ${failure}`);
    return 1;
  }
  return 0;
}
