// The flow log: frame codec (length, msgpack, CRC-32), the writer (one record per ended
// flow, rotation, write errors that never throw), the data side's bounded buffer, and
// the reader (every prefix of a valid file: complete records recovered, the torn one
// reported; damage in the middle skipped by resynchronising).
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import {
  crc32,
  FRAME_PAYLOAD_BYTES_MAX,
  RESYNC_BYTES_MAX,
  writeFrame,
} from "../../src/control/flow_frame.ts";
import { FlowLog } from "../../src/control/flow_log.ts";
import { qtypeName, rcodeName, recordFromArray } from "../../src/control/flow_record.ts";
import { FlowRecords, REPLY_PKTINFO, REPLY_SOCKET } from "../../src/flow/flow_records.ts";
import { EndReason, PROTOCOL_UNKNOWN } from "../../src/flow/table.ts";
import {
  decode,
  dnsBatch,
  EPOCH_MS,
  names,
  tcpBatch,
  tempDir,
  udpBatch,
  v1File,
  validFile,
} from "./flow_fixtures.ts";

const { dir, path: tempPath } = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("frame codec", () => {
  test("CRC-32 is IEEE 802.3 (zlib's): the check value of 123456789", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
    expect(crc32(new Uint8Array(0))).toBe(0);
  });

  test("a frame is length (big endian), payload, CRC-32 of the payload (big endian)", () => {
    const payload = Uint8Array.of(0x93, 1, 2, 3);
    const out = new Uint8Array(16);
    expect(writeFrame(out, 2, payload)).toBe(2 + 4 + 4 + 4);
    const view = new DataView(out.buffer);
    expect(view.getUint32(2)).toBe(4);
    expect([...out.subarray(6, 10)]).toEqual([0x93, 1, 2, 3]);
    expect(view.getUint32(10)).toBe(crc32(payload));
  });

  test("payloads of 0 bytes or past the maximum, and frames past the buffer, are refused", () => {
    const out = new Uint8Array(FRAME_PAYLOAD_BYTES_MAX + 16);
    expect(() => writeFrame(out, 0, new Uint8Array(0))).toThrow("assertion failed");
    expect(() => writeFrame(out, 0, new Uint8Array(FRAME_PAYLOAD_BYTES_MAX + 1))).toThrow(
      "assertion failed",
    );
    expect(writeFrame(out, 0, new Uint8Array(FRAME_PAYLOAD_BYTES_MAX).fill(1))).toBe(
      FRAME_PAYLOAD_BYTES_MAX + 8,
    );
    expect(() => writeFrame(new Uint8Array(8), 0, Uint8Array.of(1))).toThrow("assertion failed");
  });
});

describe("flow log writer", () => {
  test("a UDP and a TCP record read back field by field", () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 2 });
    log.write(udpBatch(1, 7));
    log.write(tcpBatch());
    log.close();
    const { records, problems } = decode(new Uint8Array(readFileSync(path)));
    expect(problems).toEqual([]);
    expect(records).toEqual([
      {
        startMs: EPOCH_MS + 7000 - 1500,
        endMs: EPOCH_MS + 7000,
        protocol: "udp",
        client: "198.18.0.2",
        clientPort: 40007,
        listener: "dns4",
        target: "198.18.1.2",
        targetPort: 53,
        packetsToTarget: 1,
        bytesToTarget: 47,
        packetsToClient: 2,
        bytesToClient: 107,
        name: "host7.relay.test",
        parsed: "dns",
        rule: null,
        outbound: "direct",
        end: "idle",
        reply: "pktinfo",
        qtype: null,
        rcode: null,
        resolver: null,
      },
      {
        startMs: EPOCH_MS + 2000,
        endMs: EPOCH_MS + 5000,
        protocol: "tcp",
        client: "2001:2:0:1::2",
        clientPort: 50000,
        listener: "tcp6",
        target: "2001:2:0:2::2",
        targetPort: 8080,
        packetsToTarget: null,
        bytesToTarget: 10_000,
        packetsToClient: null,
        bytesToClient: 3000,
        name: null,
        parsed: null,
        rule: null,
        outbound: "direct",
        end: "upstream-reset",
        reply: null,
        qtype: null,
        rcode: null,
        resolver: null,
      },
    ]);
    expect(log.counters).toMatchObject({ records: 2, recordsLost: 0, writeErrors: 0 });
    expect(log.counters.bytes).toBe(statSync(path).size);
  });

  test("UDP end reasons, reply paths and an unparsed flow have their names", () => {
    const path = tempPath();
    const batch = udpBatch(4);
    batch.reason.set([EndReason.Idle, EndReason.Evicted, EndReason.Closed, EndReason.LocalTarget]);
    batch.reply.set([REPLY_PKTINFO, REPLY_SOCKET, REPLY_SOCKET, REPLY_PKTINFO]);
    batch.parsed[3] = PROTOCOL_UNKNOWN;
    batch.names[3] = null;
    const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 1 });
    log.write(batch);
    log.close();
    const { records } = decode(new Uint8Array(readFileSync(path)));
    expect(records.map((r) => r.end)).toEqual(["idle", "evicted", "closed", "local-target"]);
    expect(records.map((r) => r.reply)).toEqual(["pktinfo", "socket", "socket", "pktinfo"]);
    expect(records[3]).toMatchObject({ parsed: null, name: null });
  });

  test("appends to an existing file (a restarted relay keeps what was there)", () => {
    const path = tempPath();
    for (const first of [0, 3]) {
      const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 1 });
      log.write(udpBatch(3, first));
      log.close();
    }
    expect(decode(new Uint8Array(readFileSync(path))).names).toEqual(names(0, 6));
  });

  test("rotation: path -> path.1 -> ... -> path.filesMax, the oldest deleted, none too big", () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 4096, filesMax: 3 });
    const total = 300;
    for (let k = 0; k < total; k += 10) log.write(udpBatch(10, k));
    log.close();
    expect(existsSync(`${path}.3`)).toBe(true);
    expect(existsSync(`${path}.4`)).toBe(false);
    expect(log.counters.rotations).toBeGreaterThanOrEqual(4);
    const all = [`${path}.3`, `${path}.2`, `${path}.1`, path];
    const read = all.map((f) => {
      expect(statSync(f).size).toBeLessThanOrEqual(4096);
      const { names: n, problems } = decode(new Uint8Array(readFileSync(f)));
      expect(problems).toEqual([]);
      return n;
    });
    // Read oldest first, the kept records are the newest ones, in order, without a gap.
    const kept = read.flat();
    const first = Number(/host(\d+)/.exec(kept[0]!)![1]);
    expect(kept).toEqual(names(first, total));
    // Each rotated file was filled up to the frame that would not fit.
    for (const f of all.slice(0, -1)) expect(statSync(f).size).toBeGreaterThan(4096 - 200);
  });

  test("a write error (ENOSPC on /dev/full) is counted, never thrown, and nothing is rotated", () => {
    const log = new FlowLog({ path: "/dev/full", fileBytesMax: 4096, filesMax: 2 });
    for (let k = 0; k < 100; k += 10) log.write(udpBatch(10, k));
    log.close();
    expect(log.counters).toMatchObject({ records: 0, recordsLost: 100, writeErrors: 10 });
    expect(log.counters.rotations).toBe(0);
    expect(statSync("/dev/full").isCharacterDevice()).toBe(true);
    expect(existsSync("/dev/full.1")).toBe(false);
  });

  test("a path that cannot be opened fails at start, naming the path and the error", () => {
    const path = join(dir, "missing", "flow.log");
    expect(() => new FlowLog({ path, fileBytesMax: 4096, filesMax: 1 })).toThrow(
      `flow log ${path}: ENOENT`,
    );
  });
});

describe("flow record buffer", () => {
  test("holds exactly its capacity; one more is refused; take() copies and empties it", () => {
    const f = new FlowRecords("udp", ["u"], 4);
    for (let i = 0; i < 4; i++) {
      const r = f.reserve();
      expect(r).toBe(i);
      f.names[r] = `n${i}`;
      f.bytesToTarget[r] = i;
    }
    expect(f.full).toBe(true);
    expect(f.reserve()).toBe(-1);
    const batch = f.take();
    expect(batch.count).toBe(4);
    expect(batch.names).toEqual(["n0", "n1", "n2", "n3"]);
    expect([...batch.bytesToTarget]).toEqual([0, 1, 2, 3]);
    expect(f.count).toBe(0);
    expect(f.names.every((n) => n === null)).toBe(true);
    expect(f.reserve()).toBe(0);
    f.bytesToTarget[0] = 99;
    expect(batch.bytesToTarget[0]).toBe(0); // the batch is a copy
  });
});

describe("flow log reader", () => {
  test("every prefix of a valid file: the complete records, and the torn one reported", () => {
    const { bytes, bounds } = validFile(tempPath(), 6);
    for (let length = 0; length <= bytes.length; length++) {
      const complete = bounds.filter((b) => b <= length).length - 1;
      const lastStart = bounds[Math.max(0, complete)];
      const torn = length > 0 && !bounds.includes(length);
      // Whole, and in 7-byte chunks (a frame split across reads).
      for (const chunk of [1 << 20, 7]) {
        const r = decode(bytes.subarray(0, length), chunk);
        expect(r.names).toEqual(names(0, Math.max(0, complete)));
        expect(r.problems).toEqual(torn ? [`torn record at byte ${lastStart}: skipped`] : []);
      }
    }
  });

  test("a CRC error in the middle: reported, and every other record recovered", () => {
    const { bytes, bounds } = validFile(tempPath(), 5);
    const damaged = bytes.slice();
    damaged[bounds[2] + 10] ^= 0x01; // a payload byte of record 2
    const r = decode(damaged);
    expect(r.names).toEqual([...names(0, 2), ...names(3, 5)]);
    expect(r.problems).toEqual([
      `corrupt record at byte ${bounds[2]}: skipped ${bounds[3] - bounds[2]} bytes ` +
        `to the next record at byte ${bounds[3]}`,
    ]);
    // A CRC that fails on the last record: nothing follows, so it is the torn one.
    const lastDamaged = bytes.slice();
    lastDamaged[bytes.length - 1] ^= 0x80;
    const last = decode(lastDamaged);
    expect(last.names).toEqual(names(0, 4));
    expect(last.problems).toEqual([`torn record at byte ${bounds[4]}: skipped`]);
  });

  test("a damaged length in the middle (too long, zero): the next record is found", () => {
    const { bytes, bounds } = validFile(tempPath(), 4);
    for (const length of [0xffffffff, 0, 3000]) {
      const damaged = bytes.slice();
      new DataView(damaged.buffer).setUint32(bounds[1], length);
      const r = decode(damaged, 5);
      expect(r.names).toEqual([...names(0, 1), ...names(2, 4)]);
      expect(r.problems).toEqual([
        `corrupt record at byte ${bounds[1]}: skipped ${bounds[2] - bounds[1]} bytes ` +
          `to the next record at byte ${bounds[2]}`,
      ]);
    }
  });

  test("a torn record that a restarted relay appended after is skipped, nothing else", () => {
    const { bytes, bounds } = validFile(tempPath(), 6);
    // Records 0-2, half of record 3 (the crash), then records 4 and 5 (the restart).
    const cut = bounds[3] + Math.floor((bounds[4] - bounds[3]) / 2);
    const file = new Uint8Array([...bytes.subarray(0, cut), ...bytes.subarray(bounds[4])]);
    const r = decode(file, 64);
    expect(r.names).toEqual([...names(0, 3), ...names(4, 6)]);
    expect(r.problems).toEqual([
      `corrupt record at byte ${bounds[3]}: skipped ${cut - bounds[3]} bytes ` +
        `to the next record at byte ${cut}`,
    ]);
  });

  test("zero-filled blocks in the middle (a power loss) are skipped", () => {
    const { bytes, bounds } = validFile(tempPath(), 3);
    const file = new Uint8Array([
      ...bytes.subarray(0, bounds[1]),
      ...new Uint8Array(10_000),
      ...bytes.subarray(bounds[1]),
    ]);
    const r = decode(file, 4096);
    expect(r.names).toEqual(names(0, 3));
    expect(r.problems).toEqual([
      `corrupt record at byte ${bounds[1]}: skipped 10000 bytes to the next record at byte ` +
        `${bounds[1] + 10_000}`,
    ]);
  });

  test("DNS records carry the query log's qtype, rcode and resolver (layout 2)", () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 1 });
    log.write(dnsBatch());
    log.close();
    const bytes = new Uint8Array(readFileSync(path));
    // A record is a msgpack array16 of 22 fields, version 2 first.
    expect([...bytes.subarray(4, 8)]).toEqual([0xdc, 0, 22, 2]);
    const { records, problems } = decode(bytes);
    expect(problems).toEqual([]);
    expect(records.map((r) => [r.end, r.rule, r.outbound, r.qtype, r.rcode, r.resolver])).toEqual([
      ["dns-answered", "dns", "resolvers", 1, 0, "198.18.1.3:53"],
      ["dns-local", "dns", "blocked", 28, 3, null],
      ["dns-timeout", "dns", "resolvers", 65, null, null],
    ]);
  });

  test("a version 1 file (19 fields) still reads, without the query log's fields", () => {
    const { records, problems } = decode(new Uint8Array(readFileSync(v1File(tempPath()))));
    expect(problems).toEqual([]);
    expect(records.map((r) => [r.name, r.bytesToClient, r.qtype, r.rcode, r.resolver])).toEqual([
      ["host0.relay.test", 100, null, null, null],
      ["host1.relay.test", 101, null, null, null],
    ]);
  });

  test("DNS type and rcode names: the common ones, else TYPE<n> / RCODE<n>", () => {
    const types = [1, 28, 5, 15, 16, 2, 12, 33, 6, 65, 64, 255, 0, 99, 65535];
    expect(types.map(qtypeName)).toEqual(
      "A AAAA CNAME MX TXT NS PTR SRV SOA HTTPS SVCB ANY TYPE0 TYPE99 TYPE65535".split(" "),
    );
    expect([0, 1, 2, 3, 4, 5, 6, 15].map(rcodeName)).toEqual(
      "NOERROR FORMERR SERVFAIL NXDOMAIN NOTIMP REFUSED RCODE6 RCODE15".split(" "),
    );
  });

  test(`the scan for the next record is bounded (${RESYNC_BYTES_MAX} bytes)`, () => {
    const { bytes, bounds } = validFile(tempPath(), 3);
    const file = new Uint8Array(bounds[1] + RESYNC_BYTES_MAX + 16 + bytes.length);
    file.set(bytes.subarray(0, bounds[1]));
    file.fill(0xff, bounds[1], bounds[1] + RESYNC_BYTES_MAX + 16);
    file.set(bytes, bounds[1] + RESYNC_BYTES_MAX + 16);
    const r = decode(file);
    expect(r.names).toEqual(names(0, 1));
    expect(r.problems).toEqual([
      `corrupt record at byte ${bounds[1]}: no record within ${RESYNC_BYTES_MAX} bytes ` +
        "after it: skipped the rest",
    ]);
  });

  test("records that are not this layout are refused with a reason", () => {
    expect(recordFromArray({})).toBe("not an array");
    expect(recordFromArray([2])).toContain("unknown record layout");
    const fields = new Array(19).fill(null);
    fields[0] = 1;
    expect(recordFromArray(fields)).toBe("a field of the wrong type");
    // Each version has its own length.
    fields[0] = 2;
    expect(recordFromArray(fields)).toContain("unknown record layout");
    expect(recordFromArray([1, ...new Array(21).fill(null)])).toContain("unknown record layout");
  });
});
