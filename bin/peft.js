#!/usr/bin/env node
// Entry point of the `peft` command: runs the compiled CLI entry (dist/, built by `npm ci` /
// `npm run build:ts`), the same src/cli/bin.ts that runs from source (it also prints a PeftError
// raised while the native addon loads, e.g. an unknown PEFT_KERNELS, as one line).
import '../dist/src/cli/bin.js';
