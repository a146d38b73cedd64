// The flow log's writer, on the main thread (the control plane): ended flows arrive in
// batches (FlowBatch: from the UDP worker's timer by postMessage, from the TCP relay's
// timer by a call), each record is packed by the one Packr built here, framed
// (src/control/flow_frame.ts) and appended to flowLog.path with one write per batch.
//
// The file is opened O_APPEND, so a frame lands whole at the end or, if the process dies
// inside write(2), as a torn last frame that the reader skips and reports. Past
// fileBytesMax the file is rotated: path -> path.1 -> path.2 ... path.filesMax, the
// oldest replaced. A failed write (disk full, EIO) loses that batch, is counted and
// reported on stderr (rate-limited), and never stops the relay.
import {
  closeSync,
  constants,
  fstatSync,
  ftruncateSync,
  openSync,
  renameSync,
  writeSync,
} from "node:fs";
import { Packr } from "msgpackr";
import { END_REASON_NAMES, PROTOCOL_NAMES, PROTOCOL_UNKNOWN } from "../flow/table.ts";
import {
  FLOW_ADDR_BYTES,
  type FlowBatch,
  REPLY_PKTINFO,
  REPLY_SOCKET,
} from "../flow/flow_records.ts";
import { formatAddress, formatEndpoint } from "../sys/addr.ts";
import { ACTION_DROP } from "../policy/config.ts";
import { TCP_END_NAMES, TCP_PARSED_DNS, TCP_PARSED_TLS } from "../tcp/layout.ts";
import { frameBytes, writeFrame } from "./flow_frame.ts";
import { FIELD, FLOW_RECORD_FIELDS, FLOW_RECORD_VERSION } from "./flow_record.ts";
import { RateLimitedLog } from "./log.ts";

/**
 * Frame bytes gathered for one write. A batch of typical records (~150 bytes) up to
 * ~7000 records is one write; a larger batch (a mass expiry) goes out in several.
 */
const OUT_BYTES = 1 << 20;
const FILE_MODE = 0o640;

export interface FlowLogOptions {
  path: string;
  fileBytesMax: number;
  filesMax: number;
}

export class FlowLogCounters {
  /** Records written whole (as far as write(2) said). */
  records = 0;
  bytes = 0;
  /** Records not written: an open, write or rotation step failed. */
  recordsLost = 0;
  writeErrors = 0;
  rotations = 0;
}

export class FlowLog {
  readonly counters = new FlowLogCounters();
  /** One Packr for the process (STYLE.md 2); arrays only, so no shared structures. */
  private readonly packr = new Packr({ useRecords: false });
  private readonly out = new Uint8Array(OUT_BYTES);
  private outBytes = 0;
  private outRecords = 0;
  /** The record being packed, reused. */
  private readonly row: unknown[] = new Array(FLOW_RECORD_FIELDS).fill(null);
  private fd = -1;
  /** Size of the open file (where the next frame lands). */
  private fileBytes = 0;
  /** Only a regular file is rotated (a path such as /dev/null is written, never renamed). */
  private regular = true;
  private readonly logger = new RateLimitedLog();

  /** A copy: setRotation() changes it, never the caller's config. */
  private readonly options: FlowLogOptions;

  /** Opens the file; throws when it cannot (a configuration error, reported at start). */
  constructor(options: FlowLogOptions) {
    this.options = { ...options };
    this.row[FIELD.version] = FLOW_RECORD_VERSION;
    const error = this.open();
    if (error) throw new Error(`flow log ${options.path}: ${error}`);
  }

  /** A reload: the next write past the new size rotates, keeping the new count. */
  setRotation(fileBytesMax: number, filesMax: number): void {
    this.options.fileBytesMax = fileBytesMax;
    this.options.filesMax = filesMax;
  }

  /** Appends the batch's records. */
  write(batch: FlowBatch): void {
    const row = this.row;
    const udp = batch.protocol === "udp";
    for (let i = 0; i < batch.count; i++) {
      const ports = batch.ports[i];
      const parsed = batch.parsed[i];
      const reply = batch.reply[i];
      row[FIELD.startMs] = Math.round(batch.startMs[i]);
      row[FIELD.endMs] = Math.round(batch.endMs[i]);
      row[FIELD.protocol] = batch.protocol;
      row[FIELD.client] = formatAddress(batch.addrs, i * FLOW_ADDR_BYTES);
      row[FIELD.clientPort] = ports >>> 16;
      row[FIELD.listener] = batch.listeners[batch.listener[i]] ?? "?";
      row[FIELD.target] = formatAddress(batch.addrs, i * FLOW_ADDR_BYTES + 16);
      row[FIELD.targetPort] = ports & 0xffff;
      row[FIELD.packetsToTarget] = udp ? batch.packetsToTarget[i] : null;
      row[FIELD.bytesToTarget] = batch.bytesToTarget[i];
      row[FIELD.packetsToClient] = udp ? batch.packetsToClient[i] : null;
      row[FIELD.bytesToClient] = batch.bytesToClient[i];
      row[FIELD.name] = batch.names[i];
      row[FIELD.parsed] = udp
        ? parsed !== PROTOCOL_UNKNOWN
          ? PROTOCOL_NAMES[parsed]
          : null
        : parsed === TCP_PARSED_TLS
          ? "tls"
          : parsed === TCP_PARSED_DNS
            ? "dns"
            : null;
      const rule = batch.rule[i];
      const action = batch.outbound[i];
      row[FIELD.rule] = rule >= 0 ? (batch.ruleNames[rule] ?? "?") : null;
      row[FIELD.outbound] =
        action >= 0
          ? (batch.outboundNames[action] ?? "?")
          : action === ACTION_DROP
            ? "drop"
            : "reject";
      row[FIELD.end] =
        (udp ? END_REASON_NAMES[batch.reason[i]] : TCP_END_NAMES[batch.reason[i]]) ?? "unknown";
      row[FIELD.reply] =
        reply === REPLY_PKTINFO ? "pktinfo" : reply === REPLY_SOCKET ? "socket" : null;
      const rcode = batch.rcode[i];
      const resolverPort = batch.resolverPort[i];
      row[FIELD.qtype] = batch.qtype[i] !== 0 ? batch.qtype[i] : null;
      row[FIELD.rcode] = rcode >= 0 ? rcode : null;
      // The resolver's text only here, on the main thread (the data side keeps numbers).
      row[FIELD.resolver] =
        resolverPort !== 0 ? formatEndpoint(batch.resolverAddrs, i * 16, resolverPort) : null;
      this.append(this.packr.pack(row));
    }
    this.flush();
  }

  /** Writes what is gathered and closes the file (at stop). */
  close(): void {
    this.flush();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  private append(payload: Uint8Array): void {
    const bytes = frameBytes(payload.length);
    if (this.outBytes + bytes > this.out.length) this.flush();
    const pending = this.fileBytes + this.outBytes;
    if (this.regular && pending > 0 && pending + bytes > this.options.fileBytesMax) {
      this.flush();
      this.rotate();
    }
    this.outBytes = writeFrame(this.out, this.outBytes, payload);
    this.outRecords++;
  }

  /** One write of the gathered frames. */
  private flush(): void {
    const bytes = this.outBytes;
    const records = this.outRecords;
    if (bytes === 0) return;
    this.outBytes = 0;
    this.outRecords = 0;
    if (this.fd < 0) {
      const error = this.open();
      if (error) {
        this.fail("open", error, records);
        return;
      }
    }
    let written = 0;
    try {
      // A regular file takes it all at once; the loop covers a short write (a signal).
      while (written < bytes) {
        const n = writeSync(this.fd, this.out, written, bytes - written);
        if (n <= 0) throw new Error(`write returned ${n}`);
        written += n;
      }
    } catch (err) {
      // Disk full half way leaves a torn frame that the next batch would follow: cut the
      // file back to its last whole frame (if that fails too, the reader skips the tear).
      if (written > 0 && this.regular) {
        try {
          ftruncateSync(this.fd, this.fileBytes);
        } catch {
          this.fileBytes += written;
        }
      }
      this.fail("write", describe(err), records);
      return;
    }
    this.fileBytes += bytes;
    this.counters.records += records;
    this.counters.bytes += bytes;
  }

  /** path -> path.1 -> ... -> path.filesMax (the oldest is replaced), then a new path. */
  private rotate(): void {
    const { path, filesMax } = this.options;
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    try {
      for (let k = filesMax - 1; k >= 1; k--) {
        try {
          renameSync(`${path}.${k}`, `${path}.${k + 1}`);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        }
      }
      renameSync(path, `${path}.1`);
      this.fileBytes = 0;
      this.counters.rotations++;
    } catch (err) {
      this.fail("rotate", describe(err), 0);
    }
    // Opened again by the next flush (a failure is counted there).
  }

  /** Opens path for appending; returns why not, or null. */
  private open(): string | null {
    try {
      // (Bun adds O_CLOEXEC itself: /proc/self/fdinfo shows it.)
      const fd = openSync(
        this.options.path,
        constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT,
        FILE_MODE,
      );
      try {
        const stat = fstatSync(fd);
        this.regular = stat.isFile();
        this.fileBytes = this.regular ? stat.size : 0;
      } catch (err) {
        closeSync(fd);
        throw err;
      }
      this.fd = fd;
      return null;
    } catch (err) {
      return describe(err);
    }
  }

  private fail(step: string, error: string, records: number): void {
    this.counters.writeErrors++;
    this.counters.recordsLost += records;
    this.logger.log(
      `flow-log-${step}`,
      `flow log ${this.options.path}: ${step}: ${error}; ` +
        `${this.counters.recordsLost} records lost so far; the relay goes on`,
    );
  }
}

function describe(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code ? `${code} (${(err as Error).message})` : String((err as Error).message ?? err);
}
