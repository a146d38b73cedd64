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
    // A sleep in the body of a bounded polling loop (`for (...) { ...; await sleep }`)
    // waits for a condition: the loop re-checks it, so it is not sleep-then-assert.
    const before = lines.slice(Math.max(0, i - 3), i + 1);
    if (before.some((text) => /\b(for|while) \(/.test(text))) return;
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
  // machine". Poll the condition with waitFor (test/lab/wait_for.ts) instead.
  test("tests wait for conditions: no sleep followed by an assertion", () => {
    const hits: string[] = [];
    for (const f of TEST_FILES) {
      if (f === TIDY) continue;
      hits.push(...sleepThenAssert(read(f)).map((line) => `${f}:${line}`));
    }
    expect(hits).toEqual([]);
  });

  test("tests put no upper bound on elapsed time", () => {
    const hits = TEST_FILES.filter((f) => f !== TIDY && ELAPSED_UPPER.test(read(f)));
    expect(hits).toEqual([]);
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

  test("C files put every #include before their first line of code", () => {
    // An include in the middle of a file marks a second module glued on (DESIGN.md:
    // one concern per file, one private header).
    const late: string[] = [];
    for (const f of files("ffi", [".c"])) {
      let code = false;
      readFileSync(join(ROOT, f), "utf8")
        .split("\n")
        .forEach((line, i) => {
          const t = line.trim();
          if (t.startsWith("#include") && code) late.push(`${f}:${i + 1}`);
          const comment = t === "" || t.startsWith("/*") || t.startsWith("*");
          if (!comment && !t.startsWith("#") && !t.startsWith("//")) code = true;
        });
    }
    expect(late).toEqual([]);
  });

  test("the Makefile builds every C file of ffi/", () => {
    const makefile = readFileSync(join(ROOT, "ffi", "Makefile"), "utf8");
    const built = (makefile.match(/^SRC :=(.*)$/m)?.[1] ?? "").trim().split(/\s+/);
    const present = files("ffi", [".c"]).map((f) => f.slice("ffi/".length));
    expect(built.sort()).toEqual(present.sort());
  });

  test("assertion messages are constants (a template string would allocate per call)", () => {
    const built = /\bassert\([^;]*,\s*`/;
    const hits = files("src", [".ts"]).filter((f) => built.test(read(f)));
    expect(hits).toEqual([]);
  });

  test("the product never imports tooling (test/, bench/, demo/)", () => {
    // src/ is what runs on a gateway; the lab, reference parsers and harnesses are not.
    const tooling = /from "(?:\.\.\/)+(?:test|bench|demo)\//;
    const hits = files("src", [".ts"]).filter((f) => tooling.test(read(f)));
    expect(hits).toEqual([]);
  });

  test("every name src exports is used beyond its declaration (no dead exports)", () => {
    const tree = [
      ...SOURCE,
      ...files("test", [".ts"]),
      ...files("bench", [".ts"]),
      ...files("demo", [".ts"]),
    ]
      .filter((f) => f.endsWith(".ts"))
      .map((f) => readFileSync(join(ROOT, f), "utf8"))
      .join("\n");
    const declaration = /export (?:async )?(?:function|const|let|class|enum|interface|type) (\w+)/g;
    const dead: string[] = [];
    for (const f of files("src", [".ts"])) {
      for (const [, name] of readFileSync(join(ROOT, f), "utf8").matchAll(declaration)) {
        const uses = tree.match(new RegExp(`\\b${name}\\b`, "g"))?.length ?? 0;
        if (uses < 2) dead.push(`${f}: ${name}`);
      }
    }
    expect(dead).toEqual([]);
  });

  test("the data path logs through its rate-limited logger, never console.log", () => {
    const dataPath = [
      "src/udp",
      "src/tcp",
      "src/classify",
      "src/flow",
      "src/egress",
      "src/sys",
    ].flatMap((d) => files(d, [".ts"]));
    const hits = dataPath.filter((f) =>
      readFileSync(join(ROOT, f), "utf8").includes("console.log("),
    );
    expect(hits).toEqual([]);
  });
});
