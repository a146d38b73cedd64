// What the CLI prints, from replies of a known shape: `relay top`'s rates come from two
// successive samples, drops list only the non-zero reasons with their rate, and the
// screen never holds a line wider or a line more than the terminal; `relay stats` shows
// every counter once; `relay sessions --json` is one object per session.
import { describe, expect, test } from "bun:test";
import { sessionsJsonLines, sessionsText } from "../../src/cli/sessions.ts";
import { statsText } from "../../src/cli/stats.ts";
import { type TopSample, topScreen } from "../../src/cli/top.ts";

const session = {
  client: "198.18.0.2:40000",
  target: "198.18.1.2:7002",
  listener: "udp4",
  reply: "socket",
  protocol: "dns",
  name: "www.relay.test",
  rule: "dns",
  outbound: "resolver",
  ageMs: 65_000,
  idleMs: 250,
  packetsToTarget: 10,
  bytesToTarget: 3000,
  packetsToClient: 9,
  bytesToClient: 2700,
};

function sample(atMs: number, udp: Record<string, number>, tcp: Record<string, number> | null) {
  return {
    atMs,
    stats: { uptimeMs: 62_000, udp, tcp },
    sessions: { udp: [session, session, session], udpMatched: 7 },
  } satisfies TopSample;
}

describe("relay top's screen", () => {
  const options = { path: "/run/r.sock", intervalMs: 1000, columns: 120, rows: 40 };
  const udp0 = { sessionsCreated: 10, packetsFromClients: 100, packetsFromTargets: 50 };
  const udp1 = { sessionsCreated: 14, packetsFromClients: 160, packetsFromTargets: 70 };
  const tcp0 = { accepted: 5, connectionsActive: 1, connectionsMax: 9, rejectedLimit: 0 };
  const tcp1 = { ...tcp0, accepted: 7, rejectedLimit: 3 };

  test("the first sample has no rates; the second has them per second", () => {
    const first = topScreen(sample(0, udp0, tcp0), null, options).join("\n");
    expect(first).toContain("UDP  flows/s -   packets/s -");
    expect(first).toContain("drops: none");
    const screen = topScreen(
      sample(2000, { ...udp1, droppedToListener: 4 }, tcp1),
      sample(0, { ...udp0, droppedToListener: 2 }, tcp0),
      options,
    ).join("\n");
    // (14 - 10) / 2 s and (230 - 150) / 2 s.
    expect(screen).toContain("UDP  flows/s 2.0   packets/s 40.0");
    expect(screen).toContain("TCP  flows/s 1.0   connections 1 active (max 9), 7 accepted");
    expect(screen).toMatch(/udp droppedToListener +4 +1\.0\n/);
    // A reason that was zero before is listed once non-zero, with its rate from zero.
    expect(screen).toMatch(/tcp rejectedLimit +3 +1\.5\n/);
    expect(screen).toContain("busiest UDP sessions (by bytes): 3 of 7");
    expect(screen).toContain("1m 05s");
  });

  test("the screen fits the terminal: rows and columns cut", () => {
    const small = { ...options, columns: 30, rows: 12 };
    const lines = topScreen(sample(0, udp0, null), null, small);
    expect(lines.length).toBeLessThanOrEqual(12);
    expect(lines.every((l) => l.length <= 30)).toBe(true);
    expect(lines.join("\n")).toContain("TCP  no TCP listeners");
  });

  test("an IPv4 session row fits 120 columns; a long name shows its end", () => {
    const long = { ...session, name: `${"a".repeat(60)}.cdn.example.com` };
    const now = sample(0, udp0, null);
    now.sessions.udp = [long];
    const lines = topScreen(now, null, { ...options, columns: 1000 });
    const row = lines.find((l) => l.startsWith("198.18.0.2:"))!;
    expect(row.length).toBeLessThanOrEqual(120);
    expect(row).toContain(" ..aaaaaa.cdn.example.com "); // 24 characters
    expect(row).toMatch(/ 10 +3000 +9 +2700$/);
  });
});

describe("relay stats and sessions text", () => {
  test("stats: the traffic table, drops by reason, every other counter once", () => {
    const udp = {
      packetsFromClients: 30,
      bytesFromClients: 6600,
      packetsToTargets: 30,
      bytesToTargets: 6600,
      sessionsActive: 6,
      droppedToListener: 2,
      droppedOversized: 0,
      sniffedDns: 1,
    };
    const text = statsText({ uptimeMs: 3000, udp, tcp: null }, 100).join("\n");
    expect(text).toMatch(/from clients +30 +6600\n/);
    expect(text).toContain("drops:\n    udp droppedToListener 2");
    expect(text).not.toContain("droppedOversized");
    expect(text.match(/sniffedDns 1/g)).toHaveLength(1);
    expect(text).toContain("TCP  no TCP listeners");
    expect(text).not.toContain("config generation");
    const config = { generation: 3, reloads: { applied: 2, refused: 1, invalid: 4 } };
    const reloaded = statsText({ uptimeMs: 3000, udp, tcp: null, config }, 100);
    expect(reloaded[1]).toBe("config generation 3, reloads: 2 applied, 1 refused, 4 invalid");
  });

  test("sessions: a table per protocol, or one JSON object per session", () => {
    const reply = {
      sort: "bytes",
      udp: [session],
      udpMatched: 4,
      tcp: [
        {
          ...{ client: "198.18.0.2:5000", target: "198.18.1.2:80", listener: "t" },
          ...{ name: null, rule: "via-proxy", outbound: "proxy", ageMs: 10 },
        },
      ],
      tcpMatched: 1,
    };
    const text = sessionsText(reply).join("\n");
    expect(text).toContain("UDP sessions: 1 of 4 matching, by bytes");
    expect(text).toMatch(/www\.relay\.test +dns +resolver +1m 05s +250 ms +10 +3000 +9 +2700/);
    expect(text).toContain("TCP connections: 1 of 1 matching, oldest first");
    expect(text).toMatch(/198\.18\.1\.2:80 +t +- +via-proxy +proxy +10 ms/);
    const lines = sessionsJsonLines(reply).map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { transport: "udp", ...session },
      { transport: "tcp", ...reply.tcp[0] },
    ]);
  });
});
