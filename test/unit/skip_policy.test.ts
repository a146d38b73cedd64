// The skip policy (test/lab/skip_policy.ts): without the privileges a test needs, it is
// skipped with a printed reason on a developer's machine and fails with that reason in CI
// (CI=true). Checked as a function, and for real: every test file that needs privileges is
// run as an unprivileged user, with and without CI=true.
import { describe, expect, spyOn, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { inCi, skipped, skipReason } from "../lab/skip_policy.ts";
import { labSkipReason } from "../netns/harness.ts";

const ROOT = join(import.meta.dir, "..", "..");
const BUN = join(ROOT, "node_modules", ".bin", "bun");
const REASON = "needs root (simulated)";

function testFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return testFiles(path);
    return name.endsWith(".test.ts") ? [path] : [];
  });
}
/** Every test file but this one, which names the policy without being gated by it. */
const FILES = testFiles(join(ROOT, "test"))
  .filter((f) => f !== import.meta.path)
  .map((f) => ({ path: relative(ROOT, f), text: readFileSync(f, "utf8") }));
/**
 * Files that go through the policy for a tool or kernel feature any user can use, not for
 * privileges: as nobody they run (service_unit.test.ts: systemd-analyze; uring.test.ts:
 * io_uring, which kernel.io_uring_disabled 0 allows every user; udp_gso.test.ts: the
 * kernel's UDP_SEGMENT and UDP_GRO on loopback sockets).
 */
const TOOL_GATED = [
  "test/unit/service_unit.test.ts",
  "test/unit/uring.test.ts",
  "test/unit/udp_gso.test.ts",
];
/** Files that go through the policy: the ones that need privileges. */
const PRIVILEGED = FILES.filter((f) => /\b(labSkipReason|skipReason|skipped)\(/.test(f.text))
  .map((f) => f.path)
  .filter((path) => !TOOL_GATED.includes(path));

describe("skip policy", () => {
  test("CI=true: never a skip; the tests are registered and fail with the reason", () => {
    const ci = { CI: "true" };
    expect(inCi(ci)).toBe(true);
    expect(skipReason(REASON, ci)).toBeNull();
    expect(labSkipReason(REASON, ci)).toBeNull();
    expect(() => skipped(REASON, "nft check", ci)).toThrow(`nft check: ${REASON}`);
  });

  test("outside CI: the reason, printed, and the caller skips", () => {
    const warn = spyOn(console, "warn").mockImplementation(() => {});
    try {
      for (const env of [{}, { CI: "false" }, { CI: "" }]) {
        expect(inCi(env)).toBe(false);
        expect(skipReason(REASON, env)).toBe(REASON);
        expect(labSkipReason(REASON, env)).toBe(REASON);
        expect(skipped(REASON, "nft check", env)).toBe(true);
      }
      expect(warn.mock.calls.map((call) => call.join(" "))).toEqual(
        [0, 1, 2].flatMap(() => [
          `[netns tests skipped] ${REASON}`,
          `[nft check skipped] ${REASON}`,
        ]),
      );
    } finally {
      warn.mockRestore();
    }
  });

  test("a machine that can run the tests runs them, in CI or not", () => {
    for (const env of [{}, { CI: "true" }]) {
      expect(skipReason(null, env)).toBeNull();
      expect(labSkipReason(null, env)).toBeNull();
      expect(skipped(null, "nft check", env)).toBe(false);
    }
  });

  test("every test file that checks for privileges goes through the policy", () => {
    // cli.test.ts asserts what the relay does without privileges (exit 77) in both
    // branches, setup_script.test.ts what install.sh does without root (as nobody when
    // root): tests of the product, not skips.
    const own = /getuid|[uU]navailableReason\(/;
    const products = ["test/unit/cli.test.ts", "test/unit/setup_script.test.ts"];
    const bypass = FILES.filter((f) => own.test(f.text))
      .map((f) => f.path)
      .filter((p) => !PRIVILEGED.includes(p) && !products.includes(p));
    expect(bypass).toEqual([]);
    for (const path of TOOL_GATED) expect(FILES.map((f) => f.path)).toContain(path);
    expect(PRIVILEGED).toContain("test/netns/udp_relay.test.ts");
    expect(PRIVILEGED).toContain("test/unit/ffi.test.ts");
    expect(PRIVILEGED.length).toBeGreaterThanOrEqual(7);
  });

  test("without privileges each such file fails in CI and skips with the reason outside", async () => {
    // As root, drop to nobody with no capabilities (as cli.test.ts does); otherwise this
    // process already lacks them.
    const asUser =
      process.getuid?.() === 0
        ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
        : [];
    const run = async (path: string, ci: boolean) => {
      const env: Record<string, string> = { PATH: process.env.PATH ?? "", HOME: tmpdir() };
      if (ci) env.CI = "true";
      const proc = Bun.spawn([...asUser, BUN, "test", "--timeout", "20000", path], {
        cwd: ROOT,
        env,
        stdout: "pipe",
        stderr: "pipe",
      });
      const [out, err, exitCode] = await Promise.all([
        new Response(proc.stdout).text(),
        new Response(proc.stderr).text(),
        proc.exited,
      ]);
      return { path, ci, exitCode, text: out + err };
    };
    const runs = await Promise.all(PRIVILEGED.flatMap((p) => [run(p, true), run(p, false)]));
    const summary = runs.map((r) => ({
      path: r.path,
      ci: r.ci,
      exitCode: r.exitCode,
      failed: r.text.includes("(fail)"),
      reasonShown: /needs root/.test(r.text),
    }));
    expect(summary).toEqual(
      runs.map((r) => ({
        path: r.path,
        ci: r.ci,
        exitCode: r.ci ? 1 : 0,
        failed: r.ci,
        reasonShown: true,
      })),
    );
  }, 60_000);
});
