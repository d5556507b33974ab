/** Child process of registry.test.ts: pushes DIR as NAME into ROOT `times` times, printing each version. */
import { push } from '../../src/lifecycle/registry.js';

const [root, name, dir, times] = process.argv.slice(2);
for (let i = 0; i < Number(times); i++) process.stdout.write(`${push(root, name, dir).version}\n`);
