/** TypeScript entry of the CLI (for running from source with tsx; the published bin is bin/peft.js). */
import { main } from './index.js';

await main();
