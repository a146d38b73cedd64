// Loads and validates the configuration: defaults, schema check (TypeBox, compiled
// once), then the cross-field checks a schema cannot express. Every error names the
// field and the reason: "config.udp.sessionsMax: must be >= 16 (got 3)".
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { readFileSync } from "node:fs";
import { formatAddress, isV4Mapped, parseAddress } from "../sys/addr.ts";
import { type Cidr, parseCidr } from "./cidr.ts";
import { type ConfigInput, ConfigSchema, OutboundSchema } from "./schema.ts";
import { TIMEOUT_CLASS_COUNT_MAX } from "../flow/table.ts";
import { groSpanSlots } from "../udp/gro_span.ts";
import { type PolicyConfig, resolvePolicy } from "../policy/config.ts";

/** Size of the WASM packet area (wasm/src/main.zig packet_area_bytes); UdpRelay asserts it. */
export const PACKET_AREA_BYTES = 512 * 1024;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
    this.name = "ConfigError";
  }

  /** What every command prints: "invalid configuration:" and one problem a line. */
  describe(): string {
    return `invalid configuration:\n  ${this.problems.join("\n  ")}`;
  }
}

export interface ListenerConfig {
  name: string;
  address: string;
  addr: Uint8Array; // 16-byte form
  ipv6: boolean;
  port: number;
  protocol: "udp" | "tcp";
  /** TCP: how traffic reaches the listener (TPROXY, or REDIRECT/DNAT). */
  mode: "tproxy" | "redirect";
  /** Upstream source address, the relay's or the client's (UDP: the client's ip:port). */
  source: "relay" | "client";
  reply: "auto" | "pktinfo" | "socket";
  reusePort: boolean;
}

export interface InterceptConfig {
  listener: ListenerConfig;
  portRanges: Array<[number, number]>;
  interfaces: string[];
}

/** firewall.bypass, parsed: what the rules never intercept. */
export interface BypassConfig {
  destinations: Cidr[];
  sources: Cidr[];
  portRanges: Array<[number, number]>;
}

export type Config = Omit<
  ConfigInput,
  "listeners" | "intercept" | "outbounds" | "rules" | "defaultAction"
> & {
  listeners: ListenerConfig[];
  intercept: InterceptConfig[];
  bypass: BypassConfig;
  /** Outbounds, rules and the default action, resolved (src/policy/config.ts). */
  policy: PolicyConfig;
  /** What is allowed but probably not meant (a rule that can never match): logged at start. */
  warnings: string[];
  upstreamAddr4: Uint8Array;
  upstreamAddr6: Uint8Array;
  /** Distinct idle timeouts; class 0 is the default. */
  timeoutClassesMs: number[];
  /** Timeout class per destination port (0 for ports without their own timeout). */
  timeoutClassByPort: Uint8Array;
};

const checker = TypeCompiler.Compile(ConfigSchema);
/** One checker per outbound type, to name the field when an outbound is wrong. */
const outboundCheckers = new Map(
  OutboundSchema.anyOf.map((branch) => [
    branch.properties.type.const as string,
    TypeCompiler.Compile(branch),
  ]),
);

/** A bad value is quoted in an error up to this many characters (a 10 MB value is not). */
const QUOTE_CHARS_MAX = 48;
/** Problems reported at most: enough to fix a file, not a flood. */
const PROBLEMS_MAX = 20;

/** JSON text of a value for an error message, cut to a short prefix. */
export function quote(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length <= QUOTE_CHARS_MAX
    ? text
    : `${text.slice(0, QUOTE_CHARS_MAX)}... (${text.length} chars)`;
}

interface SchemaNode {
  type?: string;
  const?: unknown;
  default?: unknown;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  anyOf?: SchemaNode[];
}

/**
 * Fills defaults where a value is absent, and only there. TypeBox's Value.Default also
 * replaces a value of the wrong type with the default ("listeners": {} silently became
 * the two built-in listeners); here a wrong type stays, so the check names it.
 */
function withDefaults(schema: SchemaNode, value: unknown): unknown {
  if (value === undefined) {
    if (!("default" in schema)) return undefined;
    value = structuredClone(schema.default);
  }
  // A union of objects told apart by their "type" (outbounds): the branch it names.
  if (schema.anyOf && isPlainObject(value)) {
    const type = (value as Record<string, unknown>).type;
    const branch = schema.anyOf.find((b) => b.properties?.type?.const === type);
    if (branch) return withDefaults(branch, value);
  }
  if (schema.type === "object" && schema.properties && isPlainObject(value)) {
    const object = value as Record<string, unknown>;
    for (const [name, property] of Object.entries(schema.properties)) {
      const filled = withDefaults(property, object[name]);
      if (filled !== undefined) object[name] = filled;
    }
  } else if (schema.type === "array" && schema.items && Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = withDefaults(schema.items, value[i]);
  }
  return value;
}

function isPlainObject(value: unknown): boolean {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * An interface name Linux would accept (dev_valid_name: 1-15 bytes, not "." or "..",
 * no "/", ":" or whitespace) and that nft and a shell script can carry safely:
 * printable ASCII without quotes or backslashes. Returns why not, or null.
 */
export function interfaceNameProblem(name: string): string | null {
  if (name.length < 1 || name.length > 15) return "must be 1-15 characters (IFNAMSIZ)";
  if (name === "." || name === "..") return `"." and ".." are not interface names`;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return "must be printable ASCII without spaces";
    if (c === 0x2f || c === 0x3a) return `must not contain "/" or ":" (Linux refuses them)`;
    if (c === 0x22 || c === 0x27 || c === 0x5c || c === 0x60) {
      return "must not contain quotes or backslashes";
    }
  }
  return null;
}

/** DNS (RFC 1035) and QUIC/HTTP3 (RFC 9114 uses udp/443) on every non-loopback interface. */
const DEFAULT_INTERCEPT = [
  { listener: "udp4", ports: [53, 443] },
  { listener: "udp6", ports: [53, 443] },
];

/** Parses 80 or "1000-2000" (as the schema lets through) into a checked range, or null. */
export function parsePortRange(p: number | string): [number, number] | null {
  let low: number;
  let high: number;
  if (typeof p === "number") {
    low = high = p;
  } else {
    const dash = p.indexOf("-");
    low = Number(p.slice(0, dash));
    high = Number(p.slice(dash + 1));
  }
  return low >= 1 && high <= 65535 && low <= high ? [low, high] : null;
}

/** Ports as numbers or "low-high" strings (the schema checked the form) into ranges. */
function parsePortRanges(
  ports: Array<number | string>,
  field: string,
  problems: string[],
): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  ports.forEach((p, k) => {
    const range = parsePortRange(p);
    if (range) ranges.push(range);
    else {
      problems.push(`${field}[${k}]: range must be within 1-65535, low <= high (got ${quote(p)})`);
    }
  });
  return ranges;
}

/** A user name as useradd accepts it (Debian's NAME_REGEX, relaxed), or a numeric uid. */
const USER_NAME = /^[a-z_][a-z0-9_.-]*$/;
const UID = /^[0-9]{1,10}$/;
const UID_MAX = 4_294_967_294; // (uid_t)-1 means "no user"
/** One cgroup v2 path component: what systemd unit and slice names use, nothing a shell or
 * nft would interpret (no quotes, backslashes, spaces, "$" or glob characters). */
const CGROUP_COMPONENT = /^[A-Za-z0-9_.@:+-]+$/;

/**
 * firewall.exemptUser and exemptCgroup go into the generated nft and iptables text as
 * they are: only characters that cannot end a quoted string, start a comment or be
 * expanded by a shell get through. Returns the parsed bypass section.
 */
function parseFirewall(firewall: ConfigInput["firewall"], problems: string[]): BypassConfig {
  const user = firewall.exemptUser;
  if (user !== "") {
    if (UID.test(user)) {
      if (Number(user) > UID_MAX) {
        problems.push(`config.firewall.exemptUser: uid must be 0-${UID_MAX} (got ${quote(user)})`);
      }
    } else if (!USER_NAME.test(user)) {
      problems.push(
        `config.firewall.exemptUser: must be a user name ([a-z_][a-z0-9_.-]*) or a numeric ` +
          `uid (got ${quote(user)})`,
      );
    }
  }
  const cgroup = firewall.exemptCgroup;
  if (cgroup !== "") {
    const components = cgroup.replace(/^\//, "").split("/");
    const bad = components.find(
      (part) => !CGROUP_COMPONENT.test(part) || part === "." || part === "..",
    );
    if (bad !== undefined) {
      problems.push(
        `config.firewall.exemptCgroup: must be a cgroup v2 path like ` +
          `"system.slice/relay.service": components of [A-Za-z0-9_.@:+-], no empty, "." or ` +
          `".." component, not the root (got ${quote(cgroup)})`,
      );
    }
  }
  const cidrs = (list: string[], field: string): Cidr[] => {
    const out: Cidr[] = [];
    list.forEach((text, k) => {
      const parsed = parseCidr(text);
      if ("problem" in parsed) {
        problems.push(`config.firewall.bypass.${field}[${k}]: ${quote(text)} ${parsed.problem}`);
      } else {
        out.push(parsed);
      }
    });
    return out;
  };
  return {
    destinations: cidrs(firewall.bypass.destinations, "destinations"),
    sources: cidrs(firewall.bypass.sources, "sources"),
    portRanges: parsePortRanges(firewall.bypass.ports, "config.firewall.bypass.ports", problems),
  };
}

function pathToField(path: string): string {
  // TypeBox paths are JSON pointers: /udp/sessionsMax, /listeners/0/port
  if (path === "") return "config";
  return (
    "config" +
    path
      .split("/")
      .slice(1)
      .map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`))
      .join("")
  );
}

/** What is wrong with an outbound, field by field, judged by the type it names. */
function outboundProblems(path: string, value: unknown): string[] {
  const field = pathToField(path);
  if (!isPlainObject(value)) return [`${field}: Expected object (got ${quote(value)})`];
  const type = (value as Record<string, unknown>).type;
  const branch = outboundCheckers.get(type as string);
  if (typeof type !== "string" || !branch) {
    const known = [...outboundCheckers.keys()].map((t) => `"${t}"`).join(", ");
    return [`${field}.type: must be one of ${known} (got ${quote(type)})`];
  }
  return [...branch.Errors(value)].map(
    (e) => `${pathToField(path + e.path)}: ${e.message} (got ${quote(e.value)})`,
  );
}

export function parseConfig(input: unknown): Config {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    throw new ConfigError(["config: must be a JSON object"]);
  }
  const raw = structuredClone(input) as Record<string, unknown>;
  // The built-in listeners come with built-in interception (DNS and QUIC); a config
  // that names its own listeners says what to intercept too.
  if (raw.listeners === undefined && raw.intercept === undefined) raw.intercept = DEFAULT_INTERCEPT;
  const filled = withDefaults(ConfigSchema as SchemaNode, raw);
  const problems: string[] = [];
  for (const e of checker.Errors(filled)) {
    if (problems.length >= PROBLEMS_MAX) break;
    // "Expected union value" says nothing: check the outbound against its own type.
    if (/^\/outbounds\/\d+$/.test(e.path)) {
      problems.push(...outboundProblems(e.path, e.value));
      continue;
    }
    // An outbound's fields are reported by outboundProblems, once.
    if (/^\/outbounds\/\d+\//.test(e.path)) continue;
    problems.push(`${pathToField(e.path)}: ${e.message} (got ${quote(e.value)})`);
  }
  if (problems.length) throw new ConfigError(problems);
  const c = filled as ConfigInput;

  const listeners: ListenerConfig[] = [];
  const seenNames = new Set<string>();
  const seenBinds = new Map<string, number>();
  c.listeners.forEach((l, i) => {
    const field = `config.listeners[${i}]`;
    const addr = parseAddress(l.address);
    if (!addr) {
      problems.push(`${field}.address: not an IPv4 or IPv6 address (got ${quote(l.address)})`);
      return;
    }
    if (seenNames.has(l.name)) problems.push(`${field}.name: duplicate listener name "${l.name}"`);
    seenNames.add(l.name);
    // Compared in canonical form: "::1" and "0:0:0:0:0:0:0:1" are one address, and
    // "::ffff:127.0.0.1" is 127.0.0.1.
    const canonical = formatAddress(addr);
    const bind = `${l.protocol}|${canonical}|${l.port}`;
    const other = seenBinds.get(bind);
    if (other !== undefined) {
      problems.push(
        `${field}: binds ${l.protocol} ${canonical} port ${l.port}, as ` +
          `config.listeners[${other}] does`,
      );
    }
    if (l.protocol === "udp" && l.mode !== "tproxy") {
      problems.push(
        `${field}.mode: "${l.mode}" is for TCP listeners only (REDIRECT loses a ` +
          `UDP datagram's original destination)`,
      );
    }
    seenBinds.set(bind, i);
    listeners.push({ ...l, addr, ipv6: !isV4Mapped(addr) });
  });

  const intercept: InterceptConfig[] = [];
  c.intercept.forEach((r, i) => {
    const field = `config.intercept[${i}]`;
    const listener = listeners.find((l) => l.name === r.listener);
    if (!listener) {
      problems.push(`${field}.listener: no listener named "${r.listener}"`);
      return;
    }
    const portRanges = parsePortRanges(r.ports, `${field}.ports`, problems);
    r.interfaces.forEach((name, k) => {
      const problem = interfaceNameProblem(name);
      if (problem) problems.push(`${field}.interfaces[${k}]: ${problem} (got ${quote(name)})`);
    });
    intercept.push({ listener, portRanges, interfaces: r.interfaces });
  });

  const bypass = parseFirewall(c.firewall, problems);

  const upstreamAddr4 = parseAddress(c.upstream.bindAddress4);
  if (!upstreamAddr4 || !isV4Mapped(upstreamAddr4)) {
    problems.push(
      `config.upstream.bindAddress4: not an IPv4 address (got ${quote(c.upstream.bindAddress4)})`,
    );
  }
  const upstreamAddr6 = parseAddress(c.upstream.bindAddress6);
  if (!upstreamAddr6 || isV4Mapped(upstreamAddr6)) {
    problems.push(
      `config.upstream.bindAddress6: not an IPv6 address (got ${quote(c.upstream.bindAddress6)})`,
    );
  }
  // An address, not a host name: the endpoint binds exactly what the config says.
  if (!parseAddress(c.metrics.address)) {
    problems.push(
      `config.metrics.address: not an IPv4 or IPv6 address (got ${quote(c.metrics.address)})`,
    );
  }
  if (c.mark === c.tproxyMark) {
    problems.push(
      `config.mark: must differ from config.tproxyMark (${c.tproxyMark}), or the relay's ` +
        `own upstream traffic would be routed back into itself`,
    );
  }

  const timeoutClassesMs = [c.udp.idleTimeoutMs];
  const timeoutClassByPort = new Uint8Array(65536);
  for (const [portText, timeoutMs] of Object.entries(c.udp.idleTimeoutMsByPort)) {
    const port = Number(portText);
    if (!(port >= 1 && port <= 65535)) {
      problems.push(`config.udp.idleTimeoutMsByPort.${portText}: port must be 1-65535`);
      continue;
    }
    let cls = timeoutClassesMs.indexOf(timeoutMs);
    if (cls < 0) {
      cls = timeoutClassesMs.length;
      timeoutClassesMs.push(timeoutMs);
    }
    timeoutClassByPort[port] = cls;
  }
  if (timeoutClassesMs.length > TIMEOUT_CLASS_COUNT_MAX) {
    problems.push(
      `config.udp.idleTimeoutMsByPort: at most ${TIMEOUT_CLASS_COUNT_MAX - 1} distinct ` +
        `timeouts besides idleTimeoutMs (got ${timeoutClassesMs.length - 1})`,
    );
  }
  if ((c.tcp.bufferBytesMax & (c.tcp.bufferBytesMax - 1)) !== 0) {
    problems.push(
      `config.tcp.bufferBytesMax: must be a power of two, as pipe sizes are ` +
        `(got ${c.tcp.bufferBytesMax})`,
    );
  }
  // The receive slab lives in the WASM parsers' packet area (parsed in place, no copy).
  const slabBytes = Math.ceil(c.udp.datagramBytesMax / 64) * 64 * c.udp.batchCountMax;
  if (slabBytes > PACKET_AREA_BYTES) {
    problems.push(
      `config.udp.datagramBytesMax: times udp.batchCountMax (${slabBytes} bytes with ` +
        `64-byte slots) must fit the ${PACKET_AREA_BYTES}-byte packet area; lower one of them`,
    );
  }
  const slotBytes = Math.ceil(c.udp.datagramBytesMax / 64) * 64;
  if (c.udp.gro && c.udp.batchCountMax < groSpanSlots(slotBytes)) {
    problems.push(
      `config.udp.gro: a coalesced buffer needs ${groSpanSlots(slotBytes)} slots (64 ` +
        `datagrams and 64 KiB) but udp.batchCountMax is ${c.udp.batchCountMax}; raise it`,
    );
  }
  if (c.udp.busyPollUs > 0 && c.udp.dataPlane !== "worker") {
    problems.push(
      `config.udp.busyPollUs: ${c.udp.busyPollUs} needs udp.dataPlane "worker" (the ` +
        `"callback" plane waits on the epoll thread, not on a thread of the data path)`,
    );
  }
  if (c.udp.workers > 1 && c.udp.dataPlane !== "worker") {
    problems.push(
      `config.udp.workers: ${c.udp.workers} needs udp.dataPlane "worker" (the "callback" ` +
        `plane runs on the main thread, which is one)`,
    );
  }
  const warnings: string[] = [];
  // A client on this host lends no address (its own socket holds it: src/udp/relay.ts
  // falls back to the relay's); with only such clients the setting does nothing.
  const udpClientSource = listeners.findIndex((l) => l.protocol === "udp" && l.source === "client");
  if (udpClientSource >= 0 && c.firewall.mode === "local") {
    warnings.push(
      `config.listeners[${udpClientSource}].source: "client" serves clients routed through ` +
        `this host; with firewall.mode "local" every client is this host itself, whose ` +
        `flows leave from the relay's address as with source "relay"`,
    );
  }
  // Only once the rest is sound: a rule names listeners, and a list file is worth reading.
  const policy = problems.length ? null : resolvePolicy(c, listeners, problems, warnings);
  if (problems.length) throw new ConfigError(problems.slice(0, PROBLEMS_MAX));

  const { outbounds: _o, rules: _r, defaultAction: _d, ...rest } = c;
  return {
    ...rest,
    listeners,
    intercept,
    bypass,
    policy: policy!,
    warnings,
    upstreamAddr4: upstreamAddr4!,
    upstreamAddr6: upstreamAddr6!,
    timeoutClassesMs,
    timeoutClassByPort,
  };
}

export function loadConfigFile(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError([`${path}: cannot read: ${(err as Error).message}`]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // The parser's message may quote the text: keep it short.
    const message = (err as Error).message;
    const short = message.length > 160 ? `${message.slice(0, 160)}...` : message;
    throw new ConfigError([`${path}: not valid JSON: ${short}`]);
  }
  return parseConfig(json);
}
