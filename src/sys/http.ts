// A small HTTP server for the metrics endpoint: Bun.serve under Bun, node:http under
// Node.js. One handler shape for both: method and path in, status, type and text out.
import { createServer } from "node:http";
import { RUNTIME } from "./runtime.ts";

export interface HttpReply {
  status: number;
  contentType?: string;
  body: string;
}

export interface HttpServer {
  /** The port it listens on. */
  readonly port: number;
  /** Closes the listening socket and every open connection. */
  stop(): void;
}

/** Listens; rejects with the error (its code, e.g. EADDRINUSE) when it cannot. */
export async function serveHttp(
  hostname: string,
  port: number,
  handle: (method: string, path: string) => Promise<HttpReply>,
): Promise<HttpServer> {
  const headersOf = (reply: HttpReply) =>
    reply.contentType === undefined ? undefined : { "content-type": reply.contentType };
  if (RUNTIME === "bun") {
    const server = Bun.serve({
      hostname,
      port,
      // No stack traces or source in error pages.
      development: false,
      // Explicit: with development off, Bun 1.4.5 sets SO_REUSEPORT unless told not to
      // (oven-sh/bun#1443), and a second relay would then share the port silently
      // instead of failing its start. test/netns/metrics.test.ts checks the refusal.
      reusePort: false,
      async fetch(request) {
        const reply = await handle(request.method, new URL(request.url).pathname);
        return new Response(reply.body, { status: reply.status, headers: headersOf(reply) });
      },
    });
    return { port: server.port ?? port, stop: () => server.stop(true) };
  }
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? "/", "http://localhost").pathname;
    handle(request.method ?? "GET", path).then(
      (reply) => {
        response.writeHead(reply.status, headersOf(reply));
        response.end(reply.body);
      },
      () => {
        response.writeHead(500);
        response.end();
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    // exclusive: never share the port (a second relay must fail its start, as on Bun).
    server.listen({ host: hostname, port, exclusive: true }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  return {
    port: typeof address === "object" && address !== null ? address.port : port,
    stop() {
      server.close();
      server.closeAllConnections();
    },
  };
}
