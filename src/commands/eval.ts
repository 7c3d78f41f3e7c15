/** edgellm eval (see `edgellm eval --help`). */
import type { Command } from 'commander';
import * as path from 'node:path';
import { cliContext } from '../cli-context.js';
import { loadArtifact } from '../runtime/load.js';
import { SimulatorBackend } from '../runtime/simulator.js';
import { perplexity } from '../runtime/eval.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { loadTextFile } from '../../calibration/datasets.js';
import { slidingWindows } from '../../calibration/sampler.js';
import { int, textPath } from './common.js';

/** `edgellm eval`: perplexity. */
export function registerEval(program: Command): void {
  program
    .command('eval')
    .description('perplexity on a text (GPTQ-paper windows: tokenize once, non-overlapping windows, tail dropped)')
    .argument('<model>', 'model.hef, model.har or a HuggingFace model directory')
    .requiredOption('--text <file|name>', 'text file (.txt or .jsonl) or a dataset name: wikitext2, c4, tinystories')
    .option('--seqlen <n>', 'window length in tokens', int('--seqlen'), 256)
    .option('--max-windows <n>', 'evaluate only the first n windows', int('--max-windows'))
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128)
    .option('--json', 'print the result as JSON')
    .action(async (file: string, o) => {
      const ctx = cliContext(program.opts());
      const { exe, kind } = await loadArtifact(file, { prefillLen: o.prefillLen });
      const tok = new TextTokenizer(exe.tokenizer);
      const text = textPath(o.text);
      // One BOS at the start of the whole text (the tokenizer's special tokens), none per window.
      const ids = await tok.encode(loadTextFile(text), true);
      const windows = slidingWindows(ids, o.seqlen, o.maxWindows);
      const backend = await SimulatorBackend.load(exe);
      const t0 = performance.now();
      const r = await perplexity(backend, windows, ctx.progress('eval', windows.length));
      const seconds = (performance.now() - t0) / 1000;
      await backend.dispose();
      const result = { model: file, kind, text, seqLen: o.seqlen, ...r, seconds, tokensPerSecond: (windows.length * o.seqlen) / seconds };
      if (o.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      else
        process.stdout.write(
          `perplexity ${r.ppl.toFixed(4)} (mean NLL ${r.meanNll.toFixed(5)} nats) over ${r.windows} windows x ${o.seqlen} tokens of ${path.basename(text)} | ${result.tokensPerSecond.toFixed(0)} tokens/s\n`,
        );
    });
}
