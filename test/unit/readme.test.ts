// The README is the user's guide, and users copy from it: every JSON config in its
// "Cookbook" must be accepted by the relay's own validation and its rules must generate
// (a config that validates but cannot be installed would fail on the gateway); every
// metric family the relay serves is in its table; every document it links exists.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load.ts";
import { rulesScript } from "../../src/rules/nft.ts";

const ROOT = join(import.meta.dir, "..", "..");
const README = readFileSync(join(ROOT, "README.md"), "utf8");

/** The ```json blocks between "## Cookbook" and the next "## " heading, with their titles. */
function cookbookConfigs(): Array<{ title: string; text: string }> {
  const start = README.indexOf("\n## Cookbook\n");
  expect(start).toBeGreaterThan(0);
  const end = README.indexOf("\n## ", start + 1);
  const section = README.slice(start, end < 0 ? undefined : end);
  const found: Array<{ title: string; text: string }> = [];
  let title = "";
  const lines = section.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].startsWith("### ")) title = lines[i].slice(4);
    if (lines[i] !== "```json") continue;
    const close = lines.indexOf("```", i + 1);
    expect(close).toBeGreaterThan(i);
    found.push({ title, text: lines.slice(i + 1, close).join("\n") });
    i = close;
  }
  return found;
}

describe("README cookbook", () => {
  const configs = cookbookConfigs();

  test("has the five recipes", () => {
    expect(configs.map((c) => c.title)).toEqual([
      "Transparent DNS for a LAN",
      "QUIC and SNI observation",
      "Dual-stack gateway, all TCP and UDP",
      "Local mode on a laptop",
      "TCP 80/443 with the client's source address",
    ]);
  });

  for (const { title, text } of configs) {
    test(`"${title}" validates and its rules generate`, () => {
      const config = parseConfig(JSON.parse(text));
      expect(rulesScript(config)).toContain("transparent_relay");
    });
  }
});

describe("README", () => {
  test("lists every metric family the relay serves", () => {
    const source = readFileSync(join(ROOT, "src/control/prometheus.ts"), "utf8");
    const families = [...source.matchAll(/"((?:relay|process)_[a-z0-9_]+)"/g)].map((m) => m[1]);
    expect(families.length).toBeGreaterThan(30);
    expect(families.filter((f) => !README.includes(`\`${f}\``))).toEqual([]);
  });

  test("every document it links exists", () => {
    const links = [...README.matchAll(/\]\(((?:docs|bench|dist)\/[^)#]+)/g)].map((m) => m[1]);
    expect(links.length).toBeGreaterThan(5);
    expect(links.filter((l) => !existsSync(join(ROOT, l)))).toEqual([]);
  });
});
