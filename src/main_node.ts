// The relay's entry on Node.js (dist/node/main.js, bundled by scripts/build_node.ts):
// checks the Node version and that koffi is installed, each failure one clear line and
// exit 2, before anything that could fail on them with a stack trace; then runs the relay
// (src/main.ts, bundled apart as dist/node/relay.js). Apart, not in this file: an ESM
// bundle's imports are linked before any of its code runs, so one import an old Node
// lacks (node:zlib's crc32 on Node 18) would fail with a SyntaxError before the check.
import { createRequire } from "node:module";

/** Node versions the relay runs on: import.meta.dirname and zlib.crc32 are needed. */
const NODE_SUPPORTED = "20.15+ on the 20 line, 22.2+ on the 22 line, or 23 and newer";

/** Whether Node `version` (e.g. "20.20.2") has what the relay needs. */
function nodeSupported(version: string): boolean {
  const [major, minor] = version.split(".").map((part) => Number.parseInt(part, 10));
  if (major === 20) return minor >= 15;
  if (major === 22) return minor >= 2;
  return major >= 23;
}

function refuse(message: string): never {
  console.error(`relay: ${message}`);
  process.exit(2);
}

const version = process.versions.node;
if (!nodeSupported(version)) {
  refuse(`Node.js ${version} is not supported: the relay needs ${NODE_SUPPORTED} (docs/node.md)`);
}
try {
  createRequire(import.meta.url).resolve("koffi");
} catch {
  refuse(
    "koffi (the FFI for Node.js) is not installed next to the relay: run npm ci in the " +
      "checkout (docs/node.md)",
  );
}
// A computed specifier: the bundler leaves it alone, so relay.js stays a file of its own.
const relay = new URL("./relay.js", import.meta.url).href;
await import(relay);
