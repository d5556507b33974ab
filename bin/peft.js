#!/usr/bin/env node
// Entry point of the `peft` command: runs the compiled CLI (dist/, built by `npm ci` / `npm run build:ts`).
// Loading it loads the native addon, which can refuse the environment (an unknown PEFT_KERNELS)
// with a PeftError before the CLI's own error handler exists: print that as one line too.
let main;
try {
  ({ main } = await import('../dist/src/cli/index.js'));
} catch (e) {
  if (e?.name !== 'PeftError' || process.env.PEFT_DEBUG) throw e;
  process.stderr.write(`peft: error: ${e.message}\n`);
  process.exit(1);
}
await main();
