// bench/proxy_stats.ts and the argument parsing of bench/udp.ts and bench/tcp.ts: --variant,
// --baseline, --no-pin, the deep merge and the per-unit arithmetic (no benchmark runs here).
import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  addVariant,
  checkBaseline,
  contextSwitchesOf,
  costPerUnit,
  cpuSecondsOf,
  deepMerge,
  extraPathArgs,
  parsePerfCsv,
  parseVariant,
  ProcessWindow,
  perUnit,
  type Variant,
  VARIANTS_MAX,
} from "../../bench/proxy_stats.ts";
import { parseArgs as tcpArgs } from "../../bench/tcp.ts";
import { parseArgs as udpArgs } from "../../bench/udp.ts";

/** A directory that looks like a built checkout (what --baseline checks). */
function fakeCheckout(): string {
  const dir = mkdtempSync(join(tmpdir(), "bench-baseline-"));
  mkdirSync(join(dir, "src"));
  mkdirSync(join(dir, "build"));
  writeFileSync(join(dir, "src", "main.ts"), "");
  writeFileSync(join(dir, "build", "librelay.so"), "");
  return dir;
}

describe("--variant NAME=<JSON>", () => {
  test("a name and a JSON object", () => {
    expect(parseVariant('uring={"udp":{"ioBackend":"io_uring"}}')).toEqual({
      name: "uring",
      patch: { udp: { ioBackend: "io_uring" } },
    });
    // The JSON may itself contain "=".
    expect(parseVariant('a-1={"x":"k=v"}').patch).toEqual({ x: "k=v" });
  });

  test("bad specs name the problem", () => {
    expect(() => parseVariant("uring")).toThrow("expected NAME=<JSON object>");
    expect(() => parseVariant('Bad Name={"a":1}')).toThrow("the name must match");
    expect(() => parseVariant('relay={"a":1}')).toThrow("a path of the bench itself");
    expect(() => parseVariant("x={nope")).toThrow("not JSON");
    expect(() => parseVariant("x=[1]")).toThrow("must be an object");
    expect(() => parseVariant("x=3")).toThrow("must be an object");
  });

  test("each name once, at most VARIANTS_MAX", () => {
    const vs: Variant[] = [];
    addVariant(vs, "a={}");
    expect(() => addVariant(vs, 'a={"b":1}')).toThrow("given twice");
    for (let i = 1; i < VARIANTS_MAX; i++) addVariant(vs, `v${i}={}`);
    expect(() => addVariant(vs, "z={}")).toThrow(`at most ${VARIANTS_MAX}`);
    expect(() => addVariant(vs, undefined)).toThrow("NAME=<JSON object>");
  });

  test("passed through as given", () => {
    const vs = [parseVariant('u={"udp":{"dataPlane":"callback"}}')];
    expect(extraPathArgs(vs, "/x")).toEqual([
      "--variant",
      'u={"udp":{"dataPlane":"callback"}}',
      "--baseline",
      "/x",
    ]);
    expect(extraPathArgs([], null)).toEqual([]);
  });
});

describe("deepMerge", () => {
  test("objects merge key by key, arrays and scalars replace, inputs unchanged", () => {
    const base = {
      udp: { idleTimeoutMs: 10_000, dataPlane: "worker" },
      metrics: { port: 0 },
      listeners: [{ name: "a" }, { name: "b" }],
    };
    const patch = {
      udp: { dataPlane: "callback", extra: { on: true } },
      listeners: [{ name: "c" }],
      tcp: { spliceMode: "always" },
    };
    const merged = deepMerge(base, patch);
    expect(merged).toEqual({
      udp: { idleTimeoutMs: 10_000, dataPlane: "callback", extra: { on: true } },
      metrics: { port: 0 },
      listeners: [{ name: "c" }],
      tcp: { spliceMode: "always" },
    });
    expect(base.udp.dataPlane).toBe("worker");
    expect(base.listeners.length).toBe(2);
  });

  test("an object replaces a scalar and a scalar an object", () => {
    expect(deepMerge({ a: 1, b: { c: 2 } }, { a: { x: 1 }, b: null })).toEqual({
      a: { x: 1 },
      b: null,
    });
  });
});

describe("per-unit arithmetic", () => {
  test("count / units; no data is NaN, not zero", () => {
    expect(perUnit(300, 100)).toBe(3);
    expect(Number.isNaN(perUnit(Number.NaN, 100))).toBe(true);
    expect(Number.isNaN(perUnit(5, 0))).toBe(true);
    expect(Number.isNaN(perUnit(5, Number.NaN))).toBe(true);
  });

  test("CPU seconds become microseconds per unit", () => {
    // 0.5 s of CPU, 1000 system calls, 20 switches over 10 000 relayed datagrams.
    expect(costPerUnit({ cpuSeconds: 0.5, syscalls: 1000, contextSwitches: 20 }, 10_000)).toEqual({
      cpuUs: 50,
      syscalls: 0.1,
      contextSwitches: 0.002,
    });
    const noPerf = costPerUnit({ cpuSeconds: 1, syscalls: Number.NaN, contextSwitches: 0 }, 1e3);
    expect(noPerf.cpuUs).toBe(1000);
    expect(Number.isNaN(noPerf.syscalls)).toBe(true);
    expect(noPerf.contextSwitches).toBe(0);
  });

  test("perf stat -x, output", () => {
    const out =
      "1234567,,raw_syscalls:sys_enter,2000000000,100.00,,\n" +
      "<not counted>,,context-switches,0,100.00,,\n\nEvents enabled\n";
    const counts = parsePerfCsv(out);
    expect(counts["raw_syscalls:sys_enter"]).toBe(1_234_567);
    expect(Number.isNaN(counts["context-switches"])).toBe(true);
    expect(Object.keys(counts).length).toBe(2);
    expect(parsePerfCsv("perf: command not found")).toEqual({});
  });

  test("without perf the window still counts CPU and switches, system calls are NaN", async () => {
    const w = new ProcessWindow(process.pid, false);
    w.prepare();
    await w.start();
    let x = 0;
    for (let i = 0; i < 1e6; i++) x += i;
    const counts = await w.stop();
    expect(x).toBeGreaterThan(0);
    expect(counts.cpuSeconds).toBeGreaterThanOrEqual(0);
    expect(counts.contextSwitches).toBeGreaterThanOrEqual(0);
    expect(Number.isNaN(counts.syscalls)).toBe(true);
  });

  test("this process's CPU time and context switches are readable, a gone one's NaN", () => {
    expect(cpuSecondsOf(process.pid)).toBeGreaterThanOrEqual(0);
    expect(contextSwitchesOf(process.pid)).toBeGreaterThan(0);
    expect(Number.isNaN(cpuSecondsOf(2 ** 30))).toBe(true);
    expect(Number.isNaN(contextSwitchesOf(2 ** 30))).toBe(true);
  });
});

describe("bench/udp.ts and bench/tcp.ts arguments", () => {
  test("pinned by default, --no-pin turns it off, --pin is accepted", () => {
    expect(udpArgs([]).pin).toBe(true);
    expect(udpArgs(["--no-pin"]).pin).toBe(false);
    expect(udpArgs(["--pin"]).pin).toBe(true);
    expect(tcpArgs([]).pin).toBe(true);
    expect(tcpArgs(["--no-pin"]).pin).toBe(false);
  });

  test("--cell MODE:BYTES:FLOWS picks cells (repeatable); a wrong one names the form", () => {
    expect(udpArgs([]).cellsOnly).toEqual([]);
    expect(udpArgs(["--cell", "rr:1200:256", "--cell", "oneway:64:1"]).cellsOnly).toEqual([
      { mode: "rr", sizeBytes: 1200, flows: 256 },
      { mode: "oneway", sizeBytes: 64, flows: 1 },
    ]);
    for (const bad of ["rr:1000:256", "both:64:1", "rr:64", "rr:64:2"]) {
      expect(() => udpArgs(["--cell", bad])).toThrow(`--cell ${bad}: MODE:BYTES:FLOWS`);
    }
    expect(() => udpArgs(["--cell"])).toThrow("MODE rr|oneway, BYTES 64|1200, FLOWS 1|256");
  });

  test("--variant repeatable and --baseline DIR", () => {
    const dir = fakeCheckout();
    try {
      const argv = [
        "--quick",
        "--variant",
        'a={"udp":{"dataPlane":"callback"}}',
        "--variant",
        'b={"tcp":{"spliceMode":"always"}}',
        "--baseline",
        dir,
      ];
      for (const args of [udpArgs(argv), tcpArgs(argv)]) {
        expect(args.variants.map((v) => v.name)).toEqual(["a", "b"]);
        expect(args.variants[1].patch).toEqual({ tcp: { spliceMode: "always" } });
        expect(args.baseline).toBe(dir);
      }
      expect(udpArgs([]).variants).toEqual([]);
      expect(tcpArgs([]).baseline).toBeNull();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("--baseline refuses a directory that is not a built checkout", () => {
    const dir = mkdtempSync(join(tmpdir(), "bench-baseline-"));
    try {
      expect(() => checkBaseline(dir)).toThrow("src/main.ts is missing");
      expect(() => udpArgs(["--baseline"])).toThrow("a checkout directory is required");
      mkdirSync(join(dir, "src"));
      writeFileSync(join(dir, "src", "main.ts"), "");
      expect(() => tcpArgs(["--baseline", dir])).toThrow("build/librelay.so is missing");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
