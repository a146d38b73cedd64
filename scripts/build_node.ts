// Bundles the relay for Node.js (issue 15): dist/node/main.js (the CLI: src/main_node.ts,
// which checks the Node version and koffi, then runs src/main.ts) and dist/node/worker.js
// (the UDP data plane's thread). Node 20 cannot run TypeScript (type stripping came in
// Node 22.6, and does not cover this code's parameter properties), so we emit JavaScript.
// The JS dependencies are bundled in; koffi stays external (a native module Node loads
// from node_modules). bun:ffi is never reached on Node (src/sys/ffi.ts picks koffi there):
// a stub stands in for it so the bundle has no bun: import.
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..");
const OUT = join(ROOT, "dist", "node");

const result = await Bun.build({
  entrypoints: [join(ROOT, "src", "main_node.ts"), join(ROOT, "src", "udp", "worker.ts")],
  outdir: OUT,
  target: "node",
  format: "esm",
  // Flat: main.js and worker.js side by side, two levels below the root (runtime.ts).
  naming: "[name].js",
  external: ["koffi"],
  // main.js is the package's bin: executable with the node on PATH.
  banner: "#!/usr/bin/env node",
  plugins: [
    {
      name: "no-bun-ffi",
      setup(build) {
        build.onResolve({ filter: /^bun:ffi$/ }, () => ({ path: "bun:ffi", namespace: "stub" }));
        build.onLoad({ filter: /.*/, namespace: "stub" }, () => ({
          contents:
            "const absent = () => { throw new Error('bun:ffi is not available on Node.js'); };\n" +
            "export const dlopen = absent, ptr = absent, toArrayBuffer = absent;\n" +
            "export const FFIType = {}; export class JSCallback { constructor() { absent(); } }\n",
          loader: "js",
        }));
      },
    },
  ],
});
if (!result.success) {
  for (const message of result.logs) console.error(message);
  process.exit(1);
}
// main_node.js is the CLI's entry: named main.js, as `npm run relay:node` and bin call it.
const { chmodSync, renameSync } = await import("node:fs");
renameSync(join(OUT, "main_node.js"), join(OUT, "main.js"));
chmodSync(join(OUT, "main.js"), 0o755);
