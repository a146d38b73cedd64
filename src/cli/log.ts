// bun run relay log: prints the flow log (src/control/flow_log.ts) as text or JSON lines.
// Reads the rotated predecessors first (path.N ... path.1, oldest first), then the file;
// --follow then waits for new records, across rotations. A torn or corrupt record
// (a relay killed mid-write) is skipped and reported on stderr, never fatal: every
// complete record around it is printed.
import { setTimeout as sleep } from "node:timers/promises";
import { closeSync, existsSync, fstatSync, openSync, readSync, statSync } from "node:fs";
import { Unpackr } from "msgpackr";
import { ConfigError, loadConfigFile } from "../config/load.ts";
import { FrameDecoder, READ_CHUNK_BYTES_MAX } from "../control/flow_frame.ts";
import {
  type FlowRecord,
  looksLikeRecord,
  qtypeName,
  rcodeName,
  recordFromArray,
} from "../control/flow_record.ts";
import { formatAddress, parseAddress } from "../sys/addr.ts";

const USAGE = `usage: bun run relay log [--file PATH | --config FILE] [--follow] [--json]
         [--client X] [--target X] [--name X] [--protocol udp|tcp] [--since ISO] [--limit N]

  --file PATH      read this one file only
  --config FILE    read the relay's flowLog.path and its rotated files (oldest first)
  --follow         after the last record, wait for new ones (across rotations)
  --json           one JSON object per record instead of text
  --client X       client address, or address:port ([v6]:port)
  --target X       original destination address, or address:port ([v6]:port)
  --name X         sniffed name X or a name under it (www.X), case-insensitive
  --protocol P     udp or tcp
  --since ISO      records of flows that ended at or after this time (Date.parse)
  --limit N        print at most N records (the first N that match), then exit

Exit status: 0 read (torn or corrupt records skipped are reported on stderr);
1 no flow log file; 2 bad arguments.`;

/** Rotated files looked for at most (flowLog.filesMax's maximum). */
const ROTATED_FILES_MAX = 100;
/** --follow: how often the file is checked for new bytes and for a rotation. */
const FOLLOW_POLL_MS = 200;
/** --follow: chunks read per poll at most, so output keeps flowing on a huge backlog. */
const FOLLOW_CHUNKS_PER_POLL = 64;
const LIMIT_MAX = 1e12;

const EXIT_OK = 0;
const EXIT_NO_FILE = 1;
const EXIT_USAGE = 2;

class UsageError extends Error {}

interface Endpoint {
  address: string;
  port: number | null;
}

interface LogArgs {
  file: string | null;
  configPath: string | null;
  follow: boolean;
  json: boolean;
  client: Endpoint | null;
  target: Endpoint | null;
  name: string | null;
  protocol: "udp" | "tcp" | null;
  sinceMs: number | null;
  limit: number;
}

/** An address (any spelling; compared in its canonical form), with or without a port. */
function parseEndpoint(option: string, text: string): Endpoint {
  const bad = () => new UsageError(`${option}: expected an address or address:port, got ${text}`);
  let host = text;
  let port: number | null = null;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) throw bad();
    host = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (rest !== "") {
      if (!rest.startsWith(":")) throw bad();
      port = Number(rest.slice(1));
    }
  } else if (parseAddress(text) === null) {
    const colon = text.lastIndexOf(":");
    if (colon < 0) throw bad();
    host = text.slice(0, colon);
    port = Number(text.slice(colon + 1));
  }
  const addr = parseAddress(host);
  if (addr === null) throw bad();
  if (port !== null && !(Number.isInteger(port) && port >= 0 && port <= 65535)) throw bad();
  return { address: formatAddress(addr), port };
}

export function parseLogArgs(argv: string[]): LogArgs {
  const args: LogArgs = {
    file: null,
    configPath: null,
    follow: false,
    json: false,
    client: null,
    target: null,
    name: null,
    protocol: null,
    sinceMs: null,
    limit: LIMIT_MAX,
  };
  const value = (i: number, option: string) => {
    const v = argv[i];
    if (v === undefined) throw new UsageError(`${option} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--file") args.file = value(++i, a);
    else if (a === "--config") args.configPath = value(++i, a);
    else if (a === "--follow") args.follow = true;
    else if (a === "--json") args.json = true;
    else if (a === "--client") args.client = parseEndpoint(a, value(++i, a));
    else if (a === "--target") args.target = parseEndpoint(a, value(++i, a));
    else if (a === "--name") {
      const name = value(++i, a).toLowerCase();
      args.name = name.endsWith(".") ? name.slice(0, -1) : name;
    } else if (a === "--protocol") {
      const p = value(++i, a);
      if (p !== "udp" && p !== "tcp") throw new UsageError(`--protocol: udp or tcp, got ${p}`);
      args.protocol = p;
    } else if (a === "--since") {
      const text = value(++i, a);
      const ms = Date.parse(text);
      if (Number.isNaN(ms)) throw new UsageError(`--since: not a date and time: ${text}`);
      args.sinceMs = ms;
    } else if (a === "--limit") {
      const n = Number(value(++i, a));
      if (!(Number.isInteger(n) && n >= 1 && n <= LIMIT_MAX)) {
        throw new UsageError("--limit needs a positive integer");
      }
      args.limit = n;
    } else throw new UsageError(`unknown argument ${JSON.stringify(a)}`);
  }
  if (args.file !== null && args.configPath !== null) {
    throw new UsageError("--file and --config: one or the other");
  }
  if (args.file === null && args.configPath === null) {
    throw new UsageError("which flow log? --file PATH or --config FILE");
  }
  return args;
}

/** The files of the flow log at `path`, oldest first: path.N ... path.1, then path. */
export function flowLogFiles(path: string): string[] {
  const files: string[] = [];
  for (let k = ROTATED_FILES_MAX; k >= 1; k--) {
    if (existsSync(`${path}.${k}`)) files.push(`${path}.${k}`);
  }
  if (existsSync(path)) files.push(path);
  return files;
}

function matches(r: FlowRecord, args: LogArgs): boolean {
  if (args.protocol !== null && r.protocol !== args.protocol) return false;
  if (args.sinceMs !== null && r.endMs < args.sinceMs) return false;
  const c = args.client;
  if (c !== null && (r.client !== c.address || (c.port !== null && r.clientPort !== c.port))) {
    return false;
  }
  const t = args.target;
  if (t !== null && (r.target !== t.address || (t.port !== null && r.targetPort !== t.port))) {
    return false;
  }
  if (args.name !== null) {
    const name = r.name?.toLowerCase() ?? null;
    if (name === null || (name !== args.name && !name.endsWith(`.${args.name}`))) return false;
  }
  return true;
}

const CHAR_SPACE = 0x20;
const CHAR_TILDE = 0x7e;
const CHAR_QUOTE = 0x22;
const CHAR_BACKSLASH = 0x5c;

/**
 * A name as the text line shows it: printable ASCII as is, anything else as \xHH. A
 * sniffed name is the client's bytes: it must not reach a terminal as control codes.
 */
function printable(text: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > CHAR_SPACE && c <= CHAR_TILDE && c !== CHAR_QUOTE && c !== CHAR_BACKSLASH) {
      out += text[i];
    } else out += `\\x${c.toString(16).padStart(2, "0")}`;
  }
  return out;
}

function endpoint(address: string, port: number): string {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/** The readable one-line form. */
export function formatRecord(r: FlowRecord): string {
  const way = (packets: number | null, bytes: number) =>
    packets === null ? `${bytes}B` : `${packets}p/${bytes}B`;
  const seconds = ((r.endMs - r.startMs) / 1000).toFixed(3);
  const fields = [
    new Date(r.endMs).toISOString(),
    r.protocol,
    endpoint(r.client, r.clientPort),
    "->",
    endpoint(r.target, r.targetPort),
    `name=${r.name === null ? "-" : printable(r.name)}`,
    `parsed=${r.parsed ?? "-"}`,
    `up=${way(r.packetsToTarget, r.bytesToTarget)}`,
    `down=${way(r.packetsToClient, r.bytesToClient)}`,
    `duration=${seconds}s`,
    `end=${r.end}`,
    `listener=${r.listener}`,
    `reply=${r.reply ?? "-"}`,
    `rule=${r.rule === null ? "-" : printable(r.rule)}`,
    `outbound=${printable(r.outbound)}`,
  ];
  // DNS records of a version 2 file: the query log's fields (v1 and other flows: none).
  if (r.qtype !== null) {
    fields.push(
      `qtype=${qtypeName(r.qtype)}`,
      `rcode=${r.rcode === null ? "-" : rcodeName(r.rcode)}`,
      `resolver=${r.resolver === null ? "-" : printable(r.resolver)}`,
    );
  }
  return fields.join(" ");
}

/** Prints records (to --limit) and reports damage; shared by every file read. */
class Printer {
  printed = 0;
  private lines: string[] = [];
  private readonly unpackr = new Unpackr({ useRecords: false });

  constructor(private readonly args: LogArgs) {}

  get done(): boolean {
    return this.printed >= this.args.limit;
  }

  decoder(file: string): FrameDecoder {
    return new FrameDecoder(
      {
        frame: (payload, offset) => this.frame(file, payload, offset),
        problem: (message) => console.error(`relay log: ${file}: ${message}`),
      },
      looksLikeRecord,
    );
  }

  private frame(file: string, payload: Uint8Array, offset: number): void {
    if (this.done) return;
    let record: FlowRecord | string;
    try {
      record = recordFromArray(this.unpackr.unpack(payload));
    } catch (err) {
      record = `not msgpack (${(err as Error).message})`;
    }
    if (typeof record === "string") {
      console.error(`relay log: ${file}: unreadable record at byte ${offset}: ${record}: skipped`);
      return;
    }
    if (!matches(record, this.args)) return;
    this.lines.push(this.args.json ? JSON.stringify(record) : formatRecord(record));
    this.printed++;
  }

  /** Writes the lines gathered, waiting for a slow reader of stdout. */
  async flush(): Promise<void> {
    if (this.lines.length === 0) return;
    const text = `${this.lines.join("\n")}\n`;
    this.lines = [];
    if (!process.stdout.write(text)) {
      await new Promise((resolve) => process.stdout.once("drain", resolve));
    }
  }
}

/** One open file of the log, read from where it was left. */
class OpenFile {
  private readonly chunk = new Uint8Array(READ_CHUNK_BYTES_MAX);
  private readonly decoder: FrameDecoder;
  readonly ino: number;

  private constructor(
    private readonly fd: number,
    printer: Printer,
    file: string,
  ) {
    this.decoder = printer.decoder(file);
    this.ino = fstatSync(fd).ino;
  }

  static open(file: string, printer: Printer): OpenFile | null {
    try {
      return new OpenFile(openSync(file, "r"), printer, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
  }

  /** Reads up to `chunksMax` chunks; returns whether the end of the file was reached. */
  read(printer: Printer, chunksMax: number): boolean {
    for (let k = 0; k < chunksMax && !printer.done; k++) {
      const n = readSync(this.fd, this.chunk, 0, this.chunk.length, null);
      if (n === 0) return true;
      this.decoder.push(this.chunk.subarray(0, n));
    }
    return printer.done;
  }

  /** The file is complete: a frame still short is torn. */
  finish(): void {
    this.decoder.end();
    closeSync(this.fd);
  }
}

async function readWhole(file: string, printer: Printer): Promise<void> {
  const f = OpenFile.open(file, printer);
  if (f === null) return; // rotated away between the listing and now
  // One chunk at a time, printing as we go: memory stays bounded whatever the file size.
  while (!f.read(printer, 1)) await printer.flush();
  if (!printer.done) f.finish();
  await printer.flush();
}

function inodeOf(file: string): number {
  try {
    return statSync(file).ino;
  } catch {
    return -1;
  }
}

/** --follow: the current file from where it was left, then each file that replaces it. */
async function follow(path: string, printer: Printer, current: OpenFile | null): Promise<void> {
  for (;;) {
    if (current !== null) current.read(printer, FOLLOW_CHUNKS_PER_POLL);
    await printer.flush();
    if (printer.done) return;
    let ino = -1;
    try {
      ino = statSync(path).ino;
    } catch {
      // Between a rotation's rename and the new file: look again next time.
    }
    if (ino >= 0 && (current === null || ino !== current.ino)) {
      // Rotated: the old file (now path.K) is complete once a new one exists. Several
      // rotations may have happened since the last look: path.K-1 ... path.1 came after it.
      if (current !== null) {
        while (!current.read(printer, FOLLOW_CHUNKS_PER_POLL)) await printer.flush();
        if (!printer.done) current.finish();
        await printer.flush();
        const rotated = flowLogFiles(path).filter((f) => f !== path);
        const old = rotated.findIndex((f) => inodeOf(f) === current!.ino);
        for (const f of old >= 0 ? rotated.slice(old + 1) : []) {
          if (printer.done) break;
          await readWhole(f, printer);
        }
        if (printer.done) return;
      }
      current = OpenFile.open(path, printer);
      continue;
    }
    await sleep(FOLLOW_POLL_MS);
  }
}

/** Runs `relay log` with its arguments; returns the exit status. */
export async function runLog(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return EXIT_OK;
  }
  let args: LogArgs;
  let path: string;
  try {
    args = parseLogArgs(argv);
    if (args.file !== null) path = args.file;
    else {
      path = loadConfigFile(args.configPath!).flowLog.path;
      if (path === "") throw new UsageError(`${args.configPath}: flowLog.path is "" (no flow log)`);
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`relay log: ${err.describe()}`);
      return EXIT_USAGE;
    }
    if (!(err instanceof UsageError)) throw err;
    console.error(`relay log: ${err.message}\n${USAGE}`);
    return EXIT_USAGE;
  }
  // A reader that went away (`relay log | head`) ends the listing, quietly.
  process.stdout.on("error", () => process.exit(EXIT_OK));
  const files = args.file !== null ? (existsSync(path) ? [path] : []) : flowLogFiles(path);
  if (files.length === 0 && !args.follow) {
    console.error(`relay log: no flow log at ${path}`);
    return EXIT_NO_FILE;
  }
  const printer = new Printer(args);
  const last = files.at(-1);
  for (const file of files) {
    if (printer.done) break;
    if (args.follow && file === path) break; // followed below, from its start
    await readWhole(file, printer);
  }
  if (args.follow && !printer.done) {
    const current = last === path ? OpenFile.open(path, printer) : null;
    await follow(path, printer, current);
  }
  await printer.flush();
  return EXIT_OK;
}
