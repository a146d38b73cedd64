// Runs in a lab namespace (ip netns exec NS bun socks5_driver.ts JSON): SOCKS5 round trips
// through a server with the relay's codec, one JSON line of results per request.
//   {"server": "198.18.1.2:1080", "connect": [{"host", "port", "domain"?}],
//    "associate": [{"host", "port"}], "refused": [{"host", "port"}]}
import {
  connectRoundTrip,
  associateRoundTrip,
  endpoint,
  ipAddress,
  handshake,
} from "../lab/socks5_client.ts";
import { CMD_CONNECT } from "../../src/egress/socks5.ts";

interface Target {
  host: string;
  port: number;
  /** CONNECT by this name (ATYP 3) instead of the address: the server resolves it. */
  domain?: string;
}

const job = JSON.parse(process.argv[2]) as {
  server: string;
  connect?: Target[];
  associate?: Target[];
  refused?: Target[];
};
const server = endpoint(job.server);
for (const t of job.connect ?? []) {
  const address = t.domain
    ? { kind: "domain" as const, name: t.domain, port: t.port }
    : ipAddress(t.host, t.port);
  const r = await connectRoundTrip(server, address, ["hello through socks\n"]);
  console.log(JSON.stringify({ kind: "connect", target: t, ...r }));
}
for (const t of job.associate ?? []) {
  const r = await associateRoundTrip(server, t, ["datagram one", "datagram two"]);
  console.log(JSON.stringify({ kind: "associate", target: t, ...r }));
}
for (const t of job.refused ?? []) {
  const error = await handshake(server, CMD_CONNECT, ipAddress(t.host, t.port)).then(
    ({ socket }) => {
      socket.destroy();
      return null;
    },
    (err: Error) => err.message,
  );
  console.log(JSON.stringify({ kind: "refused", target: t, error }));
}
process.exit(0);
