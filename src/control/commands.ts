// The commands of the control socket: what each request asks of the relays, and the
// reply. The requests are untrusted (whoever can open the socket): each is validated,
// and every refusal is an {error} reply, never an exception out of here.
//
//   {cmd: "stats"}     -> {uptimeMs, timeMs, udp, tcp, outputErrors}: the counters and
//                         gauges of the SIGUSR1 metrics line, without its session list
//   {cmd: "sessions", client?, target?, name?, listener?, sort?, limit?}
//                      -> {sort, limit, udp: [...], udpMatched, tcp: [...] | null,
//                          tcpMatched}: UDP sessions and TCP connections that match
//   {cmd: "reload"}    -> {result, generation, message}: as SIGHUP (src/control/reloader.ts)
import type { TcpPlane } from "../tcp/plane.ts";
import type { UdpPlane } from "../udp/plane.ts";
import { outputErrors } from "./output.ts";
import { parseSessionQuery } from "./query.ts";
import type { Reloader } from "./reloader.ts";

export const COMMANDS = ["stats", "sessions", "reload"] as const;

export interface ControlSources {
  udp: UdpPlane;
  /** null without TCP listeners. */
  tcp: TcpPlane | null;
  /** The config's generation and reloads (stats), and `reload`; null: not offered. */
  reloader: Reloader | null;
}

export type ControlReply = Record<string, unknown>;

/** One request in, one reply out (an {error} reply for anything refused). */
export type ControlHandler = (request: unknown) => Promise<ControlReply>;

export function controlCommands(sources: ControlSources): ControlHandler {
  return async (request) => {
    if (typeof request !== "object" || request === null || Array.isArray(request)) {
      return { error: "a request is a map with a cmd field" };
    }
    const fields = request as Record<string, unknown>;
    const cmd = fields.cmd;
    if (cmd === "stats") return stats(sources);
    if (cmd === "sessions") return sessions(sources, fields);
    if (cmd === "reload") {
      if (!sources.reloader) return { error: "this relay does not reload" };
      return { ...(await sources.reloader.reload()) };
    }
    const named =
      typeof cmd === "string" ? `unknown command ${JSON.stringify(cmd.slice(0, 32))}` : "no cmd";
    return { error: `${named}: one of ${COMMANDS.join(", ")}` };
  };
}

async function stats(sources: ControlSources): Promise<ControlReply> {
  const udp = await sources.udp.snapshot(0);
  return {
    uptimeMs: udp.uptimeMs,
    timeMs: Date.now(),
    udp: udp.udp,
    tcp: sources.tcp ? (await sources.tcp.snapshot(0)).tcp : null,
    config: sources.reloader ? sources.reloader.state() : null,
    outputErrors,
  };
}

async function sessions(
  sources: ControlSources,
  fields: Record<string, unknown>,
): Promise<ControlReply> {
  const query = parseSessionQuery(fields);
  if (typeof query === "string") return { error: query };
  const udp = await sources.udp.snapshot(0, query);
  const tcp = sources.tcp ? await sources.tcp.snapshot(0, query) : null;
  return {
    sort: query.sort,
    limit: query.limit,
    udp: udp.sessions,
    udpMatched: udp.sessionsMatched ?? 0,
    tcp: tcp ? tcp.connections : null,
    tcpMatched: tcp ? tcp.matched : 0,
  };
}
