/** edgellm compile (see `edgellm compile --help`). */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import { loadModelHar } from '../../formats/har-model.js';
import { compile } from '../compiler/compile.js';
import { writeExecutable } from '../../formats/hef-executable.js';
import { int, outputPathCheck } from './common.js';

/** `edgellm compile`: HAR -> HEF. */
export function registerCompile(program: Command): void {
  program
    .command('compile')
    .description('HAR -> HEF: prefill and decode graphs over one copy of the weights, tokenizer, KV-cache layout')
    .argument('<model.har>', 'HAR written by `edgellm quantize`')
    .requiredOption('-o, --output <file.hef>', 'output HEF')
    .option('--prefill-len <n>', 'static prompt chunk length of the prefill graph (tokens)', int('--prefill-len'), 128)
    .option('--max-context <n>', 'KV-cache capacity in tokens (default: max_position_embeddings)', int('--max-context'))
    .action(async (har: string, o) => {
      outputPathCheck(o.output);
      const { model, info } = await loadModelHar(har, { emulation: false, lazy: true });
      const exe = compile(model, { prefillLen: o.prefillLen, maxContext: o.maxContext, modelName: info.modelName, sourceSha256: info.sourceSha256 });
      writeExecutable(o.output, exe);
      if (!program.opts().quiet) process.stderr.write(`wrote ${o.output} (${(fs.statSync(o.output).size / 1024).toFixed(1)} KiB)\n`);
    });
}
