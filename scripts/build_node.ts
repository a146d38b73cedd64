// Bundles the relay for Node.js (issue 15): dist/node/main.js (the CLI: src/main_node.ts,
// which checks the Node version and koffi, then runs src/main.ts) and dist/node/worker.js
// and dist/node/tcp_worker.js (the UDP and TCP data planes' threads). Node 20 cannot run TypeScript (type stripping came in
// Node 22.6, and does not cover this code's parameter properties), so we emit JavaScript.
import { chmodSync, renameSync } from "node:fs";
import { join } from "node:path";
import { bundleForNode } from "./node_bundle.ts";

const ROOT = join(import.meta.dirname, "..");
// Two levels below the root, as src/sys/runtime.ts expects.
const OUT = join(ROOT, "dist", "node");

const ENTRIES = [
  join(ROOT, "src", "main_node.ts"),
  join(ROOT, "src", "main.ts"),
  join(ROOT, "src", "udp", "worker.ts"),
  join(ROOT, "src", "tcp", "tcp_worker.ts"),
];
await bundleForNode(ENTRIES, OUT);
// The relay itself (src/main.ts) is relay.js, loaded by the entry once its checks pass;
// main_node.js is the CLI's entry: named main.js, as `npm run relay:node` and bin call it.
renameSync(join(OUT, "main.js"), join(OUT, "relay.js"));
renameSync(join(OUT, "main_node.js"), join(OUT, "main.js"));
chmodSync(join(OUT, "main.js"), 0o755);
