// The demo: `npm run demo` (or `bun run demo` after set-up).
// Builds a throwaway lab (client, router, server namespaces), runs the relay in the
// router with its BUILT-IN DEFAULT configuration (TPROXY listeners on 127.0.0.1:12345
// and [::1]:12345, intercepting DNS udp/53 and QUIC udp/443), sends DNS queries from the
// client to a real DNS server (dnsmasq), downloads a file over real QUIC (ngtcp2's
// gtlsclient -> gtlsserver, HTTP/3), pushes QUIC-sized datagrams through a UDP/443 echo
// server, shows what the client and the relay saw, and tears everything down.
import { join } from "node:path";
import { parseConfig } from "../src/config/load.ts";
import { dnsmasqArgv, Lab, LAB, labUnavailableReason } from "../test/lab/netns.ts";
import { QuicPeers } from "../test/lab/quic_peers.ts";
import { BUN, RelayProcess } from "../test/lab/relay_process.ts";
import { nftRuleset, policyRoutingCommands } from "../src/rules/nft.ts";

const ROOT = join(import.meta.dir, "..");
const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const step = (s: string) => console.log(`\n${bold(`== ${s}`)}`);

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => "  " + r.map((cell, c) => cell.padEnd(widths[c])).join("  ")).join("\n");
}

async function main(): Promise<number> {
  const reason = labUnavailableReason();
  if (reason) {
    console.error(`demo: ${reason}`);
    return 77;
  }
  const config = parseConfig({}); // the built-in default, exactly what `bun run relay` uses
  step("Building the lab: client ── router (relay, nft TPROXY) ── server");
  const lab = Lab.create();
  const children: Array<{ kill(signal?: number): void }> = [];
  let relay: RelayProcess | null = null;
  let quic: QuicPeers | null = null;
  const echo4 = LAB.serverExtra4[0];
  const echo6 = LAB.serverExtra6[0];
  try {
    console.log(`  namespaces ${lab.client}, ${lab.router}, ${lab.server}`);
    console.log(
      `  client ${LAB.client4} / ${LAB.client6}   server ${LAB.server4} / ${LAB.server6}`,
    );
    lab.installRules(nftRuleset(config), policyRoutingCommands(config));
    console.log(
      "  router: nft table inet transparent_relay (tproxy udp 53,443), " +
        `ip rule fwmark 0x${config.tproxyMark.toString(16)} lookup ${config.routeTable}`,
    );

    step("Starting real peers in the server namespace");
    const dnsmasq = lab.spawn(
      lab.server,
      dnsmasqArgv("www.relay.test", "198.18.1.80", "2001:2:0:2::80"),
    );
    children.push(dnsmasq);
    quic = new QuicPeers(lab);
    children.push(quic.serve(LAB.server4, 443), quic.serve(LAB.server6, 443));
    lab.setHosts(lab.client, [
      [LAB.server4, "quic.relay.test"],
      [LAB.server6, "quic6.relay.test"],
    ]);
    const echo = lab.spawn(lab.server, [
      "python3",
      join(ROOT, "test/lab/udp_echo.py"),
      "--stamp",
      `${echo4}:443`,
      `[${echo6}]:443`,
    ]);
    children.push(echo);
    await lab.waitForUdpPort(lab.server, 53);
    await lab.waitForUdpPort(lab.server, 443);
    console.log(`  dnsmasq on ${LAB.server4}:53 and [${LAB.server6}]:53 (www.relay.test)`);
    console.log(`  gtlsserver (QUIC, HTTP/3) on ${LAB.server4}:443 and [${LAB.server6}]:443`);
    console.log(`  UDP echo on ${echo4}:443 and [${echo6}]:443 (QUIC-sized datagrams)`);

    step("Starting the relay in the router namespace: bun run relay (built-in default)");
    relay = await RelayProcess.start(lab, null);
    console.log(
      relay.stderr
        .trim()
        .split("\n")
        .map((l) => `  ${l}`)
        .join("\n"),
    );
    lab.warmNeighbours();

    step("What the client saw");
    for (const [server, type] of [
      [LAB.server4, "A"],
      [LAB.server6, "AAAA"],
    ]) {
      const r = lab.exec(
        lab.client,
        ["kdig", `@${server}`, "www.relay.test", type, "+notcp", "+timeout=2", "+retry=1"],
        undefined,
        true,
      );
      const answer =
        r.stdout.split("\n").find((l) => l.startsWith("www.relay.test.")) ?? "(no answer)";
      const from = r.stdout.split("\n").find((l) => l.startsWith(";; From")) ?? "";
      console.log(`  kdig @${server} www.relay.test ${type}`);
      console.log(`    answer: ${answer.replace(/\s+/g, " ")}`);
      console.log(`    ${from.trim()}   <- the reply came from the original destination`);
    }
    for (const host of ["quic.relay.test", "quic6.relay.test"]) {
      const body = quic.fetch(host, 443);
      console.log(
        `  gtlsclient https://${host}/index.html (QUIC, HTTP/3): ${JSON.stringify(body)}`,
      );
      console.log(
        "    QUIC completes only if every reply comes from the address the client sent to",
      );
    }
    for (const target of [`${echo4}:443`, `[${echo6}]:443`]) {
      const r = lab.exec(lab.client, [
        BUN,
        join(ROOT, "test/lab/udp_probe.ts"),
        "--targets",
        target,
        "--flows",
        "8",
        "--packets",
        "25",
        "--size",
        "1200",
        "--stamped",
        "--timeout-ms",
        "4000",
      ]);
      const p = JSON.parse(r.stdout.trim());
      console.log(
        `  8 flows x 25 datagrams of 1200 B to ${target}: ${p.received}/${p.sent} replies, ` +
          `${p.sent - p.wrongSource - p.lost} from ${target} itself, ` +
          `${p.wrongFlow} to a wrong flow, ` +
          `rtt p50 ${p.rttUsP50} us`,
      );
      console.log(
        `    the server saw the datagrams come from ${p.serverSaw.join(", ")} (the router)`,
      );
    }

    step("What the relay saw");
    const m = await relay.metrics();
    const rows = [
      [
        "client",
        "original destination",
        "proto",
        "name (DNS/SNI)",
        "reply via",
        "pkts ->",
        "bytes ->",
        "pkts <-",
        "bytes <-",
      ],
    ];
    for (const s of m.sessions) {
      rows.push([
        s.client,
        s.target,
        s.protocol,
        s.name ?? "-",
        s.reply,
        `${s.packetsToTarget}`,
        `${s.bytesToTarget}`,
        `${s.packetsToClient}`,
        `${s.bytesToClient}`,
      ]);
    }
    console.log(table(rows));
    const u = m.udp;
    console.log(
      `\n  flows ${u.sessionsCreated}, packets from clients ${u.packetsFromClients}, ` +
        `to targets ${u.packetsToTargets} (${u.bytesToTargets} B), ` +
        `from targets ${u.packetsFromTargets}, ` +
        `to clients ${u.packetsToClients} (${u.bytesToClients} B)`,
    );
    console.log(
      `  parsed in place (WASM): ${u.sniffedDns} DNS names, ${u.sniffedQuic} QUIC SNIs; ` +
        `${u.sniffMalformed} first datagrams on 53/443 were not DNS/QUIC (the echo traffic)`,
    );
    console.log(
      `  upstream sockets ${u.upstreamSockets}, reply sockets ${u.replySockets}, ` +
        `drops: oversized ${u.droppedOversized}, unsolicited ${u.droppedUnsolicitedReply}, ` +
        `send errors ${
          u.sendWouldBlock + u.sendUnreachable + u.sendTooLarge + u.sendResources + u.sendOther
        }`,
    );
    // The relay's own account: everything it received went out, both ways.
    const ok =
      u.packetsFromClients > 0 &&
      u.packetsToTargets === u.packetsFromClients &&
      u.packetsToClients === u.packetsFromTargets;
    step(
      ok
        ? "Every datagram the relay received was relayed, both ways."
        : "Some datagrams were not relayed: see the counters above.",
    );
    return ok ? 0 : 1;
  } finally {
    if (relay) await relay.stop();
    for (const c of children) c.kill(9);
    quic?.close();
    lab.destroy();
    console.log("\n  lab torn down (namespaces, veths, rules removed)");
  }
}

process.exit(await main());
