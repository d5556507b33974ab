#!/usr/bin/env node
// Entry point of the `peft` command: runs the compiled CLI (dist/, built by `npm ci` / `npm run build:ts`).
import { main } from '../dist/src/cli/index.js';

await main();
