// The iptables backend (firewall.backend "iptables"): the same interception as the nft
// table (src/rules/nft.ts), for hosts that manage their firewall with iptables. Written
// as iptables-restore / ip6tables-restore input (--noflush: one transaction per family,
// nobody else's rules touched), in chains of our own:
//
//   mangle TRELAY_PRE     from PREROUTING: TPROXY (gateway: routed traffic; local: this
//                         host's own packets looped back through lo)
//   mangle TRELAY_OUT     from OUTPUT: the relay's connections into conntrack (CONNMARK);
//                         local mode: marks this host's own traffic for the policy route
//   mangle TRELAY_DIVERT  packets of established transparent TCP sockets, and replies to
//                         client-source UDP sockets: mark, accept
//   nat TRELAY_NAT_PRE    from PREROUTING: REDIRECT for redirect-mode TCP listeners
//   nat TRELAY_NAT_OUT    from OUTPUT: the same, local mode
//
// A chain declared in --noflush input is flushed and refilled, so applying again replaces
// our rules; the jump rules into our chains carry the comment "transparent-relay" and are
// added only when absent. Everything comes from the validated config (src/config/load.ts):
// names, interfaces, CIDRs, users and cgroup paths cannot contain spaces, quotes or
// anything a shell expands, and the printed script passes the input through a quoted
// heredoc.
//
// iptables has no sets without ipset: one rule per bypass prefix (bounded by the schema's
// maxItems), and `-m multiport` (15 ports, a range counting 2) for ports.
import type { Config } from "../config/load.ts";
import {
  bypassSets,
  cgroupPath,
  hasUdpClientSource,
  interceptsForwarded,
  interceptsLocal,
  relayMarks,
} from "./bypass.ts";

export type Family = 4 | 6;

/** Our chains: a name with this prefix is ours (removal finds them by it). */
const CHAIN_PREFIX = "TRELAY_";
const PRE = "TRELAY_PRE";
const OUT = "TRELAY_OUT";
const DIVERT = "TRELAY_DIVERT";
const NAT_PRE = "TRELAY_NAT_PRE";
const NAT_OUT = "TRELAY_NAT_OUT";
/** The comment on our jump rules in the built-in chains. */
const JUMP_COMMENT = "transparent-relay";
/** -m multiport takes at most 15 ports; a range counts as two. */
const MULTIPORT_SLOTS_MAX = 15;

export interface JumpRule {
  table: "mangle" | "nat";
  chain: "PREROUTING" | "OUTPUT";
  /** The rule after the chain name: -m comment --comment transparent-relay -j TARGET. */
  spec: string[];
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** The commands of a family: iptables or ip6tables, -save and -restore. */
export function iptablesCommand(family: Family, suffix: "" | "-save" | "-restore"): string {
  return `${family === 4 ? "iptables" : "ip6tables"}${suffix}`;
}

/** Port ranges as multiport lists ("53,1000:2000"), each within the 15 slots. */
function multiportLists(ranges: Array<[number, number]>): string[] {
  const lists: string[] = [];
  let items: string[] = [];
  let slots = 0;
  for (const [low, high] of ranges) {
    const need = low === high ? 1 : 2;
    if (slots + need > MULTIPORT_SLOTS_MAX) {
      lists.push(items.join(","));
      items = [];
      slots = 0;
    }
    items.push(low === high ? `${low}` : `${low}:${high}`);
    slots += need;
  }
  if (items.length > 0) lists.push(items.join(","));
  return lists;
}

function listenersOf(config: Config, family: Family) {
  return config.intercept.filter((r) => r.listener.ipv6 === (family === 6));
}

function isRedirect(rule: Config["intercept"][number]): boolean {
  return rule.listener.protocol === "tcp" && rule.listener.mode === "redirect";
}

/** Never intercepted: the host's own addresses, broadcast (IPv4), multicast, anycast. */
function addressTypeReturns(chain: string, family: Family): string[] {
  const types =
    family === 4
      ? ["LOCAL", "BROADCAST", "MULTICAST", "ANYCAST"]
      : ["LOCAL", "MULTICAST", "ANYCAST"];
  return types.map((t) => `-A ${chain} -m addrtype --dst-type ${t} -j RETURN`);
}

function bypassReturns(config: Config, chain: string, family: Family): string[] {
  const sets = bypassSets(config);
  const sources = family === 4 ? sets.sources4 : sets.sources6;
  const destinations = family === 4 ? sets.destinations4 : sets.destinations6;
  const lines = [
    ...sources.map((c) => `-A ${chain} -s ${c.text} -j RETURN`),
    ...destinations.map((c) => `-A ${chain} -d ${c.text} -j RETURN`),
  ];
  for (const protocol of ["tcp", "udp"]) {
    for (const ports of multiportLists(sets.portRanges)) {
      lines.push(`-A ${chain} -p ${protocol} -m multiport --dports ${ports} -j RETURN`);
    }
  }
  return lines;
}

/** Local mode: the relay's own sockets (SO_MARK), its user and its cgroup. */
function localExemptReturns(config: Config, chain: string): string[] {
  const lines = relayMarks(config).map((m) => `-A ${chain} -m mark --mark ${hex(m)} -j RETURN`);
  if (config.firewall.exemptUser !== "") {
    lines.push(`-A ${chain} -m owner --uid-owner ${config.firewall.exemptUser} -j RETURN`);
  }
  const cgroup = cgroupPath(config);
  if (cgroup) lines.push(`-A ${chain} -m cgroup --path ${cgroup.path} -j RETURN`);
  return lines;
}

/** `-i IF` per configured interface, or `! -i lo` for all but loopback. */
function inputInterfaces(interfaces: string[]): string[] {
  return interfaces.length === 0 ? ["! -i lo"] : interfaces.map((i) => `-i ${i}`);
}

/** The tables (mangle, and nat when a redirect listener needs it) with their rules. */
function tables(config: Config, family: Family): { mangle: string[]; nat: string[] | null } {
  const gateway = interceptsForwarded(config);
  const local = interceptsLocal(config);
  const rules = listenersOf(config, family);
  const tproxyMark = `${hex(config.tproxyMark)}/0xffffffff`;
  // The relay's own marks (config.mark and the direct outbounds'): see relayMarks.
  const marks = relayMarks(config);

  const pre: string[] = [];
  const tcp = config.listeners.filter((l) => l.protocol === "tcp");
  if (tcp.some((l) => l.mode === "tproxy" || l.source === "client")) {
    // As nft's first rule: packets of transparent TCP sockets that exist here (not a
    // bare SYN, which the TPROXY rule gives the listener) are delivered to them.
    pre.push(
      `-A ${PRE} -p tcp -m tcp ! --tcp-flags SYN,ACK SYN -m socket --transparent -j ${DIVERT}`,
    );
  }
  const udpClientSource = hasUdpClientSource(config);
  if (udpClientSource) {
    // As nft: the server's replies to UDP upstream sockets bound to the client's
    // address (reply direction; sockets on a wildcard address ignored, the default).
    pre.push(`-A ${PRE} -p udp -m conntrack --ctdir REPLY -m socket --transparent -j ${DIVERT}`);
  }
  // With client-source UDP the relay's datagrams share the client's conntrack entry
  // (same 4-tuple) and mark it: only replies may return here (src/rules/nft.ts).
  const replies = udpClientSource ? "-m conntrack --ctdir REPLY " : "";
  for (const m of marks) pre.push(`-A ${PRE} ${replies}-m connmark --mark ${hex(m)} -j RETURN`);
  pre.push(...addressTypeReturns(PRE, family));
  pre.push(...bypassReturns(config, PRE, family));
  const localPre: string[] = [];
  const out = marks.map(
    (m) =>
      `-A ${OUT} -m mark --mark ${hex(m)} -m conntrack --ctstate NEW --ctdir ORIGINAL ` +
      `-j CONNMARK --set-xmark ${hex(m)}/0xffffffff`,
  );
  const localOut: string[] = [];
  const natPre: string[] = [];
  const natOut: string[] = [];
  for (const rule of rules) {
    const l = rule.listener;
    const comment = `-m comment --comment ${l.name}`;
    const tproxy = `-j TPROXY --on-port ${l.port} --on-ip ${l.address} --tproxy-mark ${tproxyMark}`;
    for (const ports of multiportLists(rule.portRanges)) {
      const what = `-p ${l.protocol} -m multiport --dports ${ports} ${comment}`;
      if (isRedirect(rule)) {
        if (gateway) {
          for (const iif of inputInterfaces(rule.interfaces)) {
            natPre.push(`-A ${NAT_PRE} ${iif} ${what} -j REDIRECT --to-ports ${l.port}`);
          }
        }
        if (local) natOut.push(`-A ${NAT_OUT} ${what} -j REDIRECT --to-ports ${l.port}`);
        continue;
      }
      if (gateway) {
        for (const iif of inputInterfaces(rule.interfaces)) {
          pre.push(`-A ${PRE} ${iif} ${what} ${tproxy}`);
        }
      }
      if (local) {
        const marked = `-m mark --mark ${hex(config.tproxyMark)}`;
        localPre.push(
          `-A ${PRE} -i lo -p ${l.protocol} ${marked} -m multiport --dports ${ports} ` +
            `${comment} ${tproxy}`,
        );
        localOut.push(`-A ${OUT} ${what} -j MARK --set-xmark ${tproxyMark}`);
      }
    }
  }
  pre.push(...localPre);
  if (localOut.length > 0) {
    out.push(...localExemptReturns(config, OUT));
    out.push(`-A ${OUT} -m conntrack --ctdir REPLY -j RETURN`);
    out.push(...addressTypeReturns(OUT, family));
    out.push(...bypassReturns(config, OUT, family));
    out.push(...localOut);
  }
  const mangle = [
    "*mangle",
    `:${PRE} - [0:0]`,
    `:${OUT} - [0:0]`,
    `:${DIVERT} - [0:0]`,
    ...pre,
    ...out,
    `-A ${DIVERT} -j MARK --set-xmark ${tproxyMark}`,
    `-A ${DIVERT} -j ACCEPT`,
  ];
  if (natPre.length === 0 && natOut.length === 0) return { mangle, nat: null };
  const nat = ["*nat"];
  if (natPre.length > 0) nat.push(`:${NAT_PRE} - [0:0]`);
  if (natOut.length > 0) nat.push(`:${NAT_OUT} - [0:0]`);
  if (natPre.length > 0) {
    for (const m of marks) nat.push(`-A ${NAT_PRE} -m connmark --mark ${hex(m)} -j RETURN`);
    nat.push(...addressTypeReturns(NAT_PRE, family));
    nat.push(...bypassReturns(config, NAT_PRE, family), ...natPre);
  }
  if (natOut.length > 0) {
    nat.push(...localExemptReturns(config, NAT_OUT));
    nat.push(...addressTypeReturns(NAT_OUT, family));
    nat.push(...bypassReturns(config, NAT_OUT, family), ...natOut);
  }
  return { mangle, nat };
}

/** The jump rules from the built-in chains into ours, for this config and family. */
export function iptablesJumps(config: Config, family: Family): JumpRule[] {
  const spec = (target: string) => ["-m", "comment", "--comment", JUMP_COMMENT, "-j", target];
  const jumps: JumpRule[] = [
    { table: "mangle", chain: "PREROUTING", spec: spec(PRE) },
    { table: "mangle", chain: "OUTPUT", spec: spec(OUT) },
  ];
  const { nat } = tables(config, family);
  if (nat?.includes(`:${NAT_PRE} - [0:0]`)) {
    jumps.push({ table: "nat", chain: "PREROUTING", spec: spec(NAT_PRE) });
  }
  if (nat?.includes(`:${NAT_OUT} - [0:0]`)) {
    jumps.push({ table: "nat", chain: "OUTPUT", spec: spec(NAT_OUT) });
  }
  return jumps;
}

/**
 * iptables-restore --noflush input for one family (4: iptables, 6: ip6tables): our
 * chains, flushed and refilled, without the jump rules (iptablesJumps; applyRules adds
 * the missing ones to the same transaction). Deterministic: the same config gives the
 * same text.
 */
export function iptablesRestoreInput(config: Config, family: Family): string {
  return withJumps(config, family, []);
}

/**
 * The restore input with `jumps` inserted at the top of their built-in chains, and our
 * chains that iptables-save shows (`saved`, by table) but this config no longer declares
 * deleted with their jump rules, in the same transaction.
 */
export function withJumps(
  config: Config,
  family: Family,
  jumps: JumpRule[],
  saved: Map<string, { chains: string[]; jumps: string[] }> = new Map(),
): string {
  const { mangle, nat } = tables(config, family);
  const lines: string[] = [];
  for (const [table, rules] of [
    ["mangle", mangle],
    ["nat", nat ?? ["*nat"]],
  ] as const) {
    const declared = new Set(rules.filter((l) => l.startsWith(":")).map((l) => l.split(" ")[0]));
    const old = saved.get(table) ?? { chains: [], jumps: [] };
    const stale = old.chains.filter((c) => !declared.has(`:${c}`));
    const staleJumps = old.jumps.filter((l) => stale.some((c) => l.endsWith(`-j ${c}`)));
    const deletions = deletionLines({ chains: stale, jumps: staleJumps });
    const inserted = jumps
      .filter((j) => j.table === table)
      .map((j) => `-I ${j.chain} 1 ${j.spec.join(" ")}`);
    if (rules.length === 1 && deletions.length === 0) continue; // no nat section at all
    lines.push(...rules, ...deletions, ...inserted, "COMMIT");
  }
  return lines.join("\n") + "\n";
}

/** The iptables part of the printed script: restore input, then each jump if absent. */
export function iptablesScript(config: Config): string {
  const parts: string[] = [];
  for (const family of [4, 6] as const) {
    const tool = iptablesCommand(family, "");
    parts.push(`${iptablesCommand(family, "-restore")} --noflush <<'IPTABLES'`);
    parts.push(`${iptablesRestoreInput(config, family)}IPTABLES`);
    for (const j of iptablesJumps(config, family)) {
      const spec = j.spec.join(" ");
      parts.push(
        `${tool} -t ${j.table} -C ${j.chain} ${spec} 2>/dev/null ||\n` +
          `  ${tool} -t ${j.table} -I ${j.chain} 1 ${spec}`,
      );
    }
  }
  return parts.join("\n") + "\n";
}

/**
 * From iptables-save output of one table: our chains (by prefix) and the rules of other
 * chains that jump into ours (as saved, "-A CHAIN ..."), to delete.
 */
export function ourIptablesState(saved: string): { chains: string[]; jumps: string[] } {
  const chains: string[] = [];
  const jumps: string[] = [];
  for (const line of saved.split("\n")) {
    const declared = /^:(\S+) /.exec(line);
    if (declared?.[1].startsWith(CHAIN_PREFIX)) chains.push(declared[1]);
    const rule = /^-A (\S+) .*-j (\S+)/.exec(line);
    if (rule && !rule[1].startsWith(CHAIN_PREFIX) && rule[2].startsWith(CHAIN_PREFIX)) {
      jumps.push(line);
    }
  }
  return { chains, jumps };
}

/** Restore input lines that delete what ourIptablesState found (jumps first, then chains). */
export function deletionLines(state: { chains: string[]; jumps: string[] }): string[] {
  return [
    ...state.jumps.map((line) => `-D${line.slice(2)}`),
    ...state.chains.map((c) => `-F ${c}`),
    ...state.chains.map((c) => `-X ${c}`),
  ];
}
