import { defineConfig } from 'vitest/config';

/** `npm run test:interop`: checks against the Python reference stack (.venv-ref); not part of `npm test`. */
export default defineConfig({
  test: {
    include: ['test/interop/**/*.interop.ts'],
    pool: 'forks',
    maxWorkers: 1,
    testTimeout: 900_000,
    hookTimeout: 900_000,
  },
});
