// Structured logs (issue 13): levels, text and JSON lines, one line per reason per
// interval for repeated conditions.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");

/** Runs `body` with the logger configured as given; returns its stderr lines. */
function logged(level: string, format: string, body: string): string[] {
  const script = `
    import { configureLog, log, RateLimitedLog } from "${ROOT}/src/control/log.ts";
    configureLog({ level: "${level}", format: "${format}" });
    ${body}
  `;
  const r = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 20_000 });
  return r.stderr.split("\n").filter((l) => l.length > 0);
}

describe("structured logs", () => {
  test("text: [relay] message key=value; levels below the threshold are dropped", () => {
    const lines = logged(
      "info",
      "text",
      `log.debug("hidden"); log.info("listening", { port: 53 }); log.error("fatal: x");`,
    );
    expect(lines).toEqual(["[relay] listening port=53", "[relay] fatal: x"]);
  });

  test("json: one object per line with time, level, msg and the fields", () => {
    const lines = logged("warn", "json", `log.info("hidden"); log.warn("lowered", { n: 7 });`);
    expect(lines).toHaveLength(1);
    const line = JSON.parse(lines[0]);
    expect(line).toMatchObject({ level: "warn", msg: "lowered", n: 7 });
    expect(Number.isNaN(Date.parse(line.time))).toBe(false);
  });

  test("a repeated reason is logged once per interval, other reasons still are", () => {
    const lines = logged(
      "info",
      "json",
      `const r = new RateLimitedLog(60_000);
       for (let i = 0; i < 1000; i++) r.log("drop-a", "dropped a");
       r.log("drop-b", "dropped b");`,
    );
    expect(lines.map((l) => JSON.parse(l).reason)).toEqual(["drop-a", "drop-b"]);
  });
});
