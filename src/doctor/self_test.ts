// The live self-test: the whole path on this kernel with this build, in throwaway
// namespaces (nothing of the host is touched):
//
//   client ns: c0 198.18.0.2 <-veth-> router ns: r0 198.18.0.1, r1 198.18.1.1
//                                      r1 <-veth-> server ns: s0 198.18.1.2 (UDP echo)
//
// The router gets the rules of a minimal copy of the config (gateway mode, one UDP
// listener, `relay rules` code) and runs the relay (`bun src/main.ts`); the server runs
// a UDP echo; the client sends a datagram to the server's address and must get the echo
// back from that address (the original destination), not from the relay's. Bounded
// (SELF_TEST_MS); namespaces, processes and files are removed in `finally`.
import { type ChildProcess, spawn as spawnChild } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Config, parseConfig } from "../config/load.ts";
import { applyRules, type Runner, RulesError } from "../rules/apply.ts";
import { PROJECT_ROOT } from "../sys/runtime.ts";
import { type Check, complaint, type Host } from "./check.ts";

/** Set-up, the relay's start and the exchange stay within this (clean-up follows). */
const SELF_TEST_MS = 15_000;
/** The client resends its datagram this often until the echo arrives (loss is not failure). */
const RESEND_MS = 250;
/** The relay's entry as this process runs it: src/main.ts (Bun), dist/node/main.js (Node). */
const MAIN = process.argv[1] ?? join(PROJECT_ROOT, "src", "main.ts");
const NET = {
  client: "198.18.0.2",
  routerClient: "198.18.0.1",
  routerServer: "198.18.1.1",
  server: "198.18.1.2",
  echoPort: 7007,
  listenerPort: 15353,
} as const;

/** Echoes every datagram after the address it came from ("ADDR|"); prints "ready" once bound. */
const ECHO = `const s = require("node:dgram").createSocket("udp4");
s.on("message", (m, r) => s.send(r.address + "|" + m, r.port, r.address));
s.bind(${NET.echoPort}, "${NET.server}", () => console.log("ready"));`;

/** Sends until the echo arrives (bounded by the caller's kill); prints who answered. */
const CLIENT = `const s = require("node:dgram").createSocket("udp4");
const payload = "relay-doctor-" + process.pid;
s.on("message", (m, r) => {
  const [seen, echoed] = m.toString().split("|");
  console.log(JSON.stringify({ address: r.address, port: r.port, seen, same: echoed === payload }));
  process.exit(0);
});
const send = () => s.send(payload, ${NET.echoPort}, "${NET.server}");
s.bind(0, "${NET.client}", () => { send(); setInterval(send, ${RESEND_MS}); });`;

class SelfTestError extends Error {}

/** The config the self-test's relay runs: the user's marks and table, one UDP listener. */
export function selfTestConfig(config: Config, controlPath: string): object {
  const udp = config.listeners.find((l) => l.protocol === "udp");
  return {
    listeners: [
      {
        name: "selftest",
        protocol: "udp",
        address: "127.0.0.1",
        port: NET.listenerPort,
        reply: udp?.reply ?? "auto",
      },
    ],
    intercept: [{ listener: "selftest", ports: [NET.echoPort], interfaces: ["r0"] }],
    udp: { sessionsMax: 64, replySocketsMax: 16 },
    mark: config.mark,
    tproxyMark: config.tproxyMark,
    routeTable: config.routeTable,
    rulePriority: config.rulePriority,
    control: { socketPath: controlPath },
    metrics: { port: 0 },
    log: { level: "warn" },
  };
}

/** A child process, with what it wrote on stderr so far. */
interface Proc {
  child: ChildProcess;
  stderr: string;
  /** Resolves once it exited and its pipes closed (all of its stderr is in). */
  closed: Promise<void>;
}

/** Lines of a process's stdout, until one satisfies `done`, it exits, or the deadline. */
function waitForLine(
  proc: Proc,
  done: (line: string) => boolean,
  deadline: number,
): Promise<string | null> {
  const stdout = proc.child.stdout!;
  return new Promise((resolve) => {
    let text = "";
    const finish = (found: string | null) => {
      clearTimeout(timer);
      stdout.off("data", onData);
      proc.child.off("exit", onExit);
      resolve(found);
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString("utf8");
      const lines = text.split("\n");
      text = lines.pop() ?? "";
      const found = lines.find(done);
      if (found !== undefined) finish(found);
    };
    const onExit = () => finish(null);
    const timer = setTimeout(() => finish(null), Math.max(0, deadline - performance.now()));
    stdout.on("data", onData);
    proc.child.once("exit", onExit);
  });
}

async function stderrTail(proc: Proc): Promise<string> {
  proc.child.kill("SIGKILL");
  await proc.closed;
  return proc.stderr.trim().split("\n").slice(-3).join(" | ");
}

export async function selfTest(config: Config, host: Host): Promise<Check> {
  const name = "self-test";
  const started = performance.now();
  const deadline = started + SELF_TEST_MS;
  const id = randomBytes(4).toString("hex");
  const ns = { client: `trl-doc-${id}-c`, router: `trl-doc-${id}-r`, server: `trl-doc-${id}-s` };
  const made: string[] = [];
  const procs: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), "relay-doctor-"));
  const step = (what: string, argv: string[], input?: string) => {
    const r = host.run(argv, input);
    if (r.status !== 0) throw new SelfTestError(`${what}: ${argv.join(" ")}: ${complaint(r)}`);
  };
  const exec = (n: string, argv: string[]) => step("set-up", ["ip", "netns", "exec", n, ...argv]);
  const spawn = (n: string, argv: string[]) => {
    const child = spawnChild("ip", ["netns", "exec", n, ...argv], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const closed = new Promise<void>((resolve) => child.once("close", () => resolve()));
    const proc: Proc = { child, stderr: "", closed };
    child.stderr!.on("data", (chunk: Buffer) => {
      proc.stderr += chunk.toString("utf8");
    });
    // A process that cannot start reports through its stderr text, not an exception.
    child.on("error", (err) => {
      proc.stderr += err.message;
    });
    procs.push(proc);
    return proc;
  };
  /** Synchronous, so that an interrupt (Ctrl-C) can run it too before exiting. */
  const cleanUp = () => {
    for (const p of procs) p.child.kill("SIGKILL");
    for (const n of made.splice(0)) {
      const pids = host.run(["ip", "netns", "pids", n]).stdout.trim();
      if (pids) host.run(["kill", "-9", ...pids.split(/\s+/)]);
      host.run(["ip", "netns", "del", n]);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const interrupted = (signal: NodeJS.Signals) => {
    cleanUp();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  try {
    for (const n of [ns.client, ns.router, ns.server]) {
      step("set-up", ["ip", "netns", "add", n]);
      made.push(n);
      exec(n, ["ip", "link", "set", "lo", "up"]);
    }
    const veth = (a: string, na: string, b: string, nb: string) =>
      step("set-up", [
        "ip",
        "link",
        "add",
        a,
        "netns",
        na,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        nb,
      ]);
    veth("c0", ns.client, "r0", ns.router);
    veth("r1", ns.router, "s0", ns.server);
    for (const [n, dev, cidr] of [
      [ns.client, "c0", `${NET.client}/24`],
      [ns.router, "r0", `${NET.routerClient}/24`],
      [ns.router, "r1", `${NET.routerServer}/24`],
      [ns.server, "s0", `${NET.server}/24`],
    ]) {
      exec(n, ["ip", "addr", "add", cidr, "dev", dev]);
      exec(n, ["ip", "link", "set", dev, "up"]);
    }
    exec(ns.client, ["ip", "route", "add", "default", "via", NET.routerClient]);
    exec(ns.server, ["ip", "route", "add", "default", "via", NET.routerServer]);
    // The mechanism under test, not the host's sysctls (their own checks cover those).
    // No forwarding: a datagram that the rules fail to intercept is dropped, not
    // forwarded to the server (whose echo would then look like a relayed one).
    for (const sysctl of [
      "net.ipv4.ip_forward=0",
      "net.ipv4.conf.all.rp_filter=0",
      "net.ipv4.conf.r0.rp_filter=0",
    ]) {
      exec(ns.router, ["sysctl", "-qw", sysctl]);
    }
    const raw = selfTestConfig(config, join(dir, "control.sock"));
    const inRouter: Runner = (argv, input) =>
      host.run(["ip", "netns", "exec", ns.router, ...argv], input);
    try {
      applyRules(parseConfig(raw), inRouter);
    } catch (err) {
      if (!(err instanceof RulesError)) throw err;
      throw new SelfTestError(`applying the rules: ${err.message}`);
    }
    const configPath = join(dir, "config.json");
    writeFileSync(configPath, JSON.stringify(raw));

    const echo = spawn(ns.server, [process.execPath, "-e", ECHO]);
    if ((await waitForLine(echo, (l) => l === "ready", deadline)) === null) {
      throw new SelfTestError(`the echo server did not start: ${await stderrTail(echo)}`);
    }
    const relay = spawn(ns.router, [process.execPath, MAIN, "--config", configPath]);
    const ready = await waitForLine(relay, (l) => l.includes('"event":"ready"'), deadline);
    if (ready === null) {
      throw new SelfTestError(`the relay did not start: ${await stderrTail(relay)}`);
    }
    const client = spawn(ns.client, [process.execPath, "-e", CLIENT]);
    const answer = await waitForLine(client, (l) => l.startsWith("{"), deadline);
    if (answer === null) {
      throw new SelfTestError(
        `no echo came back to the client within ${SELF_TEST_MS} ms of the start ` +
          `(relay: ${await stderrTail(relay)})`,
      );
    }
    const reply = JSON.parse(answer) as {
      address: string;
      port: number;
      seen: string;
      same: boolean;
    };
    const from = `${reply.address}:${reply.port}`;
    if (from !== `${NET.server}:${NET.echoPort}` || !reply.same) {
      throw new SelfTestError(
        `the reply came from ${from}${reply.same ? "" : " with another payload"}, ` +
          `not from the original destination ${NET.server}:${NET.echoPort}`,
      );
    }
    if (reply.seen !== NET.routerServer) {
      // The router does not forward: only the relay's own upstream socket reaches the server.
      throw new SelfTestError(
        `the server saw ${reply.seen}, not the relay's upstream address ${NET.routerServer}`,
      );
    }
    const ms = Math.round(performance.now() - started);
    return {
      name,
      status: "pass",
      detail:
        `a UDP datagram through the relay in throwaway namespaces came back from the ` +
        `original destination (${ms} ms; this config's marks and routing table)`,
    };
  } catch (err) {
    if (!(err instanceof SelfTestError)) throw err;
    return {
      name,
      status: "fail",
      detail: err.message,
      fix: "fix the failures above first; run `bun run relay doctor` as root (namespaces)",
    };
  } finally {
    process.off("SIGINT", interrupted);
    process.off("SIGTERM", interrupted);
    cleanUp();
    await Promise.all(procs.map((p) => p.closed));
  }
}
