// What a reload (SIGHUP, `relay reload`) may change while the relay runs, and the diff
// between the running configuration and the re-read one. Every field of the schema has
// a decision in RELOAD_POLICY (test/unit/reload.test.ts walks the schema, so a field
// added without one fails): "live" fields are applied without dropping a flow;
// "restart" fields are bound or allocated at start (sockets, preallocated tables,
// threads, the rules' own identity), and one changed refuses the whole reload.
import { ACTION_DNS_ANSWER, ACTION_DROP, ACTION_REJECT } from "../policy/config.ts";
import { quote, type Config } from "./load.ts";
import { formatAddress } from "../sys/addr.ts";

export type ReloadApply = "live" | "restart";

export interface ReloadRule {
  apply: ReloadApply;
  /** Why, for the docs and the reader of this table. */
  why: string;
  /**
   * A live bound backed by a table allocated at start: lowering (and raising back up to
   * the start value) is live, raising past it needs a restart.
   */
  liveUpToStart?: true;
}

const live = (why: string): ReloadRule => ({ apply: "live", why });
const restart = (why: string): ReloadRule => ({ apply: "restart", why });
const NEW_FLOWS = "applies to flows that begin after the reload";
const REAPPLIED = "the rules are re-applied when firewall.manage is true";

/** Keyed by the field's path in the schema (arrays and maps are one field). */
export const RELOAD_POLICY: Readonly<Record<string, ReloadRule>> = {
  $schema: live("read by editors only"),
  listeners: restart("bound sockets (address, port, options) and per-listener tables"),
  intercept: live("the host rules only: re-applied when firewall.manage is true"),
  "udp.sessionsMax": restart("the session table and its indexes are preallocated"),
  "udp.sessionsPerClientMax": live(
    "new sessions of a client past it are refused; existing ones are not evicted",
  ),
  "udp.replySocketsPerClientMax": live(
    "new reply sockets past it are refused; pinned ones are kept",
  ),
  "udp.mapping": restart("upstream sockets are shared per mapping; flows hold them"),
  "udp.idleTimeoutMs": live("existing sessions too, from the next expiry tick (250 ms)"),
  "udp.idleTimeoutMsByPort": live("existing sessions move to their port's new timeout"),
  "udp.datagramBytesMax": restart("the receive slab is sized at start"),
  "udp.batchCountMax": restart("the receive slab and send tables are sized at start"),
  "udp.gso": restart("switched in the data-path thread at start"),
  "udp.busyPollUs": live("the data path's next wait"),
  "udp.gro": restart("set on upstream sockets when made; their receive path is fixed at start"),
  "udp.drainBatchesMax": restart("a batch-size setting of the data path, fixed at start"),
  "udp.replySocketsMax": restart("the reply socket pool is preallocated"),
  "udp.replySocketIdleMs": live("idle reply sockets are closed by the next sweep past it"),
  "udp.replyBindRetryMs": live("failures cached before the reload keep their retry time"),
  "udp.listenerReceiveBytes": restart("set on the listener sockets when they are bound"),
  "udp.listenerSendBytes": restart("set on the listener sockets when they are bound"),
  "udp.socketReceiveBytes": restart("set on upstream and reply sockets, given at start"),
  "udp.socketSendBytes": restart("set on upstream and reply sockets, given at start"),
  "udp.dnsPorts": live(NEW_FLOWS),
  "udp.dnsUpstreamSocketsPerTarget": restart("DNS upstream sockets are counted at start"),
  "udp.dnsQueriesInFlightMax": restart("the in-flight table is allocated at start"),
  "udp.quicPorts": live(NEW_FLOWS),
  "udp.sniffPacketsMax": live(NEW_FLOWS),
  "udp.quicFollowConnectionIds": restart("the connection-ID index is allocated at start"),
  "udp.dataPlane": restart("the thread that runs the data path"),
  "udp.ioBackend": restart("the data path's I/O (io_uring or epoll) is chosen at start"),
  "udp.workers": restart("each worker binds its own listener sockets and holds its sessions"),
  "udp.holdBytesMax": restart("the hold arena is allocated at start"),
  "udp.holdPacketsPerFlowMax": live(NEW_FLOWS),
  "udp.holdBytesPerFlowMax": live(NEW_FLOWS),
  "udp.holdTimeoutMs": live("held flows too, from the next check"),
  "udp.rejectIcmpPerSecondMax": live("from the next second"),
  "tcp.connectTimeoutMs": live("connections still connecting too, from the next sweep"),
  "tcp.idleTimeoutMs": live("open connections too, from the splice engine's next sweep"),
  "tcp.connectionsMax": {
    ...live("new clients past it are reset; open connections stay"),
    liveUpToStart: true,
  },
  "tcp.bufferBytesMax": restart("the splice engine's pipe pool is sized at start"),
  "tcp.spliceMode": restart("the splice engine's copy buffers are made at start"),
  "tcp.dataPlane": restart("the thread that runs the TCP path"),
  "tcp.shutdownGraceMs": live("read at stop"),
  "tcp.listenBacklog": restart("given to listen(2) when the listeners are bound"),
  "tcp.sniffPorts": restart("the TLS parser and its port set are made at start"),
  "tcp.sniffTimeoutMs": live(NEW_FLOWS),
  "tcp.sniffBytesMax": live(NEW_FLOWS),
  "tcp.dnsPorts": live(NEW_FLOWS),
  "tcp.dnsConnectionsMax": restart("the poller's tokens for DNS connections are made at start"),
  "tcp.dnsIdleTimeoutMs": live("open DNS connections too, from the next tick (100 ms)"),
  outbounds: live("new flows are decided by the new policy; open ones keep their outbound"),
  rules: live("new flows are decided by the new policy; open ones keep their rule"),
  defaultAction: live("new flows are decided by the new policy; open ones keep their rule"),
  mark: restart("SO_MARK of the upstream sockets, and the rules' exemption of them"),
  tproxyMark: restart("identifies the policy rule: a restart removes the old one"),
  routeTable: restart("identifies the routes: a restart removes the old ones"),
  rulePriority: restart("identifies the policy rule: a restart removes the old one"),
  "firewall.backend": live(REAPPLIED),
  "firewall.mode": live(REAPPLIED),
  "firewall.manage": live("true: the rules are applied now; false: left as they are"),
  "firewall.exemptUser": live(REAPPLIED),
  "firewall.exemptCgroup": live(REAPPLIED),
  "firewall.bypass.destinations": live(REAPPLIED),
  "firewall.bypass.sources": live(REAPPLIED),
  "firewall.bypass.ports": live(REAPPLIED),
  "firewall.bypass.reservedRanges": live(REAPPLIED),
  "upstream.bindAddress4": restart("the upstream socket pools are given it at start"),
  "upstream.bindAddress6": restart("the upstream socket pools are given it at start"),
  "metrics.logIntervalMs": live("the periodic metrics line restarts with the new period"),
  "metrics.address": restart("the endpoint's bound socket"),
  "metrics.port": restart("the endpoint's bound socket"),
  "control.socketPath": restart("the control socket's bound path"),
  "flowLog.path": restart("the open file (and whether the data path records flows)"),
  "flowLog.fileBytesMax": live("the next write past it rotates"),
  "flowLog.filesMax": live("the next rotation keeps this many (older files stay on disk)"),
  "log.level": live("both threads"),
  "log.format": live("both threads"),
};

/** One field that differs between two configurations. */
export interface ConfigChange {
  /** Where, with indexes: listeners[0].port, udp.idleTimeoutMsByPort. */
  path: string;
  /** Its RELOAD_POLICY key: listeners, udp.idleTimeoutMsByPort. */
  field: string;
  from: unknown;
  to: unknown;
}

export interface ReloadPlan {
  /** Every change, in schema order. */
  changes: ConfigChange[];
  /** The changes that need a restart, each with why; any refuses the whole reload. */
  refusals: string[];
}

/** The configuration as the schema shapes it (what the file says, defaults filled). */
function schemaView(config: Config): Record<string, unknown> {
  return {
    ...config,
    listeners: config.listeners.map((l) => ({
      name: l.name,
      protocol: l.protocol,
      mode: l.mode,
      source: l.source,
      address: l.address,
      port: l.port,
      reply: l.reply,
      reusePort: l.reusePort,
    })),
    intercept: config.intercept.map((r) => ({
      listener: r.listener.name,
      ports: r.portRanges.map(([low, high]) => (low === high ? low : `${low}-${high}`)),
      interfaces: r.interfaces,
    })),
    // The policy is resolved into config.policy: compared in a plain form (name sets
    // as sorted arrays, addresses as byte arrays, actions by name).
    ...policyView(config),
  };
}

/**
 * outbounds, rules and defaultAction live resolved in config.policy: compared in a plain
 * form (addresses as text, name sets as sorted arrays: a Set has no keys to compare, and
 * a domain list file's new content is a change), actions by name.
 */
function policyView(config: Config): Record<string, unknown> {
  const p = config.policy;
  const text = (addr: Uint8Array | null) => (addr === null ? null : formatAddress(addr));
  const endpoint = (e: { address: string; port: number }) =>
    e.address.includes(":") ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;
  const action = (a: number) =>
    a === ACTION_DROP
      ? "drop"
      : a === ACTION_REJECT
        ? "reject"
        : a < 0
          ? (p.answers[ACTION_DNS_ANSWER - a]?.name ?? a)
          : (p.outbounds[a]?.name ?? a);
  return {
    outbounds: [
      ...p.outbounds.map((o) => {
        if (o.type === "direct") {
          return { ...o, bindAddr4: text(o.bindAddr4), bindAddr6: text(o.bindAddr6) };
        }
        if (o.type === "forward") return { ...o, targets: o.targets.map(endpoint) };
        return { ...o, server: endpoint(o.server) };
      }),
      ...p.answers.map((o) => ({ ...o, addr4: text(o.addr4), addr6: text(o.addr6) })),
    ],
    rules: p.rules.map((r) => ({
      ...r,
      names:
        r.names?.map((n) => ({ exact: [...n.exact].sort(), suffix: [...n.suffix].sort() })) ?? null,
      action: action(r.action),
    })),
    defaultAction: action(p.defaultAction),
  };
}

function valueAt(view: Record<string, unknown>, field: string): unknown {
  let value: unknown = view;
  for (const part of field.split(".")) {
    value = (value as Record<string, unknown> | undefined)?.[part];
  }
  return value;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const aKeys = Object.keys(a);
  const bKeys = Object.keys(b);
  if (aKeys.length !== bKeys.length) return false;
  const bRecord = b as Record<string, unknown>;
  return aKeys.every(
    (k) => Object.hasOwn(bRecord, k) && sameValue((a as Record<string, unknown>)[k], bRecord[k]),
  );
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The changes within one field: an array of objects by element and property
 * (listeners[0].port), and the elements added or removed; anything else as a whole.
 */
function fieldChanges(field: string, from: unknown, to: unknown, out: ConfigChange[]): void {
  if (sameValue(from, to)) return;
  if (Array.isArray(from) && Array.isArray(to) && [...from, ...to].every(isObject)) {
    const common = Math.min(from.length, to.length);
    for (let i = 0; i < common; i++) {
      const a = from[i] as Record<string, unknown>;
      const b = to[i] as Record<string, unknown>;
      for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
        if (!sameValue(a[k], b[k])) {
          out.push({ path: `${field}[${i}].${k}`, field, from: a[k], to: b[k] });
        }
      }
    }
    // Elements past the common length were added (from undefined) or removed (to undefined).
    for (let i = common; i < Math.max(from.length, to.length); i++) {
      out.push({ path: `${field}[${i}]`, field, from: from[i], to: to[i] });
    }
    return;
  }
  out.push({ path: field, field, from, to });
}

/**
 * What changes from `running` to `next`, and whether a restart is needed for any of it.
 * `started`: the configuration the relay started with (what its tables were sized for).
 * All three are fitted to the descriptor limit (src/config/limits.ts) alike.
 */
export function planReload(running: Config, next: Config, started: Config): ReloadPlan {
  const from = schemaView(running);
  const to = schemaView(next);
  const changes: ConfigChange[] = [];
  for (const field of Object.keys(RELOAD_POLICY)) {
    fieldChanges(field, valueAt(from, field), valueAt(to, field), changes);
  }
  const refusals: string[] = [];
  for (const c of changes) {
    const rule = RELOAD_POLICY[c.field];
    if (rule.apply === "restart") {
      refusals.push(`${c.path} changed (needs a restart)`);
    } else if (rule.liveUpToStart) {
      const startValue = valueAt(schemaView(started), c.field) as number;
      if ((c.to as number) > startValue) {
        refusals.push(
          `${c.path} raised past ${startValue}, the table allocated at start (needs a restart)`,
        );
      }
    }
  }
  return { changes, refusals };
}

/** "udp.idleTimeoutMs 60000 -> 30000, intercept[0].ports [53] -> [53,5353]" */
export function describeChanges(changes: readonly ConfigChange[]): string {
  return changes
    .map((c) =>
      c.from === undefined
        ? `${c.path} added ${quote(c.to)}`
        : c.to === undefined
          ? `${c.path} removed`
          : `${c.path} ${quote(c.from)} -> ${quote(c.to)}`,
    )
    .join(", ");
}

/** Whether the host rules must be applied again (firewall.manage true after the reload). */
export function rulesChanged(changes: readonly ConfigChange[]): boolean {
  return changes.some((c) => c.field === "intercept" || c.field.startsWith("firewall."));
}
