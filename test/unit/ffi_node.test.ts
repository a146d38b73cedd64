// The koffi binding (src/sys/ffi_node.ts) on Node.js: a probe bundled for Node checks that
// ptr() gives a typed array's own memory (no copy), that WASM memory keeps one address,
// and that the epoll thread wakes Node through its pipe.
import { beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { bundleForNode } from "../../scripts/node_bundle.ts";
import { WASM_PATH_DEFAULT } from "../../src/classify/wasm.ts";

const ROOT = join(import.meta.dir, "..", "..");
// Two levels below the root, where the bundle finds build/ and node_modules/.
const OUT = join(ROOT, "build", "node-probe");
const NODE = process.env.RELAY_NODE ?? Bun.which("node");

describe("koffi binding on Node.js", () => {
  beforeAll(async () => {
    await bundleForNode([join(ROOT, "test", "fixtures", "node_ffi_probe.ts")], OUT);
  });

  test("pointers are the arrays' own memory; WASM memory stays put; the pipe wakes", () => {
    expect(NODE).not.toBeNull();
    const r = spawnSync(NODE!, ["--expose-gc", join(OUT, "node_ffi_probe.js"), WASM_PATH_DEFAULT], {
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout.trim())).toEqual({
      runtime: "node",
      stable: true,
      subarrayOffset: 8,
      readBack: [4, 5, 6, 7],
      cWrote: true,
      sameBothWays: true,
      wasmStable: true,
      wasmRead: [9, 8, 7, 6],
      wokenToken: 7,
    });
  });
});
