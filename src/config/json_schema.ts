// The configuration's JSON Schema, for editors (`"$schema": "./dist/relay.schema.json"` in
// a config file): generated from the TypeBox schema the relay validates with, so the two
// cannot drift. `bun run relay --print-schema > dist/relay.schema.json` writes it; a unit
// test checks that the committed copy is current. It gives an editor every field, its
// type, bounds, enumerations and default; the meanings are in README "Configuration
// reference".
import { ConfigSchema } from "./schema.ts";

export const SCHEMA_ID = "https://transparent-relay.invalid/relay.schema.json";

/** The JSON Schema (draft-07, what TypeBox emits) as text, ending with a newline. */
export function configJsonSchemaText(): string {
  const schema = {
    $schema: "http://json-schema.org/draft-07/schema#",
    $id: SCHEMA_ID,
    title: "transparent-relay configuration",
    ...(optionalDefaults(ConfigSchema) as Node),
  };
  // TypeBox's own markers are symbol keys: JSON.stringify leaves them out.
  return `${JSON.stringify(schema, null, 2)}\n`;
}

type Node = Record<string, unknown>;

/**
 * A copy in which a property with a default is not `required`: the relay fills it in
 * (src/config/load.ts), so a file may leave it out, and an editor must not flag that.
 */
function optionalDefaults(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(optionalDefaults);
  if (typeof node !== "object" || node === null) return node;
  const out: Node = {};
  for (const [k, v] of Object.entries(node)) out[k] = optionalDefaults(v);
  const properties = (node as Node).properties as Record<string, Node> | undefined;
  const required = (node as Node).required as string[] | undefined;
  if (properties && required) {
    const still = required.filter((name) => !("default" in (properties[name] ?? {})));
    if (still.length > 0) out.required = still;
    else delete out.required;
  }
  return out;
}
