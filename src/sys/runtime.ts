// Which JavaScript runtime runs us, and where the checkout is. Under Bun the sources run
// as they are (this file is src/sys/runtime.ts); under Node.js they run as the bundle
// scripts/build_node.ts writes (dist/node/main.js): both two levels below the root.
import { join } from "node:path";

export const RUNTIME: "bun" | "node" = process.versions.bun ? "bun" : "node";

/** The checkout: build/ (the C helper, the parsers), node_modules/, src/. */
export const PROJECT_ROOT = join(import.meta.dirname, "..", "..");
