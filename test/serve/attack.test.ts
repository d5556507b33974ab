/**
 * The CI-size run of scripts/attack-server.ts: every fixed attack (authentication, adapter paths,
 * URLs and methods, request bodies) and one round of seeded mutations against a fresh loopback
 * server. Zero 5xx, hangs, dropped connections, leaks of paths or file contents, silent accepts
 * and non-OpenAI 4xx bodies; the server is healthy afterwards. The longer run is on demand:
 * `npx tsx scripts/attack-server.ts --rounds 20` (see notes/issue-10-server.md).
 */
import { describe, expect, it } from 'vitest';
import { formatTable, runAttack } from '../../scripts/attack-server.js';

describe('server attack (CI size)', () => {
  it('every hostile request gets a clean answer and the server stays up', async () => {
    const res = await runAttack({ rounds: 1, budgetMs: 40_000, timeoutMs: 5000, seed: 7 });
    expect(res.defects, formatTable(res) + '\n' + JSON.stringify(res.defects, null, 1)).toEqual([]);
    expect(res.stoppedByBudget).toBe(false);
    expect(res.aliveAfter).toBe(true);
    const groups = Object.fromEntries(res.table.map((r) => [r.group, r]));
    for (const g of ['authentication', 'adapter paths', 'URLs and methods', 'generation params', 'mutated generation', 'mutated adapter paths']) expect(groups[g]?.tried, g).toBeGreaterThan(10);
    expect(groups['adapter paths']['clean 4xx']).toBeGreaterThan(30);
    expect(res.requests).toBeGreaterThan(180);
  }, 60_000);
});
