// The relay's entry on Node.js (src/main_node.ts) refuses an unsupported Node version and
// a missing koffi with one clear line and exit 2, not a stack trace. The bundle goes to a
// temporary directory, where no node_modules (so no koffi) is above it. And a real Node 18
// (from npm, scripts/node_lts.sh) runs the real bundle (dist/node): an old Node must get
// the message too, not a SyntaxError from linking an import it lacks.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bundleForNode } from "../../scripts/node_bundle.ts";

const ROOT = join(import.meta.dir, "..", "..");
const NODE = process.env.RELAY_NODE ?? Bun.which("node");
/** An unsupported Node, the last of its line on npm. */
const OLD_NODE = "18.20.8";
const dir = mkdtempSync(join(tmpdir(), "relay-node-entry-"));
const MAIN = join(dir, "main_node.js");

/** Runs the bundled entry on Node, with `preload` (a module run first) if given. */
function run(preload: string | null, ...args: string[]) {
  const flags = preload === null ? [] : ["--import", preload];
  return spawnSync(NODE!, [...flags, MAIN, ...args], { encoding: "utf8", timeout: 30_000 });
}

describe("relay on Node.js: start-up checks", () => {
  beforeAll(async () => {
    await bundleForNode([join(ROOT, "src", "main_node.ts")], dir);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("an unsupported Node version: one line naming the supported ones, exit 2", () => {
    expect(NODE).not.toBeNull();
    const fake = join(dir, "node18.mjs");
    writeFileSync(
      fake,
      "Object.defineProperty(process, 'versions', " +
        "{ value: { ...process.versions, node: '18.19.0' } });\n",
    );
    const r = run(fake, "--help");
    expect(r.status).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      "relay: Node.js 18.19.0 is not supported: the relay needs 20.15+ on the 20 line, " +
        "22.2+ on the 22 line, or 23 and newer (docs/node.md)\n",
    );
  });

  test("a real Node 18 running dist/node/main.js: the same one line, exit 2", () => {
    const install = spawnSync("bash", [join(ROOT, "scripts", "node_lts.sh"), OLD_NODE], {
      encoding: "utf8",
      timeout: 120_000,
    });
    expect(install.status).toBe(0);
    const node18 = install.stdout.trim();
    const bundle = join(ROOT, "dist", "node", "main.js");
    const r = spawnSync(node18, [bundle, "--help"], { encoding: "utf8", timeout: 30_000 });
    expect(r.stderr).toBe(
      `relay: Node.js ${OLD_NODE} is not supported: the relay needs 20.15+ on the 20 line, ` +
        "22.2+ on the 22 line, or 23 and newer (docs/node.md)\n",
    );
    expect(r.status).toBe(2);
    expect(r.stdout).toBe("");
  }, 150_000);

  test("koffi not installed: one line saying how to install it, exit 2", () => {
    const r = run(null, "--help");
    expect(r.status).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      "relay: koffi (the FFI for Node.js) is not installed next to the relay: run npm ci " +
        "in the checkout (docs/node.md)\n",
    );
  });
});
