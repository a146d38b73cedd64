// Flow log fixtures shared by the writer/reader tests and the `relay log` tests: known
// batches of UDP and TCP records, and a decoder that collects what a file holds.
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Packr, Unpackr } from "msgpackr";
import { FrameDecoder, frameBytes, writeFrame } from "../../src/control/flow_frame.ts";
import { FlowLog } from "../../src/control/flow_log.ts";
import {
  type FlowRecord,
  looksLikeRecord,
  recordFromArray,
} from "../../src/control/flow_record.ts";
import {
  type FlowBatch,
  FlowRecords,
  REPLY_NONE,
  REPLY_PKTINFO,
} from "../../src/flow/flow_records.ts";
import { EndReason, PROTOCOL_DNS } from "../../src/flow/table.ts";
import { parseAddress } from "../../src/sys/addr.ts";
import { TcpEnd } from "../../src/tcp/layout.ts";

/** A directory for one test file's logs (the caller removes it in afterAll). */
export function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), "relay-flowlog-"));
  let files = 0;
  return { dir, path: () => join(dir, `flow-${files++}.log`) };
}

/** 2023-11-14T22:13:20Z: record k ends k seconds later. */
export const EPOCH_MS = 1_700_000_000_000;

/** n UDP records numbered from `first`: DNS flows from 198.18.0.2:(40000+k) to 198.18.1.2:53. */
export function udpBatch(n: number, first = 0): FlowBatch {
  const f = new FlowRecords("udp", ["dns4", "udp6"], Math.max(n, 1));
  const client = parseAddress("198.18.0.2")!;
  const target = parseAddress("198.18.1.2")!;
  for (let i = 0; i < n; i++) {
    const k = first + i;
    const r = f.reserve();
    f.endMs[r] = EPOCH_MS + k * 1000;
    f.startMs[r] = f.endMs[r] - 1500;
    f.addrs.set(client, r * 32);
    f.addrs.set(target, r * 32 + 16);
    f.ports[r] = ((40000 + (k % 20000)) << 16) | 53;
    f.listener[r] = 0;
    f.packetsToTarget[r] = 1;
    f.bytesToTarget[r] = 40 + k;
    f.packetsToClient[r] = 2;
    f.bytesToClient[r] = 100 + k;
    f.parsed[r] = PROTOCOL_DNS;
    f.names[r] = `host${k}.relay.test`;
    f.reason[r] = EndReason.Idle;
    f.reply[r] = REPLY_PKTINFO;
  }
  return f.take();
}

/**
 * Three forced DNS queries (the query log's fields), 198.18.0.2:(41000+k) -> 198.18.1.2:53:
 * an A query answered NOERROR by 198.18.1.3:53, an AAAA query answered NXDOMAIN locally
 * (a blocked name: no resolver), an HTTPS query that timed out (no rcode, no resolver).
 */
export function dnsBatch(): FlowBatch {
  const f = new FlowRecords("udp", ["dns4"], 3, ["dns"], ["resolvers", "blocked"], 0);
  const client = parseAddress("198.18.0.2")!;
  const target = parseAddress("198.18.1.2")!;
  const rows: Array<[number, number, EndReason, number]> = [
    [1, 0, EndReason.DnsAnswered, 0],
    [28, 3, EndReason.DnsAnsweredLocally, 1],
    [65, -1, EndReason.DnsTimedOut, 0],
  ];
  for (const [k, [qtype, rcode, reason, outbound]] of rows.entries()) {
    const r = f.reserve();
    f.endMs[r] = EPOCH_MS + k * 1000;
    f.startMs[r] = f.endMs[r] - 20;
    f.addrs.set(client, r * 32);
    f.addrs.set(target, r * 32 + 16);
    f.ports[r] = ((41000 + k) << 16) | 53;
    f.packetsToTarget[r] = 1;
    f.bytesToTarget[r] = 30;
    f.packetsToClient[r] = rcode >= 0 ? 1 : 0;
    f.bytesToClient[r] = rcode >= 0 ? 46 : 0;
    f.parsed[r] = PROTOCOL_DNS;
    f.names[r] = `q${k}.relay.test`;
    f.reason[r] = reason;
    f.reply[r] = REPLY_PKTINFO;
    f.rule[r] = 0;
    f.outbound[r] = outbound;
    f.qtype[r] = qtype;
    f.rcode[r] = rcode;
    if (reason === EndReason.DnsAnswered) {
      f.resolverAddrs.set(parseAddress("198.18.1.3")!, r * 16);
      f.resolverPort[r] = 53;
    }
  }
  return f.take();
}

/**
 * A flow log file of layout version 1 (19 fields, before the query log's), as the relay
 * wrote it then: two UDP records, host0/host1.relay.test, 198.18.0.2:4000k -> :53.
 */
export function v1File(path: string): string {
  const packr = new Packr({ useRecords: false });
  const out = new Uint8Array(4096);
  let at = 0;
  for (let k = 0; k < 2; k++) {
    const payload = packr.pack([
      1,
      EPOCH_MS + k * 1000 - 1500,
      EPOCH_MS + k * 1000,
      "udp",
      "198.18.0.2",
      40000 + k,
      "dns4",
      "198.18.1.2",
      53,
      1,
      40 + k,
      2,
      100 + k,
      `host${k}.relay.test`,
      "dns",
      null,
      "direct",
      "idle",
      "pktinfo",
    ]);
    if (at + frameBytes(payload.length) > out.length) throw new Error("fixture too big");
    at = writeFrame(out, at, payload);
  }
  writeFileSync(path, out.subarray(0, at));
  return path;
}

/** One IPv6 TCP connection, [2001:2:0:1::2]:50000 -> [2001:2:0:2::2]:8080. */
export function tcpBatch(): FlowBatch {
  const f = new FlowRecords("tcp", ["tcp4", "tcp6"], 1);
  const r = f.reserve();
  f.endMs[r] = EPOCH_MS + 5000;
  f.startMs[r] = EPOCH_MS + 2000;
  f.addrs.set(parseAddress("2001:2:0:1::2")!, r * 32);
  f.addrs.set(parseAddress("2001:2:0:2::2")!, r * 32 + 16);
  f.ports[r] = (50000 << 16) | 8080;
  f.listener[r] = 1;
  f.packetsToTarget[r] = Number.NaN;
  f.bytesToTarget[r] = 10_000;
  f.packetsToClient[r] = Number.NaN;
  f.bytesToClient[r] = 3000;
  f.parsed[r] = 0;
  f.reason[r] = TcpEnd.UpstreamReset;
  f.reply[r] = REPLY_NONE;
  return f.take();
}

const unpackr = new Unpackr({ useRecords: false });

/** Decodes `bytes` pushed in chunks of `chunkBytes`: records, their offsets, problems. */
export function decode(bytes: Uint8Array, chunkBytes = 1 << 20) {
  const records: FlowRecord[] = [];
  const offsets: number[] = [];
  const problems: string[] = [];
  const decoder = new FrameDecoder(
    {
      frame(payload, offset) {
        const r = recordFromArray(unpackr.unpack(payload));
        if (typeof r === "string") throw new Error(r);
        records.push(r);
        offsets.push(offset);
      },
      problem: (message) => problems.push(message),
    },
    looksLikeRecord,
  );
  for (let at = 0; at < bytes.length; at += chunkBytes) {
    decoder.push(bytes.subarray(at, Math.min(bytes.length, at + chunkBytes)));
  }
  decoder.end();
  return { records, offsets, problems, names: records.map((r) => r.name) };
}

/** A file of n UDP records; its bytes and each frame's start (plus the end). */
export function validFile(path: string, n: number) {
  const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 1 });
  log.write(udpBatch(n));
  log.close();
  const bytes = new Uint8Array(readFileSync(path));
  const { offsets } = decode(bytes);
  return { path, bytes, bounds: [...offsets, bytes.length] };
}

export const names = (from: number, to: number) =>
  Array.from({ length: to - from }, (_, i) => `host${from + i}.relay.test`);
