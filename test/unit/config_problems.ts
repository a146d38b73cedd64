// The problems a config is refused with (ConfigError.problems); [] when it is accepted.
import { ConfigError, parseConfig } from "../../src/config/load.ts";

export function configProblems(input: unknown): string[] {
  try {
    parseConfig(input);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

/** Like configProblems, for a config that must be refused. */
export function problems(input: unknown): string[] {
  const found = configProblems(input);
  if (found.length === 0) throw new Error("expected a ConfigError");
  return found;
}
