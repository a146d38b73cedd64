// Addresses in the 16-byte form the C helper uses: IPv6 as is, IPv4 as ::ffff:a.b.c.d.
// Parsing scans char codes (no regex, no split), as Hono's ipaddr.ts does; it runs on
// the control plane only (config, logs, tests).

const CHAR_0 = 48;
const CHAR_9 = 57;
const CHAR_A_LOWER = 97;
const CHAR_F_LOWER = 102;
const CHAR_A_UPPER = 65;
const CHAR_F_UPPER = 70;
const CHAR_DOT = 46;
const CHAR_COLON = 58;

/** Returns the 4 bytes of a dotted-quad IPv4 address, or null. */
export function parseIPv4(text: string): Uint8Array | null {
  const out = new Uint8Array(4);
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : CHAR_DOT;
    if (c >= CHAR_0 && c <= CHAR_9) {
      if (digits > 0 && value === 0) return null; // no leading zeros ("01" is octal elsewhere)
      value = value * 10 + (c - CHAR_0);
      digits++;
      if (value > 255) return null;
    } else if (c === CHAR_DOT) {
      if (digits === 0 || part > 3) return null;
      out[part++] = value;
      value = 0;
      digits = 0;
    } else {
      return null;
    }
  }
  return part === 4 ? out : null;
}

function hexValue(c: number): number {
  if (c >= CHAR_0 && c <= CHAR_9) return c - CHAR_0;
  if (c >= CHAR_A_LOWER && c <= CHAR_F_LOWER) return c - CHAR_A_LOWER + 10;
  if (c >= CHAR_A_UPPER && c <= CHAR_F_UPPER) return c - CHAR_A_UPPER + 10;
  return -1;
}

/** Returns the 16 bytes of an IPv6 address (RFC 4291 §2.2 text forms), or null. */
export function parseIPv6(text: string): Uint8Array | null {
  if (text.length < 2 || text.length > 45) return null;
  const groups: number[] = [];
  let gap = -1; // index in groups where "::" stands
  let i = 0;
  if (text.charCodeAt(0) === CHAR_COLON) {
    if (text.charCodeAt(1) !== CHAR_COLON) return null;
    gap = 0;
    i = 2;
  }
  while (i < text.length) {
    // An embedded IPv4 tail (::ffff:1.2.3.4).
    let end = i;
    while (end < text.length && text.charCodeAt(end) !== CHAR_COLON) end++;
    const piece = text.slice(i, end);
    if (piece.indexOf(".") >= 0) {
      if (end !== text.length) return null;
      const v4 = parseIPv4(piece);
      if (!v4) return null;
      groups.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      i = end;
      break;
    }
    if (piece.length === 0 || piece.length > 4) return null;
    let value = 0;
    for (let k = 0; k < piece.length; k++) {
      const h = hexValue(piece.charCodeAt(k));
      if (h < 0) return null;
      value = (value << 4) | h;
    }
    groups.push(value);
    i = end;
    if (i < text.length) {
      // at a colon
      i++;
      if (i < text.length && text.charCodeAt(i) === CHAR_COLON) {
        if (gap >= 0) return null; // two "::"
        gap = groups.length;
        i++;
      } else if (i === text.length) {
        return null; // trailing single colon
      }
    }
  }
  if (groups.length > 8 || (gap < 0 && groups.length !== 8) || (gap >= 0 && groups.length > 7)) {
    return null;
  }
  const out = new Uint8Array(16);
  const tail = gap >= 0 ? groups.length - gap : 0;
  for (let g = 0; g < groups.length; g++) {
    const slot = gap >= 0 && g >= gap ? 8 - tail + (g - gap) : g;
    out[slot * 2] = groups[g] >> 8;
    out[slot * 2 + 1] = groups[g] & 0xff;
  }
  return out;
}

/** Parses either family into the 16-byte form (IPv4 v4-mapped). */
export function parseAddress(text: string): Uint8Array | null {
  const v4 = parseIPv4(text);
  if (v4) return mapIPv4(v4);
  return parseIPv6(text);
}

export function mapIPv4(v4: Uint8Array): Uint8Array {
  const out = new Uint8Array(16);
  out[10] = 0xff;
  out[11] = 0xff;
  out.set(v4, 12);
  return out;
}

export function isV4Mapped(addr: Uint8Array, offset = 0): boolean {
  for (let i = 0; i < 10; i++) if (addr[offset + i] !== 0) return false;
  return addr[offset + 10] === 0xff && addr[offset + 11] === 0xff;
}

/** Formats 16 bytes (at offset) as text: dotted quad for v4-mapped, RFC 5952 for IPv6. */
export function formatAddress(addr: Uint8Array, offset = 0): string {
  if (isV4Mapped(addr, offset)) {
    const b = offset + 12;
    return `${addr[b]}.${addr[b + 1]}.${addr[b + 2]}.${addr[b + 3]}`;
  }
  return formatIPv6(addr, offset);
}

/** 16 bytes (at offset) in RFC 5952 text, even when v4-mapped ("::ffff:c612:1"). */
export function formatIPv6(addr: Uint8Array, offset = 0): string {
  const groups: number[] = [];
  for (let g = 0; g < 8; g++) groups.push((addr[offset + g * 2] << 8) | addr[offset + g * 2 + 1]);
  // RFC 5952 §4.2.3: shorten the longest run (>= 2) of zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLength = 1;
  for (let g = 0; g < 8; ) {
    if (groups[g] !== 0) {
      g++;
      continue;
    }
    let end = g;
    while (end < 8 && groups[end] === 0) end++;
    if (end - g > bestLength) {
      bestStart = g;
      bestLength = end - g;
    }
    g = end;
  }
  const hex = (g: number) => groups[g].toString(16);
  if (bestStart < 0) return groups.map((_, g) => hex(g)).join(":");
  const head = groups
    .slice(0, bestStart)
    .map((_, g) => hex(g))
    .join(":");
  const tail = groups
    .slice(bestStart + bestLength)
    .map((_, g) => hex(bestStart + bestLength + g))
    .join(":");
  return `${head}::${tail}`;
}

export function formatEndpoint(addr: Uint8Array, offset: number, port: number): string {
  const text = formatAddress(addr, offset);
  return isV4Mapped(addr, offset) ? `${text}:${port}` : `[${text}]:${port}`;
}
