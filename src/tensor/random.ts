/**
 * Seeded random numbers for initialisation and sampling: mulberry32 (a small, fast 32-bit
 * generator with good statistical quality for this use) and Box–Muller normals.
 */

/** Uniform [0, 1) generator (mulberry32) with a 32-bit seed. */
export function uniformRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One N(0, 1) draw from two uniforms of `u` (Box–Muller). */
export function gaussian(u: () => number): number {
  return Math.sqrt(-2 * Math.log(Math.max(u(), 1e-12))) * Math.cos(2 * Math.PI * u());
}

/** N(0, 1) generator with a 32-bit seed. */
export function normalRng(seed: number): () => number {
  const u = uniformRng(seed);
  return () => gaussian(u);
}

/** Fills a with N(0, std²) draws from `seed`. */
export function fillNormal(a: Float32Array, seed: number, std = 1): void {
  const n = normalRng(seed);
  for (let i = 0; i < a.length; i++) a[i] = n() * std;
}
