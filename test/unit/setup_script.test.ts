// scripts/install.sh (what running the relay needs) and scripts/setup.sh (install.sh, then
// the test lab) run on real gateways (`npm run demo`): they must never stop, disable or
// reconfigure a service the user had. Package installs are kept from starting services by
// a temporary /usr/sbin/policy-rc.d (scripts/policy_rc_d.sh), created only when none
// exists and removed by an EXIT trap. The text is checked here; the guard functions are
// run for real against a scratch path, never the system's. The package lists are checked
// through --print-packages: install.sh has no test peer, setup.sh has them all.
import { describe, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");
const SCRIPTS = join(ROOT, "scripts");
const GUARD = join(SCRIPTS, "policy_rc_d.sh");
const SYSTEM_POLICY_RC_D = "/usr/sbin/policy-rc.d";

/** Every script's lines without comments: what the shell would actually run. */
function commands(name: string): string[] {
  return readFileSync(join(SCRIPTS, name), "utf8")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith("#"));
}

const scripts = readdirSync(SCRIPTS).filter((name) => name.endsWith(".sh"));

/** The Debian packages `scripts/NAME --print-packages ...args` would install. */
function printPackages(name: string, ...args: string[]): string[] {
  const r = spawnSync("bash", [join(SCRIPTS, name), "--print-packages", ...args], {
    encoding: "utf8",
    timeout: 10_000,
  });
  expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: "" });
  return r.stdout.trim().split("\n");
}

/** What the tests and the demo drive (scripts/setup.sh); a gateway needs none of them. */
const TEST_PEERS = [
  "iputils-ping",
  "dnsmasq-base",
  "knot-dnsutils",
  "dnsperf",
  "iperf3",
  "ngtcp2-server",
  "ngtcp2-client",
  "curl",
  "haproxy",
  "tmux",
  "iptables",
  "systemd",
  "linux-perf",
];
/** What running the relay needs, and building it from source. */
const RUNTIME = [
  "nftables",
  "iproute2",
  "gcc",
  "make",
  "libc6-dev",
  "liburing-dev",
  "python3-pip",
  "procps",
];

describe("install.sh: what running the relay needs; setup.sh: that and the test lab", () => {
  test("install.sh installs the runtime packages and no test peer", () => {
    const packages = printPackages("install.sh");
    expect(packages).toEqual(expect.arrayContaining(RUNTIME));
    for (const peer of [...TEST_PEERS, "dnsmasq", "prometheus", "dante-server"]) {
      expect({ peer, listed: packages.includes(peer) }).toEqual({ peer, listed: false });
    }
  });

  test("iptables only for the iptables backend: by flag, or by the configuration", () => {
    expect(printPackages("install.sh", "--backend", "iptables")).toContain("iptables");
    const dir = mkdtempSync(join(tmpdir(), "install-config-"));
    try {
      const path = join(dir, "config.json");
      writeFileSync(path, JSON.stringify({ firewall: { backend: "iptables" } }, null, 2));
      expect(printPackages("install.sh", "--config", path)).toContain("iptables");
      writeFileSync(path, JSON.stringify({ firewall: { backend: "nft" } }));
      expect(printPackages("install.sh", "--config", path)).not.toContain("iptables");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("setup.sh installs the runtime packages and every test peer, each once", () => {
    const packages = printPackages("setup.sh");
    expect(packages).toEqual(expect.arrayContaining([...RUNTIME, ...TEST_PEERS]));
    expect(new Set(packages).size).toBe(packages.length);
  });

  test("setup.sh runs install.sh for the shared part (no step of it written twice)", () => {
    const lines = commands("setup.sh");
    const lab = '--extra-packages "$' + '{APT_PACKAGES[*]}"';
    expect(lines.filter((l) => l.includes("scripts/install.sh"))).toEqual([
      `exec bash scripts/install.sh --print-packages ${lab}`,
      `bash scripts/install.sh --dev ${lab}`,
    ]);
    for (const step of [/\bnpm ci\b/, /\bpip install\b/, /scripts\/build\.sh/, /dpkg-query/]) {
      expect({ step: `${step}`, lines: lines.filter((l) => step.test(l)) }).toEqual({
        step: `${step}`,
        lines: [],
      });
    }
  });

  test("npm: Bun is a runtime dependency, pinned; install.sh omits the development tools", () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
    expect(pkg.dependencies.bun).toMatch(/^\d+\.\d+\.\d+$/);
    expect(pkg.devDependencies.bun).toBeUndefined();
    expect(Object.keys(pkg.devDependencies).sort()).toEqual([
      "@biomejs/biome",
      "bun-types",
      "tinybench",
      "typescript",
    ]);
    // npm runs a script named "install" after every `npm install`: never one of ours.
    expect(pkg.scripts.install).toBeUndefined();
    expect(pkg.scripts["install:relay"]).toBe("bash scripts/install.sh");
    const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8"));
    expect(lock.packages[""].dependencies.bun).toBe(pkg.dependencies.bun);
    expect(lock.packages["node_modules/bun"].dev).toBeUndefined();
    const lines = commands("install.sh");
    expect(lines).toContain("npm ci --omit=dev --no-audit --no-fund >/dev/null");
  });

  /**
   * install.sh ARGS as nobody (when the tests run as root) or as the user running them.
   * From a copy of the scripts in a 0755 directory: nobody may not be able to read the
   * checkout (under /root), and nothing of the checkout is touched.
   */
  const installAsUser = (...args: string[]) => {
    const dir = mkdtempSync(join(tmpdir(), "install-as-user-"));
    try {
      chmodSync(dir, 0o755);
      mkdirSync(join(dir, "scripts"), { mode: 0o755 });
      for (const name of ["install.sh", "policy_rc_d.sh"]) {
        copyFileSync(join(SCRIPTS, name), join(dir, "scripts", name));
      }
      const argv = [join(dir, "scripts", "install.sh"), ...args];
      const asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash"];
      return process.getuid?.() === 0
        ? spawnSync(asNobody[0], [...asNobody.slice(1), ...argv], { encoding: "utf8" })
        : spawnSync("bash", argv, { encoding: "utf8" });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  test("without root, missing packages are named and root asked for; nothing else runs", () => {
    // A package no machine has: the Debian step is the one that must stop.
    const r = installAsUser("--extra-packages", "no-such-package-trl");
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("missing Debian packages: no-such-package-trl");
    expect(r.stderr).toContain("needs root");
  });

  test("without root, --service stops before any step (not after the build)", () => {
    const r = installAsUser("--service");
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      "[install] --service needs root (a system user, files in /etc): run it with sudo\n",
    );
  });
});

describe("scripts never touch the user's services", () => {
  test("no systemctl stop/disable/mask (or anything else that changes a unit)", () => {
    const changes = /\bsystemctl\b.*\b(stop|disable|mask|kill|restart|reload|isolate|--now)\b/;
    // daemon-reload re-reads unit files (install.sh --service): no unit starts or stops.
    const allowed = (line: string) => line.replaceAll("systemctl daemon-reload", "");
    const sysv = /\b(service\s+\S+\s+(stop|restart)|invoke-rc\.d|update-rc\.d|deb-systemd-)/;
    const hits = scripts.flatMap((name) =>
      commands(name)
        .map(allowed)
        .filter((line) => changes.test(line) || sysv.test(line))
        .map((line) => `${name}: ${line}`),
    );
    expect(scripts).toContain("setup.sh");
    expect(scripts).toContain("install.sh");
    expect(hits).toEqual([]);
  });

  test("install.sh runs no systemctl but daemon-reload, and that only under systemd", () => {
    const lines = commands("install.sh");
    const runs = lines.filter((l) => /^systemctl\b/.test(l));
    expect(runs).toEqual(["systemctl daemon-reload"]);
    const at = lines.indexOf("systemctl daemon-reload");
    expect(lines[at - 1]).toBe("if [[ -d /run/systemd/system ]]; then");
  });

  test("apt-get install runs only under the policy-rc.d guard, which an EXIT trap removes", () => {
    // setup.sh installs its packages through install.sh, never by itself.
    expect(commands("setup.sh").filter((l) => /\bapt-get\s+install\b/.test(l))).toEqual([]);
    const lines = commands("install.sh");
    const at = (match: (line: string) => boolean, what: string) => {
      const indexes = lines.flatMap((line, i) => (match(line) ? [i] : []));
      expect({ what, count: indexes.length }).toEqual({ what, count: 1 });
      return indexes[0];
    };
    const sourced = at((l) => l === "source scripts/policy_rc_d.sh", "source the guard");
    const trap = at((l) => l === "trap service_starts_restore EXIT", "EXIT trap");
    const forbid = at((l) => l.includes("service_starts_forbid"), "forbid");
    const install = at((l) => /^apt-get\s+install\b/.test(l), "apt-get install");
    const restore = at((l) => l === "service_starts_restore", "explicit restore");
    // The trap is in place before the file can exist; the install runs while it exists.
    expect(sourced).toBeLessThan(trap);
    expect(trap).toBeLessThan(forbid);
    expect(forbid).toBeLessThan(install);
    expect(install).toBeLessThan(restore);
  });
});

describe("promtool for the metrics tests", () => {
  test("comes out of the prometheus .deb (apt-get download), never an installed package", () => {
    const lines = commands("setup.sh");
    // Installing the package would enable and start a Prometheus server on the machine.
    expect(printPackages("setup.sh")).not.toContain("prometheus");
    const installs = lines.filter((l) => /\bapt-get\s+install\b/.test(l));
    expect(installs.filter((l) => l.includes("prometheus"))).toEqual([]);
    expect(lines.some((l) => /apt-get download -qq prometheus\b/.test(l))).toBe(true);
    expect(lines.some((l) => /^dpkg-deb -x /.test(l))).toBe(true);
    expect(lines.some((l) => l.includes("usr/bin/promtool") && l.includes(".tools/promtool"))).toBe(
      true,
    );
    expect(lines.some((l) => /\bdpkg\s+-i\b/.test(l))).toBe(false);
  });
});

describe("the policy-rc.d guard, run against a scratch path", () => {
  /** Runs `check` with a scratch policy-rc.d path, then removes the scratch directory. */
  function withScratch(check: (path: string) => void | Promise<void>) {
    return async () => {
      const dir = mkdtempSync(join(tmpdir(), "setup-guard-"));
      const path = join(dir, "policy-rc.d");
      // The system's own file (Docker images ship one) must be untouched by every case.
      const systemBefore = existsSync(SYSTEM_POLICY_RC_D)
        ? readFileSync(SYSTEM_POLICY_RC_D, "utf8")
        : null;
      try {
        await check(path);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      const systemAfter = existsSync(SYSTEM_POLICY_RC_D)
        ? readFileSync(SYSTEM_POLICY_RC_D, "utf8")
        : null;
      expect(systemAfter).toBe(systemBefore);
    };
  }
  /** bash running `lines` with the guard sourced, as setup.sh does, on the scratch `path`. */
  const bashArgs = (path: string, lines: string[]) => {
    expect(path.startsWith(tmpdir())).toBe(true);
    const text = ["set -euo pipefail", `source ${JSON.stringify(GUARD)}`, ...lines].join("\n");
    return {
      argv: ["-c", text],
      env: { ...process.env, SETUP_POLICY_RC_D_PATH: path },
    };
  };
  const bash = (path: string, lines: string[]) => {
    const { argv, env } = bashArgs(path, lines);
    return spawnSync("bash", argv, { encoding: "utf8", env, timeout: 10_000 });
  };

  test(
    "none exists: one that forbids every action (exit 101) is created, then removed on exit",
    withScratch((path) => {
      const r = bash(path, [
        "trap service_starts_restore EXIT",
        "service_starts_forbid",
        'echo "path=$POLICY_RC_D"',
        '"$POLICY_RC_D" dnsmasq start && echo "start=0" || echo "start=$?"',
        '"$POLICY_RC_D" haproxy restart && echo "restart=0" || echo "restart=$?"',
      ]);
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(`path=${path}\nstart=101\nrestart=101\n`);
      expect(existsSync(path)).toBe(false);
    }),
  );

  test(
    "one already exists: it is left exactly as it was, and kept after exit",
    withScratch((path) => {
      const theirs = "#!/bin/sh\n# the administrator's policy\nexit 0\n";
      writeFileSync(path, theirs, { mode: 0o755 });
      const r = bash(path, [
        "trap service_starts_restore EXIT",
        'service_starts_forbid && echo "forbid=0" || echo "forbid=$?"',
        "service_starts_restore",
      ]);
      expect(r.status).toBe(0);
      expect(r.stdout).toBe("forbid=1\n");
      expect(readFileSync(path, "utf8")).toBe(theirs);
    }),
  );

  test(
    "a failed install (set -e) still removes it",
    withScratch((path) => {
      const r = bash(path, [
        "trap service_starts_restore EXIT",
        "service_starts_forbid",
        "false",
        "echo unreachable",
      ]);
      expect(r.status).toBe(1);
      expect(r.stdout).toBe("");
      expect(existsSync(path)).toBe(false);
    }),
  );

  test(
    "SIGTERM during the install still removes it",
    withScratch(async (path) => {
      // `read` stands in for apt-get: a builtin, so the signal reaches bash at once.
      const { argv, env } = bashArgs(path, [
        "trap service_starts_restore EXIT",
        "service_starts_forbid",
        "echo held",
        "read -r line",
      ]);
      const child = spawn("bash", argv, { env, stdio: ["pipe", "pipe", "pipe"] });
      const exited = new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
      const held = new Promise<string>((resolve) =>
        child.stdout.on("data", (d: Buffer) => resolve(d.toString())),
      );
      try {
        // Bounded: if bash ends before holding, the race ends with its exit instead.
        const first = await Promise.race([held, exited.then((code) => `exited ${code}`)]);
        expect(first).toBe("held\n");
        expect(existsSync(path)).toBe(true);
        child.kill("SIGTERM");
        await exited;
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      expect(existsSync(path)).toBe(false);
    }),
  );

  test(
    "it never removes a policy-rc.d it did not write (the mark decides)",
    withScratch((path) => {
      const r = bash(path, [
        "trap service_starts_restore EXIT",
        "service_starts_forbid",
        // Someone replaces it during the install: theirs now, so it stays.
        `printf '#!/bin/sh\\nexit 0\\n' > "$POLICY_RC_D"`,
      ]);
      expect(r.status).toBe(0);
      expect(readFileSync(path, "utf8")).toBe("#!/bin/sh\nexit 0\n");
    }),
  );
});
