// What `relay sessions` asks for: filters on the text forms of a flow, a sort key and a
// bound. Parsed here from the untrusted request (validation, not assertion: a bad
// request gets an error reply); evaluated where the sessions live (the UDP Worker,
// src/flow/select.ts; the TCP relay), so only `limit` views cross a thread boundary.

export const SORT_KEYS = ["bytes", "packets", "age", "idle"] as const;
export type SortKey = (typeof SORT_KEYS)[number];

/** Sessions listed when the request names no limit. */
export const SESSIONS_LIMIT_DEFAULT = 50;
/** At most this many per protocol in one reply: a reply stays far below its frame bound. */
export const SESSIONS_LIMIT_MAX = 1000;
/** A filter longer than any endpoint, listener or DNS name (253) is a malformed request. */
const FILTER_CHARS_MAX = 256;

export interface SessionQuery {
  /** Each filter: null (any), "=text" (exact match) or "text" (substring). */
  client: string | null;
  target: string | null;
  name: string | null;
  listener: string | null;
  /** Descending: most bytes, most packets, oldest, longest idle first. */
  sort: SortKey;
  limit: number;
}

const FILTERS = ["client", "target", "name", "listener"] as const;

/** The query a request describes, or the reason it is refused. */
export function parseSessionQuery(request: Record<string, unknown>): SessionQuery | string {
  const query: SessionQuery = {
    client: null,
    target: null,
    name: null,
    listener: null,
    sort: "bytes",
    limit: SESSIONS_LIMIT_DEFAULT,
  };
  for (const field of FILTERS) {
    const value = request[field];
    if (value === undefined || value === null) continue;
    if (typeof value !== "string" || value.length === 0 || value.length > FILTER_CHARS_MAX) {
      return `${field}: expected a string of 1-${FILTER_CHARS_MAX} characters`;
    }
    query[field] = value;
  }
  const sort = request.sort;
  if (sort !== undefined && sort !== null) {
    if (!SORT_KEYS.includes(sort as SortKey))
      return `sort: expected one of ${SORT_KEYS.join(", ")}`;
    query.sort = sort as SortKey;
  }
  const limit = request.limit;
  if (limit !== undefined && limit !== null) {
    if (!Number.isInteger(limit) || (limit as number) < 0 || (limit as number) > SESSIONS_LIMIT_MAX)
      return `limit: expected an integer 0-${SESSIONS_LIMIT_MAX}`;
    query.limit = limit as number;
  }
  return query;
}

const EQUALS = 0x3d;

/** Whether `text` passes `pattern`: null passes all; "=x" is exact; else a substring. */
export function textMatches(text: string | null, pattern: string | null): boolean {
  if (pattern === null) return true;
  if (text === null) return false;
  if (pattern.charCodeAt(0) === EQUALS) return text === pattern.slice(1);
  return text.includes(pattern);
}
