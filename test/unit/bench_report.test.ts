// bench/report.ts: the statistics and the chart of `bun run bench` (no benchmark runs here).
import { describe, expect, test } from "bun:test";
import {
  type Cell,
  cellComplete,
  cellTable,
  median,
  pairedRatios,
  ratio,
  ratioChart,
  spread,
} from "../../bench/report.ts";

const cell = (kernel: number[], relay: number[], generatorBound = "no"): Cell => ({
  section: "UDP",
  name: "req/resp 64 B 1 flow",
  unit: "transactions/s",
  kernel,
  relay,
  generatorBound,
  note: "",
});

describe("bench report", () => {
  test("median, spread and the relay/kernel ratios", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    expect(Number.isNaN(median([]))).toBe(true);
    expect(spread([20_000, 30_000, 25_000])).toBe("25.0k [20.0k-30.0k]");
    const c = cell([100, 200, 300], [50, 100, 240]);
    expect(ratio(c)).toBe(0.5);
    expect(pairedRatios(c)).toEqual([0.5, 0.5, 0.8]);
  });

  test("a cell without a number on either side is incomplete", () => {
    expect(cellComplete(cell([1], [2]))).toBe(true);
    expect(cellComplete(cell([], [2]))).toBe(false);
    expect(cellComplete(cell([1], [Number.NaN]))).toBe(false);
    expect(cellComplete(cell([1], [0]))).toBe(false);
  });

  test("the table row shows both medians, the ratio and its per-repetition range", () => {
    const [header, rule, row] = cellTable([cell([100, 200, 300], [50, 100, 240], "kernel 3/3")]);
    expect(header).toStartWith("| cell | unit |");
    expect(rule).toBe("|---|---|---|---|---|---|---|");
    expect(row).toContain("| **0.50** [0.50-0.80] | kernel 3/3 |");
  });

  test("the chart is well-formed SVG with a bar per cell and the 1.0 line", () => {
    const svg = ratioChart([cell([100], [50]), cell([100], [80], "relay 1/1")], "t & <x>");
    expect(svg).toStartWith("<svg ");
    expect(svg.trim()).toEndWith("</svg>");
    expect(svg).toContain("t &amp; &lt;x&gt;");
    expect(svg.match(/<rect x=/g)?.length).toBe(2);
    expect(svg).toContain("1.0 = kernel");
    expect(svg).toContain('fill="url(#hatch)"');
  });
});
