/**
 * The generation flags `run` and `chat` share, mapped onto GenerationParams (src/runtime/params.ts),
 * with llama.cpp's spellings where it has them.
 */
import type { Command } from 'commander';
import { int, float } from './common.js';
import { DEFAULT_PARAMS, resolveParams, type GenerationParams } from '../runtime/params.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** Adds the sampling, penalty, stop and length flags to `cmd`. */
export function addGenerationFlags(cmd: Command, defaults: { maxTokens: number } = { maxTokens: DEFAULT_PARAMS.maxTokens }): Command {
  const d = DEFAULT_PARAMS;
  return cmd
    .option('-n, --max-tokens <n>', 'most tokens to generate', int('--max-tokens'), defaults.maxTokens)
    .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', float('--temperature'), d.temperature)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = all)', int('--top-k'), d.topK)
    .option('--top-p <p>', 'nucleus sampling: keep the smallest set with this probability mass (1 = all)', float('--top-p'), d.topP)
    .option('--min-p <p>', 'drop tokens below p × the most likely one\'s probability (0 = off)', float('--min-p'), d.minP)
    .option('--repeat-penalty <r>', 'divide seen tokens\' positive logits by r (multiply negative ones); 1 = off', float('--repeat-penalty'), d.repeatPenalty)
    .option('--repeat-last-n <n>', 'tokens of context the penalties look at (-1 = all, 0 = none)', int('--repeat-last-n'), d.repeatLastN)
    .option('--frequency-penalty <f>', 'subtract f per occurrence of a seen token', float('--frequency-penalty'), d.frequencyPenalty)
    .option('--presence-penalty <p>', 'subtract p once from every seen token', float('--presence-penalty'), d.presencePenalty)
    .option('--stop <text>', 'stop at this string (repeatable; not printed)', collect, [])
    .option('--seed <n>', 'sampling seed', int('--seed'), d.seed);
}

/**
 * GenerationParams from the parsed flags.
 * @throws ParamError naming the flag of the first bad value
 */
export function paramsFromFlags(o: Record<string, any>): GenerationParams {
  return resolveParams(
    {
      maxTokens: o.maxTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      minP: o.minP,
      repeatPenalty: o.repeatPenalty,
      repeatLastN: o.repeatLastN,
      frequencyPenalty: o.frequencyPenalty,
      presencePenalty: o.presencePenalty,
      stop: o.stop,
      seed: o.seed,
    },
    {
      maxTokens: '--max-tokens',
      temperature: '--temperature',
      topK: '--top-k',
      topP: '--top-p',
      minP: '--min-p',
      repeatPenalty: '--repeat-penalty',
      repeatLastN: '--repeat-last-n',
      frequencyPenalty: '--frequency-penalty',
      presencePenalty: '--presence-penalty',
      stop: '--stop',
      seed: '--seed',
    },
  );
}
