// Real QUIC peers for the lab: ngtcp2's gtlsserver (Debian ngtcp2-server) serving a
// small htdocs over HTTP/3, and gtlsclient (ngtcp2-client) downloading from it.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Lab } from "./netns.ts";

export const QUIC_BODY = "hello through a transparent relay\n";

export class QuicPeers {
  readonly dir = mkdtempSync(join(tmpdir(), "relay-quic-"));

  constructor(private readonly lab: Lab) {
    mkdirSync(join(this.dir, "htdocs"));
    writeFileSync(join(this.dir, "htdocs", "index.html"), QUIC_BODY);
    // A throwaway self-signed certificate (gtlsclient does not verify by default).
    const cert = spawnSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        join(this.dir, "key.pem"),
        "-out",
        join(this.dir, "cert.pem"),
        "-subj",
        "/CN=relay.test",
        "-days",
        "2",
      ],
      { encoding: "utf8" },
    );
    if (cert.status !== 0) throw new Error(`openssl: ${cert.stderr}`);
  }

  /** Starts gtlsserver on address:port in the server namespace. */
  serve(address: string, port: number) {
    return this.lab.spawn(this.lab.server, [
      "gtlsserver",
      "-q",
      "-d",
      join(this.dir, "htdocs"),
      address,
      `${port}`,
      join(this.dir, "key.pem"),
      join(this.dir, "cert.pem"),
    ]);
  }

  /** Writes a file of `bytes` pseudo-random bytes into the served htdocs. */
  addFile(name: string, bytes: number): Buffer {
    const data = Buffer.alloc(bytes);
    let x = 0x9e3779b9;
    for (let i = 0; i < bytes; i += 4) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      data.writeUInt32LE(x, i);
    }
    writeFileSync(join(this.dir, "htdocs", name), data);
    return data;
  }

  /**
   * Starts downloading https://HOST/RESOURCE in the client namespace; `done` resolves
   * with the bytes received (what gtlsclient wrote) once it exits.
   */
  startFetch(host: string, port: number, resource: string) {
    const out = join(this.dir, "download", `${host}-${port}-${resource}`);
    mkdirSync(out, { recursive: true });
    const proc = this.lab.spawn(this.lab.client, [
      "gtlsclient",
      "-q",
      "--timeout=5s",
      "--exit-on-all-streams-close",
      `--download=${out}`,
      host,
      `${port}`,
      `https://${host}/${resource}`,
    ]);
    const done = proc.exited.then(() => {
      try {
        return readFileSync(join(out, resource));
      } catch {
        return Buffer.alloc(0);
      }
    });
    return { proc, done };
  }

  /** Downloads https://HOST/index.html from the client namespace; returns the body. */
  fetch(host: string, port: number, extra: string[] = []): string {
    const out = join(this.dir, "download", `${host}-${port}`);
    mkdirSync(out, { recursive: true });
    this.lab.exec(this.lab.client, [
      "gtlsclient",
      "-q",
      "--timeout=3s",
      "--exit-on-all-streams-close",
      `--download=${out}`,
      ...extra,
      host,
      `${port}`,
      `https://${host}/index.html`,
    ]);
    return readFileSync(join(out, "index.html"), "utf8");
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
