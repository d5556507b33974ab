/**
 * The bounded CI run of scripts/fuzz-parsers.ts (issue 10): a few mutated inputs per parser, each
 * in a child process with a time limit; every outcome must be a clean PeftError naming the file or
 * a consistent accept — no stack trace, native crash, hang or silently accepted garbage.
 * The long run: `npx tsx scripts/fuzz-parsers.ts --count 500` (table in notes/issue-10-parsers.md).
 */
import { describe, expect, it } from 'vitest';
import { runFuzz, TARGETS } from '../../scripts/fuzz-parsers.js';

describe('parser fuzzing (CI size)', () => {
  it('mutated inputs for every parser: zero crashes, hangs and silent accepts', async () => {
    const targets = TARGETS;
    const report = await runFuzz({ count: 6, seed: 1, timeoutMs: 30_000, targets });
    const bad = report.results.filter((r) => r.outcome === 'crash' || r.outcome === 'hang' || r.outcome === 'silent');
    expect(report.results).toHaveLength(6 * targets.length);
    expect(bad.map((r) => `${r.outcome} ${r.target}:${r.index} ${r.detail}`)).toEqual([]);
    // the mutations do reach the parsers: most inputs are refused with a named error
    expect(report.results.filter((r) => r.outcome === 'clean').length).toBeGreaterThan(report.results.length / 2);
  }, 120_000);
});
