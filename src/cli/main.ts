#!/usr/bin/env node
/**
 * edgellm command line: the only module that reads argv. Each command (src/cli/) maps its flags
 * to typed options and calls library code; errors become one line `error: ...` and a meaningful exit
 * code (see src/core/errors.ts), with the stack trace only under --verbose.
 */
import { Command, CommanderError } from 'commander';
import * as fs from 'node:fs';
import { EdgeLLMError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { registerQuantize } from './quantize.js';
import { registerCompile } from './compile.js';
import { registerInspect } from './inspect.js';
import { registerRun } from './run.js';
import { registerEval } from './eval.js';
import { registerAddLora } from './add-lora.js';
import { registerBench } from './bench.js';
import { registerServe } from './serve.js';
import { registerChat } from './chat.js';
import { registerVerify } from './verify.js';
import { registerAnalyze } from './analyze.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('edgellm')
    .description('Quantize a HuggingFace LLM (W4 group-wise, static A8, KV8), compile it to a HEF executable and run it on the simulator backend.')
    .version(VERSION)
    .option('-v, --verbose', 'log pass details and show stack traces on errors')
    .option('-q, --quiet', 'no progress bars or logs')
    .showHelpAfterError();
  for (const register of [registerQuantize, registerAnalyze, registerAddLora, registerCompile, registerInspect, registerVerify, registerRun, registerChat, registerEval, registerBench, registerServe]) register(program);
  return program;
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2; // commander already printed the message
    const verbose = argv.includes('--verbose') || argv.includes('-v');
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    process.stderr.write(`error: ${msg}\n`);
    if (verbose && e instanceof Error && e.stack) process.stderr.write(e.stack + '\n');
    return e instanceof EdgeLLMError ? e.exitCode : 1;
  }
}

const isMain = process.argv[1] && fs.realpathSync(process.argv[1]) === fs.realpathSync(new URL(import.meta.url).pathname);
if (isMain) main(process.argv).then((code) => process.exit(code));
