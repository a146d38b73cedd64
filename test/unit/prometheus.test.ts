// The Prometheus renderer (src/control/prometheus.ts) on synthetic snapshots: every
// counter of UdpCounters and TcpCounters is in the output, under the family and labels
// the README promises, the histogram is cumulative, numbers print exactly, and promtool
// (Prometheus' own checker) accepts the text.
import { FlowLogCounters } from "../../src/control/flow_log.ts";
import { describe, expect, test } from "bun:test";
import { LoopLag } from "../../src/control/loop_lag.ts";
import { readProcessStats } from "../../src/control/process_stats.ts";
import {
  formatValue,
  PROMETHEUS_CONTENT_TYPE,
  renderPrometheus,
  type ScrapeInput,
  snakeCase,
  type TcpValues,
} from "../../src/control/prometheus.ts";
import { BATCH_BUCKET_UPPER, batchBucket, UdpCounters } from "../../src/metrics.ts";
import { TcpCounters } from "../../src/tcp/relay.ts";
import type { UdpValues } from "../../src/udp/relay.ts";
import { parseSamples as parse, sampleValue as value } from "../lab/exposition.ts";
import { promtoolCheck, promtoolMissing } from "../lab/promtool.ts";
import { waitFor } from "../lab/wait_for.ts";

/** Numeric field names of a counters object (the histogram array excluded). */
const numericFields = (o: object) =>
  Object.entries(o)
    .filter(([, v]) => typeof v === "number")
    .map(([k]) => k);

/** Distinct values per field, none of them a sum of two others (see the _sum below). */
const distinct = (i: number) => 10_001 + 7 * i;

const BUCKETS = [5, 4, 3, 2, 1, 0, 7, 9];

function synthetic(): { input: ScrapeInput; udpFields: string[]; tcpFields: string[] } {
  const udpCounters = new UdpCounters();
  const udpFields = numericFields(udpCounters);
  const tcpFields = numericFields(new TcpCounters());
  const { batchDatagrams: _, ...counters } = udpCounters;
  const udp: UdpValues = {
    ...counters,
    batchDatagrams: BUCKETS,
    sessionsActive: 0,
    sessionsMax: 0,
    upstreamSockets: 0,
    replySockets: 0,
    dnsUpstreamSockets: 0,
    dnsQueriesInFlight: 0,
    holdBytes: 0,
    sessionsHolding: 0,
    socks5Associations: 0,
    socketsRegistered: 0,
    pollWakes: 0,
    pollEvents: 0,
    pollRingOverflows: 0,
    pollBusyPolls: 0,
    upstreamPortsQuarantined: 0,
    gsoEnabled: 0,
    groEnabled: 0,
    ioBackendEpoll: 0,
    ioBackendUring: 0,
    uringEnters: 0,
    uringCompletions: 0,
    uringNoBuffers: 0,
    uringSendsQueued: 0,
    uringSendsDirect: 0,
  };
  let i = 0;
  for (const k of numericFields(udp)) (udp as any)[k] = distinct(i++);
  udp.batches = BUCKETS.reduce((a, b) => a + b, 0);
  const tcp: TcpValues = {
    ...new TcpCounters(),
    connectionsActive: 0,
    connectionsMax: 0,
    dnsConnectionsActive: 0,
    bytesToTargets: 0,
    bytesToClients: 0,
    pipesInUse: 0,
    pipesPooled: 0,
    eventsLost: 0,
    spliceSwitches: 0,
    copyOnlyConnections: 0,
    copyBuffersInUse: 0,
    copyPoolEmpty: 0,
    pollWakes: 0,
  };
  for (const k of numericFields(tcp)) (tcp as any)[k] = distinct(i++);
  const flowLog = new FlowLogCounters();
  for (const k of numericFields(flowLog)) (flowLog as any)[k] = distinct(i++);
  return {
    input: {
      udp: { uptimeMs: 90_500, udp, sessions: [] },
      tcp,
      process: { residentBytes: 52_428_800, openFds: 40, maxFds: 20_000 },
      loopLag: { lastMs: 1.5, maxMs: 250 },
      flowLog,
      config: { generation: 3, reloads: { applied: 2, refused: 5, invalid: 7 } },
    },
    udpFields,
    tcpFields,
  };
}

describe("Prometheus text format", () => {
  test("every numeric field of UdpCounters, TcpCounters and the flow log appears in the output", () => {
    const { input, udpFields, tcpFields } = synthetic();
    const values = new Set(parse(renderPrometheus(input)).map((s) => s.value));
    const missing: string[] = [];
    for (const k of udpFields) {
      if (!values.has(`${(input.udp.udp as any)[k]}`)) missing.push(`udp.${k}`);
    }
    for (const k of tcpFields) {
      const v = (input.tcp as any)[k];
      // The one scaled value: connect time is kept in ms, shown in seconds.
      if (!values.has(`${k === "connectMsTotal" ? v / 1000 : v}`)) missing.push(`tcp.${k}`);
    }
    for (const [k, v] of Object.entries(input.flowLog!)) {
      if (!values.has(`${v}`)) missing.push(`flowLog.${k}`);
    }
    expect(udpFields.length).toBeGreaterThan(40);
    expect(tcpFields.length).toBeGreaterThan(20);
    expect(missing).toEqual([]);
  });

  test("so does every gauge of the snapshots", () => {
    const { input } = synthetic();
    const values = new Set(parse(renderPrometheus(input)).map((s) => s.value));
    const gauges = [
      ...Object.entries(input.udp.udp).filter(([k]) => !(k in new UdpCounters())),
      ...Object.entries(input.tcp!).filter(([k]) => !(k in new TcpCounters())),
    ];
    expect(gauges.length).toBe(24 + 13);
    expect(gauges.filter(([, v]) => !values.has(`${v}`))).toEqual([]);
  });

  test("every dropped* counter is one reason of relay_udp_dropped_total", () => {
    const { input } = synthetic();
    const samples = parse(renderPrometheus(input));
    const u = input.udp.udp as unknown as Record<string, number>;
    const dropped = Object.keys(new UdpCounters()).filter((k) => /^dropped[A-Z]/.test(k));
    expect(dropped.length).toBeGreaterThan(15);
    for (const k of dropped) {
      const reason = snakeCase(k.slice("dropped".length));
      expect(value(samples, "relay_udp_dropped_total", { reason })).toBe(`${u[k]}`);
    }
    expect(value(samples, "relay_udp_dropped_total", { reason: "reply_socket_bind_failed" })).toBe(
      `${u.replySocketBindFailed}`,
    );
    const reasons = samples.filter((s) => s.name === "relay_udp_dropped_total");
    expect(reasons.length).toBe(dropped.length + 1);
    // Send errors and ICMP reports have families of their own.
    expect(value(samples, "relay_udp_send_errors_total", { kind: "would_block" })).toBe(
      `${u.sendWouldBlock}`,
    );
    expect(value(samples, "relay_udp_icmp_errors_total", { kind: "port_unreachable" })).toBe(
      `${u.icmpPortUnreachable}`,
    );
    expect(value(samples, "relay_udp_sniff_total", { result: "dns" })).toBe(`${u.sniffedDns}`);
    expect(value(samples, "relay_udp_sniff_total", { result: "malformed" })).toBe(
      `${u.sniffMalformed}`,
    );
  });

  test("families, names and labels as the README lists them", () => {
    const { input } = synthetic();
    const s = parse(renderPrometheus(input));
    const u = input.udp.udp;
    const t = input.tcp!;
    const udp = (direction: string) => ({ protocol: "udp", direction });
    expect(value(s, "relay_packets_total", udp("from_clients"))).toBe(`${u.packetsFromClients}`);
    expect(value(s, "relay_packets_total", udp("to_targets"))).toBe(`${u.packetsToTargets}`);
    expect(value(s, "relay_packets_total", udp("from_targets"))).toBe(`${u.packetsFromTargets}`);
    expect(value(s, "relay_packets_total", udp("to_clients"))).toBe(`${u.packetsToClients}`);
    expect(value(s, "relay_bytes_total", udp("to_clients"))).toBe(`${u.bytesToClients}`);
    expect(value(s, "relay_bytes_total", { protocol: "tcp", direction: "to_targets" })).toBe(
      `${t.bytesToTargets}`,
    );
    expect(value(s, "relay_sessions_active", { protocol: "udp" })).toBe(`${u.sessionsActive}`);
    expect(value(s, "relay_sessions_active", { protocol: "tcp" })).toBe(`${t.connectionsActive}`);
    expect(value(s, "relay_sessions_created_total", { protocol: "udp" })).toBe(
      `${u.sessionsCreated}`,
    );
    expect(value(s, "relay_sessions_expired_total", { protocol: "udp" })).toBe(
      `${u.sessionsExpired}`,
    );
    expect(value(s, "relay_sessions_evicted_total", { protocol: "udp" })).toBe(
      `${u.sessionsEvicted}`,
    );
    expect(value(s, "relay_udp_sessions_reply_path_total", { path: "pktinfo" })).toBe(
      `${u.sessionsReplyPktinfo}`,
    );
    expect(value(s, "relay_udp_sessions_reply_path_total", { path: "socket" })).toBe(
      `${u.sessionsReplySocket}`,
    );
    expect(value(s, "relay_udp_upstream_sockets")).toBe(`${u.upstreamSockets}`);
    expect(value(s, "relay_udp_reply_sockets")).toBe(`${u.replySockets}`);
    expect(value(s, "relay_tcp_connections_accepted_total")).toBe(`${t.accepted}`);
    expect(value(s, "relay_tcp_connections_ended_total", { reason: "closed" })).toBe(`${t.closed}`);
    expect(value(s, "relay_tcp_connections_ended_total", { reason: "limit" })).toBe(
      `${t.rejectedLimit}`,
    );
    expect(value(s, "relay_tcp_connections_ended_total", { reason: "no_original_dst" })).toBe(
      `${t.droppedNoOriginalDst}`,
    );
    expect(value(s, "relay_tcp_connect_seconds_count")).toBe(`${t.connected}`);
    expect(value(s, "relay_tcp_connect_seconds_sum")).toBe(`${t.connectMsTotal / 1000}`);
    expect(value(s, "relay_tcp_splice_switches_total")).toBe(`${t.spliceSwitches}`);
    expect(value(s, "relay_tcp_copy_only_connections_total")).toBe(`${t.copyOnlyConnections}`);
    expect(value(s, "relay_tcp_copy_buffers_in_use")).toBe(`${t.copyBuffersInUse}`);
    expect(value(s, "relay_tcp_copy_pool_empty_total")).toBe(`${t.copyPoolEmpty}`);
    expect(value(s, "relay_uptime_seconds")).toBe("90.5");
    expect(value(s, "relay_event_loop_lag_seconds")).toBe("0.0015");
    expect(value(s, "relay_event_loop_lag_max_seconds")).toBe("0.25");
    expect(value(s, "process_resident_memory_bytes")).toBe("52428800");
    expect(value(s, "process_open_fds")).toBe("40");
    expect(value(s, "process_max_fds")).toBe("20000");
    // The relay's own names all start relay_; process_* are the standard names.
    expect(s.filter((x) => !/^(relay|process)_/.test(x.name))).toEqual([]);
  });

  test("the batch histogram: cumulative buckets 1, 3, 7, ..., 256, +Inf = _count", () => {
    const { input } = synthetic();
    const s = parse(renderPrometheus(input));
    const u = input.udp.udp;
    let cumulative = 0;
    BATCH_BUCKET_UPPER.forEach((upper, i) => {
      cumulative += BUCKETS[i];
      expect(value(s, "relay_udp_batch_datagrams_bucket", { le: `${upper}` })).toBe(
        `${cumulative}`,
      );
    });
    expect(value(s, "relay_udp_batch_datagrams_bucket", { le: "+Inf" })).toBe(`${cumulative}`);
    expect(value(s, "relay_udp_batch_datagrams_count")).toBe(`${cumulative}`);
    expect(value(s, "relay_udp_batch_datagrams_sum")).toBe(
      `${u.packetsFromClients + u.packetsFromTargets}`,
    );
  });

  test("batch sizes 1 to 256 (udp.batchCountMax at most) each land in their bucket", () => {
    const landed = BATCH_BUCKET_UPPER.map(() => 0);
    for (let n = 1; n <= 256; n++) {
      const b = batchBucket(n);
      expect(n).toBeLessThanOrEqual(BATCH_BUCKET_UPPER[b]);
      if (b > 0) expect(n).toBeGreaterThan(BATCH_BUCKET_UPPER[b - 1]);
      landed[b]++;
    }
    expect(landed).toEqual([1, 2, 4, 8, 16, 32, 64, 129]);
  });

  test("one HELP and one TYPE per family, its samples together right after them", () => {
    const text = renderPrometheus(synthetic().input);
    const seen = new Set<string>();
    let current = "";
    let type = "";
    for (const line of text.split("\n").filter((l) => l !== "")) {
      const help = /^# HELP (\S+) \S/.exec(line);
      const typed = /^# TYPE (\S+) (counter|gauge|histogram|summary)$/.exec(line);
      if (help) {
        expect(seen.has(help[1])).toBe(false);
        seen.add(help[1]);
        current = help[1];
        continue;
      }
      if (typed) {
        expect(typed[1]).toBe(current);
        type = typed[2];
        if (type === "counter") expect(current.endsWith("_total")).toBe(true);
        continue;
      }
      const name = line.slice(0, line.search(/[{ ]/));
      const suffixes = type === "histogram" ? ["_bucket", "_sum", "_count"] : ["_sum", "_count"];
      const allowed = [current, ...(type === "gauge" || type === "counter" ? [] : suffixes)];
      expect(allowed.map((a) => (a === current ? a : current + a))).toContain(name);
    }
    expect(seen.size).toBeGreaterThan(30);
    expect(text.endsWith("\n")).toBe(true);
  });

  test("without TCP listeners no TCP family; unreadable /proc fields are left out", () => {
    const { input } = synthetic();
    const text = renderPrometheus({
      ...input,
      tcp: null,
      process: { residentBytes: null, openFds: null, maxFds: null },
    });
    expect(text).not.toContain("relay_tcp_");
    expect(text).not.toContain('protocol="tcp"');
    expect(text).not.toContain("process_");
  });

  test("numbers: integers exact up to 2^53, the specials as the format spells them", () => {
    expect(formatValue(0)).toBe("0");
    expect(formatValue(2 ** 32)).toBe("4294967296");
    expect(formatValue(2 ** 53 - 1)).toBe("9007199254740991");
    expect(formatValue(2 ** 53)).toBe("9007199254740992");
    expect(formatValue(1e21)).toBe("1e+21");
    expect(formatValue(0.25)).toBe("0.25");
    expect(formatValue(Number.NaN)).toBe("NaN");
    expect(formatValue(Number.POSITIVE_INFINITY)).toBe("+Inf");
    expect(formatValue(Number.NEGATIVE_INFINITY)).toBe("-Inf");
    const { input } = synthetic();
    input.udp.udp.packetsFromClients = 2 ** 53;
    const s = parse(renderPrometheus(input));
    expect(value(s, "relay_packets_total", { protocol: "udp", direction: "from_clients" })).toBe(
      "9007199254740992",
    );
  });

  test("reloads by result, and the config generation", () => {
    const s = parse(renderPrometheus(synthetic().input));
    expect(value(s, "relay_config_reloads_total", { result: "applied" })).toBe("2");
    expect(value(s, "relay_config_reloads_total", { result: "refused" })).toBe("5");
    expect(value(s, "relay_config_reloads_total", { result: "invalid" })).toBe("7");
    expect(value(s, "relay_config_generation")).toBe("3");
  });

  test("the content type of text format 0.0.4", () => {
    expect(PROMETHEUS_CONTENT_TYPE).toBe("text/plain; version=0.0.4; charset=utf-8");
  });

  test("label names from counter names: snake case", () => {
    expect(snakeCase("ListenerQueueFull")).toBe("listener_queue_full");
    expect(snakeCase("NoOriginalDst")).toBe("no_original_dst");
    expect(snakeCase("Oversized")).toBe("oversized");
  });

  test("promtool check metrics accepts the output (all families, and a fresh relay's)", () => {
    if (promtoolMissing("promtool check metrics")) return;
    const { input } = synthetic();
    const full = promtoolCheck(renderPrometheus(input));
    expect(full).toEqual({ status: 0, output: "" });
    // A relay that has seen nothing yet, UDP only.
    const { batchDatagrams: _, ...zero } = new UdpCounters();
    const fresh = renderPrometheus({
      ...input,
      udp: {
        uptimeMs: 0,
        sessions: [],
        udp: { ...input.udp.udp, ...zero, batchDatagrams: BUCKETS.map(() => 0) },
      },
      tcp: null,
    });
    expect(promtoolCheck(fresh)).toEqual({ status: 0, output: "" });
    // And it does judge: a counter without _total is refused.
    const bad = "# HELP relay_x Something.\n# TYPE relay_x counter\nrelay_x 1\n";
    expect(promtoolCheck(bad).status).not.toBe(0);
  });
});

describe("what a scrape reads besides the snapshots", () => {
  test("event-loop lag: a blocked loop shows as the max; take() starts it over", async () => {
    const lag = new LoopLag(10);
    try {
      const blockedMs = 80;
      const start = performance.now();
      while (performance.now() - start < blockedMs) {
        // Blocking the loop on purpose: the timer due in 10 ms cannot fire before 80.
      }
      const sample = await waitFor(
        () => lag.take(),
        (s) => s.maxMs > 0,
        { what: "the lag timer to fire after the block", timeoutMs: 10_000 },
      );
      expect(sample.maxMs).toBeGreaterThanOrEqual(blockedMs - 10);
      expect(sample.lastMs).toBeGreaterThan(0);
      // Nothing fired between these two calls: the max has started over.
      expect(lag.take().maxMs).toBe(0);
    } finally {
      lag.stop();
    }
  });

  test("/proc/self: resident memory, open descriptors, their limit", () => {
    const p = readProcessStats();
    expect(p.residentBytes).toBeGreaterThan(1 << 20);
    expect(p.openFds).toBeGreaterThan(2);
    expect(p.maxFds).toBeGreaterThanOrEqual(p.openFds!);
  });
});
