// The shared DNS and QUIC header suite (contract.ts), once per implementation.
import { describe } from "bun:test";
import { runDnsContract, runQuicHeaderContract } from "./contract.ts";
import { refImpl, wasmImpl } from "./impls.ts";

for (const make of [wasmImpl, refImpl]) {
  describe(make().name, () => {
    runDnsContract(make);
    runQuicHeaderContract(make);
  });
}
