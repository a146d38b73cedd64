// Bundles TypeScript entry points into JavaScript for Node.js: scripts/build_node.ts (the
// relay) and test/unit/ffi_node.test.ts (a probe) share it. The JS dependencies are bundled
// in; koffi stays external (a native module Node loads from node_modules). bun:ffi is
// never reached on Node (src/sys/ffi.ts picks koffi there): a stub stands in for it, so
// the output has no bun: import.

const BUN_FFI_STUB = [
  "const absent = () => { throw new Error('bun:ffi is not available on Node.js'); };",
  "export const dlopen = absent, ptr = absent, toArrayBuffer = absent;",
  "export const FFIType = {};",
  "export class JSCallback { constructor() { absent(); } }",
].join("\n");

/** Writes `outdir/<entry name>.js` for each entry; throws with the bundler's messages. */
export async function bundleForNode(entrypoints: string[], outdir: string): Promise<void> {
  const result = await Bun.build({
    entrypoints,
    outdir,
    target: "node",
    format: "esm",
    // Flat: the outputs side by side (src/sys/runtime.ts and thread.ts rely on it).
    naming: "[name].js",
    external: ["koffi"],
    // An entry may be a bin: executable with the node on PATH.
    banner: "#!/usr/bin/env node",
    plugins: [
      {
        name: "no-bun-ffi",
        setup(build) {
          build.onResolve({ filter: /^bun:ffi$/ }, () => ({ path: "bun:ffi", namespace: "stub" }));
          build.onLoad({ filter: /.*/, namespace: "stub" }, () => ({
            contents: BUN_FFI_STUB,
            loader: "js",
          }));
        },
      },
    ],
  });
  if (!result.success) {
    throw new Error(`bundle for Node failed:\n${result.logs.map(String).join("\n")}`);
  }
}
