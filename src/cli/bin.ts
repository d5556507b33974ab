/** TypeScript entry of the CLI (for running from source with tsx; the published bin is bin/peft.js). */
// Loading the CLI loads the native addon, which can refuse the environment (an unknown
// PEFT_KERNELS) with a PeftError before the CLI's error handler exists: print it as one line.
let main: () => Promise<void>;
try {
  ({ main } = await import('./index.js'));
} catch (e) {
  if ((e as Error)?.name !== 'PeftError' || process.env.PEFT_DEBUG) throw e;
  process.stderr.write(`peft: error: ${(e as Error).message}\n`);
  process.exit(1);
}
await main();
