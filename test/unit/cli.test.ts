// The CLI's promises: a bad config names the field; without privileges it says what
// is missing; --print-rules prints a script.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");
const BUN = join(ROOT, "node_modules", ".bin", "bun");
const MAIN = join(ROOT, "src", "main.ts");

function relay(args: string[], prefix: string[] = []) {
  const r = spawnSync(
    prefix[0] ?? BUN,
    prefix.length ? [...prefix.slice(1), BUN, MAIN, ...args] : [MAIN, ...args],
    {
      encoding: "utf8",
      timeout: 20_000,
    },
  );
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("bun run relay", () => {
  test("a bad config exits 2 naming each field and the reason", () => {
    const dir = mkdtempSync(join(tmpdir(), "relay-cli-"));
    const path = join(dir, "bad.json");
    writeFileSync(path, JSON.stringify({ udp: { sessionsMax: 1, idleTimeoutMs: "soon" } }));
    const r = relay(["--config", path]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(
      "config.udp.sessionsMax: Expected integer to be greater or equal to 16 (got 1)",
    );
    expect(r.stderr).toContain('config.udp.idleTimeoutMs: Expected integer (got "soon")');
    writeFileSync(path, "{ not json");
    expect(relay(["--config", path]).stderr).toContain("not valid JSON");
  });

  test("without CAP_NET_ADMIN it exits 77 and says what is missing", () => {
    if (process.getuid?.() !== 0) {
      const r = relay([]);
      expect(r.status).toBe(77);
      expect(r.stderr).toContain("CAP_NET_ADMIN");
      return;
    }
    // As root: drop to nobody with no capabilities.
    const r = relay(
      [],
      ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"],
    );
    expect(r.status).toBe(77);
    expect(r.stderr).toContain("missing privilege: CAP_NET_ADMIN is not in the effective set");
  });

  test("--print-rules prints the nft ruleset and policy routing for the config", () => {
    const r = relay(["--print-rules"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("tproxy ip to 127.0.0.1:12345");
    expect(r.stdout).toContain("tproxy ip6 to [::1]:12345");
    expect(r.stdout).toContain("ip -4 rule add fwmark 0x1 lookup 100");
  });
});
