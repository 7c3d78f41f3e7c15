/** edgellm run (see `edgellm run --help`). */
import type { Command } from 'commander';
import { int, addLoadFlags, loadFlags } from './common.js';
import { openSession } from './open-session.js';
import { addGenerationFlags, paramsFromFlags } from './generation-flags.js';
import type { ChatMessage } from '../../formats/chat-template.js';
import type { GenerationInput } from '../runtime/session.js';

/** `edgellm run`: generate text on the simulator backend. */
export function registerRun(program: Command): void {
  const cmd = program
    .command('run')
    .description('generate text on the simulator backend (a model directory runs the fp32 reference)')
    .argument('<model>', 'model.hef, model.har or a HuggingFace model directory')
    .option('-p, --prompt <text>', 'prompt text ("" = start from BOS)', '')
    .option('--chat', 'send the prompt as one user turn through the model\'s chat template')
    .option('--system <text>', 'with --chat: a system message before the user turn')
    .option('--chat-template <file>', 'a jinja chat template to use instead of the model\'s')
    .option('--raw', 'encode the prompt without the tokenizer\'s special tokens (no BOS)')
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128)
    .option('--adapter <name>', 'run with this LoRA adapter of the HEF/HAR (see `edgellm inspect`)')
    .option('--json', 'print a JSON result on stdout instead of streaming text');
  addGenerationFlags(addLoadFlags(cmd)).action(async (file: string, o) => {
    const params = paramsFromFlags(o);
    const { session } = await openSession(file, { prefillLen: o.prefillLen, adapter: o.adapter, chatTemplateFile: o.chatTemplate, ...loadFlags(o) });
    try {
      let input: GenerationInput;
      if (o.chat) {
        const messages: ChatMessage[] = o.system !== undefined ? [{ role: 'system', content: o.system }] : [];
        messages.push({ role: 'user', content: o.prompt });
        input = { messages };
      } else input = { prompt: o.prompt, raw: o.raw === true };
      if (!o.json && !o.chat) process.stdout.write(await session.tokenizer.decode(await session.encode(input)));
      const res = await session.generate({ input, params, onText: o.json ? undefined : (t) => void process.stdout.write(t) });
      const stats = {
        promptTokens: res.promptTokens,
        generatedTokens: res.tokens.length,
        ttftMs: res.ttftMs,
        decodeTokensPerSecond: res.decodeTokensPerSecond,
        stopReason: res.status,
      };
      if (o.json) process.stdout.write(JSON.stringify({ text: res.text, tokens: res.tokens, ...stats }, null, 2) + '\n');
      else {
        process.stdout.write('\n');
        process.stderr.write(
          `TTFT ${res.ttftMs.toFixed(1)} ms (${res.promptTokens} prompt tokens) | decode ${res.decodeTokensPerSecond.toFixed(1)} tokens/s (${res.tokens.length} tokens, ${res.status})\n`,
        );
      }
    } finally {
      await session.dispose();
    }
  });
}
