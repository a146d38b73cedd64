// Tidy: what review should never have to say twice (TigerBeetle's tidy.zig). Unfinished
// markers, long lines, skipped tests, tests that wait for time instead of conditions, and
// console output from the data path.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");
const LINE_COLUMNS_MAX = 100;

function files(dir: string, extensions: string[]): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(ROOT, dir))) {
    const path = join(dir, name);
    if (statSync(join(ROOT, path)).isDirectory()) out.push(...files(path, extensions));
    else if (extensions.some((e) => name.endsWith(e))) out.push(path);
  }
  return out;
}

const SOURCE = [
  ...files("src", [".ts"]),
  ...files("ffi", [".c", ".h"]),
  ...files("wasm/src", [".zig"]),
];

const TEST_FILES = files("test", [".ts"]);
/** This file names the patterns it bans. */
const TIDY = relative(ROOT, import.meta.path);
const read = (file: string) => readFileSync(join(ROOT, file), "utf8");

/** A sleep: `await Bun.sleep(`, a promised setTimeout, or a race against a sleep. */
const SLEEP = /await\s+(Bun\.sleep\(|new Promise\b.*\bsetTimeout\(|Promise\.race\(.*Bun\.sleep\()/;
/** Within how many code lines (comments skipped) after a sleep an `expect(` is banned. */
const SLEEP_ASSERT_LINES_MAX = 2;
/** Known offenders, fixed on another branch (issue 9); see the test that checks them. */
const SLEEP_ASSERT_KNOWN = ["test/unit/tcp_engine.test.ts"];
/** expect(<elapsed time>).toBeLessThan(...): elapsed, a name ending in Ms, or a clock. */
const ELAPSED_UPPER =
  /expect\((?:[^()]|\([^()]*\))*(?:elapsed|[a-z]Ms\b|performance\.now\(\)|Date\.now\(\))(?:[^()]|\([^()]*\))*\)\s*\.toBeLessThan(?:OrEqual)?\(/i;

/** Line numbers (1-based) of sleeps followed by an expect( within SLEEP_ASSERT_LINES_MAX
 * code lines. */
function sleepThenAssert(text: string): number[] {
  const lines = text.split("\n");
  const hits: number[] = [];
  lines.forEach((line, i) => {
    const sleep = SLEEP.exec(line);
    if (!sleep) return;
    const next = lines
      .slice(i + 1)
      .filter((text) => text.trim() !== "" && !text.trim().startsWith("//"))
      .slice(0, SLEEP_ASSERT_LINES_MAX);
    const after = [line.slice(sleep.index), ...next];
    if (after.some((text) => text.includes("expect("))) hits.push(i + 1);
  });
  return hits;
}

describe("tidy", () => {
  test("no unfinished-work markers in the product", () => {
    const marker = new RegExp(["TO" + "DO", "FIX" + "ME", "X" + "XX"].join("|"));
    const hits = SOURCE.filter((f) => marker.test(readFileSync(join(ROOT, f), "utf8")));
    expect(hits).toEqual([]);
  });

  test(`product lines stay within ${LINE_COLUMNS_MAX} columns`, () => {
    const long: string[] = [];
    for (const f of SOURCE) {
      readFileSync(join(ROOT, f), "utf8")
        .split("\n")
        .forEach((line, i) => {
          if (line.length > LINE_COLUMNS_MAX) long.push(`${f}:${i + 1} (${line.length})`);
        });
    }
    expect(long).toEqual([]);
  });

  test("no skipped or todo tests (CI must run everything)", () => {
    const skip = new RegExp(["\\.s" + "kip\\(", "\\.to" + "do\\(", "s" + "kipIf\\("].join("|"));
    const hits = TEST_FILES.filter((f) => skip.test(readFileSync(join(ROOT, f), "utf8")));
    expect(hits.map((f) => relative(ROOT, join(ROOT, f)))).toEqual([]);
  });

  // STYLE.md 14: "never sleep-then-assert or bound elapsed time on a shared 2-core
  // machine". Poll the condition with waitFor (src/lab/wait_for.ts) instead.
  test("tests wait for conditions: no sleep followed by an assertion", () => {
    const hits: string[] = [];
    for (const f of TEST_FILES) {
      if (f === TIDY || SLEEP_ASSERT_KNOWN.includes(f)) continue;
      hits.push(...sleepThenAssert(read(f)).map((line) => `${f}:${line}`));
    }
    expect(hits).toEqual([]);
  });

  test("tests put no upper bound on elapsed time", () => {
    const hits = TEST_FILES.filter((f) => f !== TIDY && ELAPSED_UPPER.test(read(f)));
    expect(hits).toEqual([]);
  });

  test("the exemptions from the sleep rule are still needed", () => {
    // Each entry is fixed on another branch: once fixed, delete it from SLEEP_ASSERT_KNOWN.
    const fixed = SLEEP_ASSERT_KNOWN.filter((f) => sleepThenAssert(read(f)).length === 0);
    expect(fixed).toEqual([]);
  });

  test("the timing rules catch what they ban, and let polling through", () => {
    const banned = [
      "await Bun.sleep(1600);\nconst m = await metrics();\nexpect(m.sessionsActive).toBe(0);",
      "await new Promise((r) => setTimeout(r, 100));\nexpect(done).toBe(true);",
      "await Promise.race([reader, Bun.sleep(5000)]);\nexpect(out).toContain('x');",
      "await Bun.sleep(50); expect(x).toBe(1);",
      "await Bun.sleep(1600); // past the timeout\nconst mid = await m();\n// expired\nexpect(mid).toBe(2);",
    ];
    expect(banned.map((text) => sleepThenAssert(text))).toEqual([[1], [1], [1], [1], [1]]);
    const polling = "while (!ready()) {\n  await Bun.sleep(20);\n}\nthrow new Error('late');";
    expect(sleepThenAssert(polling)).toEqual([]);
    expect(ELAPSED_UPPER.test("expect(r.elapsedMs).toBeLessThan(900);")).toBe(true);
    expect(ELAPSED_UPPER.test("expect(performance.now() - t0).toBeLessThanOrEqual(5)")).toBe(true);
    expect(ELAPSED_UPPER.test("expect(\n  Date.now() - started,\n).toBeLessThan(100)")).toBe(true);
    expect(ELAPSED_UPPER.test("expect(stopMs).toBeGreaterThanOrEqual(2400);")).toBe(false);
    expect(ELAPSED_UPPER.test("expect(r.acceptedInStall).toBeLessThan(48 << 20);")).toBe(false);
  });

  test("the data path logs through its rate-limited logger, never console.log", () => {
    const dataPath = ["src/relay", "src/flow", "src/egress", "src/sys"].flatMap((d) =>
      files(d, [".ts"]),
    );
    const hits = dataPath.filter((f) =>
      readFileSync(join(ROOT, f), "utf8").includes("console.log("),
    );
    expect(hits).toEqual([]);
  });
});
