// The forced DNS forwarder's question parser (src/dns/forwarder.ts): what it takes as a
// query, and that an answer's question matches its query's whatever the name's case.
import { describe, expect, test } from "bun:test";
import { type DnsForwarder, parseQuestion, questionName } from "../../src/dns/forwarder.ts";

/** A DNS message: header (id, flags, qdcount), then the question name's labels, type, class. */
function message(id: number, flags: number, labels: string[], type = 1, qdcount = 1): Uint8Array {
  const name = labels.flatMap((l) => [l.length, ...Buffer.from(l)]);
  return Uint8Array.from([
    id >> 8,
    id & 0xff,
    flags >> 8,
    flags & 0xff,
    0,
    qdcount,
    0,
    0,
    0,
    0,
    0,
    0,
    ...name,
    0,
    type >> 8,
    type & 0xff,
    0,
    1,
  ]);
}

type Question = DnsForwarder["question"];
const fresh = (): Question => ({ hash: 0, end: 0, type: 0 }) as Question;

describe("forced DNS: the question", () => {
  test("a query's question: its hash, type, end, and its name lowercased", () => {
    const q = fresh();
    const m = message(0x1234, 0x0100, ["WWW", "Example", "test"], 28);
    expect(parseQuestion(m, 0, m.length, q)).toBe(true);
    expect(q.type).toBe(28);
    expect(q.end).toBe(m.length);
    expect(questionName(m, 0)).toBe("www.example.test");
    // The answer's question in another case (0x20 randomization) is the same question.
    const a = fresh();
    const answer = message(0x1234, 0x8180, ["www", "EXAMPLE", "Test"], 28);
    expect(parseQuestion(answer, 0, answer.length, a)).toBe(true);
    expect(a.hash).toBe(q.hash);
  });

  test("another name or type is another question", () => {
    const hashes = [
      message(1, 0x0100, ["a", "test"]),
      message(1, 0x0100, ["b", "test"]),
      message(1, 0x0100, ["a", "test"], 28),
      message(1, 0x0100, ["atest"]),
    ].map((m) => {
      const q = fresh();
      expect(parseQuestion(m, 0, m.length, q)).toBe(true);
      return q.hash;
    });
    expect(new Set(hashes).size).toBe(hashes.length);
  });

  test("no question, two, a pointer, a truncated name or type: not a query", () => {
    const q = fresh();
    const two = message(1, 0x0100, ["a", "test"], 1, 2);
    expect(parseQuestion(two, 0, two.length, q)).toBe(false);
    const none = message(1, 0x0100, ["a", "test"], 1, 0);
    expect(parseQuestion(none, 0, none.length, q)).toBe(false);
    const m = message(1, 0x0100, ["a", "test"]);
    for (let length = 0; length < m.length; length++) {
      expect(parseQuestion(m, 0, length, q)).toBe(false);
    }
    const pointer = Uint8Array.from([...m.subarray(0, 12), 0xc0, 0x0c, 0, 1, 0, 1]);
    expect(parseQuestion(pointer, 0, pointer.length, q)).toBe(false);
    const long = message(1, 0x0100, [Array(64).fill("x").join("")]);
    expect(parseQuestion(long, 0, long.length, q)).toBe(false);
  });
});
