// A throwaway three-namespace lab for the demo, the end-to-end tests and the benchmarks:
//
//   client ns                 router ns (relay, nft TPROXY)              server ns
//   c0 198.18.0.2/24  <-veth->  r0 198.18.0.1/24   r1 198.18.1.1/24  <-veth->  s0 198.18.1.2/24
//      2001:2:0:1::2/64            2001:2:0:1::1/64   2001:2:0:2::1/64             2001:2:0:2::2/64
//
// Only the benchmark ranges 198.18.0.0/15 and 2001:2::/48 (RFC 2544, RFC 5180), only
// inside namespaces this lab made, with unique names. destroy() removes everything;
// callers run it in `finally`.
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { waitFor } from "./wait_for.ts";

export const LAB = {
  client4: "198.18.0.2",
  routerClient4: "198.18.0.1",
  routerServer4: "198.18.1.1",
  server4: "198.18.1.2",
  client6: "2001:2:0:1::2",
  routerClient6: "2001:2:0:1::1",
  routerServer6: "2001:2:0:2::1",
  server6: "2001:2:0:2::2",
  /** Extra server addresses, so flows can have several original destinations. */
  serverExtra4: ["198.18.1.3", "198.18.1.4", "198.18.1.5"],
  serverExtra6: ["2001:2:0:2::3", "2001:2:0:2::4", "2001:2:0:2::5"],
  clientIf: "c0",
  routerClientIf: "r0",
  routerServerIf: "r1",
  serverIf: "s0",
} as const;

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function run(argv: string[], input?: string, allowFail = false): RunResult {
  const r = spawnSync(argv[0], argv.slice(1), { input, encoding: "utf8", timeout: 30_000 });
  const result = { status: r.status ?? -1, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
  if (!allowFail && result.status !== 0) {
    throw new Error(
      `${argv.join(" ")} -> exit ${result.status}: ${result.stderr.trim() || r.error}`,
    );
  }
  return result;
}

/** Why this machine cannot run the lab, or null when it can. */
export function labUnavailableReason(): string | null {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, nft, TPROXY)";
  const packages: Record<string, string> = {
    ip: "iproute2",
    nft: "nftables",
    "iptables-restore": "iptables",
    "ip6tables-restore": "iptables",
  };
  for (const [tool, debian] of Object.entries(packages)) {
    if (run(["sh", "-c", `command -v ${tool}`], undefined, true).status !== 0) {
      return `needs ${tool} (Debian: apt-get install ${debian})`;
    }
  }
  const name = `trl-probe-${randomBytes(3).toString("hex")}`;
  const made = run(["ip", "netns", "add", name], undefined, true);
  if (made.status !== 0) return `cannot create a network namespace: ${made.stderr.trim()}`;
  run(["ip", "netns", "del", name], undefined, true);
  return null;
}

/**
 * dnsmasq on one IPv4 and one IPv6 address, port 53, no upstream and no /etc/hosts,
 * answering each record's name with its addresses ([name, address4, address6]); `extra`:
 * more dnsmasq options.
 */
export function dnsmasqOn(
  address4: string,
  address6: string,
  records: string[][],
  extra: string[] = [],
): string[] {
  return [
    "dnsmasq",
    "--keep-in-foreground",
    "--no-resolv",
    "--no-hosts",
    "--bind-interfaces",
    `--listen-address=${address4}`,
    `--listen-address=${address6}`,
    "--port=53",
    "--user=root",
    "--pid-file",
    "--log-facility=-",
    ...extra,
    ...records.map((r) => `--host-record=${r.join(",")}`),
  ];
}

/** dnsmasq as the lab's DNS server, on the server's addresses, answering `name`. */
export function dnsmasqArgv(name: string, address4: string, address6: string): string[] {
  return dnsmasqOn(LAB.server4, LAB.server6, [[name, address4, address6]]);
}

/** kdig @server name type over UDP from the client namespace: its output (never throws). */
export function kdigUdp(lab: Lab, server: string, name: string, type: string, timeoutS: number) {
  const argv = ["kdig", `@${server}`, name, type, "+notcp", `+timeout=${timeoutS}`, "+retry=0"];
  return lab.exec(lab.client, argv, undefined, true).stdout;
}

/**
 * Applies an nft script twice in a throwaway namespace (the second time checks that it
 * replaces itself atomically) and returns `nft list table inet TABLE` from it.
 */
export function nftApplyInScratchNamespace(script: string, table: string): string {
  const ns = `trl-nft-${randomBytes(4).toString("hex")}`;
  run(["ip", "netns", "add", ns]);
  try {
    run(["ip", "netns", "exec", ns, "nft", "-f", "-"], script);
    run(["ip", "netns", "exec", ns, "nft", "-f", "-"], script);
    return run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", table]).stdout;
  } finally {
    run(["ip", "netns", "del", ns], undefined, true);
  }
}

export class Lab {
  readonly id: string;
  readonly client: string;
  readonly router: string;
  readonly server: string;
  private destroyed = false;

  private constructor(id: string) {
    this.id = id;
    this.client = `trl-${id}-client`;
    this.router = `trl-${id}-router`;
    this.server = `trl-${id}-server`;
  }

  /** Builds the namespaces, links and addresses; no interception rules yet. */
  static create(): Lab {
    const lab = new Lab(randomBytes(4).toString("hex"));
    try {
      lab.build();
    } catch (err) {
      lab.destroy();
      throw err;
    }
    return lab;
  }

  private build(): void {
    const { client, router, server } = this;
    for (const ns of [client, router, server]) {
      run(["ip", "netns", "add", ns]);
      // No duplicate address detection: a tentative link-local address delays the first
      // neighbour solicitation by up to 2 s, which would look like relay latency.
      this.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
      this.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]);
      this.exec(ns, ["ip", "link", "set", "lo", "up"]);
    }
    // veth pairs created straight into the namespaces: no names in the root namespace.
    run([
      "ip",
      "link",
      "add",
      LAB.clientIf,
      "netns",
      client,
      "type",
      "veth",
      "peer",
      "name",
      LAB.routerClientIf,
      "netns",
      router,
    ]);
    run([
      "ip",
      "link",
      "add",
      LAB.routerServerIf,
      "netns",
      router,
      "type",
      "veth",
      "peer",
      "name",
      LAB.serverIf,
      "netns",
      server,
    ]);
    const addr = (ns: string, dev: string, cidr: string) =>
      this.exec(ns, [
        "ip",
        "addr",
        "add",
        cidr,
        "dev",
        dev,
        ...(cidr.includes(":") ? ["nodad"] : []),
      ]);
    addr(client, LAB.clientIf, `${LAB.client4}/24`);
    addr(client, LAB.clientIf, `${LAB.client6}/64`);
    addr(router, LAB.routerClientIf, `${LAB.routerClient4}/24`);
    addr(router, LAB.routerClientIf, `${LAB.routerClient6}/64`);
    addr(router, LAB.routerServerIf, `${LAB.routerServer4}/24`);
    addr(router, LAB.routerServerIf, `${LAB.routerServer6}/64`);
    addr(server, LAB.serverIf, `${LAB.server4}/24`);
    addr(server, LAB.serverIf, `${LAB.server6}/64`);
    for (const a of LAB.serverExtra4) addr(server, LAB.serverIf, `${a}/24`);
    for (const a of LAB.serverExtra6) addr(server, LAB.serverIf, `${a}/64`);
    for (const [ns, dev] of [
      [client, LAB.clientIf],
      [router, LAB.routerClientIf],
      [router, LAB.routerServerIf],
      [server, LAB.serverIf],
    ]) {
      this.exec(ns, ["ip", "link", "set", dev, "up"]);
    }
    this.exec(client, ["ip", "route", "add", "default", "via", LAB.routerClient4]);
    this.exec(client, ["ip", "-6", "route", "add", "default", "via", LAB.routerClient6]);
    this.exec(server, ["ip", "route", "add", "default", "via", LAB.routerServer4]);
    this.exec(server, ["ip", "-6", "route", "add", "default", "via", LAB.routerServer6]);
    this.exec(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    this.exec(router, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
  }

  /**
   * One ICMP echo client -> server each family (forwarded by the kernel, never
   * intercepted): fills the neighbour caches on every hop. Without it the first IPv6
   * datagram waits ~1 s for neighbour discovery, with or without the relay.
   */
  warmNeighbours(): void {
    this.exec(this.client, ["ping", "-c1", "-W2", LAB.server4]);
    this.exec(this.client, ["ping", "-6", "-c1", "-W2", LAB.server6]);
  }

  /**
   * Gives a namespace its own /etc/hosts (`ip netns exec` bind-mounts /etc/netns/NS/hosts),
   * e.g. so gtlsclient sends a real SNI: it sends "localhost" for a literal address.
   */
  setHosts(ns: string, entries: Array<[address: string, name: string]>): void {
    const dir = `/etc/netns/${ns}`;
    mkdirSync(dir, { recursive: true });
    const lines = ["127.0.0.1 localhost", ...entries.map(([a, n]) => `${a} ${n}`)];
    writeFileSync(join(dir, "hosts"), lines.join("\n") + "\n");
  }

  exec(ns: string, argv: string[], input?: string, allowFail = false): RunResult {
    return run(["ip", "netns", "exec", ns, ...argv], input, allowFail);
  }

  /** Starts a long-running process in a namespace. */
  spawn(ns: string, argv: string[], options: { stdin?: "pipe" | "ignore" } = {}) {
    return Bun.spawn(["ip", "netns", "exec", ns, ...argv], {
      stdin: options.stdin ?? "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
  }

  /** Installs the relay's nft rules and policy routing in the router namespace. */
  installRules(nft: string, ipCommands: string[][]): void {
    this.exec(this.router, ["nft", "-f", "-"], nft);
    for (const argv of ipCommands) this.exec(this.router, argv);
  }

  /** Waits until a UDP socket is bound on `port` in `ns` (ss -uln), bounded by timeoutMs. */
  /**
   * address: a socket bound to exactly that address and port, when another one may hold
   * the port on another address already.
   */
  async waitForUdpPort(
    ns: string,
    port: number,
    timeoutMs = 5000,
    address: string | null = null,
  ): Promise<void> {
    const filter = address === null ? `sport = :${port}` : `sport = :${port} and src ${address}`;
    await waitFor(
      () => this.exec(ns, ["ss", "-Hulnp", filter], undefined, true).stdout.trim(),
      (bound) => bound.length > 0,
      { what: `a socket bound to udp ${address ?? "*"}:${port} in ${ns}`, timeoutMs },
    );
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const ns of [this.client, this.router, this.server]) {
      // Kill what still runs inside, then delete (deleting the ns removes its veths).
      const pids = run(["ip", "netns", "pids", ns], undefined, true).stdout.trim();
      if (pids) run(["kill", "-9", ...pids.split(/\s+/)], undefined, true);
      run(["ip", "netns", "del", ns], undefined, true);
      rmSync(`/etc/netns/${ns}`, { recursive: true, force: true });
    }
  }
}

/**
 * Feeds iptables-restore / ip6tables-restore --noflush inputs to a throwaway namespace
 * (twice: the second must replace the first) and returns iptables-save and
 * ip6tables-save from it.
 */
export function iptablesApplyInScratchNamespace(input4: string, input6: string): string {
  const ns = `trl-ipt-${randomBytes(4).toString("hex")}`;
  run(["ip", "netns", "add", ns]);
  try {
    for (let round = 0; round < 2; round++) {
      run(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], input4);
      run(["ip", "netns", "exec", ns, "ip6tables-restore", "--noflush"], input6);
    }
    const save = (tool: string) => run(["ip", "netns", "exec", ns, tool]).stdout;
    return `${save("iptables-save")}${save("ip6tables-save")}`;
  } finally {
    run(["ip", "netns", "del", ns], undefined, true);
  }
}
