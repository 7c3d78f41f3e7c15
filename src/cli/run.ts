/** edgellm run (see `edgellm run --help`). */
import type { Command } from 'commander';
import { UsageError } from '../core/errors.js';
import { loadArtifact } from './load-artifact.js';
import { SimulatorBackend } from '../runtime/simulator.js';
import { generate } from '../runtime/generate.js';
import { TextTokenizer, StreamDecoder } from '../../formats/tokenizer.js';
import { int, float } from './common.js';

/** `edgellm run`: generate text on the simulator backend. */
export function registerRun(program: Command): void {
  program
    .command('run')
    .description('generate text on the simulator backend (a model directory runs the fp32 reference)')
    .argument('<model>', 'model.hef, model.har or a HuggingFace model directory')
    .option('-p, --prompt <text>', 'prompt text ("" = start from BOS)', '')
    .option('-n, --max-tokens <n>', 'tokens to generate', int('--max-tokens'), 128)
    .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', float('--temperature'), 0.8)
    .option('--top-p <p>', 'nucleus sampling mass', float('--top-p'), 0.95)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = all)', int('--top-k'), 40)
    .option('--seed <n>', 'sampling seed', int('--seed'), 0)
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128)
    .option('--adapter <name>', 'run with this LoRA adapter of the HEF/HAR (see `edgellm inspect`)')
    .option('--json', 'print a JSON result on stdout instead of streaming text')
    .action(async (file: string, o) => {
      const { exe } = await loadArtifact(file, { prefillLen: o.prefillLen });
      const backend = await SimulatorBackend.load(exe);
      if (o.adapter !== undefined) backend.selectAdapter(o.adapter);
      const tok = new TextTokenizer(exe.tokenizer);
      const prompt = await tok.encode(o.prompt, true);
      if (prompt.length === 0) throw new UsageError('the prompt encodes to no tokens and the tokenizer adds no BOS');
      const stream = await StreamDecoder.create(tok, prompt);
      if (!o.json) process.stdout.write(await tok.decode(prompt));
      const res = await generate(
        backend,
        prompt,
        { maxTokens: o.maxTokens, temperature: o.temperature, topP: o.topP, topK: o.topK, seed: o.seed, stopTokens: exe.config.eosTokenIds },
        o.json ? undefined : async (id) => void process.stdout.write(await stream.push(id)),
      );
      await backend.dispose();
      const stats = {
        promptTokens: res.promptTokens,
        generatedTokens: res.tokens.length,
        ttftMs: res.ttftMs,
        decodeTokensPerSecond: res.decodeTokensPerSecond,
        stopReason: res.stopReason,
      };
      if (o.json) process.stdout.write(JSON.stringify({ text: await tok.decode(res.tokens), tokens: res.tokens, ...stats }, null, 2) + '\n');
      else {
        process.stdout.write('\n');
        process.stderr.write(
          `TTFT ${res.ttftMs.toFixed(1)} ms (${res.promptTokens} prompt tokens) | decode ${res.decodeTokensPerSecond.toFixed(1)} tokens/s (${res.tokens.length} tokens, ${res.stopReason})\n`,
        );
      }
    });
}
