// The relay as a process (issue 8): output that cannot kill it, listeners it does not
// share, exit codes that say what went wrong, SIGHUP that does what the README says.
// Each case runs the real relay in a throwaway network namespace of its own.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { labUnavailableReason, run } from "../lab/netns.ts";
import { RELAY_BIN, RELAY_MAIN } from "../lab/relay_process.ts";
import { withControlSocket } from "../lab/relay_process.ts";
import { labSkipReason } from "./harness.ts";

const DRIVER = join(import.meta.dir, "relay_driver.py");
const CONFIG = {
  listeners: [
    { name: "u4", address: "127.0.0.1", port: 12345 },
    { name: "t4", protocol: "tcp", address: "127.0.0.1", port: 12346 },
  ],
};

const skip = labSkipReason();
if (!skip) {
  describe("the relay process", () => {
    const ns = `trl-proc-${randomBytes(4).toString("hex")}`;
    const dir = mkdtempSync(join(tmpdir(), "relay-proc-"));
    const configPath = join(dir, "config.json");
    const inNs = (argv: string[], timeoutMs = 30_000) => {
      const r = spawnSync("ip", ["netns", "exec", ns, ...argv], {
        encoding: "utf8",
        timeout: timeoutMs,
      });
      return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
    };
    const relayArgv = [RELAY_BIN, RELAY_MAIN, "--config", configPath];

    // Every relay here has its control socket in this test's directory, never on the
    // default path (a relay of another test, or of the machine, may be on that).
    const config = (raw: object, name: string) =>
      JSON.stringify(withControlSocket(raw, join(dir, `${name}.sock`)));

    beforeAll(() => {
      const reason = labUnavailableReason();
      if (reason) throw new Error(`end-to-end lab unavailable: ${reason}`);
      run(["ip", "netns", "add", ns]);
      run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
      chmodSync(dir, 0o755); // readable by the unprivileged user of the last case
      writeFileSync(configPath, config(CONFIG, "config"));
    });

    afterAll(() => {
      const pids = run(["ip", "netns", "pids", ns], undefined, true).stdout.trim();
      if (pids) run(["kill", "-9", ...pids.split(/\s+/)], undefined, true);
      run(["ip", "netns", "del", ns], undefined, true);
      rmSync(dir, { recursive: true, force: true });
    });

    test("stdout closed by its reader (EPIPE): reported once on stderr, the relay goes on", () => {
      const r = JSON.parse(inNs(["python3", DRIVER, "epipe", "--", ...relayArgv]).stdout);
      expect(r.ready).toContain('"event":"ready"');
      expect(r.stderr).toContain("[relay] stdout: EPIPE");
      expect(r.stderr.match(/stdout: EPIPE/g)).toHaveLength(1);
      expect(r.alive).toBe(true);
      expect(r.exitCode).toBe(0);
    });

    test("SIGHUP reloads (an unchanged file): the relay goes on and stops cleanly later", () => {
      const r = JSON.parse(inNs(["python3", DRIVER, "sighup", "--", ...relayArgv]).stdout);
      expect(r.stderr).toContain("reload: nothing changed (generation 1)");
      expect(r.alive).toBe(true);
      expect(r.exitCode).toBe(0);
    });

    test("a second relay with the same config refuses to start (exit 1, says why)", async () => {
      const first = Bun.spawn(["ip", "netns", "exec", ns, ...relayArgv], {
        stdout: "pipe",
        stderr: "pipe",
      });
      try {
        const reader = first.stdout.getReader();
        const { value } = await reader.read(); // the ready line: listeners are bound
        expect(new TextDecoder().decode(value)).toContain('"event":"ready"');
        const second = inNs(relayArgv);
        expect(second.status).toBe(1);
        expect(second.stderr).toContain(
          'listener "u4" (udp 127.0.0.1 port 12345): bind(): EADDRINUSE: the address and port ' +
            "are already in use",
        );
        // TCP alone too: the kernel refuses a second listening socket.
        writeFileSync(join(dir, "tcp.json"), config({ listeners: [CONFIG.listeners[1]] }, "tcp"));
        const tcp = inNs([RELAY_BIN, RELAY_MAIN, "--config", join(dir, "tcp.json")]);
        expect(tcp.status).toBe(1);
        expect(tcp.stderr).toContain('listener "t4" (tcp 127.0.0.1 port 12346)');
        expect(tcp.stderr).toContain("EADDRINUSE");
      } finally {
        first.kill("SIGTERM");
        expect(await first.exited).toBe(0);
      }
    }, 60_000);

    test("a socket bound with SO_REUSEADDR on the listener's port: the relay refuses", () => {
      const code = [
        "import socket, subprocess, sys",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
        "s.bind(('127.0.0.1', 12345))",
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=30)",
        "print(r.returncode); print(r.stderr)",
      ].join("\n");
      const r = inNs(["python3", "-c", code, ...relayArgv]);
      expect(r.stdout.split("\n")[0]).toBe("1");
      expect(r.stdout).toContain("EADDRINUSE");
    });

    test("root without CAP_NET_ADMIN and CAP_NET_RAW: exit 77, says what is missing", () => {
      const r = inNs([
        "setpriv",
        "--inh-caps=-net_admin,-net_raw",
        "--bounding-set=-net_admin,-net_raw",
        ...relayArgv,
      ]);
      expect(r.status).toBe(77);
      expect(r.stderr).toContain("missing privilege: CAP_NET_ADMIN");
    });

    test("firewall.manage: host rules that cannot be applied fail the start (exit 1)", () => {
      writeFileSync(
        join(dir, "managed.json"),
        config(
          { ...CONFIG, intercept: [{ listener: "u4", ports: [53] }], firewall: { manage: true } },
          "managed",
        ),
      );
      // No nft on PATH: the first step of applying the rules fails.
      const r = inNs([
        "env",
        "PATH=/nonexistent",
        RELAY_BIN,
        RELAY_MAIN,
        "--config",
        join(dir, "managed.json"),
      ]);
      expect(r.stderr).toContain(
        "firewall.manage: the host rules could not be applied: nft -f -: nft not found",
      );
      expect(r.status).toBe(1);
      expect(inNs(["nft", "list", "table", "inet", "transparent_relay"]).status).not.toBe(0);
    });

    test("firewall.manage: a start that fails after the rules went in removes them", () => {
      const managed = join(dir, "managed-busy.json");
      writeFileSync(managed, config({ ...CONFIG, firewall: { manage: true } }, "busy"));
      const code = [
        "import socket, subprocess, sys",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "s.bind(('127.0.0.1', 12345))",
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=30)",
        "print(r.returncode); print(r.stderr)",
      ].join("\n");
      const r = inNs(["python3", "-c", code, RELAY_BIN, RELAY_MAIN, "--config", managed]);
      expect(r.stdout.split("\n")[0]).toBe("1");
      expect(r.stdout).toContain("EADDRINUSE");
      expect(r.stdout).toContain("firewall.manage: removed nft table inet transparent_relay");
      expect(inNs(["nft", "list", "table", "inet", "transparent_relay"]).status).not.toBe(0);
    });

    test("a port below 1024 without CAP_NET_BIND_SERVICE: exit 77, says which", () => {
      writeFileSync(
        join(dir, "dns.json"),
        config({ listeners: [{ name: "dns4", address: "127.0.0.1", port: 53 }] }, "dns"),
      );
      const r = inNs([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+net_admin",
        "--ambient-caps=+net_admin",
        RELAY_BIN,
        RELAY_MAIN,
        "--config",
        join(dir, "dns.json"),
      ]);
      expect(r.status).toBe(77);
      expect(r.stderr).toContain("CAP_NET_BIND_SERVICE");
    });
  });
}
