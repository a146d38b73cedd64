// Shared by the forced-DNS end-to-end tests (dns_forced.test.ts, dns_forced_limits.test.ts):
// the lab's resolvers, the relay config they run against, and small probes.
import { dnsmasqOn, kdigUdp, LAB } from "../lab/netns.ts";
import { waitFor } from "../lab/wait_for.ts";
import type { RelayLab } from "./harness.ts";

export const [A4, B4, C4] = LAB.serverExtra4;
export const [A6, B6, C6] = LAB.serverExtra6;
export const SOCKETS_PER_TARGET = 4;

/** A TXT record of 3 strings of 200 bytes: more than 512 bytes of answer. */
const BIG_TXT = ["a", "b", "c"].map((c) => `"${c.repeat(200)}"`).join(",");

/** The lab's dnsmasq with room for many queries and a TXT answer too big for 512 bytes. */
export function dnsmasq(address4: string, address6: string, records: string[][]): string[] {
  return dnsmasqOn(address4, address6, records, [
    "--dns-forward-max=10000",
    `--txt-record=big.test,${BIG_TXT}`,
  ]);
}

export const forward = (name: string, targets: string[], healthCheck = {}) => ({
  name,
  type: "forward",
  targets,
  healthCheck,
});

export const config = (inFlightMax: number, flowLogPath = "") => ({
  listeners: [
    { name: "udp4", address: "127.0.0.1", port: 12345 },
    { name: "udp6", address: "::1", port: 12345 },
  ],
  intercept: [
    { listener: "udp4", ports: [53], interfaces: ["r0"] },
    { listener: "udp6", ports: [53], interfaces: ["r0"] },
  ],
  udp: {
    dnsUpstreamSocketsPerTarget: SOCKETS_PER_TARGET,
    dnsQueriesInFlightMax: inFlightMax,
    idleTimeoutMsByPort: { "53": 300 },
  },
  flowLog: { path: flowLogPath },
  outbounds: [
    forward("resolver", [`${A4}:53`, `[${A6}]:53`]),
    forward("failover", [`${C4}:54`, `${B4}:53`, `[${C6}]:54`, `[${B6}]:53`], {
      answerTimeoutMs: 300,
      failuresMax: 1,
      retryIntervalMs: 600_000,
    }),
    forward("spoofer", [`${C4}:53`, `[${C6}]:53`], { answerTimeoutMs: 2000 }),
    forward("silent", [`${C4}:55`], { answerTimeoutMs: 60_000 }),
    // Nothing listens there and there is no other target: a query times out, unretried.
    forward("dead", [`${C4}:56`], { answerTimeoutMs: 300 }),
    { name: "blocked", type: "dnsAnswer", rcode: "NXDOMAIN" },
    {
      name: "pinned",
      type: "dnsAnswer",
      rcode: "NOERROR",
      address4: "198.18.1.99",
      address6: "2001:2:0:2::99",
      ttlS: 30,
    },
  ],
  rules: [
    { name: "f", names: { exact: ["f.test"] }, action: "failover" },
    { name: "s", names: { exact: ["s.test"] }, action: "spoofer" },
    { name: "q", names: { exact: ["q.test"] }, action: "silent" },
    { name: "t", names: { exact: ["t.test"] }, action: "dead" },
    { name: "block", protocol: "udp", names: { suffix: ["blocked.test"] }, action: "blocked" },
    { name: "pin", protocol: "udp", names: { exact: ["pinned.test"] }, action: "pinned" },
    // Passed to the resolver asked, through a session (not forced).
    { name: "pass", names: { exact: ["pass.test"] }, action: "direct" },
    { name: "dns", ports: [53], action: "resolver" },
  ],
});

export function kdig(env: RelayLab, server: string, name: string, type: string, timeoutS = 2) {
  return kdigUdp(env.lab, server, name, type, timeoutS);
}

export async function udp(env: RelayLab) {
  return (await env.relay!.metrics()).udp;
}

/**
 * Waits until every "address:port" of `endpoints` ("[v6]:port" for IPv6) has a UDP socket
 * bound in the server namespace: each resolver is up, not just the first to bind port 53.
 */
export async function waitForResolvers(env: RelayLab, endpoints: string[]): Promise<void> {
  const { lab } = env;
  await waitFor(
    () => lab.exec(lab.server, ["ss", "-Huln"], undefined, true).stdout,
    (bound) => endpoints.every((e) => bound.includes(` ${e} `)),
    { what: `UDP sockets bound on ${endpoints.join(", ")}`, timeoutMs: 5000 },
  );
}
