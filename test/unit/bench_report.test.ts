// bench/report.ts: the statistics and the chart of `bun run bench` (no benchmark runs here).
import { describe, expect, test } from "bun:test";
import {
  type Cell,
  cellComplete,
  cellTable,
  costTable,
  median,
  pairedRatios,
  ratio,
  ratioChart,
  ratioText,
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

  test("other paths get their medians and ratio columns beside relay/kernel", () => {
    const c: Cell = {
      ...cell([100, 100], [60, 80]),
      others: { "C relay": [50, 100], before: [40, 80] },
      ratios: [
        ["relay", "C relay"],
        ["relay", "before"],
      ],
    };
    const [header, rule, row] = cellTable([c]);
    expect(header).toBe(
      "| cell | unit | kernel median [min-max] | relay median [min-max] | " +
        "C relay median [min-max] | before median [min-max] | relay/kernel [per-rep min-max] | " +
        "relay/C relay | relay/before | gen-bound | notes |",
    );
    expect(rule.split("|").length - 2).toBe(11);
    // relay 70 / C relay 75 (ratio of medians); per repetition 1.20 and 0.80.
    expect(row).toContain("| **0.70** [0.60-0.80] | **0.93** [0.80-1.20] | **1.17** [1.00-1.50] |");
    expect(ratioText([1], [2])).toBe("**0.50**");
    expect(ratioText([1], [])).toBe("-");
  });

  test("a cell with another path's number missing is incomplete", () => {
    expect(cellComplete({ ...cell([1], [2]), others: { "C relay": [3] } })).toBe(true);
    expect(cellComplete({ ...cell([1], [2]), others: { "C relay": [] } })).toBe(false);
  });

  test("the cost table: a row per cell and path, '-' where nothing was counted", () => {
    const c: Cell = {
      ...cell([1], [1]),
      costUnit: "relayed datagram",
      costs: {
        relay: { cpuUs: [16.1, 15.9, 30], syscalls: [2, 2.2, 2.1], contextSwitches: [0.5, 0.4, 1] },
        "C relay": { cpuUs: [13.2], syscalls: [Number.NaN], contextSwitches: [0.01] },
      },
    };
    const [header, , relay, cRelay] = costTable([c]);
    expect(header).toBe("| cell | per | path | CPU us | system calls | context switches |");
    expect(relay).toBe(
      "| UDP: req/resp 64 B 1 flow | relayed datagram | relay | 16.1 | 2.10 | " + "0.50 |",
    );
    expect(cRelay).toBe(
      "| UDP: req/resp 64 B 1 flow | relayed datagram | C relay | 13.2 | - | " + "0.01 |",
    );
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
