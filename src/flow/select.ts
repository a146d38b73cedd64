// Which UDP sessions a control query (`relay sessions`, `relay top`) lists: the ones
// passing its filters, the `limit` largest by its sort key. Runs on the data-path thread
// between two waits, so it is one pass over the table with fixed memory (TopK) and
// formats an endpoint only when a filter needs its text.
import type { SessionQuery, SortKey } from "../control/query.ts";
import { textMatches } from "../control/query.ts";
import type { TopK } from "../control/top_k.ts";
import { formatEndpoint } from "../sys/addr.ts";
import type { SessionTable } from "./table.ts";

/** Key words of a session: client address 0-3, target address 4-7, ports 8. */
const ADDRESS_WORDS = 8;
const PORTS_WORD = 8;

/** Sort value of session s: larger comes first. */
function sortKey(table: SessionTable, s: number, sort: SortKey): number {
  switch (sort) {
    case "bytes":
      return table.bytesToTarget[s] + table.bytesToClient[s];
    case "packets":
      return table.packetsToTarget[s] + table.packetsToClient[s];
    case "age":
      return -table.createdMs[s]; // created first = oldest
    case "idle":
      return -table.lastSeenMs[s]; // seen last longest ago = most idle
  }
}

/**
 * Fills `top` (reset to query.limit) with the slots of the matching sessions, in
 * order; returns how many matched in all. listenerNames: by listener index.
 */
export function selectSessions(
  table: SessionTable,
  query: SessionQuery,
  listenerNames: readonly string[],
  top: TopK,
): number {
  top.reset(query.limit);
  const key = new Uint32Array(ADDRESS_WORDS);
  const keyBytes = new Uint8Array(key.buffer);
  const byAddress = query.client !== null || query.target !== null;
  let matched = 0;
  table.forEach((s) => {
    if (!textMatches(table.name[s], query.name)) return;
    if (!textMatches(listenerNames[table.listener[s]] ?? "?", query.listener)) return;
    if (byAddress) {
      for (let w = 0; w < ADDRESS_WORDS; w++) key[w] = table.keyWord(s, w);
      const ports = table.keyWord(s, PORTS_WORD);
      if (query.client !== null) {
        if (!textMatches(formatEndpoint(keyBytes, 0, ports >>> 16), query.client)) return;
      }
      if (query.target !== null) {
        if (!textMatches(formatEndpoint(keyBytes, 16, ports & 0xffff), query.target)) return;
      }
    }
    matched++;
    top.offer(s, sortKey(table, s, query.sort));
  });
  return matched;
}
