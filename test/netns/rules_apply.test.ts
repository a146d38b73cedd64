// `relay rules apply|remove` in a throwaway namespace: apply installs exactly what
// --print-rules prints, applying twice changes nothing, remove leaves the ruleset, the
// policy rules and the routing table exactly as they were (someone else's route in the
// same table included), and an apply that fails half way leaves nothing of ours.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load.ts";
import { applyRules, type Runner } from "../../src/rules/apply.ts";
import { labUnavailableReason, run } from "../lab/netns.ts";
import { BUN, RELAY_MAIN } from "../lab/relay_process.ts";
import { labSkipReason } from "./harness.ts";

const CONFIG = {
  listeners: [
    { name: "dns4", address: "127.0.0.1", port: 53 },
    { name: "dns6", address: "::1", port: 53 },
  ],
  intercept: [
    { listener: "dns4", ports: [53], interfaces: ["lan0"] },
    { listener: "dns6", ports: [53], interfaces: ["lan0"] },
  ],
};

const skip = labSkipReason();
if (!skip) {
  describe("relay rules apply / remove", () => {
    const ns = `trl-rules-${randomBytes(4).toString("hex")}`;
    const dir = mkdtempSync(join(tmpdir(), "relay-rules-"));
    const configPath = join(dir, "config.json");
    const config = parseConfig(CONFIG);
    const inNs: Runner = (argv, input) => run(["ip", "netns", "exec", ns, ...argv], input, true);
    /** Everything apply may touch: the nft ruleset, both rule lists, the routing table. */
    const state = () =>
      [
        ["nft", "list", "ruleset"],
        ["ip", "-4", "rule"],
        ["ip", "-6", "rule"],
        ["ip", "-4", "route", "show", "table", "all"],
        ["ip", "-6", "route", "show", "table", "all"],
      ]
        .map((argv) => inNs(argv).stdout)
        .join("\n--\n");
    const cli = (action: string) =>
      inNs([BUN, RELAY_MAIN, "rules", action, "--config", configPath]);

    beforeAll(() => {
      const reason = labUnavailableReason();
      if (reason) throw new Error(`end-to-end lab unavailable: ${reason}`);
      run(["ip", "netns", "add", ns]);
      inNs(["ip", "link", "set", "lo", "up"]);
      // Someone else's table and route in the relay's routing table: never ours to remove.
      inNs(["nft", "add", "table", "inet", "someone_else"]);
      inNs(["ip", "-4", "route", "add", "198.18.99.0/24", "dev", "lo", "table", "100"]);
      writeFileSync(configPath, JSON.stringify(CONFIG));
    });

    afterAll(() => {
      run(["ip", "netns", "del", ns], undefined, true);
      rmSync(dir, { recursive: true, force: true });
    });

    test("apply installs the rules; twice changes nothing; remove restores exactly", () => {
      const before = state();
      const applied = cli("apply");
      expect([applied.status, applied.stderr]).toEqual([0, expect.stringContaining("applied")]);
      const once = state();
      expect(once).toContain("table inet transparent_relay");
      expect(once).toContain("tproxy ip to 127.0.0.1:53");
      expect(once.match(/fwmark 0x1 lookup 100/g)).toHaveLength(2); // one rule per family
      expect(cli("apply").status).toBe(0);
      expect(state()).toBe(once);
      const removed = cli("remove");
      expect(removed.status).toBe(0);
      expect(state()).toBe(before);
      // Nothing left to remove: still fine, and nothing changes.
      expect(cli("remove").stderr).toContain("removed nothing");
      expect(state()).toBe(before);
    });

    test("an apply that fails half way leaves nothing of ours behind", () => {
      const before = state();
      // The 4th command (after nft and the IPv4 rule's list and add) fails.
      let commands = 0;
      const failing: Runner = (argv, input) => {
        commands++;
        if (commands === 4 && argv[0] === "ip") {
          return { status: 2, stdout: "", stderr: "RTNETLINK answers: injected failure" };
        }
        return inNs(argv, input);
      };
      expect(() => applyRules(config, failing)).toThrow("injected failure");
      expect(state()).toBe(before);
    });

    test("print is the script --print-rules gives", () => {
      const printed = cli("print");
      expect(printed.status).toBe(0);
      expect(printed.stdout).toBe(
        inNs([BUN, RELAY_MAIN, "--config", configPath, "--print-rules"]).stdout,
      );
    });
  });
}
