// Text for people: aligned tables, durations, rates; and which counters are drops.
// Shared by `relay stats`, `relay sessions` and `relay top`.

export type Row = Array<string | number>;

/** Columns padded to their widest cell; numbers right-aligned, text left-aligned. */
export function table(header: string[], rows: Row[], indent = ""): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => `${r[c]}`.length)));
  const numeric = header.map(
    (_, c) => rows.length > 0 && rows.every((r) => typeof r[c] === "number"),
  );
  const line = (cells: Row) =>
    indent +
    cells
      .map((cell, c) => {
        const text = `${cell}`;
        return numeric[c] ? text.padStart(widths[c]) : text.padEnd(widths[c]);
      })
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

/** "850 ms", "12.3 s", "5m 02s", "3h 04m", "2d 03h". */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const pad = (n: number) => `${Math.floor(n)}`.padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${pad((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86_400)}d ${pad((s % 86_400) / 3600)}h`;
}

/** A per-second rate with one decimal ("-" before there are two samples). */
export function rate(perSecond: number | null): string {
  return perSecond === null ? "-" : perSecond.toFixed(1);
}

/** "name value" pairs filling lines of at most `columns` characters. */
export function pairs(entries: Array<[string, number]>, columns: number, indent: string): string[] {
  const lines: string[] = [];
  let line = indent;
  for (const [name, value] of entries) {
    const cell = `${name} ${value}`;
    if (line.length > indent.length && line.length + 3 + cell.length > columns) {
      lines.push(line);
      line = indent;
    }
    line += line.length > indent.length ? `   ${cell}` : cell;
  }
  if (line.length > indent.length) lines.push(line);
  return lines;
}

type Counters = Record<string, number>;

/** TCP counters that refuse a connection at once (besides the `dropped*` ones). */
const TCP_REFUSALS = ["rejectedLimit", "upstreamNoDescriptors", "upstreamSocketFailed"];

/** Drop counters by reason, "udp droppedX" / "tcp rejectedLimit", with their values. */
export function drops(udp: Counters | null, tcp: Counters | null): Array<[string, number]> {
  const out: Array<[string, number]> = [];
  for (const [name, value] of Object.entries(udp ?? {})) {
    if (name.startsWith("dropped")) out.push([`udp ${name}`, value]);
  }
  for (const [name, value] of Object.entries(tcp ?? {})) {
    if (name.startsWith("dropped") || TCP_REFUSALS.includes(name)) out.push([`tcp ${name}`, value]);
  }
  return out;
}
