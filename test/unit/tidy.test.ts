// Tidy: what review should never have to say twice (TigerBeetle's tidy.zig). Unfinished
// markers, long lines, skipped tests, and console output from the data path.
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
    const hits = files("test", [".ts"]).filter((f) =>
      skip.test(readFileSync(join(ROOT, f), "utf8")),
    );
    expect(hits.map((f) => relative(ROOT, join(ROOT, f)))).toEqual([]);
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

  test("unit tests wait for conditions, not for time: every sleep is inside a loop", () => {
    // STYLE.md 14: poll until a deadline; never sleep-then-assert on a shared machine.
    const loose: string[] = [];
    for (const f of files("test/unit", [".ts"])) {
      const loops: number[] = []; // brace depth at which each open loop body started
      let depth = 0;
      readFileSync(join(ROOT, f), "utf8")
        .split("\n")
        .forEach((line, i) => {
          const loop = /\b(for|while) \(/.test(line);
          if (line.includes("Bun.sleep(") && loops.length === 0 && !loop) {
            loose.push(`${f}:${i + 1}`);
          }
          for (const ch of line) {
            if (ch === "{") {
              depth++;
              if (loop && loops.at(-1) !== depth) loops.push(depth);
            } else if (ch === "}") {
              if (loops.at(-1) === depth) loops.pop();
              depth--;
            }
          }
        });
    }
    expect(loose).toEqual([]);
  });

  test("every name src exports is used beyond its declaration (no dead exports)", () => {
    const tree = [...SOURCE, ...files("test", [".ts"]), ...files("bench", [".ts"])]
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
    const dataPath = ["src/relay", "src/flow", "src/egress", "src/sys"].flatMap((d) =>
      files(d, [".ts"]),
    );
    const hits = dataPath.filter((f) =>
      readFileSync(join(ROOT, f), "utf8").includes("console.log("),
    );
    expect(hits).toEqual([]);
  });
});
