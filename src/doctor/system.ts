// The host's side of running the relay: kernel support (TPROXY, socket match, policy
// routing), the process's capabilities and descriptor limit, and the sysctls that decide
// whether intercepted packets arrive at all.
import type { Config } from "../config/load.ts";
import {
  CAP,
  effectiveCapabilities,
  hasCapability,
  privilegedPortReason,
  rawSocketReason,
} from "../sys/capabilities.ts";
import { descriptorsWanted, fitToDescriptors } from "../config/limits.ts";
import { hasUdpClientSource } from "../rules/bypass.ts";
import { type Check, complaint, type Host, notPermitted, readSysctl, sysctlName } from "./check.ts";

/**
 * A throwaway table that uses every expression the relay's rules need; checked, not
 * loaded. Client-source UDP adds `ct direction` and `socket wildcard` (Linux 5.10).
 */
function nftProbe(udpClientSource: boolean): string {
  const udp = udpClientSource
    ? "    meta l4proto udp ct direction reply socket transparent 1 socket wildcard 0 accept\n"
    : "";
  return `table inet trelay_doctor_probe {
  chain probe {
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto tcp socket transparent 1 accept
${udp}    meta nfproto ipv4 meta l4proto udp tproxy ip to 127.0.0.1:9 accept
    meta nfproto ipv6 meta l4proto udp tproxy ip6 to [::1]:9 accept
  }
}
`;
}

/** The same for iptables: a throwaway chain, `iptables-restore --test` (nothing loaded). */
function iptablesProbe(loopback: string, udpClientSource: boolean): string {
  const udp = udpClientSource
    ? `-A TRELAY_DOCTOR_PROBE -p udp -m conntrack --ctdir REPLY -m socket --transparent ` +
      `-j ACCEPT\n`
    : "";
  return (
    `*mangle\n:TRELAY_DOCTOR_PROBE - [0:0]\n` +
    `-A TRELAY_DOCTOR_PROBE -p tcp -m socket --transparent -j ACCEPT\n` +
    udp +
    `-A TRELAY_DOCTOR_PROBE -p udp -j TPROXY --on-port 9 --on-ip ${loopback} ` +
    `--tproxy-mark 0x1/0x1\nCOMMIT\n`
  );
}

const KERNEL_FIX =
  "a kernel with nf_tproxy and the socket match (CONFIG_NFT_TPROXY, CONFIG_NFT_SOCKET; " +
  "iptables: CONFIG_NETFILTER_XT_TARGET_TPROXY, CONFIG_NETFILTER_XT_MATCH_SOCKET): " +
  "`modprobe nft_tproxy nft_socket` (iptables: `modprobe xt_TPROXY xt_socket`)";

/** TPROXY and the socket match, as the configured firewall backend loads them. */
export function kernelSupport(config: Config, host: Host): Check[] {
  const udp = hasUdpClientSource(config);
  if (config.firewall.backend === "nft") {
    const r = host.run(["nft", "-c", "-f", "-"], nftProbe(udp));
    return [probeResult("kernel: nft tproxy + socket", r, "nft")];
  }
  return [
    probeResult(
      "kernel: iptables TPROXY + socket (IPv4)",
      host.run(["iptables-restore", "--test"], iptablesProbe("127.0.0.1", udp)),
      "iptables",
    ),
    probeResult(
      "kernel: iptables TPROXY + socket (IPv6)",
      host.run(["ip6tables-restore", "--test"], iptablesProbe("::1", udp)),
      "iptables",
    ),
  ];
}

function probeResult(
  name: string,
  r: { status: number; stderr: string },
  tool: "nft" | "iptables",
): Check {
  if (r.status === 0)
    return { name, status: "pass", detail: "a throwaway ruleset loads (checked)" };
  if (notPermitted(r)) {
    return {
      name,
      status: "warn",
      detail: `not checked: ${complaint(r)} (see capabilities)`,
      fix: "run doctor with CAP_NET_ADMIN (as root)",
    };
  }
  if (r.status === -1 || /not found/i.test(r.stderr)) {
    const pkg = tool === "nft" ? "nftables" : "iptables";
    return {
      name,
      status: "fail",
      detail: `${tool} is not installed`,
      fix: `apt-get install ${pkg}`,
    };
  }
  return { name, status: "fail", detail: `the kernel refused: ${complaint(r)}`, fix: KERNEL_FIX };
}

/** `ip rule` works for both families (CONFIG_IP_MULTIPLE_TABLES, CONFIG_IPV6_MULTIPLE_TABLES). */
export function policyRouting(host: Host): Check {
  const name = "kernel: policy routing";
  const broken: string[] = [];
  for (const family of ["-4", "-6"]) {
    const r = host.run(["ip", family, "rule", "list"]);
    if (r.status !== 0) broken.push(`ip ${family} rule list: ${complaint(r)}`);
  }
  if (broken.length === 0) return { name, status: "pass", detail: "ip -4/-6 rule list work" };
  return {
    name,
    status: "fail",
    detail: broken.join("; "),
    fix:
      "install iproute2; a kernel with CONFIG_IP_MULTIPLE_TABLES and " +
      "CONFIG_IPV6_MULTIPLE_TABLES",
  };
}

/** A field of /proc/self/status ("CapEff", "Uid"), or null. */
function statusField(status: string, field: string): string | null {
  const line = status.split("\n").find((l) => l.startsWith(`${field}:`));
  return line ? line.slice(field.length + 1).trim() : null;
}

/**
 * CAP_NET_ADMIN in the effective set of this process (IP_TRANSPARENT on the listeners,
 * SO_MARK on upstream sockets). Read even as root: a container or `capsh --drop` may
 * have taken it away.
 */
export function capabilities(config: Config, host: Host): Check {
  const name = "capabilities";
  const status = host.readFile("/proc/self/status");
  const capEff = status === null ? null : statusField(status, "CapEff");
  const mask = status === null ? null : effectiveCapabilities(status);
  if (status === null || capEff === null || mask === null) {
    return { name, status: "warn", detail: "cannot read CapEff from /proc/self/status" };
  }
  const euid = statusField(status, "Uid")?.split(/\s+/)[1] ?? "?";
  const has = hasCapability(mask, CAP.netAdmin);
  const lowPort = privilegedPortReason(config);
  const raw = rawSocketReason(config);
  if (has && raw !== null && !hasCapability(mask, CAP.netRaw)) {
    return {
      name,
      status: "fail",
      detail: `CAP_NET_ADMIN but not CAP_NET_RAW, which the config needs: ${raw}`,
      fix:
        "grant it too: systemd `AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW` " +
        "(`bun run relay service print` adds it), or setpriv `--ambient-caps=+net_admin," +
        "+net_raw`; or make the rule `drop` instead of `reject`",
    };
  }
  if (has && lowPort !== null && !hasCapability(mask, CAP.netBindService)) {
    return {
      name,
      status: "fail",
      detail:
        `CAP_NET_ADMIN but not CAP_NET_BIND_SERVICE, and the config binds a port below ` +
        `1024 (${lowPort})`,
      fix:
        "grant it too: systemd `AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE` " +
        "(`bun run relay service print` adds it), or setpriv " +
        "`--ambient-caps=+net_admin,+net_bind_service`",
    };
  }
  const scope = "of this process (run doctor as the relay runs: same user, same service)";
  if (has && euid === "0") {
    return {
      name,
      status: "pass",
      detail:
        `CAP_NET_ADMIN in the effective set ${scope}; running as root, but the relay ` +
        "needs only CAP_NET_ADMIN" +
        (raw ? " and CAP_NET_RAW (a rule rejects UDP)" : " (not CAP_NET_RAW)") +
        ": " +
        "it can run as an unprivileged user with AmbientCapabilities",
    };
  }
  if (has) {
    return {
      name,
      status: "pass",
      detail:
        `CAP_NET_ADMIN in the effective set ${scope}` +
        (raw ? " (CAP_NET_RAW too: a rule rejects UDP)" : " (CAP_NET_RAW is not needed)"),
    };
  }
  return {
    name,
    status: "fail",
    detail: `CAP_NET_ADMIN is not in the effective set ${scope} (CapEff ${capEff}, uid ${euid})`,
    fix:
      "grant it: systemd `AmbientCapabilities=CAP_NET_ADMIN` and " +
      "`CapabilityBoundingSet=CAP_NET_ADMIN`; by hand (as root): `setpriv --reuid USER " +
      "--regid GROUP --init-groups --inh-caps=+net_admin --ambient-caps=+net_admin bun " +
      "run relay ...`; or run as root",
  };
}

/** [soft, hard] from /proc/self/limits ("unlimited": Infinity), or null. */
export function parseNofile(limits: string): [number, number] | null {
  const line = limits.split("\n").find((l) => l.startsWith("Max open files"));
  const m = line?.match(/^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/);
  if (!m) return null;
  const value = (s: string) => (s === "unlimited" ? Number.POSITIVE_INFINITY : Number(s));
  return [value(m[1]), value(m[2])];
}

/**
 * RLIMIT_NOFILE against what the configured bounds need (src/config/limits.ts). The
 * relay raises its soft limit up to the hard one at start, so the hard limit decides;
 * below what the bounds need, the relay would lower them (or not start).
 */
export function descriptors(config: Config, host: Host): Check {
  const name = "descriptors (RLIMIT_NOFILE)";
  const text = host.readFile("/proc/self/limits");
  const limits = text === null ? null : parseNofile(text);
  if (limits === null) return { name, status: "warn", detail: "cannot read /proc/self/limits" };
  const [soft, hard] = limits;
  const wanted = descriptorsWanted(config);
  const shown = `soft ${soft}, hard ${hard}`;
  if (hard >= wanted) {
    const raised = soft < wanted ? ` (the relay raises the soft limit to ${wanted})` : "";
    return {
      name,
      status: "pass",
      detail: `${shown}; the configured bounds need ${wanted}${raised}`,
    };
  }
  const fix =
    `raise the limit to at least ${wanted}: systemd \`LimitNOFILE=${wanted}\`; a shell ` +
    `\`ulimit -Hn ${wanted}; ulimit -n ${wanted}\` (as root); or lower udp.sessionsMax / ` +
    "udp.replySocketsMax / tcp.connectionsMax in the config";
  let outcome: string;
  try {
    const fitted = fitToDescriptors(config, hard);
    outcome = `the relay would start with ${fitted.notes.join("; ")}`;
  } catch (err) {
    outcome = `the relay would not start: ${(err as Error).message}`;
  }
  return {
    name,
    status: "fail",
    detail: `${shown}; the configured bounds need ${wanted}: ${outcome}`,
    fix,
  };
}

/** The address families the rules intercept (or, without intercept rules, listen on). */
function families(config: Config): { v4: boolean; v6: boolean } {
  const listeners =
    config.intercept.length > 0 ? config.intercept.map((r) => r.listener) : config.listeners;
  return { v4: listeners.some((l) => !l.ipv6), v6: listeners.some((l) => l.ipv6) };
}

const gateway = (config: Config) => config.firewall.mode !== "local";
const PERSIST = "; persist it in /etc/sysctl.d/90-transparent-relay.conf";

/** Gateway mode forwards what it does not intercept: forwarding on for each family. */
export function forwarding(config: Config, host: Host): Check[] {
  if (!gateway(config)) return [];
  const { v4, v6 } = families(config);
  const wanted: string[][] = [];
  if (v4) wanted.push(["net", "ipv4", "ip_forward"]);
  if (v6) wanted.push(["net", "ipv6", "conf", "all", "forwarding"]);
  return wanted.map((segments) => {
    const name = `sysctl ${sysctlName(segments)}`;
    const value = readSysctl(host, segments);
    if (value === "1") return { name, status: "pass", detail: "1 (gateway mode forwards)" };
    return {
      name,
      status: "fail",
      detail:
        `${value ?? "unreadable"}: gateway mode needs forwarding (clients route ` +
        "through this host; what is not intercepted is forwarded)",
      fix: `sysctl -w ${sysctlName(segments)}=1${PERSIST}`,
    };
  });
}

/** Interfaces in /proc/sys/net/ipv4/conf (all but the pseudo-entries and loopback). */
function hostInterfaces(host: Host): string[] {
  const skip = new Set(["all", "default", "lo"]);
  return host
    .listDir("/proc/sys/net/ipv4/conf")
    .filter((n) => !skip.has(n))
    .sort();
}

/**
 * rp_filter: strict (1) reverse-path filtering drops intercepted IPv4 packets in some
 * set-ups (asymmetric routes; local mode's packets re-entering on lo with a mark). The
 * kernel applies max(all, interface): either being 1 (with the other 0 or 1) is strict.
 */
export function rpFilter(config: Config, host: Host): Check[] {
  if (!families(config).v4) return [];
  const ipv4 = config.intercept.filter((r) => !r.listener.ipv6);
  const names = new Set<string>();
  if (gateway(config)) {
    const all = ipv4.length === 0 || ipv4.some((r) => r.interfaces.length === 0);
    for (const i of all ? hostInterfaces(host) : ipv4.flatMap((r) => r.interfaces)) names.add(i);
  }
  if (config.firewall.mode !== "gateway") names.add("lo");
  const conf = (iface: string) => ["net", "ipv4", "conf", iface, "rp_filter"];
  const allValue = Number(readSysctl(host, conf("all")) ?? "0");
  const checks: Check[] = [];
  const missing: string[] = [];
  for (const iface of [...names].sort()) {
    const raw = readSysctl(host, conf(iface));
    if (raw === null) {
      missing.push(iface);
      continue;
    }
    const own = Number(raw);
    const effective = Math.max(allValue, own);
    const name = `sysctl rp_filter ${iface}`;
    const shown = `all=${allValue}, ${iface}=${own}: effective ${effective}`;
    if (effective !== 1) {
      const what = effective === 0 ? "off" : "loose";
      checks.push({ name, status: "pass", detail: `${shown} (${what})` });
      continue;
    }
    const fixes = [conf(iface), conf("all")]
      .filter((s) => readSysctl(host, s) === "1")
      .map((s) => `sysctl -w ${sysctlName(s)}=2`);
    checks.push({
      name,
      status: "fail",
      detail: `${shown} (strict): strict reverse-path filtering can drop intercepted packets`,
      fix: `${fixes.join("; ")} (2: loose; 0: off)${PERSIST}`,
    });
  }
  if (missing.length > 0) {
    checks.push({
      name: "sysctl rp_filter",
      status: "warn",
      detail:
        `no such interface (yet): ${missing.join(", ")}; the rules match it by name ` +
        "once it exists",
      fix: "check the interface names in intercept[].interfaces; run doctor again once up",
    });
  }
  const fallback = readSysctl(host, conf("default"));
  if (gateway(config) && fallback === "1" && allValue !== 1) {
    checks.push({
      name: "sysctl rp_filter default",
      status: "warn",
      detail:
        "net.ipv4.conf.default.rp_filter=1: interfaces created later (a VLAN, a PPP link " +
        "coming back) start strict",
      fix: `sysctl -w net.ipv4.conf.default.rp_filter=2${PERSIST}`,
    });
  }
  return checks;
}

/**
 * route_localnet: not needed for TPROXY to a listener on 127.0.0.1 (the packet keeps its
 * original destination; only the socket lookup uses the listener's address). On, it lets
 * packets from the network address 127.0.0.0/8: unusual, and worth a look.
 */
export function routeLocalnet(config: Config, host: Host): Check[] {
  if (!gateway(config)) return [];
  const loopback = config.intercept.some(
    (r) => !r.listener.ipv6 && r.listener.address.startsWith("127."),
  );
  if (!loopback) return [];
  const name = "sysctl route_localnet";
  const localnet = (iface: string) => ["net", "ipv4", "conf", iface, "route_localnet"];
  const on = ["all", ...hostInterfaces(host)].filter(
    (iface) => readSysctl(host, localnet(iface)) === "1",
  );
  if (on.length === 0) {
    return [
      {
        name,
        status: "pass",
        detail:
          "0: not needed; TPROXY hands packets to the 127.0.0.1 listener without it " +
          "(they keep their original destination)",
      },
    ];
  }
  return [
    {
      name,
      status: "warn",
      detail:
        `on for ${on.join(", ")}: the relay does not need it (TPROXY keeps the original ` +
        "destination), and it accepts 127.0.0.0/8 packets from the network",
      fix:
        `${on.map((i) => `sysctl -w ${sysctlName(localnet(i))}=0`).join("; ")} ` +
        "(unless something else, a DNAT to 127.0.0.1, needs it)",
    },
  ];
}
