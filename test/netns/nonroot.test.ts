// End-to-end: the relay run as an unprivileged user (nobody, 65534) whose one capability
// is CAP_NET_ADMIN, granted the documented way for a shell (setpriv --ambient-caps; the
// systemd unit uses AmbientCapabilities). It relays UDP with replies from the original
// destination, writes its control socket and flow log in a directory that user owns, and
// answers `relay sessions`. Without the capability it exits 77 and says
// what to do. nobody exists on every Debian system: nothing is created, nothing left.
// A port below 1024 is the exception: a UDP flow's replies leave from a socket bound to
// the original destination's port (DNS: 53), which takes CAP_NET_BIND_SERVICE as well
// (`relay service print` adds it to the unit when the configuration needs it).
//
//   client ns ──veth── router ns (relay as nobody + nft tproxy) ──veth── server ns
//   198.18.0.2                                                         198.18.1.2 echo
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { LAB, labUnavailableReason, run } from "../lab/netns.ts";
import { RELAY_MAIN, RELAY_BIN } from "../lab/relay_process.ts";
import { waitFor } from "../lab/wait_for.ts";
import { BUN, labSkipReason, RelayLab, ROOT } from "./harness.ts";

const NOBODY = 65534;
const AS_NOBODY = ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups"];
/** CAP_NET_ADMIN only: inheritable and ambient (kept across exec), the rest bounded away. */
const NET_ADMIN_ONLY = [
  ...AS_NOBODY,
  "--inh-caps=+net_admin",
  "--ambient-caps=+net_admin",
  "--bounding-set=-all,+net_admin",
  "--",
];
/** And CAP_NET_BIND_SERVICE, for ports below 1024. */
const WITH_BIND_SERVICE = [
  ...AS_NOBODY,
  "--inh-caps=+net_admin,+net_bind_service",
  "--ambient-caps=+net_admin,+net_bind_service",
  "--bounding-set=-all,+net_admin,+net_bind_service",
  "--",
];
const NO_CAPS = [...AS_NOBODY, "--inh-caps=-all", "--bounding-set=-all", "--"];
const S4 = LAB.server4;

/** What the relay as nobody reads: Bun, the C helper, the WASM parsers, the sources. */
const READ = [realpathSync(BUN), "build/librelay.so", "build/wasm", "src/main.ts"];

/**
 * Why nobody cannot read the checkout, or null. The first directory on the way that does
 * not let others in is named: a checkout under /root (0700) cannot run as another user.
 */
function unreadableByNobody(): string | null {
  for (const file of READ) {
    const path = file.startsWith("/") ? file : join(ROOT, file);
    const r = spawnSync(AS_NOBODY[0], [...AS_NOBODY.slice(1), "test", "-r", path]);
    if (r.status === 0) continue;
    for (let dir = dirname(path); dir !== "/"; dir = dirname(dir)) {
      if ((statSync(dir).mode & 0o001) === 0) {
        return `${path}: not readable by nobody: ${dir} does not let others in (mode o-x)`;
      }
    }
    return `${path}: not readable by nobody`;
  }
  return null;
}

const skip = labSkipReason();
if (!skip) {
  describe("the relay as nobody with CAP_NET_ADMIN only (setpriv)", () => {
    let env: RelayLab;
    /** root-owned, 0755: the configs (nobody reads them); run/ is nobody's own. */
    const dir = mkdtempSync(join(tmpdir(), "relay-nonroot-"));
    const runDir = join(dir, "run");
    const controlPath = join(runDir, "control.sock");
    const flowLogPath = join(runDir, "flows.log");
    const config = {
      listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
      intercept: [{ listener: "udp4", ports: [7001, 53] }],
      control: { socketPath: controlPath },
      flowLog: { path: flowLogPath },
      // Nothing expires while the test reads the sessions, however slow the machine.
      udp: { idleTimeoutMs: 600_000, idleTimeoutMsByPort: {} },
    };

    beforeAll(async () => {
      const unreadable = unreadableByNobody();
      if (unreadable) throw new Error(`the checkout must be readable by others: ${unreadable}`);
      chmodSync(dir, 0o755);
      mkdirSync(runDir, { mode: 0o700 });
      chownSync(runDir, NOBODY, NOBODY);
      env = new RelayLab();
      // The lab writes the config into its own (0700) directory: let nobody through to it.
      chmodSync(dirname(env.controlPath), 0o711);
      env.spawnEcho(`${S4}:7001`, `${S4}:53`);
      await env.startRelay(config, NET_ADMIN_ONLY);
      await env.lab.waitForUdpPort(env.lab.server, 7001);
      await env.lab.waitForUdpPort(env.lab.server, 53);
      env.lab.warmNeighbours();
    }, 60_000);

    afterAll(async () => {
      try {
        await env?.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test("it runs as nobody, CAP_NET_ADMIN its one capability", () => {
      const pid = env.relay!.proc.pid;
      const status = env.lab.exec(env.lab.router, ["cat", `/proc/${pid}/status`]).stdout;
      const field = (name: string) =>
        status
          .split("\n")
          .find((l) => l.startsWith(`${name}:`))!
          .slice(name.length + 1)
          .trim();
      // The relay is setpriv's exec (ip netns exec -> setpriv -> bun): its own process.
      expect(field("Uid").split(/\s+/)).toEqual(Array(4).fill(`${NOBODY}`));
      const netAdmin = (1n << 12n).toString(16).padStart(16, "0");
      expect(field("CapEff")).toBe(netAdmin);
      expect(field("CapBnd")).toBe(netAdmin);
    });

    test("UDP: echo replies from the original destination; sessions show the flow", () => {
      const r = env.probe([`${S4}:7001`], { flows: 2, packets: 4, stamped: true });
      expect(r).toMatchObject({ received: 8, lost: 0, wrongSource: 0, wrongFlow: 0 });
      const sessions = env.lab.exec(env.lab.router, [
        RELAY_BIN,
        RELAY_MAIN,
        "sessions",
        "--control",
        controlPath,
        "--json",
      ]);
      const flows = sessions.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l));
      expect(flows).toEqual([
        expect.objectContaining({ transport: "udp", target: `${S4}:7001`, packetsToClient: 4 }),
        expect.objectContaining({ transport: "udp", target: `${S4}:7001`, packetsToClient: 4 }),
      ]);
    });

    test("its control socket and flow log are nobody's, in the directory nobody owns", () => {
      for (const path of [controlPath, flowLogPath]) {
        const st = statSync(path);
        expect({ path, uid: st.uid, gid: st.gid }).toEqual({ path, uid: NOBODY, gid: NOBODY });
      }
      expect(statSync(controlPath).mode & 0o777).toBe(0o600);
    });

    test("without the capability: exit 77 and a message that says how to grant it", () => {
      const path = join(dir, "config.json");
      writeFileSync(path, JSON.stringify({ ...config, control: { socketPath: "" } }));
      const r = env.lab.exec(
        env.lab.router,
        [...NO_CAPS, RELAY_BIN, RELAY_MAIN, "--config", path],
        "",
        true,
      );
      expect(r.status).toBe(77);
      expect(r.stderr).toContain(
        "relay: missing privilege: CAP_NET_ADMIN is not in the effective set.",
      );
      expect(r.stderr).toContain("systemd AmbientCapabilities=CAP_NET_ADMIN");
      expect(r.stderr).toContain("setpriv --ambient-caps=+net_admin");
      expect(r.stderr).toContain("Never setcap the bun binary");
    });

    // Last: it restarts the relay with another capability set.
    test("UDP to port 53: the reply socket's bind needs CAP_NET_BIND_SERVICE too", async () => {
      const lost = env.probe([`${S4}:53`], { flows: 1, packets: 2, timeoutMs: 1000 });
      expect(lost).toMatchObject({ sent: 2, received: 0 });
      await waitFor(
        async () => (await env.relay!.metrics()).udp.replySocketBindFailed,
        (failed) => failed > 0,
        { what: "the relay counting the reply socket's failed bind (port 53)", timeoutMs: 10_000 },
      );
      await env.startRelay(config, WITH_BIND_SERVICE);
      const r = env.probe([`${S4}:53`], { flows: 2, packets: 4, stamped: true });
      expect(r).toMatchObject({ received: 8, lost: 0, wrongSource: 0, wrongFlow: 0 });
      expect((await env.relay!.metrics()).udp.replySocketBindFailed).toBe(0);
    });
  });

  // The unit's ExecStartPre and ExecStopPost: `relay rules apply|remove` as the same user.
  describe("relay rules apply / remove as nobody with CAP_NET_ADMIN only", () => {
    const ns = `trl-nonroot-${randomBytes(4).toString("hex")}`;
    const dir = mkdtempSync(join(tmpdir(), "relay-nonroot-rules-"));
    const path = join(dir, "config.json");
    const inNs = (argv: string[]) => run(["ip", "netns", "exec", ns, ...argv], undefined, true);
    const rules = (prefix: string[], action: string) =>
      inNs([...prefix, RELAY_BIN, RELAY_MAIN, "rules", action, "--config", path]);

    beforeAll(() => {
      const reason = labUnavailableReason();
      if (reason) throw new Error(`end-to-end lab unavailable: ${reason}`);
      chmodSync(dir, 0o755);
      writeFileSync(
        path,
        JSON.stringify({
          listeners: [{ name: "udp4", address: "127.0.0.1", port: 12345 }],
          intercept: [{ listener: "udp4", ports: [7001] }],
        }),
      );
      run(["ip", "netns", "add", ns]);
      inNs(["ip", "link", "set", "lo", "up"]);
    });

    afterAll(() => {
      run(["ip", "netns", "del", ns], undefined, true);
      rmSync(dir, { recursive: true, force: true });
    });

    test("applied and removed with the capability; exit 77 without it", () => {
      const before = inNs(["nft", "list", "ruleset"]).stdout;
      const denied = rules(NO_CAPS, "apply");
      expect(denied.status).toBe(77);
      expect(inNs(["nft", "list", "ruleset"]).stdout).toBe(before);
      const applied = rules(NET_ADMIN_ONLY, "apply");
      expect([applied.status, applied.stderr]).toEqual([0, expect.stringContaining("applied")]);
      expect(inNs(["nft", "list", "ruleset"]).stdout).toContain("table inet transparent_relay");
      expect(inNs(["ip", "-4", "rule"]).stdout).toContain("fwmark 0x1 lookup 100");
      const removed = rules(NET_ADMIN_ONLY, "remove");
      expect([removed.status, removed.stderr]).toEqual([0, expect.stringContaining("removed")]);
      expect(inNs(["nft", "list", "ruleset"]).stdout).toBe(before);
      expect(inNs(["ip", "-4", "rule"]).stdout).not.toContain("fwmark 0x1");
    });
  });
}
