// The tests' own reading of the Prometheus text format 0.0.4: sample lines only (HELP and
// TYPE are promtool's to judge). Independent of src/control/prometheus.ts on purpose.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: string;
}

const SAMPLE_LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL_PAIR = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = SAMPLE_LINE.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? "").matchAll(LABEL_PAIR)) labels[k] = v;
    samples.push({ name: m[1], labels, value: m[3] });
  }
  return samples;
}

/** The value of the one sample with this name and exactly these labels (any order). */
export function sampleValue(
  samples: Sample[],
  name: string,
  labels: Record<string, string> = {},
): string {
  const key = (l: Record<string, string>) => JSON.stringify(Object.entries(l).sort());
  const hits = samples.filter((s) => s.name === name && key(s.labels) === key(labels));
  if (hits.length !== 1) {
    throw new Error(`${hits.length} samples of ${name} ${JSON.stringify(labels)}`);
  }
  return hits[0].value;
}
