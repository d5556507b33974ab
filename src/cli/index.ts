/** The `peft` command line. */
import { Command } from 'commander';
import { PeftError } from '../errors.js';
import { generateCommand } from './generate.js';
import { quantizeCommand } from './quantize.js';
import { trainCommand } from './train.js';
import { evalCommand } from './eval.js';
import { mergeCommand } from './merge.js';
import { inspectCommand } from './inspect.js';
import { serveCommand } from './serve.js';
import { exportCommand } from './export.js';
import { combineCommand } from './combine.js';
import { compareCommand, mainCommand } from './compare.js';
import { doctorCommand } from './doctor.js';
import { registryCommand } from './registry.js';
import { deployCommand } from './deploy.js';
import { exportJobCommand } from './export-job.js';
import { resolveModel } from '../paths.js';

export function buildProgram(): Command {
  const program = new Command('peft')
    .description('parameter-efficient fine-tuning of causal language models (LoRA, QLoRA, adapters, prefix/prompt tuning, IA3)')
    .showHelpAfterError();
  // `--model tinystories656K` names a bundled model, in every command
  program.hook('preAction', (_program, action) => {
    const m = action.getOptionValue('model');
    if (typeof m === 'string') action.setOptionValue('model', resolveModel(m));
  });
  program.addCommand(mainCommand());
  program.addCommand(trainCommand());
  program.addCommand(generateCommand());
  program.addCommand(evalCommand());
  program.addCommand(mergeCommand());
  program.addCommand(inspectCommand());
  program.addCommand(exportCommand());
  program.addCommand(quantizeCommand());
  program.addCommand(serveCommand());
  program.addCommand(combineCommand());
  program.addCommand(compareCommand());
  program.addCommand(doctorCommand());
  program.addCommand(registryCommand());
  program.addCommand(deployCommand());
  program.addCommand(exportJobCommand());
  return program;
}

export async function main(argv = process.argv): Promise<void> {
  // a closed pipe (`peft generate … | head`) ends the output quietly
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    const errno = e as NodeJS.ErrnoException;
    if (e instanceof PeftError || e instanceof RangeError) {
      process.stderr.write(`peft: error: ${e.message}\n`);
    } else if (typeof errno?.code === 'string' && typeof errno.syscall === 'string') {
      // file-system errors (EEXIST, EISDIR, ENOENT, EACCES, ENOSPC…): the message names the path
      process.stderr.write(`peft: error: ${errno.message}\n`);
    } else {
      // anything else is a bug of ours, not the user's input: one line, never a stack trace
      // (PEFT_DEBUG=1 prints it for a bug report)
      const message = e instanceof Error ? `${e.name}: ${e.message.split('\n')[0]}` : String(e);
      process.stderr.write(`peft: internal error: ${message} (set PEFT_DEBUG=1 for details)\n`);
      if (process.env.PEFT_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
    }
    process.exitCode = 1;
  }
}
