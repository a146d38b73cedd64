// The configuration a one-shot command (rules, doctor) runs with: --config FILE, or the
// built-in default; an invalid one is printed with the field and why.
import { ConfigError, type Config, loadConfigFile, parseConfig } from "../config/load.ts";

/** The config, or null once the problems are printed (the caller exits 2). */
export function commandConfig(command: string, configPath: string | null): Config | null {
  try {
    return configPath ? loadConfigFile(configPath) : parseConfig({});
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(`relay ${command}: ${err.describe()}`);
    return null;
  }
}
