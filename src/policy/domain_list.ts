// Domain names as rules match them, and domain list files (v2ray/sing-box style):
//
//   # a comment            full:www.example.com   exact: that name only
//   example.org            domain:example.net     suffix: the name and every name under it
//
// A bare line is a suffix. Names compare case-insensitively with any trailing dot
// ignored; IDNA names are written in their punycode (xn--) form, as they travel in DNS,
// TLS and QUIC. A malformed line fails the config load with FILE:LINE and why: a list
// that silently lost an entry would let a blocked name through.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

/** A list file larger than this is refused (a config mistake, not a list). */
export const DOMAIN_LIST_BYTES_MAX = 64 << 20;
/** Entries one list file may hold. */
export const DOMAIN_LIST_ENTRIES_MAX = 2_000_000;
const NAME_CHARS_MAX = 253; // RFC 1035 §2.3.4: 255 octets on the wire
const LABEL_CHARS_MAX = 63;

/** Names a rule matches: exact names and suffixes, normalized (see normalizeName). */
export interface NameSet {
  /** Where the names came from, for messages: "rules[2].names" or a file path. */
  origin: string;
  exact: Set<string>;
  suffix: Set<string>;
}

/**
 * Why `name` is not a name a rule can match, or null. Letters, digits, "-" and "_"
 * (service labels such as _dmarc), labels of 1-63 characters, 253 at most in all.
 */
export function nameProblem(name: string): string | null {
  let end = name.length;
  if (end > 0 && name.charCodeAt(end - 1) === 0x2e) end--;
  if (end === 0) return "empty name";
  if (end > NAME_CHARS_MAX) return `longer than ${NAME_CHARS_MAX} characters (${end})`;
  let labelStart = 0;
  for (let i = 0; i <= end; i++) {
    const c = i < end ? name.charCodeAt(i) : 0x2e;
    if (c === 0x2e) {
      const length = i - labelStart;
      if (length === 0) return "empty label (two dots, or a leading dot)";
      if (length > LABEL_CHARS_MAX) return `label longer than ${LABEL_CHARS_MAX} characters`;
      labelStart = i + 1;
      continue;
    }
    const letter = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a);
    const digit = c >= 0x30 && c <= 0x39;
    if (letter || digit || c === 0x2d || c === 0x5f) continue;
    if (c === 0x20 || c === 0x09) return "contains a space";
    if (c === 0x2a) return `"*" is not supported: a suffix entry already matches every subname`;
    if (c > 0x7e) return "non-ASCII character: write IDNA names in punycode (xn--...)";
    return `invalid character ${JSON.stringify(String.fromCharCode(c))}`;
  }
  return null;
}

/**
 * Lower case, trailing dot removed: the form names are stored and compared in. Returns
 * `name` itself (no allocation) when it is already in that form.
 */
export function normalizeName(name: string): string {
  const last = name.length - 1;
  let dirty = last >= 0 && name.charCodeAt(last) === 0x2e;
  for (let i = 0; !dirty && i <= last; i++) {
    const c = name.charCodeAt(i);
    if (c >= 0x41 && c <= 0x5a) dirty = true;
  }
  if (!dirty) return name;
  const lower = name.toLowerCase();
  return lower.charCodeAt(last) === 0x2e ? lower.slice(0, last) : lower;
}

/** Parses list text into `into`; returns the problems ("FILE:LINE: why"), at most `max`. */
export function parseDomainList(text: string, origin: string, into: NameSet, max = 20): string[] {
  const problems: string[] = [];
  let line = 0;
  let entries = 0;
  for (let start = 0; start < text.length && problems.length < max; ) {
    let end = text.indexOf("\n", start);
    if (end < 0) end = text.length;
    line++;
    let entry = text.slice(start, end);
    start = end + 1;
    const hash = entry.indexOf("#");
    if (hash >= 0) entry = entry.slice(0, hash);
    entry = entry.trim(); // also drops the \r of CRLF files
    if (entry === "") continue;
    let set = into.suffix;
    if (entry.startsWith("full:")) {
      set = into.exact;
      entry = entry.slice(5);
    } else if (entry.startsWith("domain:")) {
      entry = entry.slice(7);
    } else {
      const colon = entry.indexOf(":");
      if (colon > 0 && /^[a-z]+$/.test(entry.slice(0, colon))) {
        problems.push(
          `${origin}:${line}: unsupported prefix "${entry.slice(0, colon + 1)}" ` +
            `(only full: and domain:)`,
        );
        continue;
      }
    }
    const problem = nameProblem(entry);
    if (problem) {
      const shown = entry.length > 48 ? `${entry.slice(0, 48)}...` : entry;
      problems.push(`${origin}:${line}: ${problem} (got ${JSON.stringify(shown)})`);
      continue;
    }
    if (++entries > DOMAIN_LIST_ENTRIES_MAX) {
      problems.push(`${origin}:${line}: more than ${DOMAIN_LIST_ENTRIES_MAX} entries`);
      break;
    }
    set.add(normalizeName(entry));
  }
  return problems;
}

/** Reads and parses a list file; problems name the file (and line). */
export function loadDomainList(path: string): { set: NameSet; problems: string[] } {
  const set: NameSet = { origin: path, exact: new Set(), suffix: new Set() };
  let fd = -1;
  try {
    fd = openSync(path, "r");
    const size = fstatSync(fd).size;
    if (size > DOMAIN_LIST_BYTES_MAX) {
      return {
        set,
        problems: [`${path}: ${size} bytes, more than the ${DOMAIN_LIST_BYTES_MAX} allowed`],
      };
    }
    // Read at most the bound even if the file grows meanwhile.
    const buffer = Buffer.allocUnsafe(size + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
      if (length === buffer.length) {
        return { set, problems: [`${path}: changed size while being read`] };
      }
    }
    return { set, problems: parseDomainList(buffer.toString("utf8", 0, length), path, set) };
  } catch (err) {
    return { set, problems: [`${path}: cannot read: ${(err as Error).message}`] };
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
