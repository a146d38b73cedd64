// `bun run relay log`: text and JSON lines, filters, a torn last record reported while
// every complete one is printed, rotated files oldest first, --follow across rotations,
// and the exit statuses.
import { afterAll, describe, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { flowLogFiles, formatRecord, parseLogArgs } from "../../src/cli/log.ts";
import { FlowLog } from "../../src/control/flow_log.ts";
import { type FlowRecord, recordFromArray } from "../../src/control/flow_record.ts";
import { waitFor } from "../lab/wait_for.ts";
import {
  dnsBatch,
  EPOCH_MS,
  names,
  tcpBatch,
  tempDir,
  udpBatch,
  v1File,
  validFile,
} from "./flow_fixtures.ts";

const ROOT = join(import.meta.dir, "..", "..");
const BUN = join(ROOT, "node_modules", ".bin", "bun");
const MAIN = join(ROOT, "src", "main.ts");
const { dir, path: tempPath } = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("bun run relay log", () => {
  const relayLog = (args: string[]) => {
    const r = spawnSync(BUN, [MAIN, "log", ...args], { encoding: "utf8", timeout: 20_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const lines = (text: string) => text.split("\n").filter((l) => l !== "");

  test("--json prints one object per record; text is one readable line", () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 1 });
    log.write(udpBatch(2));
    log.write(tcpBatch());
    log.close();
    const json = relayLog(["--file", path, "--json"]);
    expect(json.status).toBe(0);
    const objects = lines(json.stdout).map((l) => JSON.parse(l));
    expect(objects.map((o) => o.protocol)).toEqual(["udp", "udp", "tcp"]);
    expect(objects[0]).toMatchObject({ name: "host0.relay.test", bytesToClient: 100 });
    const text = relayLog(["--file", path]);
    expect(lines(text.stdout)).toEqual([
      "2023-11-14T22:13:20.000Z udp 198.18.0.2:40000 -> 198.18.1.2:53 " +
        "name=host0.relay.test parsed=dns up=1p/40B down=2p/100B duration=1.500s end=idle " +
        "listener=dns4 reply=pktinfo rule=- outbound=direct",
      "2023-11-14T22:13:21.000Z udp 198.18.0.2:40001 -> 198.18.1.2:53 " +
        "name=host1.relay.test parsed=dns up=1p/41B down=2p/101B duration=1.500s end=idle " +
        "listener=dns4 reply=pktinfo rule=- outbound=direct",
      "2023-11-14T22:13:25.000Z tcp [2001:2:0:1::2]:50000 -> [2001:2:0:2::2]:8080 " +
        "name=- parsed=- up=10000B down=3000B duration=3.000s end=upstream-reset " +
        "listener=tcp6 reply=- rule=- outbound=direct",
    ]);
  });

  test("DNS records show qtype, rcode and resolver, in text and --json", () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 1 });
    log.write(dnsBatch());
    log.close();
    const text = relayLog(["--file", path]);
    expect(text.status).toBe(0);
    const tails = lines(text.stdout).map((l) => l.slice(l.indexOf(" end=")));
    expect(tails).toEqual([
      " end=dns-answered listener=dns4 reply=pktinfo rule=dns outbound=resolvers " +
        "qtype=A rcode=NOERROR resolver=198.18.1.3:53",
      " end=dns-local listener=dns4 reply=pktinfo rule=dns outbound=blocked " +
        "qtype=AAAA rcode=NXDOMAIN resolver=-",
      " end=dns-timeout listener=dns4 reply=pktinfo rule=dns outbound=resolvers " +
        "qtype=HTTPS rcode=- resolver=-",
    ]);
    const json = relayLog(["--file", path, "--json"]);
    expect(json.status).toBe(0);
    const objects = lines(json.stdout).map((l) => JSON.parse(l));
    expect(objects.map((o) => [o.qtype, o.rcode, o.resolver])).toEqual([
      [1, 0, "198.18.1.3:53"],
      [28, 3, null],
      [65, null, null],
    ]);
  });

  test("a version 1 file prints as before (no query log fields)", () => {
    const text = relayLog(["--file", v1File(tempPath())]);
    expect(text.status).toBe(0);
    expect(text.stderr).toBe("");
    expect(lines(text.stdout)).toEqual([
      "2023-11-14T22:13:20.000Z udp 198.18.0.2:40000 -> 198.18.1.2:53 " +
        "name=host0.relay.test parsed=dns up=1p/40B down=2p/100B duration=1.500s end=idle " +
        "listener=dns4 reply=pktinfo rule=- outbound=direct",
      "2023-11-14T22:13:21.000Z udp 198.18.0.2:40001 -> 198.18.1.2:53 " +
        "name=host1.relay.test parsed=dns up=1p/41B down=2p/101B duration=1.500s end=idle " +
        "listener=dns4 reply=pktinfo rule=- outbound=direct",
    ]);
  });

  test("filters: --client, --target, --name, --protocol, --since, --limit", () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 1 << 20, filesMax: 1 });
    log.write(udpBatch(30));
    log.write(tcpBatch());
    log.close();
    const count = (args: string[]) => {
      const r = relayLog(["--file", path, "--json", ...args]);
      expect(r.status).toBe(0);
      return lines(r.stdout).map((l) => JSON.parse(l));
    };
    expect(count(["--client", "198.18.0.2"]).length).toBe(30);
    expect(count(["--client", "198.18.0.2:40003"]).map((o) => o.name)).toEqual([
      "host3.relay.test",
    ]);
    expect(count(["--client", "[2001:2:0:1:0::2]:50000"]).length).toBe(1);
    expect(count(["--target", "198.18.1.2:53"]).length).toBe(30);
    expect(count(["--target", "198.18.1.2:54"]).length).toBe(0);
    expect(count(["--name", "HOST12.relay.test."]).map((o) => o.name)).toEqual([
      "host12.relay.test",
    ]);
    expect(count(["--name", "relay.test"]).length).toBe(30);
    expect(count(["--name", "lay.test"]).length).toBe(0);
    expect(count(["--protocol", "tcp"]).map((o) => o.bytesToTarget)).toEqual([10_000]);
    // Records 25-29 ended at or after EPOCH + 25 s (the TCP one at EPOCH + 5 s).
    const since = new Date(EPOCH_MS + 25_000).toISOString();
    expect(count(["--since", since]).map((o) => o.name)).toEqual(names(25, 30));
    expect(count(["--limit", "3"]).map((o) => o.name)).toEqual(names(0, 3));
    expect(count(["--protocol", "udp", "--limit", "2", "--name", "host7.relay.test"]).length).toBe(
      1,
    );
  });

  test("a torn last record: every complete one printed, the torn one reported, exit 0", () => {
    const { bytes, bounds } = validFile(tempPath(), 4);
    const path = tempPath();
    writeFileSync(path, bytes.subarray(0, bounds[3] + 5));
    const r = relayLog(["--file", path, "--json"]);
    expect(r.status).toBe(0);
    expect(lines(r.stdout).map((l) => JSON.parse(l).name)).toEqual(names(0, 3));
    expect(r.stderr).toBe(`relay log: ${path}: torn record at byte ${bounds[3]}: skipped\n`);
  });

  test("--config reads flowLog.path's rotated files oldest first, then the file", () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 4096, filesMax: 100 });
    for (let k = 0; k < 120; k += 10) log.write(udpBatch(10, k));
    log.close();
    expect(existsSync(`${path}.2`)).toBe(true);
    const config = join(dir, "relay.json");
    writeFileSync(config, JSON.stringify({ flowLog: { path, fileBytesMax: 4096 } }));
    const r = relayLog(["--config", config, "--json"]);
    expect(r.stderr).toBe("");
    expect(lines(r.stdout).map((l) => JSON.parse(l).name)).toEqual(names(0, 120));
  });

  test("bad arguments exit 2, a missing file exits 1", () => {
    expect(relayLog([]).status).toBe(2);
    expect(relayLog(["--file", "x", "--config", "y"]).status).toBe(2);
    expect(relayLog(["--file", "x", "--since", "yesterday"]).stderr).toContain("--since");
    expect(relayLog(["--file", "x", "--client", "nowhere"]).status).toBe(2);
    expect(relayLog(["--file", "x", "--protocol", "icmp"]).status).toBe(2);
    expect(relayLog(["--file", "x", "--limit", "0"]).status).toBe(2);
    const missing = relayLog(["--file", join(dir, "none.log")]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("no flow log at");
    const config = join(dir, "off.json");
    writeFileSync(config, "{}");
    expect(relayLog(["--config", config]).stderr).toContain('flowLog.path is ""');
    expect(relayLog(["--help"]).stdout).toContain("usage: bun run relay log");
  });

  test("--follow prints records as they are appended, across a rotation", async () => {
    const path = tempPath();
    const log = new FlowLog({ path, fileBytesMax: 4096, filesMax: 4 });
    log.write(udpBatch(2));
    const child = spawn(BUN, [MAIN, "log", "--file", path, "--follow", "--json"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    try {
      const seen = (n: number) =>
        waitFor(
          () => lines(out).map((l) => JSON.parse(l).name),
          (got) => got.length >= n,
          { what: `${n} records from relay log --follow`, timeoutMs: 10_000 },
        );
      expect(await seen(2)).toEqual(names(0, 2));
      log.write(udpBatch(3, 2));
      expect(await seen(5)).toEqual(names(0, 5));
      // Enough to rotate (4096 bytes hold ~30 records): the follower moves to the new file.
      for (let k = 5; k < 80; k += 5) log.write(udpBatch(5, k));
      expect(log.counters.rotations).toBeGreaterThanOrEqual(1);
      expect(await seen(80)).toEqual(names(0, 80));
      expect(err).toBe("");
    } finally {
      child.kill("SIGKILL");
      log.close();
    }
  });
});

describe("relay log argument parsing", () => {
  test("rotated files are listed oldest first, gaps and all", () => {
    const path = tempPath();
    for (const f of [`${path}.7`, `${path}.2`, `${path}.1`, path]) writeFileSync(f, "");
    expect(flowLogFiles(path)).toEqual([`${path}.7`, `${path}.2`, `${path}.1`, path]);
    expect(flowLogFiles(join(dir, "none"))).toEqual([]);
  });

  test("endpoints compare in canonical form", () => {
    const a = parseLogArgs(["--file", "f", "--client", "[2001:2:0:1:0:0:0:2]", "--target", "::1"]);
    expect(a.client).toEqual({ address: "2001:2:0:1::2", port: null });
    expect(a.target).toEqual({ address: "::1", port: null });
  });

  test("a name with control bytes never reaches the terminal as such", () => {
    const record = recordFromArray([
      1,
      0,
      1000,
      "udp",
      "198.18.0.2",
      1,
      "u",
      "198.18.1.2",
      53,
      1,
      1,
      1,
      1,
      'a\u001b[31m b"\\',
      "dns",
      null,
      "direct",
      "idle",
      "pktinfo",
    ]) as FlowRecord;
    expect(formatRecord(record)).not.toContain("qtype=");
    expect(formatRecord(record)).toContain("name=a\\x1b[31m\\x20b\\x22\\x5c parsed=dns");
  });
});
