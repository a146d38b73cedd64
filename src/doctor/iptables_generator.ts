// The iptables backend's generator, as the rules check compares against it: the one
// import to point at src/rules/iptables.ts (iptablesRestoreInput) once that backend is
// merged. Until then null: the comparison says "not checked" rather than guess.
import type { Config } from "../config/load.ts";

/** iptables-restore input of one family (--noflush applicable), or null: not available. */
export const iptablesRestoreInput: ((config: Config, family: 4 | 6) => string) | null = null;
