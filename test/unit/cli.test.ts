// The CLI's promises: a bad config names the field; without privileges it says what
// is missing; --print-rules prints a script; stats/sessions/top without a relay running
// say so (exit 1), with bad arguments exit 2.
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
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

  describe("stats, sessions, top: the control socket's client", () => {
    const dir = mkdtempSync(join(tmpdir(), "relay-cli-control-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    test("no relay running (no socket file): a clear message, exit 1", () => {
      const path = join(dir, "none.sock");
      for (const command of ["stats", "sessions", "top"]) {
        const r = relay([command, "--control", path]);
        expect(r.status).toBe(1);
        expect(r.stderr).toContain(`no relay is running with control socket ${path}`);
      }
    });

    test("a stale socket file (its relay gone): says so, exit 1", () => {
      const path = join(dir, "stale.sock");
      const made = spawnSync("python3", [
        "-c",
        `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path)})`,
      ]);
      expect(made.status).toBe(0);
      const r = relay(["stats", "--control", path]);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`no relay is answering on ${path}: a stale socket file`);
    });

    test('the path comes from --config\'s control.socketPath; "" means none', () => {
      const path = join(dir, "from-config.json");
      const socket = join(dir, "sub", "relay.sock");
      mkdirSync(join(dir, "sub"), { recursive: true });
      writeFileSync(path, JSON.stringify({ control: { socketPath: socket } }));
      const r = relay(["sessions", "--config", path]);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`control socket ${socket}`);
      writeFileSync(path, JSON.stringify({ control: { socketPath: "" } }));
      const none = relay(["stats", "--config", path]);
      expect(none.status).toBe(1);
      expect(none.stderr).toContain('control.socketPath is "": that relay has no control socket');
    });

    test("bad arguments exit 2 with the usage", () => {
      const cases = [
        ["sessions", "--sort", "name"],
        ["sessions", "--limit", "1001"],
        ["top", "--interval-ms", "10"],
        ["stats", "--target", "x"],
        ["sessions", "--client"],
      ];
      for (const args of cases) {
        const r = relay(args);
        expect(r.status).toBe(2);
        expect(r.stderr).toContain("usage: bun run relay stats");
      }
      const help = relay(["top", "--help"]);
      expect(help.status).toBe(0);
      expect(help.stderr).toContain("--interval-ms N");
    });
  });
});
