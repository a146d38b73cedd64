// The configuration's JSON Schema for editors (src/config/json_schema.ts): the committed
// dist/relay.schema.json is what the relay generates, a file may name it in "$schema",
// and fields the relay fills in are not required.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { configJsonSchemaText } from "../../src/config/json_schema.ts";
import { parseConfig } from "../../src/config/load.ts";

const ROOT = join(import.meta.dir, "..", "..");
const COMMITTED = join(ROOT, "dist", "relay.schema.json");

describe("JSON Schema", () => {
  test("dist/relay.schema.json is current (bun run relay --print-schema > it)", () => {
    expect(readFileSync(COMMITTED, "utf8")).toBe(configJsonSchemaText());
  });

  test("a config may name the schema in $schema", () => {
    const c = parseConfig({ $schema: "./dist/relay.schema.json", udp: { sessionsMax: 64 } });
    expect(c.udp.sessionsMax).toBe(64);
  });

  test("only fields without a default are required: {} is a valid config for an editor", () => {
    const schema = JSON.parse(configJsonSchemaText());
    const required: string[] = [];
    const walk = (node: any, path: string) => {
      if (typeof node !== "object" || node === null) return;
      if (Array.isArray(node.required)) {
        for (const name of node.required) {
          expect([path, name, "default" in (node.properties?.[name] ?? {})]).toEqual([
            path,
            name,
            false,
          ]);
          required.push(`${path}.${name}`);
        }
      }
      for (const [k, v] of Object.entries(node)) walk(v, `${path}.${k}`);
    };
    walk(schema, "");
    expect(schema.required).toBeUndefined();
    expect(required).toContain(".properties.listeners.items.name");
  });
});
