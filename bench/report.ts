// Rendering for bench/run.ts: statistics, the markdown report and the SVG chart.
// Pure functions (no I/O), so test/unit/bench_report.test.ts can check them.

/** One end-to-end cell: the relay and kernel forwarding, measured in the same run. */
export interface Cell {
  section: string;
  name: string;
  unit: string;
  /** One value per repetition (the relay's and the kernel's runs of a repetition pair up). */
  kernel: number[];
  relay: number[];
  /** Generator-bound runs, e.g. "kernel 3/3" or "no". */
  generatorBound: string;
  /** Extra context for the table (latency, loss, CPU). */
  note: string;
  /**
   * More paths of the same runs, one value per repetition, by label: "C relay", "HAProxy",
   * "before" (--baseline), a --variant's name.
   */
  others?: Record<string, number[]>;
  /** Ratio columns beside relay/kernel: [numerator, denominator], "relay" or an others label. */
  ratios?: Array<[string, string]>;
  /** What one unit of work cost each proxy path, by label ("relay" too). */
  costs?: Record<string, CostSamples>;
  /** The unit of the costs: "relayed datagram", "connection", "GB". */
  costUnit?: string;
}

/** One value per repetition (NaN where not measured, e.g. no perf). */
export interface CostSamples {
  cpuUs: number[];
  syscalls: number[];
  contextSwitches: number[];
}

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** 3 significant digits, k/M suffixes above 10^4. */
export function fmt(x: number): string {
  if (!Number.isFinite(x)) return "-";
  const a = Math.abs(x);
  if (a >= 1e6) return `${(x / 1e6).toFixed(a >= 1e8 ? 0 : 2)}M`;
  if (a >= 1e4) return `${(x / 1e3).toFixed(a >= 1e5 ? 0 : 1)}k`;
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

export function spread(xs: number[]): string {
  if (xs.length === 0) return "-";
  return `${fmt(median(xs))} [${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}]`;
}

/** relay median / kernel median. */
export function ratio(c: Cell): number {
  return median(c.relay) / median(c.kernel);
}

/** Per-repetition ratios (relay run / kernel run of the same repetition). */
export function pairedRatios(c: Cell): number[] {
  const n = Math.min(c.relay.length, c.kernel.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(c.relay[i] / c.kernel[i]);
  return out;
}

/** A cell produced a number when every path has only finite, positive values. */
export function cellComplete(c: Cell): boolean {
  const ok = (xs: number[]) => xs.length > 0 && xs.every((x) => Number.isFinite(x) && x > 0);
  return ok(c.kernel) && ok(c.relay) && Object.values(c.others ?? {}).every(ok);
}

/** The values of path `label` in cell `c` ("kernel", "relay" or one of its others). */
export function pathValues(c: Cell, label: string): number[] {
  if (label === "kernel") return c.kernel;
  if (label === "relay") return c.relay;
  return c.others?.[label] ?? [];
}

/** `**a/b**` as a ratio of medians, then [min-max] of the per-repetition ratios. */
export function ratioText(a: number[], b: number[]): string {
  const r = median(a) / median(b);
  if (!Number.isFinite(r)) return "-";
  const per: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) per.push(a[i] / b[i]);
  const range = per.length > 1
    ? ` [${Math.min(...per).toFixed(2)}-${Math.max(...per).toFixed(2)}]`
    : "";
  return `**${r.toFixed(2)}**${range}`;
}

/** Ordered union of the cells' extra path labels and ratio columns. */
function columnsOf(cells: Cell[]): { others: string[]; ratios: Array<[string, string]> } {
  const others: string[] = [];
  const ratios: Array<[string, string]> = [];
  for (const c of cells) {
    for (const o of Object.keys(c.others ?? {})) if (!others.includes(o)) others.push(o);
    for (const [a, b] of c.ratios ?? []) {
      if (!ratios.some(([x, y]) => x === a && y === b)) ratios.push([a, b]);
    }
  }
  return { others, ratios };
}

/**
 * One table: a row per cell, the kernel and relay medians, those of the other paths, then
 * relay/kernel and the cells' other ratio columns (ratio of medians, [per-repetition
 * min-max]). Give it the cells of one step for a readable table.
 */
export function cellTable(cells: Cell[]): string[] {
  const { others, ratios } = columnsOf(cells);
  const header = ["cell", "unit", "kernel median [min-max]", "relay median [min-max]",
    ...others.map((o) => `${o} median [min-max]`), "relay/kernel [per-rep min-max]",
    ...ratios.map(([a, b]) => `${a}/${b}`), "gen-bound", "notes"];
  const lines = [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`];
  for (const c of cells) {
    const row = [`${c.section}: ${c.name}`, c.unit, spread(c.kernel), spread(c.relay),
      ...others.map((o) => spread(pathValues(c, o))),
      ratioText(c.relay, c.kernel),
      ...ratios.map(([a, b]) => ratioText(pathValues(c, a), pathValues(c, b))),
      c.generatorBound, c.note];
    lines.push(`| ${row.join(" | ")} |`);
  }
  return lines;
}

/** Median of the finite values, with 2-3 significant digits; "-" when there are none. */
function costText(xs: number[]): string {
  const v = median(xs.filter((x) => Number.isFinite(x)));
  if (!Number.isFinite(v)) return "-";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/**
 * What each proxy path cost per unit of work: a row per cell and path, with CPU us,
 * system calls and context switches per unit (medians over repetitions).
 */
export function costTable(cells: Cell[]): string[] {
  const lines = [
    "| cell | per | path | CPU us | system calls | context switches |",
    "|---|---|---|---|---|---|",
  ];
  for (const c of cells) {
    for (const [path, cost] of Object.entries(c.costs ?? {})) {
      lines.push(`| ${c.section}: ${c.name} | ${c.costUnit ?? "-"} | ${path} | ` +
        `${costText(cost.cpuUs)} | ${costText(cost.syscalls)} | ` +
        `${costText(cost.contextSwitches)} |`);
    }
  }
  return lines;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/**
 * Horizontal bars of relay/kernel per cell, a whisker over the per-repetition ratios,
 * a dashed line at 1.0; generator-bound cells are drawn hatched.
 */
export function ratioChart(cells: Cell[], title: string): string {
  const rowHeight = 22;
  const labelWidth = 380;
  const plotWidth = 440;
  const top = 44;
  const bottom = 36;
  const width = labelWidth + plotWidth + 70;
  const height = top + rowHeight * cells.length + bottom;
  const maxRatio = Math.max(1.2, ...cells.flatMap((c) => [ratio(c), ...pairedRatios(c)])
    .filter((x) => Number.isFinite(x)));
  const scaleMax = Math.ceil(maxRatio * 5) / 5;
  const x = (r: number) => labelWidth + (Math.max(0, Math.min(r, scaleMax)) / scaleMax) * plotWidth;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    "<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" " +
      "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#9ecae1\"/>" +
      "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#3182bd\" stroke-width=\"2\"/>" +
      "</pattern></defs>",
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">` +
      `${escapeXml(title)}</text>`,
    `<text x="${width / 2}" y="34" text-anchor="middle" fill="#555">relay / kernel forwarding ` +
      `(median; whisker: per-repetition min-max; hatched: generator-bound runs)</text>`,
  ];
  for (let t = 0; t <= scaleMax + 1e-9; t += 0.2) {
    const tx = x(t);
    out.push(`<line x1="${tx.toFixed(1)}" y1="${top - 4}" x2="${tx.toFixed(1)}" ` +
      `y2="${top + rowHeight * cells.length}" stroke="#eeeeee"/>`,
    `<text x="${tx.toFixed(1)}" y="${height - bottom + 16}" text-anchor="middle" fill="#555">` +
      `${t.toFixed(1)}</text>`);
  }
  cells.forEach((c, i) => {
    const y = top + i * rowHeight;
    const r = ratio(c);
    const bound = c.generatorBound !== "no";
    out.push(`<text x="${labelWidth - 8}" y="${y + 15}" text-anchor="end">` +
      `${escapeXml(`${c.section}: ${c.name}`)}</text>`);
    if (Number.isFinite(r)) {
      out.push(`<rect x="${labelWidth}" y="${y + 4}" width="${(x(r) - labelWidth).toFixed(1)}" ` +
        `height="${rowHeight - 8}" fill="${bound ? "url(#hatch)" : "#3182bd"}"/>`);
      const paired = pairedRatios(c).filter((v) => Number.isFinite(v));
      if (paired.length > 1) {
        const lo = x(Math.min(...paired));
        const hi = x(Math.max(...paired));
        const my = y + rowHeight / 2;
        out.push(`<line x1="${lo.toFixed(1)}" y1="${my}" x2="${hi.toFixed(1)}" y2="${my}" ` +
          `stroke="#222" stroke-width="1.5"/>`,
        ...[lo, hi].map((v) => `<line x1="${v.toFixed(1)}" y1="${my - 4}" x2="${v.toFixed(1)}" ` +
          `y2="${my + 4}" stroke="#222"/>`));
      }
      out.push(`<text x="${(Math.max(x(r), x(Math.max(...paired, r))) + 6).toFixed(1)}" ` +
        `y="${y + 15}">${r.toFixed(2)}${bound ? " (gen-bound)" : ""}</text>`);
    } else {
      out.push(`<text x="${labelWidth + 6}" y="${y + 15}" fill="#c00">no number</text>`);
    }
  });
  const one = x(1).toFixed(1);
  out.push(`<line x1="${one}" y1="${top - 6}" x2="${one}" ` +
    `y2="${top + rowHeight * cells.length + 2}" ` +
    `stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,3"/>`,
  `<text x="${one}" y="${top - 8}" text-anchor="middle" fill="#d62728">1.0 = kernel</text>`,
  "</svg>");
  return out.join("\n") + "\n";
}
