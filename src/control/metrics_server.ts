// The Prometheus endpoint: GET /metrics answers with the text of src/control/prometheus.ts,
// rendered from snapshots taken at scrape time; anything else is 404. It runs on the main
// thread with the rest of the control plane; the UDP snapshot is a round trip to the
// data-plane Worker (src/udp/plane.ts), answered between two of its epoll waits.
import type { FlowLogCounters } from "./flow_log.ts";
import type { Config } from "../config/load.ts";
import { StartError } from "../sys/errno.ts";
import { type HttpServer, serveHttp } from "../sys/http.ts";
import type { TcpPlane } from "../tcp/plane.ts";
import type { UdpPlane } from "../udp/plane.ts";
import { RateLimitedLog } from "./log.ts";
import { LoopLag } from "./loop_lag.ts";
import { readProcessStats } from "./process_stats.ts";
import type { ReloadState } from "./reloader.ts";
import { PROMETHEUS_CONTENT_TYPE, renderPrometheus } from "./prometheus.ts";

const METRICS_PATH = "/metrics";

export interface MetricsServer {
  /** Where it answers, for the start-up line. */
  readonly url: string;
  /** Closes the listening socket and any open connection. */
  stop(): void;
}

/**
 * Listens on config.metrics.address:port, or returns null for port 0 (no endpoint).
 * Throws a StartError naming config.metrics.port when it cannot listen.
 */
export async function startMetricsServer(
  settings: Config["metrics"],
  udp: UdpPlane,
  tcp: TcpPlane | null,
  /** The flow log writer's counters, or null without a flow log. */
  flowLog: () => FlowLogCounters | null,
  /** The config's generation and reload results. */
  config: () => ReloadState | null = () => null,
): Promise<MetricsServer | null> {
  if (settings.port === 0) return null;
  const lag = new LoopLag();
  const logger = new RateLimitedLog();
  // Scrapes that arrive together share one snapshot: at most one Worker round trip is in
  // flight, however many scrapers (or a flood of requests) there are.
  let pending: Promise<string> | null = null;
  const scrape = (): Promise<string> => {
    pending ??= (async () => {
      try {
        const snapshot = await udp.snapshot(0);
        const tcpView = tcp ? await tcp.snapshot(0) : null;
        return renderPrometheus({
          udp: snapshot,
          tcp: tcpView ? tcpView.tcp : null,
          process: readProcessStats(),
          loopLag: lag.take(),
          flowLog: flowLog(),
          config: config(),
        });
      } finally {
        pending = null;
      }
    })();
    return pending;
  };

  const where = settings.address.includes(":") ? `[${settings.address}]` : settings.address;
  let server: HttpServer;
  try {
    server = await serveHttp(settings.address, settings.port, async (method, path) => {
      if (method !== "GET" || path !== METRICS_PATH) {
        return { status: 404, body: "not found: the metrics are at GET /metrics\n" };
      }
      try {
        const text = await scrape();
        return { status: 200, contentType: PROMETHEUS_CONTENT_TYPE, body: text };
      } catch (err) {
        const message = (err as Error).message;
        logger.log("metrics-scrape", `metrics: a scrape failed: ${message}`);
        return { status: 503, body: `metrics unavailable: ${message}\n` };
      }
    });
  } catch (err) {
    lag.stop();
    const code = (err as { code?: string }).code ?? (err as Error).message;
    const why =
      code === "EADDRINUSE"
        ? "EADDRINUSE: the address and port are already in use (ss -ltnp shows by what)"
        : code === "EACCES"
          ? "EACCES: not permitted (a port below 1024 needs CAP_NET_BIND_SERVICE)"
          : code;
    throw new StartError(
      `metrics endpoint ${where} port ${settings.port} (config.metrics.port; 0 turns the ` +
        `endpoint off): ${why}`,
      code === "EACCES",
    );
  }
  return {
    url: `http://${where}:${server.port}${METRICS_PATH}`,
    stop() {
      lag.stop();
      server.stop();
    },
  };
}
