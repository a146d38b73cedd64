// UDP echo server for the lab: bun src/lab/udp_echo.ts [--stamp] ADDR:PORT...
// Echoes every datagram to its sender. With --stamp the reply starts with the address
// the server saw ("198.18.1.1:40123|"), so tests can assert who the server talked to.
// Prints {"event":"ready"} once every socket is bound; exits on SIGTERM.

function splitEndpoint(text: string): [string, number] {
  const colon = text.lastIndexOf(":");
  const host = text.slice(0, colon).replace(/^\[|\]$/g, "");
  return [host, Number(text.slice(colon + 1))];
}

const args = process.argv.slice(2);
const stamp = args.includes("--stamp");
const endpoints = args.filter((a) => !a.startsWith("--"));
if (endpoints.length === 0) {
  console.error("usage: udp_echo.ts [--stamp] ADDR:PORT...");
  process.exit(2);
}
const encoder = new TextEncoder();
let echoed = 0;
let dropped = 0;
/** Replies waiting for socket buffer space (send() returned false); bounded. */
const PENDING_MAX = 4096;
type Pending = { data: Uint8Array; port: number; address: string };
const pending = new Map<unknown, Pending[]>();

function reply(socket: { send(d: Uint8Array, p: number, a: string): boolean }, data: Uint8Array,
  port: number, address: string) {
  const queue = pending.get(socket);
  if (queue && queue.length > 0) {
    if (queue.length >= PENDING_MAX) dropped++;
    else queue.push({ data: data.slice(), port, address });
    return;
  }
  if (!socket.send(data, port, address)) {
    pending.set(socket, [{ data: data.slice(), port, address }]);
  }
}
for (const endpoint of endpoints) {
  const [hostname, port] = splitEndpoint(endpoint);
  await Bun.udpSocket({
    hostname,
    port,
    socket: {
      data(socket, data, fromPort, fromAddress) {
        echoed++;
        if (!stamp) {
          reply(socket, data, fromPort, fromAddress);
          return;
        }
        const who = fromAddress.includes(":") ? `[${fromAddress}]:${fromPort}|` : `${fromAddress}:${fromPort}|`;
        const prefix = encoder.encode(who);
        const out = new Uint8Array(prefix.length + data.length);
        out.set(prefix);
        out.set(data, prefix.length);
        reply(socket, out, fromPort, fromAddress);
      },
      drain(socket) {
        const queue = pending.get(socket) ?? [];
        while (queue.length > 0 && socket.send(queue[0].data, queue[0].port, queue[0].address)) {
          queue.shift();
        }
      },
    },
  });
}
console.log(JSON.stringify({ event: "ready", endpoints }));
process.on("SIGTERM", () => {
  console.log(JSON.stringify({ event: "final", echoed, dropped }));
  process.exit(0);
});

export {};
